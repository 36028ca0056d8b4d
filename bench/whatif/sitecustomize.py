"""What-if, for benchmark 1b only: Rasa's action-server answers validated with a cached validator.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; ``bench/stack.py`` puts this
folder there for one extra ``rasa run`` and no other process. Rasa 3.6's
``RemoteAction._validate_action_result`` calls ``jsonschema.validate(result, schema)``, which
checks the schema itself against its metaschema on every call (tens of milliseconds, on the event
loop) before validating the answer. Building the validator once and reusing it validates the
same answers against the same schema, with the same ``ValidationError`` on a bad answer.
"""

from __future__ import annotations

import sys
from typing import Any, Dict

try:
    import jsonschema
    from rasa.core.actions.action import RemoteAction
except ImportError:  # not a Rasa process: nothing to change
    pass
else:
    _original = RemoteAction._validate_action_result
    _validators: Dict[str, Any] = {}

    def _validate_action_result(self: RemoteAction, result: Dict[str, Any]) -> bool:
        validator = _validators.get("spec")
        if validator is None:
            spec = self.action_response_format_spec()
            validator = jsonschema.validators.validator_for(spec)(spec)
            _validators["spec"] = validator
        if validator.is_valid(result):
            return True
        # An invalid answer: Rasa's own code raises its usual error with its usual message.
        return bool(_original(self, result))

    RemoteAction._validate_action_result = _validate_action_result
    # In the process's log, so a reader can see the what-if was really in place.
    print("bench/whatif: Rasa's action results validated with a cached validator", file=sys.stderr)

"""The demo bot as ``make run`` starts it: the Z-API emulator, the action server, ``rasa run``.

The model is ``scripts/run_local.py``'s (trained only when its training data changed), and one
``rasa run`` serves both our channel and Rasa's rest channel, so both are measured against the
same model, process and tracker store. What-if ``rasa run`` processes may run beside it (see
``bench/whatif/sitecustomize.py``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Dict, Sequence, Tuple

from bench.common import WEBHOOK_TOKEN, start_emulator
from bench.procs import BIN, ROOT, Process, Processes, free_port
from bench.server import CLIENT_TOKEN, INSTANCE_ID, INSTANCE_TOKEN


def run_local() -> ModuleType:
    """``scripts/run_local.py``, for ``train_if_needed()`` and ``MODEL``."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import run_local as module
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    loaded: ModuleType = module
    return loaded


@dataclass
class Stack:
    emulator_url: str
    rasa_url: str
    rasa: Process

    @property
    def zapi_webhook(self) -> str:
        return f"{self.rasa_url}/webhooks/zapi/webhook?token={WEBHOOK_TOKEN}"

    @property
    def rest_webhook(self) -> str:
        return f"{self.rasa_url}/webhooks/rest/webhook"


#: Where ``bench/whatif/sitecustomize.py`` lives: on ``PYTHONPATH`` for the what-if ``rasa run``s.
WHATIF_DIR = Path(__file__).resolve().parent / "whatif"


def _credentials(path: Path, emulator_url: str, state_dir: Path) -> Path:
    state_dir.mkdir(exist_ok=True)
    path.write_text(
        "# Written by bench/stack.py: our channel on the local emulator, and Rasa's rest channel.\n"
        "zapi_channel.ZApiInput:\n"
        f"  instance_id: {INSTANCE_ID}\n"
        f"  instance_token: {INSTANCE_TOKEN}\n"
        f"  client_token: {CLIENT_TOKEN}\n"
        f"  webhook_token: {WEBHOOK_TOKEN}\n"
        f"  base_url: {emulator_url}\n"
        # Written only if something goes wrong; never into the work tree.
        f"  state_path: {state_dir / 'zapi-channel.db'}\n"
        "rest:\n"
    )
    return path


def start_stack(
    procs: Processes, log_dir: Path, *, what_ifs: Sequence[str] = ()
) -> Dict[str, Stack]:
    """The emulator, the action server and ``rasa run`` (``"main"``); for each name in
    ``what_ifs``, another ``rasa run`` under that name with ``bench/whatif/sitecustomize.py``
    loaded in that mode, sharing the emulator and the action server. All load the model at the
    same time; each idles while another is measured."""
    local = run_local()
    local.train_if_needed()
    model: Path = local.MODEL
    emulator_url = start_emulator(procs, "e2e-emulator")
    actions_port = free_port()
    endpoints = log_dir / "endpoints.yml"
    endpoints.write_text(f"action_endpoint:\n  url: http://127.0.0.1:{actions_port}/webhook\n")
    actions = procs.start(
        "e2e-actions",
        [str(BIN / "rasa"), "run", "actions", "--actions", "actions", "-p", str(actions_port)],
    )
    variants: Dict[str, Dict[str, str]] = {"main": {}}
    for name in what_ifs:
        variants[name] = {
            "PYTHONPATH": str(WHATIF_DIR) + os.pathsep + str(ROOT),
            "ZAPI_BENCH_WHATIF": name,
        }
    started: Dict[str, Tuple[Process, str]] = {}
    for name, env in variants.items():
        port = free_port()
        credentials = _credentials(
            log_dir / f"credentials-{name}.yml", emulator_url, log_dir / f"state-rasa-{name}"
        )
        process = procs.start(
            f"e2e-rasa-{name}",
            [
                str(BIN / "rasa"), "run", "-m", str(model),
                "--credentials", str(credentials), "--endpoints", str(endpoints),
                "-i", "127.0.0.1", "-p", str(port),
            ],
            env=env,
        )  # fmt: skip
        started[name] = (process, f"http://127.0.0.1:{port}")
    actions.wait_http(f"http://127.0.0.1:{actions_port}/health", 120)
    stacks: Dict[str, Stack] = {}
    for name, (process, url) in started.items():
        process.wait_http(f"{url}/webhooks/zapi/", 300)
        process.wait_http(f"{url}/webhooks/rest/", 30)
        stacks[name] = Stack(emulator_url, url, process)
    return stacks

"""Reading and writing the channel's block of ``credentials.yml`` (and the project's ``.env``).

Rasa expands ``${VAR}`` placeholders in ``credentials.yml`` from the environment. We honour the
same convention, and never turn a placeholder into a literal secret: when a key holds
``${ZAPI_INSTANCE_TOKEN}``, a new value goes to the git-ignored ``.env`` beside the file (which the
Makefile exports), and ``credentials.yml`` keeps its placeholder. A literal value is rewritten in
place, keeping the rest of the file and its comments (ruamel's round-trip mode).

Every write is atomic (temporary file in the same folder, fsync, rename) and leaves mode 0600, so a
crash mid-write never leaves a half-written file and other users cannot read the tokens.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar

from zapi_channel.errors import ConfigError

#: The key of the channel's block in credentials.yml: the module path Rasa imports.
CHANNEL_KEY = "zapi_channel.ZApiInput"

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE_PLACEHOLDER = re.compile(r"^\s*\$\{([A-Za-z_][A-Za-z0-9_]*)\}\s*$")
_SAFE_DOTENV_VALUE = re.compile(r"^[A-Za-z0-9._~+/=:@-]*$")


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True  # type: ignore[assignment]
    return yaml


def _untag(node: Any) -> Any:
    """Undo the ``!env_var`` tag Rasa's import adds to every ``${VAR}`` scalar.

    Importing Rasa registers a global ruamel.yaml resolver that tags such strings (Rasa expands them
    while loading). Our round trip must keep the placeholder text as written, so the tagged scalars
    are turned back into plain strings, in place, keeping the comments attached to their keys.
    """
    if isinstance(node, CommentedMap):
        for key in list(node.keys()):
            value = node[key]
            if isinstance(value, TaggedScalar):
                node[key] = str(value.value)
            else:
                _untag(value)
    elif isinstance(node, CommentedSeq):
        for index, value in enumerate(node):
            if isinstance(value, TaggedScalar):
                node[index] = str(value.value)
            else:
                _untag(value)
    return node


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` in one step; the file ends with ``mode``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_dotenv(path: Path) -> Dict[str, str]:
    """``KEY=value`` lines of a ``.env`` file; comments and blank lines skipped."""
    values: Dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def update_dotenv(path: Path, updates: Mapping[str, str]) -> None:
    """Set ``updates`` in the ``.env`` file, keeping every other line."""
    for key, value in updates.items():
        # The Makefile reads .env with make's own parser, which knows no quoting.
        if not _SAFE_DOTENV_VALUE.match(value):
            raise ConfigError(f"the value for {key} has characters that cannot go in .env")
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    pending = dict(updates)
    out: List[str] = []
    for line in lines:
        stripped = line.strip()
        key = stripped.split("=", 1)[0].replace("export ", "").strip() if "=" in stripped else ""
        if key in pending and not stripped.startswith("#"):
            out.append(f"{key}={pending.pop(key)}")
        else:
            out.append(line)
    out.extend(f"{key}={value}" for key, value in pending.items())
    atomic_write(path, "\n".join(out) + "\n")


class CredentialsFile:
    """The ``zapi_channel.ZApiInput`` block of one ``credentials.yml``.

    ``environ`` defaults to the process environment; values from the ``.env`` beside the file fill
    in what the environment does not set (the environment wins, as with docker compose).
    """

    def __init__(self, path: Path, environ: Optional[Mapping[str, str]] = None) -> None:
        self.path = Path(path)
        self.dotenv_path = self.path.parent / ".env"
        self._environ = environ if environ is not None else os.environ

    def __repr__(self) -> str:
        return f"CredentialsFile({str(self.path)!r})"

    # -- reading ----------------------------------------------------------------------------------

    def _load(self) -> CommentedMap:
        if not self.path.exists():
            return CommentedMap()
        try:
            data = _yaml().load(self.path.read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001 - ruamel raises many unrelated error types
            raise ConfigError(f"{self.path} is not valid YAML: {type(exc).__name__}") from None
        if data is None:
            return CommentedMap()
        if not isinstance(data, CommentedMap):
            raise ConfigError(f"{self.path} must be a mapping of channel names to settings")
        _untag(data)
        return data

    def raw_block(self) -> Dict[str, Any]:
        """The block as written, placeholders unexpanded; empty when absent."""
        block = self._load().get(CHANNEL_KEY)
        if block is None:
            return {}
        if not isinstance(block, Mapping):
            raise ConfigError(f"'{CHANNEL_KEY}' in {self.path} must be a mapping of settings")
        return dict(block)

    def environment(self) -> Dict[str, str]:
        merged = read_dotenv(self.dotenv_path)
        merged.update(self._environ)
        return merged

    def resolved_block(self) -> Dict[str, Any]:
        """The block with every ``${VAR}`` expanded; an unset variable expands to ``""``.

        Callers validate the result (``ZApiCredentials.from_mapping``), which names every key that
        ended up empty, so an unset variable is reported as a missing credential.
        """
        env = self.environment()
        resolved: Dict[str, Any] = {}
        for key, value in self.raw_block().items():
            if isinstance(value, str):
                value = _PLACEHOLDER.sub(lambda m: env.get(m.group(1), ""), value)
            resolved[key] = value
        return resolved

    # -- writing ----------------------------------------------------------------------------------

    def write(self, updates: Mapping[str, Any]) -> None:
        """Store ``updates``: placeholders' values go to ``.env``, the rest into the YAML."""
        document = self._load()
        block = document.get(CHANNEL_KEY)
        if block is None:
            block = CommentedMap()
            document[CHANNEL_KEY] = block
        dotenv_updates: Dict[str, str] = {}
        yaml_changed = False
        for key, value in updates.items():
            current = block.get(key)
            match = _WHOLE_PLACEHOLDER.match(current) if isinstance(current, str) else None
            if match:
                dotenv_updates[match.group(1)] = (
                    "true" if value is True else ("false" if value is False else str(value))
                )
            elif current != value or key not in block:
                block[key] = value
                yaml_changed = True
        # Two files change together: if the second write fails, the first is put back, so the
        # credentials are never left half old, half new.
        before = _snapshot((self.dotenv_path, self.path))
        try:
            if dotenv_updates:
                update_dotenv(self.dotenv_path, dotenv_updates)
            if yaml_changed or not self.path.exists():
                buffer = io.StringIO()
                _yaml().dump(document, buffer)
                atomic_write(self.path, buffer.getvalue())
        except BaseException:
            _restore(before)
            raise

    def placeholder_of(self, key: str) -> Optional[str]:
        """The environment variable that ``key`` is read from, if it is a placeholder."""
        value = self.raw_block().get(key)
        match = _WHOLE_PLACEHOLDER.match(value) if isinstance(value, str) else None
        return match.group(1) if match else None


def _snapshot(paths: Tuple[Path, ...]) -> Dict[Path, Optional[bytes]]:
    return {path: path.read_bytes() if path.exists() else None for path in paths}


def _restore(saved: Mapping[Path, Optional[bytes]]) -> None:
    for path, content in saved.items():
        if content is None:
            if path.exists():
                path.unlink()
        else:
            atomic_write(path, content.decode("utf-8"))


__all__ = ["CHANNEL_KEY", "CredentialsFile", "atomic_write", "read_dotenv", "update_dotenv"]

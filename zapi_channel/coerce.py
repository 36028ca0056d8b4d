"""Turning the values of a YAML block (``credentials.yml``, ``endpoints.yml``) into typed settings.

Shared by :class:`zapi_channel.config.ChannelConfig` and
:class:`zapi_channel.lockstore.RedisLockSettings`, so that both read ``${VAR}`` strings, numbers and
booleans the same way and word their errors alike. ``block`` names where the key lives, so that an
error says which file to open: ``"lock_store 'port' must be ..."``.
"""

from __future__ import annotations

import difflib
from typing import Any, Collection, Iterable

from zapi_channel.errors import ConfigError


def text(value: Any) -> str:
    """Strip every leading/trailing whitespace and line break from a pasted value.

    YAML may hand us numbers (an instance id of digits) or ``None``: both become strings.
    """
    if value is None:
        return ""
    return str(value).strip()


def _name(block: str, key: str) -> str:
    return f"{block} '{key}'" if block else f"'{key}'"


def as_bool(key: str, value: Any, *, block: str = "") -> bool:
    # Environment variables (``${ZAPI_ACTIVE}``) always arrive as strings.
    if isinstance(value, bool):
        return value
    word = text(value).lower()
    if word in ("true", "yes", "1", "on"):
        return True
    if word in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{_name(block, key)} must be true or false, not {value!r}")


def as_int(key: str, value: Any, low: int, high: int, *, block: str = "") -> int:
    try:
        number = int(text(value))
    except ValueError:
        raise ConfigError(f"{_name(block, key)} must be a whole number, not {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{_name(block, key)} must be between {low} and {high}, not {number}")
    return number


def as_float(
    key: str, value: Any, *, low: float = 0.0, positive: bool = False, block: str = ""
) -> float:
    """A number of at least ``low`` (more than 0 when ``positive``)."""
    try:
        number = float(text(value))
    except ValueError:
        raise ConfigError(f"{_name(block, key)} must be a number, not {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{_name(block, key)} must be a finite number, not {value!r}")
    if positive and not number > 0:
        raise ConfigError(f"{_name(block, key)} must be more than 0, not {number}")
    if number < low:
        raise ConfigError(f"{_name(block, key)} must be at least {low}, not {number}")
    return number


def refuse_unknown(keys: Iterable[str], known: Collection[str], *, block: str) -> None:
    """Refuse keys nobody reads, naming the closest known one: a typo must not do nothing."""
    unknown = sorted(str(key) for key in keys if key not in known)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hints.append(f"'{key}' (did you mean '{close[0]}'?)" if close else f"'{key}'")
    raise ConfigError(
        f"Unknown setting(s) in {block}: {', '.join(hints)}. Known: {', '.join(sorted(known))}"
    )


__all__ = ["as_bool", "as_float", "as_int", "refuse_unknown", "text"]

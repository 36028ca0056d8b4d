"""Small frozen configuration objects, built once from ``credentials.yml``.

Example::

    creds = ZApiCredentials.from_mapping(
        {"instance_id": "3C6F...", "instance_token": "F1A2...", "client_token": "Fb7e..."}
    )
    creds.url_for("send-text")   # https://api.z-api.io/instances/3C6F.../token/F1A2.../send-text

Every credential is stripped of the whitespace and line breaks that come along when a token is
pasted from Z-API's dashboard. Secrets are kept out of ``repr`` so that a logged config object
cannot leak them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from zapi_channel.errors import ConfigError

DEFAULT_BASE_URL = "https://api.z-api.io"

#: The keys of the channel's block in ``credentials.yml`` that must be present and non-empty.
CREDENTIAL_KEYS: Tuple[str, ...] = ("instance_id", "instance_token", "client_token")
REQUIRED_CHANNEL_KEYS: Tuple[str, ...] = (*CREDENTIAL_KEYS, "webhook_token")

BUTTON_MODES = ("text", "buttons", "list")

#: What the bot receives when a customer sends something that has no text of its own.
#: Rasa reads ``/name`` as "intent ``name``", so a bot can answer each kind with a story or rule.
DEFAULT_MEDIA_TEXTS: Mapping[str, str] = {
    "audio": "/zapi_audio",
    "sticker": "/zapi_sticker",
    "location": "/zapi_location",
    "contact": "/zapi_contact",
    "image": "/zapi_image",
    "video": "/zapi_video",
    "document": "/zapi_document",
    "reaction": "/zapi_reaction",
}


def clean(value: Any) -> str:
    """Strip every leading/trailing whitespace and line break from a pasted value.

    YAML may hand us numbers (an instance id of digits) or ``None``: both become strings.
    """
    if value is None:
        return ""
    return str(value).strip()


def mask(secret: str) -> str:
    """A recognisable but useless form of a secret: ``"3C6F…9244"``."""
    if len(secret) <= 8:
        return "***"
    return f"{secret[:4]}…{secret[-4:]}"


def _as_bool(key: str, value: Any, default: bool) -> bool:
    # Environment variables (``${ZAPI_ACTIVE}``) always arrive as strings.
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = clean(value).lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"'{key}' must be true or false, not {value!r}")


def _as_int(key: str, value: Any, default: Optional[int], low: int, high: int) -> Optional[int]:
    if value is None or value == "":
        return default
    try:
        number = int(clean(value))
    except ValueError:
        raise ConfigError(f"'{key}' must be a whole number, not {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"'{key}' must be between {low} and {high}, not {number}")
    return number


def _as_float(key: str, value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(clean(value))
    except ValueError:
        raise ConfigError(f"'{key}' must be a number, not {value!r}") from None
    if number < 0:
        raise ConfigError(f"'{key}' must not be negative, not {number}")
    return number


def _missing(data: Mapping[str, Any], keys: Tuple[str, ...]) -> None:
    absent = [key for key in keys if not clean(data.get(key))]
    if absent:
        raise ConfigError(
            "Missing or empty in the zapi_channel.ZApiInput block of credentials.yml: "
            + ", ".join(absent)
        )


_BASE_URL = re.compile(r"^https?://[^\s/]+(:\d+)?(/[^\s]*)?$")


@dataclass(frozen=True)
class ZApiCredentials:
    """The three credentials of one Z-API instance and where Z-API lives.

    ``client_token`` is the account's Security Token, sent as the ``Client-Token`` header.
    """

    instance_id: str = field(repr=False)
    instance_token: str = field(repr=False)
    client_token: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise through object.__setattr__ so that every way of building the
        # object (constructor, replace(), from_mapping) strips pasted whitespace.
        for name in ("instance_id", "instance_token", "client_token"):
            object.__setattr__(self, name, clean(getattr(self, name)))
        base = clean(self.base_url).rstrip("/") or DEFAULT_BASE_URL
        if not _BASE_URL.match(base):
            raise ConfigError(f"'base_url' must be an http(s) URL, not {base!r}")
        object.__setattr__(self, "base_url", base)

    def __repr__(self) -> str:
        return (
            f"ZApiCredentials(instance_id={mask(self.instance_id)!r}, base_url={self.base_url!r})"
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ZApiCredentials:
        _missing(data, CREDENTIAL_KEYS)
        return cls(
            instance_id=clean(data["instance_id"]),
            instance_token=clean(data["instance_token"]),
            client_token=clean(data["client_token"]),
            base_url=clean(data.get("base_url")) or DEFAULT_BASE_URL,
        )

    def replace(self, **changes: Any) -> ZApiCredentials:
        return dataclasses.replace(self, **changes)

    def url_for(self, endpoint: str) -> str:
        """The full URL of ``endpoint``. It holds the instance token: never log it."""
        return (
            f"{self.base_url}/instances/{self.instance_id}/token/{self.instance_token}/"
            f"{endpoint.lstrip('/')}"
        )

    def secrets(self) -> Tuple[str, ...]:
        """The values that must never be written to a log."""
        return (self.instance_token, self.client_token)


@dataclass(frozen=True)
class ChannelConfig:
    """Everything the ``zapi_channel.ZApiInput`` block of ``credentials.yml`` configures."""

    credentials: ZApiCredentials
    webhook_token: str = field(repr=False)
    active: bool = True
    allow_groups: bool = False
    allow_reactions: bool = False
    buttons_as: str = "text"
    delay_typing: Optional[int] = None
    mark_read: bool = False
    max_text_length: int = 4096
    media_texts: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MEDIA_TEXTS))
    #: How many conversations may run a Rasa turn at the same time.
    max_concurrency: int = 8
    #: The largest webhook body accepted, in bytes (Z-API sends media as URLs, so bodies are small).
    max_body_bytes: int = 256 * 1024
    timeout_seconds: float = 15.0
    #: Where answers Z-API did not take are kept (relative to rasa run's working folder).
    failed_sends_path: str = "failed-sends.jsonl"
    #: Tries per send, the first included (transient failures only; see zapi_channel.retry).
    retry_attempts: int = 4
    #: On SIGTERM, how long queued turns may take before they are kept for the next start.
    shutdown_grace_seconds: float = 10.0
    #: Where those unanswered messages are kept (relative to rasa run's working folder).
    pending_inbox_path: str = "pending-inbox.jsonl"
    #: Shared state for several instances: dedup, numbered choices, sent markers, durable inbox.
    redis_url: Optional[str] = field(default=None, repr=False)
    #: Prefix of every Redis key of this bot (two bots may share one Redis).
    redis_prefix: str = "zapi"
    #: The durable inbox is split into this many ordered streams, spread over the instances.
    inbox_partitions: int = 8
    #: An instance that stops renewing its partitions for this long is taken over.
    inbox_lease_seconds: float = 15.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "webhook_token", clean(self.webhook_token))
        if self.buttons_as not in BUTTON_MODES:
            raise ConfigError(
                f"'buttons_as' must be one of {', '.join(BUTTON_MODES)}, not {self.buttons_as!r}"
            )

    def __repr__(self) -> str:
        return (
            f"ChannelConfig(credentials={self.credentials!r}, active={self.active}, "
            f"allow_groups={self.allow_groups}, buttons_as={self.buttons_as!r})"
        )

    @classmethod
    def from_mapping(cls, data: Optional[Mapping[str, Any]]) -> ChannelConfig:
        """Build from the channel's ``credentials.yml`` block (placeholders already expanded)."""
        data = data or {}
        _missing(data, REQUIRED_CHANNEL_KEYS)
        buttons_as = clean(data.get("buttons_as")) or "text"
        media_texts: Dict[str, str] = dict(DEFAULT_MEDIA_TEXTS)
        overrides = data.get("media_texts") or {}
        if not isinstance(overrides, Mapping):
            raise ConfigError("'media_texts' must map a media kind to the text the bot receives")
        for kind, text in overrides.items():
            if kind not in DEFAULT_MEDIA_TEXTS:
                raise ConfigError(
                    f"'media_texts' has an unknown kind {kind!r}; known: "
                    + ", ".join(sorted(DEFAULT_MEDIA_TEXTS))
                )
            if not clean(text):
                # An empty text would reach Rasa as an empty message.
                raise ConfigError(f"'media_texts' entry {kind!r} must not be empty")
            media_texts[kind] = clean(text)
        timeout_seconds = _as_float("timeout_seconds", data.get("timeout_seconds"), 15.0)
        return cls(
            credentials=ZApiCredentials.from_mapping(data),
            webhook_token=clean(data["webhook_token"]),
            active=_as_bool("active", data.get("active"), True),
            allow_groups=_as_bool("allow_groups", data.get("allow_groups"), False),
            allow_reactions=_as_bool("allow_reactions", data.get("allow_reactions"), False),
            buttons_as=buttons_as,
            # Z-API documents delayTyping as 1-15 seconds.
            delay_typing=_as_int("delay_typing", data.get("delay_typing"), None, 1, 15),
            mark_read=_as_bool("mark_read", data.get("mark_read"), False),
            max_text_length=_as_int(
                "max_text_length", data.get("max_text_length"), 4096, 100, 65000
            )
            or 4096,
            media_texts=media_texts,
            max_concurrency=_as_int("max_concurrency", data.get("max_concurrency"), 8, 1, 1024)
            or 8,
            max_body_bytes=_as_int(
                "max_body_bytes", data.get("max_body_bytes"), 256 * 1024, 1024, 16 * 1024 * 1024
            )
            or 256 * 1024,
            timeout_seconds=timeout_seconds,
            failed_sends_path=clean(data.get("failed_sends_path")) or "failed-sends.jsonl",
            retry_attempts=_as_int("retry_attempts", data.get("retry_attempts"), 4, 1, 10) or 4,
            shutdown_grace_seconds=_as_float(
                "shutdown_grace_seconds", data.get("shutdown_grace_seconds"), 10.0
            ),
            pending_inbox_path=clean(data.get("pending_inbox_path")) or "pending-inbox.jsonl",
            redis_url=clean(data.get("redis_url")) or None,
            redis_prefix=clean(data.get("redis_prefix")) or "zapi",
            inbox_partitions=_as_int("inbox_partitions", data.get("inbox_partitions"), 8, 1, 256)
            or 8,
            inbox_lease_seconds=_as_float(
                "inbox_lease_seconds", data.get("inbox_lease_seconds"), 15.0
            ),
        )

    def secrets(self) -> Tuple[str, ...]:
        return (*self.credentials.secrets(), self.webhook_token)


__all__ = [
    "BUTTON_MODES",
    "CREDENTIAL_KEYS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MEDIA_TEXTS",
    "REQUIRED_CHANNEL_KEYS",
    "ChannelConfig",
    "ZApiCredentials",
    "clean",
    "mask",
]

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
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from zapi_channel.coerce import as_bool, as_float, as_int, refuse_unknown, text
from zapi_channel.errors import ConfigError

DEFAULT_BASE_URL = "https://api.z-api.io"

#: The embedded state file, relative to the working folder of rasa run (and of the CLI).
DEFAULT_STATE_PATH = "zapi-channel.db"

#: The keys of the channel's block in ``credentials.yml`` that must be present and non-empty.
CREDENTIAL_KEYS: Tuple[str, ...] = ("instance_id", "instance_token", "client_token")
REQUIRED_CHANNEL_KEYS: Tuple[str, ...] = (*CREDENTIAL_KEYS, "webhook_token")

BUTTON_MODES = ("text", "buttons", "list")
#: What can carry the channel's HTTP calls (see zapi_channel.transport).
HTTP_TRANSPORTS = ("httpx", "aiohttp")
#: When an answer quotes the customer's message: in groups it tells who is answered.
QUOTE_MODES = ("never", "groups", "always")

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
    # Content this channel does not know (a poll vote, an order, kinds Z-API adds later): the
    # customer still gets an answer, and metadata["zapi"]["kind"] names what it was.
    "unsupported": "/zapi_unsupported",
}


#: Kept under its old name: most modules and the CLI import it from here.
clean = text


def mask(secret: str) -> str:
    """A recognisable but useless form of a secret: ``"3C6F…9244"``."""
    if len(secret) <= 8:
        return "***"
    return f"{secret[:4]}…{secret[-4:]}"


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
    """Everything the ``zapi_channel.ZApiInput`` block of ``credentials.yml`` configures.

    Each default is written once, here; :meth:`from_mapping` only coerces what the block sets.
    """

    credentials: ZApiCredentials
    webhook_token: str = field(repr=False)
    active: bool = True
    allow_groups: bool = False
    allow_reactions: bool = False
    buttons_as: str = "text"
    delay_typing: Optional[int] = None
    mark_read: bool = False
    max_text_length: int = 4096
    #: Whether the first message of an answer quotes the customer's message: never, groups, always.
    quote_replies: str = "never"
    #: The preview picture of a link whose response names none (Z-API requires one); unset, the
    #: linked site's /favicon.ico.
    link_preview_image: Optional[str] = None
    #: Messages of one customer arriving within this many milliseconds of each other become one
    #: Rasa message (texts only; 0: off). A customer typing without pause is answered after at
    #: most three windows.
    merge_window_ms: int = 0
    media_texts: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MEDIA_TEXTS))
    #: How many conversations may run a Rasa turn at the same time.
    max_concurrency: int = 8
    #: The largest webhook body accepted, in bytes (Z-API sends media as URLs, so bodies are small).
    max_body_bytes: int = 256 * 1024
    timeout_seconds: float = 15.0
    #: What carries the bytes of every call to Z-API under httpx's API: ``aiohttp``
    #: (zapi_channel.transport; a send costs a quarter of the CPU, docs/benchmarks.md) or
    #: ``httpx`` (httpx's own, httpcore).
    http_transport: str = "aiohttp"
    #: Tries per send, the first included (transient failures only; see zapi_channel.retry).
    retry_attempts: int = 4
    #: On SIGTERM, how long queued turns may take before they are left for the next start.
    shutdown_grace_seconds: float = 10.0
    #: The embedded state file (inbox, dedup, choices, sent markers, failed sends), relative to
    #: rasa run's working folder. Unused with ``redis_url``.
    state_path: str = DEFAULT_STATE_PATH
    #: How long a message id is remembered. Z-API redelivers for minutes (9 deliveries of one
    #: message in 3.5 minutes were seen): a day is far past that window.
    dedup_ttl_seconds: float = 24 * 3600.0
    #: Minutes the bot stays quiet in a chat after the shop's owner wrote in it from the phone
    #: (each owner message restarts the wait); 0 turns human takeover off.
    handoff_minutes: float = 30.0
    #: What the owner types in the chat to hand it back to the bot at once.
    handoff_resume_command: str = "#bot"
    #: Whether Z-API keeps our sends while the phone is disconnected, delivering them (maybe hours
    #: late) on reconnect. ``None``, the default, leaves the instance's setting alone (Z-API's own
    #: default: it queues); ``True`` or ``False`` is applied when the bot starts.
    queue_when_disconnected: Optional[bool] = None
    #: Serves Prometheus metrics at /webhooks/zapi/metrics to ``Authorization: Bearer <it>``;
    #: unset, there is no metrics endpoint (the webhook is public, metrics must not be).
    metrics_token: Optional[str] = field(default=None, repr=False)
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
        if self.metrics_token is not None and len(clean(self.metrics_token)) < 16:
            # It guards the metrics of a public server: a short one could be guessed.
            raise ConfigError(
                "'metrics_token' must be at least 16 characters (for example the output of "
                '`python -c "import secrets; print(secrets.token_urlsafe(32))"`)'
            )
        if self.http_transport not in HTTP_TRANSPORTS:
            raise ConfigError(
                f"'http_transport' must be one of {', '.join(HTTP_TRANSPORTS)}, "
                f"not {self.http_transport!r}"
            )
        if self.quote_replies not in QUOTE_MODES:
            raise ConfigError(
                f"'quote_replies' must be one of {', '.join(QUOTE_MODES)}, "
                f"not {self.quote_replies!r}"
            )
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
        for old, hint in _REMOVED_KEYS.items():
            if old in data:
                raise ConfigError(f"'{old}' is no longer a setting of the channel: {hint}")
        refuse_unknown(data, KNOWN_CHANNEL_KEYS, block="the zapi_channel.ZApiInput block")
        values: Dict[str, Any] = {}
        for key, coerce in _COERCERS.items():
            value = data.get(key)
            # An unset ${VAR} arrives as an empty string: it means "the default".
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            values[key] = coerce(key, value)
        return cls(
            credentials=ZApiCredentials.from_mapping(data),
            webhook_token=clean(data["webhook_token"]),
            **values,
        )

    def secrets(self) -> Tuple[str, ...]:
        extra = (self.metrics_token,) if self.metrics_token else ()
        return (*self.credentials.secrets(), self.webhook_token, *extra)


def _media_texts(key: str, value: Any) -> Dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError("'media_texts' must map a media kind to the text the bot receives")
    media_texts: Dict[str, str] = dict(DEFAULT_MEDIA_TEXTS)
    for kind, wording in value.items():
        if kind not in DEFAULT_MEDIA_TEXTS:
            raise ConfigError(
                f"'media_texts' has an unknown kind {kind!r}; known: "
                + ", ".join(sorted(DEFAULT_MEDIA_TEXTS))
            )
        if not clean(wording):
            # An empty text would reach Rasa as an empty message.
            raise ConfigError(f"'media_texts' entry {kind!r} must not be empty")
        media_texts[kind] = clean(wording)
    return media_texts


def _ranged(low: int, high: int) -> Callable[[str, Any], int]:
    return lambda key, value: as_int(key, value, low, high)


def _text_value(key: str, value: Any) -> str:
    return clean(value)


def _url_value(key: str, value: Any) -> str:
    url = clean(value)
    if not url.startswith(("https://", "http://", "data:")):
        raise ConfigError(f"'{key}' must be an http(s) URL, not {url[:60]!r}")
    return url


#: How each optional key is read. The credentials (and base_url) are read by ZApiCredentials.
_COERCERS: Mapping[str, Callable[[str, Any], Any]] = {
    "active": as_bool,
    "allow_groups": as_bool,
    "allow_reactions": as_bool,
    "buttons_as": _text_value,
    # Z-API documents delayTyping as 1-15 seconds.
    "delay_typing": _ranged(1, 15),
    "mark_read": as_bool,
    "max_text_length": _ranged(100, 65000),
    "quote_replies": _text_value,
    "link_preview_image": _url_value,
    # A minute of silence is no longer a burst; a longer wait would read as a bot not answering.
    "merge_window_ms": _ranged(0, 60000),
    "media_texts": _media_texts,
    "max_concurrency": _ranged(1, 1024),
    "max_body_bytes": _ranged(1024, 16 * 1024 * 1024),
    "timeout_seconds": lambda key, value: as_float(key, value, positive=True),
    "http_transport": _text_value,
    "retry_attempts": _ranged(1, 10),
    "shutdown_grace_seconds": as_float,
    "state_path": _text_value,
    # Below a minute would answer Z-API's own redeliveries again.
    "dedup_ttl_seconds": lambda key, value: as_float(key, value, low=60.0),
    "handoff_minutes": as_float,
    "handoff_resume_command": _text_value,
    "queue_when_disconnected": as_bool,
    "metrics_token": _text_value,
    "redis_url": _text_value,
    "redis_prefix": _text_value,
    "inbox_partitions": _ranged(1, 256),
    "inbox_lease_seconds": lambda key, value: as_float(key, value, positive=True),
}

#: Every key the channel's block may hold.
KNOWN_CHANNEL_KEYS: Tuple[str, ...] = (*REQUIRED_CHANNEL_KEYS, "base_url", *_COERCERS)

#: Keys of earlier versions, and what replaced them.
_REMOVED_KEYS: Mapping[str, str] = {
    "pending_inbox_path": "unanswered messages are kept in the state file ('state_path', "
    "default zapi-channel.db). Remove the key.",
    "failed_sends_path": "failed sends are kept in the state file ('state_path', default "
    "zapi-channel.db). Remove the key.",
}


__all__ = [
    "BUTTON_MODES",
    "CREDENTIAL_KEYS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MEDIA_TEXTS",
    "DEFAULT_STATE_PATH",
    "KNOWN_CHANNEL_KEYS",
    "QUOTE_MODES",
    "REQUIRED_CHANNEL_KEYS",
    "ChannelConfig",
    "ZApiCredentials",
    "clean",
    "mask",
]

"""The emulator's small values: defaults, replies, instances and the faults it can inject."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import (
    Any,
    Dict,
    List,
    Mapping,
    Optional,
    Tuple,
)
from urllib.parse import urlsplit

from zapi_channel.client import WEBHOOK_KINDS

logger = logging.getLogger("zapi_channel.emulator")

DEFAULT_INSTANCE_ID = "EMULATOR0000000000000000000000001"
DEFAULT_INSTANCE_TOKEN = "emulator-instance-token"  # noqa: S105 - a public, made-up default
DEFAULT_CLIENT_TOKEN = "emulator-client-token"  # noqa: S105 - a public, made-up default
DEFAULT_PHONE = "5511900000000"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8300
#: How long a webhook may take to answer one callback, in seconds.
WEBHOOK_TIMEOUT = 10.0


_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_DAY_MS = 24 * 60 * 60 * 1000

_NOT_CONNECTED = "You are not connected."
#: ``POST /queue``: the docs' default page size, and the largest one served (QUEUE_PAGE_SIZE).
QUEUE_DEFAULT_PAGE_SIZE = 20
#: The documented refusal of an interactive message whose button terms are not accepted.
BUTTON_TERMS_ERROR = "You must accept buttons message terms in panel to send this message."
_INTERACTIVE = frozenset({"send-button-list", "send-option-list", "send-button-actions"})
_INVALID_URL = "Invalid URL, only https allowed"


# -- small values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """An answer of the emulator: an HTTP status and a JSON body (``None``: an empty body)."""

    status: int
    body: Any = None


@dataclass(frozen=True)
class WebhookResult:
    """The outcome of posting one callback.

    ``status`` is the webhook's HTTP status, or ``None`` when nothing was posted (no URL set) or
    the post failed; ``error`` says why it failed, or that no webhook is configured.
    """

    status: Optional[int]
    error: Optional[str]


def _error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


def new_message_id() -> str:
    """A WhatsApp-like message id: 20 upper-case hex characters."""
    return secrets.token_hex(10).upper()


def new_zaap_id() -> str:
    """A Z-API-like ``zaapId``: 32 upper-case hex characters."""
    return secrets.token_hex(16).upper()


def fake_lid(phone: str) -> str:
    """A made-up WhatsApp ``@lid`` for ``phone``: always the same one for the same phone."""
    if phone.endswith("@lid"):
        return phone
    digest = hashlib.sha256(phone.encode("utf-8")).hexdigest()
    return f"{int(digest[:16], 16) % 10**14:014d}@lid"


def _same(given: str, expected: str) -> bool:
    # Bytes, because compare_digest refuses non-ASCII str and a header may hold anything.
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def check_webhook_url(url: str, *, allow_local_http: bool) -> Optional[str]:
    """Return Z-API's error text if ``url`` may not be a webhook, ``None`` if it may.

    Z-API accepts only https URLs; ``allow_local_http`` also lets http through when the host is
    this machine (see the module docstring).
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return _INVALID_URL
    if not host:
        return _INVALID_URL
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and allow_local_http and host.lower() in _LOCAL_HOSTS:
        return None
    return _INVALID_URL


# -- instances and faults -----------------------------------------------------------------------


@dataclass
class EmulatedInstance:
    """One simulated Z-API instance and its settings (mutable: it is the emulator's state)."""

    instance_id: str
    instance_token: str = field(repr=False)
    client_token: str = field(repr=False)
    connected: bool = True
    #: The number of the simulated phone paired with the instance (``connectedPhone``).
    phone: str = DEFAULT_PHONE
    name: str = "Z-API emulator"
    #: Webhook URL by kind: ``received``, ``delivery``, ``message-status``, ``connected``,
    #: ``disconnected``, ``chat-presence``.
    webhooks: Dict[str, str] = field(default_factory=dict)
    notify_sent_by_me: bool = False
    #: Z-API's queue for a disconnected phone (``disableEnqueueWhenDisconnected`` turns it off).
    enqueue_when_disconnected: bool = True
    #: Sends accepted while disconnected, delivered in order when the phone reconnects.
    queue: List[Dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.webhooks) - set(WEBHOOK_KINDS))
        if unknown:
            raise ValueError(
                f"unknown webhook kind(s) {', '.join(unknown)}; known: {', '.join(WEBHOOK_KINDS)}"
            )


_FAULT_LIMITS: Mapping[str, Tuple[int, int]] = {
    "fail_sends": (0, 1_000_000),
    "fail_status": (400, 599),
    "send_delay_ms": (0, 60_000),
    "send_without_message_id": (0, 1_000_000),
    "fail_deliveries": (0, 1_000_000),
}
_FAULT_FLAGS = frozenset({"duplicate_deliveries", "refuse_buttons"})


@dataclass
class Faults:
    """Failures to inject into the next sends (set through ``POST /_emulator/faults``)."""

    #: The next N sends answer ``fail_status`` with ``{"error": <its reason phrase>}``.
    fail_sends: int = 0
    fail_status: int = 503
    #: Every send waits this long before answering.
    send_delay_ms: int = 0
    #: Every ReceivedCallback is posted twice, as Z-API has been seen doing.
    duplicate_deliveries: bool = False
    #: The next N sends answer 200 ``{"value": false}``, as Z-API has been seen doing.
    send_without_message_id: int = 0
    #: The next N sends are queued (200 with a messageId), then reported failed by a
    #: DeliveryCallback whose ``error`` is ``delivery_error``.
    fail_deliveries: int = 0
    delivery_error: str = "Phone number does not exist"
    #: Interactive sends (buttons, lists) are queued, then refused for the button terms.
    refuse_buttons: bool = False

    def merged(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with ``changes`` applied; ``ValueError`` names the first bad key or value."""
        known = {f.name for f in fields(self)}
        values = asdict(self)
        for key, value in changes.items():
            if key not in known:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(sorted(known))}")
            if key in _FAULT_FLAGS:
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
            elif key == "delivery_error":
                if not isinstance(value, str) or not value.strip() or len(value) > 500:
                    raise ValueError("delivery_error must be a text of 1 to 500 characters")
            else:
                low, high = _FAULT_LIMITS[key]
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{key} must be a whole number")
                if not low <= value <= high:
                    raise ValueError(f"{key} must be between {low} and {high}")
            values[key] = value
        return Faults(**values)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

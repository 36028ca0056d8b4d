"""A local Z-API: its HTTP API, its webhooks and a pretend customer, with no phone and no account.

Developers and the end-to-end tests run the whole loop against it: a customer message goes in as a
``ReceivedCallback`` posted to the channel's webhook, Rasa answers through ``send-*`` calls, and the
emulator answers those the way Z-API does, then posts the delivery and status callbacks.

Run it (``--help`` lists every flag)::

    python -m zapi_channel.emulator --port 8300 \\
        --webhook-url "http://127.0.0.1:5005/webhooks/zapi/webhook?token=..."

point the channel's ``base_url`` at ``http://127.0.0.1:8300`` with the emulator's credentials
(printed defaults: :data:`DEFAULT_INSTANCE_ID`, :data:`DEFAULT_INSTANCE_TOKEN`,
:data:`DEFAULT_CLIENT_TOKEN`), and talk as a customer::

    curl -s localhost:8300/_emulator/messages -d '{"phone": "5511999999999", "text": "oi"}'
    curl -s 'localhost:8300/_emulator/messages?phone=5511999999999'

It is strict where Z-API is strict (credentials, verbs, content type, required fields, https-only
webhooks), so a channel bug shows up here before it shows up on WhatsApp. Behaviour that Z-API does
not document is marked *guess* below; see ``/work/shared/zapi-reference.md`` for the facts.

HTTP webhooks: Z-API accepts only https webhook URLs, and so does :class:`Emulator` by default. A
local Rasa listens on plain http, so ``Emulator(allow_http_webhooks=True)`` also accepts ``http``
URLs whose host is ``127.0.0.1``, ``localhost`` or ``::1`` (never any other http URL). The command
line turns this on by default, since it is a local development tool; ``--no-allow-http-webhooks``
makes it as strict as Z-API.

The emulator's own JSON API lives under ``/_emulator`` (customer messages, conversations, faults,
connection switch, health); see :meth:`Emulator.build_app`. Its chat page, at ``/``, is that API
in a browser: type as the customer, see the bot's answers as WhatsApp shows them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import (
    Any,
    Awaitable,
    Callable,
    Coroutine,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)
from urllib.parse import urlsplit

import httpx
from sanic import Sanic, response
from sanic.request import Request
from sanic.response import HTTPResponse

from zapi_channel.client import QUEUE_LIMIT, QUEUE_PAGE_SIZE, WEBHOOK_KINDS
from zapi_channel.redaction import TokenPathFilter

# Named explicitly: under `python -m` __name__ would be "__main__".
logger = logging.getLogger("zapi_channel.emulator")

DEFAULT_INSTANCE_ID = "EMULATOR0000000000000000000000001"
DEFAULT_INSTANCE_TOKEN = "emulator-instance-token"  # noqa: S105 - a public, made-up default
DEFAULT_CLIENT_TOKEN = "emulator-client-token"  # noqa: S105 - a public, made-up default
DEFAULT_PHONE = "5511900000000"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8300
#: How long a webhook may take to answer one callback, in seconds.
WEBHOOK_TIMEOUT = 10.0

#: The ``GET me`` field that shows each webhook kind's URL.
CALLBACK_URL_FIELDS: Mapping[str, str] = {
    "received": "receivedCallbackUrl",
    "delivery": "deliveryCallbackUrl",
    "message-status": "messageStatusCallbackUrl",
    "connected": "connectedCallbackUrl",
    "disconnected": "disconnectedCallbackUrl",
    "chat-presence": "presenceChatCallbackUrl",
}

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_DAY_MS = 24 * 60 * 60 * 1000

#: The chat page's files, shipped inside the package.
STATIC_DIR = Path(__file__).parent / "static"
#: Everything served from :data:`STATIC_DIR` (``/`` is ``chat.html``), with its content type.
#: Only these names are served, so no request can reach another file.
STATIC_FILES: Mapping[str, str] = {
    "chat.html": "text/html; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# The page draws what the bot sends, which is untrusted: it escapes it, and this policy stops any
# script or style that would slip through anyway. Media may come from anywhere, as on WhatsApp.
_CHAT_PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob: http: https:; media-src 'self' data: blob: http: https:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

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


# -- validating send bodies (pure) --------------------------------------------------------------


class _BodyError(Exception):
    """A request body breaks one of Z-API's rules; the message is the ``error`` Z-API answers."""


# Digits with the country code, a WhatsApp privacy id, or a group id (older groups have the
# creator's number and a timestamp: "5511999999999-1623281429-group").
_PHONE = re.compile(r"\d{8,15}|\d+@lid|\d+(-\d+)?-group")
_CUSTOMER_PHONE = re.compile(r"\d{8,15}|\d+@lid")
_EXTENSION = re.compile(r"[A-Za-z0-9]+")
_PHONE_RULE = "phone must be digits with the country code (8 to 15), <digits>@lid or <digits>-group"


def _required_text(body: Mapping[str, Any], key: str, where: str = "") -> str:
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _BodyError(f"{where}{key} is required")
    if not isinstance(value, str):
        raise _BodyError(f"{where}{key} must be a string")
    return value


def _optional_text(body: Mapping[str, Any], key: str, where: str = "") -> Optional[str]:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BodyError(f"{where}{key} must be a string")
    return value


def _optional_id(body: Mapping[str, Any], key: str, where: str = "") -> None:
    value = _optional_text(body, key, where)
    if value is not None and not value.strip():
        raise _BodyError(f"{where}{key} must not be empty")


def _optional_bool(body: Mapping[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise _BodyError(f"{key} must be true or false")


def _required_object(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if value is None:
        raise _BodyError(f"{key} is required")
    if not isinstance(value, Mapping):
        raise _BodyError(f"{key} must be an object")
    return value


def _required_list(body: Mapping[str, Any], key: str, where: str = "") -> List[Mapping[str, Any]]:
    value = body.get(key)
    if value is None or (isinstance(value, list) and not value):
        raise _BodyError(f"{where}{key} is required")
    if not isinstance(value, list):
        raise _BodyError(f"{where}{key} must be a list")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _BodyError(f"{where}{key}[{index}] must be an object")
    return value


def _check_phone(body: Mapping[str, Any]) -> None:
    if not _PHONE.fullmatch(_required_text(body, "phone")):
        raise _BodyError(_PHONE_RULE)


def _check_delays(body: Mapping[str, Any]) -> None:
    # Z-API documents both delays as 1-15 seconds on every send that takes one.
    for key in ("delayMessage", "delayTyping"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 15:
            raise _BodyError(f"{key} must be a whole number of seconds from 1 to 15")


def _check_coordinate(body: Mapping[str, Any], key: str, limit: float) -> None:
    text = _required_text(body, key)
    try:
        number = float(text)
    except ValueError:
        raise _BodyError(f"{key} must be a number written as a string") from None
    if not -limit <= number <= limit:
        raise _BodyError(f"{key} must be between -{limit:g} and {limit:g}")


def _check_send_text(body: Mapping[str, Any]) -> None:
    _required_text(body, "message")
    _optional_id(body, "messageId")
    _optional_id(body, "editMessageId")


def _check_send_image(body: Mapping[str, Any]) -> None:
    _required_text(body, "image")
    _optional_text(body, "caption")
    _optional_id(body, "messageId")
    _optional_bool(body, "viewOnce")


def _check_send_audio(body: Mapping[str, Any]) -> None:
    _required_text(body, "audio")
    _optional_bool(body, "waveform")
    _optional_bool(body, "viewOnce")


def _check_send_video(body: Mapping[str, Any]) -> None:
    _required_text(body, "video")
    _optional_text(body, "caption")
    _optional_id(body, "messageId")
    _optional_bool(body, "viewOnce")


def _check_send_sticker(body: Mapping[str, Any]) -> None:
    _required_text(body, "sticker")
    _optional_id(body, "messageId")
    _optional_text(body, "stickerAuthor")


def _check_send_document(body: Mapping[str, Any]) -> None:
    _required_text(body, "document")
    _optional_text(body, "fileName")
    _optional_text(body, "caption")
    _optional_id(body, "messageId")


def _check_send_link(body: Mapping[str, Any]) -> None:
    message = _required_text(body, "message")
    link = _required_text(body, "linkUrl")
    # The docs mark all three required (an earlier emulator accepted a body without them, and so
    # did the channel's sends).
    for key in ("image", "title", "linkDescription"):
        _required_text(body, key)
    _optional_id(body, "messageId")
    if body.get("linkType") not in (None, "SMALL", "MEDIUM", "LARGE"):
        raise _BodyError("linkType must be SMALL, MEDIUM or LARGE")
    # Z-API's docs: "Don't forget to inform the same value of the linkURL at the end of this text."
    if not message.endswith(link):
        raise _BodyError("message must end with linkUrl")


def _check_send_location(body: Mapping[str, Any]) -> None:
    _required_text(body, "title")
    _required_text(body, "address")
    _check_coordinate(body, "latitude", 90)
    _check_coordinate(body, "longitude", 180)


def _check_send_reaction(body: Mapping[str, Any]) -> None:
    _required_text(body, "reaction")
    _required_text(body, "messageId")


def _check_send_button_list(body: Mapping[str, Any]) -> None:
    _required_text(body, "message")
    button_list = _required_object(body, "buttonList")
    buttons = _required_list(button_list, "buttons", "buttonList.")
    for index, button in enumerate(buttons):
        where = f"buttonList.buttons[{index}]."
        _required_text(button, "id", where)
        _required_text(button, "label", where)


def _check_send_option_list(body: Mapping[str, Any]) -> None:
    _required_text(body, "message")
    option_list = _required_object(body, "optionList")
    _required_text(option_list, "title", "optionList.")
    _required_text(option_list, "buttonLabel", "optionList.")
    options = _required_list(option_list, "options", "optionList.")
    for index, option in enumerate(options):
        where = f"optionList.options[{index}]."
        _required_text(option, "id", where)
        _required_text(option, "title", where)
        _optional_text(option, "description", where)


_ACTION_TYPES = ("CALL", "URL", "REPLY")


def _check_send_button_actions(body: Mapping[str, Any]) -> None:
    _required_text(body, "message")
    actions = _required_list(body, "buttonActions")
    kinds: Set[str] = set()
    for index, action in enumerate(actions):
        where = f"buttonActions[{index}]."
        _optional_id(action, "id", where)
        kind = action.get("type")
        if kind not in _ACTION_TYPES:
            raise _BodyError(f"{where}type must be one of {', '.join(_ACTION_TYPES)}")
        _required_text(action, "label", where)
        if kind == "CALL":
            _required_text(action, "phone", where)
        elif kind == "URL":
            url = _required_text(action, "url", where)
            if not url.startswith(("http://", "https://")):
                raise _BodyError(f"{where}url must start with http:// or https://")
        kinds.add(str(kind))
    # Z-API's docs: mixing REPLY with CALL/URL "causes an error on WhatsApp Web".
    if "REPLY" in kinds and kinds & {"CALL", "URL"}:
        raise _BodyError("REPLY buttons cannot be sent together with CALL or URL buttons")


def _check_read_message(body: Mapping[str, Any]) -> None:
    _required_text(body, "messageId")


#: Every send endpoint (``send-document`` stands for ``send-document/<extension>``).
SEND_CHECKS: Mapping[str, Callable[[Mapping[str, Any]], None]] = {
    "send-text": _check_send_text,
    "send-image": _check_send_image,
    "send-audio": _check_send_audio,
    "send-video": _check_send_video,
    "send-sticker": _check_send_sticker,
    "send-document": _check_send_document,
    "send-link": _check_send_link,
    "send-location": _check_send_location,
    "send-reaction": _check_send_reaction,
    "send-button-list": _check_send_button_list,
    "send-option-list": _check_send_option_list,
    "send-button-actions": _check_send_button_actions,
}

#: The verbs of every endpoint the emulator knows.
ENDPOINT_METHODS: Mapping[str, Tuple[str, ...]] = {
    **{name: ("GET",) for name in ("status", "device", "me", "disconnect", "restart")},
    **{f"update-webhook-{kind}": ("PUT",) for kind in WEBHOOK_KINDS},
    "update-every-webhooks": ("PUT",),
    "update-notify-sent-by-me": ("PUT",),
    "update-queue-settings": ("PUT",),
    **{name: ("POST",) for name in SEND_CHECKS},
    "read-message": ("POST",),
    # The queue: POST lists a page (current docs), GET lists it whole (older docs), DELETE empties
    # it; "queue/{zaapId}" deletes one message.
    "queue": ("POST", "GET", "DELETE"),
    "queue/{zaapId}": ("DELETE",),
}


def base_endpoint(endpoint: str) -> Optional[str]:
    """The name of a known endpoint (``send-document/pdf`` -> ``send-document``), or ``None``."""
    endpoint = endpoint.strip("/")
    head, _, extension = endpoint.partition("/")
    if head == "send-document":
        return head if extension and "/" not in extension else None
    if head == "queue" and extension:
        return "queue/{zaapId}" if "/" not in extension else None
    return endpoint if endpoint in ENDPOINT_METHODS else None


def validate_send(endpoint: str, body: Mapping[str, Any]) -> Optional[str]:
    """Z-API's error for a send (or ``read-message``) body, or ``None`` if it is acceptable.

    ``endpoint`` is the path after the token, such as ``send-text`` or ``send-document/pdf``.
    """
    base = base_endpoint(endpoint)
    check = _check_read_message if base == "read-message" else SEND_CHECKS.get(base or "")
    if check is None:
        return f"unknown send endpoint {endpoint!r}"
    try:
        if base == "send-document":
            extension = endpoint.strip("/").partition("/")[2]
            if not _EXTENSION.fullmatch(extension):
                raise _BodyError("the document extension must be letters and digits")
        _check_phone(body)
        _check_delays(body)
        check(body)
    except _BodyError as exc:
        return str(exc)
    return None


def _queue_entry(instance: EmulatedInstance, record: Mapping[str, Any]) -> Dict[str, Any]:
    """A queued send as ``/queue`` lists it (field names from Z-API's queue page)."""
    created = int(record["momment"])
    return {
        "_id": record["zaap_id"],
        "ZaapId": record["zaap_id"],
        "MessageId": record["message_id"],
        "InstanceId": instance.instance_id,
        "Phone": record["body"]["phone"],
        "Message": record.get("text") or "",
        "DelayMessage": record["body"].get("delayMessage", -1),
        "DelayTyping": record["body"].get("delayTyping", 0),
        "Created": created,
        "CreatedAt": datetime.fromtimestamp(created / 1000, timezone.utc).isoformat(
            timespec="milliseconds"
        ),
    }


def _paging_offset(state: Any) -> Optional[int]:
    """Where a ``pagingState`` the emulator gave points (0 without one); ``None`` if not ours."""
    if state is None:
        return 0
    if not isinstance(state, str):
        return None
    try:
        offset = json.loads(base64.urlsafe_b64decode(state.encode()))["offset"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None
    return offset if isinstance(offset, int) and offset >= 0 else None


def _record_text(body: Mapping[str, Any]) -> Optional[str]:
    for key in ("message", "caption"):
        value = body.get(key)
        if isinstance(value, str):
            return value
    return None


def _decode_object(raw: bytes) -> Optional[Dict[str, Any]]:
    try:
        decoded = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


# -- customer messages (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerMessage:
    """What ``POST /_emulator/messages`` asked a customer to say, checked and shaped for Z-API."""

    phone: str
    #: ``text``, ``button_reply``, ``list_reply``, ``image``, ``location`` or ``audio``.
    kind: str
    #: What the customer "said", for the conversation log (``None`` for location and audio).
    text: Optional[str]
    #: The content object's key in the ReceivedCallback (``text``, ``buttonsResponseMessage``...).
    content_key: str
    content: Dict[str, Any]
    sender_name: str
    reference_message_id: Optional[str] = None


#: The keys of ``POST /_emulator/messages`` that choose the kind of message.
CONTENT_KEYS = ("text", "button_id", "list_row_id", "image_url", "location", "audio_url")


def _number(body: Mapping[str, Any], key: str, limit: float) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BodyError(f"location.{key} is required (a number)")
    if not -limit <= value <= limit:
        raise _BodyError(f"location.{key} must be between -{limit:g} and {limit:g}")
    return float(value)


def parse_customer_message(body: Any) -> Union[CustomerMessage, str]:
    """Check a ``POST /_emulator/messages`` body; return the message or the error to answer."""
    if not isinstance(body, Mapping):
        return "the body must be a JSON object"
    try:
        phone = _required_text(body, "phone")
        if not _CUSTOMER_PHONE.fullmatch(phone):
            raise _BodyError("phone must be digits with the country code (8 to 15) or <digits>@lid")
        given = [key for key in CONTENT_KEYS if body.get(key) is not None]
        if len(given) != 1:
            raise _BodyError(
                ("give only one of " if given else "the message needs one of ")
                + ", ".join(CONTENT_KEYS)
            )
        digits = phone.partition("@")[0]
        sender_name = _optional_text(body, "sender_name") or f"Customer {digits[-4:]}"
        reference = _optional_text(body, "reference_message_id")
        kind, text, key, content = _content(body, given[0])
    except _BodyError as exc:
        return str(exc)
    return CustomerMessage(
        phone=phone,
        kind=kind,
        text=text,
        content_key=key,
        content=content,
        sender_name=sender_name,
        reference_message_id=reference,
    )


def _content(body: Mapping[str, Any], given: str) -> Tuple[str, Optional[str], str, Dict[str, Any]]:
    """(kind, text, content key, content object), shaped like tests/fixtures/callbacks/."""
    if given == "text":
        text = _required_text(body, "text")
        return "text", text, "text", {"message": text}
    if given == "button_id":
        button_id = _required_text(body, "button_id")
        label = _required_text(body, "label")
        return (
            "button_reply",
            label,
            "buttonsResponseMessage",
            {"buttonId": button_id, "message": label},
        )
    if given == "list_row_id":
        row_id = _required_text(body, "list_row_id")
        title = _required_text(body, "title")
        description = _optional_text(body, "description")
        # Z-API's documented example answers an option {id, title, description} with
        # {"message": <description>, "title": <title>, "selectedRowId": <id>}.
        return (
            "list_reply",
            title,
            "listResponseMessage",
            {"message": description or title, "title": title, "selectedRowId": row_id},
        )
    if given == "image_url":
        url = _required_text(body, "image_url")
        caption = _optional_text(body, "caption") or ""
        return (
            "image",
            caption or None,
            "image",
            {
                "mimeType": _optional_text(body, "mime_type") or "image/jpeg",
                "imageUrl": url,
                "thumbnailUrl": url,
                # Z-API sends "" (not a missing key) for an image without a caption.
                "caption": caption,
                "viewOnce": False,
            },
        )
    if given == "location":
        location = _required_object(body, "location")
        latitude = _number(location, "latitude", 90)
        longitude = _number(location, "longitude", 180)
        address = _optional_text(location, "address", "location.") or ""
        return (
            "location",
            None,
            "location",
            {
                "longitude": longitude,
                "latitude": latitude,
                "address": address,
                "url": f"https://maps.google.com/maps?q={latitude},{longitude}",
            },
        )
    url = _required_text(body, "audio_url")
    seconds = body.get("seconds", 0)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
        raise _BodyError("seconds must be a whole number")
    return (
        "audio",
        None,
        "audio",
        {
            "ptt": True,
            "seconds": seconds,
            "audioUrl": url,
            "mimeType": _optional_text(body, "mime_type") or "audio/ogg; codecs=opus",
            "viewOnce": False,
        },
    )


def received_envelope(
    instance: EmulatedInstance,
    *,
    phone: str,
    message_id: str,
    momment: int,
    sender_name: Optional[str],
    from_me: bool = False,
    status: str = "RECEIVED",
    from_api: Optional[bool] = None,
) -> Dict[str, Any]:
    """Every envelope field of a ``ReceivedCallback``, in the order of the documented examples."""
    return {
        "isStatusReply": False,
        "chatLid": None,
        "senderLid": fake_lid(phone),
        "connectedPhone": instance.phone,
        "waitingMessage": False,
        "isEdit": False,
        "isGroup": phone.endswith("-group"),
        "isNewsletter": False,
        "instanceId": instance.instance_id,
        "messageId": message_id,
        "phone": phone,
        "fromMe": from_me,
        # Our API sends echo with fromApi true; the owner typing on the phone, false.
        "fromApi": from_me if from_api is None else from_api,
        "momment": momment,
        "status": status,
        "chatName": sender_name,
        "senderPhoto": None,
        "senderName": sender_name,
        "participantPhone": None,
        "participantLid": None,
        "photo": None,
        "broadcast": False,
        "forwarded": False,
    }


def received_callback(
    instance: EmulatedInstance,
    message: CustomerMessage,
    *,
    message_id: str,
    momment: int,
    from_owner: bool = False,
) -> Dict[str, Any]:
    """The complete ``ReceivedCallback`` Z-API posts for ``message``.

    ``from_owner``: the shop's owner wrote it on the phone, as Z-API reports that with "notify
    sent by me" on (seen in real traffic: ``fromMe`` true, ``fromApi`` false, ``RECEIVED``).
    """
    payload = received_envelope(
        instance,
        phone=message.phone,
        message_id=message_id,
        momment=momment,
        sender_name=message.sender_name,
        from_me=from_owner,
        from_api=False,
    )
    if message.reference_message_id is not None:
        payload["referenceMessageId"] = message.reference_message_id
    payload["type"] = "ReceivedCallback"
    payload[message.content_key] = message.content
    return payload


def _echo_content(endpoint: str, body: Mapping[str, Any]) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The content object of our own send as a "notify sent by me" echo (guess, see module doc)."""
    base = base_endpoint(endpoint)
    if base == "send-image":
        caption = body.get("caption") or ""
        return "image", {"mimeType": "image/jpeg", "imageUrl": body["image"], "caption": caption}
    if base == "send-audio":
        return "audio", {"ptt": False, "audioUrl": body["audio"], "mimeType": "audio/mpeg"}
    if base == "send-video":
        caption = body.get("caption") or ""
        return "video", {"videoUrl": body["video"], "caption": caption, "mimeType": "video/mp4"}
    if base == "send-sticker":
        return "sticker", {"stickerUrl": body["sticker"], "mimeType": "image/webp"}
    if base == "send-document":
        name = body.get("fileName") or ""
        caption = body.get("caption") or ""
        return "document", {
            "documentUrl": body["document"],
            "fileName": name,
            "title": name,
            "caption": caption,
        }
    message = body.get("message")
    if isinstance(message, str):
        return "text", {"message": message}
    return None


# -- the emulator -------------------------------------------------------------------------------

Record = Dict[str, Any]


class Emulator:
    """The state of the emulated Z-API and everything that changes it.

    The methods that decide (:meth:`handle_zapi`, :meth:`customer_message`, :meth:`set_faults`...)
    return a :class:`Reply` and know nothing of sanic; :meth:`build_app` only translates HTTP.

    Example::

        emulator = Emulator([EmulatedInstance("ID", "TOKEN", "CLIENT")], allow_http_webhooks=True)
        app = emulator.build_app("zapi-emulator-1")
    """

    def __init__(
        self,
        instances: Iterable[EmulatedInstance] = (),
        *,
        allow_http_webhooks: bool = False,
        webhook_timeout: float = WEBHOOK_TIMEOUT,
        http_client: Optional[httpx.AsyncClient] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.instances: Dict[str, EmulatedInstance] = {}
        for instance in instances:
            self.add_instance(instance)
        self.allow_http_webhooks = allow_http_webhooks
        self.webhook_timeout = webhook_timeout
        #: Conversation by (instance id, customer phone): customer and bot records, in order.
        self.conversations: Dict[Tuple[str, str], List[Record]] = {}
        self.faults = Faults()
        self._clock = clock
        self._started_ms = self.now_ms()
        self._http_client = http_client
        self._owns_client = http_client is None
        self._tasks: Set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Emulator(instances={len(self.instances)})"

    # -- state --------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def add_instance(self, instance: EmulatedInstance) -> None:
        if instance.instance_id in self.instances:
            raise ValueError("an instance with this id already exists")
        self.instances[instance.instance_id] = instance

    def resolve_instance(self, instance_id: Optional[str] = None) -> Optional[EmulatedInstance]:
        """The named instance, or the first one when no name is given."""
        if instance_id is not None:
            return self.instances.get(instance_id)
        return next(iter(self.instances.values()), None)

    def conversation(self, phone: str, instance_id: Optional[str] = None) -> List[Record]:
        instance = self.resolve_instance(instance_id)
        if instance is None:
            return []
        return self.conversations.get((instance.instance_id, phone), [])

    def _append(self, instance: EmulatedInstance, phone: str, record: Record) -> None:
        self.conversations.setdefault((instance.instance_id, phone), []).append(record)

    def conversation_summaries(self) -> List[Dict[str, Any]]:
        return [
            {"instance_id": instance_id, "phone": phone, "count": len(records)}
            for (instance_id, phone), records in self.conversations.items()
        ]

    def clear_conversations(self) -> None:
        self.conversations.clear()

    def set_faults(self, changes: Mapping[str, Any]) -> Faults:
        """Merge ``changes`` into the current faults (``ValueError`` on a bad key or value)."""
        self.faults = self.faults.merged(changes)
        return self.faults

    def reset_faults(self) -> Faults:
        self.faults = Faults()
        return self.faults

    def health(self) -> Dict[str, Any]:
        return {"status": "ok", "instances": list(self.instances)}

    # -- the Z-API side -----------------------------------------------------------------------

    async def handle_zapi(
        self,
        method: str,
        instance_id: str,
        token: str,
        endpoint: str,
        *,
        client_token: Optional[str],
        content_type: Optional[str],
        body: bytes = b"",
    ) -> Reply:
        """Answer one call to ``/instances/{instance_id}/token/{token}/{endpoint}``."""
        reply = await self._zapi(
            method.upper(), instance_id, token, endpoint, client_token, content_type, body
        )
        # The endpoint name only: the URL holds the instance token.
        name = endpoint.strip("/") if base_endpoint(endpoint) else "(unknown endpoint)"
        logger.info("Z-API %s %s -> %d", method.upper(), name[:80], reply.status)
        return reply

    async def _zapi(
        self,
        method: str,
        instance_id: str,
        token: str,
        endpoint: str,
        client_token: Optional[str],
        content_type: Optional[str],
        body: bytes,
    ) -> Reply:
        # Z-API checks the instance first, then the Client-Token.
        instance = self.instances.get(instance_id)
        if instance is None or not _same(token, instance.instance_token):
            return _error(400, "Instance not found")
        if not client_token:
            return _error(400, "your client-token is not configured")
        if not _same(client_token, instance.client_token):
            # Z-API really echoes the value it refused: the client must redact it.
            return _error(403, f"Client-Token {client_token} not allowed")
        base = base_endpoint(endpoint)
        if base is None:
            return _error(404, "Not found")
        if method not in ENDPOINT_METHODS[base]:
            return _error(405, "Method Not Allowed")
        payload: Dict[str, Any] = {}
        if method in ("POST", "PUT") and not (base == "queue" and not body.strip()):
            if "application/json" not in (content_type or "").lower():
                return _error(415, "Unsupported Media Type")
            decoded = _decode_object(body)
            if decoded is None:
                return _error(400, "The body must be a JSON object")
            payload = decoded
        if base in SEND_CHECKS:
            return await self._send(instance, endpoint.strip("/"), payload)
        if base == "read-message":
            return self._read_message(instance, payload)
        if base.startswith("update-webhook-"):
            return self._update_webhooks(instance, [base[len("update-webhook-") :]], payload)
        if base == "update-every-webhooks":
            return self._update_webhooks(instance, list(WEBHOOK_KINDS), payload)
        if base == "update-notify-sent-by-me":
            return self._update_notify(instance, payload)
        if base == "update-queue-settings":
            return self._update_queue_settings(instance, payload)
        if base == "queue":
            return self._queue(instance, method, payload)
        if base == "queue/{zaapId}":
            return self._delete_queued(instance, endpoint.strip("/").partition("/")[2])
        return self._instance_call(instance, base)

    def _instance_call(self, instance: EmulatedInstance, name: str) -> Reply:
        if name == "status":
            return Reply(
                200,
                {
                    "connected": instance.connected,
                    "error": "You are already connected." if instance.connected else _NOT_CONNECTED,
                    "smartphoneConnected": instance.connected,
                },
            )
        if name == "device":
            if not instance.connected:
                return _error(400, _NOT_CONNECTED)
            return Reply(
                200,
                {
                    "phone": instance.phone,
                    "name": instance.name,
                    "isBusiness": False,
                    "originalDevice": "android",
                },
            )
        if name == "me":
            return Reply(200, self._me(instance))
        if name == "disconnect":
            if instance.connected:
                instance.connected = False
                # Z-API answers first and posts the callback on its own time.
                self._spawn(self._post(instance, "disconnected", self._disconnected(instance)))
            return Reply(200, {"value": True})
        return Reply(200, {"value": True})  # restart

    def _me(self, instance: EmulatedInstance) -> Dict[str, Any]:
        # Field names from Z-API's "me" page. "token" is there too: Z-API returns the instance
        # token, so code that logs this answer whole leaks it (here as on Z-API).
        data: Dict[str, Any] = {
            "id": instance.instance_id,
            "token": instance.instance_token,
            "name": instance.name,
            # The brief asks for epoch ms; the docs' example looks like seconds (guess either way).
            "due": self._started_ms + 30 * _DAY_MS,
            "connected": instance.connected,
            "paymentStatus": "PAID",
        }
        for kind, key in CALLBACK_URL_FIELDS.items():
            # Unset URLs as "" (the docs' example shows "" for an unset initialDataCallbackUrl).
            data[key] = instance.webhooks.get(kind, "")
        data["receiveCallbackSentByMe"] = instance.notify_sent_by_me
        return data

    def _update_webhooks(
        self, instance: EmulatedInstance, kinds: Sequence[str], payload: Mapping[str, Any]
    ) -> Reply:
        url = payload.get("value")
        if not isinstance(url, str) or not url.strip():
            return _error(400, "value is required")
        problem = check_webhook_url(url, allow_local_http=self.allow_http_webhooks)
        if problem is not None:
            return _error(400, problem)
        notify = payload.get("notifySentByMe")
        if len(kinds) > 1 and notify is not None and not isinstance(notify, bool):
            return _error(400, "notifySentByMe must be true or false")
        for kind in kinds:
            instance.webhooks[kind] = url.strip()
        if len(kinds) > 1 and isinstance(notify, bool):
            instance.notify_sent_by_me = notify
        return Reply(200, {"value": True})

    def _update_notify(self, instance: EmulatedInstance, payload: Mapping[str, Any]) -> Reply:
        notify = payload.get("notifySentByMe")
        if not isinstance(notify, bool):
            return _error(400, "notifySentByMe is required (true or false)")
        instance.notify_sent_by_me = notify
        return Reply(200, {"value": True})

    def _update_queue_settings(
        self, instance: EmulatedInstance, payload: Mapping[str, Any]
    ) -> Reply:
        disable = payload.get("disableEnqueueWhenDisconnected")
        if not isinstance(disable, bool):
            return _error(400, "disableEnqueueWhenDisconnected is required (true or false)")
        instance.enqueue_when_disconnected = not disable
        # What this endpoint answers is not documented (guess): Z-API's usual {"value": true}.
        return Reply(200, {"value": True})

    def _queue(self, instance: EmulatedInstance, method: str, payload: Mapping[str, Any]) -> Reply:
        if method == "DELETE":
            instance.queue.clear()
            return Reply(200, {"value": True})
        if method == "GET":
            # The older docs' answer: everything, with its size.
            return Reply(
                200,
                {
                    "size": len(instance.queue),
                    "messages": [_queue_entry(instance, r) for r in instance.queue],
                },
            )
        size = payload.get("pageSize", QUEUE_DEFAULT_PAGE_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size:
            return _error(400, "pageSize must be a positive whole number")
        size = min(size, QUEUE_PAGE_SIZE)
        start = _paging_offset(payload.get("pagingState"))
        if start is None:
            return _error(400, "pagingState is not one this queue gave")
        page = instance.queue[start : start + size]
        more = start + size < len(instance.queue)
        body: Dict[str, Any] = {
            "messages": [_queue_entry(instance, r) for r in page],
            "hasMore": more,
        }
        if more:
            body["pagingState"] = base64.urlsafe_b64encode(
                json.dumps({"offset": start + size}).encode()
            ).decode()
        return Reply(200, body)

    def _delete_queued(self, instance: EmulatedInstance, zaap_id: str) -> Reply:
        kept = [r for r in instance.queue if r["zaap_id"] != zaap_id]
        if len(kept) == len(instance.queue):
            return _error(404, "Message not found in the queue")
        instance.queue[:] = kept
        return Reply(200, {"value": True})

    def _flush_queue(self, instance: EmulatedInstance) -> None:
        """The phone is back: Z-API sends what it queued, in order (docs: queue introduction)."""
        queued, instance.queue[:] = list(instance.queue), []
        for record in queued:
            record["status"] = "SENT"
            self._append(instance, record["body"]["phone"], record)
            self._spawn(self._after_send(instance, record))

    def _read_message(self, instance: EmulatedInstance, payload: Mapping[str, Any]) -> Reply:
        problem = validate_send("read-message", payload)
        if problem is not None:
            return _error(400, problem)
        if not instance.connected:
            return _error(400, _NOT_CONNECTED)
        for record in self.conversations.get((instance.instance_id, payload["phone"]), []):
            if record["from"] == "customer" and record["message_id"] == payload["messageId"]:
                record["read"] = True
        return Reply(204)

    async def _send(
        self, instance: EmulatedInstance, endpoint: str, payload: Dict[str, Any]
    ) -> Reply:
        faults = self.faults
        if faults.send_delay_ms:
            await asyncio.sleep(faults.send_delay_ms / 1000)
        # An outage answers before Z-API looks at the body.
        if faults.fail_sends > 0:
            faults.fail_sends -= 1
            return _error(faults.fail_status, HTTPStatus(faults.fail_status).phrase)
        problem = validate_send(endpoint, payload)
        if problem is not None:
            return _error(400, problem)
        # Disconnected, Z-API queues the send (up to QUEUE_LIMIT) and answers as usual. With the
        # queue turned off, or full, what it answers is not documented (guess): the same 400 as
        # other calls that need the phone.
        if not instance.connected and (
            not instance.enqueue_when_disconnected or len(instance.queue) >= QUEUE_LIMIT
        ):
            return _error(400, _NOT_CONNECTED)
        if faults.send_without_message_id > 0:
            faults.send_without_message_id -= 1
            return Reply(200, {"value": False})
        message_id = new_message_id()
        zaap_id = new_zaap_id()
        record: Record = {
            "from": "bot",
            "endpoint": endpoint,
            "body": payload,
            "text": _record_text(payload),
            "message_id": message_id,
            "zaap_id": zaap_id,
            "momment": self.now_ms(),
            "status": "SENT",
        }
        # Failures Z-API finds after it queued the message are decided now, so that the faults
        # apply to the next sends in order.
        if faults.refuse_buttons and base_endpoint(endpoint) in _INTERACTIVE:
            record["delivery_error"] = BUTTON_TERMS_ERROR
        elif faults.fail_deliveries > 0:
            faults.fail_deliveries -= 1
            record["delivery_error"] = faults.delivery_error
        if not instance.connected:
            record["status"] = "QUEUED"
            instance.queue.append(record)
        else:
            self._append(instance, payload["phone"], record)
            # Z-API answers "queued" at once; delivery and status callbacks come later.
            self._spawn(self._after_send(instance, record))
        return Reply(200, {"zaapId": zaap_id, "messageId": message_id, "id": message_id})

    async def _after_send(self, instance: EmulatedInstance, record: Record) -> None:
        body: Mapping[str, Any] = record["body"]
        phone: str = body["phone"]
        error = record.get("delivery_error")
        if error is not None:
            # The customer never sees it: a DeliveryCallback with the error, and no statuses.
            record["status"] = "FAILED"
            await self._post(instance, "delivery", self._delivery(instance, record, error))
            return
        if instance.notify_sent_by_me:
            echo = _echo_content(record["endpoint"], body)
            if echo is not None:
                payload = received_envelope(
                    instance,
                    phone=phone,
                    message_id=record["message_id"],
                    momment=self.now_ms(),
                    sender_name=instance.name,
                    from_me=True,
                    status="SENT",
                )
                payload["type"] = "ReceivedCallback"
                payload[echo[0]] = echo[1]
                await self._post(instance, "received", payload)
        await self._post(instance, "delivery", self._delivery(instance, record))
        for status in ("RECEIVED", "READ"):
            record["status"] = status
            await self._post(
                instance,
                "message-status",
                {
                    "instanceId": instance.instance_id,
                    "status": status,
                    "ids": [record["message_id"]],
                    "momment": self.now_ms(),
                    "phoneDevice": 0,
                    "phone": phone,
                    "type": "MessageStatusCallback",
                    "isGroup": phone.endswith("-group"),
                },
            )

    def _delivery(
        self, instance: EmulatedInstance, record: Record, error: Optional[str] = None
    ) -> Dict[str, Any]:
        """The DeliveryCallback of one send; with ``error``, the report of its failure."""
        callback = {
            "phone": record["body"]["phone"],
            "zaapId": record["zaap_id"],
            "messageId": record["message_id"],
            "instanceId": instance.instance_id,
            "momment": self.now_ms(),
            "type": "DeliveryCallback",
        }
        if error is not None:
            callback["error"] = error
        return callback

    def _connected(self, instance: EmulatedInstance) -> Dict[str, Any]:
        return {
            "type": "ConnectedCallback",
            "connected": True,
            "momment": self.now_ms(),
            "instanceId": instance.instance_id,
            "phone": instance.phone,
        }

    def _disconnected(self, instance: EmulatedInstance) -> Dict[str, Any]:
        return {
            "momment": self.now_ms(),
            "error": "Device has been disconnected",
            "disconnected": True,
            "type": "DisconnectedCallback",
            "instanceId": instance.instance_id,
        }

    # -- the emulator's own API ---------------------------------------------------------------

    async def customer_message(self, body: Any) -> Reply:
        """A customer sends a message: record it and post the ReceivedCallback (awaited)."""
        if not isinstance(body, Mapping):
            return _error(400, "the body must be a JSON object")
        instance = self._instance_for(body)
        if isinstance(instance, Reply):
            return instance
        parsed = parse_customer_message(self._fill_choice(instance, body))
        if isinstance(parsed, str):
            return _error(400, parsed)
        from_owner = body.get("from_me", False)
        if not isinstance(from_owner, bool):
            return _error(400, "from_me must be true or false")
        if not instance.connected:
            return _error(409, "The instance is not connected: its phone receives nothing")
        message_id = new_message_id()
        momment = self.now_ms()
        self._append(
            instance,
            parsed.phone,
            {
                "from": "owner" if from_owner else "customer",
                "text": parsed.text,
                "kind": parsed.kind,
                "message_id": message_id,
                "momment": momment,
                "sender_name": parsed.sender_name,
                "content": {parsed.content_key: parsed.content},
                "read": False,
            },
        )
        payload = received_callback(
            instance, parsed, message_id=message_id, momment=momment, from_owner=from_owner
        )
        # Z-API reports the owner's messages only with "notify sent by me" on; asking the
        # emulator to play the owner is taken as that being on, whatever the setting says.
        result = await self._post(instance, "received", payload)
        if self.faults.duplicate_deliveries and instance.webhooks.get("received"):
            await self._post(instance, "received", payload)
        return Reply(
            200,
            {
                "messageId": message_id,
                "webhook_status": result.status,
                "webhook_error": result.error,
            },
        )

    def _instance_for(self, body: Mapping[str, Any]) -> Union[EmulatedInstance, Reply]:
        instance_id = body.get("instance_id")
        if instance_id is not None and not isinstance(instance_id, str):
            return _error(400, "instance_id must be a string")
        instance = self.resolve_instance(instance_id)
        return instance if instance is not None else _error(404, "Unknown instance")

    def _fill_choice(
        self, instance: EmulatedInstance, body: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Complete a button or list reply from the bot message that offered the choice.

        ``{"phone", "button_id"}`` is enough when the bot sent that button: its label and the
        message it belongs to (``referenceMessageId``) are taken from the conversation.
        """
        phone = body.get("phone")
        button_id = body.get("button_id")
        row_id = body.get("list_row_id")
        if not isinstance(phone, str) or not isinstance(button_id or row_id, str):
            return body
        filled = dict(body)
        for record in reversed(self.conversations.get((instance.instance_id, phone), [])):
            if record["from"] != "bot":
                continue
            sent: Mapping[str, Any] = record["body"]
            if isinstance(button_id, str):
                buttons = list(sent.get("buttonList", {}).get("buttons", []))
                buttons += [a for a in sent.get("buttonActions", []) if a.get("type") == "REPLY"]
                match = next((b for b in buttons if b.get("id") == button_id), None)
                if match is not None:
                    filled.setdefault("label", match.get("label"))
                    filled.setdefault("reference_message_id", record["message_id"])
                    return filled
            else:
                options = sent.get("optionList", {}).get("options", [])
                match = next((o for o in options if o.get("id") == row_id), None)
                if match is not None:
                    filled.setdefault("title", match.get("title"))
                    filled.setdefault("description", match.get("description"))
                    filled.setdefault("reference_message_id", record["message_id"])
                    return filled
        return body

    async def set_connection(self, body: Any) -> Reply:
        """Switch the simulated phone on or off and post the matching callback (awaited)."""
        if not isinstance(body, Mapping) or not isinstance(body.get("connected"), bool):
            return _error(400, "connected is required (true or false)")
        instance = self._instance_for(body)
        if isinstance(instance, Reply):
            return instance
        instance.connected = body["connected"]
        if instance.connected:
            result = await self._post(instance, "connected", self._connected(instance))
            self._flush_queue(instance)
        else:
            result = await self._post(instance, "disconnected", self._disconnected(instance))
        return Reply(
            200,
            {
                "connected": instance.connected,
                "webhook_status": result.status,
                "webhook_error": result.error,
            },
        )

    # -- webhooks and background work ---------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        # Created on first use so that it binds to the loop the server runs in.
        if self._http_client is None:
            self._http_client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.webhook_timeout, connect=min(self.webhook_timeout, 5.0)),
                headers={"User-Agent": "zapi-channel-emulator"},
            )
        return self._http_client

    async def _post(
        self, instance: EmulatedInstance, kind: str, payload: Mapping[str, Any]
    ) -> WebhookResult:
        url = instance.webhooks.get(kind)
        callback = payload.get("type")
        if not url:
            logger.debug("%s not posted: no %s webhook", callback, kind)
            return WebhookResult(None, f"no {kind} webhook is configured")
        try:
            answer = await self._http().post(url, json=payload)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # The webhook URL usually holds the channel's secret: never log it or answer it.
            error = f"{type(exc).__name__}: {exc}".replace(url, "<webhook url>")
            logger.warning("%s to the %s webhook failed: %s", callback, kind, error)
            return WebhookResult(None, error)
        logger.info("%s -> %s webhook: HTTP %d", callback, kind, answer.status_code)
        return WebhookResult(answer.status_code, None)

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Background callback failed", exc_info=task.exception())

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every pending callback has been posted; ``False`` if time ran out."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return True

    async def aclose(self) -> None:
        """Let pending callbacks finish (briefly), then close the pooled HTTP client."""
        if not await self.drain(timeout=2.0):
            pending = list(self._tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._http_client is not None and self._owns_client:
            await self._http_client.aclose()
            self._http_client = None

    # -- HTTP ---------------------------------------------------------------------------------

    def build_app(self, name: str = "zapi-emulator") -> Sanic:
        """A sanic app serving Z-API's routes and the emulator's own JSON API.

        ``/instances/<id>/token/<token>/<endpoint>``: Z-API. Under ``/_emulator``:
        ``POST|GET|DELETE messages``, ``GET conversations``, ``GET|POST|DELETE faults``,
        ``POST connection``, ``GET health``, and ``GET static/<file>`` for the chat page served
        at ``GET /``. Sanic keeps a registry of app names: give each app in one process its own
        ``name``.
        """
        _install_log_redaction()
        app = Sanic(name, configure_logging=False)
        app.config.MOTD = False
        app.config.ACCESS_LOG = False
        app.config.FALLBACK_ERROR_FORMAT = "json"
        # Ctrl-C should not wait 15 s for idle keep-alive connections.
        app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 2.0

        async def zapi(
            request: Request, instance_id: str, token: str, endpoint: str
        ) -> HTTPResponse:
            reply = await self.handle_zapi(
                request.method,
                instance_id,
                token,
                endpoint,
                client_token=request.headers.get("client-token"),
                content_type=request.headers.get("content-type"),
                body=request.body,
            )
            return _to_http(reply)

        async def post_message(request: Request) -> HTTPResponse:
            return _to_http(await self.customer_message(_decode_object(request.body)))

        async def get_messages(request: Request) -> HTTPResponse:
            phone = request.args.get("phone")
            if not phone:
                return _to_http(_error(400, "phone is required (?phone=5511999999999)"))
            instance_id = request.args.get("instance_id")
            if self.resolve_instance(instance_id) is None:
                return _to_http(_error(404, "Unknown instance"))
            return response.json({"messages": self.conversation(phone, instance_id)})

        async def delete_messages(request: Request) -> HTTPResponse:
            self.clear_conversations()
            return response.json({"value": True})

        async def conversations(request: Request) -> HTTPResponse:
            return response.json({"conversations": self.conversation_summaries()})

        async def get_faults(request: Request) -> HTTPResponse:
            return response.json(self.faults.to_dict())

        async def post_faults(request: Request) -> HTTPResponse:
            changes = _decode_object(request.body)
            if changes is None:
                return _to_http(_error(400, "the body must be a JSON object"))
            try:
                return response.json(self.set_faults(changes).to_dict())
            except ValueError as exc:
                return _to_http(_error(400, str(exc)))

        async def delete_faults(request: Request) -> HTTPResponse:
            return response.json(self.reset_faults().to_dict())

        async def connection(request: Request) -> HTTPResponse:
            return _to_http(await self.set_connection(_decode_object(request.body)))

        async def health(request: Request) -> HTTPResponse:
            return response.json(self.health())

        async def chat_page(request: Request) -> HTTPResponse:
            return await _static_file("chat.html")

        async def static_file(request: Request, name: str) -> HTTPResponse:
            return await _static_file(name)

        async def stopped(app: Sanic, loop: asyncio.AbstractEventLoop) -> None:
            await self.aclose()

        # Registered by call rather than decorator: sanic's decorators are untyped.
        app.add_route(
            zapi,
            "/instances/<instance_id>/token/<token>/<endpoint:path>",
            methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
            name="zapi",
        )
        routes: Sequence[Tuple[Callable[..., Coroutine[Any, Any, HTTPResponse]], str, str]] = (
            (post_message, "messages", "POST"),
            (get_messages, "messages", "GET"),
            (delete_messages, "messages", "DELETE"),
            (conversations, "conversations", "GET"),
            (get_faults, "faults", "GET"),
            (post_faults, "faults", "POST"),
            (delete_faults, "faults", "DELETE"),
            (connection, "connection", "POST"),
            (health, "health", "GET"),
        )
        for handler, path, method in routes:
            app.add_route(
                handler,
                f"/_emulator/{path}",
                methods=[method],
                name=f"emulator_{method.lower()}_{path}",
            )
        app.add_route(chat_page, "/", methods=["GET"], name="emulator_chat_page")
        app.add_route(
            static_file, "/_emulator/static/<name>", methods=["GET"], name="emulator_static"
        )
        app.register_listener(stopped, "after_server_stop")
        return app


def _to_http(reply: Reply) -> HTTPResponse:
    if reply.body is None:
        return response.empty(status=reply.status)
    return response.json(reply.body, status=reply.status)


async def _static_file(name: str) -> HTTPResponse:
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        return _to_http(_error(404, "Not found"))
    # no-cache: a developer who edits the page sees the change on the next reload.
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = _CHAT_PAGE_POLICY
    try:
        return await response.file(STATIC_DIR / name, mime_type=content_type, headers=headers)
    except FileNotFoundError:
        # An install that left out the package data (see pyproject's package-data).
        return _to_http(
            _error(404, f"The chat page's {name} is not installed (looked in {STATIC_DIR})")
        )


_SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.access", "sanic.server")


def _install_log_redaction() -> None:
    # Sanic logs the request URL when a handler fails; Z-API URLs carry the instance token.
    for name in _SANIC_LOGGERS:
        sanic_logger = logging.getLogger(name)
        if not any(isinstance(f, TokenPathFilter) for f in sanic_logger.filters):
            sanic_logger.addFilter(TokenPathFilter())


# -- command line -------------------------------------------------------------------------------


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m zapi_channel.emulator",
        description="Run a local Z-API emulator: Z-API's HTTP API and webhooks, no phone needed.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (%(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on; 0 picks a free one"
    )
    parser.add_argument("--instance-id", default=DEFAULT_INSTANCE_ID)
    parser.add_argument("--instance-token", default=DEFAULT_INSTANCE_TOKEN)
    parser.add_argument("--client-token", default=DEFAULT_CLIENT_TOKEN)
    parser.add_argument("--phone", default=DEFAULT_PHONE, help="the simulated phone's number")
    parser.add_argument(
        "--disconnected", action="store_true", help="start with the phone not connected"
    )
    parser.add_argument(
        "--webhook-url",
        help="the channel's webhook: set as the received, delivery and message-status webhook",
    )
    parser.add_argument(
        "--allow-http-webhooks",
        dest="allow_http_webhooks",
        action="store_true",
        default=True,
        help="accept http webhooks on 127.0.0.1, localhost or ::1 (the default)",
    )
    parser.add_argument(
        "--no-allow-http-webhooks",
        dest="allow_http_webhooks",
        action="store_false",
        help="accept https webhooks only, as Z-API does",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    return parser


def emulator_from_args(args: argparse.Namespace) -> Emulator:
    """The emulator the command line describes (``ValueError`` for an unusable option)."""
    if not _CUSTOMER_PHONE.fullmatch(args.phone) or "@" in args.phone:
        raise ValueError(f"--phone must be digits with the country code, not {args.phone!r}")
    webhooks: Dict[str, str] = {}
    if args.webhook_url:
        problem = check_webhook_url(args.webhook_url, allow_local_http=args.allow_http_webhooks)
        if problem is not None:
            local = " (http is accepted only for 127.0.0.1, localhost and ::1)"
            raise ValueError(f"--webhook-url: {problem}{local if args.allow_http_webhooks else ''}")
        webhooks = {kind: args.webhook_url for kind in ("received", "delivery", "message-status")}
    instance = EmulatedInstance(
        instance_id=args.instance_id.strip(),
        instance_token=args.instance_token.strip(),
        client_token=args.client_token.strip(),
        connected=not args.disconnected,
        phone=args.phone,
        webhooks=webhooks,
    )
    if not (instance.instance_id and instance.instance_token and instance.client_token):
        raise ValueError("--instance-id, --instance-token and --client-token may not be empty")
    return Emulator([instance], allow_http_webhooks=args.allow_http_webhooks)


def _listen(host: str, port: int) -> socket.socket:
    # Bound here rather than by sanic: sanic logs a failed bind and returns as if all went well.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def main(argv: Optional[Sequence[str]] = None, *, prog: Optional[str] = None) -> int:
    """Run the emulator until interrupted. Exit codes: 0 stopped, 1 cannot listen, 2 usage."""
    args = build_parser(prog).parse_args(argv)
    try:
        emulator = emulator_from_args(args)
    except ValueError as exc:
        print(f"zapi-channel emulator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO, and a webhook URL carries the channel's secret.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        print(
            f"zapi-channel emulator: cannot listen on {args.host}:{args.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    instance_id = args.instance_id.strip()
    app = emulator.build_app()

    async def announce(app: Sanic, loop: asyncio.AbstractEventLoop) -> None:
        # Scripts wait for this line (and read the port from it when started with --port 0).
        print(f"Z-API emulator on http://{host}:{port} (instance {instance_id})", flush=True)
        print(f"Chat as a customer at http://{host}:{port}/", flush=True)

    app.register_listener(announce, "after_server_start")
    app.run(sock=sock, workers=1, auto_reload=False, access_log=False, motd=False)
    return 0


def run() -> None:
    """Console entry point."""
    sys.exit(main())


__all__ = [
    "CALLBACK_URL_FIELDS",
    "CONTENT_KEYS",
    "DEFAULT_CLIENT_TOKEN",
    "DEFAULT_HOST",
    "DEFAULT_INSTANCE_ID",
    "DEFAULT_INSTANCE_TOKEN",
    "DEFAULT_PHONE",
    "DEFAULT_PORT",
    "ENDPOINT_METHODS",
    "SEND_CHECKS",
    "STATIC_DIR",
    "STATIC_FILES",
    "CustomerMessage",
    "EmulatedInstance",
    "Emulator",
    "Faults",
    "Reply",
    "WebhookResult",
    "base_endpoint",
    "build_parser",
    "check_webhook_url",
    "emulator_from_args",
    "fake_lid",
    "main",
    "new_message_id",
    "new_zaap_id",
    "parse_customer_message",
    "received_callback",
    "received_envelope",
    "run",
    "validate_send",
]


if __name__ == "__main__":
    run()

"""What Z-API accepts: the send endpoints' required fields and verbs (pure, no I/O).

Each check follows the fields Z-API's docs mark required, so that a body the channel builds
wrongly is refused here, as Z-API would, before it reaches a phone.
"""

from __future__ import annotations

import re
from typing import (
    Any,
    Callable,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
)

from zapi_channel.client import WEBHOOK_KINDS

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

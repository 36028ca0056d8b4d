"""The pretend customer: what ``POST /_emulator/messages`` says, as the callbacks Z-API
posts (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import (
    Any,
    Dict,
    Mapping,
    Optional,
    Tuple,
    Union,
)

from zapi_channel.emulator.rules import (
    _CUSTOMER_PHONE,
    _BodyError,
    _optional_text,
    _required_object,
    _required_text,
    base_endpoint,
)
from zapi_channel.emulator.values import EmulatedInstance, fake_lid

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

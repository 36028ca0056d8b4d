"""From a Z-API callback body to what the channel does with it. Pure: no I/O, no clock, no state.

:func:`parse_callback` takes any decoded JSON value and returns exactly one of:

- :class:`InboundMessage`: a customer said something; hand it to Rasa.
- :class:`Ignored`: a valid callback that must not be answered (and why, for the debug log).
- :class:`Event`: a delivery / status / connection callback; log it, never answer it.
- :class:`Invalid`: not a Z-API callback at all; the webhook answers 400.

Z-API documents the callbacks at https://developer.z-api.io/en/webhooks/on-message-received
(and the sibling pages for delivery, message status, connected, disconnected and chat presence).
Unknown fields never break parsing; camelCase becomes snake_case here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from zapi_channel.config import ChannelConfig

#: Content objects that carry media, and the key of their URL inside the object.
_MEDIA_URL_KEYS = {
    "image": "imageUrl",
    "audio": "audioUrl",
    "video": "videoUrl",
    "document": "documentUrl",
    "sticker": "stickerUrl",
}
#: Kinds whose caption, when present, is what the customer "said".
_CAPTIONED = ("image", "video", "document")
#: Kinds with no text of their own: the bot receives the configured ``media_texts`` entry.
_TEXTLESS = ("audio", "sticker", "location", "contact", "reaction")

#: Envelope fields copied into ``metadata["zapi"]`` (Z-API name -> our name).
_ENVELOPE = (
    ("messageId", "message_id"),
    ("phone", "phone"),
    ("instanceId", "instance_id"),
    ("senderName", "sender_name"),
    ("chatName", "chat_name"),
    ("chatLid", "chat_lid"),
    ("senderLid", "sender_lid"),
    ("connectedPhone", "connected_phone"),
    ("momment", "momment"),
    ("referenceMessageId", "reference_message_id"),
    ("isGroup", "is_group"),
    ("participantPhone", "participant_phone"),
    ("participantLid", "participant_lid"),
    ("senderPhoto", "sender_photo"),
    ("photo", "photo"),
    ("forwarded", "forwarded"),
    ("fromApi", "from_api"),
)


@dataclass(frozen=True)
class InboundMessage:
    """One customer message, ready to become a Rasa ``UserMessage``."""

    instance_id: str
    message_id: str
    phone: str
    text: str
    kind: str
    metadata: Dict[str, Any]
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    #: Written by the shop's owner on the phone ("notify sent by me"), not by the customer.
    from_owner: bool = False
    #: Z-API marks the message as sent through its API (ours, or another API client's).
    from_api: bool = False
    #: The customer's ``<digits>@lid`` and number, when this callback shows them.
    lid: Optional[str] = None
    number: Optional[str] = None
    #: The Rasa conversation, set by the delivery layer once it linked the customer's forms
    #: (:mod:`zapi_channel.delivery.base`); empty before.
    sender_id: str = ""

    def evolve(self, **changes: Any) -> InboundMessage:
        """A copy with ``changes``: :func:`dataclasses.replace` for the per-message path.

        ``replace`` looks up the fields and runs ``__init__`` again, which a frozen dataclass
        makes one ``object.__setattr__`` per field: about 10 µs a message, measured, on the
        path every webhook takes. Copying the instance's ``__dict__`` gives the same object
        for about a third of that. Only field names are taken.
        """
        unknown = changes.keys() - _FIELD_NAMES
        if unknown:
            raise TypeError(f"InboundMessage has no field {sorted(unknown)[0]!r}")
        copy = object.__new__(InboundMessage)
        copy.__dict__.update(self.__dict__, **changes)
        return copy

    def as_values(self) -> Tuple[Any, ...]:
        """Every field but ``raw``, in order: the message as it crosses to the state file's
        writer process and back (:meth:`from_values`). Plain values pickle at a fraction of
        the cost of the object, and nothing past the webhook reads the raw callback."""
        fields = self.__dict__
        return tuple(fields[name] for name in _VALUE_NAMES)

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> InboundMessage:
        """The message :meth:`as_values` gave, with an empty ``raw``."""
        made = object.__new__(cls)
        made.__dict__.update(zip(_VALUE_NAMES, values), raw={})
        return made

    @property
    def dedup_key(self) -> str:
        return f"{self.instance_id}:{self.message_id}"

    @property
    def latest_message_id(self) -> str:
        """The newest message this one stands for: its own id, or a merged burst's last
        (:func:`merge_burst`), which is the one to quote or to mark as read."""
        ids = self.metadata.get("message_ids")
        return str(ids[-1]) if isinstance(ids, list) and ids else self.message_id

    @property
    def conversation(self) -> str:
        """The Rasa ``sender_id`` of this message: the linked conversation, else ``phone``."""
        return self.sender_id or self.phone

    @property
    def forms(self) -> Tuple[str, ...]:
        """Every way this callback names the customer, ``phone`` (as received) first."""
        others = [form for form in (self.lid, self.number) if form and form != self.phone]
        return (self.phone, *others)


_FIELD_NAMES = frozenset(f.name for f in fields(InboundMessage))
_VALUE_NAMES = tuple(f.name for f in fields(InboundMessage) if f.name != "raw")


def mergeable(message: InboundMessage) -> bool:
    """Whether a message can be part of a burst (``merge_window_ms``): a customer's typed text
    in a one-to-one chat. Media is never merged into text, and in a group two participants'
    texts are not one message."""
    return (
        message.kind == "text" and not message.from_owner and not message.metadata.get("is_group")
    )


def merge_burst(messages: Sequence[InboundMessage]) -> InboundMessage:
    """One message for a burst ("oi" / "tudo bem?" / "queria fazer um pedido").

    The texts are joined by newlines, in order. It keeps the first message's id, under which its
    answers are numbered (so that a turn run again after a crash skips what it sent), and lists
    every id in ``metadata["message_ids"]``.
    """
    if not messages:
        raise ValueError("a burst has at least one message")
    head = messages[0]
    if len(messages) == 1:
        return head
    metadata = {**head.metadata, "message_ids": [message.message_id for message in messages]}
    text = "\n".join(message.text for message in messages)
    return dataclasses.replace(head, text=text, metadata=metadata)


@dataclass(frozen=True)
class Ignored:
    reason: str
    #: The reason's class, one of :data:`IGNORED_KINDS`: bounded, so it can label a metric.
    kind: str = "other"


@dataclass(frozen=True)
class Event:
    """A callback to log: ``level`` is a :mod:`logging` level, ``summary`` holds no secret."""

    type: str
    level: int
    summary: str
    #: For connection callbacks: whether the instance's WhatsApp session is now up.
    connected: Optional[bool] = None


@dataclass(frozen=True)
class Invalid:
    reason: str


@dataclass(frozen=True)
class DeliveryFailed:
    """Z-API reports, after it queued it, that one of the instance's sends failed."""

    message_id: str
    phone: str
    error: str
    error_code: Optional[str] = None

    @property
    def button_terms(self) -> bool:
        """Refused because the button terms are not accepted on Z-API's panel (documented text:
        "You must accept buttons message terms in panel to send this message.")."""
        text = self.error.lower()
        return "button" in text and "terms" in text


Parsed = Union[InboundMessage, Ignored, Event, Invalid, DeliveryFailed]

#: Every :attr:`Ignored.kind`.
IGNORED_KINDS = (
    "other_instance",
    "unknown_type",
    "notification",
    "broadcast",
    "edit",
    "group",
    "own_message",
    "empty",
    "reaction",
    "other",
)


#: Z-API's message ids are 20-32 characters; a longer one is not Z-API's, and bounding it keeps
#: the deduplication memory bounded in bytes, not only in entries.
MAX_ID_LENGTH = 128


def _str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value.strip() else None


def _id(value: Any) -> Optional[str]:
    # Message ids arrive as strings, and in real traffic as plain JSON numbers (1867371624).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _str(value)


def _lid(value: Any) -> Optional[str]:
    text = _str(value)
    return text.strip() if text is not None and text.strip().lower().endswith("@lid") else None


def _flag(payload: Dict[str, Any], key: str) -> bool:
    # Every flag here means "do not answer", so a malformed truthy value ("true", 1) fails safe:
    # answering our own echo or a group by mistake is the costly error, not the reverse.
    value = payload.get(key)
    if value is False or value is None:
        # What real callbacks carry (or leave out): decided without a type check.
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return value is True or (isinstance(value, int) and value == 1)


def _short(value: Any, limit: int = 80) -> str:
    """A value fit for a log line: one line, bounded (fields come from outside)."""
    text = str(value)
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sanitize(value: Any) -> Any:
    """A copy of ``value`` with lone UTF-16 surrogates (half an emoji) replaced in every string.

    JSON allows them (``"\\ud83d"``) but UTF-8 cannot encode them, so they would break every later
    step that writes the text: the Z-API request, the journal, Redis. Iterative, not recursive:
    a body nested as deep as the JSON decoder allows must not exhaust Python's stack here.
    """
    if not isinstance(value, (dict, list)):
        return _clean_text(value) if isinstance(value, str) else value
    if not _has_bad_text(value):
        # The usual case, and the webhook's hot path: nothing to clean, nothing to copy.
        return value
    root: Any = {} if isinstance(value, dict) else []
    pending: List[Tuple[Any, Any]] = [(value, root)]
    while pending:
        source, target = pending.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in items:
            if isinstance(item, (dict, list)):
                copy: Any = {} if isinstance(item, dict) else []
                pending.append((item, copy))
            else:
                copy = _clean_text(item) if isinstance(item, str) else item
            if isinstance(target, dict):
                target[_clean_text(key) if isinstance(key, str) else key] = copy
            else:
                target.append(copy)
    return root


def _has_bad_text(value: Any) -> bool:
    pending = [value]
    while pending:
        current = pending.pop()
        items = current.items() if isinstance(current, dict) else enumerate(current)
        for key, item in items:
            if isinstance(key, str) and not key.isascii() and _clean_text(key) is not key:
                return True
            if isinstance(item, str):
                # ASCII text cannot hold a surrogate; only the rest needs the encode check.
                if not item.isascii() and _clean_text(item) is not item:
                    return True
            elif isinstance(item, (dict, list)):
                pending.append(item)
    return False


def _clean_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def parse_callback(payload: Any, config: ChannelConfig) -> Parsed:
    """Decide what a decoded webhook body means for this channel."""
    if not isinstance(payload, Mapping):
        return Invalid("the body is not a JSON object")
    return _parse(sanitize(dict(payload)), config)


#: json.loads reads a UTF-8 body with "surrogatepass", so a lone surrogate can come only from a
#: JSON escape (``\ud800`` to ``\udfff``) or from the bytes UTF-8 would use for one (0xED then
#: 0xA0-0xBF). A body with neither holds none. Both case forms of the hex digits count.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


_DECODER = json.JSONDecoder()


def parse_body(body: bytes, config: ChannelConfig) -> Parsed:
    """:func:`parse_callback` for a raw webhook body, the webhook's hot path.

    Walking every string of the decoded body for lone surrogates cost more than the rest of the
    parse, so it runs only when the bytes say a surrogate could be there.
    """
    try:
        if body[:1] == b"{" and body[1:2] != b"\x00":
            # What json.loads does with such bytes (it detects UTF-8 from the first two), minus
            # the detection and the call: about a microsecond of every webhook.
            payload = _DECODER.decode(body.decode("utf-8", "surrogatepass"))
        else:
            payload = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON and undecodable bytes; RecursionError, nesting too deep.
        return Invalid("the body is not JSON")
    # json.loads also reads UTF-16 and UTF-32, which the byte pattern cannot: their bodies hold NUL
    # bytes (a JSON object starts with "{"), and a UTF-8 JSON text cannot, so they take the walk.
    if type(payload) is dict and b"\x00" not in body and not _may_hold_surrogates(body):
        return _parse(payload, config)
    return parse_callback(payload, config)


def _may_hold_surrogates(body: bytes) -> bool:
    # Two substring searches (memchr) rule out most bodies for a fraction of the regex's cost.
    if b"\\u" not in body and b"\xed" not in body:
        return False
    return _MAYBE_SURROGATE.search(body) is not None


def _parse(payload: Dict[str, Any], config: ChannelConfig) -> Parsed:
    # Only dicts from here on: JSON gives nothing else, and isinstance against typing.Mapping
    # (an ABC) costs several times a check against dict on every webhook.
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind:
        return Invalid("the body has no 'type': not a Z-API callback")
    instance_id = payload.get("instanceId")
    if instance_id != config.credentials.instance_id:
        return Ignored(
            "the callback's instanceId is not this channel's instance", kind="other_instance"
        )
    if kind == "ReceivedCallback":
        return _received(payload, config, instance_id)
    handler = _EVENTS.get(kind)
    if handler is None:
        return Ignored(f"unknown callback type {_short(kind, 60)!r}", kind="unknown_type")
    return handler(payload)


def _received(payload: Dict[str, Any], config: ChannelConfig, instance_id: str) -> Parsed:
    # Notifications and placeholders first: they are never a conversation, so they get a 2xx
    # whatever they lack (profile and label notifications come without a messageId).
    if payload.get("notification") is not None:
        return Ignored(
            f"a system notification ({_short(payload.get('notification'), 40)})",
            kind="notification",
        )
    if _flag(payload, "waitingMessage"):
        return Ignored("a 'waiting for this message' placeholder with no content", kind="empty")
    raw_phone = _str(payload.get("phone"))
    raw_id = _id(payload.get("messageId"))
    if raw_phone is None:
        return Invalid("a ReceivedCallback without 'phone'")
    if raw_id is None:
        return Invalid("a ReceivedCallback without 'messageId'")
    phone, message_id = raw_phone.strip(), raw_id.strip()
    if len(phone) > MAX_ID_LENGTH or len(message_id) > MAX_ID_LENGTH:
        return Invalid("a ReceivedCallback whose phone or messageId is far too long")
    # Suffix checks are case-insensitive; the phone itself is kept as received (answers go to it).
    chat = phone.lower()

    # Order matters only for the reason logged; every rule here means "do not answer".
    if _flag(payload, "isNewsletter") or chat.endswith("@newsletter"):
        return Ignored("a channel (newsletter) post", kind="broadcast")
    if _flag(payload, "broadcast") or chat.endswith(("@broadcast", "-broadcast")):
        return Ignored("a broadcast list or status message", kind="broadcast")
    if _flag(payload, "isStatusReply"):
        return Ignored("a reply to a WhatsApp status", kind="broadcast")
    if _flag(payload, "isEdit"):
        # The original message was already answered; answering the edit would answer twice.
        return Ignored("an edit of an earlier message", kind="edit")
    is_group = _flag(payload, "isGroup") or chat.endswith(("-group", "@g.us"))
    if is_group and not config.allow_groups:
        return Ignored("a group message (set allow_groups: true to answer groups)", kind="group")

    from_owner = _flag(payload, "fromMe")
    if from_owner and _flag(payload, "fromApi"):
        # Ours (or another API client's) echoed by "notify sent by me"; a human types on the
        # phone or WhatsApp Web, where fromApi is false or missing.
        return Ignored(
            "our own message (fromMe, fromApi): answering it would loop forever", kind="own_message"
        )
    if from_owner and config.handoff_minutes <= 0:
        return Ignored(
            "the business's own message (fromMe); human takeover is off", kind="own_message"
        )
    content = _content(payload, config, from_owner)
    if isinstance(content, Ignored):
        return content
    content_kind, text, details = content
    metadata: Dict[str, Any] = {ours: payload.get(theirs) for theirs, ours in _ENVELOPE}
    metadata["message_id"] = message_id
    metadata["is_group"] = is_group
    metadata["kind"] = content_kind
    metadata.update(details)
    lid = number = None
    if not is_group:
        # Both forms of one customer, when this callback shows them (see zapi_channel.delivery).
        lid = _lid(phone) or _lid(payload.get("chatLid")) or _lid(payload.get("senderLid"))
        number = phone if phone.isdigit() else None
    metadata["lid"], metadata["phone_number"] = lid, number
    if from_owner:
        metadata["from_owner"] = True
    # Built as from_values builds it: the frozen dataclass's __init__ sets each field through
    # object.__setattr__, three times the cost, on every webhook. Every field is given here.
    message = object.__new__(InboundMessage)
    message.__dict__.update(
        instance_id=instance_id,
        message_id=message_id,
        phone=phone,
        text=text,
        kind="unsupported" if "unsupported" in details else content_kind,
        metadata=metadata,
        raw=payload,
        from_owner=from_owner,
        from_api=_flag(payload, "fromApi"),
        lid=lid,
        number=number,
        sender_id="",
    )
    return message


#: Objects of a ReceivedCallback that sit beside the content and are not content themselves.
_NOT_CONTENT = frozenset({"externalAdReply", "contextInfo", "quotedMessage", "reaction"})
#: What the shop's owner does on the phone that is not writing to the customer.
_OWNER_NON_MESSAGES = frozenset({"reaction", "pinMessage", "pollVote", "eventResponse"})


def _content(
    payload: Dict[str, Any], config: ChannelConfig, from_owner: bool = False
) -> Union[Tuple[str, str, Dict[str, Any]], Ignored]:
    if from_owner:
        done = sorted(key for key in _OWNER_NON_MESSAGES if isinstance(payload.get(key), dict))
        if done:
            return Ignored(
                f"the owner's {done[0]} on the phone, not a message to the customer",
                kind="own_message",
            )
    text_obj = payload.get("text")
    if isinstance(text_obj, dict):
        message = _str(text_obj.get("message"))
        if message is None:
            return Ignored("a text message with no text", kind="empty")
        return "text", message, {}

    button = payload.get("buttonsResponseMessage")
    if isinstance(button, dict):
        # The button's id is what the bot receives, so an id such as "/greet" triggers that intent.
        chosen = _str(button.get("buttonId")) or _str(button.get("message"))
        if chosen is None:
            return Ignored("a button reply with neither buttonId nor message", kind="empty")
        return (
            "button_reply",
            chosen,
            {"button": {"id": button.get("buttonId"), "label": button.get("message")}},
        )

    listed = payload.get("listResponseMessage")
    if isinstance(listed, dict):
        chosen = _str(listed.get("selectedRowId")) or _str(listed.get("title"))
        if chosen is None:
            return Ignored("a list reply with neither selectedRowId nor title", kind="empty")
        return (
            "list_reply",
            chosen,
            {
                "list": {
                    "selected_row_id": listed.get("selectedRowId"),
                    "title": listed.get("title"),
                    "message": listed.get("message"),
                }
            },
        )

    for kind, url_key in _MEDIA_URL_KEYS.items():
        media = payload.get(kind)
        if isinstance(media, dict):
            details = {
                "media": {
                    "kind": kind,
                    "url": media.get(url_key),
                    "mime_type": media.get("mimeType"),
                    "file_name": media.get("fileName"),
                    "caption": media.get("caption"),
                    "seconds": media.get("seconds"),
                    "ptt": media.get("ptt"),
                }
            }
            caption = _str(media.get("caption")) if kind in _CAPTIONED else None
            return kind, caption or config.media_texts[kind], details

    location = payload.get("location")
    if isinstance(location, dict):
        return "location", config.media_texts["location"], {"location": dict(location)}
    live = payload.get("liveLocation")
    if isinstance(live, dict):
        # A live location is where the customer is: the bot gets it as a location.
        shared = {key: live.get(key) for key in ("latitude", "longitude", "caption")}
        return "location", config.media_texts["location"], {"location": {**shared, "live": True}}

    contact = payload.get("contact")
    if isinstance(contact, dict):
        return "contact", config.media_texts["contact"], {"contact": dict(contact)}

    reaction = payload.get("reaction")
    if isinstance(reaction, dict):
        if not config.allow_reactions:
            return Ignored(
                "a reaction (set allow_reactions: true to receive reactions)", kind="reaction"
            )
        value = reaction.get("value")
        if not _str(value):
            return Ignored("a reaction was removed", kind="reaction")
        referenced = reaction.get("referencedMessage")
        return (
            "reaction",
            config.media_texts["reaction"],
            {
                "reaction": {
                    "value": value,
                    "message_id": referenced.get("messageId")
                    if isinstance(referenced, dict)
                    else None,
                }
            },
        )

    present = sorted(
        key
        for key, value in payload.items()
        if isinstance(value, dict) and key not in _NOT_CONTENT and len(key) <= 64
    )
    if not present:
        return Ignored("a message with no content object", kind="empty")
    # Content of a kind this channel does not know (a poll, an order, a payment, a kind Z-API
    # adds later): the customer said something, so the bot hears of it rather than nothing.
    kind = present[0]
    return (
        kind,
        config.media_texts["unsupported"],
        {"unsupported": {"kind": kind, "content": payload[kind]}},
    )


def _delivery(payload: Dict[str, Any]) -> Union[Event, DeliveryFailed]:
    error = _str(payload.get("error"))
    message_id = payload.get("messageId")
    known_id = _id(message_id)
    if error and known_id is not None and len(known_id) <= MAX_ID_LENGTH:
        code = payload.get("errorCode")
        return DeliveryFailed(
            message_id=known_id.strip(),
            phone=_short(payload.get("phone")),
            error=_short(error, 300),
            error_code=_short(code) if code else None,
        )
    if error:
        return Event(
            "DeliveryCallback",
            logging.WARNING,
            f"Z-API could not deliver message {_short(message_id)} to "
            f"{_short(payload.get('phone'))}: {_short(error, 300)}"
            + (
                f" (errorCode {_short(payload.get('errorCode'))})"
                if payload.get("errorCode")
                else ""
            ),
        )
    return Event("DeliveryCallback", logging.DEBUG, f"Z-API sent message {_short(message_id)}")


def _status(payload: Dict[str, Any]) -> Event:
    ids = payload.get("ids")
    count = len(ids) if isinstance(ids, list) else 0
    return Event(
        "MessageStatusCallback",
        logging.DEBUG,
        f"{count} message(s) to {_short(payload.get('phone'))} now {_short(payload.get('status'))}",
    )


def _connected(payload: Dict[str, Any]) -> Event:
    return Event(
        "ConnectedCallback",
        logging.INFO,
        f"The Z-API instance is connected to WhatsApp number {_short(payload.get('phone'))}",
        connected=True,
    )


def _disconnected(payload: Dict[str, Any]) -> Event:
    error = _str(payload.get("error"))
    return Event(
        "DisconnectedCallback",
        logging.ERROR,
        "The Z-API instance lost its WhatsApp session"
        + (f" ({_short(error, 200)})" if error else "")
        + ". Meanwhile Z-API queues the bot's answers and sends them, possibly hours late, once "
        "the phone is back (with queue_when_disconnected: false it refuses them instead, and "
        "they wait in `zapi-channel failed list`). To reconnect: check that the phone is on and "
        "online; then run `zapi-channel restart`; if neither helps, scan the QR code again on "
        "Z-API's dashboard",
        connected=False,
    )


def _presence(payload: Dict[str, Any]) -> Event:
    return Event(
        "PresenceChatCallback",
        logging.DEBUG,
        f"{_short(payload.get('phone'))} is {_short(payload.get('status'))}",
    )


_EVENTS = {
    "DeliveryCallback": _delivery,
    "MessageStatusCallback": _status,
    "ConnectedCallback": _connected,
    "DisconnectedCallback": _disconnected,
    "PresenceChatCallback": _presence,
}


__all__ = [
    "IGNORED_KINDS",
    "DeliveryFailed",
    "Event",
    "Ignored",
    "InboundMessage",
    "Invalid",
    "Parsed",
    "merge_burst",
    "mergeable",
    "parse_body",
    "parse_callback",
]

"""From Rasa's responses to Z-API requests. Pure: no I/O.

- :func:`split_text`: long answers become several messages, cut where a reader would cut.
- :func:`render_choices` / :func:`match_choice`: buttons as a numbered list, and the customer's "2"
  (or the exact title) mapped back to the button's payload. WhatsApp buttons are unreliable (Z-API's
  own tips page says so), so the choices are always written into the text as well.
- :func:`button_list_body`, :func:`option_list_body`: Z-API's button and option lists.
- :func:`document_extension`, :func:`custom_request`: attachments and ``custom`` payloads.
- :func:`media_kind`, :func:`link_body`: which Z-API send an attachment becomes, and a link preview.
- :func:`shape_response`: one whole Rasa response as the complete Z-API requests that show it the
  way WhatsApp users expect (a caption under the picture, a voice note, a link card). The output
  channel only delivers what this returns.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Choice:
    """One of Rasa's buttons: what the customer sees, and what the bot receives when chosen."""

    title: str
    payload: str


class InvalidCustomPayload(ValueError):
    """A ``custom`` response that is not ``{"zapi": {"endpoint": "send-...", "body": {...}}}``."""


_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
#: Only Z-API's message-sending endpoints may be reached from a domain's custom payload: a
#: response must never be able to call ``disconnect`` or change the webhooks.
_CUSTOM_ENDPOINT = re.compile(r"^send-[a-z]+(?:-[a-z]+)*(?:/[a-z0-9]{1,10})?$")


def split_text(text: str, limit: int) -> List[str]:
    """Cut ``text`` into parts of at most ``limit`` characters.

    Cuts at a blank line if one is in reach, else at a line break, a sentence end, a space, and
    only as a last resort inside a word. No part is empty and nothing is lost except the
    whitespace at the cuts.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    text = text.strip()
    parts: List[str] = []
    while len(text) > limit:
        window = text[: limit + 1]
        cut = _best_cut(window, limit)
        head, text = text[:cut].rstrip(), text[cut:].lstrip()
        if head:
            parts.append(head)
    if text:
        parts.append(text)
    return parts


def _best_cut(window: str, limit: int) -> int:
    # Prefer cuts in the second half of the window so that parts do not end up tiny.
    floor = limit // 2
    for finder in (
        lambda w: w.rfind("\n\n"),
        lambda w: w.rfind("\n"),
        lambda w: max((m.start() for m in _SENTENCE_END.finditer(w)), default=-1),
        lambda w: w.rfind(" "),
    ):
        position = finder(window)
        if position >= floor and position <= limit:
            return position
    return limit


def choices_from_buttons(buttons: Sequence[Any]) -> List[Choice]:
    """Rasa's ``[{"title": ..., "payload": ...}]``, skipping entries that have neither."""
    choices: List[Choice] = []
    for button in buttons:
        if not isinstance(button, Mapping):
            continue
        title = str(button.get("title") or "").strip()
        payload = str(button.get("payload") or "").strip()
        if not title and not payload:
            continue
        choices.append(Choice(title=title or payload, payload=payload or title))
    return choices


def render_choices(text: str, choices: Sequence[Choice]) -> str:
    """The message with its choices as a numbered list, in WhatsApp's formatting."""
    lines = [f"*{number}.* {choice.title}" for number, choice in enumerate(choices, start=1)]
    body = "\n".join(lines)
    head = text.strip()
    return f"{head}\n\n{body}" if head else body


_FORMATTING = re.compile(r"[*_~`]")


def _normalise(text: str) -> str:
    return " ".join(_FORMATTING.sub("", text).casefold().split())


def match_choice(reply: str, choices: Sequence[Choice]) -> Optional[Choice]:
    """The choice a customer's reply names: its number ("2", "2.", "*2*") or its exact title."""
    cleaned = _normalise(reply).rstrip(".)")
    if not cleaned:
        return None
    if cleaned.isdigit():
        number = int(cleaned)
        if 1 <= number <= len(choices):
            return choices[number - 1]
        return None
    for choice in choices:
        if _normalise(choice.title) == cleaned:
            return choice
    return None


def button_list_body(message: str, choices: Sequence[Choice]) -> Dict[str, Any]:
    """``send-button-list`` body (without ``phone``); the button id is the Rasa payload."""
    return {
        "message": message,
        "buttonList": {
            "buttons": [{"id": choice.payload, "label": choice.title} for choice in choices]
        },
    }


def option_list_body(
    message: str, choices: Sequence[Choice], *, title: str, button_label: str
) -> Dict[str, Any]:
    """``send-option-list`` body (without ``phone``); the row id is the Rasa payload."""
    return {
        "message": message,
        "optionList": {
            "title": title,
            "buttonLabel": button_label,
            "options": [
                {"id": choice.payload, "title": choice.title, "description": ""}
                for choice in choices
            ],
        },
    }


def document_extension(url: str, mime_type: Optional[str] = None) -> Optional[str]:
    """The file extension Z-API's ``send-document/{extension}`` needs, or None for a plain link."""
    path = unquote(urlsplit(url).path)
    extension = posixpath.splitext(path)[1].lstrip(".").lower()
    if extension.isalnum() and 1 <= len(extension) <= 10 and extension not in _PAGE_EXTENSIONS:
        return extension
    if mime_type:
        guessed = mimetypes.guess_extension(mime_type.split(";")[0].strip())
        if guessed and guessed.lstrip(".") not in _PAGE_EXTENSIONS:
            return guessed.lstrip(".")
    return None


#: Web pages are links, not documents to attach.
_PAGE_EXTENSIONS = frozenset({"html", "htm", "php", "asp", "aspx", "jsp"})


def file_name_of(url: str) -> Optional[str]:
    name = posixpath.basename(unquote(urlsplit(url).path))
    return name or None


def custom_request(custom: Any) -> Tuple[str, Dict[str, Any]]:
    """``{"zapi": {"endpoint": "send-location", "body": {...}}}`` -> (endpoint, body)."""
    if not isinstance(custom, Mapping) or not isinstance(custom.get("zapi"), Mapping):
        raise InvalidCustomPayload('a custom payload for Z-API looks like {"zapi": {...}}')
    spec = custom["zapi"]
    endpoint = spec.get("endpoint")
    body = spec.get("body", {})
    if not isinstance(endpoint, str) or not _CUSTOM_ENDPOINT.match(endpoint):
        raise InvalidCustomPayload(
            f"custom payload endpoint must be a Z-API send endpoint such as send-location, "
            f"not {str(endpoint)[:60]!r}"
        )
    if not isinstance(body, Mapping):
        raise InvalidCustomPayload("custom payload body must be a JSON object")
    return endpoint, dict(body)


Outgoing = Tuple[str, Dict[str, Any]]


def text_bodies(text: str, limit: int, delay_typing: Optional[int]) -> List[Outgoing]:
    """``send-text`` requests (without ``phone``) for one text answer, split if it is long."""
    requests: List[Outgoing] = []
    for part in split_text(text, limit):
        body: Dict[str, Any] = {"message": part}
        if delay_typing:
            body["delayTyping"] = delay_typing
        requests.append(("send-text", body))
    return requests


def buttons_request(
    text: str,
    choices: Sequence[Choice],
    mode: str,
    *,
    list_title: str = "Options",
    list_button_label: str = "Choose",
) -> Union[Outgoing, None]:
    """The interactive request for ``mode`` ("buttons" or "list"), or None for plain text.

    The message always carries the numbered choices too: if WhatsApp does not render the buttons,
    the customer can still answer with a number.
    """
    message = render_choices(text, choices)
    if mode == "buttons" and len(choices) <= 3:
        return "send-button-list", button_list_body(message, choices)
    if mode in ("buttons", "list"):
        # WhatsApp shows at most three reply buttons: more choices go in a list.
        return "send-option-list", option_list_body(
            message, choices, title=list_title, button_label=list_button_label
        )
    return None


# -- whole responses ----------------------------------------------------------------------------

#: The longest text sent as a media caption; longer text goes as its own message. Z-API's docs give
#: no caption limit. WhatsApp's Cloud API documents 1,024 characters for a media caption, and
#: WhatsApp's apps show no more, so a longer caption would be cut on the customer's screen.
CAPTION_LIMIT = 1024

#: Sends whose Z-API docs list ``messageId`` ("reply to a chat message"). ``send-audio`` and the
#: interactive sends document no ``messageId``: an answer starting with one of those quotes on
#: its next message that can.
QUOTABLE = frozenset(
    {"send-text", "send-image", "send-video", "send-document", "send-link", "send-sticker"}
)

#: Kinds of attachment, each one Z-API send.
AUDIO, VIDEO, IMAGE, STICKER, DOCUMENT, LINK = (
    "audio",
    "video",
    "image",
    "sticker",
    "document",
    "link",
)
_CAPTIONED = frozenset({IMAGE, VIDEO, DOCUMENT})
_SEND_OF_KIND = {
    AUDIO: ("send-audio", "audio"),
    VIDEO: ("send-video", "video"),
    IMAGE: ("send-image", "image"),
    STICKER: ("send-sticker", "sticker"),
}

# What WhatsApp plays or shows inline, by extension, for attachments that name no MIME type.
_AUDIO_EXTENSIONS = frozenset({"mp3", "ogg", "oga", "opus", "m4a", "aac", "amr", "wav"})
_VIDEO_EXTENSIONS = frozenset({"mp4", "3gp", "m4v", "mov"})
_IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif"})
_LINK_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# The Messenger-style attachment that many Rasa bots already use:
# {"type": "audio", "payload": {"url": ...}}.
_TYPE_NAMES = {"audio": "audio/*", "video": "video/*", "image": "image/*", "file": None}


@dataclass(frozen=True)
class ZApiRequest:
    """One complete Z-API send: the endpoint and its whole body, ``phone`` included."""

    endpoint: str
    body: Dict[str, Any]

    @property
    def base(self) -> str:
        """``send-document/pdf`` -> ``send-document``."""
        return self.endpoint.partition("/")[0]


@dataclass(frozen=True)
class Send:
    """One message of an answer, and what to do around it."""

    request: ZApiRequest
    #: Sent instead when Z-API refuses this one: an interactive message's numbered text.
    fallback: Tuple[Send, ...] = ()
    #: A later part of the message before it (a long text cut in parts): when that one was not
    #: sent, this one is kept unsent beside it, since it would read as nonsense alone.
    continues: bool = False
    #: The numbered choices this message offers, remembered *before* it is sent: the customer
    #: may answer "2" right away.
    choices: Tuple[Choice, ...] = ()


@dataclass(frozen=True)
class Attachment:
    """A Rasa ``attachment`` (a URL, or a mapping with one), as far as it says what it is."""

    url: str
    mime_type: Optional[str] = None
    file_name: Optional[str] = None
    title: Optional[str] = None
    description: Optional[str] = None
    image: Optional[str] = None


@dataclass(frozen=True)
class Shaping:
    """The settings that shape answers (from :class:`~zapi_channel.config.ChannelConfig`)."""

    text_limit: int = 4096
    delay_typing: Optional[int] = None
    buttons_as: str = "text"
    list_title: str = "Options"
    list_button_label: str = "Choose"
    #: The preview picture of a link whose response names none (Z-API requires one).
    link_image: Optional[str] = None


@dataclass(frozen=True)
class Plan:
    """What :func:`shape_response` made of a response."""

    sends: Tuple[Send, ...]
    #: Why parts of the response were left out (an attachment without a URL, a bad custom).
    skipped: Tuple[str, ...] = ()
    #: Whether one of the sends quotes the customer's message.
    quoted: bool = False


def _first_text(data: Mapping[str, Any], *keys: str) -> Optional[str]:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def attachment_of(value: Any) -> Optional[Attachment]:
    """Read a Rasa ``attachment``: a URL, ``{"url": ..., "mime_type": ...}``, or the
    Messenger-style ``{"type": "audio", "payload": {"url": ...}}``. None without a URL."""
    if isinstance(value, str):
        return Attachment(url=value.strip()) if value.strip() else None
    if not isinstance(value, Mapping):
        return None
    payload = value.get("payload")
    inner: Mapping[str, Any] = payload if isinstance(payload, Mapping) else {}
    url = _first_text(value, "url", "link", "src") or _first_text(inner, "url", "src")
    if url is None:
        return None
    mime = _first_text(value, "mime_type", "mimeType", "mimetype", "content_type")
    kind = value.get("type")
    if mime is None and isinstance(kind, str):
        mime = kind if "/" in kind else _TYPE_NAMES.get(kind.strip().lower())
    return Attachment(
        url=url,
        mime_type=mime,
        file_name=_first_text(value, "file_name", "fileName", "filename", "name")
        or _first_text(inner, "file_name", "fileName", "name"),
        title=_first_text(value, "title") or _first_text(inner, "title"),
        description=_first_text(value, "description", "subtitle")
        or _first_text(inner, "description"),
        image=_first_text(value, "image", "image_url", "thumbnail")
        or _first_text(inner, "image", "image_url"),
    )


def _data_uri_type(url: str) -> Optional[str]:
    # "data:audio/ogg;base64,..." -> "audio/ogg"
    if not url[:5].lower() == "data:":
        return None
    head = url[5:].partition(",")[0].partition(";")[0].strip().lower()
    return head or None


def _extension(url: str) -> str:
    if url[:5].lower() == "data:":
        return ""
    path = unquote(urlsplit(url).path)
    return posixpath.splitext(path)[1].lstrip(".").lower()


def media_kind(attachment: Attachment) -> str:
    """Which send shows the attachment: by MIME type, else by the file's extension.

    audio → ``send-audio``, video → ``send-video``, ``.webp`` → ``send-sticker``, image →
    ``send-image``, a web page or no file at all → ``send-link``, any other file →
    ``send-document/{ext}``.
    """
    mime = (attachment.mime_type or _data_uri_type(attachment.url) or "").split(";")[0]
    mime = mime.strip().lower()
    if mime:
        major = mime.partition("/")[0]
        if major == "audio":
            return AUDIO
        if major == "video":
            return VIDEO
        if mime == "image/webp":
            return STICKER
        if major == "image":
            return IMAGE
        if mime in _LINK_TYPES:
            return LINK
        return DOCUMENT
    extension = _extension(attachment.url)
    if extension in _AUDIO_EXTENSIONS:
        return AUDIO
    if extension in _VIDEO_EXTENSIONS:
        return VIDEO
    if extension == "webp":
        return STICKER
    if extension in _IMAGE_EXTENSIONS:
        return IMAGE
    if document_extension(attachment.url) is not None:
        return DOCUMENT
    return LINK


def _host(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return host[4:] if host.startswith("www.") else host


def link_body(
    url: str,
    text: str = "",
    *,
    title: Optional[str] = None,
    description: Optional[str] = None,
    image: Optional[str] = None,
) -> Dict[str, Any]:
    """``send-link``'s body (without ``phone``) with every field Z-API's docs mark required.

    ``message`` is the text followed by the URL (the docs: the text must end with it). A missing
    title is the site's name, a missing description the page's address. A missing picture is the
    site's ``/favicon.ico``: Z-API requires an image, and what it does when that image cannot be
    fetched is not documented; WhatsApp then shows the card without a picture.
    """
    text = text.strip()
    message = text if text.endswith(url) else (f"{text}\n\n{url}" if text else url)
    host = _host(url)
    parts = urlsplit(url)
    page = (host + parts.path.rstrip("/")) if host else url
    return {
        "message": message,
        "image": image or (f"{parts.scheme}://{parts.netloc}/favicon.ico" if host else url),
        "linkUrl": url,
        "title": (title or host or url)[:100],
        "linkDescription": (description or page)[:200],
    }


def _media_request(
    phone: str, attachment: Attachment, caption: Optional[str], options: Shaping
) -> ZApiRequest:
    kind = media_kind(attachment)
    body: Dict[str, Any] = {"phone": phone}
    if kind in _SEND_OF_KIND:
        endpoint, key = _SEND_OF_KIND[kind]
        body[key] = attachment.url
        if kind == AUDIO:
            # A voice note: WhatsApp draws the waveform and shows "recording audio..." first.
            body["waveform"] = True
            if options.delay_typing:
                body["delayTyping"] = options.delay_typing
        if caption and kind in _CAPTIONED:
            body["caption"] = caption
        return ZApiRequest(endpoint, body)
    if kind == DOCUMENT:
        extension = document_extension(attachment.url, attachment.mime_type) or "bin"
        body["document"] = attachment.url
        name = attachment.file_name or file_name_of(attachment.url)
        if name and not name.startswith("data:"):
            body["fileName"] = name
        if caption:
            body["caption"] = caption
        return ZApiRequest(f"send-document/{extension}", body)
    body.update(
        link_body(
            attachment.url,
            caption or "",
            title=attachment.title,
            description=attachment.description,
            image=attachment.image or options.link_image,
        )
    )
    if options.delay_typing:
        body["delayTyping"] = options.delay_typing
    return ZApiRequest("send-link", body)


def _takes_text(attachment: Attachment, text: str, options: Shaping) -> bool:
    """Whether the response's text can travel with the attachment, in one message."""
    kind = media_kind(attachment)
    if kind in _CAPTIONED:
        return len(text) <= CAPTION_LIMIT
    if kind == LINK:
        return len(text) + len(attachment.url) + 2 <= options.text_limit
    return False


def _text_sends(phone: str, text: str, options: Shaping) -> List[Send]:
    return [
        Send(ZApiRequest(endpoint, {"phone": phone, **body}), continues=index > 0)
        for index, (endpoint, body) in enumerate(
            text_bodies(text, options.text_limit, options.delay_typing)
        )
    ]


def _choice_sends(phone: str, text: str, choices: Sequence[Choice], options: Shaping) -> List[Send]:
    """A message with choices: interactive (with its numbered text as the fallback) or text."""
    numbered = _text_sends(phone, render_choices(text, choices), options)
    interactive = buttons_request(
        text,
        choices,
        options.buttons_as,
        list_title=options.list_title,
        list_button_label=options.list_button_label,
    )
    if interactive is None:
        if numbered:
            numbered[0] = replace(numbered[0], choices=tuple(choices))
        return numbered
    endpoint, body = interactive
    request = ZApiRequest(endpoint, {"phone": phone, **body})
    return [Send(request, fallback=tuple(numbered), choices=tuple(choices))]


def _element_sends(phone: str, element: Mapping[str, Any], options: Shaping) -> List[Send]:
    """A carousel card: its picture captioned with its title and subtitle, then its buttons."""
    title = str(element.get("title") or "").strip()
    subtitle = str(element.get("subtitle") or "").strip()
    text = "\n".join(part for part in (f"*{title}*" if title else "", subtitle) if part)
    image = element.get("image_url")
    choices = choices_from_buttons(element.get("buttons") or [])
    sends: List[Send] = []
    picture = Attachment(url=str(image).strip(), mime_type="image/*") if _is_url(image) else None
    if choices:
        if picture is not None:
            sends.append(Send(_media_request(phone, picture, None, options)))
        sends.extend(_choice_sends(phone, text, choices, options))
    elif picture is not None and len(text) <= CAPTION_LIMIT:
        sends.append(Send(_media_request(phone, picture, text or None, options)))
    else:
        if picture is not None:
            sends.append(Send(_media_request(phone, picture, None, options)))
        if text:
            sends.extend(_text_sends(phone, text, options))
    return sends


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _quote(sends: List[Send], message_id: str) -> bool:
    """Quote the customer's message on the first send that can; False if none can."""
    for index, send in enumerate(sends):
        if send.request.base in QUOTABLE:
            body = {**send.request.body, "messageId": message_id}
            sends[index] = replace(send, request=replace(send.request, body=body))
            return True
    return False


def shape_response(
    response: Mapping[str, Any],
    phone: str,
    options: Shaping = Shaping(),
    *,
    quote: Optional[str] = None,
) -> Plan:
    """One Rasa response (``text``, ``buttons``/``quick_replies``, ``image``, ``attachment``,
    ``custom``, ``elements``) as the Z-API requests that show it, in the order they go out.

    - Text with an image, video or document is one captioned message, unless the text is longer
      than :data:`CAPTION_LIMIT`: then the text goes first, on its own.
    - Text with a link is one link preview; text with audio or a sticker goes before it.
    - Text with buttons is one message offering them (its media goes first, uncaptioned), so that
      the question to answer is the last thing the customer reads.
    - ``custom: {zapi: {endpoint, body}}`` is sent as given, after the text.
    - ``quote``: the customer's ``messageId``, quoted by the first send that can quote.
    """
    text = str(response.get("text") or "").strip()
    sends: List[Send] = []
    skipped: List[str] = []
    media: List[Attachment] = []
    image = response.get("image")
    if _is_url(image):
        media.append(Attachment(url=str(image).strip(), mime_type="image/*"))
    # Rasa leaves falsy values for what a response does not have (``attachment: None``).
    if response.get("attachment"):
        attachment = attachment_of(response.get("attachment"))
        if attachment is None:
            skipped.append("an attachment without a URL")
        else:
            media.append(attachment)
    choices = choices_from_buttons(response.get("quick_replies") or response.get("buttons") or [])
    caption_for: Optional[int] = None
    if choices:
        sends.extend(Send(_media_request(phone, item, None, options)) for item in media)
        media = []
        sends.extend(_choice_sends(phone, text, choices, options))
    elif text:
        caption_for = next(
            (i for i, item in enumerate(media) if _takes_text(item, text, options)), None
        )
        if caption_for is None:
            sends.extend(_text_sends(phone, text, options))
    custom = response.get("custom")
    if custom:
        try:
            endpoint, body = custom_request(custom)
        except InvalidCustomPayload as exc:
            skipped.append(f"a custom response: {exc}")
        else:
            sends.append(Send(ZApiRequest(endpoint, {"phone": phone, **body})))
    for index, item in enumerate(media):
        caption = text if index == caption_for else None
        sends.append(Send(_media_request(phone, item, caption, options)))
    elements = response.get("elements")
    if isinstance(elements, Sequence) and not isinstance(elements, (str, bytes)):
        for element in elements:
            if isinstance(element, Mapping):
                sends.extend(_element_sends(phone, element, options))
    quoted = _quote(sends, quote) if quote else False
    return Plan(sends=tuple(sends), skipped=tuple(skipped), quoted=quoted)


__all__ = [
    "AUDIO",
    "CAPTION_LIMIT",
    "DOCUMENT",
    "IMAGE",
    "LINK",
    "QUOTABLE",
    "STICKER",
    "VIDEO",
    "Attachment",
    "Choice",
    "InvalidCustomPayload",
    "Plan",
    "Send",
    "Shaping",
    "ZApiRequest",
    "attachment_of",
    "button_list_body",
    "buttons_request",
    "choices_from_buttons",
    "custom_request",
    "document_extension",
    "file_name_of",
    "link_body",
    "match_choice",
    "media_kind",
    "option_list_body",
    "render_choices",
    "shape_response",
    "split_text",
    "text_bodies",
]

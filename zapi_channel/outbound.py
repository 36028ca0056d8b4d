"""From Rasa's responses to Z-API requests. Pure: no I/O.

- :func:`split_text`: long answers become several messages, cut where a reader would cut.
- :func:`render_choices` / :func:`match_choice`: buttons as a numbered list, and the customer's "2"
  (or the exact title) mapped back to the button's payload. WhatsApp buttons are unreliable (Z-API's
  own tips page says so), so the choices are always written into the text as well.
- :func:`button_list_body`, :func:`option_list_body`: Z-API's button and option lists.
- :func:`document_extension`, :func:`custom_request`: attachments and ``custom`` payloads.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
from dataclasses import dataclass
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


__all__ = [
    "Choice",
    "InvalidCustomPayload",
    "button_list_body",
    "buttons_request",
    "choices_from_buttons",
    "custom_request",
    "document_extension",
    "file_name_of",
    "match_choice",
    "option_list_body",
    "render_choices",
    "split_text",
    "text_bodies",
]

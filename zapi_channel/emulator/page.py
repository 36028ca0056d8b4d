"""The chat page: the files the emulator serves at ``/`` and ``/_emulator/static/<name>``.

The page is a plain HTML, CSS and JavaScript client of the emulator's own JSON API; it draws what
the bot sent as WhatsApp would, and lets a developer answer as the customer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Union

from sanic import response
from sanic.response import HTTPResponse

from zapi_channel.emulator.values import Reply, _error

#: The chat page's files: ``zapi_channel/static``, beside this package.
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
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


async def static_file(name: str) -> Union[HTTPResponse, Reply]:
    """One of :data:`STATIC_FILES`, or the error :class:`Reply` the app answers instead."""
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        return _error(404, "Not found")
    # no-cache: a developer who edits the page sees the change on the next reload.
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = _CHAT_PAGE_POLICY
    try:
        return await response.file(STATIC_DIR / name, mime_type=content_type, headers=headers)
    except FileNotFoundError:
        # An install that left out the package data (see pyproject's package-data).
        return _error(404, f"The chat page's {name} is not installed (looked in {STATIC_DIR})")


__all__ = ["STATIC_DIR", "STATIC_FILES", "static_file"]

"""Keeping secrets out of logs.

Z-API puts the instance token in the URL path (``/instances/{id}/token/{token}/send-text``), and
httpx logs every request URL at INFO (``HTTP Request: POST https://... "HTTP/1.1 200 OK"``). With
Rasa running under ``--debug`` that line would carry the token into every log. The filter below
rewrites such records on the httpx and httpcore loggers before any handler sees them.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable

_TOKEN_IN_PATH = re.compile(r"(/token/)[^/\s\"'?#]+")
_REDACTED = r"\1***"

#: Loggers that may print a request URL. A filter on a logger does not apply to its children, so
#: every one of them is named.
THIRD_PARTY_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "aiohttp",
    "aiohttp.client",
    "aiohttp.internal",
)


def redact_url(text: str) -> str:
    """Hide the instance token of any Z-API URL inside ``text``."""
    return _TOKEN_IN_PATH.sub(_REDACTED, text)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide Z-API URL tokens and every given secret inside ``text``."""
    text = redact_url(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class TokenPathFilter(logging.Filter):
    """Rewrites a log record so that no Z-API instance token survives in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record must not break logging
            return True
        cleaned = redact_url(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_FILTER = TokenPathFilter()


def install_log_redaction() -> None:
    """Attach the filter to the loggers of our HTTP stack (idempotent)."""
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


__all__ = ["TokenPathFilter", "install_log_redaction", "redact", "redact_url"]

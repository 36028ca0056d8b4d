"""The webhook's decision, as pure functions of plain values: no sanic, no I/O.

:func:`authenticate` settles the token, :func:`decide` the rest (size, parse, what the callback
is, whether the channel is active). What is left for the handler is to keep an accepted message
(:meth:`zapi_channel.delivery.Delivery.accept`) and to translate a :class:`Reply` into HTTP;
:func:`after_accept` names the reply to that step's outcome.
"""

from __future__ import annotations

import hmac
import json
import logging
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Dict, Optional, Tuple, Union
from urllib.parse import parse_qs

from zapi_channel.config import ChannelConfig
from zapi_channel.inbound import (
    DeliveryFailed,
    Event,
    Ignored,
    InboundMessage,
    Invalid,
    parse_body,
)


@dataclass(frozen=True)
class Reply:
    """The HTTP answer to a webhook, and what to log about it (``(level, message, *args)``)."""

    status: int
    body: Dict[str, str]
    log: Optional[Tuple[Any, ...]] = field(default=None, compare=False)
    #: What the webhook counts it as (the ``outcome`` label of ``zapi_webhooks_total``), and for
    #: an ignored callback its :attr:`~zapi_channel.inbound.Ignored.kind`.
    outcome: str = field(default="event", compare=False)
    reason: str = field(default="", compare=False)

    @cached_property
    def encoded(self) -> bytes:
        """:attr:`body` as the answer's bytes, as compact as sanic's ``json()`` writes it;
        encoded once for the replies that every webhook shares (accepted, duplicate)."""
        return json.dumps(self.body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Accept:
    """A customer message to keep; the reply depends on whether it could be."""

    message: InboundMessage


@dataclass(frozen=True)
class Report:
    """A send of ours that failed after Z-API queued it: to journal, then reply :data:`LOGGED`."""

    failure: DeliveryFailed


@dataclass(frozen=True)
class Connection:
    """The WhatsApp session went up or down: to note, then reply :data:`LOGGED`."""

    connected: bool
    event: Event


Decision = Union[Reply, Accept, Report, Connection]

MISSING_TOKEN = Reply(401, {"error": "missing token"}, outcome="refused")
INVALID_TOKEN = Reply(403, {"error": "invalid token"}, outcome="refused")
TOO_LARGE = Reply(413, {"error": "body too large"}, outcome="too_large")
ACCEPTED = Reply(200, {"status": "accepted"}, outcome="accepted")
DUPLICATE = Reply(200, {"status": "duplicate"}, outcome="duplicate")
NOT_KEPT = Reply(
    503, {"error": "could not store the message; send it again"}, outcome="unavailable"
)
LOGGED = Reply(200, {"status": "logged"})


def expected_query(token: str) -> bytes:
    """The exact query string Z-API calls back with: the URL ``zapi-channel`` gave it."""
    return f"token={token}".encode()


def authenticate(query_string: str, expected: bytes, token: str) -> Optional[Reply]:
    """None when the request carries our token exactly once, else the refusal.

    Z-API calls back the exact URL it was given, "...?token=<token>": one constant-time compare of
    the whole query string settles that case without parsing it. Any other shape (more
    parameters, percent-encoding, a wrong token) takes the full check.
    """
    if hmac.compare_digest(query_string.encode(), expected):
        return None
    tokens = parse_qs(query_string).get("token", [])
    if not tokens:
        return MISSING_TOKEN
    # Exactly one token: "?token=wrong&token=right" must not pass by picking the good one.
    given = tokens[0] if len(tokens) == 1 else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        return INVALID_TOKEN
    return None


#: ``Content-Encoding`` values the webhook reads. Z-API publishes a tool to decompress gzip
#: webhooks, and whether it sends them compressed by default is not documented: both plain and
#: compressed bodies are read, and anything else is refused with 415 rather than misparsed.
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
UNSUPPORTED_ENCODING = Reply(415, {"error": "unsupported Content-Encoding"}, outcome="invalid")
BAD_COMPRESSION = Reply(400, {"error": "the compressed body is damaged"}, outcome="invalid")


def decode_body(body: bytes, encoding: Optional[str], limit: int) -> Union[bytes, Reply]:
    """The body as sent, decompressed per ``Content-Encoding``; or the reply that refuses it.

    The size cap holds for what the body decompresses to, and decompression stops one byte past
    it: a small body that would inflate to gigabytes (a zip bomb) costs at most ``limit`` bytes.
    """
    if len(body) > limit:
        return TOO_LARGE
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return body
    # Applied in order, so undone in reverse (RFC 9110, 8.4); a chain of two is already odd.
    if len(codings) > 2 or any(c not in _DECODERS for c in codings):
        return UNSUPPORTED_ENCODING
    for coding in reversed(codings):
        wbits = _DECODERS[coding]
        if coding == "deflate" and body[:1] and body[0] & 0x0F != 8:
            wbits = -zlib.MAX_WBITS  # raw deflate, which some senders use for "deflate"
        decompressor = zlib.decompressobj(wbits)
        try:
            body = decompressor.decompress(body, limit + 1)
        except zlib.error:
            return BAD_COMPRESSION
        if len(body) > limit or decompressor.unconsumed_tail:
            return TOO_LARGE
        if not decompressor.eof or decompressor.unused_data:
            return BAD_COMPRESSION
    return body


def decide(body: bytes, config: ChannelConfig) -> Decision:
    """What an authenticated webhook body means: a reply now, or a message to keep."""
    if len(body) > config.max_body_bytes:
        return TOO_LARGE
    parsed = parse_body(body, config)
    if isinstance(parsed, InboundMessage):
        if not config.active:
            return Reply(
                200,
                {"status": "inactive"},
                log=(
                    logging.INFO,
                    "The channel is inactive (active: false): dropped message %s",
                    parsed.message_id,
                ),
                outcome="inactive",
            )
        return Accept(parsed)
    if isinstance(parsed, Invalid):
        return Reply(400, {"error": parsed.reason}, outcome="invalid")
    if isinstance(parsed, DeliveryFailed):
        return Report(parsed)
    if isinstance(parsed, Ignored):
        return Reply(
            200,
            {"status": "ignored", "reason": parsed.reason},
            log=(logging.DEBUG, "Ignored a Z-API callback: %s", parsed.reason),
            outcome="ignored",
            reason=parsed.kind,
        )
    assert isinstance(parsed, Event)
    if parsed.connected is not None:
        return Connection(parsed.connected, parsed)
    return Reply(200, LOGGED.body, log=(parsed.level, "%s: %s", parsed.type, parsed.summary))


def after_accept(new: bool) -> Reply:
    """The reply once the message was kept (``new``) or recognised as already kept."""
    return ACCEPTED if new else DUPLICATE


__all__ = [
    "ACCEPTED",
    "BAD_COMPRESSION",
    "DUPLICATE",
    "INVALID_TOKEN",
    "MISSING_TOKEN",
    "NOT_KEPT",
    "TOO_LARGE",
    "UNSUPPORTED_ENCODING",
    "Accept",
    "Connection",
    "Decision",
    "Reply",
    "Report",
    "after_accept",
    "authenticate",
    "decide",
    "decode_body",
    "expected_query",
]

"""The webhook's decision as pure functions: plain values in, a reply or a message out."""

from __future__ import annotations

import gzip
import json
import logging
import tracemalloc
import zlib
from typing import Any, Callable, Dict

import pytest

from tests.conftest import WEBHOOK_TOKEN, channel_block
from zapi_channel.config import ChannelConfig
from zapi_channel.webhook import (
    ACCEPTED,
    BAD_COMPRESSION,
    DUPLICATE,
    INVALID_TOKEN,
    MISSING_TOKEN,
    TOO_LARGE,
    UNSUPPORTED_ENCODING,
    Accept,
    Connection,
    Reply,
    Report,
    after_accept,
    authenticate,
    decide,
    decode_body,
    expected_query,
)

Load = Callable[[str], Dict[str, Any]]
EXPECTED = expected_query(WEBHOOK_TOKEN)


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("query", "refusal"),
    [
        (f"token={WEBHOOK_TOKEN}", None),
        (f"other=1&token={WEBHOOK_TOKEN}", None),
        (f"token={WEBHOOK_TOKEN.replace('-', '%2D')}", None),
        ("", MISSING_TOKEN),
        ("token=", MISSING_TOKEN),
        ("tok=x", MISSING_TOKEN),
        ("token=wrong", INVALID_TOKEN),
        (f"token=wrong&token={WEBHOOK_TOKEN}", INVALID_TOKEN),
        (f"token={WEBHOOK_TOKEN}&token={WEBHOOK_TOKEN}", INVALID_TOKEN),
        (f"token={WEBHOOK_TOKEN.upper()}", INVALID_TOKEN),
    ],
)
def test_authenticate_takes_exactly_one_right_token(query: str, refusal: Any) -> None:
    assert authenticate(query, EXPECTED, WEBHOOK_TOKEN) == refusal


def test_a_customer_message_is_to_be_kept(config: ChannelConfig, callback: Load) -> None:
    decision = decide(body(callback("received_text")), config)
    assert isinstance(decision, Accept)
    assert decision.message.text == "Hi there"


def test_an_inactive_channel_drops_messages_and_says_why(callback: Load) -> None:
    config = ChannelConfig.from_mapping(channel_block(active=False))
    decision = decide(body(callback("received_text")), config)
    assert decision == Reply(200, {"status": "inactive"})
    assert isinstance(decision, Reply) and decision.log is not None
    assert decision.log[0] == logging.INFO


def test_too_large_wins_before_parsing(config: ChannelConfig) -> None:
    assert decide(b"{" * (config.max_body_bytes + 1), config) == TOO_LARGE


@pytest.mark.parametrize("raw", [b"", b"[]", b"nope", b'"x"'])
def test_what_is_not_a_json_object_is_a_400(config: ChannelConfig, raw: bytes) -> None:
    decision = decide(raw, config)
    assert isinstance(decision, Reply) and decision.status == 400


def test_what_is_not_for_the_bot_is_ignored_with_its_reason(
    config: ChannelConfig, callback: Load
) -> None:
    decision = decide(body(callback("received_own_echo")), config)
    assert isinstance(decision, Reply) and decision.body["status"] == "ignored"
    assert decision.body["reason"]


def test_a_status_callback_is_logged_at_its_level(config: ChannelConfig, callback: Load) -> None:
    decision = decide(body(callback("presence")), config)
    assert decision == Reply(200, {"status": "logged"})
    assert isinstance(decision, Reply) and decision.log is not None
    assert decision.log[0] == logging.DEBUG


def test_connection_callbacks_are_a_state_change(config: ChannelConfig, callback: Load) -> None:
    down = decide(body(callback("disconnected")), config)
    up = decide(body(callback("connected")), config)
    assert isinstance(down, Connection) and down.connected is False
    assert down.event.level == logging.ERROR
    assert isinstance(up, Connection) and up.connected is True


def test_a_delivery_error_is_a_report_to_act_on(config: ChannelConfig, callback: Load) -> None:
    payload = callback("delivery_error")
    decision = decide(body(payload), config)
    assert isinstance(decision, Report)
    assert (decision.failure.message_id, decision.failure.error) == (
        payload["messageId"],
        payload["error"],
    )
    assert not decision.failure.button_terms


def test_after_accept_names_new_and_duplicate() -> None:
    assert (after_accept(True), after_accept(False)) == (ACCEPTED, DUPLICATE)


# -- compressed bodies ---------------------------------------------------------------------------

LIMIT = 256 * 1024
PLAIN = json.dumps({"type": "ReceivedCallback", "text": {"message": "olá"}}).encode()


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        (None, lambda data: data),
        ("identity", lambda data: data),
        ("gzip", gzip.compress),
        ("GZip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),
        ("gzip, identity", gzip.compress),
        ("deflate, gzip", lambda data: gzip.compress(zlib.compress(data))),
    ],
)
def test_compressed_bodies_are_read_as_sent(
    encoding: Any, encode: Callable[[bytes], bytes]
) -> None:
    assert decode_body(encode(PLAIN), encoding, LIMIT) == PLAIN


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br", "gzip, gzip, gzip"])
def test_other_encodings_are_415(encoding: str) -> None:
    assert decode_body(gzip.compress(PLAIN), encoding, LIMIT) == UNSUPPORTED_ENCODING
    assert UNSUPPORTED_ENCODING.status == 415


def test_a_zip_bomb_is_413_and_never_inflated_past_the_cap() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < LIMIT
    tracemalloc.start()
    try:
        assert decode_body(bomb, "gzip", LIMIT) == TOO_LARGE
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT, peak


def test_the_cap_holds_for_the_compressed_body_too() -> None:
    assert decode_body(b"x" * (LIMIT + 1), "gzip", LIMIT) == TOO_LARGE
    exactly = gzip.compress(b"a" * LIMIT)
    assert decode_body(exactly, "gzip", LIMIT) == b"a" * LIMIT


@pytest.mark.parametrize(
    "body",
    [
        b"not gzip at all",
        gzip.compress(PLAIN)[:-12],  # cut short
        gzip.compress(PLAIN) + b"trailing junk",
        b"",
    ],
)
def test_a_damaged_compressed_body_is_400(body: bytes) -> None:
    assert decode_body(body, "gzip", LIMIT) == BAD_COMPRESSION
    assert BAD_COMPRESSION.status == 400


@pytest.mark.parametrize(
    "reply",
    [ACCEPTED, DUPLICATE, BAD_COMPRESSION, INVALID_TOKEN, MISSING_TOKEN, TOO_LARGE],
)
def test_a_reply_is_encoded_once_as_compact_json_of_its_body(reply: Reply) -> None:
    assert json.loads(reply.encoded) == reply.body
    assert reply.encoded == json.dumps(reply.body, separators=(",", ":")).encode()
    assert reply.encoded is reply.encoded  # kept, not encoded again for the next webhook


def test_an_ignored_callbacks_reply_carries_its_own_reason(callback: Load) -> None:
    payload = callback("received_text")
    payload["isEdit"] = True
    reply = decide(body(payload), ChannelConfig.from_mapping(channel_block()))
    assert isinstance(reply, Reply)
    assert json.loads(reply.encoded) == {"status": "ignored", "reason": reply.body["reason"]}
    assert "edit" in reply.body["reason"]

"""The webhook's decision as pure functions: plain values in, a reply or a message out."""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict

import pytest

from tests.conftest import WEBHOOK_TOKEN, channel_block
from zapi_channel.config import ChannelConfig
from zapi_channel.webhook import (
    ACCEPTED,
    DUPLICATE,
    INVALID_TOKEN,
    MISSING_TOKEN,
    TOO_LARGE,
    Accept,
    Connection,
    Reply,
    Report,
    after_accept,
    authenticate,
    decide,
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

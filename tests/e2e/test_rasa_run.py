"""A real ``rasa run`` with the trained demo model, its action server and the Z-API emulator.

Customers speak through the emulator's JSON API; the emulator posts Z-API's ReceivedCallback to
rasa run's webhook, and records every ``send-*`` call the channel makes. Assertions are on what
the emulator recorded: what a customer would see on WhatsApp.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

import httpx
import pytest

from tests.e2e.conftest import EMULATOR_CLIENT, EMULATOR_INSTANCE, EMULATOR_TOKEN, Stack
from tests.e2e.figures import record, tally

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "callbacks"
MENU = (
    "What would you like to see?\n\n*1.* A picture\n*2.* A document\n*3.* A voice note"
    "\n*4.* A video\n*5.* Our website\n*6.* Talk to us"
)


def new_phone() -> str:
    return "5511" + str(uuid.uuid4().int)[:9]


def say(stack: Stack, phone: str, **content: Any) -> Dict[str, Any]:
    answer = httpx.post(
        f"{stack.emulator_url}/_emulator/messages", json={"phone": phone, **content}, timeout=15
    )
    answer.raise_for_status()
    body: Dict[str, Any] = answer.json()
    assert body["webhook_status"] == 200, body
    return body


def conversation(stack: Stack, phone: str) -> List[Dict[str, Any]]:
    answer = httpx.get(
        f"{stack.emulator_url}/_emulator/messages", params={"phone": phone}, timeout=5
    )
    answer.raise_for_status()
    messages: List[Dict[str, Any]] = answer.json()["messages"]
    return messages


def bot_messages(stack: Stack, phone: str, count: int, timeout: float = 60) -> List[Dict[str, Any]]:
    """Wait until the bot has sent ``count`` messages to ``phone``; then make sure no more come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = [m for m in conversation(stack, phone) if m["from"] == "bot"]
        if len(sent) >= count:
            time.sleep(1.0)  # anything beyond the expected answers would show up now
            return [m for m in conversation(stack, phone) if m["from"] == "bot"]
        time.sleep(0.2)
    raise AssertionError(
        f"expected {count} bot messages, got {conversation(stack, phone)}\n{stack.logs()[-3000:]}"
    )


def test_a_greeting_gets_the_customer_by_name_and_the_menu(stack: Stack) -> None:
    phone = new_phone()
    say(stack, phone, text="hi", sender_name="Ana")
    greeting, menu = bot_messages(stack, phone, 2)
    assert greeting["endpoint"] == "send-text"
    assert greeting["body"] == {"phone": phone, "message": "Hi Ana! I'm the Z-API demo bot."}
    assert menu["endpoint"] == "send-text"
    assert menu["body"]["message"] == MENU


def test_answering_with_a_number_picks_that_button(stack: Stack) -> None:
    phone = new_phone()
    say(stack, phone, text="menu")
    bot_messages(stack, phone, 1)
    say(stack, phone, text="1")
    sent = bot_messages(stack, phone, 2)
    # Text and image in one response: one picture with its caption, as WhatsApp shows it.
    assert sent[1]["endpoint"] == "send-image"
    assert sent[1]["body"] == {
        "phone": phone,
        "image": "https://picsum.photos/id/237/400/300",
        "caption": "Here is a picture for you.",
    }


def test_a_button_reply_triggers_the_buttons_intent_and_sends_a_document(stack: Stack) -> None:
    phone = new_phone()
    say(stack, phone, button_id="/ask_document", label="A document")
    [document] = bot_messages(stack, phone, 1)
    assert document["endpoint"] == "send-document/pdf"
    assert document["body"]["fileName"] == "brochure.pdf"
    assert document["body"]["caption"] == "Here is our brochure."


def test_an_image_without_caption_and_a_voice_note_get_their_answers(stack: Stack) -> None:
    phone = new_phone()
    say(stack, phone, image_url="https://example.com/photo.jpg")
    [image_answer] = bot_messages(stack, phone, 1)
    assert image_answer["body"]["message"].startswith("Nice picture!")
    say(stack, phone, audio_url="https://example.com/voice.ogg")
    answers = bot_messages(stack, phone, 2)
    assert answers[1]["body"]["message"].startswith("Thanks for the voice message!")


def test_a_location_is_acknowledged_with_its_address(stack: Stack) -> None:
    phone = new_phone()
    say(
        stack,
        phone,
        location={"latitude": -23.56, "longitude": -46.65, "address": "Av. Paulista, 1000"},
    )
    [answer] = bot_messages(stack, phone, 1)
    assert answer["body"]["message"] == "Thanks! I got your location: Av. Paulista, 1000."


def test_messages_in_quick_succession_are_answered_once_each_in_order(stack: Stack) -> None:
    phone = new_phone()
    httpx.post(
        f"{stack.emulator_url}/_emulator/faults", json={"duplicate_deliveries": True}, timeout=5
    )
    try:
        for text in ("are you a bot?", "thanks", "bye"):
            say(stack, phone, text=text)
        sent = bot_messages(stack, phone, 3)
    finally:
        httpx.delete(f"{stack.emulator_url}/_emulator/faults", timeout=5)
    expected = ["I'm a bot, powered by Rasa and Z-API.", "You're welcome!", "Bye! Talk soon."]
    received, lost, duplicated = tally({phone: expected}, {phone: [m["text"] for m in sent]})
    record(
        "Z-API delivers every webhook twice",
        sent=3,
        duplicates=3,
        faults="none",
        expected=3,
        received=received,
        lost=lost,
        duplicated=duplicated,
    )
    assert [m["body"]["message"] for m in sent] == [
        "I'm a bot, powered by Rasa and Z-API.",
        "You're welcome!",
        "Bye! Talk soon.",
    ]


@pytest.mark.parametrize(
    "fixture",
    [
        "received_own_echo",
        "received_group_text",
        "received_newsletter",
        "received_status_reply",
        "received_waiting_message",
        "received_notification",
        "received_reaction",
    ],
)
def test_callbacks_that_must_be_ignored_are_never_answered(stack: Stack, fixture: str) -> None:
    payload = json.loads((FIXTURES / f"{fixture}.json").read_text())
    payload["instanceId"] = EMULATOR_INSTANCE
    payload["messageId"] = uuid.uuid4().hex.upper()
    answer = httpx.post(stack.webhook, json=payload, timeout=5)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ignored"
    time.sleep(1.5)
    assert [m for m in conversation(stack, payload["phone"]) if m["from"] == "bot"] == []


def test_a_wrong_token_is_refused_by_rasa_run(stack: Stack) -> None:
    payload = json.loads((FIXTURES / "received_text.json").read_text())
    payload["instanceId"] = EMULATOR_INSTANCE
    answer = httpx.post(
        f"{stack.rasa_url}/webhooks/zapi/webhook?token=nope", json=payload, timeout=5
    )
    assert answer.status_code == 403


def test_no_secret_reaches_any_log(stack: Stack) -> None:
    # rasa run runs with --debug, so this includes httpx's request lines.
    phone = new_phone()
    say(stack, phone, text="hi")
    bot_messages(stack, phone, 2)
    rasa_log = stack.processes["rasa"].log()
    assert "send-text" in rasa_log or "Z-API" in rasa_log
    # Every process of the stack, and whatever the channel journaled.
    texts = [process.log() for process in stack.processes.values()]
    for state in stack.credentials.parent.glob("zapi-channel.db*"):
        texts.append(state.read_bytes().decode("utf-8", "replace"))
    for text in texts:
        for secret in (EMULATOR_TOKEN, EMULATOR_CLIENT, stack.webhook_token):
            assert secret not in text


def test_transient_zapi_failures_are_retried_and_no_answer_is_lost(stack: Stack) -> None:
    phones = [new_phone() for _ in range(4)]
    # Z-API answers 503 to the next sends: the channel retries with backoff.
    httpx.post(
        f"{stack.emulator_url}/_emulator/faults",
        json={"fail_sends": 3, "fail_status": 503},
        timeout=5,
    )
    try:
        for phone in phones:
            say(stack, phone, text="thanks")
        found = {phone: [m["text"] for m in bot_messages(stack, phone, 1)] for phone in phones}
    finally:
        httpx.delete(f"{stack.emulator_url}/_emulator/faults", timeout=5)
    received, lost, duplicated = tally({phone: ["You're welcome!"] for phone in phones}, found)
    record(
        "Z-API answers 503 to three sends in a row",
        sent=len(phones),
        duplicates=0,
        faults="3 x HTTP 503 on send-text",
        expected=len(phones),
        received=received,
        lost=lost,
        duplicated=duplicated,
    )
    assert found == {phone: ["You're welcome!"] for phone in phones}
    assert "retrying in" in stack.processes["rasa"].log()

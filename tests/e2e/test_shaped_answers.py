"""Answers as WhatsApp shows them, through a real ``rasa run``, the demo model and the emulator.

This bot merges bursts (``merge_window_ms``) and quotes the message it answers
(``quote_replies: always``). Every assertion is on what the emulator recorded: the requests a
customer's phone would have received, each one checked by the emulator against the fields Z-API's
docs require (a body missing one is refused with a 400, and so never recorded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List

import httpx
import pytest

from tests.e2e.conftest import emulator_and_rasa, new_phone
from tests.processes import Process

pytestmark = pytest.mark.e2e

#: Long enough that three texts posted one after the other always fall inside it.
WINDOW_MS = 1500


@dataclass
class Bot:
    emulator: str
    rasa: Process

    def say(self, phone: str, text: str) -> str:
        answer = httpx.post(
            f"{self.emulator}/_emulator/messages", json={"phone": phone, "text": text}, timeout=15
        )
        answer.raise_for_status()
        body = answer.json()
        assert body["webhook_status"] == 200, body
        return str(body["messageId"])

    def sent(self, phone: str) -> List[Dict[str, Any]]:
        answer = httpx.get(
            f"{self.emulator}/_emulator/messages", params={"phone": phone}, timeout=5
        )
        return [m for m in answer.json()["messages"] if m["from"] == "bot"]

    def answers(self, phone: str, count: int, settle: float = 2.0) -> List[Dict[str, Any]]:
        """Wait for ``count`` bot messages, then make sure no more come for ``settle`` seconds."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(self.sent(phone)) >= count:
                time.sleep(settle)
                return self.sent(phone)
            time.sleep(0.2)
        raise AssertionError(
            f"expected {count} answers, got {self.sent(phone)}\n{self.rasa.log()[-3000:]}"
        )


@pytest.fixture(scope="module")
def bot(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    folder = tmp_path_factory.mktemp("shaped")
    with emulator_and_rasa(
        "shaped", folder, trained_model, merge_window_ms=WINDOW_MS, quote_replies="always"
    ) as pair:
        yield Bot(pair.emulator_url, pair.rasa)


def test_text_and_image_arrive_as_one_captioned_picture_quoting_the_question(bot: Bot) -> None:
    phone = new_phone()
    asked = bot.say(phone, "show me a picture")
    [picture] = bot.answers(phone, 1)
    assert picture["endpoint"] == "send-image"
    assert picture["body"] == {
        "phone": phone,
        "image": "https://picsum.photos/id/237/400/300",
        "caption": "Here is a picture for you.",
        "messageId": asked,
    }


def test_an_audio_attachment_is_a_voice_note_after_its_text(bot: Bot) -> None:
    phone = new_phone()
    asked = bot.say(phone, "send me a voice note")
    text, audio = bot.answers(phone, 2)
    assert (text["endpoint"], text["body"]["message"]) == (
        "send-text",
        "Here is a voice note from us.",
    )
    # send-audio documents no messageId: the quote is on the text.
    assert text["body"]["messageId"] == asked
    assert audio["endpoint"] == "send-audio"
    assert audio["body"] == {
        "phone": phone,
        "audio": "https://upload.wikimedia.org/wikipedia/commons/c/c8/Example.ogg",
        "waveform": True,
    }


def test_a_video_and_a_link_preview(bot: Bot) -> None:
    phone = new_phone()
    bot.say(phone, "send me a video")
    [video] = bot.answers(phone, 1)
    assert video["endpoint"] == "send-video"
    assert video["body"]["caption"] == "Here is a short video."
    assert video["body"]["video"].endswith("/flower.mp4")
    bot.say(phone, "what is your website")
    link = bot.answers(phone, 2)[1]
    assert link["endpoint"] == "send-link"
    body = link["body"]
    assert body["message"] == (
        "Everything about this demo is on our website.\n\nhttps://github.com/RasaHQ/rasa"
    )
    assert (body["linkUrl"], body["title"], body["linkDescription"], body["image"]) == (
        "https://github.com/RasaHQ/rasa",
        "Rasa Open Source",
        "The assistant behind this WhatsApp demo",
        "https://picsum.photos/id/180/400/300",
    )


def test_a_burst_of_three_texts_within_the_window_gives_one_turn(bot: Bot) -> None:
    phone = new_phone()
    # Each alone would be answered (fallback, fallback, the menu): three turns, three answers.
    # Merged, "show me\nthe\nmenu" is one turn, answered once with the menu.
    began = time.monotonic()
    ids = [bot.say(phone, text) for text in ("show me", "the", "menu")]
    assert time.monotonic() - began < WINDOW_MS / 1000, "the burst took longer than the window"
    [menu] = bot.answers(phone, 1, settle=WINDOW_MS / 1000 + 1.5)
    assert menu["endpoint"] == "send-text"
    assert menu["body"]["message"].startswith("What would you like to see?\n\n*1.* A picture")
    # The answer quotes the burst's last message: the one the customer just wrote.
    assert menu["body"]["messageId"] == ids[-1]
    # A reply after the window is a turn of its own: "1" picks the menu's first choice.
    time.sleep(WINDOW_MS / 1000)
    bot.say(phone, "1")
    assert bot.answers(phone, 2)[1]["endpoint"] == "send-image"

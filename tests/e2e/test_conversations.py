"""Conversations as they happen on Z-API, through a real rasa run with a SQL tracker store.

- One customer is one conversation whether Z-API names them by number or by ``@lid``, in either
  order, once a callback linked the two.
- The shop's owner answering from the phone pauses the bot in that chat: the customer's messages
  are recorded in the tracker but not answered; the bot answers again after ``handoff_minutes``,
  or at once after ``#bot``; the bot's own echoes never pause anything.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest

from tests.e2e.conftest import (
    EMULATOR_CLIENT,
    EMULATOR_INSTANCE,
    EMULATOR_TOKEN,
    emulator_and_rasa,
)
from tests.processes import ROOT

pytestmark = pytest.mark.e2e

FIXTURE = ROOT / "tests" / "fixtures" / "callbacks" / "received_text.json"
ANSWER = "You're welcome!"
#: Short, so that the test can wait it out: 3 seconds.
HANDOFF_MINUTES = 0.05


class Bot:
    def __init__(self, emulator: str, rasa: str, token: str, trackers: Path) -> None:
        self.emulator = emulator
        self.rasa = rasa
        self.token = token
        self.trackers = trackers

    def deliver(self, phone: str, text: str = "thanks", **fields: Any) -> Dict[str, Any]:
        """Post what Z-API posts for a customer's message, with the given envelope fields."""
        payload = json.loads(FIXTURE.read_text())
        payload.update(
            instanceId=EMULATOR_INSTANCE,
            phone=phone,
            messageId=uuid.uuid4().hex[:20].upper(),
            text={"message": text},
            chatLid=None,
            senderLid=None,
            momment=int(time.time() * 1000),
        )
        payload.update(fields)
        answer = httpx.post(
            f"{self.rasa}/webhooks/zapi/webhook?token={self.token}", json=payload, timeout=15
        )
        assert answer.status_code == 200, answer.text
        result: Dict[str, Any] = answer.json()
        return result

    def say(self, phone: str, text: str, *, from_me: bool = False) -> None:
        """A customer (or, with ``from_me``, the shop's owner on the phone) writes in the chat."""
        answer = httpx.post(
            f"{self.emulator}/_emulator/messages",
            json={"phone": phone, "text": text, "from_me": from_me},
            timeout=15,
        ).json()
        assert answer["webhook_status"] == 200, answer

    def answers(self, phone: str) -> List[str]:
        messages = httpx.get(
            f"{self.emulator}/_emulator/messages", params={"phone": phone}, timeout=5
        ).json()
        return [m["text"] for m in messages["messages"] if m["from"] == "bot"]

    def wait_answers(self, phone: str, count: int, timeout: float = 30) -> List[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.answers(phone)) < count:
            time.sleep(0.2)
        return self.answers(phone)

    def events(self) -> List[Tuple[str, str, Dict[str, Any]]]:
        """(sender_id, event type, data) of every event in the SQL tracker store."""
        with closing(sqlite3.connect(self.trackers)) as db:
            rows = db.execute(
                "SELECT sender_id, type_name, data FROM events ORDER BY id"
            ).fetchall()
        return [(sender, kind, json.loads(data)) for sender, kind, data in rows]

    def user_texts(self) -> Dict[str, List[str]]:
        found: Dict[str, List[str]] = {}
        for sender, kind, data in self.events():
            if kind == "user":
                found.setdefault(sender, []).append(data.get("text"))
        return found


@pytest.fixture(scope="module")
def bot(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    folder = tmp_path_factory.mktemp("conversations")
    trackers = folder / "trackers.db"
    tracker_store = f'tracker_store:\n  type: SQL\n  dialect: "sqlite"\n  db: "{trackers}"\n'
    with emulator_and_rasa(
        "conversations",
        folder,
        trained_model,
        endpoints=tracker_store,
        debug=True,
        handoff_minutes=HANDOFF_MINUTES,
    ) as pair:
        yield Bot(pair.emulator_url, pair.rasa_url, pair.token, trackers)


def test_a_number_then_its_lid_is_one_conversation(bot: Bot) -> None:
    number, lid = "5511970000101", "70000000000101@lid"
    assert bot.deliver(number, chatLid=lid)["status"] == "accepted"
    assert bot.wait_answers(number, 1) == [ANSWER]
    assert bot.deliver(lid, chatLid=lid)["status"] == "accepted"
    # Answered where the message came from, and recorded in the same conversation.
    assert bot.wait_answers(lid, 1) == [ANSWER]
    texts = bot.user_texts()
    assert texts.get(number) == ["thanks", "thanks"]
    assert lid not in texts


def test_a_lid_then_its_number_is_one_conversation(bot: Bot) -> None:
    number, lid = "5511970000102", "70000000000102@lid"
    bot.deliver(lid, chatLid=lid)
    assert bot.wait_answers(lid, 1) == [ANSWER]
    bot.deliver(number, chatLid=lid)
    assert bot.wait_answers(number, 1) == [ANSWER]
    texts = bot.user_texts()
    assert texts.get(lid) == ["thanks", "thanks"]
    assert number not in texts


def test_the_owner_takes_over_and_the_bot_comes_back(bot: Bot) -> None:
    phone = "5511970000103"
    bot.say(phone, "thanks")
    assert bot.wait_answers(phone, 1) == [ANSWER]

    # The owner answers from the phone: the bot steps back in this chat.
    bot.say(phone, "Oi, aqui é o Carlos da loja", from_me=True)
    time.sleep(1.0)
    bot.say(phone, "thanks")
    time.sleep(1.5)
    assert bot.answers(phone) == [ANSWER], "the bot answered during the takeover"
    mine = [(kind, data) for sender, kind, data in bot.events() if sender == phone]
    kinds = [kind for kind, _ in mine]
    assert "pause" in kinds
    owner = [data for kind, data in mine if kind == "bot" and data.get("text", "").startswith("Oi")]
    assert owner and owner[0]["metadata"]["zapi"]["sent_by"] == "owner"
    # The customer's message during the pause is in the conversation.
    after_pause = kinds[kinds.index("pause") :]
    assert "user" in after_pause

    # handoff_minutes (3 s here) without the owner: the bot answers again.
    time.sleep(HANDOFF_MINUTES * 60 + 0.5)
    bot.say(phone, "thanks")
    assert bot.wait_answers(phone, 2) == [ANSWER, ANSWER]
    assert "resume" in [kind for sender, kind, _ in bot.events() if sender == phone]

    # The owner again, then #bot: the bot answers at once.
    bot.say(phone, "já volto", from_me=True)
    bot.say(phone, "#bot", from_me=True)
    time.sleep(0.5)
    bot.say(phone, "thanks")
    assert bot.wait_answers(phone, 3, timeout=HANDOFF_MINUTES * 60 - 0.5) == [ANSWER] * 3


def test_the_bots_own_echoes_never_pause_it(bot: Bot) -> None:
    phone = "5511970000104"
    # "Notify sent by me" on: Z-API (the emulator) echoes every answer the bot sends.
    answer = httpx.put(
        f"{bot.emulator}/instances/{EMULATOR_INSTANCE}/token/{EMULATOR_TOKEN}"
        "/update-notify-sent-by-me",
        json={"notifySentByMe": True},
        headers={"Client-Token": EMULATOR_CLIENT},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    try:
        for count in (1, 2, 3):
            bot.say(phone, "thanks")
            assert bot.wait_answers(phone, count) == [ANSWER] * count
            time.sleep(0.3)  # the echo arrives meanwhile
        assert "pause" not in [kind for sender, kind, _ in bot.events() if sender == phone]
        # The echo without fromApi (as some instances send it) is known by its message id.
        messages = httpx.get(
            f"{bot.emulator}/_emulator/messages", params={"phone": phone}, timeout=5
        ).json()["messages"]
        ours = [m["message_id"] for m in messages if m["from"] == "bot"][-1]
        assert bot.deliver(phone, text=ANSWER, messageId=ours, fromMe=True)["status"] in (
            "accepted",
            "duplicate",
        )
        bot.say(phone, "thanks")
        assert bot.wait_answers(phone, 4) == [ANSWER] * 4
    finally:
        httpx.put(
            f"{bot.emulator}/instances/{EMULATOR_INSTANCE}/token/{EMULATOR_TOKEN}"
            "/update-notify-sent-by-me",
            json={"notifySentByMe": False},
            headers={"Client-Token": EMULATOR_CLIENT},
            timeout=5,
        )

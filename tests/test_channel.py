"""The webhook blueprint, served by a real sanic server, registered the way Rasa registers it."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest
import respx
from rasa.core.channels.channel import UserMessage, register

from tests import sql_ops
from tests.conftest import SECRETS, WEBHOOK_TOKEN, channel_block
from tests.livesanic import new_app, serving
from zapi_channel.channel import ZApiInput, ZApiOutput
from zapi_channel.config import ChannelConfig

Load = Callable[[str], Dict[str, Any]]


class RecordingAgent:
    """Stands in for Rasa's Agent: records every message, optionally slowly."""

    def __init__(self) -> None:
        self.messages: List[UserMessage] = []
        self.gate: Optional[asyncio.Event] = None
        self.delays: Dict[str, float] = {}

    async def handle_message(self, message: UserMessage) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delays.get(message.text or "", 0))
        self.messages.append(message)


class Harness:
    def __init__(self, channel: ZApiInput, agent: RecordingAgent, base: str) -> None:
        self.channel = channel
        self.agent = agent
        self.base = base
        self.http = httpx.AsyncClient(base_url=base, timeout=5)

    async def post(
        self, body: Any, token: Optional[str] = WEBHOOK_TOKEN, **kwargs: Any
    ) -> httpx.Response:
        params = {"token": token} if token is not None else {}
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return await self.http.post(
            "/webhooks/zapi/webhook", params=params, content=content, **kwargs
        )

    async def settle(self) -> None:
        assert await self.channel.delivery.workers.join(5)


def harness_factory(agent: Optional[RecordingAgent] = None, **overrides: Any) -> Callable[[], Any]:
    async def build() -> Tuple[Harness, Any]:
        channel = ZApiInput(ChannelConfig.from_mapping(channel_block(**overrides)))
        nonlocal agent
        agent = agent or RecordingAgent()
        app = new_app("channel")
        app.ctx.agent = agent
        register([channel], app, route="/webhooks/")
        context = serving(app)
        base = await context.__aenter__()
        return Harness(channel, agent, base), context

    return build


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    built, context = await harness_factory()()
    yield built
    await built.http.aclose()
    await context.__aexit__(None, None, None)


@pytest.fixture
async def make_harness() -> AsyncIterator[Callable[..., Any]]:
    made: List[Tuple[Harness, Any]] = []

    async def make(agent: Optional[RecordingAgent] = None, **overrides: Any) -> Harness:
        pair = await harness_factory(agent, **overrides)()
        made.append(pair)
        return pair[0]

    yield make
    for built, context in made:
        await built.http.aclose()
        await context.__aexit__(None, None, None)


def with_id(payload: Dict[str, Any], message_id: str, text: Optional[str] = None) -> Dict[str, Any]:
    payload = dict(payload)
    payload["messageId"] = message_id
    if text is not None:
        payload["text"] = {"message": text}
    return payload


async def test_health_answers_without_secrets(harness: Harness) -> None:
    answer = await harness.http.get("/webhooks/zapi/")
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ok",
        "channel": "zapi",
        "active": True,
        "whatsapp": "unknown",
        "whatsapp_since": None,
    }
    for secret in SECRETS:
        assert secret not in answer.text


async def test_text_becomes_one_user_message(harness: Harness, callback: Load) -> None:
    payload = callback("received_text")
    answer = await harness.post(payload)
    assert answer.status_code == 200
    assert answer.json() == {"status": "accepted"}
    assert answer.headers["content-type"] == "application/json"
    await harness.settle()
    [message] = harness.agent.messages
    assert message.text == "Hi there"
    assert message.sender_id == payload["phone"]
    assert message.message_id == payload["messageId"]
    assert message.input_channel == "zapi"
    assert message.metadata["zapi"]["sender_name"] == "Ana Souza"
    assert isinstance(message.output_channel, ZApiOutput)


@pytest.mark.parametrize(
    ("token", "status"),
    [
        (None, 401),
        ("", 401),
        ("wrong", 403),
        (WEBHOOK_TOKEN.upper(), 403),
        (WEBHOOK_TOKEN + "x", 403),
    ],
)
async def test_a_missing_or_wrong_token_is_refused_and_nothing_processed(
    harness: Harness, callback: Load, token: Optional[str], status: int
) -> None:
    answer = await harness.post(callback("received_text"), token=token)
    assert answer.status_code == status
    await harness.settle()
    assert harness.agent.messages == []


async def test_a_second_token_parameter_cannot_smuggle_the_right_one(
    harness: Harness, callback: Load
) -> None:
    answer = await harness.http.post(
        "/webhooks/zapi/webhook",
        params=[("token", "wrong"), ("token", WEBHOOK_TOKEN)],
        content=json.dumps(callback("received_text")),
    )
    assert answer.status_code == 403


async def test_the_token_in_a_header_is_not_accepted(harness: Harness, callback: Load) -> None:
    answer = await harness.post(
        callback("received_text"), token=None, headers={"token": WEBHOOK_TOKEN}
    )
    assert answer.status_code == 401


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"text"', b"null", b"{" * 50_000])
async def test_bodies_that_are_not_json_objects_get_400(harness: Harness, body: bytes) -> None:
    answer = await harness.post(body)
    assert answer.status_code == 400


async def test_a_body_over_the_cap_gets_413(harness: Harness, callback: Load) -> None:
    payload = callback("received_text")
    payload["padding"] = "x" * (300 * 1024)
    answer = await harness.post(payload)
    assert answer.status_code == 413
    await harness.settle()
    assert harness.agent.messages == []


async def test_the_same_message_delivered_twice_is_processed_once(
    harness: Harness, callback: Load
) -> None:
    payload = callback("received_text")
    first = await harness.post(payload)
    second = await harness.post(payload)
    answers = await asyncio.gather(*(harness.post(payload) for _ in range(5)))
    await harness.settle()
    assert first.json()["status"] == "accepted"
    assert second.json()["status"] == "duplicate"
    assert all(a.json()["status"] == "duplicate" for a in answers)
    assert len(harness.agent.messages) == 1


async def test_the_webhook_answers_before_the_bot_has_finished(
    harness: Harness, callback: Load
) -> None:
    harness.agent.gate = asyncio.Event()
    answer = await asyncio.wait_for(harness.post(callback("received_text")), 2)
    assert answer.status_code == 200
    assert harness.agent.messages == []
    harness.agent.gate.set()
    await harness.settle()
    assert len(harness.agent.messages) == 1


async def test_one_senders_messages_are_processed_in_arrival_order(
    harness: Harness, callback: Load
) -> None:
    base = callback("received_text")
    harness.agent.delays = {"m0": 0.1, "m2": 0.05}
    for i in range(5):
        await harness.post(with_id(base, f"ID{i}", f"m{i}"))
    await harness.settle()
    assert [m.text for m in harness.agent.messages] == ["m0", "m1", "m2", "m3", "m4"]


async def test_different_senders_do_not_wait_for_each_other(
    harness: Harness, callback: Load
) -> None:
    base = callback("received_text")
    harness.agent.delays = {"slow": 0.3}
    await harness.post(with_id(base, "A1", "slow"))
    other = with_id(base, "B1", "fast")
    other.update(phone="5511888888888", chatLid=None, senderLid=None)
    await harness.post(other)
    await harness.settle()
    assert [m.text for m in harness.agent.messages] == ["fast", "slow"]


@pytest.mark.parametrize(
    "fixture",
    [
        "received_own_echo",
        "received_group_text",
        "received_newsletter",
        "received_broadcast",
        "received_status_reply",
        "received_waiting_message",
        "received_notification",
        "received_reaction",
        "received_edited_text",
    ],
)
async def test_what_must_not_be_answered_is_acknowledged_and_dropped(
    harness: Harness, callback: Load, fixture: str
) -> None:
    answer = await harness.post(callback(fixture))
    assert answer.status_code == 200
    assert answer.json()["status"] == "ignored"
    await harness.settle()
    assert harness.agent.messages == []


@pytest.mark.parametrize(
    "fixture", ["delivery", "message_status", "connected", "disconnected", "presence"]
)
async def test_status_callbacks_are_logged_not_answered(
    harness: Harness, callback: Load, fixture: str
) -> None:
    answer = await harness.post(callback(fixture))
    assert answer.json() == {"status": "logged"}
    await harness.settle()
    assert harness.agent.messages == []


async def test_a_delivery_error_is_a_warning(
    harness: Harness, callback: Load, caplog: pytest.LogCaptureFixture
) -> None:
    payload = callback("delivery_error")
    with caplog.at_level(logging.WARNING, logger="zapi_channel"):
        await harness.post(payload)
    assert any(
        payload["error"] in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    )


async def test_groups_are_answered_when_enabled(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness(allow_groups=True)
    await harness.post(callback("received_group_text"))
    await harness.settle()
    [message] = harness.agent.messages
    assert message.sender_id.endswith("-group")


async def test_an_inactive_channel_acknowledges_and_drops(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness(active=False)
    answer = await harness.post(callback("received_text"))
    assert answer.json() == {"status": "inactive"}
    await harness.settle()
    assert harness.agent.messages == []


async def test_mark_read_calls_read_message(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness(mark_read=True)
    payload = callback("received_text")
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        read = router.post(path__regex=r"/read-message$", name="read-message").mock(
            return_value=httpx.Response(204)
        )
        await harness.post(payload)
        await harness.settle()
    assert json.loads(read.calls.last.request.content) == {
        "phone": payload["phone"],
        "messageId": payload["messageId"],
    }
    assert len(harness.agent.messages) == 1


async def test_a_numbered_reply_reaches_the_bot_as_the_buttons_payload(
    harness: Harness, callback: Load
) -> None:
    payload = callback("received_text")
    output = harness.channel.get_output_channel()
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        router.post(path__regex=r"/send-text$", name="send-text").mock(
            return_value=httpx.Response(200, json={"messageId": "M1"})
        )
        await output.send_text_with_buttons(
            payload["phone"],
            "What would you like?",
            [
                {"title": "A picture", "payload": "/ask_image"},
                {"title": "A document", "payload": "/ask_document"},
            ],
        )
    await harness.post(with_id(payload, "R1", "2"))
    await harness.post(with_id(payload, "R2", "2"))
    await harness.settle()
    first, second = harness.agent.messages
    assert first.text == "/ask_document"
    assert first.metadata["zapi"]["choice"] == {"title": "A document", "payload": "/ask_document"}
    # The choices answer one reply only: a later "2" is just text.
    assert second.text == "2"


async def test_a_reply_that_matches_no_choice_goes_through_as_typed(
    harness: Harness, callback: Load
) -> None:
    payload = callback("received_text")
    await harness.channel.delivery.remember_choices(payload["phone"], [])
    await harness.post(with_id(payload, "R1", "something else"))
    await harness.settle()
    assert harness.agent.messages[0].text == "something else"


def test_the_module_path_rasa_uses_imports_cleanly() -> None:
    from rasa.shared.utils.common import class_from_module_path

    cls = class_from_module_path("zapi_channel.ZApiInput")
    assert cls is ZApiInput
    assert cls.name() == "zapi"
    assert ZApiOutput.name() == "zapi"


def test_from_credentials_builds_the_config() -> None:
    channel = ZApiInput.from_credentials(channel_block(buttons_as="list"))
    assert channel.config.buttons_as == "list"
    assert WEBHOOK_TOKEN not in repr(channel)


def inbox_rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        count: int = db.execute(
            "SELECT count(*) FROM messages WHERE message IS NOT NULL"
        ).fetchone()[0]
        return count


async def test_unanswered_messages_survive_a_stop_and_are_answered_on_the_next_start(
    make_harness: Callable[..., Any], callback: Load, tmp_path: Path
) -> None:
    state = str(tmp_path / "state.db")
    first = await make_harness(state_path=state)
    first.agent.gate = asyncio.Event()  # the bot is stuck: nothing finishes
    base = callback("received_text")
    for i in range(3):
        await first.post(with_id(base, f"K{i}", f"m{i}"))
    stopping = asyncio.ensure_future(first.channel.close(grace_seconds=0.3))
    await asyncio.sleep(0.05)
    # While stopping, a new webhook is still acknowledged and kept, not lost.
    late = await first.post(with_id(base, "K3", "m3"))
    assert late.json() == {"status": "accepted"}
    await stopping
    # Once stopped, nothing is acknowledged: Z-API must send it again.
    closed = await first.post(with_id(base, "K4", "m4"))
    assert closed.status_code == 503
    assert first.agent.messages == []
    assert inbox_rows(tmp_path / "state.db") == 4

    second = await make_harness(state_path=state)
    await asyncio.sleep(0.05)  # the server-start listener queues the kept messages
    await second.settle()
    assert [m.text for m in second.agent.messages] == ["m0", "m1", "m2", "m3"]
    # "Answered" is committed after the turn, not awaited by it: a call queued now commits after.
    await second.channel.delivery._thread.call(sql_ops.nothing)
    assert inbox_rows(tmp_path / "state.db") == 0
    # Z-API redelivering one of them now is recognised as a duplicate; the refused one is new.
    again = await second.post(with_id(base, "K1", "m1"))
    assert again.json() == {"status": "duplicate"}
    retried = await second.post(with_id(base, "K4", "m4"))
    assert retried.json() == {"status": "accepted"}


async def test_a_clean_stop_keeps_nothing(
    make_harness: Callable[..., Any], callback: Load, tmp_path: Path
) -> None:
    harness = await make_harness(state_path=str(tmp_path / "state.db"))
    await harness.post(callback("received_text"))
    await harness.channel.close(grace_seconds=5)
    assert len(harness.agent.messages) == 1
    assert inbox_rows(tmp_path / "state.db") == 0


@pytest.fixture
def redis_prefix() -> Iterator[Tuple[str, str]]:
    """Redis' URL and a prefix of this test's own, whose keys go once the test is over.

    Asked for before ``make_harness``, it is torn down after it: once the channels are closed,
    so that none of them writes a key again after the deletion.
    """
    from tests.redis_server import ensure_redis, forget_keys

    url = ensure_redis()
    if url is None:
        pytest.skip("no Redis server: install redis-server (CI does)")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    yield url, prefix
    forget_keys(url, f"{prefix}:*")


async def test_with_redis_two_instances_answer_each_message_once_in_order(
    redis_prefix: Tuple[str, str], make_harness: Callable[..., Any], callback: Load
) -> None:
    url, prefix = redis_prefix
    shared = {"redis_url": url, "redis_prefix": prefix, "inbox_partitions": 2}
    a = await make_harness(**shared)
    b = await make_harness(**shared)
    base = callback("received_text")
    expected = [f"m{i}" for i in range(12)]
    for i, text in enumerate(expected):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        answer = await first.post(with_id(base, f"R{i}", text))
        assert answer.json() == {"status": "accepted"}
        duplicate = await second.post(with_id(base, f"R{i}", text))
        assert duplicate.json() == {"status": "duplicate"}

    deadline = asyncio.get_running_loop().time() + 15
    while len(a.agent.messages) + len(b.agent.messages) < len(expected):
        assert asyncio.get_running_loop().time() < deadline, "not every message was answered"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # nothing more may arrive
    texts = [[m.text for m in a.agent.messages], [m.text for m in b.agent.messages]]
    # One instance owns this customer's partition: it answered everything, in order.
    assert sorted(texts, key=len) == [[], expected]


class TwoAnswerAgent(RecordingAgent):
    """Answers twice per message, and can be held between the two answers."""

    async def handle_message(self, message: UserMessage) -> None:
        await message.output_channel.send_text_message(message.sender_id, "first answer")
        if self.gate is not None:
            await self.gate.wait()
        await message.output_channel.send_text_message(message.sender_id, "second answer")
        self.messages.append(message)


async def test_a_turn_cut_short_by_a_stop_does_not_repeat_its_sent_answers(
    make_harness: Callable[..., Any], callback: Load, tmp_path: Path
) -> None:
    inbox = str(tmp_path / "state.db")
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        send_text = router.post(path__regex=r"/send-text$", name="send-text").mock(
            return_value=httpx.Response(200, json={"messageId": "M"})
        )
        held = TwoAnswerAgent()
        held.gate = asyncio.Event()
        first = await make_harness(held, state_path=inbox)
        await first.post(callback("received_text"))
        while send_text.call_count < 1:
            await asyncio.sleep(0.01)
        await first.channel.close(grace_seconds=0.05)  # cut between the two answers

        second = await make_harness(TwoAnswerAgent(), state_path=inbox)
        await asyncio.sleep(0.05)
        deadline = asyncio.get_running_loop().time() + 5
        while not second.agent.messages:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
    sent = [json.loads(call.request.content)["message"] for call in send_text.calls]
    assert sent == ["first answer", "second answer"]


async def test_refused_requests_are_reported_without_the_token_at_most_once_a_minute(
    harness: Harness, callback: Load, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="zapi_channel"):
        for token in ("wrong-1", "wrong-2", None):
            await harness.post(callback("received_text"), token=token)
    reports = [r.getMessage() for r in caplog.records if "Refused" in r.getMessage()]
    assert len(reports) == 1
    assert "wrong-1" not in caplog.text and WEBHOOK_TOKEN not in caplog.text


# -- one customer, one conversation; the owner takes over ------------------------------------------


class FakeConversations:
    """Records what the channel asks of Rasa's conversation (a paused one records messages)."""

    records_paused_messages = True

    def __init__(self) -> None:
        self.calls: List[Tuple[str, str, Optional[str]]] = []

    async def pause(self, sender_id: str, owner_text: Optional[str], metadata: Any) -> None:
        self.calls.append(("pause", sender_id, owner_text))

    async def resume(self, sender_id: str) -> None:
        self.calls.append(("resume", sender_id, None))

    async def keep_paused(self, sender_id: str) -> None:
        self.calls.append(("keep_paused", sender_id, None))


NUMBER, LID = "5544999999999", "81896604192873@lid"


def customer(callback: Load, message_id: str, text: str, **fields: Any) -> Dict[str, Any]:
    payload = with_id(callback("received_text"), message_id, text)
    payload.update(fields)
    return payload


def owner(callback: Load, message_id: str, text: str) -> Dict[str, Any]:
    payload = with_id(callback("seen_owner_message"), message_id, text)
    return payload


async def test_a_number_then_its_lid_is_one_conversation_answered_where_it_came_from(
    harness: Harness, callback: Load
) -> None:
    await harness.post(customer(callback, "A1", "first", chatLid=LID, senderLid=None))
    await harness.post(customer(callback, "A2", "second", phone=LID, chatLid=LID, senderLid=None))
    await harness.settle()
    first, second = harness.agent.messages
    assert first.sender_id == second.sender_id == NUMBER
    assert second.metadata["zapi"]["lid"] == LID
    assert second.metadata["zapi"]["phone_number"] == NUMBER
    assert second.output_channel._address(second.sender_id) == LID


async def test_an_owner_message_pauses_and_the_customer_is_recorded_not_answered(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness()
    talk = FakeConversations()
    harness.channel.conversations = talk
    answer = await harness.post(owner(callback, "O1", "Aqui é o Carlos, já te atendo"))
    assert answer.json() == {"status": "accepted"}
    await harness.settle()
    await harness.post(customer(callback, "C1", "obrigado"))
    await harness.settle()
    assert talk.calls == [
        ("pause", NUMBER, "Aqui é o Carlos, já te atendo"),
        ("keep_paused", NUMBER, None),
    ]
    # Rasa records it (its paused conversation predicts nothing): the channel hands it over.
    [recorded] = harness.agent.messages
    assert recorded.text == "obrigado"
    assert [c for c, _ in await harness.channel.delivery.handoffs()] == [NUMBER]


async def test_without_a_tracker_the_paused_customer_is_held_back(
    harness: Harness, callback: Load
) -> None:
    await harness.post(owner(callback, "O1", "deixa comigo"))
    await harness.post(customer(callback, "C1", "oi"))
    await harness.settle()
    assert harness.agent.messages == []


async def test_the_resume_command_hands_the_chat_back_at_once(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness()
    talk = FakeConversations()
    harness.channel.conversations = talk
    await harness.post(owner(callback, "O1", "um momento"))
    await harness.post(owner(callback, "O2", " #BOT "))
    await harness.settle()
    await harness.post(customer(callback, "C1", "e agora?"))
    await harness.settle()
    assert [call[0] for call in talk.calls] == ["pause", "resume"]
    assert await harness.channel.delivery.handoff(NUMBER) is None
    assert [m.text for m in harness.agent.messages] == ["e agora?"]


async def test_after_handoff_minutes_without_the_owner_the_bot_answers_again(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness(handoff_minutes=0.005)  # 0.3 s
    talk = FakeConversations()
    harness.channel.conversations = talk
    await harness.post(owner(callback, "O1", "oi"))
    await harness.settle()
    await asyncio.sleep(0.4)
    await harness.post(customer(callback, "C1", "alguém?"))
    await harness.settle()
    assert [call[0] for call in talk.calls] == ["pause", "resume"]
    assert [m.text for m in harness.agent.messages] == ["alguém?"]


async def test_our_own_echo_never_pauses_even_without_from_api(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness()
    talk = FakeConversations()
    harness.channel.conversations = talk
    await harness.channel.delivery.remember_outgoing("3EB0OURS", {"endpoint": "send-text"})
    echo = owner(callback, "3EB0OURS", "Hi! How can I help?")
    echo.pop("fromApi", None)
    await harness.post(echo)
    api = await harness.post(with_id(callback("seen_api_echo"), "3EB0API"))
    assert api.json()["status"] == "ignored"
    await harness.post(customer(callback, "C1", "oi"))
    await harness.settle()
    assert talk.calls == []
    assert [m.text for m in harness.agent.messages] == ["oi"]


async def test_takeover_off_ignores_the_owner(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness(handoff_minutes=0)
    answer = await harness.post(owner(callback, "O1", "oi"))
    assert answer.json()["status"] == "ignored"
    await harness.post(customer(callback, "C1", "oi"))
    await harness.settle()
    assert [m.text for m in harness.agent.messages] == ["oi"]


async def test_content_the_channel_does_not_know_still_reaches_the_bot(
    harness: Harness, callback: Load
) -> None:
    await harness.post(callback("seen_ptv"))
    await harness.settle()
    [message] = harness.agent.messages
    assert message.text == "/zapi_unsupported"
    assert message.metadata["zapi"]["kind"] == "ptv"


EXAMPLES = json.loads((Path(__file__).parent / "fixtures" / "received_examples.json").read_text())


async def test_every_documented_received_example_gets_a_2xx_and_no_non_message_is_answered(
    make_harness: Callable[..., Any],
) -> None:
    harness = await make_harness()
    # As in rasa run: a paused conversation still records the customer's messages.
    harness.channel.conversations = FakeConversations()
    for example in EXAMPLES:
        answer = await harness.post(example["body"])
        assert answer.status_code == 200, (example["title"], answer.text)
        status = answer.json()["status"]
        wanted = {"answered": "accepted", "owner": "accepted", "ignored": "ignored"}
        assert status == wanted[example["expected"]], (example["title"], answer.text)
    await harness.settle()
    answered = [e for e in EXAMPLES if e["expected"] == "answered"]
    got = {m.message_id: m for m in harness.agent.messages}
    assert sorted(got) == sorted(e["body"]["messageId"] for e in answered)
    for example in answered:
        message = got[example["body"]["messageId"]]
        if example["kind"] == "unsupported":
            # The bot hears of it, and metadata names the Z-API kind it was.
            assert message.text == "/zapi_unsupported", example["title"]
            assert message.metadata["zapi"]["kind"] in example["body"], example["title"]
        else:
            assert message.metadata["zapi"]["kind"] == example["kind"], example["title"]


def test_a_damaged_state_file_stops_the_channel_with_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from zapi_channel.errors import StateCorrupt

    broken = tmp_path / "zapi-channel.db"
    broken.write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.ERROR), pytest.raises(StateCorrupt):
        ZApiInput.from_credentials(channel_block(state_path=str(broken)))
    assert "move the file aside" in caplog.text and str(broken) in caplog.text


# -- what Z-API reports after it queued one of our sends ------------------------------------------


async def sent_by_us(harness: Harness, endpoint: str, body: Dict[str, Any]) -> str:
    message_id = f"3EB0{uuid.uuid4().hex[:16].upper()}"
    await harness.channel.delivery.remember_outgoing(
        message_id, {"endpoint": endpoint, "phone": body["phone"], "body": body}
    )
    return message_id


def delivery_error(callback: Load, message_id: str, error: str) -> Dict[str, Any]:
    payload = callback("delivery_error")
    payload.update(messageId=message_id, error=error)
    return payload


async def test_a_delivery_error_on_our_send_is_journaled_once(
    harness: Harness, callback: Load, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"phone": NUMBER, "message": "Your order is ready"}
    ours = await sent_by_us(harness, "send-text", body)
    report = delivery_error(callback, ours, "Phone number does not exist")
    with caplog.at_level(logging.ERROR, logger="zapi_channel"):
        answer = await harness.post(report)
        again = await harness.post(report)  # Z-API redelivers the report
    assert answer.json() == again.json() == {"status": "logged"}
    [entry] = await harness.channel.delivery.entries()
    assert (entry.endpoint, entry.body, entry.outcome) == ("send-text", body, "failed")
    assert "Phone number does not exist" in entry.error
    assert "zapi-channel failed retry" in caplog.text


async def test_a_delivery_error_that_overtakes_the_answer_to_its_send_is_still_ours(
    harness: Harness, callback: Load
) -> None:
    # Z-API posted the report before its answer to the send reached us: the send is still on
    # the wire, and remembered only once that answer arrives.
    body = {"phone": NUMBER, "message": "Your order is ready"}
    message_id = "3EB0OVERTAKEN0000001"

    async def answer_arrives_late() -> bool:
        await asyncio.sleep(0.3)
        await harness.channel.delivery.remember_outgoing(
            message_id, {"endpoint": "send-text", "phone": NUMBER, "body": body}
        )
        return True

    on_the_wire = asyncio.ensure_future(answer_arrives_late())
    harness.channel._sends.add(on_the_wire)
    try:
        answer = await harness.post(
            delivery_error(callback, message_id, "Phone number does not exist")
        )
    finally:
        harness.channel._sends.discard(on_the_wire)
    assert answer.json() == {"status": "logged"}
    [entry] = await harness.channel.delivery.entries()
    assert (entry.endpoint, entry.body) == ("send-text", body)


async def test_a_send_that_finishes_during_the_lookup_of_its_report_is_still_ours(
    harness: Harness, callback: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"phone": NUMBER, "message": "Your order is ready"}
    message_id = "3EB0OVERTAKEN0000002"
    delivery = harness.channel.delivery

    async def answer_arrives() -> bool:
        await asyncio.sleep(0.05)
        await delivery.remember_outgoing(
            message_id, {"endpoint": "send-text", "phone": NUMBER, "body": body}
        )
        return True

    on_the_wire = asyncio.ensure_future(answer_arrives())
    harness.channel._sends.add(on_the_wire)
    on_the_wire.add_done_callback(harness.channel._sends.discard)
    lookup = delivery.outgoing
    lookups = 0

    async def slow_lookup(wanted: str) -> Optional[Dict[str, Any]]:
        nonlocal lookups
        lookups += 1
        found = await lookup(wanted)
        if lookups == 1:
            await on_the_wire  # the send's answer arrives while this lookup runs
        return found

    monkeypatch.setattr(delivery, "outgoing", slow_lookup)
    await harness.post(delivery_error(callback, message_id, "Phone number does not exist"))
    [entry] = await delivery.entries()
    assert entry.body == body


async def test_a_delivery_error_for_a_message_we_do_not_know_is_only_logged(
    harness: Harness, callback: Load, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="zapi_channel"):
        answer = await harness.post(
            delivery_error(callback, "3EB0NOTOURS", "Phone number does not exist")
        )
    assert answer.json() == {"status": "logged"}
    assert await harness.channel.delivery.entries() == []
    assert "3EB0NOTOURS" in caplog.text


async def test_buttons_refused_for_the_terms_are_followed_by_their_numbered_text(
    harness: Harness, callback: Load, caplog: pytest.LogCaptureFixture
) -> None:
    menu = "What would you like?\n\n*1.* A picture\n*2.* A document"
    body = {
        "phone": NUMBER,
        "message": menu,
        "buttonList": {"buttons": [{"id": "1", "label": "A picture"}]},
    }
    ours = await sent_by_us(harness, "send-button-list", body)
    terms = "You must accept buttons message terms in panel to send this message."
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        send_text = router.post(path__regex=r"/send-text$", name="send-text").mock(
            return_value=httpx.Response(200, json={"messageId": "M2"})
        )
        with caplog.at_level(logging.WARNING, logger="zapi_channel"):
            await harness.post(delivery_error(callback, ours, terms))
            for _ in range(100):
                if send_text.called:
                    break
                await asyncio.sleep(0.02)
    assert json.loads(send_text.calls.last.request.content) == {"phone": NUMBER, "message": menu}
    assert "accept them on Z-API's panel" in caplog.text
    assert await harness.channel.delivery.entries() == []


async def test_connection_callbacks_flip_the_health_json_and_a_drop_is_one_error(
    harness: Harness, callback: Load, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="zapi_channel"):
        for _ in range(3):  # Z-API may report it more than once
            assert (await harness.post(callback("disconnected"))).json() == {"status": "logged"}
    health = (await harness.http.get("/webhooks/zapi/")).json()
    assert health["whatsapp"] == "disconnected" and health["whatsapp_since"]
    drops = [r for r in caplog.records if "lost its WhatsApp session" in r.getMessage()]
    assert [r.levelno for r in drops] == [logging.ERROR, logging.DEBUG, logging.DEBUG]
    assert "zapi-channel restart" in drops[0].getMessage()
    await harness.post(callback("connected"))
    assert (await harness.http.get("/webhooks/zapi/")).json()["whatsapp"] == "connected"


async def test_the_client_is_built_in_a_worker_thread_when_the_server_starts(
    make_harness: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Either transport loads certifi's CA bundle when it is built (about 30 ms): on the event
    # loop, at the first send, that would hold up every webhook then arriving.
    built_in: List[int] = []
    build = ZApiInput._new_client

    def recording(channel: ZApiInput) -> Any:
        built_in.append(threading.get_ident())
        return build(channel)

    monkeypatch.setattr(ZApiInput, "_new_client", recording)
    harness = await make_harness(http_transport="aiohttp")
    assert harness.channel._client is not None
    assert len(built_in) == 1 and built_in[0] != threading.get_ident()
    assert harness.channel.client is harness.channel._client  # the send uses that one


# -- Z-API's queue for a disconnected phone -------------------------------------------------------


async def started_with_queue_setting(
    make_harness: Callable[..., Any], answer: httpx.Response, **overrides: Any
) -> Tuple[Harness, respx.Route]:
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        route = router.put(path__regex=r"/update-queue-settings$", name="update-queue-settings")
        route.mock(return_value=answer)
        harness = await make_harness(**overrides)
        # The setting is applied in the background once the server has started.
        for _ in range(100):
            if route.called or not harness.channel._background:
                break
            await asyncio.sleep(0.01)
        await asyncio.gather(*harness.channel._background)
    return harness, route


@pytest.mark.parametrize(("setting", "disable"), [(False, True), (True, False)])
async def test_queue_when_disconnected_is_applied_at_start(
    make_harness: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    setting: bool,
    disable: bool,
) -> None:
    ok = httpx.Response(200, json={"value": True})
    with caplog.at_level(logging.INFO, logger="zapi_channel"):
        _, route = await started_with_queue_setting(
            make_harness, ok, queue_when_disconnected=setting
        )
    assert json.loads(route.calls.last.request.content) == {
        "disableEnqueueWhenDisconnected": disable
    }
    assert f"queue_when_disconnected: {str(setting).lower()}" in caplog.text


async def test_without_queue_when_disconnected_the_instance_setting_is_left_alone(
    make_harness: Callable[..., Any],
) -> None:
    ok = httpx.Response(200, json={"value": True})
    _, route = await started_with_queue_setting(make_harness, ok)
    assert not route.called


async def test_a_queue_setting_z_api_refuses_is_a_warning_and_the_bot_still_answers(
    make_harness: Callable[..., Any], callback: Load, caplog: pytest.LogCaptureFixture
) -> None:
    refused = httpx.Response(500, json={"error": "Internal error"})
    with caplog.at_level(logging.WARNING, logger="zapi_channel"):
        harness, route = await started_with_queue_setting(
            make_harness, refused, queue_when_disconnected=False
        )
    assert route.called
    [warning] = [r for r in caplog.records if "Could not set Z-API's queue" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "Internal error" in warning.getMessage()
    for secret in SECRETS:
        assert secret not in caplog.text
    assert (await harness.post(callback("received_text"))).json() == {"status": "accepted"}


# -- the metrics endpoint ------------------------------------------------------------------------

METRICS_TOKEN = "metrics-token-for-tests-3f9a1c"


def scraped(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def webhooks(found: Dict[Any, float], outcome: str, reason: str = "") -> float:
    return found.get(("zapi_webhooks_total", (("outcome", outcome), ("reason", reason))), 0.0)


async def test_there_is_no_metrics_endpoint_without_a_metrics_token(harness: Harness) -> None:
    answer = await harness.http.get("/webhooks/zapi/metrics")
    assert answer.status_code == 404


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer wrong-token-but-long-enough", 403), (METRICS_TOKEN, 403)],
)
async def test_metrics_need_the_bearer_token(
    make_harness: Callable[..., Any], header: Optional[str], status: int
) -> None:
    harness = await make_harness(metrics_token=METRICS_TOKEN)
    headers = {"Authorization": header} if header is not None else {}
    answer = await harness.http.get("/webhooks/zapi/metrics", headers=headers)
    assert answer.status_code == status
    assert "zapi_webhooks" not in answer.text
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


async def test_metrics_count_what_the_webhook_did_with_bounded_labels(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness(metrics_token=METRICS_TOKEN)
    text = callback("received_text")
    await harness.post(with_id(text, "M1"))
    await harness.post(with_id(text, "M2"))
    await harness.post(with_id(text, "M1"))  # a redelivery
    await harness.post(callback("received_group_text"))
    await harness.post(b"not json")
    await harness.post(with_id(text, "M3"), token="wrong")
    await harness.settle()
    answer = await harness.http.get(
        "/webhooks/zapi/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    found = scraped(answer.text)
    assert webhooks(found, "accepted") == 2
    assert webhooks(found, "duplicate") == 1
    assert webhooks(found, "ignored", "group") == 1
    assert webhooks(found, "invalid") == 1
    assert webhooks(found, "refused") == 1
    assert found[("zapi_webhook_ack_seconds_count", ())] == 6
    assert found[("zapi_turn_seconds_count", ())] == 2
    assert found[("zapi_inbox_backlog", ())] == 0
    assert found[("zapi_failed_sends", ())] == 0
    # No label carries a phone number, a message id or a secret.
    for secret in (*SECRETS, METRICS_TOKEN, text["phone"], "M1", "M2"):
        assert secret not in answer.text


async def test_metrics_show_the_journal_and_the_connection(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness(metrics_token=METRICS_TOKEN)
    await harness.channel.delivery.record(
        "send-text", {"phone": NUMBER, "message": "x"}, "boom", "failed"
    )
    await harness.post(callback("disconnected"))
    answer = await harness.http.get(
        "/webhooks/zapi/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    found = scraped(answer.text)
    assert found[("zapi_failed_sends", ())] == 1
    assert found[("zapi_whatsapp", (("zapi_whatsapp", "disconnected"),))] == 1
    assert webhooks(found, "event") == 1


# -- compressed bodies ---------------------------------------------------------------------------


async def test_a_gzip_webhook_reaches_the_bot_and_a_zip_bomb_is_413(
    harness: Harness, callback: Load
) -> None:
    import gzip

    payload = callback("received_text")
    body = gzip.compress(json.dumps(payload).encode())
    answer = await harness.post(body, headers={"Content-Encoding": "gzip"})
    assert (answer.status_code, answer.json()) == (200, {"status": "accepted"})
    bomb = gzip.compress(b" " * (32 * 1024 * 1024))
    refused = await harness.post(bomb, headers={"Content-Encoding": "gzip"})
    assert refused.status_code == 413
    other = await harness.post(body, headers={"Content-Encoding": "br"})
    assert other.status_code == 415
    await harness.settle()
    [message] = harness.agent.messages
    assert message.text == "Hi there"


@pytest.mark.parametrize(
    ("mode", "quotes_direct", "quotes_group"),
    [("never", False, False), ("groups", False, True), ("always", True, True)],
)
async def test_quote_replies_quotes_the_customers_message_where_asked(
    make_harness: Callable[..., Any],
    callback: Load,
    zapi: respx.MockRouter,
    mode: str,
    quotes_direct: bool,
    quotes_group: bool,
) -> None:
    zapi.route(host="127.0.0.1").pass_through()
    harness = await make_harness(allow_groups=True, quote_replies=mode)
    direct, group = callback("received_text"), callback("received_group_text")
    for payload in (direct, group):
        await harness.post(payload)
    await harness.settle()
    for user_message in harness.agent.messages:
        await user_message.output_channel.send_response(user_message.sender_id, {"text": "ok"})
    quoted = [json.loads(c.request.content).get("messageId") for c in zapi["send-text"].calls]
    assert quoted == [
        direct["messageId"] if quotes_direct else None,
        group["messageId"] if quotes_group else None,
    ]


async def test_a_burst_within_the_merge_window_is_one_rasa_message(
    make_harness: Callable[..., Any], callback: Load
) -> None:
    harness = await make_harness(merge_window_ms=300, mark_read=True)
    payload = callback("received_text")
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        read = router.post(path__regex=r"/read-message$", name="read-message").mock(
            return_value=httpx.Response(204)
        )
        for n, text in enumerate(["oi", "tudo bem?", "queria fazer um pedido"]):
            answer = await harness.post(with_id(payload, f"3EB0BURST{n}", text))
            assert answer.status_code == 200
        await harness.settle()
    [message] = harness.agent.messages
    assert message.text == "oi\ntudo bem?\nqueria fazer um pedido"
    assert message.message_id == "3EB0BURST0"
    assert message.metadata["zapi"]["message_ids"] == ["3EB0BURST0", "3EB0BURST1", "3EB0BURST2"]
    # Reading the last message of the burst reads the chat up to it.
    assert json.loads(read.calls.last.request.content)["messageId"] == "3EB0BURST2"

"""One contract, both deliveries: the embedded SQLite file and Redis behave the same to the channel.

Each test opens deliveries through ``make``; two deliveries made with the same ``store`` name share
their storage (the same SQLite file, the same Redis prefix), which is how a restart is played.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, List, Optional

import pytest

from tests import sql_ops
from tests.livesanic import free_port
from zapi_channel.delivery import FAILED, Delivery
from zapi_channel.delivery.embedded import EmbeddedDelivery
from zapi_channel.delivery.shared import RedisDelivery, connect
from zapi_channel.errors import StateUnavailable
from zapi_channel.inbound import InboundMessage
from zapi_channel.outbound import Choice

MENU = [Choice("A picture", "/ask_image"), Choice("A document", "/ask_document")]
Make = Callable[..., Delivery]


def message(
    n: int, phone: str = "5511999990000", text: str = "", lid: Optional[str] = None
) -> InboundMessage:
    return InboundMessage(
        instance_id="INSTANCE",
        message_id=f"MSG{n}",
        phone=phone,
        text=text or f"m{n}",
        kind="text",
        metadata={"sender_name": "Ana", "n": n},
        raw={},
        lid=lid or (phone if phone.endswith("@lid") else None),
        number=phone if phone.isdigit() else None,
    )


@pytest.fixture(params=["embedded", "redis"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    made: List[Delivery] = []
    prefix = f"test-contract-{uuid.uuid4().hex[:8]}"
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def build(store: str = "one", broken: bool = False, **options: Any) -> Delivery:
        """``broken``: its storage refuses every write (a read-only file, a Redis that is down)."""
        delivery: Delivery
        if request.param == "embedded":
            embedded = EmbeddedDelivery(tmp_path / f"{store}.db", **options)
            if broken:
                embedded._thread.run(partial(sql_ops.execute, sql="PRAGMA query_only = ON"))
            delivery = embedded
        else:
            options.setdefault("partitions", 2)
            options.setdefault("lease_seconds", 1.0)
            options.setdefault("block_seconds", 0.1)
            where = f"redis://127.0.0.1:{free_port()}/0" if broken else url
            delivery = RedisDelivery(connect(where), prefix=f"{prefix}-{store}", **options)
        made.append(delivery)
        return delivery

    yield build
    for delivery in made:
        # Some tests closed theirs already.
        with contextlib.suppress(StateUnavailable, RuntimeError):
            await delivery.stop(0)
            await delivery.aclose()
    if url:
        client = connect(url)
        keys = [key async for key in client.scan_iter(f"{prefix}-*")]
        if keys:
            await client.delete(*keys)
        await client.close()


class Recorder:
    def __init__(self) -> None:
        self.texts: List[str] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, message: InboundMessage) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.texts.append(message.text)


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_message_is_accepted_once(make: Make) -> None:
    delivery = make()
    assert await delivery.accept(message(1)) is True
    assert await delivery.accept(message(1)) is False
    assert await delivery.accept(message(2)) is True


async def test_turns_run_in_order_per_customer_with_what_came_before_start_first(
    make: Make,
) -> None:
    delivery = make()
    for n in range(3):
        await delivery.accept(message(n))
    seen = Recorder()
    await delivery.start(seen)
    for n in range(3, 6):
        await delivery.accept(message(n))
    await until(lambda: len(seen.texts) == 6)
    assert seen.texts == [f"m{n}" for n in range(6)]


async def test_the_parsed_message_comes_back_whole(make: Make) -> None:
    delivery = make()
    got: List[InboundMessage] = []

    async def keep(m: InboundMessage) -> None:
        got.append(m)

    await delivery.start(keep)
    sent = message(7, text="olá 😀")
    await delivery.accept(sent)
    await until(lambda: bool(got))
    [back] = got
    assert (back.message_id, back.phone, back.text, back.kind) == (
        "MSG7",
        sent.phone,
        "olá 😀",
        "text",
    )
    assert back.conversation == sent.phone
    assert {k: back.metadata[k] for k in ("sender_name", "n")} == {"sender_name": "Ana", "n": 7}


async def test_an_unfinished_turn_runs_again_after_a_restart_and_knows_what_it_sent(
    make: Make,
) -> None:
    first = make("store")
    stuck = Recorder()
    stuck.gate = asyncio.Event()
    await first.start(stuck)
    await first.accept(message(1))
    await first.mark_sent(message(1).dedup_key, 1)
    await until(lambda: first.pending == 1)  # the turn is running
    unfinished = await first.stop(0.05)
    assert [m.message_id for m in unfinished] == ["MSG1"]
    # While stopped, a new message is still kept: it runs on the next start.
    assert await first.accept(message(2)) is True
    await first.aclose()

    second = make("store")
    seen: List[Any] = []

    async def rerun(m: InboundMessage) -> None:
        # What the output channel asks before each answer of the re-run turn.
        sent = [await second.already_sent(m.dedup_key, n) for n in (1, 2)]
        seen.append((m.text, sent))

    await second.start(rerun)
    await until(lambda: len(seen) == 2)
    assert seen == [("m1", [True, False]), ("m2", [False, False])]
    # Deduplication outlives the restart: a redelivery is not answered again.
    assert await second.accept(message(1)) is False


async def test_a_finished_turn_is_not_run_again(make: Make) -> None:
    first = make("store")
    seen = Recorder()
    await first.start(seen)
    await first.accept(message(1))
    await until(lambda: seen.texts == ["m1"])
    assert await first.stop(5) == []
    await first.aclose()
    second = make("store")
    again = Recorder()
    await second.start(again)
    await asyncio.sleep(0.3)
    assert again.texts == []


async def test_a_turn_that_raises_is_done_and_the_next_one_runs(make: Make) -> None:
    delivery = make()
    seen: List[str] = []

    async def flaky(m: InboundMessage) -> None:
        seen.append(m.text)
        if m.text == "m1":
            raise RuntimeError("the bot broke")

    await delivery.start(flaky)
    await delivery.accept(message(1))
    await delivery.accept(message(2))
    await until(lambda: seen == ["m1", "m2"])
    await until(lambda: delivery.pending == 0)


async def test_choices_answer_one_reply(make: Make) -> None:
    delivery = make()
    await delivery.remember_choices("5511", MENU)
    assert await delivery.take_choices("5511") == MENU
    assert await delivery.take_choices("5511") is None
    assert await delivery.take_choices("5599") is None


async def test_the_journal_keeps_failed_sends_in_order_and_removes_by_id(make: Make) -> None:
    delivery = make()
    first = await delivery.record(
        "send-text", {"phone": "5511", "message": "a"}, "HTTP 503", FAILED
    )
    await delivery.record("send-text", {"phone": "5511", "message": "b \ud83d"}, "boom", FAILED)
    entries = await delivery.entries()
    assert [e.body["message"] for e in entries] == ["a", "b ?"]
    assert entries[0] == first
    assert await delivery.remove([first.id, "nope"]) == 1
    assert [e.body["message"] for e in await delivery.entries()] == ["b ?"]


async def test_a_delivery_that_cannot_keep_a_message_says_so_and_keeps_nothing(
    make: Make,
) -> None:
    delivery = make(broken=True)
    with pytest.raises(StateUnavailable):
        await delivery.accept(message(1))
    assert delivery.pending == 0


async def test_a_closed_delivery_keeps_nothing(make: Make) -> None:
    delivery = make()
    await delivery.stop(0)
    await delivery.aclose()
    if isinstance(delivery, EmbeddedDelivery):
        with pytest.raises(StateUnavailable):
            await delivery.accept(message(1))


def test_reprs_hold_no_secret(make: Make) -> None:
    delivery = make()
    assert "redis://" not in repr(delivery) and "@" not in repr(delivery)


async def test_many_customers_at_once_each_in_order(make: Make) -> None:
    delivery = make(max_concurrency=4)
    seen: Dict[str, List[int]] = {}

    async def record(m: InboundMessage) -> None:
        await asyncio.sleep(0)
        seen.setdefault(m.phone, []).append(m.metadata["n"])

    await delivery.start(record)
    # One after the other: two webhooks of one customer in flight at once have no order to keep.
    for n in range(200):
        assert await delivery.accept(message(n, phone=f"55{n % 10}"))
    await until(lambda: sum(map(len, seen.values())) == 200)
    for phone, numbers in seen.items():
        assert numbers == sorted(numbers), phone


NUMBER, LID = "5544999990001", "81896604190001@lid"


async def conversations_of(delivery: Delivery, *messages: InboundMessage) -> List[InboundMessage]:
    got: List[InboundMessage] = []

    async def keep(m: InboundMessage) -> None:
        got.append(m)

    await delivery.start(keep)
    for one in messages:
        assert await delivery.accept(one)
    await until(lambda: len(got) == len(messages))
    return got


async def test_a_customer_seen_as_a_number_then_as_a_lid_is_one_conversation(make: Make) -> None:
    first, second = await conversations_of(make(), message(1, NUMBER, lid=LID), message(2, LID))
    assert first.conversation == second.conversation == NUMBER
    # Answers go where the message came from; both forms are known from then on.
    assert second.phone == LID
    assert (second.metadata["lid"], second.metadata["phone_number"]) == (LID, NUMBER)


async def test_a_customer_seen_as_a_lid_then_as_a_number_is_one_conversation(make: Make) -> None:
    first, second, third = await conversations_of(
        make(), message(1, LID), message(2, NUMBER, lid=LID), message(3, NUMBER)
    )
    assert first.conversation == second.conversation == third.conversation == LID
    assert third.metadata["lid"] == LID


async def test_conversations_begun_before_their_link_keep_the_older_one(make: Make) -> None:
    delivery = make()
    got = await conversations_of(
        delivery, message(1, NUMBER), message(2, LID), message(3, NUMBER, lid=LID), message(4, LID)
    )
    assert [m.conversation for m in got] == [NUMBER, LID, NUMBER, NUMBER]
    assert await delivery.find_conversation(LID) == NUMBER


async def test_groups_are_their_own_conversation(make: Make) -> None:
    group = message(1, "120363019502650977-group")
    group.metadata["is_group"] = True
    [got] = await conversations_of(make(), group)
    assert got.conversation == "120363019502650977-group"


async def test_a_handoff_lasts_until_its_time_or_a_hand_back(make: Make) -> None:
    delivery = make()
    assert await delivery.handoff(NUMBER) is None
    later = time.time() + 600
    await delivery.pause(NUMBER, later)
    assert await delivery.handoff(NUMBER) == pytest.approx(later)
    assert [c for c, _ in await delivery.handoffs()] == [NUMBER]
    assert await delivery.hand_back(NUMBER) is True
    assert await delivery.handoff(NUMBER) == 0
    assert await delivery.handoffs() == []
    assert await delivery.hand_back(NUMBER) is False
    await delivery.end_handoff(NUMBER)
    assert await delivery.handoff(NUMBER) is None


async def test_choices_wait_out_a_handoff_and_are_taken_once(make: Make) -> None:
    # A turn asks handoff() and then take_choices(): the Redis delivery answers both with one
    # command, which must not take the choices of a conversation a human holds.
    delivery = make()
    await delivery.remember_choices(NUMBER, MENU)
    await delivery.pause(NUMBER, time.time() + 600)
    # Held, and the paused message not recorded: its turn ends here, asking nothing more.
    assert await delivery.handoff(NUMBER) is not None
    await delivery.end_handoff(NUMBER)
    # The next turn finds the menu it answers.
    assert await delivery.handoff(NUMBER) is None
    assert await delivery.take_choices(NUMBER) == MENU
    assert await delivery.take_choices(NUMBER) is None
    # Held, and the paused message recorded: that turn takes them, once.
    await delivery.remember_choices(NUMBER, MENU[:1])
    await delivery.pause(NUMBER, time.time() + 600)
    assert await delivery.handoff(NUMBER) is not None
    assert await delivery.take_choices(NUMBER) == MENU[:1]
    assert await delivery.take_choices(NUMBER) is None


async def test_our_sends_are_remembered_by_message_id(make: Make) -> None:
    delivery = make()
    record = {"endpoint": "send-text", "phone": NUMBER, "body": {"message": "oi"}}
    await delivery.remember_outgoing("3EB0OURS", record)
    await delivery.accept(message(1))  # anything queued before it is committed by now
    assert await delivery.outgoing("3EB0OURS") == record
    assert await delivery.outgoing("3EB0THEIRS") is None


# -- bursts (merge_window_ms) -------------------------------------------------------------------

WINDOW = 0.3


class Turns(Recorder):
    """Every turn's message, and when it started."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: List[InboundMessage] = []
        self.started: List[float] = []

    async def __call__(self, message: InboundMessage) -> None:
        self.started.append(time.monotonic())
        self.messages.append(message)
        await super().__call__(message)


async def test_texts_within_the_window_are_one_turn_and_each_is_done(make: Make) -> None:
    delivery = make("store", merge_window=WINDOW)
    turns = Turns()
    await delivery.start(turns)
    for n, text in enumerate(["oi", "tudo bem?", "queria fazer um pedido"]):
        await delivery.accept(message(n, text=text))
        await asyncio.sleep(WINDOW / 3)
    await until(lambda: bool(turns.texts))
    await asyncio.sleep(WINDOW * 2)
    assert turns.texts == ["oi\ntudo bem?\nqueria fazer um pedido"]
    [merged] = turns.messages
    assert merged.message_id == "MSG0"
    assert merged.metadata["message_ids"] == ["MSG0", "MSG1", "MSG2"]
    await until(lambda: delivery.pending == 0)
    # Deduplication stays per message: a redelivery of any part is not answered again...
    assert await delivery.accept(message(1, text="tudo bem?")) is False
    # ...and every part was finished, so a restart runs nothing again.
    assert await delivery.stop(5) == []
    await delivery.aclose()
    again = make("store", merge_window=WINDOW)
    rerun = Recorder()
    await again.start(rerun)
    await asyncio.sleep(WINDOW * 2)
    assert rerun.texts == []


async def test_a_text_after_a_quiet_window_is_its_own_turn(make: Make) -> None:
    delivery = make(merge_window=WINDOW)
    turns = Turns()
    await delivery.start(turns)
    await delivery.accept(message(1, text="oi"))
    await until(lambda: len(turns.texts) == 1)
    await delivery.accept(message(2, text="alguém aí?"))
    await until(lambda: len(turns.texts) == 2)
    assert turns.texts == ["oi", "alguém aí?"]


async def test_media_is_never_merged_into_text(make: Make) -> None:
    delivery = make(merge_window=WINDOW)
    turns = Turns()
    await delivery.start(turns)
    image = replace(message(2, text="/zapi_image"), kind="image")
    for item in (message(1, text="olha"), image, message(3, text="gostou?")):
        await delivery.accept(item)
    await until(lambda: len(turns.texts) == 3)
    assert turns.texts == ["olha", "/zapi_image", "gostou?"]


async def test_a_customer_typing_without_pause_is_answered_within_three_windows(
    make: Make,
) -> None:
    delivery = make(merge_window=WINDOW)
    turns = Turns()
    await delivery.start(turns)
    began = time.monotonic()
    n = 0
    # A text every third of a window, for five windows: the quiet never comes.
    while time.monotonic() - began < 5 * WINDOW:
        await delivery.accept(message(n, text=f"t{n}"))
        n += 1
        await asyncio.sleep(WINDOW / 3)
    await until(lambda: sum(len(m.metadata.get("message_ids", [1])) for m in turns.messages) == n)
    # The first turn started at most three windows (and some scheduling slack) after the first
    # text, and every text reached exactly one turn, in order.
    assert turns.started[0] - began < 3 * WINDOW + 0.25
    assert "\n".join(turns.texts).split("\n") == [f"t{i}" for i in range(n)]
    assert len(turns.texts) >= 2


async def test_customers_bursts_do_not_mix(make: Make) -> None:
    delivery = make(merge_window=WINDOW)
    turns = Turns()
    await delivery.start(turns)
    for n in range(4):
        phone = "5511999990000" if n % 2 == 0 else "5511999990001"
        await delivery.accept(message(n, phone=phone, text=f"{phone[-1]}:{n}"))
    await until(lambda: len(turns.texts) == 2)
    assert sorted(turns.texts) == ["0:0\n0:2", "1:1\n1:3"]

"""The shared delivery against Redis: commands packed in C as redis-py packs them, and what its
scripts keep in the streams."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, AsyncIterator, List, Optional, Tuple

import pytest
import redis.asyncio as redis_asyncio
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from zapi_channel.delivery import shared
from zapi_channel.delivery.base import encode_message, identified
from zapi_channel.delivery.shared import RedisDelivery, _PackedByHiredis, connect, packing_in_c
from zapi_channel.inbound import InboundMessage

PACKED = packing_in_c(Connection)

NAMES = st.sampled_from(["SET", "EVALSHA", "XADD", "CONFIG GET", "script load", b"XINFO GROUPS"])
# Everything redis-py's encoder takes: text (any that UTF-8 can write), bytes, ints, floats.
ARGS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",))),
    st.binary(),
    st.integers(),
    st.floats(allow_nan=False),
)


def packed(connection_class: type, *args: Any) -> bytes:
    return b"".join(connection_class(decode_responses=True).pack_command(*args))


@given(name=NAMES, args=st.lists(ARGS, max_size=6))
def test_a_command_is_packed_as_redis_py_packs_it(name: Any, args: Tuple[Any, ...]) -> None:
    assert packed(PACKED, name, *args) == packed(Connection, name, *args)


def test_a_large_payload_is_the_same_bytes_too() -> None:
    payload = "ã" * 10_000  # above redis-py's chunking cutoff: it sends it in pieces
    assert packed(PACKED, "XADD", "inbox:0", "*", "payload", payload) == packed(
        Connection, "XADD", "inbox:0", "*", "payload", payload
    )


@pytest.mark.parametrize("refused", [None, True, ["a list"], {"a": "dict"}])
def test_what_redis_py_refuses_is_refused_alike(refused: Any) -> None:
    for connection_class in (Connection, PACKED):
        with pytest.raises(DataError):
            connection_class(decode_responses=True).pack_command("SET", "key", refused)


@pytest.mark.parametrize(
    ("url", "chosen"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///run/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_every_kind_of_redis_url_keeps_its_own_connection_and_packs_in_c(
    url: str, chosen: type
) -> None:
    client = connect(url)  # no connection is made until a command
    made = client.connection_pool.connection_class
    assert issubclass(made, chosen) and issubclass(made, _PackedByHiredis)
    assert packing_in_c(made) is made and packing_in_c(chosen) is made


async def test_commands_packed_in_c_reach_a_real_redis(redis_url: str) -> None:
    client = connect(redis_url)
    plain = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.set("test-shared:packed", "olá 👋", ex=60)
        assert await plain.get("test-shared:packed") == "olá 👋"
        echoed = await client.eval("return {ARGV[1], ARGV[2]}", 0, 1.5, "ação")
        assert echoed == ["1.5", "ação"]
    finally:
        await client.delete("test-shared:packed")
        await client.close()
        await plain.close()


NUMBER, LID = "5511988887777", "98765432109876@lid"


def _message(n: int, phone: str, lid: Optional[str] = None) -> InboundMessage:
    return InboundMessage(
        instance_id="INSTANCE",
        message_id=f"MSG{n}",
        phone=phone,
        text=f"m{n}",
        kind="text",
        metadata={"n": n},
        raw={},
        lid=lid,
        number=phone if phone.isdigit() else None,
    )


@pytest.fixture
async def delivery(redis_url: str) -> AsyncIterator[RedisDelivery]:
    prefix = f"test-shared-{uuid.uuid4().hex[:8]}"
    made = RedisDelivery(connect(redis_url), prefix=prefix, partitions=5, block_seconds=0.1)
    yield made
    await made.stop(0)
    keys = [key async for key in made.redis.scan_iter(f"{prefix}:*")]
    if keys:
        await made.redis.delete(*keys)
    await made.aclose()


async def _run(delivery: RedisDelivery, count: int) -> List[InboundMessage]:
    got: List[InboundMessage] = []

    async def turn(message: InboundMessage) -> None:
        got.append(message)

    await delivery.start(turn)
    deadline = asyncio.get_running_loop().time() + 10
    while len(got) < count:
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)
    return got


async def test_a_message_lands_in_the_partition_of_its_conversation_not_of_its_phone(
    delivery: RedisDelivery,
) -> None:
    # The script links the LID to the number's conversation and appends to that partition,
    # so that both forms' messages are read in order by the partition's one owner.
    stream = delivery.stream
    assert stream.partition_of(LID) != stream.partition_of(NUMBER)
    assert await delivery.accept(_message(1, NUMBER, lid=LID))
    assert await delivery.accept(_message(2, LID))
    assert not await delivery.accept(_message(2, LID))  # a redelivery appends nothing
    entries = await delivery.redis.xrange(stream.stream_key(stream.partition_of(NUMBER)))
    assert [fields["sid"] for _, fields in entries] == [NUMBER, NUMBER]
    assert sorted(json.loads(entries[1][1]["linked"])) == sorted([NUMBER, LID])
    first, second = await _run(delivery, 2)
    assert first.conversation == second.conversation == NUMBER
    assert (second.phone, second.metadata["phone_number"], second.lid) == (LID, NUMBER, LID)


async def test_entries_of_the_previous_release_and_damaged_ones_are_read_as_such(
    delivery: RedisDelivery,
) -> None:
    stream = delivery.stream
    key = stream.stream_key(stream.partition_of(NUMBER))
    # Before this release, the record itself carried the linked conversation.
    earlier = identified(_message(1, LID, lid=LID), NUMBER, [NUMBER, LID])
    await delivery.redis.xadd(key, {"payload": encode_message(earlier)})
    # A linking that does not decode: skipped and acknowledged, never run with a wrong sid.
    damaged = encode_message(_message(2, NUMBER))
    await delivery.redis.xadd(key, {"payload": damaged, "sid": NUMBER, "linked": "{"})
    assert await delivery.accept(_message(3, NUMBER))
    got = await _run(delivery, 2)
    assert [m.message_id for m in got] == ["MSG1", "MSG3"]
    assert got[0].conversation == NUMBER and got[0].metadata["phone_number"] == NUMBER
    for _ in range(100):
        if await delivery.redis.xlen(key) == 0:
            break
        await asyncio.sleep(0.02)
    assert await delivery.redis.xlen(key) == 0


async def _owning_all(delivery: RedisDelivery, turn: Any) -> None:
    await delivery.start(turn)
    deadline = asyncio.get_running_loop().time() + 10
    while len(delivery.stream.owned) < delivery.stream.partitions:
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_message_read_back_by_the_instance_that_kept_it_is_not_decoded_again(
    delivery: RedisDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: List[Any] = []
    monkeypatch.setattr(shared, "message_from_record", decoded.append)
    got: List[InboundMessage] = []

    async def turn(message: InboundMessage) -> None:
        got.append(message)

    await _owning_all(delivery, turn)
    assert await delivery.accept(_message(1, NUMBER, lid=LID))
    assert await delivery.accept(_message(2, LID))
    deadline = asyncio.get_running_loop().time() + 10
    while len(got) < 2:
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)
    assert decoded == []  # both came from this instance's own memory
    # Exactly as a reader elsewhere would run them: in the one conversation, both forms known.
    assert [m.message_id for m in got] == ["MSG1", "MSG2"]
    assert got[0].conversation == got[1].conversation == NUMBER
    assert (got[1].phone, got[1].metadata["phone_number"], got[1].lid) == (LID, NUMBER, LID)
    assert all(not m.raw for m in got)
    assert delivery._local == {}


async def test_a_message_read_back_before_its_scripts_answer_gets_its_conversation_from_the_entry(
    delivery: RedisDelivery,
) -> None:
    # The webhook named the message and the script appended it, but this instance read the
    # entry before it read the script's answer: the message is here, its conversation not yet.
    message = _message(1, LID)
    name = f"{delivery._origin}:test"
    delivery._local[name] = message
    stream = delivery.stream
    await delivery.redis.xadd(
        stream.stream_key(stream.partition_of(NUMBER)),
        {"payload": "not even JSON", "o": name, "sid": NUMBER, "linked": json.dumps([NUMBER, LID])},
    )
    (got,) = await _run(delivery, 1)
    assert got.message_id == "MSG1" and got.conversation == NUMBER
    assert (got.phone, got.metadata["phone_number"], got.lid) == (LID, NUMBER, LID)


async def test_a_message_for_a_partition_read_elsewhere_is_not_kept_in_memory(
    delivery: RedisDelivery,
) -> None:
    # Not started: this instance reads no partition, so another instance will read it.
    assert await delivery.accept(_message(1, NUMBER))
    assert not await delivery.accept(_message(1, NUMBER))
    assert delivery._local == {}


async def test_an_entry_an_earlier_process_appended_is_never_taken_for_a_message_kept_here(
    delivery: RedisDelivery, redis_url: str
) -> None:
    # An earlier process under the same inbox id (the id may be given) appended MSG1 and died
    # before reading it; this one keeps its own first message, MSG2, waiting to be read back.
    earlier = RedisDelivery(connect(redis_url), prefix=delivery.prefix, partitions=5)
    earlier.stream.instance_id = delivery.stream.instance_id
    try:
        assert await earlier.accept(_message(1, NUMBER))
    finally:
        await earlier.aclose()
    delivery._local.clear()
    mine = _message(2, NUMBER)
    delivery.stream.owned.add(delivery.stream.partition_of(NUMBER))
    assert await delivery.accept(mine)
    (first, second) = await _run(delivery, 2)
    # Each entry runs its own message: the earlier one decoded from its record.
    assert [first.message_id, second.message_id] == ["MSG1", "MSG2"]
    assert first.text == "m1" and second.text == "m2"

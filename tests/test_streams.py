"""The Redis inbox against a real Redis: order, acknowledgement, sharing and failover."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, List, Mapping, Tuple

import pytest
import redis.asyncio as redis_asyncio

from zapi_channel.delivery.streams import PARTITION_LUA, StreamInbox, payload_of

Seen = List[Tuple[str, int, str, str]]


@pytest.fixture
async def make_inbox(redis_url: str) -> AsyncIterator[Callable[..., StreamInbox]]:
    prefix = f"test-inbox-{uuid.uuid4().hex[:8]}"
    made: List[StreamInbox] = []
    clients: List[Any] = []

    def make(**options: Any) -> StreamInbox:
        client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
        clients.append(client)
        options.setdefault("partitions", 4)
        options.setdefault("lease_seconds", 1.0)
        options.setdefault("block_seconds", 0.1)
        inbox = StreamInbox(client, prefix=prefix, **options)
        made.append(inbox)
        return inbox

    yield make
    for inbox in made:
        await inbox.release()
    keys = [key async for key in clients[0].scan_iter(f"{prefix}:*")]
    if keys:
        await clients[0].delete(*keys)
    for client in clients:
        await client.close()


def recorder(
    name: str, seen: Seen, inbox: StreamInbox, ack: bool = True
) -> Callable[..., Awaitable[None]]:
    async def handle(partition: int, entry_id: str, fields: Mapping[str, str]) -> None:
        payload = payload_of(fields)
        assert payload is not None
        seen.append((name, partition, payload["phone"], payload["n"]))
        if ack:
            await inbox.ack(partition, entry_id)

    return handle


async def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_entries_are_consumed_in_order_and_acknowledged(
    make_inbox: Callable[..., StreamInbox],
) -> None:
    inbox = make_inbox()
    seen: Seen = []
    for n in range(20):
        await inbox.append("5511000000001", {"phone": "5511000000001", "n": str(n)})
    inbox.start(recorder("a", seen, inbox))
    await wait_for(lambda: len(seen) == 20)
    assert [entry[3] for entry in seen] == [str(n) for n in range(20)]
    partition = inbox.partition_of("5511000000001")
    assert await inbox.redis.xlen(inbox.stream_key(partition)) == 0


async def test_one_customer_always_lands_in_the_same_partition(
    make_inbox: Callable[..., StreamInbox],
) -> None:
    one, two = make_inbox(), make_inbox()
    phones = [f"55119{n:08d}" for n in range(50)]
    assert [one.partition_of(p) for p in phones] == [two.partition_of(p) for p in phones]
    assert len({one.partition_of(p) for p in phones}) == one.partitions


async def test_a_script_picks_the_partition_that_partition_of_picks(
    make_inbox: Callable[..., StreamInbox],
) -> None:
    # The shared delivery's accept picks its stream in Lua: it must agree with Python's zlib
    # for every customer, whatever the bytes (LIDs, groups, non-ASCII, CRCs above 2**31).
    inbox = make_inbox(partitions=7)
    names = [f"55119{n:08d}" for n in range(200)] + [
        "123456789012345@lid",
        "120363019502650977-group",
        "ção ☃ 😀",
        "",
        "x" * 300,
    ]
    script = PARTITION_LUA + "return partition(ARGV[1], tonumber(ARGV[2]))"
    for name in names:
        found = await inbox.redis.eval(script, 0, name, inbox.partitions)
        assert found == inbox.partition_of(name), name


async def test_two_instances_share_the_partitions(make_inbox: Callable[..., StreamInbox]) -> None:
    a, b = make_inbox(), make_inbox()
    seen: Seen = []
    a.start(recorder("a", seen, a))
    await wait_for(lambda: len(a.owned) == 4)
    b.start(recorder("b", seen, b))
    await wait_for(lambda: len(a.owned) == 2 and len(b.owned) == 2)
    assert a.owned.isdisjoint(b.owned)
    phones = [f"55119{n:08d}" for n in range(40)]
    for phone in phones:
        await a.append(phone, {"phone": phone, "n": "0"})
    await wait_for(lambda: len(seen) == 40)
    by_instance = {name for name, *_ in seen}
    assert by_instance == {"a", "b"}
    for name, partition, *_ in seen:
        assert partition in (a.owned if name == "a" else b.owned)


async def test_a_dead_instances_unfinished_entries_are_taken_over_in_order(
    make_inbox: Callable[..., StreamInbox],
) -> None:
    dead, alive = make_inbox(partitions=1), make_inbox(partitions=1)
    seen: Seen = []
    dead.start(recorder("dead", seen, dead, ack=False))
    await wait_for(lambda: dead.owned == {0})
    for n in range(5):
        await dead.append("5511000000009", {"phone": "5511000000009", "n": str(n)})
    await wait_for(lambda: len(seen) == 5)
    # "kill -9": it stops reading and renewing, and never acknowledges or releases anything.
    await dead.stop_reading()
    dead.owned.clear()
    for n in range(5, 8):
        await alive.append("5511000000009", {"phone": "5511000000009", "n": str(n)})
    alive.start(recorder("alive", seen, alive))
    await wait_for(lambda: len(seen) == 13, timeout=15)
    taken_over = [entry[3] for entry in seen if entry[0] == "alive"]
    assert taken_over == [str(n) for n in range(8)]
    assert await alive.redis.xlen(alive.stream_key(0)) == 0

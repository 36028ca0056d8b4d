"""The AutoPipeline against a real Redis: one round trip per burst, and each answer its own."""

from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator, Dict, List

import pytest
import redis.asyncio as redis_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tests.livesanic import free_port
from zapi_channel.delivery import batching
from zapi_channel.delivery.batching import AutoPipeline, Script


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    made = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield made
    await made.close()


@pytest.fixture
def prefix() -> str:
    return f"test-batching-{uuid.uuid4().hex[:8]}"


async def test_commands_issued_together_go_in_one_pipeline_with_their_own_answers(
    client: redis_asyncio.Redis, prefix: str
) -> None:
    batched = AutoPipeline(client)
    await client.set(f"{prefix}:a", "1", ex=60)
    answers = await asyncio.gather(
        *(batched.get(f"{prefix}:a" if n % 2 else f"{prefix}:missing") for n in range(20)),
        batched.set(f"{prefix}:b", "2", ex=60),
        batched.exists(f"{prefix}:a"),
    )
    assert answers[:20] == [None if n % 2 == 0 else "1" for n in range(20)]
    assert answers[20] is True and answers[21] == 1
    assert batched.pipelines == 1
    assert await client.get(f"{prefix}:b") == "2"
    # Queued when issued: two issued before either is awaited share one round trip, no task.
    first, second = batched.get(f"{prefix}:a"), batched.get(f"{prefix}:b")
    assert (await first, await second) == ("1", "2")
    assert batched.pipelines == 2


async def evals(client: redis_asyncio.Redis) -> Dict[str, int]:
    """How many EVAL and EVALSHA this Redis has run."""
    stats = await client.info("commandstats")
    return {
        name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha")
    }


async def test_scripts_go_by_their_sha_and_again_with_their_text_when_redis_lost_them(
    client: redis_asyncio.Redis, prefix: str
) -> None:
    batched = AutoPipeline(client)
    # Unique per run, so that this Redis cannot know it yet.
    script = Script(f"-- {prefix}\nreturn redis.call('INCR', KEYS[1]) + tonumber(ARGV[1])")
    assert script.sha not in repr(script) and script.sha[:12] in repr(script)
    assert await client.script_exists(script.sha) == [False]
    counter = f"{prefix}:n"
    # Unknown to Redis: every call of the burst is sent again with the text, in order.
    first = await asyncio.gather(
        *(batched.script(script, [counter], [100]) for _ in range(3)),
        batched.set(f"{prefix}:beside", "1", ex=60),
    )
    assert first == [101, 102, 103, True]
    # Known now: by SHA1 alone, one pipeline, no text.
    before = batched.pipelines
    assert await client.script_exists(script.sha) == [True]
    calls = await evals(client)
    assert await batched.script(script, [counter], [0]) == 4
    assert batched.pipelines == before + 1
    after = await evals(client)
    assert after["evalsha"] == calls["evalsha"] + 1 and after["eval"] == calls["eval"]
    await client.delete(counter)


async def test_a_failing_command_fails_alone(client: redis_asyncio.Redis, prefix: str) -> None:
    batched = AutoPipeline(client)
    results = await asyncio.gather(
        batched.set(f"{prefix}:before", "x", ex=60),
        batched.eval("return redis.error_reply('broken on purpose')", 0),
        batched.set(f"{prefix}:after", "y", ex=60),
        return_exceptions=True,
    )
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], ResponseError) and "broken on purpose" in str(results[1])
    assert batched.pipelines == 1


async def test_a_coroutines_commands_run_in_the_order_it_awaited_them(
    client: redis_asyncio.Redis, prefix: str
) -> None:
    batched = AutoPipeline(client)
    key = f"{prefix}:order"

    async def writer(value: str) -> None:
        await batched.set(key, value, ex=60)
        assert await batched.get(key) in ("first", "second")

    await batched.set(key, "zero", ex=60)
    await writer("first")
    await writer("second")
    assert await client.get(key) == "second"
    assert batched.pipelines == 5  # each await its own round trip: nothing else was waiting


async def test_redis_down_fails_every_command_of_the_burst() -> None:
    down = redis_asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    batched = AutoPipeline(down)
    try:
        results = await asyncio.gather(
            batched.get("a"), batched.set("b", "1"), return_exceptions=True
        )
    finally:
        await down.close()
    assert all(isinstance(result, (RedisConnectionError, OSError)) for result in results)
    assert batched.pipelines == 0


async def test_blocking_commands_are_not_taken(client: redis_asyncio.Redis) -> None:
    batched = AutoPipeline(client)
    with pytest.raises(AttributeError, match="xreadgroup"):
        batched.xreadgroup  # noqa: B018 - the attribute lookup is what refuses
    await batched.aclose()


async def test_a_command_redis_py_refuses_fails_its_burst_and_leaves_no_one_waiting(
    client: redis_asyncio.Redis, prefix: str
) -> None:
    batched = AutoPipeline(client)
    results = await asyncio.wait_for(
        asyncio.gather(
            batched.get(f"{prefix}:a"),
            batched.set(f"{prefix}:only-a-key"),  # no value: redis-py refuses it at once
            return_exceptions=True,
        ),
        timeout=5,
    )
    assert all(isinstance(result, TypeError) for result in results)
    # The next burst is not affected.
    assert await batched.set(f"{prefix}:b", "1", ex=60) is True


async def test_calls_of_a_batchable_script_go_as_one_command_each_with_its_own_outcome(
    client: redis_asyncio.Redis, prefix: str
) -> None:
    batched = AutoPipeline(client)
    script = Script(
        prelude="local function twice(n) return 2 * n end\n",
        body=f"""
-- {prefix}
if ARGV[1] == 'fail' then return redis.call('INCR', KEYS[2]) end
if ARGV[1] == 'nothing' then return nil end
if ARGV[1] == 'read' then return redis.call('GET', KEYS[1]) end
return {{twice(redis.call('INCRBY', KEYS[1], ARGV[1])), #KEYS, #ARGV}}
""",
        batchable=True,
    )
    assert script.many is not None and script.many.sha != script.sha
    counter, text = f"{prefix}:n", f"{prefix}:text"
    await client.set(text, "not a number", ex=60)
    calls = await evals(client)
    results = await asyncio.gather(
        batched.script(script, [counter], [1]),
        batched.script(script, [counter, text], ["fail"]),
        batched.set(f"{prefix}:beside", "1", ex=60),
        batched.script(script, [f"{prefix}:beside"], ["read"]),
        batched.script(script, [counter], ["nothing"]),
        batched.script(script, [counter], [10, "extra"]),
        return_exceptions=True,
    )
    # In the order issued, each call with only its own keys and arguments; the failing one
    # alone gets Redis' own error, the others ran all the same.
    assert results[0] == [2, 1, 1]
    assert isinstance(results[1], ResponseError) and "not an integer" in str(results[1])
    # The call issued after the SET saw it: calls join only the command queued last.
    assert results[2] is True and results[3] == "1" and results[4] is None
    assert results[5] == [22, 1, 2]
    assert await client.get(counter) == "11"
    after = await evals(client)
    # One command for the two calls before the SET, one for the three after it (each sent
    # again with its text: this Redis did not know it).
    assert after["evalsha"] == calls["evalsha"] + 2 and after["eval"] == calls["eval"] + 2
    assert batched.pipelines == 1
    # Issued in one iteration, awaited one by one later: still one command.
    pending = [batched.script(script, [counter], [1]) for _ in range(5)]
    assert [(await one)[0] for one in pending] == [24, 26, 28, 30, 32]
    assert (await evals(client))["evalsha"] == after["evalsha"] + 1
    await client.delete(counter, text, f"{prefix}:beside")


async def client_ids(client: redis_asyncio.Redis, name: str) -> List[int]:
    return [int(c["id"]) for c in await client.client_list() if c.get("name") == name]


@pytest.fixture
async def named(redis_url: str, prefix: str) -> AsyncIterator[redis_asyncio.Redis]:
    """A client whose connections Redis lists under one name."""
    made = redis_asyncio.Redis.from_url(
        redis_url, decode_responses=True, client_name=f"{prefix}-held"
    )
    yield made
    await made.close()


async def test_what_is_issued_while_a_pipeline_is_out_goes_as_the_next_one_on_its_connection(
    named: redis_asyncio.Redis, client: redis_asyncio.Redis, prefix: str
) -> None:
    batched = AutoPipeline(named)
    # About 50 ms inside Redis: the later commands are issued while it is out.
    slow = Script(
        f"-- {prefix}\nlocal t = redis.call('TIME')\nlocal stop = t[1] * 1e6 + t[2] + 50000\n"
        "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= stop\nreturn 1"
    )
    await client.script_load(slow.text)
    first = batched.script(slow, [], [])
    later = []
    for n in range(5):
        await asyncio.sleep(0.005)  # each in an iteration of its own
        later.append(batched.get(f"{prefix}:{n}"))
    assert await first == 1 and await asyncio.gather(*later) == [None] * 5
    # One pipeline for everything issued meanwhile, on the one connection.
    assert batched.pipelines == 2
    assert len(await client_ids(client, f"{prefix}-held")) == 1
    await batched.aclose()


async def test_pipelines_hold_one_connection_that_a_restart_of_redis_does_not_break(
    named: redis_asyncio.Redis,
    client: redis_asyncio.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"{prefix}-held"
    batched = AutoPipeline(named)
    try:
        for n in range(20):
            assert await batched.set(f"{prefix}:{n}", "1", ex=60) is True
        held = await client_ids(client, name)
        assert len(held) == 1  # twenty pipelines, one connection
        # Redis drops it (a restart, a timeout); once it was idle a while, the next pipeline
        # notices before it sends, and nothing of it fails.
        await client.client_kill_filter(_id=held[0])
        monkeypatch.setattr(batching, "IDLE_CHECK_SECONDS", 0.0)
        assert await batched.get(f"{prefix}:0") == "1"
        again = await client_ids(client, name)
        assert len(again) == 1 and again != held
        # Dropped while pipelines follow one another: the next one fails, as any command on a
        # dead connection does, and the one after it has a new connection.
        monkeypatch.setattr(batching, "IDLE_CHECK_SECONDS", 3600.0)
        await client.client_kill_filter(_id=again[0])
        with pytest.raises((RedisConnectionError, OSError)):
            await batched.get(f"{prefix}:0")
        assert await batched.get(f"{prefix}:1") == "1"
        last = await client_ids(client, name)
        await batched.aclose()
        # Given back to the client's pool, open, for its other users.
        assert await client_ids(client, name) == last
        assert await named.get(f"{prefix}:2") == "1"
        assert await client_ids(client, name) == last
    finally:
        await client.delete(*(f"{prefix}:{n}" for n in range(20)))

"""The AutoPipeline against a real Redis: one round trip per burst, and each answer its own."""

from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator, Dict

import pytest
import redis.asyncio as redis_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tests.livesanic import free_port
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

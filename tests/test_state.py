from __future__ import annotations

import uuid
from typing import AsyncIterator, Union

import pytest

from zapi_channel.outbound import Choice
from zapi_channel.state import MemoryState, RedisState

MENU = [Choice("A picture", "/ask_image"), Choice("A document", "/ask_document")]


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[Union[MemoryState, RedisState]]:
    if request.param == "memory":
        yield MemoryState()
        return
    url = request.getfixturevalue("redis_url")
    shared = RedisState(url, prefix=f"test-{uuid.uuid4().hex[:8]}")
    yield shared
    keys = [key async for key in shared.redis.scan_iter(f"{shared.prefix}:*")]
    if keys:
        await shared.redis.delete(*keys)
    await shared.aclose()


async def test_a_key_is_first_once(state: Union[MemoryState, RedisState]) -> None:
    assert await state.first_time("i:m1") is True
    assert await state.first_time("i:m1") is False
    await state.forget("i:m1")
    assert await state.first_time("i:m1") is True


async def test_choices_answer_one_reply(state: Union[MemoryState, RedisState]) -> None:
    await state.remember_choices("5511", MENU)
    assert await state.take_choices("5511") == MENU
    assert await state.take_choices("5511") is None


async def test_redis_state_is_shared_between_instances(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    one, two = RedisState(redis_url, prefix=prefix), RedisState(redis_url, prefix=prefix)
    try:
        assert await one.first_time("i:m1")
        assert not await two.first_time("i:m1")
        await one.remember_choices("5511", MENU)
        assert await two.take_choices("5511") == MENU
        assert await one.take_choices("5511") is None
        await one.mark_sent("i:m1:1")
        assert await two.already_sent("i:m1:1")
        assert not await two.already_sent("i:m1:2")
        assert await one.redis.ttl(f"{prefix}:dedup:i:m1") > 0
    finally:
        await one.redis.delete(*[k async for k in one.redis.scan_iter(f"{prefix}:*")])
        await one.aclose()
        await two.aclose()


def test_repr_hides_the_url_password() -> None:
    assert "secret" not in repr(RedisState("redis://:secret@127.0.0.1:6379/0"))


def test_the_redis_journal_is_shared_and_removes_by_id(redis_url: str) -> None:
    from zapi_channel.journal import FAILED, RedisJournal

    prefix = f"test-{uuid.uuid4().hex[:8]}"
    one, two = RedisJournal(redis_url, prefix=prefix), RedisJournal(redis_url, prefix=prefix)
    try:
        first = one.record("send-text", {"phone": "5511", "message": "a"}, "HTTP 503", FAILED)
        two.record("send-text", {"phone": "5511", "message": "b \ud83d"}, "HTTP 503", FAILED)
        assert [e.body["message"] for e in two.entries()] == ["a", "b ?"]
        assert two.remove([first.id]) == 1
        assert [e.body["message"] for e in one.entries()] == ["b ?"]
        assert "Redis list" in one.where and "redis://" not in repr(one)
    finally:
        one.redis.delete(one.key)

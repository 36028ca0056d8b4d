from __future__ import annotations

from typing import List

from zapi_channel.memory import Deduplicator, TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_new_once_within_the_window() -> None:
    dedup = Deduplicator(ttl=60, max_items=10)
    assert dedup.first_time("i:m1") is True
    assert dedup.first_time("i:m1") is False
    assert dedup.first_time("i:m2") is True


def test_a_key_is_new_again_after_the_window() -> None:
    clock = Clock()
    dedup = Deduplicator(ttl=60, max_items=10, clock=clock)
    assert dedup.first_time("k")
    clock.now += 61
    assert dedup.first_time("k")


def test_memory_is_bounded_by_size() -> None:
    dedup = Deduplicator(ttl=3600, max_items=100)
    for i in range(10_000):
        dedup.first_time(f"k{i}")
    assert len(dedup) == 100
    assert dedup.first_time("k9999") is False


def test_ttl_cache_pop_consumes() -> None:
    cache: TTLCache[List[str]] = TTLCache(ttl=10, max_items=5)
    cache.set("phone", ["a"])
    assert cache.pop("phone") == ["a"]
    assert cache.get("phone") is None


def test_ttl_cache_forgets_old_entries() -> None:
    clock = Clock()
    cache: TTLCache[int] = TTLCache(ttl=10, max_items=5, clock=clock)
    cache.set("a", 1)
    clock.now += 10
    assert cache.get("a") is None
    cache.set("b", 2)
    assert len(cache) == 1

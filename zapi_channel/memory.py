"""Bounded in-process memories: webhook deduplication and the numbered choices last offered.

Both forget by age (TTL) and by size (least recently used first), so memory stays flat however many
webhooks arrive. ``clock`` is injectable so tests need no sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Generic, Optional, Tuple, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    """A dict that forgets entries older than ``ttl`` seconds and keeps at most ``max_items``."""

    def __init__(
        self,
        *,
        ttl: float,
        max_items: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_items <= 0:
            raise ValueError("ttl and max_items must be positive")
        self.ttl = ttl
        self.max_items = max_items
        self._clock = clock
        self._items: OrderedDict[str, Tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def _evict(self, now: float) -> None:
        # Entries are kept in insertion order, so expired ones are at the front.
        while self._items:
            key, (stamp, _) = next(iter(self._items.items()))
            if now - stamp < self.ttl and len(self._items) <= self.max_items:
                break
            del self._items[key]

    def get(self, key: str) -> Optional[V]:
        now = self._clock()
        entry = self._items.get(key)
        if entry is None:
            return None
        if now - entry[0] >= self.ttl:
            del self._items[key]
            return None
        return entry[1]

    def set(self, key: str, value: V) -> None:
        now = self._clock()
        self._items.pop(key, None)
        self._items[key] = (now, value)
        self._evict(now)

    def pop(self, key: str) -> Optional[V]:
        value = self.get(key)
        self._items.pop(key, None)
        return value


class Deduplicator:
    """Remembers webhook keys (``instanceId:messageId``) for ``ttl`` seconds.

    Z-API's retry behaviour is undocumented and duplicate deliveries are seen in practice, so a
    key seen within the window is answered once. Check-and-remember is one synchronous step, so
    two concurrent deliveries in the same event loop cannot both pass.
    """

    def __init__(
        self,
        *,
        ttl: float = 24 * 3600,
        max_items: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seen: TTLCache[bool] = TTLCache(ttl=ttl, max_items=max_items, clock=clock)

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is offered within the window, False afterwards."""
        if self._seen.get(key):
            return False
        self._seen.set(key, True)
        return True

    def forget(self, key: str) -> None:
        self._seen.pop(key)


__all__ = ["Deduplicator", "TTLCache"]

"""What the channel remembers between webhooks, in this process or shared through Redis.

- *Deduplication*: the keys (``instanceId:messageId``) of callbacks already accepted, so that a
  message Z-API delivers twice, to any instance, is answered once.
- *Numbered choices*: the buttons last offered to each customer, so that "2" maps back to the
  second button's payload whichever instance receives the answer.
- *Sent markers*: which answers of a given customer message were already sent, so that a turn run
  again after a crash (see :mod:`zapi_channel.stream_inbox`) does not repeat them.

:class:`MemoryState` is the default (one ``rasa run``). With ``redis_url`` in the channel's
credentials block, :class:`RedisState` shares all of it between instances. Every entry expires:
memory stays bounded whatever the traffic.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional, Protocol

from zapi_channel.memory import Deduplicator, TTLCache
from zapi_channel.outbound import Choice

DEDUP_TTL_SECONDS = 24 * 3600
CHOICES_TTL_SECONDS = 24 * 3600
SENT_TTL_SECONDS = 24 * 3600


class ChannelState(Protocol):
    async def first_time(self, key: str) -> bool:
        """True exactly once per key within the deduplication window."""

    async def forget(self, key: str) -> None:
        """Undo :meth:`first_time` (the message could not be queued after all)."""

    async def remember_choices(self, phone: str, choices: List[Choice]) -> None: ...

    async def take_choices(self, phone: str) -> Optional[List[Choice]]:
        """The choices last offered to ``phone``, forgotten once read: they answer one reply."""

    async def already_sent(self, reply_key: str) -> bool: ...

    async def mark_sent(self, reply_key: str) -> None: ...

    async def aclose(self) -> None: ...


class MemoryState:
    """State of one process, bounded by size and age."""

    def __init__(self, *, max_items: int = 100_000) -> None:
        self.dedup = Deduplicator(ttl=DEDUP_TTL_SECONDS, max_items=max_items)
        self.choices: TTLCache[List[Choice]] = TTLCache(
            ttl=CHOICES_TTL_SECONDS, max_items=max_items
        )
        self.sent: TTLCache[bool] = TTLCache(ttl=SENT_TTL_SECONDS, max_items=max_items)

    def __repr__(self) -> str:
        return "MemoryState()"

    async def first_time(self, key: str) -> bool:
        return self.dedup.first_time(key)

    async def forget(self, key: str) -> None:
        self.dedup.forget(key)

    async def remember_choices(self, phone: str, choices: List[Choice]) -> None:
        self.choices.set(phone, list(choices))

    async def take_choices(self, phone: str) -> Optional[List[Choice]]:
        return self.choices.pop(phone)

    async def already_sent(self, reply_key: str) -> bool:
        # Read when a stop cuts a turn short (its count goes to the pending inbox) and when the
        # next start re-runs it.
        return bool(self.sent.get(reply_key))

    async def mark_sent(self, reply_key: str) -> None:
        self.sent.set(reply_key, True)

    async def aclose(self) -> None:
        return None


# Read and delete in one step: two instances must not both map the same "2".
_TAKE = """
local value = redis.call('GET', KEYS[1])
if value then redis.call('DEL', KEYS[1]) end
return value
"""


class RedisState:
    """State shared by every instance through one Redis (``redis_url``)."""

    def __init__(self, url: str, *, prefix: str = "zapi", client: Any = None) -> None:
        import redis.asyncio as redis_asyncio

        self._url = url
        self.prefix = prefix
        self.redis: Any = client or redis_asyncio.Redis.from_url(url, decode_responses=True)

    def __repr__(self) -> str:
        # The URL may hold a password.
        return f"RedisState(prefix={self.prefix!r})"

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    async def first_time(self, key: str) -> bool:
        added = await self.redis.set(self._key("dedup", key), "1", nx=True, ex=DEDUP_TTL_SECONDS)
        return bool(added)

    async def forget(self, key: str) -> None:
        await self.redis.delete(self._key("dedup", key))

    async def remember_choices(self, phone: str, choices: List[Choice]) -> None:
        value = json.dumps([[choice.title, choice.payload] for choice in choices])
        await self.redis.set(self._key("choices", phone), value, ex=CHOICES_TTL_SECONDS)

    async def take_choices(self, phone: str) -> Optional[List[Choice]]:
        value = await self.redis.eval(_TAKE, 1, self._key("choices", phone))
        if not value:
            return None
        try:
            return [Choice(str(title), str(payload)) for title, payload in json.loads(value)]
        except (ValueError, TypeError):
            return None

    async def already_sent(self, reply_key: str) -> bool:
        return bool(await self.redis.exists(self._key("sent", reply_key)))

    async def mark_sent(self, reply_key: str) -> None:
        await self.redis.set(self._key("sent", reply_key), "1", ex=SENT_TTL_SECONDS)

    async def aclose(self) -> None:
        await self.redis.close()


__all__ = ["ChannelState", "MemoryState", "RedisState"]

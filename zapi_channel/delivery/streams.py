"""A durable inbox in Redis Streams, shared by every ``rasa run`` instance (``redis_url``).

The webhook appends each accepted callback to a stream *before* answering Z-API, so a message
acknowledged to Z-API survives any crash, ``kill -9`` included. Instances consume the streams and
acknowledge an entry only after its turn ran; entries a dead instance had taken are claimed by a
live one.

Order. A customer's messages must be answered in the order they were sent, whichever instance
received them. The inbox is split into ``partitions`` streams by a stable hash of the customer's
phone, and each partition is *owned* by one instance at a time through a lease in Redis
(``SET NX PX``, renewed while alive, released when stopping). The owner reads its partitions in
stream order and hands entries to the per-customer FIFO workers, so one customer's messages never
run on two instances at once and never overtake each other.

Failover. A lease not renewed within ``lease_seconds`` expires; another instance takes the
partition, claims the entries the dead owner had read but not acknowledged (``XAUTOCLAIM``) and
processes them first, then the rest. A turn that was cut short runs again; the sent markers of
:mod:`zapi_channel.state` keep the answers that already went out from being repeated.

Balance. Live instances announce themselves in a sorted set; each aims at its fair share of the
partitions, takes free ones up to it and hands back extras once their work in progress is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
import zlib
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple

from zapi_channel.delivery.batching import Script, run_script

logger = logging.getLogger(__name__)

GROUP = "zapi"

#: entry handler: (partition, entry id, the entry's fields) -> None; it must call ``ack`` when
#: done, a damaged entry included. The fields are as the producer wrote them: ``payload``
#: (JSON, see :func:`payload_of`) and whatever else it added. The inbox does not decode the
#: payload: a handler that still holds the message it appended skips that.
Handler = Callable[[int, str, Mapping[str, str]], Awaitable[None]]

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
#: Lua for :meth:`StreamInbox.partition_of` inside a script that picks the stream itself (the
#: shared delivery's accept, which learns the conversation there): ``partition(text, count)``
#: is zlib's CRC-32 of the text's bytes modulo ``count``, bit by bit with Redis' ``bit``
#: library (signed 32-bit results, hence the last correction). Tested against zlib.
PARTITION_LUA = """
local function partition(text, count)
  local crc = -1
  for i = 1, #text do
    crc = bit.bxor(crc, string.byte(text, i))
    for _ = 1, 8 do
      crc = bit.bxor(bit.rshift(crc, 1), bit.band(0xEDB88320, -bit.band(crc, 1)))
    end
  end
  crc = bit.bnot(crc)
  if crc < 0 then crc = crc + 4294967296 end
  return crc % count
end
"""
# Acknowledge and delete in one command: the entry's turn ran, and the stream stays bounded.
_ACK = Script(
    batchable=True,
    body="""
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
""",
)
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class StreamInbox:
    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "zapi",
        partitions: int = 8,
        lease_seconds: float = 15.0,
        block_seconds: float = 1.0,
        instance_id: Optional[str] = None,
        commands: Any = None,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.redis = redis
        # What appends and acknowledges go through: the client, or the delivery's AutoPipeline
        # (zapi_channel.delivery.batching), which sends a burst's commands in one round trip.
        # Reading blocks, so it always has a connection of its own from the client's pool.
        self.commands = commands if commands is not None else redis
        self.prefix = prefix
        self.partitions = partitions
        self.lease_ms = int(lease_seconds * 1000)
        self.block_ms = int(block_seconds * 1000)
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.owned: Set[int] = set()
        self._draining: Set[int] = set()
        self._in_flight: Dict[int, int] = {}
        self._groups_ready: Set[int] = set()
        self._stream_keys: Optional[Tuple[str, ...]] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._stopping = False

    def __repr__(self) -> str:
        return f"StreamInbox(prefix={self.prefix!r}, instance={self.instance_id!r})"

    # -- keys ----------------------------------------------------------------------------

    def stream_key(self, partition: int) -> str:
        return f"{self.prefix}:inbox:{partition}"

    def _lease_key(self, partition: int) -> str:
        return f"{self.prefix}:inbox:{partition}:owner"

    def _members_key(self) -> str:
        return f"{self.prefix}:inbox:instances"

    def stream_keys(self) -> Tuple[str, ...]:
        """Every partition's stream, in partition order (named once: every webhook asks)."""
        if self._stream_keys is None:
            self._stream_keys = tuple(self.stream_key(p) for p in range(self.partitions))
        return self._stream_keys

    def partition_of(self, phone: str) -> int:
        # crc32, not hash(): Python randomises str hashes per process, and every instance must
        # put one customer in the same partition.
        return zlib.crc32(phone.encode("utf-8")) % self.partitions

    # -- producing ----------------------------------------------------------------------------

    async def append(self, phone: str, payload: Mapping[str, Any]) -> str:
        """Store an accepted callback durably; returns the stream entry id."""
        partition = self.partition_of(phone)
        entry: str = await self.redis.xadd(
            self.stream_key(partition), {"payload": json.dumps(payload, ensure_ascii=False)}
        )
        return entry

    # -- consuming ----------------------------------------------------------------------------

    def start(self, handler: Handler) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run(handler))

    async def ack(self, partition: int, entry_id: str) -> None:
        try:
            await run_script(self.commands, _ACK, [self.stream_key(partition)], [GROUP, entry_id])
        finally:
            self._in_flight[partition] = max(0, self._in_flight.get(partition, 0) - 1)

    async def stop_reading(self) -> None:
        """Take no new entries; what is in progress may still finish and be acknowledged."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def release(self) -> None:
        """Give the leases back (unacknowledged entries stay for the next owner) and leave."""
        await self.stop_reading()
        for partition in list(self.owned):
            await self._release(partition)
        try:
            await self.redis.zrem(self._members_key(), self.instance_id)
        except Exception:
            logger.debug("Could not deregister from the inbox", exc_info=True)

    async def _run(self, handler: Handler) -> None:
        next_housekeeping = 0.0
        while not self._stopping:
            try:
                now = time.monotonic()
                if now >= next_housekeeping:
                    await self._housekeeping(handler)
                    next_housekeeping = now + min(self.lease_ms / 3000, 5.0)
                readable = sorted(self.owned - self._draining)
                if not readable:
                    await asyncio.sleep(min(1.0, self.block_ms / 1000))
                    continue
                await self._read(readable, handler)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Reading the Redis inbox failed; trying again shortly")
                await asyncio.sleep(1.0)

    async def _housekeeping(self, handler: Handler) -> None:
        now_ms = int(time.time() * 1000)
        members = self._members_key()
        await self.redis.zadd(members, {self.instance_id: now_ms})
        await self.redis.zremrangebyscore(members, "-inf", now_ms - self.lease_ms)
        live = max(1, int(await self.redis.zcard(members)))
        share = math.ceil(self.partitions / live)

        for partition in list(self.owned):
            renewed = await self.redis.eval(
                _RENEW, 1, self._lease_key(partition), self.instance_id, self.lease_ms
            )
            if not renewed:
                logger.warning("Lost the lease of inbox partition %d", partition)
                self.owned.discard(partition)
                self._draining.discard(partition)

        # Hand back extras, but only once their work in progress is done, so order holds.
        extra = len(self.owned) - share
        for partition in sorted(self.owned, reverse=True)[: max(0, extra)]:
            self._draining.add(partition)
        for partition in list(self._draining):
            if self._in_flight.get(partition, 0) == 0:
                await self._release(partition)

        if len(self.owned) < share:
            free = [p for p in range(self.partitions) if p not in self.owned]
            # Start at a different place per instance so they do not all race for partition 0.
            offset = zlib.crc32(self.instance_id.encode()) % self.partitions
            free.sort(key=lambda p: (p - offset) % self.partitions)
            for partition in free:
                if len(self.owned) >= share:
                    break
                taken = await self.redis.set(
                    self._lease_key(partition), self.instance_id, nx=True, px=self.lease_ms
                )
                if taken:
                    self.owned.add(partition)
                    await self._adopt(partition, handler)

    async def _ensure_group(self, partition: int) -> None:
        if partition in self._groups_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream_key(partition), GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(partition)

    async def _adopt(self, partition: int, handler: Handler) -> None:
        """Take a partition over: first the entries a previous owner read but did not finish."""
        await self._ensure_group(partition)
        key = self.stream_key(partition)
        cursor = "0-0"
        claimed: List[Tuple[str, Dict[str, str]]] = []
        while True:
            answer = await self.redis.xautoclaim(
                key, GROUP, self.instance_id, min_idle_time=0, start_id=cursor, count=100
            )
            cursor, entries = answer[0], answer[1]
            claimed.extend(entries)
            if cursor in ("0-0", b"0-0"):
                break
        if claimed:
            logger.info(
                "Took over %d unfinished message(s) of inbox partition %d", len(claimed), partition
            )
        for entry_id, fields in claimed:
            await self._deliver(partition, entry_id, fields, handler)

    async def _read(self, partitions: List[int], handler: Handler) -> None:
        for partition in partitions:
            await self._ensure_group(partition)
        streams = {self.stream_key(p): ">" for p in partitions}
        answer = await self.redis.xreadgroup(
            GROUP, self.instance_id, streams, count=100, block=self.block_ms
        )
        for key, entries in answer or []:
            partition = int(str(key).rsplit(":", 1)[1])
            for entry_id, fields in entries:
                await self._deliver(partition, entry_id, fields, handler)

    async def _deliver(
        self, partition: int, entry_id: str, fields: Mapping[str, str], handler: Handler
    ) -> None:
        self._in_flight[partition] = self._in_flight.get(partition, 0) + 1
        await handler(partition, entry_id, fields)

    async def _release(self, partition: int) -> None:
        try:
            await self.redis.eval(_RELEASE, 1, self._lease_key(partition), self.instance_id)
        finally:
            self.owned.discard(partition)
            self._draining.discard(partition)


def payload_of(fields: Mapping[str, str]) -> Optional[Dict[str, Any]]:
    """An entry's ``payload`` field decoded; None if it is missing or not a JSON object."""
    try:
        payload = json.loads(fields.get("payload", ""))
    except (ValueError, TypeError):
        return None
    return payload if isinstance(payload, dict) else None


__all__ = ["GROUP", "PARTITION_LUA", "StreamInbox", "payload_of"]

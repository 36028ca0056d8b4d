"""The delivery shared by several ``rasa run`` instances through one Redis (``redis_url``).

- *Inbox*: Redis Streams, partitioned by customer and leased per instance
  (:mod:`zapi_channel.delivery.streams`). The webhook appends before answering; the instance that
  owns the customer's partition runs the turn and acknowledges the entry afterwards.
- *Deduplication*, *numbered choices* and *sent markers*: keys with a TTL, so that any instance
  may receive any webhook, or the answer to another instance's menu.
- *Failed sends*: one list shared by every instance.
- *Identity links*: a hash per form of a customer (``who:``) and a set per conversation
  (``forms:``), kept as long as the customer is, as Rasa's tracker store keeps the
  conversation: one customer stays one conversation however long between messages.

One async client serves all of it. Every other entry expires or is removed: Redis grows with
the customers, never with the messages.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from zapi_channel.delivery.base import (
    CHOICES_TTL_SECONDS,
    OUTGOING_TTL_SECONDS,
    FailedSend,
    TurnHandler,
    Turns,
    encode_message,
    identified,
    message_from_record,
)
from zapi_channel.delivery.batching import AutoPipeline, Script
from zapi_channel.delivery.streams import PARTITION_LUA, StreamInbox, payload_of
from zapi_channel.errors import StateUnavailable
from zapi_channel.inbound import InboundMessage
from zapi_channel.outbound import Choice

logger = logging.getLogger(__name__)

#: Sent markers only matter while a message may still be run again (a takeover, a restart).
SENT_TTL_SECONDS = 24 * 3600
#: Messages of this instance's webhooks, kept from their append until this instance reads
#: them back, so that it does not decode its own record again: each entry names the webhook's
#: message (field ``o``, this instance's id and a counter). Bounded: a message whose partition
#: changed hands after its append is never read back here, and the oldest such go first.
LOCAL_MESSAGES = 1024

# What the webhook does with a customer message, in one atomic step whichever instance runs it:
# link the customer's forms to one conversation (the rule: zapi_channel.delivery.base), then,
# unless the message was kept already, append it to the stream of that conversation's partition
# with what the linking found, which the consumer applies (the message's own record is encoded
# before its conversation is known). One script, so that a webhook costs one command: the
# partition is picked here, from the conversation, as StreamInbox.partition_of picks it.
# KEYS: the dedup key, the streams of every partition, then one hash per form ({sid, since}).
# ARGV: the dedup TTL, the record, the partition count, now, the sid of a new conversation,
# the prefix of the per-conversation sets of forms, the webhook's own name for the message
# (LOCAL_MESSAGES), the forms (none for a group).
# Answers 0 for a message kept already, else its partition and, when its forms were linked,
# its conversation and the forms linked to it (what the consumer applies).
_ACCEPT = Script(
    prelude=PARTITION_LUA,
    batchable=True,
    body="""
local partitions = tonumber(ARGV[3])
local forms = #KEYS - 1 - partitions
local best, since = nil, nil
for i = 1, forms do
  local row = redis.call('HMGET', KEYS[1 + partitions + i], 'sid', 'since')
  if row[1] and (best == nil or tonumber(row[2]) < since) then
    best, since = row[1], tonumber(row[2])
  end
end
if best == nil then best, since = ARGV[5], tonumber(ARGV[4]) end
local linked = nil
if forms > 0 then
  for i = 1, forms do
    redis.call('HSET', KEYS[1 + partitions + i], 'sid', best, 'since', since)
    redis.call('SADD', ARGV[6] .. best, ARGV[7 + i])
  end
  linked = redis.call('SMEMBERS', ARGV[6] .. best)
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local p = partition(best, partitions)
local stream = KEYS[2 + p]
if linked then
  redis.call('XADD', stream, '*', 'payload', ARGV[2], 'o', ARGV[7], 'sid', best,
             'linked', cjson.encode(linked))
  return {p, best, linked}
end
redis.call('XADD', stream, '*', 'payload', ARGV[2], 'o', ARGV[7])
return {p}
""",
)
# Hand a conversation back only while a human still holds it.
_HAND_BACK = """
local held = redis.call('GET', KEYS[1])
if held and tonumber(held) > tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '0', 'KEEPTTL')
  return 1
end
return 0
"""
# What a turn asks first, in one command: whether a human holds the conversation and, when none
# does, the numbered choices it was offered (taken, as _TAKE takes them). A conversation a human
# holds keeps its choices: its turn may not run, or may take them itself.
# KEYS: the handoff key, the choices key; ARGV: now.
_BEFORE_TURN = Script(
    batchable=True,
    body="""
local held = redis.call('GET', KEYS[1])
if held and tonumber(held) and tonumber(held) > tonumber(ARGV[1]) then
  return {held, 0, false}
end
local choices = redis.call('GET', KEYS[2])
if choices then redis.call('DEL', KEYS[2]) end
return {held or false, 1, choices or false}
""",
)
# Read and delete in one step: two instances must not both map the same "2".
_TAKE = Script(
    """
local value = redis.call('GET', KEYS[1])
if value then redis.call('DEL', KEYS[1]) end
return value
"""
)


def connect(url: str) -> Any:
    """The one async client every Redis user of a channel shares."""
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    pool = client.connection_pool
    # The class from_url chose for the URL's scheme (TCP, TLS, unix socket), packing in C.
    pool.connection_class = packing_in_c(pool.connection_class)
    return client


class _PackedByHiredis:
    """``pack_command`` through hiredis' C packer, for redis-py's asyncio connections.

    redis-py 4.6 (the version Rasa 3.6 pins) packs commands in Python on its asyncio client,
    where its sync client uses hiredis: about 10 µs against 5.6 for a command with an 800-byte
    payload, measured, for each of the several commands a message costs. What reaches the
    packer is what redis-py's own would see: the command name split into its words, then every
    argument through the connection's encoder (its types, its errors), so the bytes on the
    wire are the same.
    """

    encoder: Any

    def pack_command(self, *args: Any) -> List[Any]:
        name = args[0]
        if isinstance(name, str):
            words: Tuple[Any, ...] = tuple(name.encode().split())
        else:
            words = tuple(name.split()) if b" " in name else (name,)
        encode = self.encoder.encode
        assert _hiredis_pack is not None  # packing_in_c made this class only with it
        return [_hiredis_pack((*words, *(encode(arg) for arg in args[1:])))]


def packing_in_c(connection_class: type) -> type:
    """``connection_class`` packing its commands with hiredis; itself without hiredis' packer."""
    if _hiredis_pack is None or issubclass(connection_class, _PackedByHiredis):
        return connection_class
    return _packed_classes.setdefault(
        connection_class,
        type(connection_class.__name__, (_PackedByHiredis, connection_class), {}),
    )


def _hiredis_packer() -> Optional[Callable[[Tuple[Any, ...]], bytes]]:
    # hiredis is a dependency, and its packer came with 2.1: both are checked, not assumed.
    try:
        hiredis = importlib.import_module("hiredis")
    except ImportError:  # pragma: no cover - installed without it
        return None
    return getattr(hiredis, "pack_command", None)


_hiredis_pack = _hiredis_packer()
_packed_classes: Dict[type, type] = {}


def _linked(text: Optional[str]) -> Optional[List[str]]:
    """The forms an entry's ``linked`` field lists; None when it is not a list of strings."""
    try:
        forms = json.loads(text) if text is not None else None
    except ValueError:
        return None
    if not isinstance(forms, list) or not all(isinstance(form, str) for form in forms):
        return None
    return forms


def _unavailable(prefix: str, exc: BaseException) -> StateUnavailable:
    # Never the URL: it may hold a password.
    failure = StateUnavailable(
        f"Redis did not answer ({type(exc).__name__}: {exc})", where=f"Redis ({prefix})"
    )
    failure.__cause__ = exc
    return failure


def _redis_errors() -> tuple:  # type: ignore[type-arg]
    from redis.exceptions import RedisError

    return (RedisError, OSError)


class RedisJournal:
    """The failed-sends journal in a Redis list, shared by every instance of the bot."""

    def __init__(self, client: Any, *, prefix: str = "zapi") -> None:
        self.redis = client
        self.prefix = prefix
        self.key = f"{prefix}:failed-sends"

    def __repr__(self) -> str:
        return f"RedisJournal({self.key!r})"

    @property
    def where(self) -> str:
        return f"Redis list {self.key}"

    async def record(
        self, endpoint: str, body: Mapping[str, Any], error: str, outcome: str
    ) -> FailedSend:
        entry = FailedSend.new(endpoint, body, error, outcome)
        try:
            await self.redis.rpush(self.key, entry.to_json())
        except _redis_errors() as exc:
            raise _unavailable(self.prefix, exc) from exc
        return entry

    async def entries(self) -> List[FailedSend]:
        entries: List[FailedSend] = []
        for line in await self.redis.lrange(self.key, 0, -1):
            try:
                entries.append(FailedSend.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                continue
        return entries

    async def remove(self, ids: Iterable[str]) -> int:
        doomed = set(ids)
        removed = 0
        for line in await self.redis.lrange(self.key, 0, -1):
            try:
                entry_id = json.loads(line).get("id")
            except (ValueError, AttributeError):
                continue
            if entry_id in doomed:
                # LREM of the exact line: safe while other instances append.
                removed += int(await self.redis.lrem(self.key, 1, line))
        return removed

    async def handoffs(self) -> List[Tuple[str, float]]:
        found: List[Tuple[str, float]] = []
        now = time.time()
        async for key in self.redis.scan_iter(f"{self.prefix}:handoff:*"):
            value = await self.redis.get(key)
            if value and float(value) > now:
                found.append((str(key).split(":handoff:", 1)[1], float(value)))
        return sorted(found, key=lambda item: item[1])

    async def find_conversation(self, form: str) -> Optional[str]:
        found = await self.redis.hget(f"{self.prefix}:who:{form}", "sid")
        return str(found) if found else None

    async def hand_back(self, conversation: str) -> bool:
        key = f"{self.prefix}:handoff:{conversation}"
        return bool(await self.redis.eval(_HAND_BACK, 1, key, time.time()))

    async def set_whatsapp(self, connected: bool, at: float) -> None:
        value = json.dumps({"connected": connected, "at": at})
        await self.redis.set(f"{self.prefix}:whatsapp", value)

    async def whatsapp(self) -> Optional[Tuple[bool, float]]:
        value = await self.redis.get(f"{self.prefix}:whatsapp")
        try:
            data = json.loads(value) if value else None
            return (bool(data["connected"]), float(data["at"])) if data else None
        except (ValueError, TypeError, KeyError):
            return None

    async def aclose(self) -> None:
        await self.redis.close()


class RedisDelivery(RedisJournal):
    """:class:`~zapi_channel.delivery.base.Delivery` through Redis; see the module docstring."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "zapi",
        partitions: int = 8,
        lease_seconds: float = 15.0,
        dedup_ttl_seconds: float = 24 * 3600.0,
        max_concurrency: int = 8,
        merge_window: float = 0.0,
        block_seconds: float = 1.0,
    ) -> None:
        super().__init__(client, prefix=prefix)
        self.dedup_ttl_seconds = int(dedup_ttl_seconds)
        # Every command of a webhook or a turn: what coroutines issue together goes as one
        # pipeline (about a tenth of the CPU of separate round trips; see the module).
        self.commands = AutoPipeline(client)
        self.stream = StreamInbox(
            client,
            prefix=prefix,
            partitions=partitions,
            lease_seconds=lease_seconds,
            block_seconds=block_seconds,
            commands=self.commands,
        )
        self._turns = Turns(max_concurrency, self._finish, merge_window=merge_window)
        # Where each running message sits in the streams, to acknowledge it once answered.
        self._entries: Dict[str, tuple] = {}  # type: ignore[type-arg]
        # Choices that handoff() took for a turn about to ask take_choices(), by conversation.
        self._taken: Dict[str, Optional[str]] = {}
        # This instance's webhooks' messages until read back, by their names (LOCAL_MESSAGES).
        self._local: Dict[str, InboundMessage] = {}
        # Names unique to this process, whatever the inbox's instance id: an entry another
        # process appended (one that ran before it under the same id, say) never matches one.
        self._origin = uuid.uuid4().hex
        self._names = itertools.count(1)

    def __repr__(self) -> str:
        return f"RedisDelivery(prefix={self.prefix!r})"

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    @property
    def workers(self) -> Any:
        return self._turns.workers

    @property
    def pending(self) -> int:
        return self._turns.workers.pending

    async def accept(self, message: InboundMessage) -> bool:
        # A group is its own conversation: its members' forms are not the chat's.
        forms = () if message.metadata.get("is_group") else message.forms
        # Named before the append: this instance may read the entry back before it reads the
        # script's answer (two connections), and then finds the message here.
        name = f"{self._origin}:{next(self._names)}"
        local = self._local
        local[name] = message
        if len(local) > LOCAL_MESSAGES:
            del local[next(iter(local))]
        try:
            added = await self.commands.script(
                _ACCEPT,
                [
                    self._key("dedup", message.dedup_key),
                    *self.stream.stream_keys(),
                    *(f"{self.prefix}:who:{form}" for form in forms),
                ],
                [
                    self.dedup_ttl_seconds,
                    encode_message(message),
                    self.stream.partitions,
                    time.time(),
                    message.phone,
                    f"{self.prefix}:forms:",
                    name,
                    *forms,
                ],
            )
        except _redis_errors() as exc:
            local.pop(name, None)
            raise _unavailable(self.prefix, exc) from exc
        if not added:
            local.pop(name, None)
            return False
        if added[0] not in self.stream.owned:
            local.pop(name, None)  # another instance reads it
        elif len(added) == 3 and name in local:
            # Not read back yet: it waits with its conversation applied, as it will run.
            local[name] = identified(message, str(added[1]), [str(f) for f in added[2]])
        return True

    async def remember_outgoing(self, message_id: str, record: Mapping[str, Any]) -> None:
        value = json.dumps(dict(record), ensure_ascii=False)
        key = self._key("outgoing", message_id)
        await self.commands.set(key, value, ex=int(OUTGOING_TTL_SECONDS))

    async def outgoing(self, message_id: str) -> Optional[Dict[str, Any]]:
        value = await self.commands.get(self._key("outgoing", message_id))
        try:
            return dict(json.loads(value)) if value else None
        except (ValueError, TypeError):
            return None

    async def pause(self, conversation: str, until: float) -> None:
        # Expires a day after the takeover ends: a later hand-back still finds it.
        ttl = max(60, int(until - time.time()) + 24 * 3600)
        await self.commands.set(self._key("handoff", conversation), repr(until), ex=ttl)

    async def handoff(self, conversation: str) -> Optional[float]:
        # Asked before every turn, whose next question is take_choices(): both in one command
        # (_BEFORE_TURN), the choices kept here for it.
        held, took, choices = await self.commands.script(
            _BEFORE_TURN,
            [self._key("handoff", conversation), self._key("choices", conversation)],
            [repr(time.time())],
        )
        if took:
            self._taken[conversation] = choices or None
        else:
            self._taken.pop(conversation, None)
        try:
            return float(held) if held else None
        except ValueError:
            return None

    async def end_handoff(self, conversation: str) -> None:
        await self.commands.delete(self._key("handoff", conversation))

    async def start(self, handler: TurnHandler) -> None:
        self._turns.handler = handler
        self.stream.start(self._consume)

    async def _consume(self, partition: int, entry_id: str, fields: Mapping[str, str]) -> None:
        """An entry of the inbox: authenticated, parsed and deduplicated by the webhook already."""
        message = self._local.pop(fields.get("o", ""), None)
        if message is None or (not message.sender_id and "sid" in fields):
            if message is None:
                message = message_from_record(payload_of(fields))
            linked = _linked(fields.get("linked")) if "sid" in fields else None
            if message is None or (linked is None and "sid" in fields):
                logger.warning("Skipped a damaged entry of the Redis inbox (%s)", entry_id)
                await self.stream.ack(partition, entry_id)
                return
            if linked is not None:
                # Its conversation, as the webhook's script linked it (entries of earlier
                # releases carry it in their record instead).
                message = identified(message, str(fields["sid"]), linked)
        self._entries[message.dedup_key] = (partition, entry_id)
        self._turns.submit(message)

    async def _finish(self, message: InboundMessage) -> None:
        # A turn that failed before it asked for its choices: they were taken all the same, as
        # the turn would have taken them. Its conversation's next turn comes after this.
        self._taken.pop(message.conversation, None)
        where = self._entries.pop(message.dedup_key, None)
        if where is None:
            return
        partition, entry_id = where
        try:
            await self.stream.ack(partition, entry_id)
        except _redis_errors():
            # Unacknowledged: the partition's next owner runs it again, skipping what was sent.
            logger.exception("Could not acknowledge message %s in Redis", message.message_id)

    async def aclose(self) -> None:
        await self.commands.aclose()  # what is on the wire is answered before the client goes
        await super().aclose()

    async def stop(self, grace_seconds: float) -> List[InboundMessage]:
        await self.stream.stop_reading()
        unfinished = await self._turns.stop(grace_seconds)
        for message in unfinished:
            self._entries.pop(message.dedup_key, None)
        # Unacknowledged entries stay in Redis for whichever instance owns the partition next.
        await self.stream.release()
        return unfinished

    async def remember_choices(self, phone: str, choices: List[Choice]) -> None:
        value = json.dumps([[choice.title, choice.payload] for choice in choices])
        await self.commands.set(self._key("choices", phone), value, ex=int(CHOICES_TTL_SECONDS))

    async def take_choices(self, phone: str) -> Optional[List[Choice]]:
        if phone in self._taken:
            value = self._taken.pop(phone)
        else:
            value = await self.commands.script(_TAKE, [self._key("choices", phone)], [])
        if not value:
            return None
        try:
            return [Choice(str(title), str(payload)) for title, payload in json.loads(value)]
        except (ValueError, TypeError):
            return None

    async def already_sent(self, message_key: str, answer: int) -> bool:
        return bool(await self.commands.exists(self._key("sent", f"{message_key}:{answer}")))

    async def mark_sent(self, message_key: str, answer: int) -> None:
        key = self._key("sent", f"{message_key}:{answer}")
        await self.commands.set(key, "1", ex=SENT_TTL_SECONDS)


__all__ = ["SENT_TTL_SECONDS", "RedisDelivery", "RedisJournal", "connect"]

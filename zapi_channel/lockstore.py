"""A Rasa lock store whose per-conversation lock really holds across ``rasa run`` processes.

Rasa 3.6's ``RedisLockStore`` keeps a serialized ``TicketLock`` under one key and changes it with a
plain GET, then a SET. Two processes that receive a message of the same conversation at the same
moment both read "no ticket", both write ticket 0, and both process the conversation at once
(RasaHQ/rasa#9213; the atomic fix was reverted). Within one process it looks fine, because those
calls block the event loop; the race only shows with several processes, which is exactly the
deployment that needs a Redis lock store. Every decision here is one Lua script, so it is atomic.

``endpoints.yml``::

    lock_store:
      type: zapi_channel.lockstore.AtomicRedisLockStore
      url: localhost          # or the whole location: redis://:password@host:6379/1
      port: 6379
      db: 1
      password: ${REDIS_PASSWORD}
      key_prefix: mybot

The design, in Redis keys (``P`` is ``key_prefix``, ``C`` the conversation id)::

    P:ticket      INCR counter shared by all conversations: a number per waiter, never reused
    P:queue:C     sorted set of the tickets waiting for (or holding) C, scored by ticket: the FIFO
    P:alive:C     hash ticket -> deadline (Redis clock, ms) by which that ticket must be heard from
    P:owner:C     the lease: ``SET P:owner:C <token> NX PX <lifetime>``, token unique per holder

* **Safety comes from the lease alone.** Only the process that set ``P:owner:C`` may enter, and
  release deletes it only if it still holds our token (compare-and-delete). Whatever happens to the
  queue, two holders at once are impossible while a lease is valid.
* **Fairness comes from the queue.** The free lease may only be taken by the lowest ticket in the
  queue, so one conversation's messages are handled in the order they took tickets, whichever
  process received them.
* **The dead do not block.** A waiter refreshes its deadline at every poll (``waiter_timeout``); a
  holder's deadline is its lease end (``lock_lifetime``), like Rasa's own tickets, which expire
  ``lock_lifetime`` after being issued. Whoever next finds the lease free drops the expired tickets
  ahead of it. A live waiter that was dropped (its process stalled longer than
  ``waiter_timeout``) notices and takes a new ticket at the end of the queue.
* **Fencing.** A holder's ticket is also its fencing token: tickets only grow, and only the lowest
  live ticket can take the lease, so each holder of a conversation has a larger number than the
  one before it. Code that writes elsewhere can pass it along and refuse a write from a smaller
  number (a holder whose lease ran out while it was still working).
* **Cancellation.** A cancelled waiter leaves the queue at once (and releases a lease its last
  script may have taken). Script calls are shielded from cancellation, because redis-py 4.x can
  swallow a cancellation that lands while it checks a pooled connection.
* Every clock read is Redis's ``TIME``, so the processes' own clocks do not matter. Queue keys
  expire when nobody has touched them for a while; the ``P:ticket`` counter stays.

Rasa only ever calls :meth:`AtomicRedisLockStore.lock` (``Agent.handle_message``, reminders and the
HTTP API's tracker endpoints all use ``async with lock_store.lock(conversation_id):`` and ignore the
value). The synchronous ``TicketLock`` methods of Rasa's ``LockStore`` describe exactly the
non-atomic protocol replaced here, so they raise ``NotImplementedError`` instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Dict, Mapping, Optional, Set, Tuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio
import redis.exceptions
from rasa.core.lock_store import LOCK_LIFETIME, LockError, LockStore
from rasa.utils.endpoints import EndpointConfig

from zapi_channel.coerce import as_bool, as_float, as_int, refuse_unknown, text
from zapi_channel.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_KEY_PREFIX = "rasa-lock"
#: Seconds between two attempts of a waiting message: one small script call each.
DEFAULT_POLL_INTERVAL = 0.05
#: Seconds a waiter may stay silent before the ones behind it pass it.
DEFAULT_WAITER_TIMEOUT = 10.0
DEFAULT_SOCKET_TIMEOUT = 10.0

_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]+$")
_URL_SCHEMES = ("redis://", "rediss://", "unix://")

# Redis before 5 refuses writes after TIME in a script unless effects replication is on; later
# versions always replicate effects (and may drop this call), hence the guard.
_CLOCK = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: ticket counter, queue, alive. ARGV: waiter_timeout_ms, idle_ms. Returns the new ticket.
_JOIN = (
    _CLOCK
    + """
local ticket = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], ticket, ticket)
redis.call('HSET', KEYS[3], ticket, now + tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return ticket
"""
)

# KEYS: queue, alive, owner. ARGV: ticket, token, lifetime_ms, waiter_timeout_ms, idle_ms.
# Returns 1: acquired, 0: not yet (heartbeat refreshed), -1: the ticket was dropped, rejoin.
_TRY_ACQUIRE = (
    _CLOCK
    + """
local ticket = ARGV[1]
if not redis.call('ZSCORE', KEYS[1], ticket) then
  return -1
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local heartbeat = now + tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[2], ticket, heartbeat)
  return 0
end
while true do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if head == ticket then
    break
  end
  local deadline = tonumber(redis.call('HGET', KEYS[2], head))
  if deadline and deadline > now then
    redis.call('HSET', KEYS[2], ticket, heartbeat)
    return 0
  end
  redis.call('ZREM', KEYS[1], head)
  redis.call('HDEL', KEYS[2], head)
end
redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3])
redis.call('HSET', KEYS[2], ticket, now + tonumber(ARGV[3]))
return 1
"""
)

# KEYS: queue, alive, owner. ARGV: ticket, token. Leaves the queue; deletes the lease only if it is
# still ours. Returns 1 if the lease was ours, 0 if it had expired (or was never taken).
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[3]) == ARGV[2] then
  redis.call('DEL', KEYS[3])
  return 1
end
return 0
"""


_BLOCK = "lock_store"


def _seconds(key: str, value: Any) -> float:
    return as_float(key, value, positive=True, block=_BLOCK)


def redacted_url(url: str) -> str:
    """``redis://user:secret@host:6379/1`` -> ``redis://user:***@host:6379/1``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


@dataclass(frozen=True)
class RedisLockSettings:
    """Where Redis is and how the lock behaves; built once from ``endpoints.yml`` or keywords.

    ``redis_url`` (``redis://``, ``rediss://`` or ``unix://``) replaces host, port, db, username,
    password and use_ssl. Passwords (and a URL, which may hold one) are kept out of ``repr``.

    Example::

        RedisLockSettings.from_mapping({"url": "localhost", "port": "6379", "key_prefix": "bot"})
    """

    host: str = "localhost"
    port: int = 6379
    #: Rasa's own lock store defaults to db 1 (its tracker store to 0); so do we.
    db: int = 1
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    use_ssl: bool = False
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None
    ssl_ca_certs: Optional[str] = None
    redis_url: Optional[str] = field(default=None, repr=False)
    key_prefix: str = DEFAULT_KEY_PREFIX
    #: How long a holder may keep a conversation before the next one may go (seconds).
    lock_lifetime: float = float(LOCK_LIFETIME)
    poll_interval: float = DEFAULT_POLL_INTERVAL
    waiter_timeout: float = DEFAULT_WAITER_TIMEOUT
    #: Give up waiting (``LockError``) after this many seconds; ``None`` waits for its turn.
    acquire_timeout: Optional[float] = None
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT

    def __post_init__(self) -> None:
        if not _KEY_PREFIX.match(self.key_prefix):
            raise ConfigError(
                "lock_store 'key_prefix' may hold letters, digits and _ . : - only, "
                f"not {self.key_prefix!r}"
            )
        if self.redis_url is not None and not self.redis_url.startswith(_URL_SCHEMES):
            raise ConfigError(
                "lock_store 'redis_url' must start with redis://, rediss:// or unix://"
            )
        # A waiter heard from less often than this would be passed while still alive.
        if self.waiter_timeout < 2 * self.poll_interval:
            raise ConfigError(
                "lock_store 'waiter_timeout' must be at least twice 'poll_interval' "
                f"({self.waiter_timeout} < 2 x {self.poll_interval})"
            )

    def __repr__(self) -> str:
        # Where Redis is, as one redacted URL: a redis_url makes host, port and db meaningless.
        return (
            f"RedisLockSettings({self.location}, key_prefix={self.key_prefix!r}, "
            f"lock_lifetime={self.lock_lifetime}, poll_interval={self.poll_interval}, "
            f"waiter_timeout={self.waiter_timeout}, acquire_timeout={self.acquire_timeout})"
        )

    @property
    def location(self) -> str:
        """Where Redis is, fit for logs: never a password."""
        if self.redis_url is not None:
            return redacted_url(self.redis_url)
        scheme = "rediss" if self.use_ssl else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RedisLockSettings:
        """Validate the ``lock_store`` block of ``endpoints.yml`` (or keyword arguments).

        ``url`` is Rasa's name for the host; a ``url`` with a scheme is taken as ``redis_url``.
        Unknown keys are refused, so that a misspelt ``lock_lifetime`` does not go unnoticed.
        """
        refuse_unknown(data, _KNOWN_KEYS, block="the lock_store block of endpoints.yml")
        values: Dict[str, Any] = {}
        url = text(data.get("url"))
        if url.startswith(_URL_SCHEMES):
            values["redis_url"] = url
        elif url:
            values["host"] = url
        for key, value in data.items():
            # An unset ${VAR} (an empty string) means the default.
            if value is None or key == "url" or (key != "password" and not text(value)):
                continue
            if key == "port":
                values[key] = as_int(key, value, 1, 65535, block=_BLOCK)
            elif key == "db":
                values[key] = as_int(key, value, 0, 1_000_000, block=_BLOCK)
            elif key == "use_ssl":
                values[key] = as_bool(key, value, block=_BLOCK)
            elif key in _SECONDS_KEYS:
                values[key] = _seconds(key, value)
            elif key == "password":
                # A password may legitimately start or end with spaces: taken as given. An empty
                # one (an unset ``${REDIS_PASSWORD}``) means none.
                if str(value):
                    values[key] = str(value)
            else:
                values[key] = text(value)
        return cls(**values)


_SECONDS_KEYS = frozenset(
    ("lock_lifetime", "poll_interval", "waiter_timeout", "acquire_timeout", "socket_timeout")
)
_KNOWN_KEYS = frozenset({"url", *(f.name for f in dataclasses.fields(RedisLockSettings))})


@dataclass(frozen=True)
class HeldLock:
    """What ``lock()`` yields: the conversation, and this holder's fencing token.

    Fencing tokens of one conversation grow from holder to holder (see the module docstring).
    """

    conversation_id: str
    fencing_token: int


@dataclass(frozen=True)
class _Keys:
    ticket: str
    queue: str
    alive: str
    owner: str

    @classmethod
    def of(cls, prefix: str, conversation_id: str) -> _Keys:
        return cls(
            ticket=f"{prefix}:ticket",
            queue=f"{prefix}:queue:{conversation_id}",
            alive=f"{prefix}:alive:{conversation_id}",
            owner=f"{prefix}:owner:{conversation_id}",
        )


@dataclass
class _Place:
    """One ``lock()`` call's place in the queue; the ticket changes if it has to queue again."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    ticket: Optional[int] = None
    #: The script call under way, if any: leaving waits for it (see ``_shielded``).
    in_flight: Optional[asyncio.Future[Any]] = None


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class AtomicRedisLockStore(LockStore):  # type: ignore[misc]  # Rasa is untyped: LockStore is Any
    """Rasa ``LockStore`` with an atomic, fair, crash-tolerant per-conversation lock in Redis.

    Built by Rasa from ``endpoints.yml`` as ``AtomicRedisLockStore(endpoint_config=...)``, or
    directly with the keywords of :class:`RedisLockSettings`::

        store = AtomicRedisLockStore(redis_url="redis://localhost:6379/1", key_prefix="bot")
        async with store.lock("5511999999999") as held:
            ...  # held.fencing_token

    The Redis client is created lazily inside the running event loop (and again if the loop
    changes), so the store can be built before sanic forks its workers.
    """

    def __init__(self, endpoint_config: Optional[EndpointConfig] = None, **options: Any) -> None:
        data: Dict[str, Any] = {}
        if endpoint_config is not None:
            data.update(endpoint_config.kwargs)
            if endpoint_config.url:
                data["url"] = endpoint_config.url
        data.update(options)
        self.settings = RedisLockSettings.from_mapping(data)
        self._redis: Any = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._scripts: Dict[str, Any] = {}
        self._cleanups: Set[asyncio.Task[None]] = set()
        super().__init__()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.settings.location}, "
            f"key_prefix={self.settings.key_prefix!r})"
        )

    @property
    def key_prefix(self) -> str:
        return self.settings.key_prefix

    # -- the Redis connection ----------------------------------------------------------------

    def _connect(self) -> Any:
        s = self.settings
        if s.redis_url is not None:
            return redis.asyncio.from_url(s.redis_url, socket_timeout=s.socket_timeout)
        return redis.asyncio.Redis(
            host=s.host,
            port=s.port,
            db=s.db,
            username=s.username,
            password=s.password,
            ssl=s.use_ssl,
            ssl_certfile=s.ssl_certfile,
            ssl_keyfile=s.ssl_keyfile,
            ssl_ca_certs=s.ssl_ca_certs,
            socket_timeout=s.socket_timeout,
        )

    def _script(self, name: str) -> Any:
        # A redis.asyncio client belongs to the loop that first used it; a new loop (a sanic
        # worker, a test) gets its own client.
        loop = asyncio.get_running_loop()
        if self._redis is None or self._loop is not loop:
            self._redis = self._connect()
            self._loop = loop
            self._scripts = {
                "join": self._redis.register_script(_JOIN),
                "try": self._redis.register_script(_TRY_ACQUIRE),
                "release": self._redis.register_script(_RELEASE),
            }
            logger.debug("Lock store connecting to %s", self.settings.location)
        return self._scripts[name]

    async def close(self) -> None:
        """Close the connections of the current client (a new one is made on next use)."""
        if self._cleanups:
            await asyncio.wait(self._cleanups)
        client, self._redis, self._loop = self._redis, None, None
        if client is not None:
            await client.close(close_connection_pool=True)

    async def _run(self, name: str, keys: Tuple[str, ...], args: Tuple[Any, ...]) -> int:
        # The one place where Redis errors become Rasa's LockError, which Rasa expects from here.
        try:
            result = await self._script(name)(keys=list(keys), args=list(args))
        except redis.exceptions.RedisError as exc:
            raise LockError(
                f"Lock store at {self.settings.location} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return int(result)

    # -- the lock ----------------------------------------------------------------------------

    async def _shielded(self, place: _Place, work: Awaitable[T]) -> T:
        # Cancellation is taken here, never inside redis-py. redis-py 4.x can swallow a
        # cancellation that lands while it checks a pooled connection (``async_timeout(0)``), and
        # the waiter would then go on to take the lock; and a script cancelled on the wire may
        # have run anyway. So the call always finishes, in the background if need be, and
        # ``_leave`` waits for it before releasing.
        task = asyncio.ensure_future(work)
        place.in_flight = task
        return await asyncio.shield(task)

    async def _join(self, keys: _Keys, place: _Place) -> None:
        async def join() -> None:
            # Recorded by the call itself, so a ticket taken after a cancellation is released.
            place.ticket = await self._run(
                "join",
                (keys.ticket, keys.queue, keys.alive),
                (_ms(self.settings.waiter_timeout), self._idle_ms()),
            )

        await self._shielded(place, join())

    def _idle_ms(self, lock_lifetime: float = 0.0) -> int:
        # Queue keys outlive any silent holder or waiter, so they never vanish under a live one.
        s = self.settings
        return _ms(2 * (max(lock_lifetime, s.lock_lifetime) + s.waiter_timeout))

    async def _wait_for_turn(
        self, conversation_id: str, keys: _Keys, place: _Place, lifetime: float, poll: float
    ) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        give_up = None if s.acquire_timeout is None else loop.time() + s.acquire_timeout
        while True:
            args = (
                place.ticket,
                place.token,
                _ms(lifetime),
                _ms(s.waiter_timeout),
                self._idle_ms(lifetime),
            )
            outcome = await self._shielded(
                place, self._run("try", (keys.queue, keys.alive, keys.owner), args)
            )
            if outcome == 1:
                return
            if outcome == -1:
                logger.warning(
                    "Waited too long without a word for conversation '%s' (event loop stalled "
                    "more than %.1f s?); queueing again at the end",
                    conversation_id,
                    s.waiter_timeout,
                )
                await self._join(keys, place)
            if give_up is not None and loop.time() >= give_up:
                raise LockError(
                    f"Could not acquire lock for conversation_id '{conversation_id}' "
                    f"within {s.acquire_timeout} s."
                )
            await asyncio.sleep(poll)

    async def _leave(self, conversation_id: str, keys: _Keys, place: _Place, held: bool) -> None:
        pending = place.in_flight
        if pending is not None:
            # A script still under way (we were cancelled) may yet take a ticket or the lease:
            # releasing before it lands would leave them behind.
            if not pending.done():
                await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # retrieved: whoever awaited it has seen it, or was cancelled
        if place.ticket is None:
            return
        try:
            was_ours = await self._run(
                "release", (keys.queue, keys.alive, keys.owner), (place.ticket, place.token)
            )
        except LockError as exc:
            # The lease and the ticket expire by themselves; the message itself was handled.
            logger.warning("Could not release conversation '%s': %s", conversation_id, exc)
            return
        if held and not was_ours:
            logger.warning(
                "The lock of conversation '%s' expired before it was released (lock_lifetime "
                "%.1f s): another message may have been handled at the same time",
                conversation_id,
                self.settings.lock_lifetime,
            )

    @asynccontextmanager
    async def lock(
        self,
        conversation_id: str,
        lock_lifetime: Optional[float] = None,
        wait_time_in_seconds: Optional[float] = None,
    ) -> AsyncIterator[HeldLock]:
        """Hold ``conversation_id`` exclusively, across every process sharing this Redis.

        Waits in FIFO order behind earlier messages of the conversation, polling every
        ``wait_time_in_seconds`` (default ``poll_interval``; at most half of ``waiter_timeout``).
        The lease lasts ``lock_lifetime`` seconds (default: the store's, which follows Rasa's
        ``TICKET_LOCK_LIFETIME``). Raises Rasa's ``LockError`` if Redis fails or
        ``acquire_timeout`` passes. Cancelling a waiter always cancels it, and leaves nothing
        behind in Redis.
        """
        lifetime = self.settings.lock_lifetime if lock_lifetime is None else float(lock_lifetime)
        poll = self.settings.poll_interval if wait_time_in_seconds is None else wait_time_in_seconds
        # A waiter silent for longer than waiter_timeout would be taken for dead and passed.
        poll = min(poll, self.settings.waiter_timeout / 2)
        keys = _Keys.of(self.settings.key_prefix, conversation_id)
        place = _Place()
        held = False
        try:
            await self._join(keys, place)
            await self._wait_for_turn(conversation_id, keys, place, lifetime, poll)
            held = True
            assert place.ticket is not None
            logger.debug(
                "Acquired lock for conversation '%s' (ticket %d)", conversation_id, place.ticket
            )
            yield HeldLock(conversation_id=conversation_id, fencing_token=place.ticket)
        finally:
            # Also on cancellation: leave the queue now rather than let the ticket expire. As its
            # own task, so that a second cancellation cannot stop the release half-way.
            cleanup = asyncio.ensure_future(self._leave(conversation_id, keys, place, held))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            await asyncio.shield(cleanup)

    # -- Rasa's TicketLock protocol, which this store replaces ---------------------------------

    def _unsupported(self, name: str) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__} keeps no TicketLock, so '{name}' has no meaning here; "
            "use 'async with lock_store.lock(conversation_id)'."
        )

    def get_lock(self, conversation_id: str) -> None:
        raise self._unsupported("get_lock")

    def save_lock(self, lock: Any) -> None:
        raise self._unsupported("save_lock")

    def delete_lock(self, conversation_id: str) -> None:
        raise self._unsupported("delete_lock")

    def issue_ticket(self, conversation_id: str, lock_lifetime: float = LOCK_LIFETIME) -> int:
        raise self._unsupported("issue_ticket")

    def update_lock(self, conversation_id: str) -> None:
        raise self._unsupported("update_lock")

    def get_or_create_lock(self, conversation_id: str) -> None:
        raise self._unsupported("get_or_create_lock")

    def is_someone_waiting(self, conversation_id: str) -> bool:
        raise self._unsupported("is_someone_waiting")

    def finish_serving(self, conversation_id: str, ticket_number: int) -> None:
        raise self._unsupported("finish_serving")

    def cleanup(self, conversation_id: str, ticket_number: int) -> None:
        raise self._unsupported("cleanup")


__all__ = ["AtomicRedisLockStore", "HeldLock", "RedisLockSettings", "redacted_url"]

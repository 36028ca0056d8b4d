"""AtomicRedisLockStore against a real Redis, and Rasa's RedisLockStore failing the same scenario.

A "process" is a store instance with its own connections. Rasa's store does its GET/SET from
synchronous code, so inside one event loop nothing can run between them: to show its race, its
"processes" are threads, each with an event loop of its own. Each test uses its own key prefix
and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, List

import pytest
import redis
import redis.asyncio
from rasa.core.lock_store import LockError, LockStore, RedisLockStore
from rasa.utils.endpoints import EndpointConfig

from scripts.children import child_dies_with_parent
from zapi_channel.errors import ConfigError
from zapi_channel.lockstore import AtomicRedisLockStore, RedisLockSettings

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def _ping(host: str, port: int) -> bool:
    client = redis.Redis(host=host, port=port, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The machine's Redis on 127.0.0.1:6379, or a throwaway one started (and stopped) here."""
    if _ping("127.0.0.1", 6379):
        yield RedisServer("127.0.0.1", 6379)
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("No Redis answers on 127.0.0.1:6379 and there is no redis-server to start one")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=child_dies_with_parent,
    )
    try:
        deadline = time.monotonic() + 5
        while not _ping("127.0.0.1", port):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.skip("No Redis on 127.0.0.1:6379 and redis-server did not start")
            time.sleep(0.05)
        yield RedisServer("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


@pytest.fixture
def prefix(redis_server: RedisServer) -> Iterator[str]:
    # Alphanumeric, because Rasa's RedisLockStore ignores any other key prefix.
    name = "zapitest" + uuid.uuid4().hex[:12]
    yield name
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    for key in client.scan_iter(match=f"{name}*"):
        client.delete(key)
    client.close()


@pytest.fixture
async def make_store(
    redis_server: RedisServer, prefix: str
) -> AsyncIterator[Callable[..., AtomicRedisLockStore]]:
    """A new store, standing for a separate process, per call; closed at the end of the test."""
    made: List[AtomicRedisLockStore] = []

    def make(**options: Any) -> AtomicRedisLockStore:
        options.setdefault("poll_interval", 0.01)
        store = AtomicRedisLockStore(redis_url=redis_server.url, key_prefix=prefix, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


# -- the shared scenario: read-modify-write of a counter in Redis, with an await in between -----


@dataclass
class Tally:
    """What happened inside the critical section, kept in Redis like any shared state would be."""

    counter: int
    peak_inside: int


async def _read_modify_write(client: Any, prefix: str, hold: float) -> int:
    inside = int(await client.incr(f"{prefix}:inside"))
    value = int(await client.get(f"{prefix}:counter") or 0)
    await asyncio.sleep(hold)
    await client.set(f"{prefix}:counter", value + 1)
    await client.decr(f"{prefix}:inside")
    return inside


async def _contender(
    store: LockStore, server: RedisServer, prefix: str, rounds: int, hold: float
) -> List[Any]:
    """One "process": its own connection for the shared state, the lock for every round.

    A short lifetime so that a ticket Rasa's store loses track of expires within the test; a
    short wait between attempts so that both stores are driven as hard.
    """
    seen: List[Any] = []
    client = redis.asyncio.Redis(host=server.host, port=server.port)
    try:
        for _ in range(rounds):
            async with store.lock(
                "5511999990000", lock_lifetime=5, wait_time_in_seconds=0.01
            ) as held:
                seen.append((await _read_modify_write(client, prefix, hold), held))
    finally:
        await client.close()
    return seen


def _tally(server: RedisServer, prefix: str, seen: List[Any]) -> Tally:
    client = redis.Redis(host=server.host, port=server.port)
    counter = int(client.get(f"{prefix}:counter") or 0)
    client.close()
    return Tally(counter=counter, peak_inside=max(inside for inside, _ in seen))


class Stuck(Exception):
    """A contender was still waiting for the lock long after everyone else was done."""

    def __init__(self, message: str, threads: List[threading.Thread]) -> None:
        super().__init__(message)
        self.threads = threads

    def unstick(self, server: RedisServer, prefix: str) -> None:
        """Delete the lock a stuck contender of Rasa's store polls, until it gives up."""
        client = redis.Redis(host=server.host, port=server.port)
        deadline = time.monotonic() + 5
        # Deleted repeatedly: its next poll may write the lock back before reading it.
        while any(t.is_alive() for t in self.threads) and time.monotonic() < deadline:
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
            time.sleep(0.005)
        client.close()


def _in_threads(
    contenders: List[Callable[[], Awaitable[List[Any]]]], timeout: float = 10
) -> List[Any]:
    """Run each contender in its own thread and event loop, all released at the same moment."""
    start = threading.Barrier(len(contenders))
    results: List[Any] = []
    errors: List[BaseException] = []

    def run(contender: Callable[[], Awaitable[List[Any]]]) -> None:
        async def main() -> List[Any]:
            start.wait(timeout=10)
            return await contender()

        try:
            results.extend(asyncio.run(main()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread below
            errors.append(exc)

    # Daemon threads: a contender stuck in Rasa's store must not keep pytest from exiting (it
    # stops once its lock is gone: see Stuck.unstick).
    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in contenders]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        raise Stuck(f"a contender still waits after {timeout} s", threads)
    if errors:
        raise errors[0]
    return results


# -- 1. mutual exclusion -----------------------------------------------------------------------


async def test_concurrent_holders_of_one_conversation_never_overlap_and_lose_no_update(
    redis_server: RedisServer, prefix: str, make_store: Callable[..., AtomicRedisLockStore]
) -> None:
    tasks, rounds = 12, 3
    runs = await asyncio.gather(
        *(_contender(make_store(), redis_server, prefix, rounds, 0.005) for _ in range(tasks))
    )
    tally = _tally(redis_server, prefix, [item for run in runs for item in run])

    assert tally.peak_inside == 1
    assert tally.counter == tasks * rounds


def test_holders_in_separate_threads_and_event_loops_never_overlap(
    redis_server: RedisServer, prefix: str
) -> None:
    # The closest thing to separate processes that still fits in a fast test: nothing shared but
    # Redis, and truly parallel network I/O.
    threads, rounds = 8, 3

    async def contender() -> List[Any]:
        store = AtomicRedisLockStore(
            redis_url=redis_server.url, key_prefix=prefix, poll_interval=0.005
        )
        try:
            return await _contender(store, redis_server, prefix, rounds, 0.005)
        finally:
            await store.close()

    tally = _tally(redis_server, prefix, _in_threads([contender] * threads))

    assert tally.peak_inside == 1
    assert tally.counter == threads * rounds


async def test_fencing_tokens_grow_from_holder_to_holder(
    make_store: Callable[..., AtomicRedisLockStore],
) -> None:
    tokens: List[int] = []

    async def hold(store: AtomicRedisLockStore) -> None:
        for _ in range(2):
            async with store.lock("5511999990000") as held:
                tokens.append(held.fencing_token)  # holders never overlap: this is their order
                await asyncio.sleep(0.002)

    await asyncio.gather(*(hold(make_store()) for _ in range(6)))

    assert len(tokens) == 12
    assert all(earlier < later for earlier, later in zip(tokens, tokens[1:]))


# -- 2. the same scenario with Rasa's RedisLockStore -------------------------------------------


class _GapRedisLockStore(RedisLockStore):  # type: ignore[misc]
    """Rasa's RedisLockStore, with its GET-then-SET gap made certain instead of likely.

    Across real processes the gap is a network round trip; here every contender has read the
    lock before any of them writes its ticket back, which is one of the interleavings that the
    round trip allows.
    """

    def __init__(self, barrier: threading.Barrier, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._barrier = barrier

    def get_or_create_lock(self, conversation_id: str) -> Any:
        lock = super().get_or_create_lock(conversation_id)
        self._barrier.wait(timeout=10)
        return lock


def test_rasas_redis_lock_store_lets_two_processes_in_at_once(
    redis_server: RedisServer, prefix: str
) -> None:
    threads = 4
    gap = threading.Barrier(threads)

    def contender() -> Awaitable[List[Any]]:
        store = _GapRedisLockStore(
            gap, host=redis_server.host, port=redis_server.port, db=0, key_prefix=prefix
        )
        return _contender(store, redis_server, prefix, 1, 0.05)

    tally = _tally(redis_server, prefix, _in_threads([contender] * threads))

    # Every contender issued itself ticket 0 and went in: this is RasaHQ/rasa#9213.
    assert tally.peak_inside == threads
    assert tally.counter < threads


def test_rasas_redis_lock_store_misbehaves_without_forcing_too(
    redis_server: RedisServer, prefix: str
) -> None:
    # No hook: contenders released together, as when a burst of messages reaches several
    # processes. Measured here: 59 of 60 such runs went wrong: mostly two holders at once,
    # sometimes a LockError for a message whose lock another's cleanup deleted, rarely a message
    # whose ticket was overwritten, left polling a lock that will never serve it. One clean run
    # is possible, five in a row is not.
    threads = 6
    outcomes = []
    for attempt in range(5):
        run_prefix = f"{prefix}run{attempt}"

        def contender(run_prefix: str = run_prefix) -> Awaitable[List[Any]]:
            store = RedisLockStore(
                host=redis_server.host, port=redis_server.port, db=0, key_prefix=run_prefix
            )
            return _contender(store, redis_server, run_prefix, 1, 0.02)

        try:
            tally = _tally(redis_server, run_prefix, _in_threads([contender] * threads, 3))
        except LockError:
            outcomes.append("a message refused with LockError")
            break
        except Stuck as stuck:
            outcomes.append("a message left waiting for a turn that never comes")
            stuck.unstick(redis_server, run_prefix)
            break
        if tally.peak_inside > 1 or tally.counter < threads:
            outcomes.append(f"{tally.peak_inside} holders at once")
            break
        outcomes.append("clean")

    assert outcomes[-1] != "clean", outcomes


# -- 3. FIFO -------------------------------------------------------------------------------------


async def test_waiters_get_the_lock_in_the_order_they_queued(
    make_store: Callable[..., AtomicRedisLockStore],
) -> None:
    order: List[int] = []
    first_in = asyncio.Event()

    async def first() -> None:
        async with make_store().lock("5511999990001"):
            first_in.set()
            await asyncio.sleep(0.3)

    async def waiter(n: int) -> None:
        async with make_store().lock("5511999990001"):
            order.append(n)
            await asyncio.sleep(0.01)

    holder = asyncio.create_task(first())
    await first_in.wait()
    waiters = []
    for n in range(6):
        waiters.append(asyncio.create_task(waiter(n)))
        await asyncio.sleep(0.03)
    await asyncio.gather(holder, *waiters)

    assert order == [0, 1, 2, 3, 4, 5]


# -- 4. a holder that dies -----------------------------------------------------------------------

_CRASHING_HOLDER = textwrap.dedent(
    """
    import asyncio, os, sys
    from zapi_channel.lockstore import AtomicRedisLockStore

    async def main():
        store = AtomicRedisLockStore(redis_url=sys.argv[1], key_prefix=sys.argv[2])
        async with store.lock("5511999990002", lock_lifetime=1.0):
            print("held", flush=True)
            os._exit(0)  # the process dies holding the lock: no release, connection dropped

    asyncio.run(main())
    """
)


async def test_a_holder_that_died_blocks_the_conversation_only_until_its_lifetime_ends(
    redis_server: RedisServer, prefix: str, make_store: Callable[..., AtomicRedisLockStore]
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASHING_HOLDER,
        redis_server.url,
        prefix,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), timeout=20)
    held_at = time.monotonic()
    assert line.strip() == b"held"
    await child.wait()

    async with make_store().lock("5511999990002"):
        waited = time.monotonic() - held_at

    assert 0.7 < waited < 2.5


async def test_a_stalled_waiter_is_passed_and_then_queues_again(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    conversation = "5511999990011"
    order: List[str] = []
    observer = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)

    def store() -> AtomicRedisLockStore:
        return AtomicRedisLockStore(
            redis_url=redis_server.url, key_prefix=prefix, poll_interval=0.01, waiter_timeout=0.1
        )

    async def enter(name: str) -> None:
        mine = store()
        try:
            async with mine.lock(conversation):
                order.append(name)
        finally:
            await mine.close()

    async def queued(count: int) -> None:
        while await observer.zcard(f"{prefix}:queue:{conversation}") < count:
            await asyncio.sleep(0.005)

    # B is another process: its own thread and event loop, which the test can freeze.
    b_loop = asyncio.new_event_loop()
    b_thread = threading.Thread(target=b_loop.run_until_complete, args=(enter("B"),))
    holder = store()
    try:
        async with holder.lock(conversation):
            b_thread.start()
            await asyncio.wait_for(queued(2), timeout=5)
            c = asyncio.create_task(enter("C"))
            await asyncio.wait_for(queued(3), timeout=5)
            b_loop.call_soon_threadsafe(time.sleep, 0.5)  # B stalls, silent past waiter_timeout
            await asyncio.sleep(0.05)
        await asyncio.wait_for(c, timeout=2)
        b_thread.join(timeout=5)
    finally:
        b_loop.close()
        await holder.close()
        await observer.close()

    assert order == ["C", "B"]
    assert "queueing again at the end" in caplog.text


# -- 5. independence ---------------------------------------------------------------------------


async def test_different_conversations_do_not_wait_for_each_other(
    make_store: Callable[..., AtomicRedisLockStore],
) -> None:
    async with make_store().lock("5511999990003"):
        started = time.monotonic()
        async with make_store().lock("5511999990004"):
            pass

    assert time.monotonic() - started < 0.5


# -- robustness ----------------------------------------------------------------------------------


async def test_a_waiter_cancelled_while_queued_does_not_hold_up_the_ones_behind_it(
    make_store: Callable[..., AtomicRedisLockStore],
) -> None:
    # waiter_timeout is long: the next one must go because the cancelled one left, not expired.
    holder = make_store(waiter_timeout=30)
    async with holder.lock("5511999990005"):
        cancelled = asyncio.create_task(_enter(make_store(waiter_timeout=30), "5511999990005"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        behind = asyncio.create_task(_enter(make_store(waiter_timeout=30), "5511999990005"))
        await asyncio.sleep(0.05)

    await asyncio.wait_for(behind, timeout=1)


async def test_a_cancelled_waiter_is_cancelled_wherever_it_was_and_leaves_nothing_behind(
    redis_server: RedisServer, prefix: str, make_store: Callable[..., AtomicRedisLockStore]
) -> None:
    # redis-py 4.6 swallows a cancellation that lands while it checks a pooled connection; cold
    # clients and delays of a few milliseconds hit that window in about one try out of ten.
    conversation = "5511999990012"
    observer = redis.Redis(host=redis_server.host, port=redis_server.port)
    swallowed = 0
    async with make_store().lock(conversation):
        for attempt in range(60):
            waiter = asyncio.create_task(_enter(make_store(), conversation))
            await asyncio.sleep((attempt % 6) * 0.0006)
            waiter.cancel()
            try:
                await waiter
                swallowed += 1
            except asyncio.CancelledError:
                pass
        # Only the holder is left in the queue: no cancelled waiter left a ticket behind.
        left = observer.zcard(f"{prefix}:queue:{conversation}")
    observer.close()

    assert swallowed == 0
    assert left == 1


async def _enter(store: AtomicRedisLockStore, conversation_id: str) -> None:
    async with store.lock(conversation_id):
        pass


async def test_acquire_timeout_raises_rasas_lock_error(
    make_store: Callable[..., AtomicRedisLockStore],
) -> None:
    async with make_store().lock("5511999990006"):
        with pytest.raises(LockError, match=r"within 0\.2 s"):
            await _enter(make_store(acquire_timeout=0.2), "5511999990006")


async def test_an_unreachable_redis_is_a_lock_error() -> None:
    store = AtomicRedisLockStore(url="127.0.0.1", port=1, socket_timeout=1)

    with pytest.raises(LockError, match=re.escape("127.0.0.1:1")):
        await _enter(store, "5511999990007")


async def test_the_password_appears_in_no_repr_error_or_log(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-pa55word-91c2"
    caplog.set_level(logging.DEBUG)
    by_keywords = AtomicRedisLockStore(
        url=redis_server.host, port=redis_server.port, password=secret
    )
    by_url = AtomicRedisLockStore(redis_url=f"redis://user:{secret}@{redis_server.host}:1/0")

    texts = [repr(by_keywords), repr(by_url), repr(by_url.settings), caplog.text]
    for store in (by_keywords, by_url):
        # The test Redis has no password (or the url's port is closed): both fail to connect.
        with pytest.raises(LockError) as failure:
            await _enter(store, "5511999990008")
        texts.append(str(failure.value))
        await store.close()

    assert all(secret not in text for text in [*texts, caplog.text])
    assert "user:***@" in repr(by_url)


def test_rasas_ticket_methods_say_to_use_lock_instead() -> None:
    store = AtomicRedisLockStore()

    with pytest.raises(NotImplementedError, match=re.escape("lock_store.lock")):
        store.issue_ticket("5511999990009")


def test_a_misspelt_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="lock_lifetim"):
        AtomicRedisLockStore(lock_lifetim=10)


# -- 6. loading through Rasa ---------------------------------------------------------------------


def test_rasa_builds_it_from_an_endpoint_config(prefix: str) -> None:
    config = EndpointConfig.from_dict(
        {
            "type": "zapi_channel.lockstore.AtomicRedisLockStore",
            "url": "localhost",
            "port": 6379,
            "key_prefix": prefix,
        }
    )

    store = LockStore.create(config)

    assert isinstance(store, AtomicRedisLockStore)
    assert (store.settings.host, store.settings.port, store.key_prefix) == (
        "localhost",
        6379,
        prefix,
    )


def test_a_url_with_a_scheme_is_the_whole_location() -> None:
    config = EndpointConfig.from_dict(
        {
            "type": "zapi_channel.lockstore.AtomicRedisLockStore",
            "url": "rediss://:pw-7d1e@redis.internal:6380/2",
        }
    )

    store = LockStore.create(config)

    assert store.settings.redis_url == "rediss://:pw-7d1e@redis.internal:6380/2"
    assert repr(store) == (
        "AtomicRedisLockStore(rediss://:***@redis.internal:6380/2, key_prefix='rasa-lock')"
    )


async def test_a_store_from_endpoints_yml_locks_across_instances(
    tmp_path: Path, redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rasa.core.utils import AvailableEndpoints

    monkeypatch.setenv("TEST_REDIS_PORT", str(redis_server.port))
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(
        textwrap.dedent(
            f"""
            lock_store:
              type: zapi_channel.lockstore.AtomicRedisLockStore
              url: {redis_server.host}
              port: ${{TEST_REDIS_PORT}}
              db: 0
              key_prefix: {prefix}
              lock_lifetime: 5
              poll_interval: 0.01
            """
        )
    )
    read = AvailableEndpoints.read_endpoints(str(endpoints)).lock_store
    one, two = LockStore.create(read), LockStore.create(read)

    async with one.lock("5511999990010"):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_enter(two, "5511999990010"), timeout=0.2)
    await asyncio.wait_for(_enter(two, "5511999990010"), timeout=1)

    assert isinstance(one, AtomicRedisLockStore)
    assert one.settings == RedisLockSettings(
        host=redis_server.host,
        port=redis_server.port,
        db=0,
        key_prefix=prefix,
        lock_lifetime=5,
        poll_interval=0.01,
    )
    await one.close()
    await two.close()

"""One SQLite file used from asyncio: its batches (group commit), and a thread that runs them.

sqlite3 blocks, and a commit that reaches the disk (``synchronous=FULL``) takes a fraction of a
millisecond: run on the event loop, it would stall every other webhook. So every operation is a
function of the connection, queued to one thread. The thread runs whatever is queued together in
one transaction and one commit (group commit), so a burst of webhooks costs one disk flush, not
one each. An operation that raises (a bug, not the file) has its batch rolled back and run again
one operation per transaction, so that it fails alone.

:class:`Batches` is that discipline on its own, the part shared with the writer process of the
running bot (:mod:`zapi_channel.delivery.writer`), which runs the same batches in a process of
its own so that their Python does not take turns with the event loop for one GIL. The thread
here serves the command line, which opens the file without the bot's lock.

Only what someone waits for waits for the disk. A batch holding an awaited operation (a webhook's
message, say) commits with the connection's own ``synchronous`` setting, FULL for the state file:
the disk has it before anyone hears back. A batch made only of :meth:`SqliteThread.submit`
operations, which nobody waits for, commits with ``synchronous=NORMAL``: it is in the WAL, so a
killed process keeps it, and the next flushed commit takes it to the disk (a flush covers the
whole WAL file). Only a power cut in between can lose it, which is why only operations whose loss
costs little are submitted: a message marked as answered or an answer marked as sent (lost, the
answer goes out again at the next start), expired state purged (purged again), a sent message's
record (lost, a later failure report for that message is logged as not one of ours instead of
being journaled).

The WAL is checkpointed by the owner (thread or writer process), not by SQLite's automatic
checkpoint. That one runs inside the commit that crosses its threshold, and a checkpoint flushes the
disk twice: every webhook of that batch waited for it (a few milliseconds, against under one for a
plain commit). The owner checkpoints between batches instead, once enough commits have gone by and
nothing is queued, and so while no one waits; under a load that never leaves it idle, after twice as
many commits all the same, so that the WAL stays bounded (and each checkpoint short: it copies back
every page written since the last one).

Failures of the file itself (disk full, read-only, I/O errors) fail every operation of the batch
with :class:`~zapi_channel.errors.StateUnavailable`, and nothing of that batch is kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

from zapi_channel.errors import StateUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]
#: Where an operation's result goes: an awaiting coroutine, a blocked thread, or (a ``str``
#: naming what it did) nowhere but the log if it fails.
Sink = Union["asyncio.Future[Any]", "concurrent.futures.Future[Any]", str]
_Item = Tuple[Operation, Sink]
#: An operation's outcome: whether it succeeded, and its result or its exception.
Outcome = Tuple[bool, Any]
#: Told of every batch run: seconds it took (statements and commit), operations, awaited.
BatchObserver = Callable[[float, int, bool], None]
#: Told of every checkpoint of the WAL: seconds it took.
CheckpointObserver = Callable[[float], None]

#: Operations that share one commit at most: a bound on how long one batch holds the others.
MAX_BATCH = 512
#: Commits between two checkpoints of the WAL when the thread is idle; twice as many at most
#: when it never is. SQLite's own default is every 1,000 pages; a commit of a webhook
#: writes a few.
CHECKPOINT_EVERY = 250


class Batches:
    """Runs batches of operations on one connection, one transaction and one commit each.

    What both owners of a connection share, the thread here and the writer process
    (:mod:`zapi_channel.delivery.writer`): group commit, the ``synchronous`` level of a batch
    that nobody waits for, a failing operation isolated from its batch, and the checkpoints.
    """

    def __init__(
        self, connection: sqlite3.Connection, *, where: str, checkpoint_every: int
    ) -> None:
        self.connection = connection
        self.where = where
        self.checkpoint_every = checkpoint_every
        #: Commits so far: with group commit, fewer than the operations run.
        self.commits = 0
        #: Of those, the ones nobody waited for, made without waiting for the disk.
        self.unflushed_commits = 0
        #: Checkpoints of the WAL run so far.
        self.checkpoints = 0
        self._since_checkpoint = 0
        try:
            # The owner checkpoints (see the module's docstring): SQLite's own would run
            # inside a commit that someone waits for.
            connection.execute("PRAGMA wal_autocheckpoint=0")
            # The connection's own setting, and the one in force.
            self._synchronous = int(connection.execute("PRAGMA synchronous").fetchone()[0])
        except sqlite3.Error as exc:
            raise StateUnavailable(f"{where}: {exc}", where=where) from exc
        self._current_synchronous = self._synchronous

    def __repr__(self) -> str:
        return f"Batches({self.where!r})"

    def run(self, operations: Sequence[Operation], awaited: bool) -> List[Outcome]:
        """Each operation's outcome, in order; ``awaited``: someone waits for one of them."""
        connection = self.connection
        outcomes: List[Outcome] = []
        try:
            # NORMAL is 1; a connection already below it (OFF) stays as it is.
            self._set_synchronous(self._synchronous if awaited else min(1, self._synchronous))
            connection.execute("BEGIN IMMEDIATE")
            for operation in operations:
                try:
                    result = operation(connection)
                except sqlite3.OperationalError:
                    # The file itself failed (full, read-only, I/O): the whole batch goes.
                    raise
                except Exception as exc:  # noqa: BLE001 - one operation's own failure
                    connection.execute("ROLLBACK")
                    if len(operations) == 1:
                        return [(False, exc)]
                    # Which one, and only that one, fails: each again on its own.
                    return [self.run([one], awaited)[0] for one in operations]
                outcomes.append((True, result))
            connection.execute("COMMIT")
            self.commits += 1
            self._since_checkpoint += 1
            if not awaited:
                self.unflushed_commits += 1
        except sqlite3.Error as exc:
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.debug("Rollback after a failed batch failed too", exc_info=True)
            failure = StateUnavailable(f"{self.where}: {exc}", where=self.where)
            failure.__cause__ = exc
            return [(False, failure)] * len(operations)
        return outcomes

    def maybe_checkpoint(self, more_waiting: bool) -> Optional[float]:
        """Checkpoint the WAL if it is time; the seconds it took, None if it did not run.

        ``more_waiting``: a next batch is queued already, so only a WAL grown past twice the
        interval is checkpointed now.
        """
        since = self._since_checkpoint
        if since < self.checkpoint_every:
            return None
        if since < 2 * self.checkpoint_every and more_waiting:
            return None  # someone is waiting for the next batch: not now
        self._since_checkpoint = 0
        started = time.perf_counter()
        try:
            # PASSIVE: never waits for a reader (the command line's connection); what a reader
            # still needs is checkpointed the next time.
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            # Nothing is lost: the WAL keeps every commit until a checkpoint succeeds.
            logger.warning("Could not checkpoint %s: %s", self.where, exc)
            return None
        self.checkpoints += 1
        return time.perf_counter() - started

    def _set_synchronous(self, level: int) -> None:
        if level != self._current_synchronous:
            self.connection.execute(f"PRAGMA synchronous={level}")
            self._current_synchronous = level


class SqliteThread:
    """The thread that owns ``connect()``'s connection. Build it, then :meth:`call` or :meth:`run`.

    ``connect`` runs in the thread (a sqlite3 connection belongs to its thread); whatever it
    raises is raised by the constructor.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        where: str,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.where = where
        self.checkpoint_every = checkpoint_every
        #: Optional observers of the batches and checkpoints (the benchmark's trace).
        self.on_batch: Optional[BatchObserver] = None
        self.on_checkpoint: Optional[CheckpointObserver] = None
        # Lists of operations; None stops the thread.
        self._queue: queue.SimpleQueue[Optional[List[_Item]]] = queue.SimpleQueue()
        # What the event loop queued in its current iteration, handed over in one piece: one
        # wake-up of the thread per loop iteration rather than one per webhook.
        self._pending: List[_Item] = []
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._closed = False
        self._batches: Optional[Batches] = None
        self._thread = threading.Thread(
            target=self._main, args=(connect,), name="zapi-channel-state", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __repr__(self) -> str:
        return f"SqliteThread({self.where!r})"

    @property
    def commits(self) -> int:
        """Commits so far: with group commit, fewer than the operations run."""
        return self._batches.commits if self._batches else 0

    @property
    def unflushed_commits(self) -> int:
        """Of those, the ones nobody waited for, made without waiting for the disk."""
        return self._batches.unflushed_commits if self._batches else 0

    @property
    def checkpoints(self) -> int:
        """Checkpoints of the WAL the thread ran."""
        return self._batches.checkpoints if self._batches else 0

    async def call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` in the thread, inside the next commit; its result once committed."""
        if self._closed:
            raise StateUnavailable(f"{self.where} is closed", where=self.where)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._enqueue(loop, (operation, future))
        return await future

    def _enqueue(self, loop: asyncio.AbstractEventLoop, item: _Item) -> None:
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append(item)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._queue.put(batch)

    def submit(self, operation: Operation, *, what: str) -> None:
        """Queue ``operation`` without waiting for it: it commits with the next batch.

        Operations run in the order they are queued, so one submitted before a later
        :meth:`call` is committed by the time that call returns. A failure is logged (``what``
        says what was lost).
        """
        if self._closed:
            logger.error("Could not %s: %s is closed", what, self.where)
            return
        self._enqueue(asyncio.get_running_loop(), (operation, what))

    def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`call` for code that has no event loop (start-up, the command line)."""
        if self._closed:
            raise StateUnavailable(f"{self.where} is closed", where=self.where)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put([(operation, future)])
        return future.result()

    def close(self) -> None:
        """Finish what is queued, then close the connection and end the thread."""
        if not self._closed:
            self._closed = True
            self._flush()  # a loop iteration's last operations are not left behind
            self._queue.put(None)
        self._thread.join()

    # -- the thread ---------------------------------------------------------------------------

    def _main(self, connect: Callable[[], sqlite3.Connection]) -> None:
        try:
            connection = connect()
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor, raised there
            self._error = exc
            self._ready.set()
            return
        try:
            batches = Batches(connection, where=self.where, checkpoint_every=self.checkpoint_every)
        except StateUnavailable as exc:
            connection.close()
            self._error = exc
            self._ready.set()
            return
        self._batches = batches
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    break
                batch = list(first)
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.extend(more)
                self._run(batches, batch)
                if stop:
                    break
                took = batches.maybe_checkpoint(not self._queue.empty())
                if took is not None and self.on_checkpoint is not None:
                    self.on_checkpoint(took)
        finally:
            connection.close()
            # Whatever arrived after the stop fails rather than waiting forever.
            leftovers: List[Tuple[Sink, bool, Any]] = []
            while True:
                try:
                    items = self._queue.get_nowait()
                except queue.Empty:
                    break
                for _, sink in items or []:
                    closed = StateUnavailable(f"{self.where} is closed", where=self.where)
                    leftovers.append((sink, False, closed))
            settle(leftovers)

    def _run(self, batches: Batches, batch: List[_Item]) -> None:
        awaited = any(not isinstance(sink, str) for _, sink in batch)
        started = time.perf_counter()
        outcomes = batches.run([operation for operation, _ in batch], awaited)
        if self.on_batch is not None:
            self.on_batch(time.perf_counter() - started, len(batch), awaited)
        settle([(sink, ok, value) for (_, sink), (ok, value) in zip(batch, outcomes)])


def settle(outcomes: Sequence[Tuple[Sink, bool, Any]]) -> None:
    """Hand each outcome to its sink, from any thread; one wake-up of each event loop."""
    by_loop: Dict[asyncio.AbstractEventLoop, List[Tuple[asyncio.Future[Any], bool, Any]]] = {}
    for sink, ok, value in outcomes:
        if isinstance(sink, str):
            if not ok:
                logger.error("Could not %s: %s", sink, value)
        elif isinstance(sink, concurrent.futures.Future):
            if ok:
                sink.set_result(value)
            else:
                sink.set_exception(value)
        else:
            by_loop.setdefault(sink.get_loop(), []).append((sink, ok, value))
    for loop, results in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, results)
        except RuntimeError:
            # The loop was closed: nobody is waiting for these any more.
            logger.debug("Dropped %d result(s) for a closed event loop", len(results))


def _resolve(results: List[Tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():  # the caller was cancelled; the operation ran all the same
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


__all__ = ["CHECKPOINT_EVERY", "MAX_BATCH", "Batches", "SqliteThread", "settle"]

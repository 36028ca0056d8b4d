"""One SQLite file, used from asyncio through one thread that owns the connection.

sqlite3 blocks, and a commit that reaches the disk (``synchronous=FULL``) takes a fraction of a
millisecond: run on the event loop, it would stall every other webhook. So every operation is a
function of the connection, queued to one thread. The thread runs whatever is queued together in
one transaction and one commit (group commit), so a burst of webhooks costs one disk flush, not
one each; each operation still runs inside its own savepoint, and a bug in one fails that one only.

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
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

from zapi_channel.errors import StateUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]
_Sink = Union["asyncio.Future[Any]", "concurrent.futures.Future[Any]"]

#: Operations that share one commit at most: a bound on how long one batch holds the others.
MAX_BATCH = 512


class SqliteThread:
    """The thread that owns ``connect()``'s connection. Build it, then :meth:`call` or :meth:`run`.

    ``connect`` runs in the thread (a sqlite3 connection belongs to its thread); whatever it
    raises is raised by the constructor.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, where: str) -> None:
        self.where = where
        self._queue: queue.SimpleQueue[Optional[Tuple[Operation, _Sink]]] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._closed = False
        #: Commits so far: with group commit, fewer than the operations run.
        self.commits = 0
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

    async def call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` in the thread, inside the next commit; its result once committed."""
        if self._closed:
            raise StateUnavailable(f"{self.where} is closed", where=self.where)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((operation, future))
        return await future

    def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`call` for code that has no event loop (start-up, the command line)."""
        if self._closed:
            raise StateUnavailable(f"{self.where} is closed", where=self.where)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((operation, future))
        return future.result()

    def close(self) -> None:
        """Finish what is queued, then close the connection and end the thread."""
        if not self._closed:
            self._closed = True
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
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._settle(self._execute(connection, batch))
                if stop:
                    break
        finally:
            connection.close()
            # Whatever arrived after the stop fails rather than waiting forever.
            leftovers: List[Tuple[_Sink, bool, Any]] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    closed = StateUnavailable(f"{self.where} is closed", where=self.where)
                    leftovers.append((item[1], False, closed))
            self._settle(leftovers)

    def _execute(
        self, connection: sqlite3.Connection, batch: List[Tuple[Operation, _Sink]]
    ) -> List[Tuple[_Sink, bool, Any]]:
        outcomes: List[Tuple[_Sink, bool, Any]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for operation, sink in batch:
                connection.execute("SAVEPOINT op")
                try:
                    result = operation(connection)
                except sqlite3.OperationalError:
                    # The file itself failed (full, read-only, I/O): the whole batch goes.
                    raise
                except Exception as exc:  # noqa: BLE001 - this operation's own failure, kept for it
                    connection.execute("ROLLBACK TO op")
                    connection.execute("RELEASE op")
                    outcomes.append((sink, False, exc))
                    continue
                connection.execute("RELEASE op")
                outcomes.append((sink, True, result))
            connection.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.debug("Rollback after a failed batch failed too", exc_info=True)
            failure = StateUnavailable(f"{self.where}: {exc}", where=self.where)
            failure.__cause__ = exc
            return [(sink, False, failure) for _, sink in batch]
        return outcomes

    def _settle(self, outcomes: List[Tuple[_Sink, bool, Any]]) -> None:
        # One wake-up of each event loop per batch, not one per operation.
        by_loop: Dict[asyncio.AbstractEventLoop, List[Tuple[asyncio.Future[Any], bool, Any]]] = {}
        for sink, ok, value in outcomes:
            if isinstance(sink, concurrent.futures.Future):
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


__all__ = ["MAX_BATCH", "SqliteThread"]

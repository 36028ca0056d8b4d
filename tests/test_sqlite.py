"""The state file's thread: which commits wait for the disk, and when the WAL is checkpointed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Iterator, List

import pytest

from zapi_channel.delivery.sqlite import SqliteThread

FULL, NORMAL = 2, 1


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY)")
    return connection


@pytest.fixture
def thread(tmp_path: Path) -> Iterator[SqliteThread]:
    made = SqliteThread(lambda: _connect(tmp_path / "state.db"), where="state.db")
    yield made
    made.close()


def _synchronous(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA synchronous").fetchone()[0])


async def test_a_batch_nobody_waits_for_commits_without_waiting_for_the_disk(
    thread: SqliteThread,
) -> None:
    seen: List[int] = []
    thread.submit(lambda c: seen.append(_synchronous(c)), what="note the setting")
    # Queued in a later loop iteration, so in a batch of its own.
    await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert seen == [NORMAL]
    assert thread.unflushed_commits == 1
    # Whoever waits gets the connection's own setting back.
    assert await thread.call(_synchronous) == FULL
    assert thread.unflushed_commits == 1


async def test_a_batch_with_one_awaited_operation_waits_for_the_disk_for_all(
    thread: SqliteThread,
) -> None:
    seen: List[int] = []
    # The same loop iteration: one batch, one commit.
    thread.submit(lambda c: seen.append(_synchronous(c)), what="note the setting")
    assert await thread.call(_synchronous) == FULL
    assert seen == [FULL]
    assert thread.unflushed_commits == 0


async def test_an_unflushed_commit_is_kept_by_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    made = SqliteThread(lambda: _connect(path), where="state.db")
    made.submit(lambda c: c.execute("INSERT INTO t VALUES (1)"), what="insert")
    await asyncio.sleep(0.05)
    # Read by another connection while the thread's is still open: it is committed, not queued.
    with sqlite3.connect(str(path)) as other:
        assert other.execute("SELECT k FROM t").fetchall() == [(1,)]
    made.close()


def test_sqlite_does_not_checkpoint_inside_a_commit(thread: SqliteThread) -> None:
    assert thread.run(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0


def test_an_idle_thread_checkpoints_after_enough_commits(tmp_path: Path) -> None:
    made = SqliteThread(lambda: _connect(tmp_path / "s.db"), where="s.db", checkpoint_every=5)
    try:
        for k in range(4):
            made.run(lambda c, k=k: c.execute("INSERT INTO t VALUES (?)", (k,)))
        assert made.checkpoints == 0
        made.run(lambda c: c.execute("INSERT INTO t VALUES (99)"))
        # The checkpoint runs after the batch has been answered: wait for the next one.
        made.run(lambda c: None)
        assert made.checkpoints == 1
        # The rows are in the database file itself: a copy of it without its WAL has them.
        copy = tmp_path / "copy.db"
        copy.write_bytes((tmp_path / "s.db").read_bytes())
        with closing(sqlite3.connect(str(copy))) as alone:
            assert alone.execute("SELECT count(*) FROM t").fetchone()[0] == 5
    finally:
        made.close()


def test_a_thread_that_is_never_idle_still_checkpoints(tmp_path: Path) -> None:
    made = SqliteThread(lambda: _connect(tmp_path / "s.db"), where="s.db", checkpoint_every=5)
    seen: List[int] = []
    finished = threading.Event()

    def step(connection: sqlite3.Connection, left: int) -> None:
        seen.append(made.checkpoints)
        connection.execute("INSERT INTO t VALUES (?)", (left,))
        if left:
            # The next batch is queued before this one commits: the thread never finds its
            # queue empty, as under a load that never lets up.
            made._queue.put([(lambda c: step(c, left - 1), "step")])
        else:
            finished.set()

    try:
        made._queue.put([(lambda c: step(c, 24), "step")])
        assert finished.wait(10)
        # 25 commits, one each: a checkpoint after every 10th, none before it.
        assert seen == [0] * 10 + [1] * 10 + [2] * 5
    finally:
        made.close()

"""The state file's writer process: the thread's promises, across a process boundary, and what
happens when that process dies, or the bot does."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest

from tests import sql_ops
from zapi_channel.delivery.writer import NICENESS, SqliteProcess
from zapi_channel.errors import StateCorrupt, StateUnavailable


def connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY)")
    return connection


def refuse(path: str) -> sqlite3.Connection:
    raise StateCorrupt(f"The state file {path} is damaged. Move it aside.", where=path)


def insert(db: sqlite3.Connection, k: int) -> int:
    return int(db.execute("INSERT INTO t (k) VALUES (?)", (k,)).lastrowid or 0)


def wait_forever(db: sqlite3.Connection) -> None:
    time.sleep(3600)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped by a parent that is gone) counts as gone.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[SqliteProcess]:
    made = SqliteProcess(partial(connect, str(tmp_path / "w.db")), where="w.db")
    made.restart_interval = 0.0
    yield made
    made.close()


async def test_results_failures_and_order_are_the_threads(writer: SqliteProcess) -> None:
    writer.submit(partial(insert, k=1), what="insert 1")  # before the call: committed by then
    results = await asyncio.gather(
        writer.call(partial(insert, k=2)),
        writer.call(partial(insert, k=2)),  # the same key: this one alone fails
        writer.call(partial(sql_ops.rows, sql="SELECT k FROM t ORDER BY k")),
        return_exceptions=True,
    )
    assert results[0] == 2
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert results[2] == [(1,), (2,)]
    assert writer.run(partial(sql_ops.value, sql="SELECT count(*) FROM t")) == 2
    assert writer.commits >= 1


async def test_an_operation_that_cannot_cross_fails_at_once_with_what_to_do(
    writer: SqliteProcess,
) -> None:
    with pytest.raises(TypeError, match="module-level function"):
        await writer.call(lambda db: None)
    assert await writer.call(sql_ops.nothing) is None  # the writer goes on


def test_what_the_connection_raises_is_raised_by_the_constructor(tmp_path: Path) -> None:
    with pytest.raises(StateCorrupt, match="Move it aside") as refused:
        SqliteProcess(partial(refuse, str(tmp_path / "w.db")), where="w.db")
    assert refused.value.where.endswith("w.db")


async def test_a_writer_that_dies_fails_what_it_held_and_is_started_again(
    writer: SqliteProcess, caplog: pytest.LogCaptureFixture
) -> None:
    restarted = asyncio.Event()
    writer.on_restart = restarted.set
    first = writer.pid
    assert first is not None
    stuck = asyncio.ensure_future(writer.call(wait_forever))
    await asyncio.sleep(0.2)
    os.kill(first, signal.SIGKILL)
    with pytest.raises(StateUnavailable, match="ended"):
        await asyncio.wait_for(stuck, 5)
    await asyncio.wait_for(restarted.wait(), 10)
    assert writer.restarts == 1 and writer.pid not in (None, first)
    assert await writer.call(partial(insert, k=7)) == 7
    assert "ended on its own" in caplog.text


async def test_closing_ends_the_writer(tmp_path: Path) -> None:
    made = SqliteProcess(partial(connect, str(tmp_path / "w.db")), where="w.db")
    await made.call(partial(insert, k=1))
    pid = made.pid
    assert pid is not None
    await asyncio.get_running_loop().run_in_executor(None, made.close)
    assert not alive(pid)
    with pytest.raises(StateUnavailable, match="closed"):
        await made.call(sql_ops.nothing)


def test_the_writer_yields_the_cpu_to_the_bot(writer: SqliteProcess) -> None:
    # Lower priority than the bot's (a higher nice value), by NICENESS or up to the maximum.
    pid = writer.pid
    assert pid is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    if ours >= 19:
        pytest.skip("the tests run at the lowest priority already")
    assert NICENESS > 0
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, ours + NICENESS)


def test_the_writer_stops_on_sigterm_after_its_batch(writer: SqliteProcess) -> None:
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    assert gone_within(pid, 5)


def test_the_writer_ends_when_the_bot_is_killed(tmp_path: Path) -> None:
    # A bot with a writer, killed with SIGKILL: nothing may be left behind.
    script = textwrap.dedent(
        f"""
        import sys, time
        from functools import partial
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from tests.test_writer import connect
        from zapi_channel.delivery.writer import SqliteProcess
        made = SqliteProcess(partial(connect, {str(tmp_path / "w.db")!r}), where="w.db")
        print(made.pid, flush=True)
        time.sleep(60)
        """
    )
    bot = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert bot.stdout is not None
        pid = int(bot.stdout.readline())
        assert alive(pid)
        bot.kill()
        bot.wait(5)
        assert gone_within(pid, 5)
    finally:
        if bot.poll() is None:
            bot.kill()

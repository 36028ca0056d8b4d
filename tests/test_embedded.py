"""The embedded delivery's own promises: one consumer per file, clear refusals, a full disk."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import List

import pytest

from tests import sql_ops
from tests.test_delivery_contract import message
from zapi_channel.delivery.embedded import SCHEMA_VERSION, EmbeddedDelivery, EmbeddedJournal
from zapi_channel.errors import StateCorrupt, StateInUse, StateUnavailable
from zapi_channel.inbound import InboundMessage


@pytest.fixture
async def delivery(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened = EmbeddedDelivery(tmp_path / "state.db")
    yield opened
    await opened.aclose()


async def test_a_second_consumer_of_the_file_is_refused_naming_the_first(
    delivery: EmbeddedDelivery, tmp_path: Path
) -> None:
    with pytest.raises(StateInUse) as refused:
        EmbeddedDelivery(tmp_path / "state.db")
    assert f"process {os.getpid()}" in str(refused.value)
    assert "redis_url" in str(refused.value) and "state_path" in str(refused.value)


async def test_the_file_is_free_again_once_closed(tmp_path: Path) -> None:
    first = EmbeddedDelivery(tmp_path / "state.db")
    await first.aclose()
    second = EmbeddedDelivery(tmp_path / "state.db")
    await second.aclose()


async def test_the_command_line_reads_the_journal_beside_a_running_bot(
    delivery: EmbeddedDelivery, tmp_path: Path
) -> None:
    await delivery.record("send-text", {"phone": "5511", "message": "a"}, "HTTP 503", "failed")
    journal = EmbeddedJournal.open(tmp_path / "state.db")
    try:
        [entry] = await journal.entries()
        assert await journal.remove([entry.id]) == 1
    finally:
        await journal.aclose()
    assert await delivery.entries() == []


async def test_the_file_is_private(delivery: EmbeddedDelivery, tmp_path: Path) -> None:
    mode = stat.S_IMODE((tmp_path / "state.db").stat().st_mode)
    assert mode == 0o600


def test_a_file_that_is_not_sqlite_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database, it only has its name" * 100)
    with pytest.raises(StateCorrupt) as refused:
        EmbeddedDelivery(path)
    assert str(path) in str(refused.value) and "move the file aside" in str(refused.value)
    assert path.read_bytes().startswith(b"this is not"), "the damaged file must be left as it was"


def test_a_damaged_page_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE filler (x TEXT)")
        db.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,) for _ in range(200)])
        db.commit()
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 2 + 64] = b"\xff" * 64  # scribble over a b-tree page header
    path.write_bytes(bytes(data))
    with pytest.raises(StateCorrupt):
        EmbeddedDelivery(path)


def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateCorrupt, match="newer zapi-channel"):
        EmbeddedDelivery(path)


def test_a_folder_that_cannot_be_created_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateUnavailable, match="state_path"):
        EmbeddedDelivery(tmp_path / "file" / "state.db")


async def test_a_full_disk_keeps_nothing_and_recovers(delivery: EmbeddedDelivery) -> None:
    big = message(1)
    big.metadata["padding"] = "x" * 64_000  # needs new pages: the "disk" has none left

    await delivery._thread.call(sql_ops.fill_the_disk)
    with pytest.raises(StateUnavailable, match="full"):
        await delivery.accept(big)
    assert (
        await delivery._thread.call(
            partial(sql_ops.value, sql="SELECT count(*) FROM messages WHERE message IS NOT NULL")
        )
        == 0
    )
    await delivery._thread.call(partial(sql_ops.execute, sql="PRAGMA max_page_count = 1073741823"))
    # Nothing of the refused message was kept, not even its dedup key: Z-API's resend is new.
    assert await delivery.accept(big) is True


async def test_a_burst_shares_commits(delivery: EmbeddedDelivery) -> None:
    before = delivery._thread.commits
    accepted = await asyncio.gather(
        *(delivery.accept(message(n, phone=f"55{n}")) for n in range(300))
    )
    assert all(accepted)
    assert delivery._thread.commits - before < 100


async def test_an_operation_that_fails_fails_alone(delivery: EmbeddedDelivery) -> None:
    results = await asyncio.gather(
        delivery._thread.call(sql_ops.write_then_fail),
        delivery.accept(message(1)),
        return_exceptions=True,
    )
    assert isinstance(results[0], ValueError) and results[1] is True
    rows = await delivery._thread.call(
        partial(sql_ops.rows, sql="SELECT key FROM messages ORDER BY key")
    )
    assert rows == [(message(1).dedup_key,)]  # the failed operation's write was undone


async def test_a_dedup_key_is_forgotten_after_its_window_and_a_purge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zapi_channel.delivery.embedded as embedded

    now = [1_000_000.0]
    monkeypatch.setattr(embedded.time, "time", lambda: now[0])
    delivery = EmbeddedDelivery(tmp_path / "state.db", dedup_ttl_seconds=600)
    try:
        seen = []

        async def handle(m: object) -> None:
            seen.append(m)

        await delivery.start(handle)
        assert await delivery.accept(message(1)) is True
        assert await delivery.workers.join(5)
        now[0] += 599
        await delivery._thread.call(partial(embedded._purge, now=now[0]))
        assert await delivery.accept(message(1)) is False
        now[0] += 2
        # Remembered until the next purge (once a minute) after its window.
        await delivery._thread.call(partial(embedded._purge, now=now[0]))
        assert await delivery.accept(message(1)) is True
    finally:
        await delivery.aclose()


async def test_kept_messages_are_stored_parsed_without_the_raw_body(
    delivery: EmbeddedDelivery,
) -> None:
    await delivery.accept(message(1))
    [row] = await delivery._thread.call(partial(sql_ops.rows, sql="SELECT message FROM messages"))
    kept = json.loads(row[0])
    assert "raw" not in kept and kept["sender_id"] == message(1).phone


async def test_a_message_kept_by_a_writer_that_died_before_answering_is_answered(
    delivery: EmbeddedDelivery,
) -> None:
    delivery._thread.restart_interval = 0.0
    seen: List[str] = []

    async def handle(m: InboundMessage) -> None:
        seen.append(m.message_id)

    await delivery.start(handle)
    lost = message(1)
    # The webhook's accept of it failed (a 503: Z-API sends it again), yet it is on the disk.
    with pytest.raises(StateUnavailable):
        await delivery._thread.call(
            partial(sql_ops.accept_then_die, values=lost.as_values(), ttl=600.0, now=time.time())
        )
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.05)
    assert seen == [lost.message_id]
    # Z-API's resend is a duplicate, not a second answer.
    assert await delivery.accept(lost) is False
    assert await delivery.accept(message(2)) is True
    assert await delivery.workers.join(5)
    assert seen == [lost.message_id, message(2).message_id]


async def test_a_restart_waits_for_the_dead_bots_writer_to_let_go(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await EmbeddedDelivery(path).aclose()
    dead = subprocess.Popen(["true"])
    dead.wait()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE owner SET pid = ?", (dead.pid,))
    # What a killed bot leaves: its writer still holds the lock, for a moment.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(1.0)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        delivery = EmbeddedDelivery(path)
        waited = time.monotonic() - started
        await delivery.aclose()
    finally:
        holder.kill()
        holder.wait()
    assert waited >= 0.5  # it did wait for the lock, not take a free one

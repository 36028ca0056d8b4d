"""Operations on a state file's connection, for tests: module-level, so that they can be pickled
to the writer process (zapi_channel.delivery.writer), which a lambda cannot."""

from __future__ import annotations

import sqlite3
from typing import Any, List


def nothing(db: sqlite3.Connection) -> None:
    """Queued after other operations, it returns once they are committed."""


def execute(db: sqlite3.Connection, sql: str) -> None:
    db.execute(sql)


def rows(db: sqlite3.Connection, sql: str) -> List[Any]:
    return db.execute(sql).fetchall()


def value(db: sqlite3.Connection, sql: str) -> Any:
    return db.execute(sql).fetchone()[0]


def fill_the_disk(db: sqlite3.Connection) -> None:
    """No page more than the file has now: the next write that needs one finds the disk full."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def write_then_fail(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO messages (key, message, expires) VALUES ('half-done', NULL, 0)")
    raise ValueError("a bug in one operation")


def accept_then_die(db: sqlite3.Connection, values: Any, ttl: float, now: float) -> None:
    """Keep a message as the webhook does, commit, and kill the writer before it can answer:
    a message that is on the disk while the bot was told it failed."""
    import os
    import signal

    from zapi_channel.delivery.embedded import _accept

    _accept(db, values, ttl, now)
    db.execute("COMMIT")
    os.kill(os.getpid(), signal.SIGKILL)

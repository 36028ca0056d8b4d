"""The default delivery: everything in one SQLite file (``state_path``), no other service.

The webhook's message is committed to the file's inbox, which is also where message ids are
remembered for deduplication, before Z-API gets its 200. The commit reaches the disk (WAL,
``synchronous=FULL``), so a message acknowledged to Z-API survives ``kill -9``, an OOM kill and a
power cut. It leaves the inbox when its turn is over. On start, whatever is still there is
answered first, in order, per customer; the sent markers make a turn cut short skip the answers
that already went out.

Those markers, and a message's mark as answered, are not waited for: they commit without waiting
for the disk (:mod:`zapi_channel.delivery.sqlite`), and reach it with the next commit that does.
A killed process keeps them all the same (they are in the WAL); only a power cut right after a
turn can lose them, and then that turn's answers go out again at the next start. A power cut
repeats an answer at worst; it never loses a message.

One process consumes a file. The first takes an exclusive ``flock`` on it for as long as it runs,
and a second ``rasa run`` on the same file refuses to start, naming the first one's pid (the
kernel drops the lock when a process dies, ``kill -9`` included, so a crash never leaves a stale
lock). Several instances share Redis instead (``redis_url``). The command line opens the file
without that lock: it only reads and edits the failed-sends journal.

The running bot writes the file from a process of its own (:mod:`zapi_channel.delivery.writer`),
so that SQLite's work, its Python included, runs beside the event loop rather than taking turns
with it for one GIL. That process inherits the lock, and holds it until it exits: a new bot
cannot start on the file while a dying one's writer still commits. When the bot that held the
file is gone, a new one waits for that writer to let go (``LOCK_WAIT_SECONDS`` at most) rather
than refusing to start. If the writer dies on its
own, the webhooks waiting for it answer 503 and it is started again; a message it committed
without being able to say so is read back from the inbox and answered (:meth:`_recover`).

Keep the file on a local disk: ``flock`` and SQLite's WAL mode are not reliable on network file
systems.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

from zapi_channel.delivery.base import (
    CHOICES_TTL_SECONDS,
    OUTGOING_TTL_SECONDS,
    FailedSend,
    TurnHandler,
    Turns,
    decode_message,
    encode_message,
    identified,
)
from zapi_channel.delivery.sqlite import SqliteThread
from zapi_channel.delivery.writer import SqliteProcess
from zapi_channel.errors import StateCorrupt, StateInUse, StateUnavailable
from zapi_channel.inbound import InboundMessage
from zapi_channel.outbound import Choice

logger = logging.getLogger(__name__)

#: Bumped when the tables change; a file from a newer version is refused, not misread.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS owner (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER, since REAL);
-- One row per message id seen: the inbox and the deduplication keys in one table, so that
-- keeping a message is one statement and answering it another. ``message`` is the parsed
-- message while it waits for its turn, NULL once answered; the row stays until ``expires``.
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    message TEXT,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sent (
    key TEXT NOT NULL, answer INTEGER NOT NULL, PRIMARY KEY (key, answer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS choices (
    phone TEXT PRIMARY KEY, choices TEXT NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID;
-- Every form (number, @lid) a customer was seen under, and the conversation it belongs to.
CREATE TABLE IF NOT EXISTS identities (
    form TEXT PRIMARY KEY, sender_id TEXT NOT NULL, since REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identities_sender ON identities (sender_id);
-- Conversations the shop's owner took over from the phone; until = 0: handed back.
CREATE TABLE IF NOT EXISTS handoffs (
    sender_id TEXT PRIMARY KEY, until REAL NOT NULL, since REAL NOT NULL
) WITHOUT ROWID;
-- What our sends created, by the messageId Z-API returned (echoes, delivery reports).
CREATE TABLE IF NOT EXISTS outgoing (
    message_id TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID;
-- Small facts of the channel: the WhatsApp connection as the last callback reported it.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failed_sends (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, entry TEXT NOT NULL
);
"""

#: How long a bot waits for the file's lock when the bot that held it is gone: its writer
#: process holds the lock until its last batch is committed, a moment after the bot's death.
LOCK_WAIT_SECONDS = 10.0

#: Answered rows remembered, so that a writer process that died cannot make them run again
#: (its last answered marks may be lost with it): far more than one batch holds.
RECENT_ANSWERS = 10_000

#: How often expired dedup keys and choices are purged.
PURGE_EVERY_SECONDS = 60.0


def _what_to_do(path: Path) -> str:
    return (
        f"Stop the bot, move the file aside (mv {path} {path}.broken) and start again: a new "
        "file is created. Messages it held that were not answered yet are lost; Z-API's "
        "redeliveries of recent ones may be answered again."
    )


class StateFile:
    """The SQLite file, opened and checked, behind its writer.

    ``consumer=True`` (the running bot) also takes the file's lock, and writes through a
    :class:`SqliteProcess`; the command line, through a :class:`SqliteThread`. See the module
    docstring.
    """

    def __init__(self, path: Path, *, consumer: bool) -> None:
        self.path = Path(path)
        self._lock_fd: Optional[int] = None
        if consumer:
            self._lock_fd = self._lock()
        where = str(self.path)
        connect = partial(open_state, self.path)
        self.thread: Union[SqliteThread, SqliteProcess]
        try:
            if consumer:
                # The running bot: its writes in a process of their own, off the event loop's
                # GIL (zapi_channel.delivery.writer), which holds the lock with it.
                assert self._lock_fd is not None
                self.thread = SqliteProcess(connect, where=where, keep_fds=(self._lock_fd,))
            else:
                self.thread = SqliteThread(connect, where=where)
        except BaseException:
            self._unlock()
            raise
        if consumer:
            self.thread.run(partial(_claim, pid=os.getpid()))

    def __repr__(self) -> str:
        return f"StateFile({str(self.path)!r})"

    def _lock(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # 0600: the file holds customers' messages and phone numbers.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateUnavailable(
                f"Cannot create or open the state file {self.path}: {exc.strerror}. Make its "
                "folder writable, or set state_path in the zapi_channel.ZApiInput block.",
                where=str(self.path),
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _owner_pid(self.path)
            if holder is not None and not _alive(holder) and _lock_within(fd, LOCK_WAIT_SECONDS):
                # The bot that held it is gone, and its writer process, which held the lock
                # with it, was finishing its last batch (a restart right after kill -9).
                return fd
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise StateInUse(
                f"The state file {self.path} is in use by {who} (another rasa run of this bot?). "
                "One process consumes one file: give each instance its own state_path, or run "
                "several instances with redis_url.",
                where=str(self.path),
            ) from None
        return fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def close(self) -> None:
        self.thread.close()
        self._unlock()


def open_state(path: Path) -> sqlite3.Connection:
    """The state file's connection, checked and set up; where it runs, in its thread or process."""
    where = str(path)
    try:
        connection = sqlite3.connect(where, isolation_level=None, check_same_thread=True)
    except sqlite3.Error as exc:
        raise StateUnavailable(f"Cannot open the state file {path}: {exc}", where=where) from exc
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateCorrupt(
                f"The state file {path} was written by a newer zapi-channel (schema "
                f"{version}, this one reads {SCHEMA_VERSION}): upgrade zapi-channel, or "
                "give this bot another state_path.",
                where=where,
            )
        check = connection.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StateCorrupt(
                f"The state file {path} is damaged ({check}). {_what_to_do(path)}",
                where=where,
            )
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit someone waits for is on the disk before they hear back (a power
        # cut keeps the webhook's message); the writer relaxes it for the others.
        connection.execute("PRAGMA synchronous=FULL")
        # The command line may hold the write lock for a moment while it edits the journal.
        connection.execute("PRAGMA busy_timeout=5000")
        connection.executescript(_SCHEMA)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.DatabaseError as exc:
        connection.close()
        if isinstance(exc, sqlite3.OperationalError):
            # Read-only, full, locked: the file may be fine, its place is not.
            raise StateUnavailable(
                f"Cannot write the state file {path}: {exc}", where=where
            ) from exc
        raise StateCorrupt(
            f"The state file {path} is not a readable SQLite database ({exc}). {_what_to_do(path)}",
            where=where,
        ) from exc
    except BaseException:
        connection.close()
        raise
    return connection


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _lock_within(fd: int, seconds: float) -> bool:
    """Take the exclusive lock on ``fd`` if it comes free within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue
        return True
    return False


def _owner_pid(path: Path) -> Optional[int]:
    """The pid the lock's holder wrote, read without waiting for anything."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
    except sqlite3.Error:
        return None
    try:
        row = connection.execute("SELECT pid FROM owner WHERE id = 1").fetchone()
        return int(row[0]) if row and row[0] else None
    except sqlite3.Error:
        return None
    finally:
        connection.close()


# -- operations, run in the thread ----------------------------------------------------------------
# Each takes the connection first, so that the thread can run it; functools.partial binds the rest.


def _claim(connection: sqlite3.Connection, pid: int) -> None:
    # The bot's pid, not the writer's: the one a second rasa run names when it refuses.
    connection.execute(
        "INSERT OR REPLACE INTO owner (id, pid, since) VALUES (1, ?, ?)", (pid, time.time())
    )
    _purge(connection, time.time())


def _purge(connection: sqlite3.Connection, now: float) -> None:
    # ``now`` is the bot's clock, as for _accept.
    # A message still waiting is kept whatever its age.
    connection.execute("DELETE FROM messages WHERE expires <= ? AND message IS NULL", (now,))
    connection.execute("DELETE FROM choices WHERE expires <= ?", (now,))
    connection.execute("DELETE FROM outgoing WHERE expires <= ?", (now,))
    # Markers are only read for messages still waiting, so the others go here rather than with
    # one more query per answered message.
    connection.execute(
        "DELETE FROM sent WHERE key NOT IN (SELECT key FROM messages WHERE message IS NOT NULL)"
    )


def _accept(
    connection: sqlite3.Connection, values: Tuple[Any, ...], ttl: float, now: float
) -> Optional[Tuple[int, Optional[str], List[str]]]:
    """The new message's place in the inbox, its conversation and its customer's forms (None
    and none for a group, its own conversation); None if seen in the window. The message
    crosses as :meth:`InboundMessage.as_values`; what comes back is what the bot applies to its
    own copy (:func:`~zapi_channel.delivery.base.identified`), a fraction of the message.

    ``now`` is the bot's clock, so that one clock decides when a dedup key expires.
    """
    message = InboundMessage.from_values(values)
    sender_id: Optional[str] = None
    linked: List[str] = []
    # Identity first, so that keeping the message is one statement. A duplicate's links are
    # the ones its first delivery made: linking them again changes nothing.
    if not message.metadata.get("is_group"):
        sender_id, linked = _identify(connection, message, now)
        message = identified(message, sender_id, linked)
    kept = connection.execute(
        "INSERT OR IGNORE INTO messages (key, message, expires) VALUES (?, ?, ?)",
        (message.dedup_key, encode_message(message), now + ttl),
    )
    if not kept.rowcount:
        return None
    return int(kept.lastrowid or 0), sender_id, linked


def _identify(
    connection: sqlite3.Connection, message: InboundMessage, now: float
) -> Tuple[str, List[str]]:
    """The conversation ``message``'s forms are linked to, and all its forms (delivery.base)."""
    forms = message.forms
    if len(forms) == 1 and message.lid is None:
        # The usual first message of a customer seen by number only: one statement decides.
        new = connection.execute(
            "INSERT OR IGNORE INTO identities (form, sender_id, since) VALUES (?, ?, ?)",
            (message.phone, message.phone, now),
        )
        if new.rowcount:
            return message.phone, [message.phone]
    marks = ", ".join("?" * len(forms))
    # The rows of these forms, and every other form of the conversations they belong to.
    rows = connection.execute(
        f"SELECT form, sender_id, since FROM identities WHERE form IN ({marks}) "  # noqa: S608
        f"OR sender_id IN (SELECT sender_id FROM identities WHERE form IN ({marks}))",
        (*forms, *forms),
    ).fetchall()
    mine = [(since, sender_id) for form, sender_id, since in rows if form in forms]
    since, sender_id = min(mine) if mine else (now, message.phone)
    linked = {form for form, owner, _ in rows if owner == sender_id}
    for form in forms:
        if form not in linked:
            # A new form of this customer, or one whose own conversation began later: both go
            # to the older conversation from now on.
            connection.execute(
                "INSERT OR REPLACE INTO identities (form, sender_id, since) VALUES (?, ?, ?)",
                (form, sender_id, since),
            )
    return sender_id, sorted(linked | set(forms))


def _find(connection: sqlite3.Connection, form: str) -> Optional[str]:
    row = connection.execute("SELECT sender_id FROM identities WHERE form = ?", (form,))
    found = row.fetchone()
    return str(found[0]) if found else None


def _remember_outgoing(connection: sqlite3.Connection, message_id: str, record: str) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO outgoing (message_id, record, expires) VALUES (?, ?, ?)",
        (message_id, record, time.time() + OUTGOING_TTL_SECONDS),
    )


def _outgoing(connection: sqlite3.Connection, message_id: str) -> Optional[str]:
    row = connection.execute(
        "SELECT record FROM outgoing WHERE message_id = ? AND expires > ?",
        (message_id, time.time()),
    ).fetchone()
    return str(row[0]) if row else None


def _pause(connection: sqlite3.Connection, sender_id: str, until: float) -> None:
    connection.execute(
        "INSERT INTO handoffs (sender_id, until, since) VALUES (?, ?, ?) "
        "ON CONFLICT (sender_id) DO UPDATE SET until = excluded.until",
        (sender_id, until, time.time()),
    )


def _handoff(connection: sqlite3.Connection, sender_id: str) -> Optional[float]:
    row = connection.execute("SELECT until FROM handoffs WHERE sender_id = ?", (sender_id,))
    found = row.fetchone()
    return float(found[0]) if found else None


def _end_handoff(connection: sqlite3.Connection, sender_id: str) -> None:
    connection.execute("DELETE FROM handoffs WHERE sender_id = ?", (sender_id,))


def _hand_back(connection: sqlite3.Connection, sender_id: str) -> bool:
    # Not deleted: the bot's next turn sees 0 and resumes the Rasa conversation itself.
    done = connection.execute(
        "UPDATE handoffs SET until = 0 WHERE sender_id = ? AND until > ?",
        (sender_id, time.time()),
    )
    return bool(done.rowcount)


def _set_meta(connection: sqlite3.Connection, key: str, value: str) -> None:
    connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _meta(connection: sqlite3.Connection, key: str) -> Optional[str]:
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return str(row[0]) if row else None


def _handoff_conversations(connection: sqlite3.Connection) -> List[str]:
    return [str(row[0]) for row in connection.execute("SELECT sender_id FROM handoffs")]


def _handoffs(connection: sqlite3.Connection) -> List[Tuple[str, float]]:
    rows = connection.execute(
        "SELECT sender_id, until FROM handoffs WHERE until > ? ORDER BY until", (time.time(),)
    )
    return [(str(sender_id), float(until)) for sender_id, until in rows]


def _kept(connection: sqlite3.Connection) -> List[Tuple[int, str]]:
    return list(
        connection.execute(
            "SELECT seq, message FROM messages WHERE message IS NOT NULL ORDER BY seq"
        )
    )


def _done(connection: sqlite3.Connection, seqs: Tuple[int, ...]) -> None:
    # The rows stay, without the message, as the deduplication keys.
    connection.executemany("UPDATE messages SET message = NULL WHERE seq = ?", [(s,) for s in seqs])


def _is_sent(connection: sqlite3.Connection, key: str, answer: int) -> bool:
    row = connection.execute("SELECT 1 FROM sent WHERE key = ? AND answer = ?", (key, answer))
    return row.fetchone() is not None


def _mark_sent(connection: sqlite3.Connection, key: str, answer: int) -> None:
    connection.execute("INSERT OR IGNORE INTO sent (key, answer) VALUES (?, ?)", (key, answer))


def _set_choices(connection: sqlite3.Connection, phone: str, choices: str) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO choices (phone, choices, expires) VALUES (?, ?, ?)",
        (phone, choices, time.time() + CHOICES_TTL_SECONDS),
    )


def _take_choices(connection: sqlite3.Connection, phone: str) -> Optional[str]:
    row = connection.execute(
        "SELECT choices FROM choices WHERE phone = ? AND expires > ?", (phone, time.time())
    ).fetchone()
    connection.execute("DELETE FROM choices WHERE phone = ?", (phone,))
    return str(row[0]) if row else None


def _phones_with_choices(connection: sqlite3.Connection) -> List[str]:
    return [row[0] for row in connection.execute("SELECT phone FROM choices")]


def _record(connection: sqlite3.Connection, entry: FailedSend) -> None:
    connection.execute(
        "INSERT INTO failed_sends (id, entry) VALUES (?, ?)", (entry.id, entry.to_json())
    )


def _entries(connection: sqlite3.Connection) -> List[str]:
    return [row[0] for row in connection.execute("SELECT entry FROM failed_sends ORDER BY seq")]


def _remove(connection: sqlite3.Connection, ids: List[str]) -> int:
    removed = 0
    for entry_id in ids:
        removed += connection.execute("DELETE FROM failed_sends WHERE id = ?", (entry_id,)).rowcount
    return removed


def _parse_entries(lines: Iterable[str]) -> List[FailedSend]:
    entries: List[FailedSend] = []
    for line in lines:
        try:
            entries.append(FailedSend.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def _connection_state(value: Optional[str]) -> Optional[Tuple[bool, float]]:
    try:
        data = json.loads(value) if value else None
        return (bool(data["connected"]), float(data["at"])) if data else None
    except (ValueError, TypeError, KeyError):
        return None


def _encode_choices(choices: List[Choice]) -> str:
    return json.dumps([[choice.title, choice.payload] for choice in choices], ensure_ascii=False)


def _decode_choices(text: Optional[str]) -> Optional[List[Choice]]:
    if not text:
        return None
    try:
        return [Choice(str(title), str(payload)) for title, payload in json.loads(text)]
    except (ValueError, TypeError):
        return None


class EmbeddedJournal:
    """The failed-sends journal in the state file; what the command line opens."""

    def __init__(self, file: StateFile) -> None:
        self._file = file

    @classmethod
    def open(cls, path: Path) -> EmbeddedJournal:
        return cls(StateFile(path, consumer=False))

    @property
    def where(self) -> str:
        return str(self._file.path)

    def __repr__(self) -> str:
        return f"EmbeddedJournal({self.where!r})"

    async def record(
        self, endpoint: str, body: Mapping[str, Any], error: str, outcome: str
    ) -> FailedSend:
        entry = FailedSend.new(endpoint, body, error, outcome)
        await self._file.thread.call(partial(_record, entry=entry))
        return entry

    async def entries(self) -> List[FailedSend]:
        return _parse_entries(await self._file.thread.call(_entries))

    async def remove(self, ids: Iterable[str]) -> int:
        doomed = list(dict.fromkeys(ids))
        return int(await self._file.thread.call(partial(_remove, ids=doomed)))

    async def handoffs(self) -> List[Tuple[str, float]]:
        return await self._file.thread.call(_handoffs)

    async def find_conversation(self, form: str) -> Optional[str]:
        return await self._file.thread.call(partial(_find, form=form))

    async def hand_back(self, conversation: str) -> bool:
        return await self._file.thread.call(partial(_hand_back, sender_id=conversation))

    async def set_whatsapp(self, connected: bool, at: float) -> None:
        value = json.dumps({"connected": connected, "at": at})
        await self._file.thread.call(partial(_set_meta, key="whatsapp", value=value))

    async def whatsapp(self) -> Optional[Tuple[bool, float]]:
        return _connection_state(await self._file.thread.call(partial(_meta, key="whatsapp")))

    async def aclose(self) -> None:
        # Joining the thread waits for what is still queued: not on the event loop.
        await asyncio.get_running_loop().run_in_executor(None, self._file.close)


class EmbeddedDelivery(EmbeddedJournal):
    """The :class:`~zapi_channel.delivery.base.Delivery` in one SQLite file (module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        dedup_ttl_seconds: float = 24 * 3600.0,
        max_concurrency: int = 8,
        merge_window: float = 0.0,
    ) -> None:
        super().__init__(StateFile(path, consumer=True))
        self.dedup_ttl_seconds = dedup_ttl_seconds
        self._turns = Turns(max_concurrency, self._finish, merge_window=merge_window)
        self._thread = self._file.thread
        if isinstance(self._thread, SqliteProcess):
            self._thread.on_restart = self._writer_restarted
        # Keys of the messages whose accept is on its way to the writer and back.
        self._accepting: Set[str] = set()
        # Rows answered lately, newest last: a writer that died may have lost their marks.
        self._recently_answered: Deque[int] = deque(maxlen=RECENT_ANSWERS)
        self._recovering: Optional[asyncio.Task[None]] = None
        # Accepted before start() read the inbox, or while stopping: run by start(), or kept.
        self._held: List[Tuple[int, InboundMessage]] = []
        self._stopping = False
        # Keys of the messages an earlier run left: only their sent markers can exist.
        self._resumed: Set[str] = set()
        # Where each message not answered yet sits in the inbox (its row id).
        self._seqs: Dict[str, int] = {}
        # Rows of messages answered in this loop iteration, marked in one statement at its end.
        self._answered: List[int] = []
        self._purged_at = time.monotonic()
        self._with_choices: Set[str] = set(self._thread.run(_phones_with_choices))
        self._held_by_humans: Set[str] = set(self._thread.run(_handoff_conversations))

    def __repr__(self) -> str:
        return f"EmbeddedDelivery({self.where!r})"

    @property
    def workers(self) -> Any:
        return self._turns.workers

    @property
    def pending(self) -> int:
        return self._turns.workers.pending + len(self._held)

    async def accept(self, message: InboundMessage) -> bool:
        key = message.dedup_key
        self._accepting.add(key)
        try:
            kept = await self._thread.call(
                partial(
                    _accept,
                    values=message.as_values(),
                    ttl=self.dedup_ttl_seconds,
                    now=time.time(),
                )
            )
        finally:
            self._accepting.discard(key)
        if kept is None:
            return False
        seq, sender_id, linked = kept
        if sender_id is not None:
            message = identified(message, sender_id, linked)
        self._seqs[key] = seq
        if self._stopping:
            return True  # kept in the file for the next start
        if self._turns.handler is None:
            self._held.append((seq, message))
        else:
            self._turns.submit(message)
        now = time.monotonic()
        if now - self._purged_at >= PURGE_EVERY_SECONDS:
            self._purged_at = now
            self._thread.submit(partial(_purge, now=time.time()), what="purge expired state")
        return True

    async def start(self, handler: TurnHandler) -> None:
        rows = await self._thread.call(_kept)
        last = rows[-1][0] if rows else 0
        resumed = 0
        for seq, text in rows:
            message = decode_message(text)
            if message is None:
                logger.warning("Skipped a damaged entry of the inbox in %s", self.where)
                self._thread.submit(partial(_done, seqs=(seq,)), what="drop a damaged inbox entry")
                continue
            self._resumed.add(message.dedup_key)
            self._seqs[message.dedup_key] = seq
            self._turns.submit(message)
            resumed += 1
        # Accepted while the inbox was being read, and not in what was read: after it, in order.
        for _, message in sorted((p for p in self._held if p[0] > last), key=lambda p: p[0]):
            self._turns.submit(message)
        self._held.clear()
        self._turns.handler = handler
        if resumed:
            logger.info(
                "Answering %d message(s) the previous run acknowledged and did not answer",
                resumed,
            )

    def _writer_restarted(self) -> None:
        # On the event loop, once a writer that died on its own runs again.
        task = asyncio.ensure_future(self._recover())
        self._recovering = task  # referenced until done, so that it is not collected

    async def _recover(self) -> None:
        """What a writer that died on its own may have left undone, done again.

        A message it committed and could not answer for was refused with a 503, and Z-API's
        resend of it is a duplicate now: it is in the inbox and nowhere else, so it is taken
        from there. Answered marks it had not committed are written again.
        """
        try:
            rows = await self._thread.call(_kept)
        except StateUnavailable:
            logger.exception("Could not read the inbox of %s again", self.where)
            return
        answered = set(self._recently_answered)
        unmarked: List[int] = []
        found = 0
        for seq, text in rows:
            if seq in answered:
                unmarked.append(seq)
                continue
            message = decode_message(text)
            if message is None:
                continue  # start() drops it at the next start
            key = message.dedup_key
            if key in self._seqs or key in self._accepting or self._turns.handler is None:
                continue  # running, on its way back, or read by start() still to come
            self._seqs[key] = seq
            self._turns.submit(message)
            found += 1
        if unmarked:
            self._thread.submit(
                partial(_done, seqs=tuple(unmarked)), what=f"mark {len(unmarked)} answered"
            )
        if found:
            logger.warning(
                "Answering %d message(s) that %s kept while its writer process died",
                found,
                self.where,
            )

    async def _finish(self, message: InboundMessage) -> None:
        # Not awaited: the next turn need not wait for this commit. Queued after the turn's sent
        # markers, it commits after them; if it never does, the next start runs the turn again,
        # skipping the answers it sent.
        key = message.dedup_key
        seq = self._seqs.pop(key, None)
        if seq is not None:
            if not self._answered:
                # The turns that end in this loop iteration share one statement.
                asyncio.get_running_loop().call_soon(self._mark_answered)
            self._answered.append(seq)
            self._recently_answered.append(seq)
        self._resumed.discard(key)

    def _mark_answered(self) -> None:
        if not self._answered:
            return  # aclose() marked them already
        seqs, self._answered = tuple(self._answered), []
        self._thread.submit(partial(_done, seqs=seqs), what=f"mark {len(seqs)} message(s) answered")

    async def aclose(self) -> None:
        self._mark_answered()  # the turns that just ended: before the file closes
        await super().aclose()

    async def stop(self, grace_seconds: float) -> List[InboundMessage]:
        self._stopping = True
        if self._turns.handler is None:
            self._held.clear()
            return []
        return await self._turns.stop(grace_seconds)

    async def remember_choices(self, phone: str, choices: List[Choice]) -> None:
        encoded = _encode_choices(choices)
        await self._thread.call(partial(_set_choices, phone=phone, choices=encoded))
        self._with_choices.add(phone)

    async def take_choices(self, phone: str) -> Optional[List[Choice]]:
        # Every turn asks; few customers were offered a menu. This process is the file's only
        # writer, so the set of those who were is exact, and the others cost no query.
        if phone not in self._with_choices:
            return None
        self._with_choices.discard(phone)
        return _decode_choices(await self._thread.call(partial(_take_choices, phone=phone)))

    async def already_sent(self, message_key: str, answer: int) -> bool:
        if message_key not in self._resumed:
            return False
        return bool(await self._thread.call(partial(_is_sent, key=message_key, answer=answer)))

    async def remember_outgoing(self, message_id: str, record: Mapping[str, Any]) -> None:
        encoded = json.dumps(dict(record), ensure_ascii=False)
        self._thread.submit(
            partial(_remember_outgoing, message_id=message_id, record=encoded),
            what=f"remember sent message {message_id}",
        )

    async def outgoing(self, message_id: str) -> Optional[Dict[str, Any]]:
        found = await self._thread.call(partial(_outgoing, message_id=message_id))
        try:
            return dict(json.loads(found)) if found else None
        except (ValueError, TypeError):
            return None

    async def pause(self, conversation: str, until: float) -> None:
        await self._thread.call(partial(_pause, sender_id=conversation, until=until))
        self._held_by_humans.add(conversation)

    async def handoff(self, conversation: str) -> Optional[float]:
        # Asked before every turn. Only this process starts a takeover (the command line only
        # ends one), so a conversation outside this set has none, and costs no query.
        if conversation not in self._held_by_humans:
            return None
        return await self._thread.call(partial(_handoff, sender_id=conversation))

    async def end_handoff(self, conversation: str) -> None:
        await self._thread.call(partial(_end_handoff, sender_id=conversation))
        self._held_by_humans.discard(conversation)

    async def mark_sent(self, message_key: str, answer: int) -> None:
        # Not awaited either: only a crash within the next commit, or a power cut before the
        # next one that reaches the disk, could repeat this answer.
        self._thread.submit(
            partial(_mark_sent, key=message_key, answer=answer),
            what=f"note answer {answer} to {message_key} as sent",
        )


__all__ = ["SCHEMA_VERSION", "EmbeddedDelivery", "EmbeddedJournal", "StateFile"]

"""The failed-sends journal: every answer Z-API finally did not take, kept for a person to act on.

An answer is never lost silently: when retries are exhausted (or the outcome is unknown, see
:mod:`zapi_channel.retry`), the request is appended here with the error, and logged at ERROR.
``zapi-channel failed list`` shows the journal and ``zapi-channel failed retry`` resends entries.

The default journal is a JSON Lines file (one entry per line, appended and fsynced, mode 0600);
with ``redis_url`` it is a Redis list shared by every instance (:class:`RedisJournal`). Entries
hold the request body (phone and message) and Z-API's error text with secrets removed; never a
token: the URL, which holds the instance token, is not part of an entry.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Protocol

from zapi_channel.credstore import atomic_write

#: The outcome of a send that was not confirmed.
FAILED = "failed"  # Z-API refused it or could not be reached: it was not sent
UNKNOWN = "unknown"  # the request went out and no answer came: it may have been sent


@dataclass(frozen=True)
class FailedSend:
    id: str
    at: str
    endpoint: str
    body: Dict[str, Any]
    error: str
    outcome: str

    @property
    def phone(self) -> str:
        return str(self.body.get("phone", ""))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FailedSend:
        return cls(
            id=str(data["id"]),
            at=str(data["at"]),
            endpoint=str(data["endpoint"]),
            body=dict(data.get("body") or {}),
            error=str(data.get("error", "")),
            outcome=str(data.get("outcome", FAILED)),
        )


class Journal(Protocol):
    """Where failed sends are kept. Methods are synchronous: call them from an executor."""

    @property
    def where(self) -> str: ...

    def record(
        self, endpoint: str, body: Mapping[str, Any], error: str, outcome: str
    ) -> FailedSend: ...

    def entries(self) -> List[FailedSend]: ...

    def remove(self, ids: Iterable[str]) -> int: ...


def _new_entry(endpoint: str, body: Mapping[str, Any], error: str, outcome: str) -> FailedSend:
    return FailedSend(
        id=uuid.uuid4().hex[:12],
        at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        endpoint=endpoint,
        body=dict(body),
        error=error,
        outcome=outcome,
    )


def _line(entry: FailedSend) -> str:
    return json.dumps(asdict(entry), ensure_ascii=False)


def _parse(lines: Iterable[str]) -> List[FailedSend]:
    entries: List[FailedSend] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            entries.append(FailedSend.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            # A line cut short by a crash mid-write must not hide the others.
            continue
    return entries


class JsonlJournal:
    """A journal in one JSON Lines file. Safe across threads of one process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"JsonlJournal({str(self.path)!r})"

    def record(
        self, endpoint: str, body: Mapping[str, Any], error: str, outcome: str
    ) -> FailedSend:
        entry = _new_entry(endpoint, body, error, outcome)
        line = _line(entry) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8", "replace"))
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry

    def entries(self) -> List[FailedSend]:
        if not self.path.exists():
            return []
        return _parse(self.path.read_text(encoding="utf-8").splitlines())

    def get(self, entry_id: str) -> Optional[FailedSend]:
        return next((entry for entry in self.entries() if entry.id == entry_id), None)

    def remove(self, ids: Iterable[str]) -> int:
        """Drop entries (after a successful resend); returns how many were removed."""
        doomed = set(ids)
        with self._lock:
            kept = [entry for entry in self.entries() if entry.id not in doomed]
            removed = len(self.entries()) - len(kept)
            if removed:
                text = "".join(_line(e) + "\n" for e in kept)
                atomic_write(self.path, text)
        return removed


class RedisJournal:
    """A journal in a Redis list, shared by every instance of the bot (``redis_url``)."""

    def __init__(self, url: str, *, prefix: str = "zapi", client: Any = None) -> None:
        import redis

        self.key = f"{prefix}:failed-sends"
        self.redis: Any = client or redis.Redis.from_url(url, decode_responses=True)

    def __repr__(self) -> str:
        return f"RedisJournal({self.key!r})"  # never the URL: it may hold a password

    @property
    def where(self) -> str:
        return f"Redis list {self.key}"

    def record(
        self, endpoint: str, body: Mapping[str, Any], error: str, outcome: str
    ) -> FailedSend:
        entry = _new_entry(endpoint, body, error, outcome)
        self.redis.rpush(self.key, _line(entry).encode("utf-8", "replace").decode("utf-8"))
        return entry

    def entries(self) -> List[FailedSend]:
        return _parse(self.redis.lrange(self.key, 0, -1))

    def get(self, entry_id: str) -> Optional[FailedSend]:
        return next((entry for entry in self.entries() if entry.id == entry_id), None)

    def remove(self, ids: Iterable[str]) -> int:
        doomed = set(ids)
        removed = 0
        for line in self.redis.lrange(self.key, 0, -1):
            try:
                entry_id = json.loads(line).get("id")
            except (ValueError, AttributeError):
                continue
            if entry_id in doomed:
                # LREM of the exact line: safe while other instances append.
                removed += int(self.redis.lrem(self.key, 1, line))
        return removed


__all__ = ["FAILED", "UNKNOWN", "FailedSend", "Journal", "JsonlJournal", "RedisJournal"]

"""Messages that were acknowledged to Z-API but not answered when the process stopped.

On SIGTERM/SIGINT the channel finishes queued turns within a grace period. What is still queued
or running then would be lost (Z-API already got its 200 and will not send it again), so the raw
callbacks are written here, and the next start processes them before anything else.

Each record is ``{"payload": <the callback>, "answers_sent": n}``: a turn cut short by the stop
may already have sent its first answers, and the next start skips those instead of repeating them.
The file is replaced atomically and read once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping

from zapi_channel.credstore import atomic_write


class PendingInbox:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"PendingInbox({str(self.path)!r})"

    def save(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Add ``records`` after whatever is already waiting; returns how many were added."""
        existing = self._read()
        added = [dict(record) for record in records]
        if not added:
            return 0
        lines = [json.dumps(p, ensure_ascii=False) for p in existing + added]
        atomic_write(self.path, "\n".join(lines) + "\n")
        return len(added)

    def take(self) -> List[Dict[str, Any]]:
        """Every waiting record, oldest first; the file is removed."""
        payloads = self._read()
        if self.path.exists():
            self.path.unlink()
        return payloads

    def _read(self) -> List[Dict[str, Any]]:
        if not self.path.exists():
            return []
        payloads: List[Dict[str, Any]] = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                payloads.append(value)
        return payloads


__all__ = ["PendingInbox"]

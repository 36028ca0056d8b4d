"""Write docs/reliability.md from the end-to-end reliability scenarios (``make reliability``).

Runs the scenarios that inject duplicates and faults into real processes (a single instance
stopped with SIGTERM or killed with SIGKILL and restarted, Z-API redelivering after the restart, a
full disk under the state file, the state file's writer process killed, two instances behind
duplicated delivery, one of two instances SIGKILLed, Z-API failing sends),
collects the figures each one records, and writes them as a table. The same scenarios run as
ordinary tests in ``make test``; this script only adds the figures.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = [
    "tests/e2e/test_rasa_run.py::test_messages_in_quick_succession_are_answered_once_each_in_order",
    "tests/e2e/test_rasa_run.py::test_transient_zapi_failures_are_retried_and_no_answer_is_lost",
    "tests/e2e/test_restart.py",
    "tests/e2e/test_two_instances.py",
]
COLUMNS = [
    ("scenario", "Scenario"),
    ("messages_sent", "Messages sent"),
    ("duplicates_injected", "Duplicates injected"),
    ("faults_injected", "Faults injected"),
    ("answers_expected", "Answers expected"),
    ("answers_received", "Answers received"),
    ("answers_lost", "Lost"),
    ("answers_duplicated", "Duplicated"),
]


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "figures.jsonl"
        env = dict(os.environ, ZAPI_RELIABILITY_OUT=str(out))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SCENARIOS],
            cwd=ROOT,
            env=env,
            check=False,
        )
        rows: List[Dict[str, object]] = (
            [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        )
    if result.returncode != 0 or not rows:
        print("The scenarios failed; docs/reliability.md is left as it was.", file=sys.stderr)
        return 1
    lines = [
        "# Reliability figures",
        "",
        "Written by `make reliability` (`scripts/reliability_report.py`) on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores. Each row is an end-to-end test that starts real processes: "
        "the Z-API emulator, the action server, and one or two `rasa run` with the demo model. "
        "Single-instance rows use no Redis: the channel keeps its inbox, deduplication keys and "
        "sent markers in its SQLite state file (`state_path`). The two-instance rows share "
        "Redis: tracker store, our atomic lock store, and the channel's `redis_url` state and "
        "inbox. Answers are counted from what the emulator "
        "recorded, per customer and in order. The same tests run in `make test` and fail on any "
        "lost, duplicated or out-of-order answer.",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(row[key]) for key, _ in COLUMNS) + " |")
    total_lost = sum(int(str(row["answers_lost"])) for row in rows)
    total_dup = sum(int(str(row["answers_duplicated"])) for row in rows)
    lines += [
        "",
        f"Answers lost in all scenarios: **{total_lost}**; duplicated: **{total_dup}**.",
        "",
        "What each fault means:",
        "",
        "- *Duplicates*: the same `instanceId` + `messageId` posted again (to the same or the "
        "other instance); the channel deduplicates before queueing.",
        "- *SIGTERM*: `shutdown_grace_seconds: 0`, so every message not answered yet stays in "
        "the state file and is answered by the next start.",
        "- *SIGKILL, single instance*: each webhook answered 200 only after its message was "
        "committed to the state file, so the next start answers whatever the killed process had "
        "not; sent markers keep a re-run turn from repeating answers already sent. Only a send on "
        "the wire at the kill can reach the customer twice (at most one per running turn, "
        "`max_concurrency`).",
        "- *Restart inside the redelivery window*: deduplication keys live in the state file "
        "(`dedup_ttl_seconds`, a day by default), so Z-API's redeliveries after a restart are "
        "recognised.",
        "- *Disk full*: the webhook answers 503, so Z-API sends the message again, and logs one "
        "ERROR naming the file; once there is room, the resent message is kept and answered.",
        "- *Writer process SIGKILLed*: the state file is written by a process of its own "
        "(`zapi_channel.delivery.writer`). Killed, the webhooks waiting for it answer 503 (Z-API "
        "sends those messages again) and the bot starts it again at once; a message it had "
        "committed without being able to say so is taken from the file and answered, and its "
        "resend is a duplicate.",
        "- *SIGKILL, two instances*: the killed instance's inbox partitions are taken over when "
        "their lease expires; sent markers keep a re-run turn from repeating answers.",
        "- *HTTP 503*: the send is retried with exponential backoff and jitter.",
        "",
    ]
    (ROOT / "docs" / "reliability.md").write_text("\n".join(lines), encoding="utf-8")
    print("Wrote docs/reliability.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Figures of the reliability scenarios, for docs/reliability.md (scripts/reliability_report.py).

Each end-to-end scenario calls :func:`record` with what it sent, injected and got back. Nothing is
written unless ``ZAPI_RELIABILITY_OUT`` names a file, so ordinary test runs are unaffected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def record(
    scenario: str,
    *,
    sent: int,
    duplicates: int,
    faults: str,
    expected: int,
    received: int,
    lost: int,
    duplicated: int,
) -> None:
    target = os.environ.get("ZAPI_RELIABILITY_OUT")
    if not target:
        return
    entry = {
        "scenario": scenario,
        "messages_sent": sent,
        "duplicates_injected": duplicates,
        "faults_injected": faults,
        "answers_expected": expected,
        "answers_received": received,
        "answers_lost": lost,
        "answers_duplicated": duplicated,
    }
    with Path(target).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def tally(expected: dict, found: dict) -> tuple:  # type: ignore[type-arg]
    """(received, lost, duplicated) answers, comparing per-customer answer lists."""
    received = sum(len(texts) for texts in found.values())
    lost = duplicated = 0
    for phone, wanted in expected.items():
        got = list(found.get(phone, []))
        for answer in wanted:
            if answer in got:
                got.remove(answer)
            else:
                lost += 1
        duplicated += len(got)
    return received, lost, duplicated

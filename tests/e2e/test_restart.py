"""SIGTERM to a real rasa run in the middle of a stream of messages: no acknowledged message is lost.

The channel runs with no grace period, so whatever is queued when the signal arrives must be kept
(pending inbox) and answered by the next rasa run started with the same settings.
"""

from __future__ import annotations

import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import httpx
import pytest

from tests.e2e.conftest import (
    EMULATOR_CLIENT,
    EMULATOR_INSTANCE,
    EMULATOR_TOKEN,
    channel_credentials,
)
from tests.e2e.figures import record, tally
from tests.livesanic import free_port
from tests.processes import BIN, Process

pytestmark = pytest.mark.e2e

SENDERS = [f"55119800{n:05d}" for n in range(24)]


@pytest.fixture
def rig(trained_model: Path, tmp_path: Path) -> Iterator[Dict[str, object]]:
    emulator_port, actions_port, rasa_port = free_port(), free_port(), free_port()
    token = secrets.token_urlsafe(24)
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    credentials = channel_credentials(
        tmp_path, emulator_url=emulator_url, webhook_token=token, shutdown_grace_seconds=0
    )
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(f"action_endpoint:\n  url: http://127.0.0.1:{actions_port}/webhook\n")
    emulator = Process(
        "restart-emulator",
        [
            sys.executable, "-m", "zapi_channel.emulator", "--port", str(emulator_port),
            "--instance-id", EMULATOR_INSTANCE, "--instance-token", EMULATOR_TOKEN,
            "--client-token", EMULATOR_CLIENT,
            "--webhook-url", f"http://127.0.0.1:{rasa_port}/webhooks/zapi/webhook?token={token}",
        ],
        tmp_path,
    )  # fmt: skip
    rasa_args = [
        str(BIN / "rasa"), "run", "-m", str(trained_model), "--credentials", str(credentials),
        "--endpoints", str(endpoints), "-i", "127.0.0.1", "-p", str(rasa_port),
    ]  # fmt: skip
    emulator.wait_http(f"{emulator_url}/_emulator/health", 30)
    try:
        yield {
            "emulator": emulator_url,
            "rasa_args": rasa_args,
            "rasa_url": f"http://127.0.0.1:{rasa_port}",
            "logs": tmp_path,
            "inbox": tmp_path / "pending-inbox.jsonl",
        }
    finally:
        emulator.stop()


def answers(emulator: str) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for phone in SENDERS:
        messages = httpx.get(
            f"{emulator}/_emulator/messages", params={"phone": phone}, timeout=5
        ).json()
        found[phone] = [m["text"] for m in messages["messages"] if m["from"] == "bot"]
    return found


def test_sigterm_mid_stream_loses_no_acknowledged_message(rig: Dict[str, object]) -> None:
    emulator = str(rig["emulator"])
    logs = Path(str(rig["logs"]))
    first = Process("rasa-first", list(rig["rasa_args"]), logs)  # type: ignore[arg-type]
    try:
        first.wait_http(f"{rig['rasa_url']}/webhooks/zapi/", 240)
        for phone in SENDERS:
            sent = httpx.post(
                f"{emulator}/_emulator/messages",
                json={"phone": phone, "text": "thanks"},
                timeout=15,
            ).json()
            assert sent["webhook_status"] == 200, sent
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(60)
    finally:
        first.stop()
    assert "not answered yet: kept in" in first.log(), first.log()[-3000:]
    kept_lines = Path(str(rig["inbox"])).read_text().splitlines()
    assert kept_lines, "SIGTERM came after everything was answered: the test proved nothing"

    second = Process("rasa-second", list(rig["rasa_args"]), logs)  # type: ignore[arg-type]
    try:
        second.wait_http(f"{rig['rasa_url']}/webhooks/zapi/", 240)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(answers(emulator).values()):
            time.sleep(0.5)
        found = answers(emulator)
    finally:
        second.stop()
    received, lost, duplicated = tally({phone: ["You're welcome!"] for phone in SENDERS}, found)
    record(
        "SIGTERM to rasa run mid-stream, then a restart",
        sent=len(SENDERS),
        duplicates=0,
        faults=f"SIGTERM with no grace period ({len(kept_lines)} message(s) not answered yet)",
        expected=len(SENDERS),
        received=received,
        lost=lost,
        duplicated=duplicated,
    )
    unanswered = [phone for phone, texts in found.items() if not texts]
    assert unanswered == [], f"lost: {unanswered}\n{second.log()[-3000:]}"
    # Exactly once: a turn cut short by the stop does not repeat the answer it had already sent.
    assert found == {phone: ["You're welcome!"] for phone in SENDERS}
    assert not Path(str(rig["inbox"])).exists()

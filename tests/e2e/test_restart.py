"""A single rasa run with no Redis, stopped or killed mid-stream: no acknowledged message is lost.

Every scenario runs the real thing: the Z-API emulator and ``rasa run`` with the demo model and the
embedded state file (``state_path``). Webhooks are posted the way Z-API posts them; the answers are
counted from what the emulator recorded.

- SIGTERM with no grace period: whatever is not answered stays in the state file.
- SIGKILL while turns are in flight: nothing runs at the kill, the next start answers the rest.
- Z-API redelivering, after the restart, messages that were answered: none is answered again.
- A full disk: the webhook answers 503 (Z-API sends again) and recovers once there is room.
- The state file's writer process killed mid-burst: 503s while it is started again, and nothing
  lost or answered twice once Z-API has sent the refused messages again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
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
from tests.processes import BIN, ROOT, Process

pytestmark = pytest.mark.e2e

FIXTURE = ROOT / "tests" / "fixtures" / "callbacks" / "received_text.json"
ANSWER = "You're welcome!"
#: At most this many turns run at once, so at most this many sends are on the wire at a kill.
CONCURRENCY = 4


class Rig:
    """The emulator, running throughout, and rasa run started and stopped by the test."""

    def __init__(
        self, folder: Path, emulator: str, rasa_args: List[str], rasa_url: str, token: str
    ):
        self.folder = folder
        self.emulator = emulator
        self.rasa_args = rasa_args
        self.rasa_url = rasa_url
        self.token = token
        self.state = folder / "state" / "zapi-channel.db"
        self.runs = 0

    def start_rasa(self) -> Process:
        self.runs += 1
        rasa = Process(f"rasa-{self.runs}", self.rasa_args, self.folder)
        try:
            rasa.wait_http(f"{self.rasa_url}/webhooks/zapi/", 240)
        except BaseException:
            rasa.stop()
            raise
        return rasa

    def deliver(self, phone: str, message_id: str, text: str = "thanks") -> httpx.Response:
        """What Z-API posts for a customer's message (the same id again is a redelivery)."""
        payload = json.loads(FIXTURE.read_text())
        payload.update(
            instanceId=EMULATOR_INSTANCE,
            phone=phone,
            messageId=message_id,
            text={"message": text},
            momment=int(time.time() * 1000),
        )
        return httpx.post(
            f"{self.rasa_url}/webhooks/zapi/webhook?token={self.token}", json=payload, timeout=15
        )

    def answers(self, phones: List[str]) -> Dict[str, List[str]]:
        found: Dict[str, List[str]] = {}
        for phone in phones:
            messages = httpx.get(
                f"{self.emulator}/_emulator/messages", params={"phone": phone}, timeout=5
            ).json()
            found[phone] = [m["text"] for m in messages["messages"] if m["from"] == "bot"]
        return found

    def wait_answers(self, phones: List[str], timeout: float = 90) -> Dict[str, List[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(self.answers(phones).values()):
            time.sleep(0.3)
        time.sleep(1.5)  # a duplicate answer would show up now
        return self.answers(phones)

    def faults(self, **faults: object) -> None:
        if faults:
            httpx.post(f"{self.emulator}/_emulator/faults", json=faults, timeout=5)
        else:
            httpx.delete(f"{self.emulator}/_emulator/faults", timeout=5)

    def kept(self) -> int:
        """Messages in the state file's inbox: acknowledged and not answered yet."""
        with closing(sqlite3.connect(self.state)) as db:
            count: int = db.execute(
                "SELECT count(*) FROM messages WHERE message IS NOT NULL"
            ).fetchone()[0]
            return count


@pytest.fixture
def rig(trained_model: Path, tmp_path: Path) -> Iterator[Rig]:
    emulator_port, actions_port, rasa_port = free_port(), free_port(), free_port()
    token = uuid.uuid4().hex
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    (tmp_path / "state").mkdir()
    credentials = channel_credentials(
        tmp_path,
        emulator_url=emulator_url,
        webhook_token=token,
        shutdown_grace_seconds=0,
        max_concurrency=CONCURRENCY,
        state_path=tmp_path / "state" / "zapi-channel.db",
    )
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(f"action_endpoint:\n  url: http://127.0.0.1:{actions_port}/webhook\n")
    emulator = Process(
        "restart-emulator",
        [
            sys.executable, "-m", "zapi_channel.emulator", "--port", str(emulator_port),
            "--instance-id", EMULATOR_INSTANCE, "--instance-token", EMULATOR_TOKEN,
            "--client-token", EMULATOR_CLIENT,
        ],
        tmp_path,
    )  # fmt: skip
    rasa_args = [
        str(BIN / "rasa"), "run", "-m", str(trained_model), "--credentials", str(credentials),
        "--endpoints", str(endpoints), "-i", "127.0.0.1", "-p", str(rasa_port),
    ]  # fmt: skip
    try:
        emulator.wait_http(f"{emulator_url}/_emulator/health", 30)
        yield Rig(tmp_path, emulator_url, rasa_args, f"http://127.0.0.1:{rasa_port}", token)
    finally:
        emulator.stop()


def phones(prefix: str, count: int) -> List[str]:
    return [f"5511{prefix}{n:05d}" for n in range(count)]


def test_sigterm_mid_stream_loses_no_acknowledged_message(rig: Rig) -> None:
    customers = phones("9800", 24)
    first = rig.start_rasa()
    try:
        rig.faults(send_delay_ms=300)  # turns are still running when the signal arrives
        for n, phone in enumerate(customers):
            assert rig.deliver(phone, f"TERM{n}").status_code == 200
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(60)
    finally:
        first.stop()
        rig.faults()
    assert "not answered yet: they stay in" in first.log(), first.log()[-3000:]
    kept = rig.kept()
    assert kept, "SIGTERM came after everything was answered: the test proved nothing"

    second = rig.start_rasa()
    try:
        found = rig.wait_answers(customers)
    finally:
        second.stop()
    expected = {phone: [ANSWER] for phone in customers}
    received, lost, duplicated = tally(expected, found)
    record(
        "SIGTERM to rasa run mid-stream, then a restart",
        sent=len(customers),
        duplicates=0,
        faults=f"SIGTERM with no grace period ({kept} message(s) not answered yet)",
        expected=len(customers),
        received=received,
        lost=lost,
        duplicated=duplicated,
    )
    # Exactly once: a turn cut short by the stop does not repeat the answer it had already sent.
    assert found == expected, second.log()[-3000:]
    assert rig.kept() == 0


def test_sigkill_mid_burst_then_restart_answers_every_acknowledged_message(rig: Rig) -> None:
    customers = phones("9700", 30)
    first = rig.start_rasa()
    try:
        rig.faults(send_delay_ms=400)
        for n, phone in enumerate(customers):
            assert rig.deliver(phone, f"KILL{n}").json() == {"status": "accepted"}
        time.sleep(0.5)  # turns are in flight, their sends on the wire
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(30)
    finally:
        first.stop()
    before = rig.answers(customers)
    answered_before = sum(len(texts) for texts in before.values())
    kept = rig.kept()
    assert kept >= len(customers) - answered_before, "an acknowledged message is not in the file"
    assert answered_before < len(customers), "everything was answered before the kill"
    rig.faults()

    second = rig.start_rasa()
    try:
        found = rig.wait_answers(customers)
        expected = {phone: [ANSWER] for phone in customers}
        received, lost, duplicated = tally(expected, found)
        record(
            "SIGKILL to rasa run mid-burst (no Redis), then a restart",
            sent=len(customers),
            duplicates=0,
            faults=f"SIGKILL with {kept} message(s) kept, {answered_before} answered before it",
            expected=len(customers),
            received=received,
            lost=lost,
            duplicated=duplicated,
        )
        assert lost == 0, f"lost answers: {found}\n{second.log()[-3000:]}"
        # Only a send on the wire at the kill can go out twice: one per running turn at most.
        assert duplicated <= CONCURRENCY, found
        assert rig.kept() == 0

        # Z-API redelivers every one of them after the restart: all are known, none answered.
        redelivered = [rig.deliver(phone, f"KILL{n}").json() for n, phone in enumerate(customers)]
        assert redelivered == [{"status": "duplicate"}] * len(customers)
        again = rig.wait_answers(customers, timeout=3)
        _, relost, reduplicated = tally(found, again)
        record(
            "Z-API redelivers every answered message after the restart",
            sent=len(customers),
            duplicates=len(customers),
            faults="restart inside the redelivery window",
            expected=sum(len(texts) for texts in found.values()),
            received=sum(len(texts) for texts in again.values()),
            lost=relost,
            duplicated=reduplicated,
        )
        assert again == found
    finally:
        second.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system for the state file, so that the test can fill it."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_answers_503_and_loses_nothing(rig: Rig, small_disk: Path) -> None:
    state = small_disk / "zapi-channel.db"
    rig.rasa_args = [*rig.rasa_args]
    credentials = Path(rig.rasa_args[rig.rasa_args.index("--credentials") + 1])
    text = credentials.read_text().replace(str(rig.state), str(state))
    credentials.write_text(text)
    rig.state = state
    customers = phones("9600", 3)
    rasa = rig.start_rasa()
    try:
        assert rig.deliver(customers[0], "DISK0").json() == {"status": "accepted"}
        rig.wait_answers(customers[:1])
        filler = fill(small_disk)
        refused = [rig.deliver(customers[n], f"DISK{n}") for n in (1, 2)]
        assert [r.status_code for r in refused] == [503, 503], [r.text for r in refused]
        errors = [
            line for line in rasa.log().splitlines() if "ERROR" in line and str(state) in line
        ]
        assert len(errors) == 1, rasa.log()[-3000:]
        filler.unlink()
        # Z-API sends them again: now they are kept and answered.
        assert [rig.deliver(customers[n], f"DISK{n}").json()["status"] for n in (1, 2)] == [
            "accepted",
            "accepted",
        ]
        found = rig.wait_answers(customers)
    finally:
        rasa.stop()
    expected = {phone: [ANSWER] for phone in customers}
    received, lost, duplicated = tally(expected, found)
    record(
        "The state file's disk is full (no Redis)",
        sent=len(customers),
        duplicates=2,
        faults="disk full for 2 messages: 503, then Z-API's resend after space was freed",
        expected=len(customers),
        received=received,
        lost=lost,
        duplicated=duplicated,
    )
    assert found == expected
    assert shutil.disk_usage(small_disk).free > 0


def writer_of(pid: int) -> int:
    """The state file's writer process that rasa run ``pid`` started."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if "zapi_channel.delivery.writer" in Path(f"/proc/{child}/cmdline").read_text():
                return int(child)
    raise AssertionError(f"rasa run {pid} has no writer process")


def test_the_writer_killed_mid_burst_loses_nothing_and_answers_once(rig: Rig) -> None:
    customers = phones("9500", 40)
    rasa = rig.start_rasa()
    try:
        writer = writer_of(rasa.proc.pid)
        posted = threading.Event()
        statuses: Dict[int, int] = {}

        def deliver(n: int) -> None:
            statuses[n] = rig.deliver(customers[n], f"WRITER{n}").status_code
            if len(statuses) >= 10:
                posted.set()

        with ThreadPoolExecutor(8) as pool:
            burst = [pool.submit(deliver, n) for n in range(len(customers))]
            assert posted.wait(30)
            os.kill(writer, signal.SIGKILL)  # while webhooks wait for their commits
            for done in burst:
                done.result()
        refused = [n for n, status in statuses.items() if status != 200]
        assert all(statuses[n] == 503 for n in refused), statuses
        # What Z-API does with a 503: it sends the message again, until it gets its 200.
        deadline = time.monotonic() + 30
        pending = list(refused)
        while pending and time.monotonic() < deadline:
            pending = [
                n for n in pending if rig.deliver(customers[n], f"WRITER{n}").status_code != 200
            ]
            time.sleep(0.2)
        assert not pending, f"still refused after the writer's restart: {pending}"
        found = rig.wait_answers(customers)
        log = rasa.log()
    finally:
        rasa.stop()
    assert "ended on its own" in log, log[-3000:]
    assert writer_of_gone(writer)
    expected = {phone: [ANSWER] for phone in customers}
    received, lost, duplicated = tally(expected, found)
    record(
        "The state file's writer process killed with SIGKILL mid-burst (no Redis)",
        sent=len(customers),
        duplicates=len(refused),
        faults=f"writer SIGKILLed: {len(refused)} webhook(s) answered 503, then sent again",
        expected=len(customers),
        received=received,
        lost=lost,
        duplicated=duplicated,
    )
    assert found == expected, log[-3000:]


def writer_of_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited; its parent reaps it

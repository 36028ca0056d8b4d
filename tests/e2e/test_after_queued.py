"""What happens after Z-API says "queued", with a real rasa run, the emulator and the CLI.

The emulator starts with no webhook at all: ``zapi-channel register-webhook`` points every
callback at rasa run, as a bot builder would, and ``zapi-channel verify`` checks it. The emulator
then reports delivery errors, refuses buttons for the terms, drops the phone and queues, and the
tests look at what the customer got (the emulator's records) and at what the CLI shows.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    EMULATOR_CLIENT,
    EMULATOR_INSTANCE,
    EMULATOR_TOKEN,
    emulator_and_rasa,
    new_phone,
)
from tests.processes import BIN, ROOT, Process, child_env

pytestmark = pytest.mark.e2e

RECEIVED = ROOT / "tests" / "fixtures" / "callbacks" / "received_text.json"
METRICS_TOKEN = "e2e-metrics-token-7c1d9b3a5e"
MENU = (
    "What would you like to see?\n\n*1.* A picture\n*2.* A document\n*3.* A voice note"
    "\n*4.* A video\n*5.* Our website\n*6.* Talk to us"
)


@dataclass
class Bot:
    emulator: str
    rasa: str
    token: str
    credentials: Path
    rasa_process: Process

    @property
    def api(self) -> str:
        return f"{self.emulator}/instances/{EMULATOR_INSTANCE}/token/{EMULATOR_TOKEN}"

    def cli(self, *args: str, stdin: str = "") -> Tuple[int, str]:
        result = subprocess.run(
            [str(BIN / "zapi-channel"), *args, "--credentials", str(self.credentials)],
            cwd=self.credentials.parent,
            env=child_env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.returncode, result.stdout + result.stderr

    def say(self, phone: str, text: str) -> None:
        answer = httpx.post(
            f"{self.emulator}/_emulator/messages", json={"phone": phone, "text": text}, timeout=15
        )
        answer.raise_for_status()
        assert answer.json()["webhook_status"] == 200, answer.json()

    def deliver(self, phone: str, text: str, message_id: str = "") -> httpx.Response:
        """A ReceivedCallback posted straight to rasa run (as if it came just before a drop)."""
        payload = json.loads(RECEIVED.read_text())
        payload.update(
            instanceId=EMULATOR_INSTANCE,
            phone=phone,
            messageId=message_id or f"3EB0{uuid.uuid4().hex[:16].upper()}",
            text={"message": text},
            momment=int(time.time() * 1000),
        )
        return httpx.post(
            f"{self.rasa}/webhooks/zapi/webhook?token={self.token}", json=payload, timeout=15
        )

    def sent(self, phone: str) -> List[Dict[str, Any]]:
        answer = httpx.get(
            f"{self.emulator}/_emulator/messages", params={"phone": phone}, timeout=5
        )
        return [m for m in answer.json()["messages"] if m["from"] == "bot"]

    def faults(self, **faults: object) -> None:
        if faults:
            httpx.post(f"{self.emulator}/_emulator/faults", json=faults, timeout=5)
        else:
            httpx.delete(f"{self.emulator}/_emulator/faults", timeout=5)

    def connection(self, connected: bool) -> None:
        answer = httpx.post(
            f"{self.emulator}/_emulator/connection", json={"connected": connected}, timeout=15
        )
        assert answer.json()["webhook_status"] == 200, answer.json()

    def metrics(self) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
        answer = httpx.get(
            f"{self.rasa}/webhooks/zapi/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            timeout=5,
        )
        assert answer.status_code == 200, answer.text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples
        }

    def health(self) -> Dict[str, Any]:
        health: Dict[str, Any] = httpx.get(f"{self.rasa}/webhooks/zapi/", timeout=5).json()
        return health

    def wait(self, what: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = what()
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"timed out; rasa run said:\n{self.rasa_process.log()[-3000:]}")


@pytest.fixture(scope="module")
def bot(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    folder = tmp_path_factory.mktemp("after-queued")
    # The emulator starts with no webhook: the CLI's register-webhook sets them (below).
    with emulator_and_rasa(
        "queued",
        folder,
        trained_model,
        webhook=False,
        # Buttons as WhatsApp buttons, so that the button-terms refusal has something to refuse.
        buttons_as="buttons",
        queue_when_disconnected="false",
        handoff_minutes=0,
        metrics_token=METRICS_TOKEN,
    ) as pair:
        yield Bot(pair.emulator_url, pair.rasa_url, pair.token, pair.credentials, pair.rasa)


@pytest.fixture(scope="module")
def registered(bot: Bot) -> Bot:
    """The webhooks set by the CLI, as a bot builder sets them."""
    code, output = bot.cli("register-webhook", "--public-url", bot.rasa)
    assert code == 0, output
    return bot


def test_register_webhook_then_verify_passes_callback_by_callback(registered: Bot) -> None:
    code, output = registered.cli("verify", "--public-url", registered.rasa)
    assert code == 0, output
    for kind in ("received", "delivery", "message-status", "connected", "disconnected"):
        assert any(line.split()[:3] == [kind, "this", "bot"] for line in output.splitlines()), (
            kind,
            output,
        )
    assert "Connected: WhatsApp number" in output


def test_verify_with_a_foreign_received_callback_exits_6_with_the_fix(registered: Bot) -> None:
    foreign = {"value": "https://someone-else.example.com/hook"}
    headers = {"Client-Token": EMULATOR_CLIENT}
    httpx.put(f"{registered.api}/update-webhook-received", json=foreign, headers=headers)
    try:
        code, output = registered.cli("verify", "--public-url", registered.rasa)
        assert code == 6, output
        assert "ELSEWHERE: https://someone-else.example.com" in output
        assert f"zapi-channel register-webhook --public-url {registered.rasa}" in output
    finally:
        code, output = registered.cli("register-webhook", "--public-url", registered.rasa)
        assert code == 0, output


def test_queue_when_disconnected_false_was_applied_at_start(registered: Bot) -> None:
    registered.wait(lambda: "no longer queues" in registered.rasa_process.log())


def test_a_delivery_error_is_listed_in_failed_and_resent_by_failed_retry(registered: Bot) -> None:
    phone = new_phone()
    registered.faults(fail_deliveries=1, delivery_error="Phone number does not exist")
    try:
        registered.say(phone, "thanks")
        [failed] = registered.wait(lambda: registered.sent(phone))
    finally:
        registered.faults()
    assert failed["text"] == "You're welcome!"
    registered.wait(lambda: registered.sent(phone)[0]["status"] == "FAILED")
    listed = registered.wait(
        lambda: (lambda out: out if phone in out[1] else None)(registered.cli("failed", "list"))
    )
    assert listed[0] == 0
    assert "Phone number does not exist" in listed[1]
    code, output = registered.cli("failed", "retry")
    assert code == 0, output
    again = registered.wait(lambda: [m for m in registered.sent(phone) if m["status"] != "FAILED"])
    assert [m["text"] for m in again] == ["You're welcome!"]
    code, output = registered.cli("failed", "list")
    assert phone not in output, output


def test_buttons_refused_for_the_terms_are_followed_by_the_numbered_text(registered: Bot) -> None:
    phone = new_phone()
    registered.faults(refuse_buttons=True)
    try:
        registered.say(phone, "menu")
        sent = registered.wait(
            lambda: (lambda s: s if len(s) >= 2 else None)(registered.sent(phone))
        )
    finally:
        registered.faults()
    refused, fallback = sent
    # Six choices: more than WhatsApp's three reply buttons, so an option list.
    assert (refused["endpoint"], refused["status"]) == ("send-option-list", "FAILED")
    assert (fallback["endpoint"], fallback["body"]["message"]) == ("send-text", MENU)
    assert "button terms are not accepted" in registered.rasa_process.log()
    # The numbered text works: "1" is the first button.
    registered.say(phone, "1")
    pictures = registered.wait(
        lambda: [m for m in registered.sent(phone) if m["endpoint"] == "send-image"]
    )
    assert len(pictures) == 1


def test_a_disconnection_flips_the_health_json_and_verify_then_sends_are_kept(
    registered: Bot,
) -> None:
    phone = new_phone()
    registered.connection(False)
    try:
        health = registered.wait(
            lambda: (lambda h: h if h["whatsapp"] == "disconnected" else None)(registered.health())
        )
        assert health["whatsapp_since"]
        code, output = registered.cli("verify")
        assert code == 4, output
        assert "last connection callback from Z-API" in output and "said: disconnected" in output
        assert "zapi-channel restart" in output
        assert "Device has been disconnected" in registered.rasa_process.log()
        # queue_when_disconnected: false: Z-API refuses the answer, and the journal keeps it.
        assert registered.deliver(phone, "thanks").status_code == 200
        listed = registered.wait(
            lambda: (lambda out: out if phone in out[1] else None)(registered.cli("failed", "list"))
        )
        assert "not connected" in listed[1].lower()
        code, output = registered.cli("queue")
        assert (code, "queue is empty" in output) == (0, True), output
    finally:
        registered.connection(True)
    registered.wait(lambda: registered.health()["whatsapp"] == "connected")
    code, output = registered.cli("verify")
    assert code == 0 and "said: connected" in output, output
    code, output = registered.cli("failed", "retry")
    assert code == 0, output
    assert [m["text"] for m in registered.wait(lambda: registered.sent(phone))] == [
        "You're welcome!"
    ]


def test_a_scrape_of_the_running_bot_counts_what_was_sent(registered: Bot) -> None:
    def counts(found: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]) -> Tuple[float, ...]:
        return (
            found.get(("zapi_webhooks_total", (("outcome", "accepted"), ("reason", ""))), 0),
            found.get(("zapi_webhooks_total", (("outcome", "duplicate"), ("reason", ""))), 0),
            found.get(("zapi_sends_total", (("endpoint", "send-text"), ("outcome", "sent"))), 0),
            found.get(("zapi_turn_seconds_count", ()), 0),
        )

    before = counts(registered.metrics())
    phones = [new_phone(), new_phone()]
    for phone in phones:
        message_id = f"3EB0{uuid.uuid4().hex[:16].upper()}"
        assert registered.deliver(phone, "thanks", message_id).json() == {"status": "accepted"}
        assert registered.deliver(phone, "thanks", message_id).json() == {"status": "duplicate"}
    for phone in phones:
        registered.wait(lambda: registered.sent(phone))  # noqa: B023 - called at once
    after = registered.wait(
        lambda: (lambda c: c if c[3] - before[3] >= 2 else None)(counts(registered.metrics()))
    )
    assert [b - a for a, b in zip(before, after)] == [2, 2, 2, 2]
    found = registered.metrics()
    states = {labels[0][1]: v for (name, labels), v in found.items() if name == "zapi_whatsapp"}
    assert sorted(states) == ["connected", "disconnected", "unknown"]
    assert sum(states.values()) == 1

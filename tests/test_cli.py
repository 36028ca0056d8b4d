"""The real ``zapi-channel`` command against the Z-API emulator standing in for Z-API."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from tests.conftest import PLACEHOLDERS
from tests.livesanic import free_port
from tests.processes import BIN, Process, child_env

INSTANCE = "CLI00000000000000000000000000001"
TOKEN = "cli-instance-token-9f8e7d6c"
CLIENT = "cli-client-token-1a2b3c4d"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = Process(
        "cli-emulator",
        [
            sys.executable,
            "-m",
            "zapi_channel.emulator",
            "--port",
            str(port),
            "--instance-id",
            INSTANCE,
            "--instance-token",
            TOKEN,
            "--client-token",
            CLIENT,
            "--phone",
            "5511912345678",
        ],
        tmp_path_factory.mktemp("cli-emulator"),
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}/_emulator/health", 30)
    yield url
    process.stop()


@pytest.fixture(autouse=True)
def connected(emulator: str) -> None:
    httpx.post(
        f"{emulator}/_emulator/connection", json={"connected": True}, timeout=5
    ).raise_for_status()


class Project:
    def __init__(self, root: Path, emulator: str) -> None:
        self.root = root
        self.emulator = emulator
        self.credentials = root / "credentials.yml"
        self.credentials.write_text(PLACEHOLDERS)
        self.dotenv = root / ".env"

    def run(self, *args: str, stdin: str = "") -> Tuple[int, str]:
        env = child_env()
        for key in (
            "ZAPI_INSTANCE_ID",
            "ZAPI_INSTANCE_TOKEN",
            "ZAPI_CLIENT_TOKEN",
            "ZAPI_WEBHOOK_TOKEN",
        ):
            env.pop(key, None)
        result = subprocess.run(
            [str(BIN / "zapi-channel"), *args, "--credentials", str(self.credentials)],
            cwd=self.root,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.returncode, result.stdout + result.stderr

    def connect(self, client_token: str = CLIENT, *extra: str) -> Tuple[int, str]:
        return self.run(
            "connect",
            "--instance-id",
            f"  {INSTANCE}\n",
            "--instance-token",
            TOKEN,
            "--client-token",
            client_token,
            "--base-url",
            self.emulator,
            *extra,
        )

    def files(self) -> Dict[str, Optional[bytes]]:
        return {
            p.name: p.read_bytes() if p.exists() else None for p in (self.credentials, self.dotenv)
        }

    def env(self) -> Dict[str, str]:
        pairs = (line.split("=", 1) for line in self.dotenv.read_text().splitlines() if "=" in line)
        return {key: value for key, value in pairs}


@pytest.fixture
def project(tmp_path: Path, emulator: str) -> Project:
    return Project(tmp_path, emulator)


def zapi(project: Project, method: str, endpoint: str, body: Any = None) -> httpx.Response:
    """A call to the emulated instance's Z-API, as the channel makes it."""
    return httpx.request(
        method,
        f"{project.emulator}/instances/{INSTANCE}/token/{TOKEN}/{endpoint}",
        json=body,
        headers={"Client-Token": CLIENT},
        timeout=5,
    )


def assert_no_secret(output: str, *extra: str) -> None:
    for secret in (TOKEN, CLIENT, *extra):
        assert secret not in output


def test_connect_validates_saves_and_prints_the_webhook_url(project: Project) -> None:
    code, output = project.connect(CLIENT, "--public-url", "https://bot.example.com")
    assert code == 0, output
    assert "Credentials are valid" in output
    assert "Connected" in output
    env = project.env()
    assert env["ZAPI_INSTANCE_ID"] == INSTANCE
    assert env["ZAPI_INSTANCE_TOKEN"] == TOKEN
    assert env["ZAPI_CLIENT_TOKEN"] == CLIENT
    hook = env["ZAPI_WEBHOOK_TOKEN"]
    assert f"https://bot.example.com/webhooks/zapi/webhook?token={hook}" in output
    # Placeholders stay placeholders; only the non-secret, non-default address is written.
    assert project.credentials.read_text() == PLACEHOLDERS + f"  base_url: {project.emulator}\n"
    assert_no_secret(output)


def test_connect_with_a_wrong_client_token_says_invalid_and_writes_nothing(
    project: Project,
) -> None:
    before = project.files()
    code, output = project.connect("WRONG-client-token-0000")
    assert code == 3
    assert "Invalid credentials" in output
    assert "Nothing was saved" in output
    assert project.files() == before
    # Z-API echoes the wrong token in its 403; it must not be printed either.
    assert_no_secret(output, "WRONG-client-token-0000")


def test_connect_when_zapi_is_unreachable_is_a_network_error(project: Project) -> None:
    before = project.files()
    code, output = project.run(
        "connect",
        "--instance-id",
        INSTANCE,
        "--instance-token",
        TOKEN,
        "--client-token",
        CLIENT,
        "--base-url",
        f"http://127.0.0.1:{free_port()}",
    )
    assert code == 5, output
    assert "Could not reach Z-API" in output
    assert project.files() == before


def test_connect_reads_hidden_prompts_from_stdin(project: Project) -> None:
    code, output = project.run(
        "connect", "--base-url", project.emulator, stdin=f"{INSTANCE}\n{TOKEN}\n {CLIENT} \n"
    )
    assert code == 0, output
    assert project.env()["ZAPI_CLIENT_TOKEN"] == CLIENT
    assert_no_secret(output)


def test_connect_on_an_unpaired_instance_saves_and_says_to_scan_the_qr_code(
    project: Project,
) -> None:
    httpx.post(f"{project.emulator}/_emulator/connection", json={"connected": False}, timeout=5)
    code, output = project.connect()
    assert code == 0
    assert "not connected yet" in output and "QR code" in output


def test_verify_connected_shows_the_number(project: Project) -> None:
    project.connect()
    code, output = project.run("verify")
    assert code == 0
    assert "Connected: WhatsApp number 5511912345678" in output


def test_verify_not_connected_says_what_to_do(project: Project) -> None:
    project.connect()
    httpx.post(f"{project.emulator}/_emulator/connection", json={"connected": False}, timeout=5)
    code, output = project.run("verify")
    assert code == 4
    assert "The instance is not connected yet" in output
    assert "scan the instance's QR code" in output


def test_verify_without_credentials_names_what_is_missing(project: Project) -> None:
    code, output = project.run("verify")
    assert code == 2
    assert "instance_id, instance_token, client_token" in output


def test_webhook_url_is_stable_across_rotation(project: Project) -> None:
    project.connect()
    _, first = project.run("webhook-url", "--public-url", "https://bot.example.com")
    code, output = project.run("rotate", "--client-token", f"{CLIENT}\n")
    assert code == 0, output
    assert "webhook URL is unchanged" in output
    _, second = project.run("webhook-url", "--public-url", "https://bot.example.com")
    assert first == second
    assert first.startswith("https://bot.example.com/webhooks/zapi/webhook?token=")


def test_a_failed_rotation_keeps_the_previous_credentials_byte_for_byte(project: Project) -> None:
    project.connect()
    before = project.files()
    code, output = project.run("rotate", "--client-token", "not-the-right-one")
    assert code == 3
    assert "previous credentials are kept" in output
    assert project.files() == before
    assert_no_secret(output, "not-the-right-one")


def test_register_webhook_takes_http_only_on_loopback_for_the_emulator(project: Project) -> None:
    project.connect()
    code, output = project.run("register-webhook", "--public-url", "http://127.0.0.1:5005")
    assert code == 0, output
    me = zapi(project, "GET", "me").json()
    assert me["receivedCallbackUrl"].startswith("http://127.0.0.1:5005/webhooks/zapi/webhook?")


def test_register_webhook_refuses_http_and_sets_https(project: Project) -> None:
    project.connect()
    code, output = project.run("register-webhook", "--public-url", "http://bot.example.com")
    assert code == 2
    assert "https" in output
    code, output = project.run("register-webhook", "--public-url", "https://bot.example.com")
    assert code == 0, output
    me = zapi(project, "GET", "me").json()
    assert me["receivedCallbackUrl"].startswith(
        "https://bot.example.com/webhooks/zapi/webhook?token="
    )
    assert me["receiveCallbackSentByMe"] is True
    assert "Notify sent by me" in output


def test_disconnect_ends_the_session_and_marks_the_channel_inactive(project: Project) -> None:
    project.connect()
    code, output = project.run("disconnect")
    assert code == 0, output
    assert "inactive" in output and "still exists" in output
    assert "active: false" in project.credentials.read_text()
    _, verify = project.run("verify")
    assert "not connected" in verify
    # Connecting again reactivates the channel.
    httpx.post(f"{project.emulator}/_emulator/connection", json={"connected": True}, timeout=5)
    project.connect()
    assert "active: true" in project.credentials.read_text()


def test_python_dash_m_is_the_same_command(project: Project) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zapi_channel", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "connect" in result.stdout and "Exit codes" in result.stdout


def write_journal(project: Project) -> Path:
    """Three failed sends in the state file a bot running in the project's folder would use."""
    from zapi_channel.delivery import FAILED, UNKNOWN
    from zapi_channel.delivery.embedded import EmbeddedJournal

    path = project.root / "zapi-channel.db"

    async def write() -> None:
        journal = EmbeddedJournal.open(path)
        phone = "5511970000001"
        await journal.record("send-text", {"phone": phone, "message": "first"}, "HTTP 503", FAILED)
        await journal.record(
            "send-text", {"phone": phone, "message": "maybe sent"}, "timeout", UNKNOWN
        )
        await journal.record("send-text", {"phone": phone, "message": "second"}, "HTTP 503", FAILED)
        await journal.aclose()

    asyncio.run(write())
    return path


def journal_messages(path: Path) -> List[Tuple[str, str]]:
    """(id, message) of each entry left in the state file's journal."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT entry FROM failed_sends ORDER BY seq").fetchall()
    entries = [json.loads(row[0]) for row in rows]
    return [(entry["id"], entry["body"]["message"]) for entry in entries]


def bot_texts(project: Project, phone: str) -> list:  # type: ignore[type-arg]
    messages = httpx.get(
        f"{project.emulator}/_emulator/messages", params={"phone": phone}, timeout=5
    ).json()
    return [m["text"] for m in messages["messages"] if m["from"] == "bot"]


def test_failed_list_shows_the_journal(project: Project) -> None:
    project.connect()
    write_journal(project)
    code, output = project.run("failed", "list")
    assert code == 0
    assert output.count("send-text") == 3
    assert "'first'" in output and "unknown" in output


def test_failed_retry_resends_failed_entries_in_order_and_keeps_unknown_ones(
    project: Project,
) -> None:
    project.connect()
    path = write_journal(project)
    httpx.delete(f"{project.emulator}/_emulator/messages", timeout=5)
    code, output = project.run("failed", "retry")
    assert code == 0, output
    assert bot_texts(project, "5511970000001") == ["first", "second"]
    [(entry_id, text)] = journal_messages(path)
    assert text == "maybe sent"
    # An unknown outcome is resent only when named.
    code, output = project.run("failed", "retry", entry_id)
    assert code == 0, output
    assert bot_texts(project, "5511970000001") == ["first", "second", "maybe sent"]
    assert journal_messages(path) == []


def test_failed_retry_keeps_what_still_fails(project: Project) -> None:
    project.connect()
    path = write_journal(project)
    httpx.post(
        f"{project.emulator}/_emulator/faults",
        json={"fail_sends": 100, "fail_status": 400},
        timeout=5,
    )
    try:
        code, output = project.run("failed", "retry")
    finally:
        httpx.delete(f"{project.emulator}/_emulator/faults", timeout=5)
    assert code == 1
    assert "still failing" in output
    assert len(journal_messages(path)) == 3


def test_failed_list_before_the_bot_ever_ran_creates_nothing(project: Project) -> None:
    project.connect()
    code, output = project.run("failed", "list")
    assert code == 0, output
    assert "No failed sends" in output and "has not run" in output
    assert not (project.root / "zapi-channel.db").exists()


def pause_in_state_file(project: Project, phone: str, lid: str, minutes: float) -> None:
    """A running bot's takeover, as the state file keeps it (the bot itself is not needed)."""
    from zapi_channel.delivery.embedded import EmbeddedDelivery
    from zapi_channel.inbound import InboundMessage

    async def write() -> None:
        delivery = EmbeddedDelivery(project.root / "zapi-channel.db")
        seen = InboundMessage("I", "M1", phone, "oi", "text", {}, {}, lid=lid, number=phone)
        await delivery.accept(seen)  # links the number and the @lid
        await delivery.pause(phone, time.time() + minutes * 60)
        await delivery.aclose()

    asyncio.run(write())


def test_handoff_list_and_resume_by_either_form_of_the_customer(project: Project) -> None:
    project.connect()
    code, output = project.run("handoff", "list")
    assert code == 0 and "No chat is paused" in output
    assert not (project.root / "zapi-channel.db").exists()
    pause_in_state_file(project, "5511970000201", "70000000000201@lid", 30)
    code, output = project.run("handoff", "list")
    assert code == 0, output
    assert "5511970000201" in output and "30 more minute" in output
    code, output = project.run("handoff", "resume", "70000000000201@lid")
    assert code == 0, output
    assert "answers 70000000000201@lid again" in output
    code, output = project.run("handoff", "list")
    assert "No chat is paused" in output
    code, output = project.run("handoff", "resume", "5511970000201")
    assert code == 0 and "is not paused" in output


def test_verify_also_says_what_the_last_connection_callback_said(project: Project) -> None:
    from zapi_channel.delivery.embedded import EmbeddedJournal

    project.connect()

    async def heard_a_drop() -> None:
        journal = EmbeddedJournal.open(project.root / "zapi-channel.db")
        await journal.set_whatsapp(False, time.time())
        await journal.aclose()

    asyncio.run(heard_a_drop())
    code, output = project.run("verify")
    assert code == 0, output
    assert "last connection callback" in output and "said: disconnected" in output


def test_restart_asks_zapi_to_restart_the_instance(project: Project) -> None:
    project.connect()
    code, output = project.run("restart")
    assert code == 0, output
    assert "Asked Z-API to restart the instance." in output and "zapi-channel verify" in output


def set_received_elsewhere(project: Project, url: str) -> None:
    answer = httpx.put(
        f"{project.emulator}/instances/{INSTANCE}/token/{TOKEN}/update-webhook-received",
        json={"value": url},
        headers={"Client-Token": CLIENT},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text


def test_register_webhook_then_verify_checks_every_callback(project: Project) -> None:
    project.connect()
    code, output = project.run("register-webhook", "--public-url", "https://bot.example.com")
    assert code == 0, output
    code, output = project.run("verify", "--public-url", "https://bot.example.com")
    assert code == 0, output
    for kind in ("received", "delivery", "message-status", "connected", "disconnected"):
        assert f"{kind:<15} this bot" in output, output
    assert "chat-presence   not set (fine: optional)" in output


def test_verify_with_a_foreign_received_callback_exits_6_with_the_fix(project: Project) -> None:
    project.connect()
    project.run("register-webhook", "--public-url", "https://bot.example.com")
    set_received_elsewhere(project, "https://other.example.net/hook?token=THEIR-SECRET")
    code, output = project.run("verify", "--public-url", "https://bot.example.com")
    assert code == 6, output
    assert "received        ELSEWHERE: https://other.example.net" in output
    assert "THEIR-SECRET" not in output
    assert "zapi-channel register-webhook --public-url https://bot.example.com" in output


def test_verify_without_a_public_url_says_what_it_did_not_check(project: Project) -> None:
    project.connect()
    code, output = project.run("verify")
    assert code == 0 and "--public-url" in output


# -- Z-API's queue -----------------------------------------------------------------------------------


def queue_while_offline(project: Project, *texts: str) -> None:
    httpx.post(f"{project.emulator}/_emulator/connection", json={"connected": False}, timeout=5)
    for text in texts:
        answer = zapi(project, "POST", "send-text", {"phone": "5511999990000", "message": text})
        assert answer.status_code == 200, answer.text


def queued_texts(project: Project) -> List[str]:
    listed = zapi(project, "GET", "queue").json()
    return [entry["Message"] for entry in listed["messages"]]


def test_queue_shows_what_waits_and_clear_asks_first(project: Project) -> None:
    project.connect()
    code, output = project.run("queue")
    assert code == 0 and "queue is empty" in output, output
    queue_while_offline(project, "first answer", "second answer")
    code, output = project.run("queue")
    assert code == 0, output
    assert "2 message(s) wait in Z-API's queue" in output
    assert output.index("first answer") < output.index("second answer")
    assert "5511999990000" in output
    assert_no_secret(output)

    code, output = project.run("queue", "clear", stdin="no\n")
    assert code == 1 and "Nothing was deleted" in output
    assert queued_texts(project) == ["first answer", "second answer"]

    code, output = project.run("queue", "clear", stdin="yes\n")
    assert code == 0, output
    assert "2 message(s) will not be sent" in output
    assert queued_texts(project) == []


def test_queue_clear_yes_skips_the_question(project: Project) -> None:
    project.connect()
    queue_while_offline(project, "stale")
    code, output = project.run("queue", "clear", "--yes")
    assert code == 0, output
    assert "Type yes" not in output
    assert queued_texts(project) == []

"""End-to-end fixtures: a trained demo model, the Z-API emulator, the action server, rasa run.

Everything runs as real processes on loopback ports, the way a bot builder runs them. The model is
trained once per test session into a temporary folder.
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from tests.livesanic import free_port
from tests.processes import BIN, ROOT, Process

EMULATOR_INSTANCE = "E2E00000000000000000000000000001"
EMULATOR_TOKEN = "e2e-instance-token-5a7c9e1f"
EMULATOR_CLIENT = "e2e-client-token-2b4d6f8a"


def channel_credentials(
    folder: Path, *, emulator_url: str, webhook_token: str, **options: object
) -> Path:
    """A credentials.yml for the emulator's instance, plus ``options`` as further channel keys."""
    options.setdefault("state_path", folder / "zapi-channel.db")
    lines = [
        "zapi_channel.ZApiInput:",
        f"  instance_id: {EMULATOR_INSTANCE}",
        f"  instance_token: {EMULATOR_TOKEN}",
        f"  client_token: {EMULATOR_CLIENT}",
        f"  webhook_token: {webhook_token}",
        f"  base_url: {emulator_url}",
        *(f"  {key}: {value}" for key, value in options.items()),
    ]
    path = folder / "credentials.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def new_phone() -> str:
    """A customer number no other test uses."""
    return "5511" + str(uuid.uuid4().int)[:9]


@dataclass
class Pair:
    """An emulator and a ``rasa run`` of a module's own (see :func:`emulator_and_rasa`)."""

    emulator_url: str
    rasa_url: str
    token: str
    credentials: Path
    rasa: Process


@contextmanager
def emulator_and_rasa(
    name: str,
    folder: Path,
    model: Path,
    *,
    webhook: bool = True,
    endpoints: str = "",
    debug: bool = False,
    **options: object,
) -> Iterator[Pair]:
    """Start the emulator and ``rasa run`` on the demo model, with ``options`` as channel keys.

    ``webhook``: the emulator posts to this rasa run from the start (otherwise the test sets
    the webhooks, as a bot builder does with the CLI). ``endpoints``: more of endpoints.yml; the
    action server is never started (these modules' answers need no custom action).
    """
    emulator_port, rasa_port = free_port(), free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    rasa_url = f"http://127.0.0.1:{rasa_port}"
    token = uuid.uuid4().hex
    credentials = channel_credentials(
        folder, emulator_url=emulator_url, webhook_token=token, **options
    )
    endpoints_file = folder / "endpoints.yml"
    endpoints_file.write_text(
        f"action_endpoint:\n  url: http://127.0.0.1:{free_port()}/webhook\n{endpoints}"
    )
    emulator_args = [
        sys.executable, "-m", "zapi_channel.emulator", "--port", str(emulator_port),
        "--instance-id", EMULATOR_INSTANCE, "--instance-token", EMULATOR_TOKEN,
        "--client-token", EMULATOR_CLIENT,
    ]  # fmt: skip
    if webhook:
        emulator_args += ["--webhook-url", f"{rasa_url}/webhooks/zapi/webhook?token={token}"]
    rasa_args = [
        str(BIN / "rasa"), "run", "-m", str(model), "--credentials", str(credentials),
        "--endpoints", str(endpoints_file), "-i", "127.0.0.1", "-p", str(rasa_port),
    ]  # fmt: skip
    if debug:
        rasa_args.append("--debug")
    processes: List[Process] = []
    try:
        processes.append(Process(f"{name}-emulator", emulator_args, folder))
        processes.append(Process(f"{name}-rasa", rasa_args, folder))
        processes[0].wait_http(f"{emulator_url}/_emulator/health", 30)
        processes[1].wait_http(f"{rasa_url}/webhooks/zapi/", 240)
        yield Pair(emulator_url, rasa_url, token, credentials, processes[1])
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def trained_model() -> Path:
    """The demo model ``make run`` uses, trained only when its training data changed."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import run_local
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    run_local.train_if_needed()
    assert run_local.MODEL.exists()
    return Path(run_local.MODEL)


@dataclass
class Stack:
    emulator_url: str
    rasa_url: str
    webhook_token: str
    processes: Dict[str, Process]
    credentials: Path

    @property
    def webhook(self) -> str:
        return f"{self.rasa_url}/webhooks/zapi/webhook?token={self.webhook_token}"

    def logs(self) -> str:
        return "\n".join(p.log() for p in self.processes.values())


@pytest.fixture(scope="session")
def stack(trained_model: Path, e2e_dir: Path) -> Iterator[Stack]:
    emulator_port, actions_port, rasa_port = free_port(), free_port(), free_port()
    webhook_token = secrets.token_urlsafe(32)
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    rasa_url = f"http://127.0.0.1:{rasa_port}"
    credentials = e2e_dir / "credentials.yml"
    credentials.write_text(
        "zapi_channel.ZApiInput:\n"
        f"  instance_id: {EMULATOR_INSTANCE}\n"
        "  instance_token: ${E2E_INSTANCE_TOKEN}\n"
        "  client_token: ${E2E_CLIENT_TOKEN}\n"
        f"  webhook_token: {webhook_token}\n"
        f"  base_url: {emulator_url}\n"
        # Never the work tree: whatever the channel keeps goes beside the test's logs.
        f"  state_path: {e2e_dir / 'zapi-channel.db'}\n"
    )
    endpoints = e2e_dir / "endpoints.yml"
    endpoints.write_text(f"action_endpoint:\n  url: http://127.0.0.1:{actions_port}/webhook\n")
    os.environ["E2E_INSTANCE_TOKEN"] = EMULATOR_TOKEN
    os.environ["E2E_CLIENT_TOKEN"] = EMULATOR_CLIENT
    logs = e2e_dir / "logs"
    logs.mkdir(exist_ok=True)
    processes: Dict[str, Process] = {}
    try:
        processes["emulator"] = Process(
            "emulator",
            [
                sys.executable,
                "-m",
                "zapi_channel.emulator",
                "--port",
                str(emulator_port),
                "--instance-id",
                EMULATOR_INSTANCE,
                "--instance-token",
                EMULATOR_TOKEN,
                "--client-token",
                EMULATOR_CLIENT,
                "--webhook-url",
                f"{rasa_url}/webhooks/zapi/webhook?token={webhook_token}",
            ],
            logs,
        )
        processes["actions"] = Process(
            "actions",
            [str(BIN / "rasa"), "run", "actions", "--actions", "actions", "-p", str(actions_port)],
            logs,
        )
        processes["rasa"] = Process(
            "rasa",
            [
                str(BIN / "rasa"),
                "run",
                "-m",
                str(trained_model),
                "--credentials",
                str(credentials),
                "--endpoints",
                str(endpoints),
                "-p",
                str(rasa_port),
                "-i",
                "127.0.0.1",
                "--debug",
            ],
            logs,
        )
        processes["emulator"].wait_http(f"{emulator_url}/_emulator/health", 30)
        processes["actions"].wait_http(f"http://127.0.0.1:{actions_port}/health", 120)
        processes["rasa"].wait_http(f"{rasa_url}/webhooks/zapi/", 240)
        yield Stack(emulator_url, rasa_url, webhook_token, processes, credentials)
    finally:
        for process in reversed(list(processes.values())):
            process.stop()

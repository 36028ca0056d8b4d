"""What every benchmark needs: where logs go, the emulator, and starting a stub server."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import httpx

from bench.procs import PYTHON, Process, Processes, free_port
from bench.server import CLIENT_TOKEN, INSTANCE_ID, INSTANCE_TOKEN
from tests.redis_server import forget_keys

WEBHOOK_TOKEN = "bench-webhook-token"


@dataclass
class Context:
    log_dir: Path
    docs_dir: Path
    #: Shorter runs for trying the harness out (``--quick``); the report says so.
    quick: bool = False

    def scale(self, full: float, quick: float) -> float:
        return quick if self.quick else full


@dataclass
class Server:
    process: Process
    url: str
    channel: str

    def wait(self) -> None:
        self.process.wait_http(f"{self.url}/_bench/stats", 90)

    @property
    def webhook_path(self) -> str:
        path = f"/webhooks/{self.channel}/webhook"
        return f"{path}?token={WEBHOOK_TOKEN}" if self.channel in ("zapi", "bare") else path

    @property
    def health_path(self) -> str:
        return f"/webhooks/{self.channel}/"

    @property
    def webhook(self) -> str:
        return self.url + self.webhook_path


@contextmanager
def forgetting_keys(redis_url: Optional[str], *prefixes: str) -> Iterator[None]:
    """On the way out, error or not, delete what a benchmark left under ``prefixes`` in Redis:
    the dedup keys and sent markers expire only in a day, and the identity links never do."""
    try:
        yield
    finally:
        if redis_url is not None:
            forget_keys(redis_url, *(f"{prefix}:*" for prefix in prefixes))


def start_emulator(procs: Processes, name: str = "emulator") -> str:
    """A Z-API emulator with no webhooks: it takes the channel's sends and records them."""
    port = free_port()
    child = procs.start(
        name,
        [
            PYTHON, "-m", "zapi_channel.emulator", "--port", str(port),
            "--instance-id", INSTANCE_ID, "--instance-token", INSTANCE_TOKEN,
            "--client-token", CLIENT_TOKEN,
            # Every send is logged at INFO; WARNING keeps the emulator's own cost out of the way.
            "--log-level", "WARNING",
        ],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    child.wait_http(f"{url}/_emulator/health", 30)
    return url


def start_server(
    procs: Processes,
    channel: str,
    *,
    name: Optional[str] = None,
    bot_delay_ms: int = 0,
    reply: bool = True,
    emulator_url: str = "",
    extra: Optional[List[str]] = None,
    wait: bool = True,
    env: Optional[Dict[str, str]] = None,
) -> Server:
    """Start a :mod:`bench.server`; with ``wait=False`` call :meth:`Server.wait` before use
    (starting several at once saves their import time, which is seconds each)."""
    port = free_port()
    state_dir = procs.log_dir / f"state-{port}"
    state_dir.mkdir()
    args = [
        PYTHON, "-m", "bench.server", "--channel", channel, "--port", str(port),
        "--bot-delay-ms", str(bot_delay_ms), "--webhook-token", WEBHOOK_TOKEN,
        "--state-dir", str(state_dir),
    ]  # fmt: skip
    if not reply:
        args.append("--no-reply")
    if emulator_url:
        args += ["--emulator-url", emulator_url]
    args += extra or []
    child = procs.start(name or f"server-{channel}", args, env)
    server = Server(child, f"http://127.0.0.1:{port}", channel)
    if wait:
        server.wait()
    return server


def emulator_sends(emulator_url: str, phones: Optional[Set[str]] = None) -> int:
    """How many messages the emulator has recorded (for ``phones`` only, if given)."""
    summaries = httpx.get(f"{emulator_url}/_emulator/conversations", timeout=10).json()
    return sum(
        int(item["count"])
        for item in summaries["conversations"]
        if phones is None or item["phone"] in phones
    )


def clear_emulator(emulator_url: str) -> None:
    httpx.delete(f"{emulator_url}/_emulator/messages", timeout=10).raise_for_status()


def wait_for_sends(
    emulator_url: str, expected: int, deadline_s: float, phones: Optional[Set[str]] = None
) -> int:
    """Poll the emulator until ``expected`` sends are recorded or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    seen = emulator_sends(emulator_url, phones)
    while seen < expected and time.monotonic() < deadline:
        time.sleep(0.25)
        seen = emulator_sends(emulator_url, phones)
    return seen

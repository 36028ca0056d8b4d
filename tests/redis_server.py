"""A Redis for tests: the machine's own on 127.0.0.1:6379, or one started for the test run."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Optional

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis() -> Optional[str]:
    """A redis:// URL that answers, starting ``redis-server`` on a free port when needed."""
    if _answers(6379):
        return DEFAULT_URL
    server = shutil.which("redis-server")
    if server is None:
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _answers(port):
            return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    return None

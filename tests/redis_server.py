"""A Redis for tests: the machine's own on 127.0.0.1:6379, or one started for the test run."""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import time
from typing import List, Optional

from scripts.children import child_dies_with_parent

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


_started: List[subprocess.Popen[bytes]] = []


@atexit.register
def _stop_started() -> None:
    for proc in _started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


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
    # A child of the test run, not a daemon: it stops when the run ends, and dies with it if
    # the run is killed.
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=child_dies_with_parent,
    )
    _started.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _answers(port):
            return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    return None


def forget_keys(url: str, *patterns: str) -> None:
    """Delete every key matching ``patterns`` (SCAN globs): what a test or benchmark left in a
    Redis that others share. Identity links never expire, so nothing else would remove them."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for pattern in patterns:
            keys = list(client.scan_iter(pattern, count=1000))
            for start in range(0, len(keys), 1000):
                client.unlink(*keys[start : start + 1000])
    finally:
        client.close()

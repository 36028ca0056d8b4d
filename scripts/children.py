"""Waiting for and stopping the dev tools' child processes (``make run``, tests, benchmarks).

``make run``, the end-to-end tests and the benchmarks all start servers (the emulator, the action
server, ``rasa run``) and must not talk to one before it listens. The wait lives here, once, and
not in ``zapi_channel/``: that is the shipped package, and no bot needs to start processes.

Tests and benchmarks import this as ``scripts.children`` (the checkout is on ``sys.path`` under
pytest and ``python -m bench.run``); ``scripts/run_local.py`` puts the checkout there itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Callable, Optional

import httpx


class NotAnswering(RuntimeError):
    """A child exited (``returncode`` is set) or did not answer in time (``returncode`` is None).

    The message ends with the child's recent output, which is what says why.
    """

    def __init__(
        self, name: str, url: str, timeout: float, *, returncode: Optional[int], output: str
    ) -> None:
        self.name = name
        self.url = url
        self.timeout = timeout
        self.returncode = returncode
        if returncode is not None:
            message = f"{name} exited with {returncode}:\n{output}"
        else:
            message = f"{name} did not answer {url} within {timeout}s:\n{output}"
        super().__init__(message)


def wait_http(
    proc: subprocess.Popen[Any],
    url: str,
    timeout: float,
    *,
    name: str,
    output: Optional[Callable[[], str]] = None,
    interval: float = 0.3,
) -> None:
    """Return once ``url`` answers with a status below 500; raise :class:`NotAnswering` otherwise.

    ``output`` gives the child's recent output for the error (none when the caller already shows
    it); it is called only on failure, so a log file is read once, when it says the most. Usage::

        wait_http(proc, "http://127.0.0.1:5005/webhooks/zapi/", 240, name="rasa")
    """

    def failure(returncode: Optional[int]) -> NotAnswering:
        tail = output() if output else ""
        return NotAnswering(name, url, timeout, returncode=returncode, output=tail)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Checked before each request: a child that died would otherwise cost the whole timeout.
        if proc.poll() is not None:
            raise failure(proc.returncode)
        try:
            # A 4xx still means the server is up (a health path may want a token or a method).
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(interval)
    raise failure(None)


def stop_group(proc: subprocess.Popen[Any], timeout: float = 15) -> Optional[int]:
    """SIGTERM the child's process group, SIGKILL it after ``timeout`` s; its exit code.

    The whole group, because a child such as ``rasa run`` starts workers of its own. The child
    must have been started with ``start_new_session=True``.
    """
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode

"""``scripts/children.py``: the one wait that ``make run``, the tests and the benchmarks share.

Its failure paths otherwise run only when a server breaks, which is when their messages matter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Iterator, List

import pytest

from scripts.children import NotAnswering, stop_group, wait_http
from tests.livesanic import free_port


@pytest.fixture
def start() -> Iterator[List[subprocess.Popen[bytes]]]:
    started: List[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_child_that_answers_ends_the_wait(start: List[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    start.append(server)
    wait_http(server, f"http://127.0.0.1:{port}/", 30, name="server")
    assert server.poll() is None


def test_a_child_that_exits_fails_at_once_with_its_exit_code_and_output(
    start: List[subprocess.Popen[bytes]],
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    start.append(child)
    with pytest.raises(NotAnswering) as failure:
        wait_http(child, f"http://127.0.0.1:{free_port()}/", 30, name="dies", output=lambda: "boom")
    assert failure.value.returncode == 3
    assert str(failure.value) == "dies exited with 3:\nboom"


def test_a_child_that_never_answers_fails_at_the_deadline(
    start: List[subprocess.Popen[bytes]],
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start.append(child)
    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(NotAnswering) as failure:
        wait_http(child, url, 0.5, name="sleeps", interval=0.1)
    assert failure.value.returncode is None
    assert str(failure.value) == f"sleeps did not answer {url} within 0.5s:\n"


def test_stop_group_ends_a_child_and_its_children_even_if_it_ignores_sigterm() -> None:
    # The child ignores SIGTERM (so only the SIGKILL after the timeout ends it) and starts a
    # grandchild of its own, which must not outlive it: the whole group is signalled.
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(grandchild.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    assert stop_group(proc, timeout=0.5) == -signal.SIGKILL
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild outlived its process group's stop")


def test_stop_group_of_a_child_that_already_exited_returns_its_code() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    proc.wait()
    assert stop_group(proc) == 3

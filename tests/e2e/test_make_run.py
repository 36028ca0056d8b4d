"""The README's first command: ``make run`` brings up the demo bot on the emulator and it answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, Set

import pytest

from scripts.children import port_is_free
from tests.livesanic import free_port
from tests.processes import ROOT, child_env

pytestmark = pytest.mark.e2e


def test_make_run_starts_everything_and_the_bot_answers_hi() -> None:
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "scripts" / "run_local.py"), "--smoke",
            "--emulator-port", str(free_port()),
            "--rasa-port", str(free_port()),
            "--actions-port", str(free_port()),
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert 'bot said: "Hi Dev! I\'m the Z-API demo bot."' in output
    assert "*1.* A picture" in output


# -- stopping: every signal, and make killed outright ---------------------------------------------


def descendants(pid: int) -> Set[int]:
    """Every process below ``pid`` (children, theirs, ...), read from /proc."""
    parents: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The command name (2nd field) is in parentheses and may hold spaces.
                parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found: Set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def alive(pids: Iterable[int]) -> Set[int]:
    living = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                    living.add(pid)
        except OSError:
            continue
    return living


@pytest.mark.parametrize(
    ("how", "to"),
    [
        ("SIGINT", "group"),  # Ctrl-C: the terminal signals the foreground process group
        ("SIGTERM", "make"),  # an IDE's stop button, `timeout make run`: make alone
        ("SIGHUP", "group"),  # a closed terminal or a dropped SSH session: the whole job
        ("SIGHUP", "script"),  # `kill -HUP` of the Python process itself
        ("SIGKILL", "make"),  # make killed outright: the parent-death signals take over
    ],
)
def test_make_run_leaves_nothing_behind(how: str, to: str, tmp_path: Path) -> None:
    ports = {"EMULATOR_PORT": free_port(), "ACTIONS_PORT": free_port(), "RASA_PORT": free_port()}
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        make = subprocess.Popen(
            ["make", "-s", "run"],
            cwd=ROOT,
            env={**child_env(), **{k: str(v) for k, v in ports.items()}},
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group, as a terminal gives a job.
            start_new_session=True,
        )
    tree: Set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while "Ready." not in log.read_text(errors="replace"):
            assert make.poll() is None, log.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
            time.sleep(0.5)
        tree = descendants(make.pid)
        assert len(tree) >= 4, tree  # run_local.py, the emulator, the action server, rasa run
        signum = getattr(signal, how)
        if to == "group":
            os.killpg(make.pid, signum)
        elif to == "make":
            os.kill(make.pid, signum)
        else:
            [script] = [pid for pid in tree if _parent(pid) == make.pid]
            os.kill(script, signum)
        make.wait(90)
        deadline = time.monotonic() + 60
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(tree), (how, alive(tree), log.read_text(errors="replace")[-3000:])
        for name, port in ports.items():
            assert port_is_free(port), (name, port)
    finally:
        for pid in alive(tree | {make.pid}):
            os.kill(pid, signal.SIGKILL)
        make.wait(10)


def test_make_run_names_the_port_that_is_taken_and_by_what(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "run_local.py"),
             "--emulator-port", str(free_port()), "--rasa-port", str(port),
             "--actions-port", str(free_port())],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"Port {port} (rasa) is taken by pid {os.getpid()}" in output, output
    assert "Training" not in output  # refused before any work

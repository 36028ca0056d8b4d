"""The processes a benchmark starts: servers on loopback ports, stopped by process group.

Modelled on ``tests/processes.py`` (kept separate so that the benchmarks do not break when the
tests' helpers change); the wait for a server to answer is the one ``make run`` and the tests use,
``scripts/children.py``. Every child runs in its own session, so stopping it with ``killpg`` also
stops whatever it started, and nothing else.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from scripts.children import child_dies_with_parent, stop_group, wait_http

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        RASA_TELEMETRY_ENABLED="false",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        # The children import `bench.server` and `zapi_channel` from this checkout.
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A child process logging to ``log_dir/<name>.log``; :meth:`stop` is SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, args: List[str], log_dir: Path, env: Optional[Dict[str, str]] = None
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**child_env(), **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Even a test run (or a benchmark) killed with SIGKILL leaves no server behind.
            preexec_fn=child_dies_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_http(self, url: str, timeout: float) -> None:
        """Return once ``url`` answers (see ``scripts.children.wait_http``)."""
        wait_http(self.proc, url, timeout, name=self.name, output=self.log_tail, interval=0.2)

    def helpers(self) -> List[int]:
        """Pids of the processes the channel started beside this one: the state file's writer
        (``zapi_channel.delivery.writer``), whose memory and CPU are the channel's too."""
        found: List[int] = []
        try:
            tasks = list(Path(f"/proc/{self.pid}/task").iterdir())
        except OSError:
            return found
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"zapi_channel.delivery.writer" in cmdline:
                    found.append(int(child))
        return found

    def rss_kib(self) -> int:
        """Resident memory (``VmRSS`` in ``/proc/PID/status``) of the process and its helpers
        (:meth:`helpers`), in KiB."""
        return sum(_rss_kib(pid) for pid in (self.pid, *self.helpers()))

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the process and its helpers (``/proc/PID/stat``)."""
        user, system = self.cpu_split()
        return user + system

    def cpu_split(self) -> Tuple[float, float]:
        """User and system (the kernel's work for it) CPU seconds so far of the process and its
        helpers (:meth:`helpers`)."""
        user, system = _cpu(self.pid)
        helpers = self.helpers_cpu()
        return user + helpers[0], system + helpers[1]

    def helpers_cpu(self) -> Tuple[float, float]:
        """User and system CPU seconds so far of the helpers alone."""
        user = system = 0.0
        for pid in self.helpers():
            try:
                more = _cpu(pid)
            except OSError:
                continue  # ended meanwhile
            user, system = user + more[0], system + more[1]
        return user, system

    def thread_cpu(self) -> Tuple[Tuple[float, float], Tuple[float, float]]:
        """User and system CPU seconds so far of the main thread (the event loop's, whose id is
        the pid) and of all the others together (``/proc/PID/task/TID/stat``)."""
        main, others = [0.0, 0.0], [0.0, 0.0]
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the thread ended meanwhile
            into = main if task.name == str(self.pid) else others
            into[0] += int(fields[11]) / CLOCK_TICKS
            into[1] += int(fields[12]) / CLOCK_TICKS
        return (main[0], main[1]), (others[0], others[1])

    def stop(self, timeout: float = 15) -> Optional[int]:
        returncode = stop_group(self.proc, timeout)
        self._log.close()
        return returncode


def _cpu(pid: int) -> Tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine_busy() -> Tuple[int, int]:
    """(busy, total) jiffies of every CPU since boot (``/proc/stat``): the difference of two
    readings says how much of the machine was in use in between."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle and iowait
    return sum(values) - idle, sum(values)


class Processes:
    """Children stopped together, last started first (``with Processes(log_dir) as procs:``)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: List[Process] = []

    def start(self, name: str, args: List[str], env: Optional[Dict[str, str]] = None) -> Process:
        child = Process(name, args, self.log_dir, env)
        self._children.append(child)
        return child

    def stop(self, child: Process) -> None:
        child.stop()
        self._children.remove(child)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for child in reversed(self._children):
            child.stop()
        self._children.clear()

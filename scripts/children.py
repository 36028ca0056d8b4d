"""Waiting for and stopping the dev tools' child processes (``make run``, tests, benchmarks).

``make run``, the end-to-end tests and the benchmarks all start servers (the emulator, the action
server, ``rasa run``) and must not talk to one before it listens. The wait lives here, once, and
not in ``zapi_channel/``: that is the shipped package, and no bot needs to start processes.

Tests and benchmarks import this as ``scripts.children`` (the checkout is on ``sys.path`` under
pytest and ``python -m bench.run``); ``scripts/run_local.py`` puts the checkout there itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
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


# -- never outliving the parent ---------------------------------------------------------------

#: ``prctl(2)`` option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux only).

    Returns ``False`` where the kernel cannot (macOS, BSD, Windows): there, a parent killed with
    SIGKILL leaves its children running, and only a clean stop takes them down. Meant both for
    a process to call on itself (``make run``'s script, whose parent is ``make``) and, through
    :func:`child_dies_with_parent`, for the children it starts.
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    # The parent may have died before the call, in which case no signal will ever come.
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def child_dies_with_parent() -> None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM if this process dies.

    It runs in the child between fork and exec, and only calls ``prctl``: nothing there can
    take a lock that another thread of the parent held at the fork.
    """
    die_with_parent(signal.SIGTERM)


# -- ports ------------------------------------------------------------------------------------


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now (a lingering TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> Optional[str]:
    """``pid 1234 (the command line)`` of the process listening on ``port``, if it can be known.

    Linux only, through ``/proc``: the listening socket's inode in ``/proc/net/tcp{,6}``, then the
    process holding it among ``/proc/*/fd``. Elsewhere, or for another user's process, ``None``.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                    if len(fields) > 9 and fields[3] == "0A":
                        if int(fields[1].rsplit(":", 1)[1], 16) == port:
                            inodes.add(fields[9])
        except OSError:
            return None
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in fds):
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as raw:
                command = " ".join(raw.read().replace(b"\0", b" ").decode(errors="replace").split())
        except OSError:
            continue
        return f"pid {pid} ({command[:120]})"
    return None

"""Where a server's CPU goes: py-spy samples, attributed to ours, sanic's, Rasa's and the rest.

py-spy (from PyPI) samples a running process from outside, so the server runs unmodified.
``--nonblocking`` keeps it from pausing the process at each sample (the numbers move less).
Each sample's innermost frame is charged to the package its file belongs to ("self" time).
Time in C code (uvloop's sockets, the JSON parser) shows up in the Python frame that called it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

#: Buckets, first match wins: (name, how the frame's file path starts). py-spy prints paths
#: relative to ``sys.path`` (``sanic/http.py``, ``json/decoder.py``).
BUCKETS: Tuple[Tuple[str, str], ...] = (
    ("zapi_channel (ours)", "zapi_channel/"),
    ("bench (stub agent, bare handler, load driver)", "bench/"),
    # Rasa validates every action server answer with jsonschema.validate (rasa/core/actions).
    ("jsonschema (Rasa's action-result validation)", "jsonschema/"),
    ("tensorflow / keras (the model)", "tensorflow/"),
    ("tensorflow / keras (the model)", "keras/"),
    ("numpy / scipy", "numpy/"),
    ("numpy / scipy", "scipy/"),
    ("tensorflow / keras (the model)", "sklearn/"),
    ("rasa", "dask/"),
    ("rasa", "rasa/"),
    ("aiohttp (Rasa's action server client)", "aiohttp/"),
    ("sanic", "sanic/"),
    ("sanic", "sanic_routing/"),
    ("httpx / httpcore", "httpx/"),
    ("httpx / httpcore", "httpcore/"),
    ("httpx / httpcore", "anyio/"),
    ("httpx / httpcore", "h11/"),
    ("tenacity", "tenacity/"),
    ("asyncio", "asyncio/"),
    ("json (stdlib)", "json/"),
    ("logging (stdlib)", "logging/"),
    ("uvloop", "uvloop/"),
    ("urllib (sanic's query-string parsing)", "urllib/"),
    ("typing / abc (isinstance against typing.Mapping)", "typing.py"),
    ("typing / abc (isinstance against typing.Mapping)", "abc.py"),
    ("typing / abc (isinstance against typing.Mapping)", "_collections_abc.py"),
)


#: Buckets of the work a channel hands to Rasa: the same whichever channel brought the message.
RASA_SIDE = frozenset(
    {
        "rasa",
        "jsonschema (Rasa's action-result validation)",
        "tensorflow / keras (the model)",
        "numpy / scipy",
    }
)


def py_spy() -> Optional[str]:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if os.path.exists(found) else None


@dataclass
class Profile:
    samples: int = 0
    #: Self time by bucket, as sample counts.
    by_bucket: Counter[str] = field(default_factory=Counter)
    #: Our functions (``function (file)``) by inclusive samples.
    ours_inclusive: Counter[str] = field(default_factory=Counter)
    #: The same, leaving out samples whose innermost frame is Rasa's or the model's: what our
    #: functions cost themselves and through the libraries they call, not the turn they hand
    #: to Rasa.
    ours_own: Counter[str] = field(default_factory=Counter)
    #: Innermost frames by self samples.
    top_frames: Counter[str] = field(default_factory=Counter)
    #: Samples by thread name (``MainThread`` is the event loop's; ``zapi-channel-state`` the
    #: state file's): with ``--gil``, each thread's share of the time it held the GIL.
    by_thread: Counter[str] = field(default_factory=Counter)
    #: Samples in aiohttp code that no Rasa or zapi_channel frame called: the event loop's
    #: callbacks into aiohttp's protocol, which read answers for whichever client sent them.
    loose_aiohttp: int = 0

    def share(self, count: int) -> float:
        return 100 * count / self.samples if self.samples else 0.0


def file_of(frame: str) -> str:
    """``sanic/http.py`` from ``http1 (sanic/http.py:146)``; ``""`` for code without a file."""
    where = frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]
    # sanic compiles some methods at start-up ("send (send:13)"); dataclasses generate
    # __init__ ("<string>"): neither has a file of its own.
    return where if where.endswith(".py") else ""


#: Work done on behalf of these packages is charged to them, whatever library they call.
_CHARGED_WHOLE = (("jsonschema/", "jsonschema (Rasa's action-result validation)"),)


def _in(path: str, package: str) -> bool:
    """Whether ``path`` (as py-spy printed it, relative or full) is in ``package``."""
    return path.startswith(package) or f"/{package}" in path


def bucket_of(frames: List[str]) -> str:
    """The package of the innermost frame that has a file (generated code is charged to the
    code that called it)."""
    for prefix, name in _CHARGED_WHOLE:
        # jsonschema 4.17 spends much of its time in pyrsistent and attrs.
        if any(file_of(frame).startswith(prefix) for frame in frames):
            return name
    for frame in reversed(frames):
        path = file_of(frame)
        if not path:
            continue
        for name, prefix in BUCKETS:
            if _in(path, prefix):
                return name
        return "other"
    return "other"


def _short(frame: str) -> str:
    """``receive (zapi_channel/channel.py:330)``, shortened if py-spy printed a full path."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("/site-packages/", "/lib/python3.10/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


def parse_collapsed(text: str) -> Profile:
    """Read py-spy's ``--format raw`` output: ``frame;frame;...;innermost count`` per line."""
    profile = Profile()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread (")), "")
        # The first frame is the thread ("process 123:\"python ...\"" or "thread (0x...)").
        frames = [f for f in frames if "(" in f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        profile.samples += count
        if thread:
            # "thread (0x7F8D...): MainThread" -> "MainThread"
            profile.by_thread[thread.partition("): ")[2] or thread] += count
        bucket = bucket_of(frames)
        profile.by_bucket[bucket] += count
        profile.top_frames[_short(frames[-1])] += count
        files = [file_of(frame) for frame in frames]
        if any(_in(f, "aiohttp/") for f in files) and not any(
            _in(f, "rasa/") or _in(f, "zapi_channel/") for f in files
        ):
            profile.loose_aiohttp += count
        seen = set()
        for frame in frames:
            if file_of(frame).startswith("zapi_channel/"):
                short = _short(frame)
                # Without line numbers: one entry per function, however often it recurs.
                key = short.rsplit(":", 1)[0] + ")"
                if key not in seen:
                    seen.add(key)
                    profile.ours_inclusive[key] += count
                    if bucket not in RASA_SIDE:
                        profile.ours_own[key] += count
    return profile


def record(
    pid: int, seconds: float, out: Path, *, rate: int = 200, gil: bool = False
) -> Optional[Profile]:
    """Sample ``pid`` for ``seconds``, ``rate`` times a second; ``None`` if py-spy is missing or
    not allowed to attach.

    With ``gil``, only the thread holding the GIL is sampled: each sample is then 1/``rate`` s
    of Python running (threads waiting in epoll, a queue or a C call that released the GIL are
    left out), which makes two runs' samples per message comparable as CPU.
    """
    tool = py_spy()
    if tool is None:
        return None
    result = subprocess.run(
        [
            tool, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", str(rate), "--nonblocking", "--format", "raw", "--output", str(out),
            "--threads", *(["--gil"] if gil else []),
        ],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not out.exists():
        (out.parent / (out.name + ".err")).write_text(result.stdout + result.stderr)
        return None
    return parse_collapsed(out.read_text())


class Background:
    """:func:`record` in a thread of its own, while the caller makes the load it samples::

    sampler = Background(pid, seconds, out)
    ...  # the load
    found = sampler.join()
    """

    def __init__(
        self, pid: int, seconds: float, out: Path, *, rate: int = 200, gil: bool = False
    ) -> None:
        self.seconds = seconds
        self._found: List[Optional[Profile]] = [None]
        self._thread = threading.Thread(
            target=lambda: self._found.__setitem__(
                0, record(pid, seconds, out, rate=rate, gil=gil)
            ),
            daemon=True,
        )
        self._thread.start()

    def join(self) -> Optional[Profile]:
        """The profile once py-spy is done; ``None`` if it could not sample or took too long."""
        self._thread.join(self.seconds + 90)
        found = self._found[0]
        return found if found is not None and found.samples else None


def compare(
    base: Profile,
    ours: Profile,
    base_unit: Callable[[int], float],
    ours_unit: Callable[[int], float],
) -> List[Tuple[str, float, float]]:
    """(package, the baseline's self time, ours), each turned into a unit of its own run (time
    per message, per call), the largest differences first."""
    rows = [
        (name, base_unit(base.by_bucket.get(name, 0)), ours_unit(ours.by_bucket.get(name, 0)))
        for name in set(base.by_bucket) | set(ours.by_bucket)
    ]
    return sorted(rows, key=lambda r: abs(r[2] - r[1]), reverse=True)


def summary_rows(profile: Profile, top: int = 8) -> Dict[str, List[Sequence[str]]]:
    """Rows for the report: buckets, our functions, the hottest frames."""
    buckets: List[Sequence[str]] = [
        [name, f"{profile.share(count):.1f}%"] for name, count in profile.by_bucket.most_common()
    ]
    ours: List[Sequence[str]] = [
        [name, f"{profile.share(count):.1f}%"]
        for name, count in profile.ours_inclusive.most_common(top)
    ]
    frames: List[Sequence[str]] = [
        [name, f"{profile.share(count):.1f}%"]
        for name, count in profile.top_frames.most_common(top)
    ]
    return {"buckets": buckets, "ours": ours, "frames": frames}

"""What each benchmark hands back, and how ``docs/benchmarks.md`` is written from it."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Sequence

from bench import wrk


@dataclass
class Target:
    """One goal of the issue and how this run did against it."""

    what: str
    goal: str
    result: str
    met: bool
    #: Why it was met or missed: what is ours and what is Rasa's or sanic's.
    why: str = ""


@dataclass
class Table:
    headers: Sequence[str]
    rows: List[Sequence[str]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.headers) + " |",
            "| " + " | ".join("---" for _ in self.headers) + " |",
        ]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Section:
    title: str
    #: Load generator and why, what is compared, how long: prose in Markdown.
    method: str
    tables: List[Table] = field(default_factory=list)
    targets: List[Target] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    #: One line for the summary table: (ours, baseline, ratio).
    summary: Optional[Sequence[str]] = None
    #: A Markdown image shown before everything else.
    figure: str = ""
    seconds: float = 0.0

    def markdown(self) -> str:
        # The result first (the figure, the tables, met or missed and why), the method after:
        # a reader looking for a number should not have to read how it was made to find it.
        parts = [f"## {self.title}", ""]
        if self.figure:
            parts += [self.figure, ""]
        for table in self.tables:
            parts += [table.markdown(), ""]
        for target in self.targets:
            mark = "**met**" if target.met else "**missed**"
            line = f"- Target: {target.what}, {target.goal}: {target.result}, {mark}."
            if target.why:
                line += f" {target.why}"
            parts.append(line)
        if self.targets:
            parts.append("")
        for note in self.notes:
            parts += [note.strip(), ""]
        parts += ["**How it was measured.** " + self.method.strip(), ""]
        parts.append(f"*This section took {self.seconds:.0f} s.*")
        return "\n".join(parts) + "\n"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def machine_table() -> Table:
    load = os.getloadavg()
    table = Table(["what", "value"])
    table.rows += [
        ["CPU", f"{_cpu_model()}, {os.cpu_count()} cores"],
        ["memory", f"{_memory_gib():.1f} GiB"],
        ["OS", f"{platform.system()} {platform.release()}"],
        ["load average when the run started (1/5/15 min)", f"{load[0]:.2f} / {load[1]:.2f} / "
         f"{load[2]:.2f}"],
        ["python", platform.python_version()],
        ["rasa", _version("rasa")],
        ["sanic", _version("sanic")],
        ["httpx", _version("httpx")],
        ["uvloop (sanic's event loop)", _version("uvloop")],
        ["twilio (Rasa's Twilio channel)", _version("twilio")],
        ["wrk", wrk.wrk_version()],
        ["py-spy (profiles)", _version("py-spy")],
    ]  # fmt: skip
    return table


def write(
    path: Path,
    *,
    sections: Sequence[Section],
    machine: Table,
    preamble: str,
    total_seconds: float,
    started: str,
    quick: bool = False,
) -> None:
    # In the order (1, 1b, 2, ...), whatever order they ran in.
    sections = sorted(sections, key=lambda section: section.title.split(" ", 1)[0])
    summary = Table(["benchmark", "ours", "baseline", "ratio (ours / baseline)", "target", "met"])
    for section in sections:
        ours, base, ratio = section.summary or ("", "", "")
        for index, target in enumerate(section.targets):
            summary.rows.append(
                [
                    section.title if index == 0 else "",
                    ours if index == 0 else "",
                    base if index == 0 else "",
                    ratio if index == 0 else "",
                    f"{target.what}: {target.goal} (got {target.result})",
                    "yes" if target.met else "**no**",
                ]
            )
        if not section.targets:
            summary.rows.append([section.title, ours, base, ratio, "", ""])
    minutes, seconds = divmod(round(total_seconds), 60)
    text = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`bench/run.py`) on {started}; the whole run took "
        f"{minutes} min {seconds:02d} s. Do not edit by hand: run `make bench` again. "
        "How to read and rerun them: `bench/README.md`.",
        "",
        *(["**A `--quick` run: shorter measurements, rougher numbers.**", ""] if quick else []),
        "## Summary",
        "",
        summary.markdown(),
        "",
        "## Machine and versions",
        "",
        machine.markdown(),
        "",
        preamble.strip(),
        "",
    ]
    text += [section.markdown() for section in sections]
    path.write_text("\n".join(text))

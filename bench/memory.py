"""Benchmark 5: resident memory of our server through 100,000 new webhooks, 100,000 duplicates
and 20,000 more new ones, against a bare handler. Deduplication keys live in the state file
(SQLite), not in the process: memory should stay flat from the start.

wrk sends the requests in chunks (a script with a request limit, see :mod:`bench.wrk`); between
chunks the server is idle and its ``VmRSS`` is read from ``/proc/PID/status``. The first 100,000
also go to the bare sanic handler, which shows what the Python process and sanic do by themselves.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

from bench import bodies, wrk
from bench.common import Context, Server, start_server
from bench.procs import Processes
from bench.report import Section, Table, Target

CONNECTIONS = 100
#: Duplicates repeat ids among the newest this many accepted (all still within the dedup window).
DEDUP_CAP = 100_000
#: RSS after the duplicates and the last new ids may exceed RSS after the first by this much and be
#: called flat (Python's allocator keeps some slack).
FLAT_TOLERANCE = 0.05


@dataclass
class Phase:
    name: str
    requests: int
    #: 0: new ids; otherwise the ids repeat within a window of the last ``DEDUP_CAP`` accepted.
    duplicates: bool = False


@dataclass
class Curve:
    label: str
    #: (requests sent so far, RSS in MiB)
    points: List[Tuple[int, float]] = field(default_factory=list)
    #: RSS in MiB at the end of each phase, by phase name.
    at_end: dict[str, float] = field(default_factory=dict)
    accepted: int = 0
    duplicate: int = 0
    errors: int = 0


def rss_mib(server: Server) -> float:
    return server.process.rss_kib() / 1024


def drive(ctx: Context, server: Server, phases: List[Phase], chunk: int) -> Curve:
    curve = Curve(server.channel)
    curve.points.append((0, rss_mib(server)))
    sent_total = 0
    new_ids = 0  # ids 0 .. new_ids - 1 have been sent
    for phase in phases:
        done = 0
        # Duplicates cycle through the ids still remembered: the newest DEDUP_CAP accepted.
        window_start = max(0, new_ids - DEDUP_CAP)
        window = max(1, new_ids - window_start)
        while done < phase.requests:
            size = min(chunk, phase.requests - done)
            if phase.duplicates:
                script = wrk.write_script(
                    ctx.log_dir / f"memory-{server.channel}.lua",
                    body=bodies.received_template(),
                    url_path=server.webhook_path,
                    health_path=server.health_path,
                    first=window_start,
                    offset=done,
                    cycle=window,
                    limit=size,
                    connections=CONNECTIONS,
                )
            else:
                script = wrk.write_script(
                    ctx.log_dir / f"memory-{server.channel}.lua",
                    body=bodies.received_template(),
                    url_path=server.webhook_path,
                    health_path=server.health_path,
                    first=0,
                    offset=new_ids,
                    limit=size,
                    connections=CONNECTIONS,
                )
            result = wrk.run_wrk(server.url, script, connections=CONNECTIONS, seconds=60)
            if not phase.duplicates:
                new_ids += result.sent
            done += result.sent
            sent_total += result.sent
            curve.accepted += result.accepted
            curve.duplicate += result.duplicate
            curve.errors += result.error_count
            # The no-op turns of the last requests finish a moment after their acks.
            time.sleep(0.2)
            curve.points.append((sent_total, rss_mib(server)))
        curve.at_end[phase.name] = curve.points[-1][1]
    return curve


def plot(curves: List[Curve], phases: List[Phase], out: Path) -> None:
    with warnings.catch_warnings():
        # matplotlib 3.5 (Rasa's pin) uses pyparsing names that newer pyparsing deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        import matplotlib

        matplotlib.use("Agg")  # no display here
        import matplotlib.pyplot as plt
        import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    start = 0
    shades = ["#f2f2f2", "#e3ecf7", "#f2f2f2"]
    for index, phase in enumerate(phases):
        ax.axvspan(start, start + phase.requests, color=shades[index % 3], zorder=0)
        ax.text(
            start + phase.requests / 2, 0.02, phase.name, transform=ax.get_xaxis_transform(),
            ha="center", va="bottom", fontsize=8, color="#555555",
        )  # fmt: skip
        start += phase.requests
    for curve, style in zip(curves, ("-o", "-s")):
        xs = [x for x, _ in curve.points]
        ys = [y for _, y in curve.points]
        ax.plot(xs, ys, style, markersize=3, label=curve.label)
    ax.set_xlabel("webhooks sent")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title("Resident memory of the webhook server (VmRSS after every chunk)")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def run(ctx: Context) -> Section:
    began = time.monotonic()
    scale = 1.0 if not ctx.quick else 0.1
    phases = [
        Phase("100k new message ids", int(100_000 * scale)),
        Phase("100k duplicates", int(100_000 * scale), duplicates=True),
        Phase("20k more new ids", int(20_000 * scale)),
    ]
    chunk = int(10_000 * scale)
    image = ctx.docs_dir / "benchmarks-memory.png"
    with Processes(ctx.log_dir) as procs:
        servers = [
            start_server(procs, name, name=f"memory-{name}", reply=False, wait=False)
            for name in ("bare", "zapi")
        ]
        for server in servers:
            server.wait()
        # The bare handler keeps nothing per message: its first phase shows all there is to see.
        bare = drive(ctx, servers[0], phases[:1], chunk)
        ours = drive(ctx, servers[1], phases, chunk)
    bare.label = "bare sanic handler"
    ours.label = "ZApiInput (ours), no-op agent"
    plot([ours, bare], phases, image)

    first, second, third = (p.name for p in phases)
    table = Table(["server", "at start", f"after {first}", f"after {second}", f"after {third}",
                   "answers: accepted / duplicate / errors"])  # fmt: skip
    for curve in (bare, ours):
        start = curve.points[0][1]
        cells = [
            f"{curve.at_end[name]:.1f} MiB ({curve.at_end[name] / start:.2f}x)"
            if name in curve.at_end
            else "not run"
            for name in (first, second, third)
        ]
        answers = (
            f"{curve.accepted:,} / {curve.duplicate:,} / {curve.errors}"
            if curve is ours
            else f"— / — / {curve.errors}"
        )
        table.rows.append([curve.label, f"{start:.1f} MiB", *cells, answers])
    at_cap = ours.at_end[first]
    worst_after = max(ours.at_end[second], ours.at_end[third])
    growth_ours = at_cap - ours.points[0][1]
    growth_bare = bare.at_end[first] - bare.points[0][1]
    per_key = (growth_ours - growth_bare) * 1024 * 1024 / max(1, phases[0].requests)
    flat = worst_after <= at_cap * (1 + FLAT_TOLERANCE)
    section = Section(
        title="5. Memory",
        method=f"""
A fresh server of ours (no-op agent: no turn keeps anything) gets {phases[0].requests:,}
webhooks with new message ids, then {phases[1].requests:,} duplicates of ids it still remembers,
then {phases[2].requests:,} more new ids. Deduplication keys and the inbox live in the state file
(`state_path`, SQLite), so nothing per message should stay in the process. wrk sends them in
chunks of {chunk:,}
({CONNECTIONS} connections; a Lua request limit ends each chunk); after each chunk the server's
`VmRSS` is read from `/proc/PID/status`. wrk because 250,000 requests in a bounded time need a
generator that costs far less than the server. A fresh bare handler gets the first
{phases[0].requests:,} in the same chunks: what the Python process and sanic do on their own.
""",
        figure="![Resident memory of the webhook server](benchmarks-memory.png)",
        tables=[table],
        summary=(
            f"{at_cap:.0f} MiB after {phases[0].requests // 1000}k, {worst_after:.0f} MiB after",
            f"bare {bare.at_end[first]:.0f} MiB after {phases[0].requests // 1000}k",
            f"{worst_after / at_cap:.2f}x after the rest",
        ),
    )
    section.targets.append(
        Target(
            what="memory bounded (after the duplicates and more new ids, against after the first)",
            goal=f"flat within {FLAT_TOLERANCE:.0%}",
            result=f"{at_cap:.1f} → {worst_after:.1f} MiB ({worst_after / at_cap - 1:+.1%})",
            met=flat,
            why=(
                f"Growth in the first phase beyond what the bare server grew: about {per_key:.0f} "
                "bytes per message, the process warming up (SQLite's page cache, sanic's and "
                "the loop's structures). Deduplication keys are in the state file on disk, so "
                "duplicates and more new ids add nothing."
                if flat
                else "RSS kept growing: see the curve. Nothing per message should stay in the "
                "process (dedup keys and the inbox are in the state file): look for a growing "
                "structure."
            ),
        )
    )
    if ours.duplicate < phases[1].requests * 0.99:
        section.notes.append(
            f"Only {ours.duplicate:,} of {phases[1].requests:,} repeated ids were answered as "
            "duplicates: the window assumed to be remembered was wrong."
        )
    section.seconds = time.monotonic() - began
    return section

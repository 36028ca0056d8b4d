"""Benchmark 6: 1, 100 and 10,000 distinct customers in flight at once.

Each customer sends one message, all of them as one burst; the bot (the stub agent of
:mod:`bench.server`, ``--bot-delay-ms``) takes longer per turn than the webhook takes to
acknowledge, so the burst piles up as acknowledged, unanswered messages: one queue and one worker
per customer, each message kept in the state file. What is measured: the webhook's ack latency
while the pile grows, the server's resident memory at the peak and once everything is answered,
and the curve in between (``VmRSS`` sampled every 100 ms).

The question is whether what the channel holds per customer is bounded: it must grow with what
is in flight (a message acknowledged is a message kept) and shrink back once it is answered.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import httpx

from bench import bodies, trace, wrk
from bench.common import Context, Server, start_server
from bench.procs import Processes
from bench.report import Section, Table, Target
from bench.stats import ms
from zapi_channel.config import ChannelConfig

#: Concurrent connections of the burst (Z-API's or a load balancer's; closed loop).
CONNECTIONS = 8
#: One turn of the stub bot: slower than an ack, so that the burst piles up.
BOT_DELAY_MS = 20
#: Turns at a time: the channel's default.
MAX_CONCURRENCY = ChannelConfig.max_concurrency
#: The ack target of the issue, at any size.
ACK_P99_TARGET_MS = 10.0
#: The second burst of the largest size may leave memory this much above the first one's.
BACK_TOLERANCE = 0.05


@dataclass
class Run:
    customers: int
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0
    base_mib: float = 0.0
    peak_mib: float = 0.0
    after_mib: float = 0.0
    burst_s: float = 0.0
    #: Python's full garbage collections during the run, and the longest pause so far.
    gc_full: int = 0
    gc_max_ms: float = 0.0
    drain_s: float = 0.0
    #: (seconds since the burst began, RSS MiB, messages handled so far)
    curve: List[Tuple[float, float, int]] = field(default_factory=list)
    #: Where the burst's acks' time went inside the server (:mod:`bench.trace`).
    trace: Dict[str, Any] = field(default_factory=dict)


def stats(server: Server) -> Dict[str, Any]:
    found: Dict[str, Any] = httpx.get(f"{server.url}/_bench/stats", timeout=10).json()
    return found


def handled(server: Server) -> int:
    return int(stats(server)["handled"])


def burst(ctx: Context, server: Server, first: int, count: int, run: Run) -> None:
    """``count`` messages from ``count`` new customers, sent by wrk as fast as it can."""
    connections = min(CONNECTIONS, count)
    script = wrk.write_script(
        ctx.log_dir / "scale.lua",
        body=bodies.received_template(),
        url_path=server.webhook_path,
        health_path=server.health_path,
        first=first,
        limit=count,
        connections=connections,
    )
    result = wrk.run_wrk(server.url, script, connections=connections, seconds=120)
    run.p50_ms, run.p99_ms, run.max_ms = result.p50_ms, result.p99_ms, result.max_ms
    run.errors = result.error_count + (result.sent - result.accepted)


def measure(ctx: Context, server: Server, first: int, customers: int, deadline_s: float) -> Run:
    run = Run(customers)
    rss = server.process.rss_kib
    before = stats(server)
    start_handled = int(before["handled"])
    run.base_mib = rss() / 1024
    trace.take(server)  # from here
    began = time.monotonic()
    burst(ctx, server, first, customers, run)
    run.burst_s = time.monotonic() - began
    # The burst's acks (and the turns' commits that ran meanwhile), not the drain after it.
    run.trace = trace.take(server)
    run.peak_mib = rss() / 1024
    run.curve.append((run.burst_s, run.peak_mib, handled(server) - start_handled))
    while time.monotonic() - began < deadline_s:
        done = handled(server) - start_handled
        run.curve.append((time.monotonic() - began, rss() / 1024, done))
        run.peak_mib = max(run.peak_mib, run.curve[-1][1])
        if done >= customers:
            break
        time.sleep(0.1)
    run.drain_s = time.monotonic() - began
    time.sleep(1.0)  # the last turns' state commits and task teardown
    run.after_mib = rss() / 1024
    after = stats(server)
    run.gc_full = int(after["gc_full"]) - int(before["gc_full"])
    run.gc_max_ms = float(after["gc_full_max_ms"])
    return run


def plot(runs: List[Run], out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for run in runs:
        xs = [t for t, _, _ in run.curve]
        left.plot(xs, [m for _, m, _ in run.curve], label=f"{run.customers:,} customers")
        right.plot(xs, [run.customers - h for _, _, h in run.curve], label=f"{run.customers:,}")
    left.set_xlabel("seconds since the burst began")
    left.set_ylabel("server RSS (MiB)")
    left.set_title("Memory while the customers are answered")
    left.set_ylim(bottom=0)
    left.legend(loc="lower right")
    right.set_xlabel("seconds since the burst began")
    right.set_ylabel("customers acknowledged, not answered yet")
    right.set_title("In flight")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def run(ctx: Context) -> Section:
    began = time.monotonic()
    # The largest size twice: memory that is reused, not leaked, stays where the first left it.
    sizes = [1, 100, 10_000, 10_000] if not ctx.quick else [1, 100, 1_000, 1_000]
    image = ctx.docs_dir / "benchmarks-scale.png"
    runs: List[Run] = []
    with Processes(ctx.log_dir) as procs:
        server = start_server(
            procs, "zapi", name="scale-zapi", bot_delay_ms=BOT_DELAY_MS, reply=False
        )
        # A warm-up burst, not counted: first requests pay imports and the state file's growth.
        measure(ctx, server, 900_000, 200, 60)
        first = 0
        for size in sizes:
            # Enough time to drain at the stub bot's pace, with room for a slow machine.
            runs.append(measure(ctx, server, first, size, 30 + size * BOT_DELAY_MS / 1000))
            first += size
    plot(runs, image)
    table = Table(
        ["customers in flight", "ack p50 / p99 / max", "burst", "all answered after",
         "RSS before", "RSS at the peak", "per customer in flight", "RSS once answered",
         "full GCs (longest so far)", "errors"]
    )  # fmt: skip
    for index, item in enumerate(runs):
        per = (item.peak_mib - item.base_mib) * 1024 / item.customers if item.customers else 0.0
        again = " (again)" if index and runs[index - 1].customers == item.customers else ""
        table.rows.append(
            [
                f"{item.customers:,}{again}",
                f"{ms(item.p50_ms)} / {ms(item.p99_ms)} / {ms(item.max_ms)}",
                f"{item.burst_s:.2f} s",
                f"{item.drain_s:.1f} s",
                f"{item.base_mib:.0f} MiB",
                f"{item.peak_mib:.0f} MiB",
                f"{per:.1f} KiB",
                f"{item.after_mib:.0f} MiB",
                f"{item.gc_full} ({item.gc_max_ms:.0f} ms)",
                str(item.errors),
            ]
        )
    worst_run = max(runs, key=lambda item: item.p99_ms)
    worst = worst_run.p99_ms
    first_big, second_big = runs[-2], runs[-1]
    biggest = second_big
    # Bounded: the second burst of the largest size reuses what the first one left.
    bounded = second_big.after_mib <= first_big.after_mib * (1 + BACK_TOLERANCE)
    per_customer = (first_big.peak_mib - first_big.base_mib) * 1024 / first_big.customers
    section = Section(
        title="6. Scale: many customers in flight",
        method=f"""
One server (`bench/server.py`: our channel, the embedded SQLite delivery, a stub bot whose turn
takes {BOT_DELAY_MS} ms and sends nothing). For each size, that many new customers each send
one message, as one burst over {CONNECTIONS} keep-alive connections (wrk, closed loop: each
connection posts its next message as soon as the last is acknowledged, so the server is as busy
as it can be and an ack waits behind at most the other connections' messages); the
channel runs {MAX_CONCURRENCY} turns at a time (`max_concurrency`), so the burst piles up as
acknowledged, unanswered messages, one queue per customer. "RSS" is the server's `VmRSS`, read
before the burst, every 100 ms until every message is answered, and a second after. A warm-up
burst of 200 customers comes first and is not counted.
""",
        figure="![Memory and customers in flight during each burst](benchmarks-scale.png)",
        tables=[table],
        summary=(
            f"ack p99 {ms(worst)} at worst",
            f"{biggest.customers:,} customers: {biggest.peak_mib:.0f} MiB at the peak",
            f"{biggest.after_mib:.0f} MiB once answered",
        ),
    )
    section.targets.append(
        Target(
            what="ack p99 while the customers pile up",
            goal=f"< {ACK_P99_TARGET_MS:.0f} ms at every size",
            result=f"{ms(worst)} at worst",
            met=worst < ACK_P99_TARGET_MS,
            why=(
                "Up to 100 customers in flight the ack stays at a couple of milliseconds: the "
                "webhook only parses, commits to the state file and queues the turn. "
                + (
                    f"With {worst_run.customers:,}: "
                    + trace.explain(worst_run.trace, worst, ACK_P99_TARGET_MS)
                    if worst >= ACK_P99_TARGET_MS and worst_run.trace
                    else ""
                )
                + "See also the note below the trace."
            ),
        )
    )
    section.targets.append(
        Target(
            what="per-customer state bounded",
            goal=f"a second burst of {first_big.customers:,} leaves memory within "
            f"{BACK_TOLERANCE:.0%} of where the first one left it",
            result=f"{first_big.base_mib:.0f} → {first_big.peak_mib:.0f} MiB at the first "
            f"peak ({per_customer:.1f} KiB per customer in flight), {first_big.after_mib:.0f} "
            f"MiB once answered, {second_big.after_mib:.0f} MiB after the second",
            met=bounded,
            why=(
                "What the channel holds for a customer is the message, its queue and its worker "
                "task, and only while the message is in flight: the queue and its task end with "
                "the customer's last message, and the message leaves the inbox when it is "
                "answered. Python does not hand the freed memory back to the system (its "
                "allocator keeps the arenas), which is why RSS stays at the first peak; the "
                "second burst reuses that memory instead of growing."
            ),
        )
    )
    section.notes.append(
        "**Where the bursts' acks' time went, inside the server** (`bench/trace.py`: each "
        "burst's webhooks, timed by the benchmark server around our handler, the state file's "
        "thread and the event loop, while the turns of the customers already in flight ran):"
    )
    section.notes.append(
        trace.table(
            [(f"{item.customers:,} customers", item.trace) for item in runs if item.trace]
        ).markdown()
    )
    section.notes.append(
        "What else holds an ack in the largest bursts: wrk keeps all its connections busy, so "
        "an ack waits for the loop to get to it behind the other connections' webhooks and the "
        "turns of the customers already in flight, which the handler's own time does not "
        "count. With thousands of messages, queues and tasks alive, Python's full garbage "
        "collections walk all of them and stop the event loop meanwhile (the column above, "
        "counted in `bench/server.py` with `gc.callbacks`), each stalling every connection at "
        "once. Already cut: a queued message no longer keeps Z-API's raw callback (a third "
        "less memory per customer in flight); the answered marks and sent markers commit "
        "without waiting for the disk (nobody waits for them), so only the webhooks' own "
        "commits flush; and the writer checkpoints the WAL between batches rather than "
        "inside the commit that crosses SQLite's threshold, which every webhook of that batch "
        "used to wait for (about 5 ms against 0.8 ms for a plain commit). Not done: tuning the "
        "collector for a large backlog. Measured and not kept: checkpointing from a second "
        "connection in a thread of its own (p99 4.3 against 5.2 ms, the slowest alike): on "
        "this machine's disk the checkpoint's flush and the commit's flush wait for each other."
    )
    section.seconds = time.monotonic() - began
    return section

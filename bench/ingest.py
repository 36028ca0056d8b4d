"""Benchmark 2: how many webhooks per second our channel takes, against a bare sanic handler.

The servers (:mod:`bench.server`) run at once, idle in turn: wrk loads one, then the next, for
a few rounds. Our channel does its whole job per request (token check, JSON parse, callback
parse, dedup and the durable commit of the message, queue to the sender's worker, 200) with a
no-op agent, so the worker finishes each message at once and no queue grows. It runs twice: with
the default embedded delivery (the SQLite file) and with ``redis_url`` (Redis Streams), when a
Redis server is at hand. Every request carries a new messageId and sender.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from bench import bodies, profile, trace, wrk
from bench.common import Context, Server, forgetting_keys, start_server
from bench.procs import PYTHON, ROOT, Processes, machine_busy
from bench.report import Section, Table, Target
from bench.stack import WHATIF_DIR
from bench.stats import median, rate, ratio
from tests.redis_server import ensure_redis

TARGET_SHARE = 0.80
#: What the in-memory path of the previous release took (docs/benchmarks.md, 2026-11-30): the
#: durable deliveries must not fall below it.
MEMORY_PATH_SHARE = 0.59
CONNECTIONS = 50
LABELS = {
    "bare": "bare sanic handler",
    "zapi": "ZApiInput (ours), embedded SQLite delivery, no-op agent",
    "zapi-redis": "ZApiInput (ours), Redis delivery (redis_url), no-op agent",
    "zapi-memory": "what-if: ZApiInput with the inbox in memory, nothing durable, no-op agent",
    "zapi-thread": "what-if: embedded, the file written by a thread (the previous design)",
    "zapi-wait": "what-if: the inbox in memory, each webhook waiting 1 ms first as for a commit",
    "zapi-idle": "what-if: embedded, the writer process running no SQL (the hand-over only)",
    "zapi-busy": "what-if: as the one above, the writer spinning 100 µs of CPU per message",
}
#: The what-ifs beside the real channel: their server names and ``bench/whatif`` modes.
WHAT_IFS = (
    ("zapi-memory", "memory-inbox"),
    ("zapi-thread", "state-thread"),
    ("zapi-wait", "commit-wait"),
    ("zapi-idle", "writer-idle"),
    ("zapi-busy", "writer-busy"),
)


@dataclass
class Runs:
    results: List[wrk.WrkResult] = field(default_factory=list)
    cpu_us: List[float] = field(default_factory=list)
    #: CPU per request of the event loop's thread, of the process's other threads, and of the
    #: state file's writer process, each user + system, and how busy the whole machine was
    #: (both cores), per round.
    loop_us: List[float] = field(default_factory=list)
    other_us: List[float] = field(default_factory=list)
    writer_us: List[float] = field(default_factory=list)
    machine_busy: List[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return median([r.rate for r in self.results])

    @property
    def cpu_per_request(self) -> float:
        return median(self.cpu_us)

    def add(self, result: wrk.WrkResult, used: Used) -> None:
        requests = max(1, result.requests)
        self.results.append(result)
        self.cpu_us.append(1e6 * (used.loop + used.other + used.writer) / requests)
        self.loop_us.append(1e6 * used.loop / requests)
        self.other_us.append(1e6 * used.other / requests)
        self.writer_us.append(1e6 * used.writer / requests)
        self.machine_busy.append(used.machine_busy)


@dataclass(frozen=True)
class Used:
    """What one run used: CPU seconds of the server's threads and of its writer process, and
    the machine's busy share."""

    loop: float
    other: float
    writer: float
    machine_busy: float


def load(ctx: Context, server: Server, *, first: int, seconds: float) -> tuple[wrk.WrkResult, Used]:
    script = wrk.write_script(
        ctx.log_dir / f"ingest-{server.channel}-{first}.lua",
        body=bodies.received_template(),
        url_path=server.webhook_path,
        first=first,
    )
    loop_before, other_before = server.process.thread_cpu()
    writer_before = server.process.helpers_cpu()
    busy_before, total_before = machine_busy()
    result = wrk.run_wrk(server.url, script, connections=CONNECTIONS, seconds=seconds)
    # The no-op turns finish right after their acks; give the last ones a moment.
    time.sleep(0.2)
    busy, total = machine_busy()
    loop_after, other_after = server.process.thread_cpu()
    writer_after = server.process.helpers_cpu()
    return result, Used(
        loop=sum(loop_after) - sum(loop_before),
        other=sum(other_after) - sum(other_before),
        writer=sum(writer_after) - sum(writer_before),
        machine_busy=(busy - busy_before) / max(1, total - total_before),
    )


def _durable_why(
    bare: Runs,
    embedded: Runs,
    memory: Runs,
    thread: Runs,
    redis: Optional[Runs],
    batches: Optional[Busy],
    wait: Runs,
    idle: Runs,
    busy: Runs,
    crossing: Optional[float],
) -> str:
    loop_kept = median(embedded.loop_us) - median(memory.loop_us)
    loop_busy = median(embedded.loop_us) * embedded.rate / 1e6
    memory_busy = median(memory.loop_us) * memory.rate / 1e6
    parts = [
        f"Keeping each message costs the event loop {loop_kept:.0f} µs per request in this run "
        f"({median(embedded.loop_us):.0f} µs against {median(memory.loop_us):.0f} µs for the "
        "same channel with the inbox in memory), and the state file's writer process "
        f"{median(embedded.writer_us):.0f} µs, on the other core: the statements, the kept "
        "message's JSON and the commits run there, with a GIL of their own, at a lower CPU "
        "priority than the bot (nice +5: when wrk, the loop and the writer want the two cores "
        "at once, the loop goes first and the writer's next batch grows). What the loop "
        "still pays is handing each message over and applying what comes back (the message "
        "crosses as plain values, its conversation and forms come back), "
        "and a second step of each webhook's task, which now waits for its commit. The loop "
        f"was busy about {loop_busy:.0%} of the time against {memory_busy:.0%} with the inbox "
        f"in memory: with {CONNECTIONS} connections, each waiting for a commit that reaches "
        "the disk"
        + (
            f" ({batches.batch_ms:.1f} ms a batch on average, traced)"
            if batches is not None
            else ""
        )
        + ", there are moments when every request waits on the writer and the loop has nothing "
        "to do. Commits that skip the disk (synchronous=NORMAL for every batch, tried with the "
        "writer process) did not shorten those moments (52% of bare against 55% in one run): "
        "what the writer's batches wait for is mostly a core, hence its lower priority. "
        f"The previous design, a writer thread in the bot's own process, measured beside it "
        f"in the same rounds: {thread.rate / bare.rate:.0%} of bare against "
        f"{embedded.rate / bare.rate:.0%}, its event loop {median(thread.loop_us):.0f} µs and "
        f"its thread {median(thread.other_us):.0f} µs per request, on one GIL. Tried with "
        "that thread and not kept: the statements on the event loop with only the commit on "
        "the thread, synchronous=NORMAL for every commit, and single statements over a JSON "
        "array (json_each): none moved the throughput."
    ]
    # From the in-memory path to ours, one change at a time, each measured in the same rounds.
    steps = [
        ("each webhook first waits 1 ms for a timer that a loop iteration's webhooks share, "
         "as they share a commit", memory, wait),
        ("every message crosses to the writer process and its answer comes back, as ours, "
         "the writer running no SQL", memory, idle),
        ("the writer spends 100 µs of CPU on each message (no file, little memory)", idle,
         busy),
        ("the writer runs the real SQL and commits: ours", idle, embedded),
    ]  # fmt: skip
    parts.append(
        "The same cost in steps, each a what-if measured in the same rounds (the change in the "
        "event loop's CPU per request, then the writer's CPU per request and the throughput "
        f"against bare; the in-memory path: {median(memory.loop_us):.0f} µs on the loop, "
        f"{memory.rate / bare.rate:.0%}): "
        + "; ".join(
            f"{what}, {median(after.loop_us) - median(before.loop_us):+.0f} µs "
            f"({median(after.writer_us):.0f} µs, {after.rate / bare.rate:.0%})"
            for what, before, after in steps
        )
        + ". Between runs on this machine a server's CPU per request moves by 20 to 30%, so a "
        "step smaller than about 30 µs is within the noise."
        + (
            f" Measured apart (`bench/crossing.py`), with nothing else running, one message's "
            f"crossing costs the event loop {crossing:.1f} µs with {CONNECTIONS} webhooks "
            "waiting: queueing and pickling the operations, the frames each way, waking the "
            "webhook."
            if crossing is not None
            else ""
        )
    )
    crossed = median(idle.loop_us) - median(memory.loop_us)
    waited = median(wait.loop_us) - median(memory.loop_us)
    if crossing is not None and crossed > max(30.0, 3 * crossing, loop_kept / 2, 2 * waited):
        parts.append(
            f"So most of what the loop pays here comes with the crossing ({crossed:.0f} µs in "
            f"this run), several times what the crossing's own code costs ({crossing:.1f} µs), "
            "while the wait alone costs nothing like it. The step is too large for the "
            "crossing's code alone: it also carries what comes with a second process beside the "
            "loop on two cores, which the loop wakes and is woken by at every batch, and which "
            "takes turns with wrk on a core."
        )
    if redis is not None:
        parts.append(
            f"Redis costs {redis.cpu_per_request - memory.cpu_per_request:.0f} µs more per "
            "request than the in-memory path, all of it on the event loop (the file has a "
            "writer process; Redis has no process of its own): each message runs three scripts "
            "(the webhook's link-and-append, which picks the partition itself, the turn's "
            "handoff-and-menu, the acknowledgement). Calls of one script that follow one "
            "another go as one command, one pipeline is on the wire at a time on a connection "
            "the bot holds (zapi_channel/delivery/batching.py), and a message read back by the "
            "instance that appended it is not decoded again. What is left is redis-py's Python "
            "work: the message's JSON for its entry, packing each call's keys and arguments "
            "(the append names every partition's stream), reading the answers and the stream. "
            "Running that in a process of its own, as the file's writer does, would take it off "
            "the loop, and put a crossing in its place"
            + (
                f": by the steps above, crossing to the writer cost the loop {crossed:.0f} µs "
                f"per request in this run (the embedded delivery, {loop_kept:.0f} µs in all), "
                "and a message would cross three times (its append, its turn's question, its "
                "acknowledgement). Not built, for that."
                if crossed > 30
                else ": in this run the crossing's step above was within the noise, so what "
                "such a process would save is not told by it."
            )
        )
    return " ".join(parts)


def run(ctx: Context) -> Section:
    began = time.monotonic()
    seconds = ctx.scale(3.0, 1.0)
    rounds = int(ctx.scale(4, 1))
    runs: Dict[str, Runs] = {"bare": Runs(), "zapi": Runs()}
    redis_url = ensure_redis()
    if redis_url is not None:
        runs["zapi-redis"] = Runs()
    for name, _ in WHAT_IFS:
        runs[name] = Runs()
    prof: Optional[profile.Profile] = None
    batches: Optional[Busy] = None
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    # The servers stop first, then their keys go.
    with forgetting_keys(redis_url, prefix), Processes(ctx.log_dir) as procs:
        servers = {
            name: start_server(procs, name, name=f"ingest-{name}", reply=False, wait=False)
            for name in ("bare", "zapi")
        }
        if redis_url is not None:
            servers["zapi-redis"] = start_server(
                procs,
                "zapi",
                name="ingest-zapi-redis",
                reply=False,
                wait=False,
                extra=["--redis-url", redis_url, "--redis-prefix", prefix],
            )
        # What-ifs beside the real channel, in the same rounds: the previous release's path
        # (what durability costs on this machine), the design before the writer process (what
        # the process changes here), and steps between the first and ours: the wait alone, the
        # hand-over to a writer that runs no SQL, the same writer spending CPU.
        for name, mode in WHAT_IFS:
            servers[name] = start_server(
                procs,
                "zapi",
                name=f"ingest-{name}",
                reply=False,
                wait=False,
                env={
                    "PYTHONPATH": str(WHATIF_DIR) + os.pathsep + str(ROOT),
                    "ZAPI_BENCH_WHATIF": mode,
                },
            )
        for server in servers.values():
            server.wait()
        first = 0
        for server in servers.values():
            load(ctx, server, first=first, seconds=1)  # warm-up, not counted
            first += 1_000_000
        for _ in range(rounds):
            for name, server in servers.items():
                result, used = load(ctx, server, first=first, seconds=seconds)
                runs[name].add(result, used)
                first += 1_000_000
        # One more run of ours under py-spy, not counted: where does its CPU go?
        zapi = servers["zapi"]
        # Only the GIL's holder: without it py-spy also samples the threads waiting on a
        # queue or the disk, and the loop waiting in epoll.
        sampler = profile.Background(
            zapi.process.pid, seconds, ctx.log_dir / "ingest-zapi.pyspy", gil=True
        )
        load(ctx, zapi, first=first, seconds=seconds + 1)
        prof = sampler.join()
        # And one more traced from inside (bench.server.AckTrace), not counted either: how much
        # of the time the writer spends in its batches. Last, since the trace's timers
        # stay in the server once it is asked for.
        trace.take(zapi)
        traced, _ = load(ctx, zapi, first=first + 1_000_000, seconds=seconds)
        batches = Busy.of(trace.take(zapi), traced)
    crossing = _crossing(ctx)

    bare, ours = runs["bare"], runs["zapi"]
    share = ours.rate / bare.rate
    cpu_share = bare.cpu_per_request / ours.cpu_per_request
    table = Table(
        ["handler", "requests/s per round", "requests/s (median)", "server CPU per request",
         "of it: event loop thread / other threads / writer process", "machine busy (2 cores)",
         "latency p50 / p99 (wrk)", "non-2xx or errors"]
    )  # fmt: skip
    for name, r in runs.items():
        table.rows.append(
            [
                LABELS[name],
                " / ".join(f"{x.rate:,.0f}" for x in r.results),
                rate(r.rate),
                f"{r.cpu_per_request:.0f} µs",
                f"{median(r.loop_us):.0f} / {median(r.other_us):.0f} / "
                f"{median(r.writer_us):.0f} µs",
                f"{median(r.machine_busy):.0%}",
                " ; ".join(f"{x.p50_ms:.1f} / {x.p99_ms:.1f} ms" for x in r.results[:2]) + " ...",
                str(sum(x.error_count for x in r.results)),
            ]
        )
    section = Section(
        title="2. Ingestion throughput",
        method=f"""
Load generator: wrk 4.1 (Debian's package), one thread, {CONNECTIONS} keep-alive connections,
{seconds:.0f} s per run, with a Lua script (`bench/wrk.py`) that gives every request a new
`messageId` and sender, so our dedup never short-circuits. The body is the emulator's
ReceivedCallback for a text message ({len(bodies.received_template())} bytes). The baseline is a
bare handler on the same sanic 21.12 that only `json.loads` the body and answers 200 with the same
JSON; it is the ceiling for any channel on this server. Both servers run side by side, idle in
turn; {rounds} rounds, bare and ours alternating, after a 1 s warm-up each; the medians are
compared. wrk because it is closed-loop and cheap: it finds the most the server can take while
using far less CPU per request than the Python server it loads (one core each on this machine).

"Server CPU per request" is the user + system time (`/proc/PID/stat`) of the server process and
of the state file's writer process beside it, over the run, divided by the requests answered:
unlike requests/s, it barely moves when other work on the machine takes CPU away, so its ratio is
the steadier estimate of what our channel costs.
""",
        tables=[table],
        summary=(
            rate(ours.rate),
            f"bare {rate(bare.rate)}",
            f"{share:.0%} of bare ({ratio(share)})",
        ),
    )
    section.targets.append(
        Target(
            what="our requests/s against the bare handler's",
            goal=f">= {TARGET_SHARE:.0%}",
            result=f"{share:.0%} (by CPU per request: {cpu_share:.0%})",
            met=share >= TARGET_SHARE,
            why=_why(share, bare.cpu_per_request, ours.cpu_per_request, prof),
        )
    )
    durable = [("embedded", share)]
    if "zapi-redis" in runs:
        durable.append(("Redis", runs["zapi-redis"].rate / bare.rate))
    memory = runs["zapi-memory"]
    memory_share = memory.rate / bare.rate
    section.targets.append(
        Target(
            what="durable deliveries against the previous in-memory path (59% of bare)",
            goal=f">= {MEMORY_PATH_SHARE:.0%} of bare, each",
            result=", ".join(f"{label} {value:.0%}" for label, value in durable)
            + ("" if "zapi-redis" in runs else " (no Redis server: not measured with Redis)")
            + f"; the in-memory path itself, in this run: {memory_share:.0%}",
            met=all(value >= MEMORY_PATH_SHARE for _, value in durable),
            why=_durable_why(
                bare,
                ours,
                memory,
                runs["zapi-thread"],
                runs.get("zapi-redis"),
                batches,
                runs["zapi-wait"],
                runs["zapi-idle"],
                runs["zapi-busy"],
                crossing,
            ),
        )
    )
    section.notes.append(_threads_note(runs, prof, batches))
    if prof is not None and prof.samples:
        rows = profile.summary_rows(prof)
        section.notes.append(
            f"**Profile of our server under the same load** (py-spy {prof.samples} samples at "
            "200 Hz of whichever thread held the GIL, `--gil`, so a thread waiting on a queue, "
            "the disk or epoll is not in it; innermost frame charged to its package; raw output "
            "in the log folder):"
        )
        section.notes.append(Table(["package", "self time"], rows["buckets"]).markdown())
        section.notes.append(
            Table(["our function (inclusive)", "share of samples"], rows["ours"]).markdown()
        )
        section.notes.append(
            Table(["hottest innermost frames", "self time"], rows["frames"]).markdown()
        )
    else:
        section.notes.append("py-spy could not attach to the server: no profile this time.")
    section.seconds = time.monotonic() - began
    return section


def _crossing(ctx: Context) -> Optional[float]:
    """The event loop's CPU per operation crossing to a writer process (bench/crossing.py),
    in µs, in a process of its own once the servers are gone; None if it failed."""
    with Processes(ctx.log_dir) as procs:
        child = procs.start("crossing", [PYTHON, "-m", "bench.crossing", str(ctx.log_dir)])
        try:
            child.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            return None
    try:
        last = child.log_path.read_text().strip().splitlines()[-1]
        return float(json.loads(last)["loop_us"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


@dataclass(frozen=True)
class Busy:
    """The writer process in one traced run: the share of the run it spent in batches
    (statements and commit), how long a batch took and how many operations it held, on
    average."""

    share: float
    batch_ms: float
    ops: float

    @classmethod
    def of(cls, found: Dict[str, Any], result: wrk.WrkResult) -> Optional[Busy]:
        batches = int(found.get("commit_ms", {}).get("count", 0))
        if not batches or result.seconds <= 0:
            return None
        spent = float(found["commit_ms_sum"])
        return cls(
            share=spent / (1000 * result.seconds),
            batch_ms=spent / batches,
            ops=float(found["commit_ops_sum"]) / batches,
        )


def _threads_note(
    runs: Dict[str, Runs], prof: Optional[profile.Profile], batches: Optional[Busy]
) -> str:
    """Where the time goes, by thread and process: the table's split and the GIL profile."""
    bare, ours, memory = runs["bare"], runs["zapi"], runs["zapi-memory"]
    busy = median([b for r in runs.values() for b in r.machine_busy])
    text = (
        f"**Where the time goes, by thread and process.** The machine was {busy:.0%} busy "
        "during the runs (median; wrk included), so no server was short of a core: each "
        "process is held to about one by its GIL. The bare handler's event loop used "
        f"{median(bare.loop_us):.0f} µs per request; ours with the inbox in memory "
        f"{median(memory.loop_us):.0f} µs; ours embedded {median(ours.loop_us):.0f} µs on the "
        f"event loop, {median(ours.other_us):.0f} µs on its other threads and "
        f"{median(ours.writer_us):.0f} µs in the writer process"
    )
    if "zapi-redis" in runs:
        redis = runs["zapi-redis"]
        others = median(redis.other_us)
        text += (
            f"; with Redis {median(redis.loop_us):.0f} µs on the event loop, where redis-py runs"
            + (f", and {others:.0f} µs on other threads" if others >= 1 else ", and none elsewhere")
        )
    text += "."
    if batches is not None:
        text += (
            " Traced from inside in one more run, the writer spent "
            f"{batches.share:.0%} of it in its batches ({batches.ops:.0f} operations and "
            f"{batches.batch_ms:.1f} ms a batch on average)."
        )
    if prof is None or not prof.samples or not prof.by_thread:
        return text
    loop = prof.share(prof.by_thread.get("MainThread", 0)) / 100
    return text + (
        f" Of the embedded server's GIL samples, the event loop held {loop:.0%}: the writer's "
        "work is not in them, since it has a GIL of its own."
    )


def _why(share: float, bare_us: float, ours_us: float, prof: Optional[profile.Profile]) -> str:
    extra = ours_us - bare_us
    budget = bare_us / TARGET_SHARE - bare_us
    text = (
        f"Ours costs {extra:.0f} µs of CPU more per request than the bare handler "
        f"({ours_us:.0f} vs {bare_us:.0f} µs); the target allows {budget:.0f} µs."
    )
    if prof is None or not prof.samples:
        return text
    own = prof.share(prof.by_bucket["zapi_channel (ours)"]) / 100
    own_us = own * ours_us
    ceiling = bare_us / max(1.0, ours_us - own_us)
    functions = ", ".join(
        f"`{name.split(' (')[0]}` {prof.share(count):.0f}%"
        for name, count in prof.ours_inclusive.most_common(6)
        if not name.startswith(("receive ", "_receive "))
    )
    text += (
        f" Our own code is {own:.0%} of the server's samples of the GIL, about {own_us:.0f} µs "
        "per request "
        f"(inclusive: {functions}). Already cut after earlier profiles: the lone-surrogate walk "
        "runs only when the raw bytes could hold one, the token is compared with the raw query "
        "string before sanic parses it, and the parser checks against `dict` rather than "
        "`typing.Mapping`. What is left of ours is the work itself: building the message and "
        "its metadata, handing the message to the writer process and reading its answer, and per "
        "message a worker task "
        "and a turn (Rasa's "
        "`UserMessage` and an output channel, even for a no-op agent). The rest is sanic and "
        "asyncio. "
        f"Even if our own code cost nothing, the channel would reach about {ceiling:.0%} of the "
        "bare handler"
    )
    if share >= TARGET_SHARE:
        return text + "."
    if ceiling < TARGET_SHARE:
        return text + (
            ": trimming our code alone cannot meet the target; the gap that would remain is "
            "sanic's and asyncio's own work per request and per task, which a bare handler that "
            "answers without queueing anything never pays."
        )
    return text + ": what is left of ours is what stands between this run and the target."

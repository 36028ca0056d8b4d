"""Benchmarks 1b and 3: the real demo model behind our channel and behind Rasa's rest channel.

One ``rasa run`` (:mod:`bench.stack`) serves both channels. Every message is "hi" from a new
customer, which the demo answers with two messages (a greeting by name from the action server,
then the menu). For our channel a message is answered when the emulator has recorded both
send-text calls; for the rest channel, when its HTTP response (which carries both) arrives.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import httpx

from bench import bodies, profile
from bench.common import Context, clear_emulator, wait_for_sends
from bench.load import LoadResult, RequestFactory, burst, new_client, open_loop
from bench.procs import Processes
from bench.report import Section, Table, Target
from bench.stack import Stack, start_stack
from bench.stats import median, ms, percent, percentile, rate, ratio
from zapi_channel.config import ChannelConfig

TEXT = "hi"
#: The demo answers "hi" with a greeting and the menu.
ANSWERS_PER_MESSAGE = 2
OVERHEAD_TARGET = 0.05
#: One send's CPU inside rasa run, at most.
SEND_CPU_TARGET_MS = 0.3
#: py-spy's rate while it samples the sends: a send is a small share of rasa run's CPU, so the
#: estimate rests on few samples; more per second make it steadier.
SEND_SAMPLING_HZ = 500
#: The channel's default transport, read from its configuration.
DEFAULT_TRANSPORT = ChannelConfig.http_transport
OVERLOAD_ACK_TARGET_MS = 250.0


def zapi_request(stack: Stack, prefix: str) -> RequestFactory:
    def make(client: httpx.AsyncClient, i: int) -> httpx.Request:
        body = bodies.received_callback(bodies.phone_for(i), bodies.message_id_for(i, prefix), TEXT)
        return client.build_request("POST", stack.zapi_webhook, json=body)

    return make


def rest_request(stack: Stack) -> RequestFactory:
    def make(client: httpx.AsyncClient, i: int) -> httpx.Request:
        phone = bodies.phone_for(i)
        metadata = bodies.channel_metadata(phone, bodies.message_id_for(i, "REST"), TEXT)
        body = bodies.rest_body(phone, TEXT, metadata)
        return client.build_request("POST", stack.rest_webhook, json=body)

    return make


@dataclass
class Run:
    """One measured batch of messages through one channel."""

    channel: str
    load: LoadResult
    #: Per message: ms from posting it until its last answer (``None``: not answered).
    answer_ms: List[Optional[float]] = field(default_factory=list)
    #: From the first post until the last answer, seconds.
    span_s: float = math.nan
    #: From the last post until the last answer, seconds (how long a backlog took to clear).
    drain_s: float = math.nan
    #: CPU time of the ``rasa run`` process while this batch was handled, seconds.
    rasa_cpu_s: float = math.nan

    @property
    def answered(self) -> int:
        return sum(1 for value in self.answer_ms if value is not None)

    @property
    def throughput(self) -> float:
        return self.answered / self.span_s if self.span_s > 0 else math.nan

    def p(self, q: float) -> float:
        return percentile([v for v in self.answer_ms if v is not None], q)

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.rasa_cpu_s / self.answered if self.answered else math.nan

    def _close(self, last_answer: float) -> None:
        if self.load.shots and last_answer:
            self.span_s = last_answer - min(shot.wall for shot in self.load.shots)
            self.drain_s = last_answer - max(shot.wall for shot in self.load.shots)


def _bot_times(emulator_url: str, phones: Sequence[str]) -> Dict[str, List[int]]:
    """The emulator's timestamps (epoch ms) of the bot's messages, by customer phone."""
    found: Dict[str, List[int]] = {}
    with httpx.Client(timeout=10, trust_env=False) as client:
        for phone in phones:
            answer = client.get(f"{emulator_url}/_emulator/messages", params={"phone": phone})
            records = answer.json()["messages"]
            found[phone] = [int(r["momment"]) for r in records if r["from"] == "bot"]
    return found


def finish_zapi(stack: Stack, load: LoadResult, deadline_s: float) -> Run:
    """Wait (at most ``deadline_s``) until every message has all its answers, then time them."""
    phones = [bodies.phone_for(shot.index) for shot in load.shots]
    wait_for_sends(
        stack.emulator_url,
        ANSWERS_PER_MESSAGE * len(phones),
        deadline_s=deadline_s,
        phones=set(phones),
    )
    times = _bot_times(stack.emulator_url, phones)
    run = Run("zapi", load)
    last_answer = 0.0
    for shot, phone in zip(load.shots, phones):
        stamps = times.get(phone, [])
        if len(stamps) >= ANSWERS_PER_MESSAGE and shot.status == 200:
            # The emulator stamps in whole milliseconds, from the same clock as time.time().
            run.answer_ms.append(max(stamps) - shot.wall * 1000)
            last_answer = max(last_answer, max(stamps) / 1000)
        else:
            run.answer_ms.append(None)
    run._close(last_answer)
    return run


def finish_rest(load: LoadResult) -> Run:
    run = Run("rest", load)
    last_answer = 0.0
    for shot in load.shots:
        answers = 0
        if shot.status == 200 and shot.body:
            try:
                answers = len(json.loads(shot.body))
            except ValueError:
                answers = 0
        if answers >= ANSWERS_PER_MESSAGE and shot.latency_ms is not None:
            run.answer_ms.append(shot.latency_ms)
            last_answer = max(last_answer, shot.wall + shot.latency_ms / 1000)
        else:
            run.answer_ms.append(None)
    run._close(last_answer)
    return run


async def _load(
    make: RequestFactory,
    *,
    first: int,
    count: int = 0,
    rate_: float = 0.0,
    seconds: float = 0.0,
    keep_body: bool = False,
    deadline_s: float = 120.0,
) -> LoadResult:
    """A burst of ``count`` messages, or ``rate_`` messages/s for ``seconds``."""
    async with new_client(timeout=deadline_s) as client:
        if count:
            return await burst(
                client, make, count=count, first=first, deadline_s=deadline_s, keep_body=keep_body
            )
        return await open_loop(
            client, make, rate=rate_, seconds=seconds, first=first, deadline_s=deadline_s,
            keep_body=keep_body,
        )  # fmt: skip


class Bench:
    """The measurements against one running stack; message numbers never repeat."""

    def __init__(self, stack: Stack, first: int = 0) -> None:
        self.stack = stack
        self._next = first

    def _first(self, count: int) -> int:
        first = self._next
        self._next += count + 1000
        return first

    def zapi(
        self, *, count: int = 0, rate_: float = 0.0, seconds: float = 0.0, deadline_s: float = 120
    ) -> Run:
        n = count or round(rate_ * seconds)
        first = self._first(n)
        make = zapi_request(self.stack, f"E2E{first}x")
        cpu = self.stack.rasa.cpu_seconds()
        load = asyncio.run(_load(make, first=first, count=count, rate_=rate_, seconds=seconds))
        run = finish_zapi(self.stack, load, deadline_s)
        run.rasa_cpu_s = self.stack.rasa.cpu_seconds() - cpu
        return run

    def rest(
        self, *, count: int = 0, rate_: float = 0.0, seconds: float = 0.0, deadline_s: float = 120
    ) -> Run:
        n = count or round(rate_ * seconds)
        first = self._first(n)
        cpu = self.stack.rasa.cpu_seconds()
        load = asyncio.run(
            _load(
                rest_request(self.stack), first=first, count=count, rate_=rate_,
                seconds=seconds, keep_body=True, deadline_s=deadline_s,
            )
        )  # fmt: skip
        run = finish_rest(load)
        run.rasa_cpu_s = self.stack.rasa.cpu_seconds() - cpu
        return run

    def settled_cpu(self, channel: str, count: int) -> float:
        """``rasa run``'s CPU per message (ms) for a burst of ``count`` new customers, from just
        before the burst until the process is idle again, whatever tells when it answered (with
        our sends stubbed, nothing reaches the emulator)."""
        first = self._first(count)
        if channel == "zapi":
            make = zapi_request(self.stack, f"S{first}x")
        else:
            make = rest_request(self.stack)
        before = _idle_cpu(self.stack)
        asyncio.run(_load(make, first=first, count=count))
        return 1000 * (_idle_cpu(self.stack) - before) / count


#: The rows of the split, in order: main rasa's rest and ours, the stubbed rasa's rest and ours.
SPLIT_ROWS = ("rest", "zapi", "stubbed rest", "stubbed zapi")


def _idle_cpu(stack: Stack, quiet_s: float = 0.5, deadline_s: float = 120) -> float:
    """The process's CPU seconds once a ``quiet_s`` window passes with (almost) none used."""
    last = stack.rasa.cpu_seconds()
    ends = time.monotonic() + deadline_s
    while time.monotonic() < ends:
        time.sleep(quiet_s)
        now = stack.rasa.cpu_seconds()
        if now - last < 0.01:
            return now
        last = now
    return last


@dataclass
class WhatIf:
    capacity: float
    overload: Run
    offered: float


def run(ctx: Context) -> List[Section]:
    began = time.monotonic()
    burst_size = int(ctx.scale(60, 20))
    rounds = int(ctx.scale(3, 1))
    latency_seconds = ctx.scale(4.0, 2.0)
    overload_seconds = ctx.scale(10.0, 3.0)
    backlog_s = overload_seconds * 2 + 60
    with Processes(ctx.log_dir) as procs:
        stacks = start_stack(procs, ctx.log_dir, what_ifs=("validation-cached", "sends-stubbed"))
        stack = stacks["main"]
        started = time.monotonic()
        bench = Bench(stack)
        # Warm-up, not counted: TensorFlow builds its graphs on the first predictions.
        bench.rest(count=10)
        bench.zapi(count=10, deadline_s=60)
        clear_emulator(stack.emulator_url)

        # Capacity: a burst of new customers at once, until the last one is answered.
        bursts: Dict[str, List[Run]] = {"rest": [], "zapi": []}
        for _ in range(rounds):
            bursts["rest"].append(bench.rest(count=burst_size))
            bursts["zapi"].append(bench.zapi(count=burst_size, deadline_s=120))
            clear_emulator(stack.emulator_url)
        capacity = {name: median([r.throughput for r in runs]) for name, runs in bursts.items()}

        # Latency at half the capacity: answers without a queue in front of them.
        steady_rate = max(1.0, 0.5 * min(capacity.values()))
        steady: Dict[str, List[Run]] = {"rest": [], "zapi": []}
        for _ in range(rounds):
            steady["rest"].append(bench.rest(rate_=steady_rate, seconds=latency_seconds))
            steady["zapi"].append(
                bench.zapi(rate_=steady_rate, seconds=latency_seconds, deadline_s=60)
            )
            clear_emulator(stack.emulator_url)

        # Where our overhead goes: the same bursts with our sends stubbed (no HTTP), in a third
        # rasa run; each process's own rest channel is its baseline.
        stubbed = Bench(stacks["sends-stubbed"], first=80_000_000)
        stubbed.settled_cpu("rest", 10)
        stubbed.settled_cpu("zapi", 10)
        split: Dict[str, List[float]] = {name: [] for name in SPLIT_ROWS}
        for _ in range(rounds):
            split["rest"].append(bench.settled_cpu("rest", burst_size))
            split["zapi"].append(bench.settled_cpu("zapi", burst_size))
            clear_emulator(stack.emulator_url)
            split["stubbed rest"].append(stubbed.settled_cpu("rest", burst_size))
            split["stubbed zapi"].append(stubbed.settled_cpu("zapi", burst_size))
        # One send inside rasa run, read off py-spy's samples of one more burst of ours.
        send_sample = _sample_sends(bench, ctx, 3 * burst_size, capacity["zapi"])
        clear_emulator(stack.emulator_url)
        # Where the CPU per message differs, ours against rest: the Python each one runs.
        held: Dict[str, Optional[GilSample]] = {}
        for name in ("rest", "zapi"):
            held[name] = _gil_burst(bench, ctx, name, 2 * burst_size, capacity[name])
            clear_emulator(stack.emulator_url)
        e2e_took = time.monotonic() - started

        # Overload: twice what one process answers, for a while; then every message must be
        # answered (bounded wait). py-spy watches rasa meanwhile: what keeps its loop busy?
        overload_began = time.monotonic()
        overload_rate = 2 * capacity["zapi"]
        sampler = profile.Background(
            stack.rasa.pid, overload_seconds, ctx.log_dir / "overload-rasa.pyspy"
        )
        overload_zapi = bench.zapi(
            rate_=overload_rate, seconds=overload_seconds, deadline_s=backlog_s
        )
        overload_profile = sampler.join()
        clear_emulator(stack.emulator_url)
        overload_rest = bench.rest(
            rate_=overload_rate, seconds=overload_seconds, deadline_s=backlog_s
        )
        clear_emulator(stack.emulator_url)

        # The same overload on the what-if rasa (Rasa's action-result validation cached).
        other = Bench(stacks["validation-cached"], first=50_000_000)
        other.zapi(count=10, deadline_s=60)
        clear_emulator(stack.emulator_url)
        other_capacity = other.zapi(count=burst_size, deadline_s=120).throughput
        clear_emulator(stack.emulator_url)
        what_if = WhatIf(
            capacity=other_capacity,
            offered=2 * other_capacity,
            overload=other.zapi(
                rate_=2 * other_capacity, seconds=overload_seconds, deadline_s=backlog_s
            ),
        )
        overload_took = time.monotonic() - overload_began
    sections = [
        _overload_section(
            overload_zapi,
            overload_rest,
            overload_rate,
            capacity["zapi"],
            what_if,
            overload_profile,
        ),
        _e2e_section(
            bursts,
            steady,
            capacity,
            steady_rate,
            burst_size,
            latency_seconds,
            split,
            send_sample,
            held,
        ),
    ]
    total = time.monotonic() - began
    sections[0].seconds = overload_took
    sections[1].seconds = total - overload_took
    sections[1].notes.append(
        f"Starting the stack (emulator, action server, three `rasa run` loading the model at the "
        f"same time) took {total - overload_took - e2e_took:.0f} s of this section's time."
    )
    return sections


def _pooled(runs: List[Run]) -> Run:
    merged = Run(runs[0].channel, LoadResult(rate=0, seconds=0))
    for one in runs:
        merged.answer_ms += one.answer_ms
        merged.load.shots += one.load.shots
    return merged


def _e2e_section(
    bursts: Dict[str, List[Run]],
    steady: Dict[str, List[Run]],
    capacity: Dict[str, float],
    steady_rate: float,
    burst_size: int,
    seconds: float,
    split: Dict[str, List[float]],
    send_sample: Optional[SendSample],
    held: Dict[str, Optional[GilSample]],
) -> Section:
    table = Table(
        ["channel", "messages/s (burst, per round)", "messages/s (median)",
         "rasa CPU per message (burst, median)", f"answer p50 at {steady_rate:.1f}/s",
         "answer p99", "answered", "webhook ack p50 / p99"]
    )  # fmt: skip
    pooled = {name: _pooled(runs) for name, runs in steady.items()}
    cpu_per_message = {
        name: median([r.cpu_ms_per_message for r in runs]) for name, runs in bursts.items()
    }
    for name, label in (("rest", "Rasa RestInput"), ("zapi", "ZApiInput (ours)")):
        runs = bursts[name]
        p = pooled[name]
        total = sum(len(r.answer_ms) for r in runs) + len(p.answer_ms)
        answered = sum(r.answered for r in runs) + p.answered
        ack = (
            f"{ms(p.load.p(50))} / {ms(p.load.p(99))}"
            if name == "zapi"
            else "= the answer (the turn runs inside the request)"
        )
        table.rows.append(
            [
                label,
                " / ".join(rate(r.throughput) for r in runs),
                rate(capacity[name]),
                f"{cpu_per_message[name]:.1f} ms",
                ms(p.p(50)),
                ms(p.p(99)),
                f"{answered} of {total}",
                ack,
            ]
        )
    throughput_overhead = 1 - capacity["zapi"] / capacity["rest"]
    cpu_overhead = cpu_per_message["zapi"] / cpu_per_message["rest"] - 1
    latency_overhead = pooled["zapi"].p(50) / pooled["rest"].p(50) - 1
    section = Section(
        title="3. End to end with the demo model",
        method=f"""
One `rasa run` with the demo model serves both our channel (answers sent to the emulator) and
Rasa's rest channel (answers in the HTTP response), with the action server; every message is
"{TEXT}" from a new customer, answered with {ANSWERS_PER_MESSAGE} messages (greeting by name from a
custom action, then the menu). Our channel's message is answered when the emulator has recorded
both send-text calls (the emulator's timestamps, same clock); the rest channel's when its response
arrives. The emulator posts no delivery or status callbacks here, so both channels get only the
customers' messages. Each rest request carries, as its `metadata`, what our channel hands Rasa
with the same message (the WhatsApp name and the rest of Z-API's envelope): the demo's greeting
action reads it, so both channels make the bot do the same work.

- **Throughput**: {burst_size} new customers write at once; messages/s = {burst_size} / (last
  answer - first post). {len(bursts["rest"])} rounds, rest and ours taking turns; the median is
  compared. "rasa CPU per message" is the `rasa run` process's CPU time (`/proc/PID/stat`, all its
  threads) during a burst over the messages answered: what the channel costs the bot's own
  process, whatever the emulator, the action server and other work on the machine take.
- **Latency**: open-loop at half the lower capacity ({steady_rate:.1f} messages/s) for
  {seconds:.0f} s per round, so answers do not queue behind each other; percentiles over all
  rounds.
""",
        tables=[table],
        summary=(
            f"{rate(capacity['zapi'])}, answer p50 {ms(pooled['zapi'].p(50))}",
            f"rest {rate(capacity['rest'])}, p50 {ms(pooled['rest'].p(50))}",
            f"{ratio(capacity['zapi'] / capacity['rest'])} throughput",
        ),
    )
    section.notes.append(_split_note(split, burst_size))
    section.notes.extend(_held_notes(held))
    section.targets.append(
        Target(
            what="channel overhead on throughput",
            goal=f"< {OVERHEAD_TARGET:.0%}",
            result=(
                f"{abs(throughput_overhead):.1%} "
                f"{'fewer' if throughput_overhead > 0 else 'more'} messages/s than rest"
            ),
            met=throughput_overhead < OVERHEAD_TARGET,
            why=_overhead_why(
                throughput_overhead, cpu_per_message["zapi"] - cpu_per_message["rest"]
            ),
        )
    )
    section.targets.append(
        Target(
            what="channel overhead on the bot process's CPU per message",
            goal=f"< {OVERHEAD_TARGET:.0%}",
            result=(
                f"{percent(100 * cpu_overhead)} ({cpu_per_message['zapi']:.1f} vs "
                f"{cpu_per_message['rest']:.1f} ms)"
            ),
            met=cpu_overhead < OVERHEAD_TARGET,
            why=_cpu_why(split) + _held_why(held),
        )
    )
    per_send = _per_send_rounds(split)
    if send_sample is not None:
        send_result = (
            f"{send_sample.low:.2f} to {send_sample.high:.2f} ms under the send's own frames "
            "(py-spy samples of a burst; the event loop's share is not in it; difference of the "
            f"split's rounds: median {median(per_send):.2f} ms)"
        )
        send_met = send_sample.high <= SEND_CPU_TARGET_MS
    else:
        send_result = (
            f"{median(per_send):.2f} ms (median of rounds; highest {max(per_send):.2f} ms)"
        )
        send_met = max(per_send) <= SEND_CPU_TARGET_MS
    section.targets.append(
        Target(
            what="one send inside `rasa run`",
            goal=f"<= {SEND_CPU_TARGET_MS} ms of CPU",
            result=send_result,
            met=send_met,
            why=_send_why(split, send_sample),
        )
    )
    section.targets.append(
        Target(
            what="channel overhead on answer latency (p50)",
            goal=f"< {OVERHEAD_TARGET:.0%}",
            result=(
                f"{percent(100 * latency_overhead)} ({ms(pooled['zapi'].p(50))} vs "
                f"{ms(pooled['rest'].p(50))})"
            ),
            met=latency_overhead < OVERHEAD_TARGET,
            why=(
                "Our answer includes what rest's does not: two real HTTP sends to the emulator "
                "(Z-API) after the turn, and the time to be picked up by the sender's worker."
            ),
        )
    )
    return section


def _split_note(split: Dict[str, List[float]], burst_size: int) -> str:
    """Where our overhead goes: the real rasa run against the one with our sends stubbed."""
    table = Table(
        ["rasa run", f"rest: CPU per message (burst of {burst_size}, per round)",
         "ours: CPU per message (per round)", "ours minus rest (medians)"]
    )  # fmt: skip
    for label, rest_key, ours_key in (
        ("the real one (two sends per message)", "rest", "zapi"),
        ("sends stubbed (no HTTP)", "stubbed rest", "stubbed zapi"),
    ):
        rest_ms, ours_ms = median(split[rest_key]), median(split[ours_key])
        table.rows.append(
            [
                label,
                " / ".join(f"{v:.1f} ms" for v in split[rest_key]),
                " / ".join(f"{v:.1f} ms" for v in split[ours_key]),
                f"{ours_ms - rest_ms:+.2f} ms ({percent(100 * (ours_ms / rest_ms - 1))})",
            ]
        )
    return (
        "**Where the overhead goes.** `rasa run`'s CPU per message from just before a burst "
        "until the process is idle again, in the real process and in a third `rasa run` whose "
        "`ZApiClient.send` returns at once with no HTTP (`bench/whatif/sitecustomize.py`, "
        "`sends-stubbed`); each process's own rest channel is its baseline, rounds interleaved.\n\n"
        + table.markdown()
    )


def _split(split: Dict[str, List[float]]) -> Tuple[float, float, float]:
    """(our overhead without the sends, with them, the sends' ms per message)."""
    real = median(split["zapi"]) / median(split["rest"]) - 1
    stubbed = median(split["stubbed zapi"]) / median(split["stubbed rest"]) - 1
    sends_ms = (median(split["zapi"]) - median(split["rest"])) - (
        median(split["stubbed zapi"]) - median(split["stubbed rest"])
    )
    return stubbed, real, sends_ms


def _cpu_why(split: Dict[str, List[float]]) -> str:
    stubbed, real, sends_ms = _split(split)
    return (
        f"The table below splits it. Without its HTTP sends our channel adds "
        f"{percent(100 * stubbed)} to `rasa run`'s CPU per message (the webhook, the worker, the "
        f"output channel, the sent markers); the {ANSWERS_PER_MESSAGE} sends add "
        f"{sends_ms:.1f} ms per message, about {sends_ms / ANSWERS_PER_MESSAGE:.1f} ms each, "
        f"for {percent(100 * real)} in all. Rest only serialises its answers into the response. "
        f"The sends use httpx's API over the `{DEFAULT_TRANSPORT}` transport (section 4 compares "
        "the transports); a burst of 60 varies between rounds by as much as what is left, "
        "so compare the per-round values in the table below."
    )


def _per_send_rounds(split: Dict[str, List[float]]) -> List[float]:
    """One estimate of a send's CPU per round: (ours - rest) - (stubbed ours - stubbed rest),
    over the sends of a message. Rounds are interleaved, so each pairs like with like."""
    return [
        ((zapi - rest) - (stub_zapi - stub_rest)) / ANSWERS_PER_MESSAGE
        for rest, zapi, stub_rest, stub_zapi in zip(
            split["rest"], split["zapi"], split["stubbed rest"], split["stubbed zapi"]
        )
    ]


@dataclass
class SendSample:
    """A send's CPU inside ``rasa run`` from py-spy's samples of one burst of ours."""

    cpu_ms_per_message: float
    samples: int
    #: Samples under ``ZApiClient.send``, and aiohttp's loop callbacks that no caller claims.
    inside: int
    loose: int
    #: The sends the burst made.
    sends: int

    def _per_send(self, count: int) -> float:
        # Each sample stands for 1/rate s of the thread it caught. Not a share of all samples:
        # py-spy with --nonblocking also samples threads that wait (the loop in epoll), so the
        # total is wall time of every thread, not CPU.
        return 1000 * count / SEND_SAMPLING_HZ / self.sends

    @property
    def low(self) -> float:
        return self._per_send(self.inside)

    @property
    def high(self) -> float:
        return self._per_send(self.inside + self.loose)


def _sample_sends(bench: Bench, ctx: Context, count: int, capacity: float) -> Optional[SendSample]:
    """py-spy samples ``rasa run`` while a burst of ours is answered: the time its samples
    under ``ZApiClient.send`` stand for, over the burst's sends."""
    seconds = 2 * count / max(capacity, 1.0) + 5
    sampler = profile.Background(
        bench.stack.rasa.pid, seconds, ctx.log_dir / "sends-rasa.pyspy", rate=SEND_SAMPLING_HZ
    )
    time.sleep(1.0)  # py-spy attaches before the burst begins
    cpu_ms = bench.settled_cpu("zapi", count)
    found = sampler.join()
    if found is None:
        return None
    return SendSample(
        cpu_ms_per_message=cpu_ms,
        samples=found.samples,
        sends=count * ANSWERS_PER_MESSAGE,
        inside=found.ours_inclusive.get("send (zapi_channel/client.py)", 0),
        loose=found.loose_aiohttp,
    )


@dataclass
class GilSample:
    """py-spy's samples of the thread holding the GIL in ``rasa run`` through one burst."""

    messages: int
    profile: profile.Profile
    rate: int
    #: The process's user and system CPU per message (ms) through the same burst.
    user_ms: float = 0.0
    system_ms: float = 0.0

    def ms_per_message(self, samples: int) -> float:
        return 1000 * samples / self.rate / self.messages

    @property
    def total_ms(self) -> float:
        return self.ms_per_message(self.profile.samples)


def _gil_burst(
    bench: Bench, ctx: Context, channel: str, count: int, capacity: float
) -> Optional[GilSample]:
    """A burst of ``count`` new customers on ``channel`` while py-spy samples whichever thread
    of ``rasa run`` holds the GIL."""
    seconds = 2 * count / max(capacity, 1.0) + 5
    sampler = profile.Background(
        bench.stack.rasa.pid,
        seconds,
        ctx.log_dir / f"held-{channel}-rasa.pyspy",
        rate=SEND_SAMPLING_HZ,
        gil=True,
    )
    time.sleep(1.0)  # py-spy attaches before the burst begins
    user, system = bench.stack.rasa.cpu_split()
    bench.settled_cpu(channel, count)
    user_after, system_after = bench.stack.rasa.cpu_split()
    found = sampler.join()
    if found is None:
        return None
    return GilSample(
        messages=count,
        profile=found,
        rate=SEND_SAMPLING_HZ,
        user_ms=1000 * (user_after - user) / count,
        system_ms=1000 * (system_after - system) / count,
    )


def _held_rows(held: Dict[str, Optional[GilSample]]) -> List[Tuple[str, float, float]]:
    """(package, rest's ms per message, ours), the largest differences first."""
    rest, ours = held.get("rest"), held.get("zapi")
    if rest is None or ours is None:
        return []
    return profile.compare(rest.profile, ours.profile, rest.ms_per_message, ours.ms_per_message)


def _held_notes(held: Dict[str, Optional[GilSample]]) -> List[str]:
    rows = _held_rows(held)
    rest, ours = held.get("rest"), held.get("zapi")
    if not rows or rest is None or ours is None:
        return ["py-spy could not sample `rasa run`: no profile of the difference this time."]
    table = Table(["package", "rest: Python per message", "ours", "ours minus rest"])
    for name, r, o in rows:
        table.rows.append([name, f"{r:.2f} ms", f"{o:.2f} ms", f"{o - r:+.2f} ms"])
    table.rows.append(
        [
            "**all**",
            f"{rest.total_ms:.2f} ms",
            f"{ours.total_ms:.2f} ms",
            f"{ours.total_ms - rest.total_ms:+.2f} ms",
        ]
    )
    for what, r, o in (
        ("the process's user CPU, same burst (`/proc`)", rest.user_ms, ours.user_ms),
        ("the process's system CPU (the kernel's work for it)", rest.system_ms, ours.system_ms),
    ):
        table.rows.append([what, f"{r:.2f} ms", f"{o:.2f} ms", f"{o - r:+.2f} ms"])
    functions = Table(
        ["our function (inclusive, without the turn's work in Rasa)", "Python per message"]
    )
    for name, count in ours.profile.ours_own.most_common(10):
        functions.rows.append([name, f"{ours.ms_per_message(count):.2f} ms"])
    return [
        "**Profile of the difference.** py-spy sampled whichever thread of `rasa run` held the "
        f"GIL ({SEND_SAMPLING_HZ} Hz, `--gil`) through one more burst of each channel "
        f"({rest.messages} new customers each; {rest.profile.samples:,} samples for rest, "
        f"{ours.profile.samples:,} for ours): each sample is 1/{SEND_SAMPLING_HZ} s of Python "
        "running, charged to the package of its innermost frame, so the columns are Python time "
        "per message (wall time holding the GIL: it also counts moments when another process "
        "had the core). The model's TensorFlow kernels and the state file's disk flushes "
        "release the GIL and are not in it; both channels run the same model.",
        table.markdown(),
        "Our own functions in the same samples, with what they call (httpx, aiohttp, json) "
        "but not the turn they hand to Rasa (samples whose innermost frame is Rasa's, "
        "jsonschema's or the model's are left out):",
        functions.markdown(),
    ]


def _held_why(held: Dict[str, Optional[GilSample]]) -> str:
    rows = _held_rows(held)
    rest, ours = held.get("rest"), held.get("zapi")
    if not rows or rest is None or ours is None:
        return ""
    top = [f"{name} {o - r:+.2f} ms" for name, r, o in rows[:4]]
    by_name = {name: (r, o) for name, r, o in rows}
    only_ours = _diff(by_name, "zapi_channel") + _diff(by_name, "httpx")
    rasa_side = sum(o - r for name, (r, o) in by_name.items() if name in profile.RASA_SIDE)
    cpu = (
        f" Through the same bursts the process's user CPU differed by "
        f"{ours.user_ms - rest.user_ms:+.2f} ms per message and its system CPU by "
        f"{ours.system_ms - rest.system_ms:+.2f} ms: what the Python samples leave out is work "
        "outside this process's Python (the state file's writer process, which these figures "
        "include, the model's kernels) and the kernel's (socket writes and reads for the sends, "
        "the writer's hand-overs and flushes)."
    )
    text = (
        f" In py-spy's samples of the GIL (the profile of the difference below), our burst ran "
        f"{ours.total_ms - rest.total_ms:+.2f} ms more Python per message than rest's "
        f"({ours.total_ms:.2f} against {rest.total_ms:.2f} ms); the largest differences: "
        + ", ".join(top)
        + f". What only our channel runs (zapi_channel, httpx) is {only_ours:+.2f} ms of it; "
        f"aiohttp (our sends' transport, and Rasa's action-server client in both) "
        f"{_diff(by_name, 'aiohttp'):+.2f} ms. "
        f"The work both channels hand to Rasa alike (Rasa, jsonschema, the model) differs by "
        f"{rasa_side:+.2f} ms although it is the same work: a sample counts wall time while "
        "the GIL is held, so this measure moves when another process takes the core, and our "
        "burst shares the two cores with the emulator taking its sends."
    )
    return text + cpu


def _diff(by_name: Dict[str, Tuple[float, float]], prefix: str) -> float:
    return sum(o - r for name, (r, o) in by_name.items() if name.startswith(prefix))


def _send_why(split: Dict[str, List[float]], sample: Optional[SendSample]) -> str:
    rounds = _per_send_rounds(split)
    difference = (
        "Each round's difference of two differences (the real `rasa run` against the one "
        "whose sends are stubbed, each against its own rest channel) moves between rounds by "
        "more than a send costs, since the bursts' CPU per message does: "
        f"{' / '.join(f'{v:.2f}' for v in rounds)} ms."
    )
    if sample is None:
        return f"{difference} py-spy could not sample `rasa run`, so the target reads these."
    spread = 100 / math.sqrt(max(1, sample.inside + sample.loose))
    return (
        f"py-spy sampled `rasa run` {SEND_SAMPLING_HZ} times a second through one more burst of "
        f"ours ({sample.sends:,} sends, {sample.cpu_ms_per_message:.1f} ms of CPU per message; "
        f"{sample.samples:,} samples of all threads, waiting ones included): each sample stands "
        f"for 1/{SEND_SAMPLING_HZ} s of the thread it caught. {sample.inside:,} were under "
        f"`ZApiClient.send` (the low figure), and {sample.loose:,} "
        "in aiohttp's protocol callbacks, which read answers for whichever client sent the "
        "request, ours or Rasa's action-server calls (added for the high figure, which the "
        f"target reads). Counts of samples this size leave about ±{spread:.0f}% of chance. "
        "What the event loop does for a send (waking up for its answer, stepping its task) is "
        "charged to the loop, which serves every request, so it is not in the figures; time "
        "the thread lost to other processes while inside a send (two shared cores) is. "
        f"{difference} Section 4 measures the whole process's CPU per send in a process of its "
        "own, loop and loopback included."
    )


def _overhead_why(overhead: float, extra_cpu_ms: float) -> str:
    if overhead < OVERHEAD_TARGET:
        return (
            "The model's work dominates; what the channel adds (webhook, worker, two HTTP sends "
            "per answer) is within the noise of a shared machine."
        )
    return (
        f"In the bot's own process our channel costs {extra_cpu_ms:.1f} ms of CPU more per "
        "message than rest (next line). Besides, only our channel talks to the emulator: on two "
        "shared cores its CPU (two sends per message) is taken from `rasa run` and the action "
        "server, which a remote Z-API would not do. Bursts of 60 also vary by several percent "
        "between rounds: compare the per-round values."
    )


def _overload_row(label: str, run: Run, offered: float) -> List[str]:
    return [
        label, rate(offered), str(len(run.load.shots)), ms(run.load.p(50)), ms(run.load.p(99)),
        ms(run.load.p(100)), run.load.statuses(), f"{run.answered} of {len(run.answer_ms)}",
        f"{run.drain_s:.1f} s",
    ]  # fmt: skip


def _overload_section(
    zapi: Run,
    rest: Run,
    offered: float,
    capacity: float,
    what_if: WhatIf,
    prof: Optional[profile.Profile],
) -> Section:
    table = Table(
        ["channel", "offered", "messages", "ack p50", "ack p99", "max", "statuses", "answered",
         "last answer after the last post"]
    )  # fmt: skip
    table.rows.append(_overload_row("ZApiInput (ours)", zapi, offered))
    table.rows.append(_overload_row("Rasa RestInput (ack = the answer)", rest, offered))
    table.rows.append(
        _overload_row(
            f"ZApiInput (ours), what-if: Rasa's validation cached (capacity "
            f"{rate(what_if.capacity)})",
            what_if.overload,
            what_if.offered,
        )
    )
    all_answered = zapi.answered == len(zapi.answer_ms)
    fixed_p99 = what_if.overload.load.p(99)
    section = Section(
        title="1b. Webhook ack latency with the real model, overloaded",
        method=f"""
The stack of section 3 (one `rasa run` with the demo model, the action server, the emulator).
Its capacity through our channel is measured as in section 3 (a burst of new customers):
{rate(capacity)}. Here customers write at twice that, {rate(offered)}, for
{zapi.load.seconds:.0f} s (open-loop, `bench/load.py`, each message from a new customer, posted
straight to the webhook as Z-API's ReceivedCallback); then the benchmark waits, with a deadline,
until the emulator has recorded every answer. The same load then goes to Rasa's rest channel in
the same process, whose "ack" is its answer. py-spy samples the `rasa run` process during our
overload run.

The what-if row is a second `rasa run`, started beside the first with the same model, channel and
action server, in which `bench/whatif/sitecustomize.py` makes Rasa's
`RemoteAction._validate_action_result` reuse one jsonschema validator instead of calling
`jsonschema.validate` (which re-checks the whole schema against its metaschema on every action
server answer). It is loaded at twice its own capacity.
""",
        tables=[table],
        summary=(
            f"ack p99 {ms(zapi.load.p(99))} at {rate(offered)}",
            f"rest p99 {ms(rest.load.p(99))}",
            f"{ratio(rest.load.p(99) / zapi.load.p(99))} faster",
        ),
    )
    section.targets.append(
        Target(
            what="our ack p99 at twice the capacity",
            goal=f"< {OVERLOAD_ACK_TARGET_MS:.0f} ms",
            result=f"{ms(zapi.load.p(99))} (what-if with Rasa's validation cached: "
            f"{ms(fixed_p99)})",
            met=zapi.load.p(99) < OVERLOAD_ACK_TARGET_MS,
            why=_overload_why(zapi.load.p(99), fixed_p99, prof),
        )
    )
    section.targets.append(
        Target(
            what="every message answered afterwards",
            goal="all of them",
            result=f"{zapi.answered} of {len(zapi.answer_ms)}",
            met=all_answered,
            why=(
                f"The backlog was cleared {zapi.drain_s:.1f} s after the last message arrived."
                if all_answered
                else "Some answers had not arrived when the deadline passed: see the rasa log."
            ),
        )
    )
    if prof is not None and prof.samples:
        rows = profile.summary_rows(prof)
        section.notes.append(
            f"**What the `rasa run` process did during our overload run** (py-spy, "
            f"{prof.samples} samples at 200 Hz; innermost frame charged to its package):"
        )
        section.notes.append(Table(["package", "self time"], rows["buckets"]).markdown())
    return section


def _overload_why(p99: float, fixed_p99: float, prof: Optional[profile.Profile]) -> str:
    validation = ""
    if prof is not None and prof.samples:
        share = prof.share(prof.by_bucket["jsonschema (Rasa's action-result validation)"])
        ours = prof.share(prof.by_bucket["zapi_channel (ours)"])
        validation = (
            f" In the profile, Rasa's jsonschema validation of the action server's answer takes "
            f"{share:.0f}% of the process and our channel's own code {ours:.1f}%."
        )
    return (
        "The ack never waits for a turn, but it shares the event loop with the model, and Rasa "
        "runs its heavy steps synchronously on that loop: the NLU and policy graph, and "
        "`jsonschema.validate` on every custom action's answer. A webhook that arrives during "
        "such a step (or behind several, one per running turn) waits for it."
        + validation
        + f" With the validation cached (what-if), the same overload gives p99 {ms(fixed_p99)}."
    )

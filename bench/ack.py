"""Benchmark 1a: how fast each channel answers its webhook while the bot takes 300 ms a message.

Each channel runs alone in its own server process (:mod:`bench.server`) with a stub agent that
sleeps, then sends one text through the message's output channel. Requests arrive open-loop at a
fixed, modest rate (:mod:`bench.load`), every one from a new sender.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

import httpx

from bench import bodies, trace
from bench.common import (
    Context,
    Server,
    clear_emulator,
    start_emulator,
    start_server,
    wait_for_sends,
)
from bench.load import LoadResult, new_client, open_loop
from bench.procs import Processes
from bench.report import Section, Table, Target
from bench.stats import ms, ratio

BOT_DELAY_MS = 300
RATE = 25.0
TARGET_P99_MS = 10.0


def factory(server: Server, prefix: str) -> Callable[[httpx.AsyncClient, int], httpx.Request]:
    """Requests in each channel's own format, each from a new sender."""

    def make(client: httpx.AsyncClient, i: int) -> httpx.Request:
        phone = bodies.phone_for(i)
        if server.channel in ("zapi", "bare"):
            body = bodies.received_callback(phone, bodies.message_id_for(i, prefix), "hi")
            return client.build_request("POST", server.webhook, json=body)
        if server.channel == "rest":
            return client.build_request("POST", server.webhook, json=bodies.rest_body(phone, "hi"))
        return client.build_request(
            "POST",
            server.webhook,
            content=bodies.twilio_form(phone, "hi"),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    return make


async def warm_up(server: Server, *, first: int, prefix: str) -> None:
    async with new_client(timeout=30) as client:
        make = factory(server, prefix)
        await open_loop(client, make, rate=RATE, seconds=1.0, first=first, deadline_s=30)


async def measure(server: Server, *, seconds: float, first: int, prefix: str) -> LoadResult:
    async with new_client(timeout=30) as client:
        return await open_loop(
            client, factory(server, prefix), rate=RATE, seconds=seconds, first=first,
            deadline_s=30, keep_body=server.channel == "rest",
        )  # fmt: skip


@dataclass
class Variant:
    label: str
    channel: str
    delay_ms: int
    rounds: List[LoadResult] = field(default_factory=list)
    note: str = ""
    extra: List[str] = field(default_factory=list)
    #: The server's own count of full garbage collections (``bench.server.FullCollections``).
    gc: Dict[str, Any] = field(default_factory=dict)
    #: Ours only: where the acks' time went inside the server (:mod:`bench.trace`).
    trace: Dict[str, Any] = field(default_factory=dict)

    @property
    def pooled(self) -> LoadResult:
        """Every round's requests together: percentiles over all of them."""
        merged = LoadResult(rate=RATE, seconds=sum(r.seconds for r in self.rounds))
        for result in self.rounds:
            merged.shots += result.shots
        return merged


def rest_replies(result: LoadResult) -> int:
    """Answers Rasa's rest channel returned in its HTTP responses (one per message expected)."""
    total = 0
    for shot in result.shots:
        if shot.body:
            try:
                total += len(json.loads(shot.body))
            except ValueError:
                pass
    return total


async def twilio_blackhole_probe(server: Server) -> Tuple[bool, float]:
    """Post one message while Twilio's API never answers, then ask the server for its health
    page: does anything else still get an answer? Returns (health answered, seconds waited)."""
    async with new_client(timeout=30) as client:
        make = factory(server, "PROBE")
        post = asyncio.create_task(client.send(make(client, 1)))
        # Let the stub bot finish its 300 ms and start the blocking send.
        await asyncio.sleep(BOT_DELAY_MS / 1000 + 0.5)
        started = time.perf_counter()
        try:
            await client.get(server.url + "/webhooks/twilio/", timeout=3.0)
            answered = True
        except httpx.TimeoutException:
            answered = False
        waited = time.perf_counter() - started
        post.cancel()
        await asyncio.gather(post, return_exceptions=True)
        return answered, waited


def run(ctx: Context) -> Section:
    began = time.monotonic()
    # Many short rounds rather than a few long ones: the finer the interleaving, the more evenly
    # bursts of other work on this machine fall on every variant.
    seconds = ctx.scale(2.0, 1.0)
    rounds = int(ctx.scale(5, 2))
    variants = [
        Variant("bare sanic handler (the floor)", "bare", 0),
        Variant("Rasa RestInput", "rest", BOT_DELAY_MS),
        Variant("ZApiInput (ours)", "zapi", BOT_DELAY_MS),
        Variant("Rasa TwilioInput", "twilio", BOT_DELAY_MS),
        Variant("ZApiInput (ours), bot answers at once", "zapi", 0),
        Variant("ZApiInput (ours), bot takes 3 s", "zapi", 3000),
    ]
    with Processes(ctx.log_dir) as procs:
        emulator = start_emulator(procs, "ack-emulator")
        servers = [
            start_server(
                procs,
                v.channel,
                name=f"ack-{index}-{v.channel}-{v.delay_ms}ms",
                bot_delay_ms=v.delay_ms,
                emulator_url=emulator if v.channel == "zapi" else "",
                extra=v.extra,
                wait=False,
            )
            for index, v in enumerate(variants)
        ]
        for server in servers:
            server.wait()
        clear_emulator(emulator)
        # Not counted: connections opened, code paths imported, our lazy HTTP client built.
        for index, server in enumerate(servers):
            asyncio.run(warm_up(server, first=9_000_000 + index * 10_000, prefix=f"WARM{index}"))
            if server.channel == "zapi":
                trace.take(server)  # what the trace counts starts here
        # Interleaved rounds: a burst of load from other work on the machine hits every variant
        # about equally instead of spoiling one of them.
        for round_index in range(rounds):
            for index, (variant, server) in enumerate(zip(variants, servers)):
                first = (round_index * len(variants) + index) * 100_000
                variant.rounds.append(
                    asyncio.run(measure(server, seconds=seconds, first=first, prefix=f"ACK{index}"))
                )
        for variant, server in zip(variants, servers):
            variant.gc = httpx.get(f"{server.url}/_bench/stats", timeout=10).json()
            if server.channel == "zapi":
                variant.trace = trace.take(server)
        for variant in variants:
            pooled = variant.pooled
            if variant.channel == "zapi" and variant.delay_ms == BOT_DELAY_MS:
                # The stub bot answers each message once: every one must reach the emulator.
                phones = {bodies.phone_for(shot.index) for shot in pooled.shots}
                got = wait_for_sends(emulator, len(phones), deadline_s=30, phones=phones)
                variant.note = f"{got} of {len(phones)} answers reached the emulator"
            elif variant.channel == "rest":
                variant.note = f"{rest_replies(pooled)} answers in {len(pooled.shots)} responses"
            elif variant.channel == "twilio":
                variant.note = "every send refused at once (closed loopback port)"
        for server in servers:
            # Backlogs (the 3 s bot) would only delay a graceful stop.
            _kill_fast(procs, server)
        probe_server = start_server(
            procs, "twilio", name="ack-twilio-blackhole", bot_delay_ms=BOT_DELAY_MS,
            extra=["--twilio-api", "blackhole"],
        )  # fmt: skip
        blackhole = asyncio.run(twilio_blackhole_probe(probe_server))
        _kill_fast(procs, probe_server)

    table = Table(
        ["channel", "bot time", "requests", "ack p50", "ack p99", "max", "p99 per round",
         "statuses", "generator lag p99", "full GCs in the server (longest)", "answers"]
    )  # fmt: skip
    for v in variants:
        r = v.pooled
        per_round = " / ".join(ms(x.p(99)) for x in v.rounds)
        table.rows.append(
            [
                v.label, f"{v.delay_ms} ms", str(len(r.shots)), ms(r.p(50)), ms(r.p(99)),
                ms(r.p(100)), per_round, r.statuses(), ms(r.lag_p99), _gc_cell(v.gc), v.note,
            ]
        )  # fmt: skip
    bare, rest, ours, twilio = (v.pooled for v in variants[:4])
    ours_variants = [v for v in variants if v.channel == "zapi" and not v.extra]
    worst = max(ours_variants, key=lambda v: v.pooled.p(99))
    worst_ours = worst.pooled.p(99)
    section = Section(
        title="1. Webhook ack latency while the bot is slow",
        method=f"""
Each channel runs alone in a sanic server process, registered with Rasa's own
`rasa.core.channels.channel.register([channel], app, route="/webhooks/")`, with a stub agent
(`app.ctx.agent`) whose `handle_message` sleeps {BOT_DELAY_MS} ms and then sends one text through
`message.output_channel`. Our channel's `base_url` points at the Z-API emulator, so its answers
are real HTTP sends; Rasa's rest channel answers in the HTTP response; Rasa's Twilio channel sends
with the blocking `twilio` client, pointed at a closed loopback port (see below).

Load: an open-loop generator (`bench/load.py`, asyncio + httpx) starts one request every
{1000 / RATE:.0f} ms ({RATE:.0f}/s), every request from a new sender, in {rounds} rounds of
{seconds:.0f} s per variant, the variants taking turns (after a 1 s warm-up each); percentiles
are over all rounds together, "p99 per round" shows how much they moved. The bare sanic handler
(JSON-parse and 200, no channel) is the floor: what any webhook gets on this machine at this rate
in this run. Open-loop because wrk is closed-loop: against a channel that holds each request for
the bot's {BOT_DELAY_MS} ms it would send fewer requests than asked and hide the queueing. Ack
latency = from handing the request to httpx until the response is read; "generator lag" is how
late the generator itself was (CPU contention on this machine), reported so it is not mistaken
for the server.
""",
        tables=[table],
        summary=(
            f"p99 {ms(ours.p(99))}",
            f"rest p99 {ms(rest.p(99))}, Twilio p99 {ms(twilio.p(99))}",
            f"{ratio(rest.p(99) / ours.p(99))} faster than rest; "
            f"{ratio(ours.p(99) / bare.p(99))} the bare handler's p99",
        ),
    )
    section.targets.append(
        Target(
            what="our ack p99, whatever the bot's speed",
            goal=f"< {TARGET_P99_MS:.0f} ms",
            result=(
                f"{ms(worst_ours)} at worst (bot {worst.delay_ms} ms); the bare handler's p99 at "
                f"the same rate: {ms(bare.p(99))}"
            ),
            met=worst_ours < TARGET_P99_MS,
            why=_ack_why(worst, bare.p(99))
            + (
                "The webhook only authenticates, parses, deduplicates and queues the message; the "
                "turn runs later in the sender's worker, so the bot's time never reaches the ack. "
                f"Rasa's rest and Twilio channels await the whole turn inside the request, so "
                f"their ack is the bot's time: p50 {ms(rest.p(50))} and {ms(twilio.p(50))}."
            ),
        )
    )
    traced = [(v.label, v.trace) for v in ours_variants if v.trace]
    if traced:
        section.notes.append(
            "**Where our acks' time went, inside the server** (`bench/trace.py`: every webhook "
            "of the measured rounds, timed by the benchmark server around our handler, the "
            "state file's writer and the event loop):"
        )
        section.notes.append(trace.table(traced).markdown())
    answered, waited = blackhole
    section.notes.append(
        f"""
**Rasa's Twilio channel and an unreachable Twilio API.** `TwilioOutput._send_message` calls the
twilio client's `messages.create` (blocking `requests`, no timeout by default) inside `async def`,
so it runs on the event loop. api.twilio.com is not reachable from this machine (and must not be
contacted), so the benchmark points the client at a loopback port by patching
`twilio.base.client_base.ClientBase.get_hostname` in the benchmark server only. With a *closed*
port each send fails at once with `requests.exceptions.ConnectionError`; that is not a
`TwilioRestException`, so it escapes `_send_message`, TwilioInput logs it and re-raises
(`debug_mode=True` by default), and Twilio's webhook gets a **500** after the bot's
{BOT_DELAY_MS} ms: that is the "statuses" column above. With a port that accepts connections and
never answers (a firewall dropping packets looks the same) the send blocks the whole server: one
message was posted and, once its send had started, the server's health page
{"still answered" if answered else f"**did not answer within {waited:.0f} s**"}: the event loop
was stuck in the blocking send. That is why the comparison uses the closed port: it fails fast, the
other never finishes.
"""
    )
    section.seconds = time.monotonic() - began
    return section


def _kill_fast(procs: Processes, server: Server) -> None:
    # Its backlog (or a blocked event loop) would only delay a graceful stop.
    server.process.stop(timeout=2)
    procs.stop(server.process)


def _gc_cell(stats: Dict[str, Any]) -> str:
    if not stats:
        return "n/a"
    count = int(stats.get("gc_full", 0))
    if not count:
        return "0"
    return f"{count} ({ms(float(stats.get('gc_full_max_ms', 0.0)))})"


def _ack_why(worst: Variant, bare_p99: float) -> str:
    ours_p99 = worst.pooled.p(99)
    if ours_p99 < TARGET_P99_MS:
        return ""
    pause = float(worst.gc.get("gc_full_max_ms", 0.0))
    objects = int(worst.gc.get("gc_objects", 0))
    if worst.gc.get("gc_full") and pause >= TARGET_P99_MS:
        return (
            f"The tail is Python's garbage collector: our server ran {worst.gc['gc_full']} full "
            f"collection(s) during the run, the longest stopping it for {ms(pause)} (it walks "
            f"the {objects:,} objects the process tracks outside the frozen ones). "
            "Our channel collects and freezes what is alive once the server has started "
            "(`gc.freeze()` in `zapi_channel/channel.py`), so such a pause comes from objects "
            "made while serving: the turns' and the sends'. "
        )
    if bare_p99 >= TARGET_P99_MS * 0.7:
        return (
            "The bare handler, which does nothing but parse JSON, was nearly as slow at the same "
            "rate in the same run: the tail is this shared machine's CPU contention (see the "
            "generator lag column), not the channel. "
        )
    if worst.trace:
        return trace.explain(worst.trace, ours_p99, TARGET_P99_MS)
    return "The bare handler stayed fast at the same rate, so the tail is ours. "

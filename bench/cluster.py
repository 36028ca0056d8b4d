"""Benchmark 7: two ``rasa run`` instances sharing one Redis, against one.

The demo bot as ``make run`` runs it, three times over beside one emulator and one action server:
one ``rasa run`` alone and two that share a Redis (``redis_url``, one prefix), as two replicas
behind a load balancer would. The same bursts of new customers ("hi", answered with 2 messages)
go to the single instance, and to the pair round-robin, rounds taking turns. Throughput and
answer latency come from the emulator's records, as in section 3.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Dict, List, Sequence

import httpx

from bench import bodies
from bench.common import WEBHOOK_TOKEN, Context, forgetting_keys, start_emulator
from bench.e2e import TEXT, Run, finish_zapi
from bench.load import LoadResult, burst, new_client
from bench.procs import BIN, Process, Processes, free_port
from bench.report import Section, Table, Target
from bench.server import CLIENT_TOKEN, INSTANCE_ID, INSTANCE_TOKEN
from bench.stack import Stack, run_local
from bench.stats import median, ms, percentile, rate, ratio
from tests.redis_server import ensure_redis

#: Customers per burst: enough to keep two instances busy for a few seconds.
BURST = 120


def _credentials(path: Path, emulator_url: str, state: Path, redis_url: str, prefix: str) -> Path:
    lines = [
        "zapi_channel.ZApiInput:",
        f"  instance_id: {INSTANCE_ID}",
        f"  instance_token: {INSTANCE_TOKEN}",
        f"  client_token: {CLIENT_TOKEN}",
        f"  webhook_token: {WEBHOOK_TOKEN}",
        f"  base_url: {emulator_url}",
        f"  state_path: {state}",
    ]
    if redis_url:
        lines += [f"  redis_url: {redis_url}", f"  redis_prefix: {prefix}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _load(urls: Sequence[str], first: int, count: int) -> LoadResult:
    """A burst of ``count`` new customers, spread round-robin over ``urls``."""

    def make(client: httpx.AsyncClient, i: int) -> httpx.Request:
        payload = bodies.received_callback(
            bodies.phone_for(i), bodies.message_id_for(i, f"C{first}x"), TEXT
        )
        url = urls[i % len(urls)]
        return client.build_request("POST", f"{url}/webhooks/zapi/webhook?token={WEBHOOK_TOKEN}",
                                    json=payload)  # fmt: skip

    async def go() -> LoadResult:
        async with new_client(timeout=120) as client:
            return await burst(client, make, count=count, first=first, deadline_s=120)

    return asyncio.run(go())


def run(ctx: Context) -> Section:
    began = time.monotonic()
    rounds = int(ctx.scale(3, 1))
    count = int(ctx.scale(BURST, 40))
    redis_url = ensure_redis()
    if redis_url is None:
        raise RuntimeError("the two-instance benchmark needs Redis (redis-server)")
    local = run_local()
    local.train_if_needed()
    prefix = f"bench-cluster-{uuid.uuid4().hex[:8]}"
    # The bots stop first, then the keys of both deployments go.
    with forgetting_keys(redis_url, prefix, f"{prefix}-single"), Processes(ctx.log_dir) as procs:
        emulator_url = start_emulator(procs, "cluster-emulator")
        actions_port = free_port()
        endpoints = ctx.log_dir / "cluster-endpoints.yml"
        endpoints.write_text(f"action_endpoint:\n  url: http://127.0.0.1:{actions_port}/webhook\n")
        actions = procs.start(
            "cluster-actions",
            [str(BIN / "rasa"), "run", "actions", "--actions", "actions", "-p", str(actions_port)],
        )
        started: Dict[str, tuple] = {}  # type: ignore[type-arg]
        for name, shared in (("single", False), ("pair-a", True), ("pair-b", True)):
            port = free_port()
            credentials = _credentials(
                ctx.log_dir / f"cluster-credentials-{name}.yml",
                emulator_url,
                ctx.log_dir / f"cluster-state-{name}.db",
                redis_url,
                prefix if shared else f"{prefix}-single",
            )
            process = procs.start(
                f"cluster-rasa-{name}",
                [
                    str(BIN / "rasa"), "run", "-m", str(local.MODEL), "--credentials",
                    str(credentials), "--endpoints", str(endpoints), "-i", "127.0.0.1",
                    "-p", str(port),
                ],
            )  # fmt: skip
            started[name] = (process, f"http://127.0.0.1:{port}")
        actions.wait_http(f"http://127.0.0.1:{actions_port}/health", 120)
        for process, url in started.values():
            process.wait_http(f"{url}/webhooks/zapi/", 300)
        stack = Stack(emulator_url, started["single"][1], started["single"][0])
        single_urls = [started["single"][1]]
        pair_urls = [started["pair-a"][1], started["pair-b"][1]]
        pair_processes: List[Process] = [started["pair-a"][0], started["pair-b"][0]]
        # Warm-up: the first turns of each process pay lazy imports and the model's first call.
        next_first = 0
        for urls in (single_urls, pair_urls):
            finish_zapi(stack, _load(urls, next_first, 20), 120)
            next_first += 10_000
        single: List[Run] = []
        pair: List[Run] = []
        shares: List[float] = []
        for _ in range(rounds):
            for urls, runs in ((single_urls, single), (pair_urls, pair)):
                cpu = [p.cpu_seconds() for p in pair_processes]
                load = _load(urls, next_first, count)
                runs.append(finish_zapi(stack, load, 180))
                next_first += 10_000
                if runs is pair:
                    used = [p.cpu_seconds() - c for p, c in zip(pair_processes, cpu)]
                    shares.append(min(used) / max(used) if max(used) else 0.0)
    table = Table(
        ["deployment", "messages/s per round", "messages/s (median)", "answer p50", "answer p99",
         "answered"]
    )  # fmt: skip
    for label, runs in (("one rasa run", single), ("two rasa run sharing Redis", pair)):
        answered = [v for r in runs for v in r.answer_ms if v is not None]
        table.rows.append(
            [
                label,
                " / ".join(rate(r.throughput) for r in runs),
                rate(median([r.throughput for r in runs])),
                ms(percentile(answered, 50)),
                ms(percentile(answered, 99)),
                f"{sum(r.answered for r in runs)} of {sum(len(r.answer_ms) for r in runs)}",
            ]
        )
    one = median([r.throughput for r in single])
    two = median([r.throughput for r in pair])
    p99_one = percentile([v for r in single for v in r.answer_ms if v is not None], 99)
    p99_two = percentile([v for r in pair for v in r.answer_ms if v is not None], 99)
    lost = sum(len(r.answer_ms) - r.answered for r in single + pair)
    section = Section(
        title="7. Scale: two instances sharing Redis",
        method=f"""
Three `rasa run` with the demo model beside one emulator and one action server: one alone, and
two sharing one Redis (`redis_url`, the same `redis_prefix`), as replicas behind a load balancer.
Each round sends a burst of {count} new customers ("hi", two answers each) to the single
instance, then one to the pair, round-robin between its two webhooks; {rounds} rounds, after a
warm-up of 20 customers each. A message may be answered by either instance of the pair: the
Redis inbox is partitioned by customer, each partition owned by one live instance.
""",
        tables=[table],
        summary=(rate(two), f"one instance {rate(one)}", ratio(two / one)),
    )
    section.targets.append(
        Target(
            what="every message answered once, on either deployment",
            goal="all of them",
            result=f"{lost} unanswered",
            met=lost == 0,
        )
    )
    section.notes.append(
        f"Throughput of the pair against one instance: {ratio(two / one)}; answer p99 "
        f"{ms(p99_two)} against {ms(p99_one)}. The two instances of the pair shared the work "
        f"evenly: the less busy one used {median(shares):.0%} of the busier one's CPU (median "
        "of rounds). What this can show on this machine: it has 2 cores, and one `rasa run` "
        "already keeps about one of them busy with the model, while the emulator and the action "
        "server, which a real deployment does not run beside the bot, take the rest. Two "
        "instances therefore cannot run twice as fast here; the ratio says that a second "
        "instance adds what spare CPU allows, takes half the customers, and loses or repeats "
        "nothing. On machines with a core per instance the ratio is what Redis and the model "
        "allow, not what two shared cores allow."
    )
    section.seconds = time.monotonic() - began
    return section

"""An open-loop load generator: requests leave at a fixed rate whatever the server does.

wrk (see :mod:`bench.wrk`) is closed-loop: a connection waits for its answer before sending the
next request, so against a channel that answers after the bot's 300 ms turn it would send far
fewer requests than asked and hide the queueing (coordinated omission). Here request ``i`` is
started at ``start + i / rate`` on its own task, so a slow server faces the same arrivals as a
fast one. Latency is taken from the moment the request is handed to httpx until its answer is
read; how late the generator itself started each request is reported separately (``lag``), so
a busy machine cannot pass for a slow server unnoticed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import httpx

from bench.stats import percentile

RequestFactory = Callable[[httpx.AsyncClient, int], httpx.Request]


@dataclass
class Shot:
    index: int
    #: ``time.time()`` when the request was started: compared with the emulator's timestamps.
    wall: float
    lag_ms: float
    latency_ms: Optional[float] = None
    status: Optional[int] = None
    error: Optional[str] = None
    body: bytes = b""


@dataclass
class LoadResult:
    rate: float
    seconds: float
    shots: List[Shot] = field(default_factory=list)

    @property
    def latencies(self) -> List[float]:
        return [s.latency_ms for s in self.shots if s.latency_ms is not None]

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def lag_p99(self) -> float:
        return percentile([s.lag_ms for s in self.shots], 99)

    @property
    def ok(self) -> int:
        return sum(1 for s in self.shots if s.status is not None and s.status < 300)

    def statuses(self) -> str:
        counts: dict[str, int] = {}
        for shot in self.shots:
            key = str(shot.status) if shot.status is not None else (shot.error or "error")
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{n}x {k}" for k, n in sorted(counts.items()))


def new_client(timeout: float) -> httpx.AsyncClient:
    # Enough connections that the client never queues a request behind a slow answer.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=5.0),
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000),
        trust_env=False,
    )


async def open_loop(
    client: httpx.AsyncClient,
    make: RequestFactory,
    *,
    rate: float,
    seconds: float,
    first: int = 0,
    deadline_s: float = 120.0,
    keep_body: bool = False,
) -> LoadResult:
    """Send ``rate * seconds`` requests at a fixed rate; wait (at most ``deadline_s`` after the
    last one left) for their answers."""
    count = max(1, round(rate * seconds))
    result = LoadResult(rate=rate, seconds=seconds)
    tasks: List[asyncio.Task[None]] = []

    async def one(shot: Shot, request: httpx.Request) -> None:
        started = time.perf_counter()
        try:
            answer = await client.send(request)
            shot.latency_ms = (time.perf_counter() - started) * 1000
            shot.status = answer.status_code
            if keep_body:
                shot.body = answer.content
        except httpx.HTTPError as exc:
            shot.error = type(exc).__name__

    start = time.perf_counter() + 0.02
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        request = make(client, first + i)
        shot = Shot(
            index=first + i, wall=time.time(), lag_ms=(time.perf_counter() - scheduled) * 1000
        )
        result.shots.append(shot)
        tasks.append(asyncio.create_task(one(shot, request)))
    _, pending = await asyncio.wait(tasks, timeout=deadline_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for shot in result.shots:
        if shot.status is None and shot.error is None:
            shot.error = "no answer before the deadline"
    return result


async def burst(
    client: httpx.AsyncClient,
    make: RequestFactory,
    *,
    count: int,
    first: int = 0,
    deadline_s: float = 120.0,
    keep_body: bool = False,
) -> LoadResult:
    """``count`` requests at once (an arrival burst), each on its own connection."""
    return await open_loop(
        client,
        make,
        rate=1e9,
        seconds=count / 1e9,
        first=first,
        deadline_s=deadline_s,
        keep_body=keep_body,
    )

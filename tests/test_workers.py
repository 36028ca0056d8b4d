from __future__ import annotations

import asyncio
from typing import List, Tuple

from zapi_channel.workers import ConversationWorkers


async def test_one_senders_jobs_run_in_arrival_order_even_when_early_ones_are_slow() -> None:
    workers = ConversationWorkers(max_concurrency=4)
    done: List[int] = []

    def job(n: int, delay: float):  # type: ignore[no-untyped-def]
        async def run() -> None:
            await asyncio.sleep(delay)
            done.append(n)

        return run

    for n, delay in enumerate([0.05, 0.0, 0.02, 0.0]):
        workers.submit("5511", job(n, delay))
    assert await workers.join(2)
    assert done == [0, 1, 2, 3]


async def test_different_senders_run_in_parallel_within_the_bound() -> None:
    workers = ConversationWorkers(max_concurrency=2)
    running = 0
    peak = 0
    log: List[Tuple[str, str]] = []

    def job(sender: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            log.append((sender, "start"))
            await asyncio.sleep(0.02)
            running -= 1

        return run

    for sender in ("a", "b", "c", "d"):
        workers.submit(sender, job(sender))
    assert await workers.join(2)
    assert peak == 2
    assert len(log) == 4


async def test_a_failing_job_does_not_stop_the_queue() -> None:
    workers = ConversationWorkers(max_concurrency=1)
    done: List[str] = []

    async def boom() -> None:
        raise RuntimeError("bot crashed")

    async def ok() -> None:
        done.append("ok")

    workers.submit("x", boom)
    workers.submit("x", ok)
    assert await workers.join(2)
    assert done == ["ok"]
    assert workers.pending == 0


async def test_join_times_out_while_work_remains() -> None:
    workers = ConversationWorkers(max_concurrency=1)
    release = asyncio.Event()

    async def wait() -> None:
        await release.wait()

    workers.submit("x", wait)
    assert await workers.join(0.05) is False
    assert workers.pending == 1
    release.set()
    assert await workers.join(1)

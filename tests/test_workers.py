from __future__ import annotations

import asyncio
from typing import List, Tuple

from zapi_channel.delivery.workers import ConversationWorkers


async def test_one_senders_jobs_run_in_arrival_order_even_when_early_ones_are_slow() -> None:
    workers: ConversationWorkers[object] = ConversationWorkers(max_concurrency=4)
    done: List[int] = []

    def job(n: int, delay: float):  # type: ignore[no-untyped-def]
        async def run() -> None:
            await asyncio.sleep(delay)
            done.append(n)

        return run

    for n, delay in enumerate([0.05, 0.0, 0.02, 0.0]):
        workers.submit("5511", n, job(n, delay))
    assert await workers.join(2)
    assert done == [0, 1, 2, 3]


async def test_different_senders_run_in_parallel_within_the_bound() -> None:
    workers: ConversationWorkers[object] = ConversationWorkers(max_concurrency=2)
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
        workers.submit(sender, sender, job(sender))
    assert await workers.join(2)
    assert peak == 2
    assert len(log) == 4


async def test_a_failing_job_does_not_stop_the_queue() -> None:
    workers: ConversationWorkers[object] = ConversationWorkers(max_concurrency=1)
    done: List[str] = []

    async def boom() -> None:
        raise RuntimeError("bot crashed")

    async def ok() -> None:
        done.append("ok")

    workers.submit("x", "boom", boom)
    workers.submit("x", "ok", ok)
    assert await workers.join(2)
    assert done == ["ok"]
    assert workers.pending == 0


async def test_join_times_out_while_work_remains() -> None:
    workers: ConversationWorkers[object] = ConversationWorkers(max_concurrency=1)
    release = asyncio.Event()

    async def wait() -> None:
        await release.wait()

    workers.submit("x", "wait", wait)
    assert await workers.join(0.05) is False
    assert workers.pending == 1
    release.set()
    assert await workers.join(1)


async def test_cancel_hands_back_running_and_queued_items() -> None:
    workers: ConversationWorkers[str] = ConversationWorkers(max_concurrency=1)
    never = asyncio.Event()

    async def stuck() -> None:
        await never.wait()

    workers.submit("x", "running", stuck)
    workers.submit("x", "queued", stuck)
    workers.submit("y", "other", stuck)
    await asyncio.sleep(0.01)
    assert await workers.join(0.05) is False
    assert sorted(await workers.cancel()) == ["other", "queued", "running"]
    assert workers.unfinished() == [] and workers.pending == 0
    assert await workers.join(0.01)


async def test_a_job_takes_the_matching_items_queued_behind_it_and_they_do_not_run() -> None:
    workers: ConversationWorkers[int] = ConversationWorkers(max_concurrency=1)
    ran: List[int] = []
    took: List[List[int]] = []
    gate = asyncio.Event()

    def job(n: int):  # type: ignore[no-untyped-def]
        async def run() -> None:
            await gate.wait()
            took.append(workers.take_following("5511", lambda item: item < 3, limit=10))
            assert sorted(workers.unfinished()) == list(range(n, 5))  # taken ones still count
            ran.append(n)

        return run

    for n in range(5):
        workers.submit("5511", n, job(n))
    await asyncio.sleep(0)
    gate.set()
    assert await workers.join(2)
    # 0 took 1 and 2 (3 breaks the run); 3 ran and found 4, which is not wanted.
    assert ran == [0, 3, 4]
    assert took == [[1, 2], [], []]


async def test_take_following_stops_at_its_limit() -> None:
    workers: ConversationWorkers[int] = ConversationWorkers(max_concurrency=1)
    took: List[List[int]] = []

    async def first() -> None:
        took.append(workers.take_following("5511", lambda item: True, limit=2))

    async def later() -> None:
        return None

    workers.submit("5511", 0, first)
    for n in range(1, 5):
        workers.submit("5511", n, later)
    assert await workers.join(2)
    assert took == [[1, 2]]


async def test_the_wait_before_a_job_holds_no_concurrency_slot() -> None:
    slow_to_start = asyncio.Event()

    async def before(sender: str, item: str) -> None:
        if sender == "waits":
            await slow_to_start.wait()

    workers: ConversationWorkers[str] = ConversationWorkers(max_concurrency=1, before=before)
    done: List[str] = []

    def job(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            done.append(name)

        return run

    workers.submit("waits", "a", job("a"))
    workers.submit("other", "b", job("b"))
    # The other customer's job runs while the first one still waits to start.
    for _ in range(50):
        if done:
            break
        await asyncio.sleep(0.01)
    assert done == ["b"]
    slow_to_start.set()
    assert await workers.join(2)
    assert done == ["b", "a"]


async def test_a_customer_with_many_messages_takes_turns_with_the_others() -> None:
    workers: ConversationWorkers[object] = ConversationWorkers(max_concurrency=1)
    order: List[str] = []

    def job(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            order.append(name)
            await asyncio.sleep(0)

        return run

    for n in range(3):
        workers.submit("busy", f"busy{n}", job(f"busy{n}"))
    workers.submit("other", "other0", job("other0"))
    assert await workers.join(2)
    # Not all of the busy customer's backlog first: the other one's turn comes after one.
    assert order == ["busy0", "other0", "busy1", "busy2"]


async def test_turns_run_on_at_most_the_bound_of_tasks_however_many_customers() -> None:
    workers: ConversationWorkers[object] = ConversationWorkers(max_concurrency=3)
    ran_on = set()

    async def job() -> None:
        ran_on.add(asyncio.current_task())
        await asyncio.sleep(0.001)

    for n in range(60):
        workers.submit(f"55{n}", n, job)
    assert await workers.join(2)
    # Three workers ran all 60 turns: a waiting customer is not a task of its own.
    assert len(ran_on) == 3
    assert workers.pending == 0


async def test_a_customer_who_writes_after_the_workers_ended_is_served() -> None:
    workers: ConversationWorkers[object] = ConversationWorkers(max_concurrency=1)
    done: List[str] = []

    async def first() -> None:
        done.append("first")

    async def late() -> None:
        done.append("late")

    workers.submit("a", "first", first)
    for _ in range(5):  # the worker runs "first", finds nobody ready, and ends
        await asyncio.sleep(0)
    workers.submit("b", "late", late)
    assert await workers.join(2)
    assert done == ["first", "late"]


async def test_a_backlog_of_one_customer_starts_no_task_per_message() -> None:
    workers: ConversationWorkers[object] = ConversationWorkers(max_concurrency=8)
    alive: List[int] = []

    async def job() -> None:
        alive.append(len(asyncio.all_tasks()))
        await asyncio.sleep(0)

    for n in range(5):
        workers.submit("5511", n, job)
    assert await workers.join(2)
    # One worker runs the five turns one after the other: as many tasks alive at the last turn
    # as at the first, no idle worker made beside it after each.
    assert len(alive) == 5 and len(set(alive)) == 1

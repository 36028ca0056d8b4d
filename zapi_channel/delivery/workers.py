"""Per-conversation FIFO workers.

The webhook must answer Z-API within milliseconds whatever the bot's speed (and sanic 21.12 cancels
a handler whose client hangs up), so a Rasa turn never runs inside the request. Each sender gets a
queue drained by one task: one sender's messages are handled strictly in arrival order, different
senders run in parallel, and a semaphore bounds how many turns run at once so the model's CPU work
cannot starve the event loop.

Each queued job carries the item it works on, so that at shutdown whatever did not finish can be
handed back (:meth:`ConversationWorkers.unfinished`) and kept for the next start.

A running job may take the items queued right behind it (:meth:`ConversationWorkers.take_following`)
to handle them with its own: they stay queued, so they still count as unfinished, until that job
ends, and are then dropped without running.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable, Deque, Dict, Generic, List, Optional, Set, Tuple, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[], Awaitable[None]]
#: Awaited before a job takes one of the ``max_concurrency`` slots (a wait for more messages of
#: the same sender must not hold a slot that another customer's turn could use).
Before = Callable[[str, T], Awaitable[None]]


async def _taken() -> None:
    """The job of an item that an earlier job of its sender handled."""


class ConversationWorkers(Generic[T]):
    def __init__(self, max_concurrency: int, *, before: Optional[Before[T]] = None) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._before = before
        self._limit = max_concurrency
        self._semaphore: Optional[asyncio.Semaphore] = None
        self._queues: Dict[str, Deque[Tuple[T, Job]]] = {}
        self._tasks: Set[asyncio.Task[None]] = set()
        self._idle: Optional[asyncio.Event] = None

    @property
    def pending(self) -> int:
        """Jobs accepted and not finished yet (queued or running)."""
        # A running job stays at the head of its queue until it finishes.
        return sum(len(queue) for queue in self._queues.values())

    def unfinished(self) -> List[T]:
        """The items of every job not finished yet, running ones first in each queue."""
        return [item for queue in self._queues.values() for item, _ in queue]

    def submit(self, sender: str, item: T, job: Job) -> None:
        """Queue ``job`` behind the sender's earlier jobs. Must be called from the event loop."""
        if self._semaphore is None:
            # Created lazily: asyncio primitives bind to the loop that first uses them, and the
            # channel object is built before Rasa's server loop starts.
            self._semaphore = asyncio.Semaphore(self._limit)
            self._idle = asyncio.Event()
        assert self._idle is not None
        self._idle.clear()
        queue = self._queues.get(sender)
        if queue is not None:
            queue.append((item, job))
            return
        self._queues[sender] = deque([(item, job)])
        task = asyncio.ensure_future(self._drain(sender))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def take_following(self, sender: str, wanted: Callable[[T], bool], limit: int) -> List[T]:
        """The items queued right behind the sender's running job, as long as ``wanted`` says
        yes, at most ``limit``: the running job handles them, and they will not run again."""
        queue = self._queues.get(sender)
        taken: List[T] = []
        if not queue:
            return taken
        for index in range(1, len(queue)):
            item, job = queue[index]
            if job is _taken:
                continue
            if len(taken) >= limit or not wanted(item):
                break
            queue[index] = (item, _taken)
            taken.append(item)
        return taken

    async def _drain(self, sender: str) -> None:
        assert self._semaphore is not None and self._idle is not None
        queue = self._queues[sender]
        try:
            while queue:
                item, job = queue[0]
                if job is _taken:
                    queue.popleft()
                    continue
                if self._before is not None:
                    try:
                        await self._before(sender, item)
                    except Exception:
                        logger.exception("Preparing a conversation turn failed; running it now")
                async with self._semaphore:
                    try:
                        await job()
                    except Exception:
                        # One failed turn must not stop this customer's later messages.
                        logger.exception("A conversation turn failed; continuing with the next")
                queue.popleft()
        finally:
            if self._queues.get(sender) is queue and not queue:
                del self._queues[sender]
            if not self._queues:
                self._idle.set()

    async def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until every accepted job has finished; False if ``timeout`` ran out first."""
        if self._idle is None or not self._queues:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def cancel(self) -> List[T]:
        """Stop every worker now; returns the items of the jobs that did not finish."""
        unfinished = self.unfinished()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._queues.clear()
        if self._idle is not None:
            self._idle.set()
        return unfinished


__all__ = ["ConversationWorkers"]

"""Per-conversation FIFO workers.

The webhook must answer Z-API within milliseconds whatever the bot's speed (and sanic 21.12 cancels
a handler whose client hangs up), so a Rasa turn never runs inside the request. Each sender gets a
queue: one sender's messages are handled strictly in arrival order, different senders run in
parallel, and at most ``max_concurrency`` worker tasks run turns at once, so that the model's CPU
work cannot starve the event loop.

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
from typing import (
    Any,
    Awaitable,
    Callable,
    Coroutine,
    Deque,
    Dict,
    Generic,
    List,
    Optional,
    Set,
    Tuple,
    TypeVar,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[], Awaitable[None]]
#: Awaited before a job takes one of the ``max_concurrency`` slots (a wait for more messages of
#: the same sender must not hold a slot that another customer's turn could use).
Before = Callable[[str, T], Awaitable[None]]


async def _taken() -> None:
    """The job of an item that an earlier job of its sender handled."""


class ConversationWorkers(Generic[T]):
    """Per-sender FIFO queues, run by at most ``max_concurrency`` worker tasks.

    A sender whose next job may run waits in one line of ready senders; a worker takes the
    first, runs that one job, and puts the sender back at the end of the line if it has more,
    so a customer who sent many messages takes turns with the others. Workers are started as
    senders get ready (never more than the limit) and end when the line is empty. Under load a
    worker runs one turn after another: no task is made per message, and a queued message is
    only data (a task per waiting customer cost, measured, about a twentieth of the webhook's
    CPU to create, and its frames were more objects for every full garbage collection to walk).
    """

    def __init__(self, max_concurrency: int, *, before: Optional[Before[T]] = None) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._before = before
        self._limit = max_concurrency
        self._queues: Dict[str, Deque[Tuple[T, Job]]] = {}
        # Senders whose first job may run now, in the order they got ready.
        self._ready: Deque[str] = deque()
        # Workers alive, counted when started and uncounted by the worker itself as it ends, so
        # that a sender who gets ready just as the last worker leaves gets a new one.
        self._running = 0
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
        if self._idle is None:
            # Created lazily: asyncio primitives bind to the loop that first uses them, and the
            # channel object is built before Rasa's server loop starts.
            self._idle = asyncio.Event()
        self._idle.clear()
        queue = self._queues.get(sender)
        if queue is not None:
            queue.append((item, job))
            return
        self._queues[sender] = deque([(item, job)])
        self._next(sender)

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

    def _next(self, sender: str, *, by_worker: bool = False) -> None:
        """The sender's first job is next: ready now, or once ``before`` is done with it.

        ``by_worker``: called by a worker that goes on taking senders from the line, so a sender
        ready at once needs no new worker.
        """
        queue = self._queues[sender]
        while queue and queue[0][1] is _taken:
            queue.popleft()
        if not queue:
            del self._queues[sender]
            if not self._queues:
                assert self._idle is not None
                self._idle.set()
            return
        if self._before is None:
            self._ready_to_run(sender, start_worker=not by_worker)
        else:
            # A wait for more of this sender's messages holds no worker (see Before).
            self._start(self._prepare(sender, queue[0][0]))

    async def _prepare(self, sender: str, item: T) -> None:
        assert self._before is not None
        try:
            await self._before(sender, item)
        except Exception:
            logger.exception("Preparing a conversation turn failed; running it now")
        self._ready_to_run(sender)

    def _ready_to_run(self, sender: str, *, start_worker: bool = True) -> None:
        self._ready.append(sender)
        if start_worker and self._running < self._limit:
            self._running += 1
            self._start(self._work())

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self) -> None:
        try:
            while self._ready:
                sender = self._ready.popleft()
                queue = self._queues[sender]
                _, job = queue[0]
                try:
                    await job()
                except Exception:
                    # One failed turn must not stop this customer's later messages.
                    logger.exception("A conversation turn failed; continuing with the next")
                queue.popleft()
                self._next(sender, by_worker=True)
        finally:
            self._running -= 1

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
        self._ready.clear()
        self._running = 0
        if self._idle is not None:
            self._idle.set()
        return unfinished


__all__ = ["ConversationWorkers"]

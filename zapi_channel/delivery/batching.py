"""Redis commands that coroutines issue in one event-loop iteration, sent as one pipeline.

Measured with redis-py 4.6's asyncio client on this project's benchmark machine, one ``GET``
awaited on its own costs about 120 to 160 µs of the bot's CPU (taking a pooled connection,
writing, waking up for the answer, giving the connection back), and 11 to 18 µs as one of 50
in a pipeline. Every webhook and every turn of the shared delivery issues a few commands, and
under load dozens of them are waiting at once: sending what was issued together in one
non-transactional pipeline makes Redis cost per message what it costs per burst.

Each command still gets its own answer or its own error, exactly as if it had been sent alone
(``execute(raise_on_error=False)``). Redis runs a pipeline's commands in the order they were
issued, and a coroutine that awaits one command before issuing the next sees them run in that
order, as before. Only commands that answer at once belong here: a blocking one
(``XREADGROUP ... BLOCK``) would hold up every command queued behind it.

Lua scripts (:class:`Script`) go by their SHA1 (``EVALSHA``), so that a message's scripts cost
a few dozen bytes on the wire rather than their whole text, and Redis looks them up rather than
hashing their text at every call. A Redis that does not know one (restarted, or its script cache
flushed) answers ``NOSCRIPT``: those commands are sent again with the text (``EVAL``), in the
order they were issued, right after the rest of their pipeline.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Awaitable, Callable, Dict, List, Sequence, Set, Tuple

from redis.exceptions import NoScriptError

#: Commands an :class:`AutoPipeline` takes: ones that answer at once, never a blocking read.
PIPELINED = frozenset(
    {"delete", "eval", "evalsha", "exists", "get", "hget", "set", "xack", "xadd", "xdel"}
)

_Queued = Tuple[str, Tuple[Any, ...], Dict[str, Any], "asyncio.Future[Any]"]


@dataclass(frozen=True)
class Script:
    """A Lua script, and the SHA1 Redis knows it by."""

    body: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        # Redis names scripts by SHA1: an identifier here, not a safeguard (and Python 3.8's
        # hashlib has no usedforsecurity to say so).
        digest = hashlib.sha1(self.body.encode("utf-8")).hexdigest()  # noqa: S324
        object.__setattr__(self, "sha", digest)

    def __repr__(self) -> str:
        return f"Script({self.sha[:12]})"


def run_script(
    commands: Any, script: Script, keys: Sequence[Any], args: Sequence[Any]
) -> Awaitable[Any]:
    """``script`` on ``commands``: by its SHA1 through an :class:`AutoPipeline`, else with its
    text on a plain client (``EVAL``, which always works)."""
    if isinstance(commands, AutoPipeline):
        return commands.script(script, keys, args)
    return commands.eval(script.body, len(keys), *keys, *args)  # type: ignore[no-any-return]


class AutoPipeline:
    """``await batched.get(key)`` for any command of :data:`PIPELINED`, on ``client``'s pool."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._queued: List[_Queued] = []
        self._scheduled = False
        self._running: Set[asyncio.Task[None]] = set()
        # The scripts issued so far, by SHA1: the text to send when Redis does not know one.
        self._scripts: Dict[str, str] = {}
        #: Pipelines sent so far: fewer than the commands, under load.
        self.pipelines = 0

    def __repr__(self) -> str:
        return f"AutoPipeline({len(self._queued)} queued)"

    def __getattr__(self, command: str) -> Callable[..., Awaitable[Any]]:
        if command not in PIPELINED:
            raise AttributeError(f"{command!r} is not sent through an AutoPipeline")
        return partial(self.call, command)

    def call(self, command: str, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Queue ``command`` now; the future of its answer.

        A plain function, not a coroutine: the command is queued when it is issued, so that a
        caller can issue two and then await both (one round trip), with no task to start.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((command, args, kwargs, future))
        if not self._scheduled:
            self._scheduled = True
            # At the end of this iteration: what the other coroutines issue meanwhile joins.
            loop.call_soon(self._send)
        return future

    def script(
        self, script: Script, keys: Sequence[Any], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        """Queue ``script`` with ``keys`` and ``args`` (``EVALSHA``); the future of its answer."""
        self._scripts.setdefault(script.sha, script.body)
        return self.call("evalsha", script.sha, len(keys), *keys, *args)

    def _send(self) -> None:
        self._scheduled = False
        batch, self._queued = self._queued, []
        if batch:
            task = asyncio.ensure_future(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: List[_Queued]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for command, args, kwargs, _ in batch:
                getattr(pipe, command)(*args, **kwargs)
            answers = await pipe.execute(raise_on_error=False)
            unknown = [i for i, answer in enumerate(answers) if self._unknown(batch[i], answer)]
            if unknown:
                # Redis lost its scripts: those commands again with their text, in order.
                again = self._client.pipeline(transaction=False)
                for i in unknown:
                    sha, *rest = batch[i][1]
                    again.eval(self._scripts[sha], *rest)
                for i, answer in zip(unknown, await again.execute(raise_on_error=False)):
                    answers[i] = answer
        except BaseException as exc:  # every caller gets the failure
            # Redis down, a timeout, a cancelled stop, arguments redis-py refused: nothing of
            # the batch is known to be done, and no caller may be left waiting.
            cancelled = isinstance(exc, asyncio.CancelledError)
            for *_, future in batch:
                if future.done():
                    continue
                if cancelled:
                    future.cancel()
                else:
                    future.set_exception(exc)
            if cancelled:
                raise
            return
        self.pipelines += 1
        for (*_, future), answer in zip(batch, answers):
            if future.done():
                continue  # the caller was cancelled; the command ran all the same
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    def _unknown(self, queued: _Queued, answer: Any) -> bool:
        return (
            queued[0] == "evalsha"
            and isinstance(answer, NoScriptError)
            and queued[1][0] in self._scripts
        )

    async def aclose(self) -> None:
        """Wait for the pipelines on the wire (queued commands go out first)."""
        self._send()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


__all__ = ["PIPELINED", "AutoPipeline", "Script", "run_script"]

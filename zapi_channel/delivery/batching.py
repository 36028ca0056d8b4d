"""Redis commands that coroutines issue in one event-loop iteration, sent as one pipeline.

Measured with redis-py 4.6's asyncio client on this project's benchmark machine, one ``GET``
awaited on its own costs about 120 to 160 µs of the bot's CPU (taking a pooled connection,
writing, waking up for the answer, giving the connection back), and 11 to 18 µs as one of 50
in a pipeline. Every webhook and every turn of the shared delivery issues a few commands, and
under load dozens of them are waiting at once: sending what was issued together in one
non-transactional pipeline makes Redis cost per message what it costs per burst. One pipeline
is on the wire at a time, on one connection of the client's pool that it holds (see
``_exchange``): what is issued while it is out goes as the next one, the moment it is answered,
so that a busier bot sends bigger pipelines rather than more of them.

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

A script made with ``batchable=True`` goes further: its calls of one iteration go as *one*
command (:attr:`Script.many`), which runs each call in turn, in the order they were issued, and
answers each one's outcome. redis-py's work is per command (packing it, reading and parsing its
answer, resolving its future, each through several layers of Python), and each message of the
shared delivery runs the same three scripts: under a burst of webhooks, three commands per
iteration instead of three per message. A call that fails inside Redis (an error raised by the
script) fails alone, as it would on its own (``pcall``). Only calls that follow one another
are combined (a call joins the combined command only while that is the last one queued), so
that every command still runs in the order it was issued: under a burst, what the webhooks
issue comes in runs of the same script.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

#: Commands an :class:`AutoPipeline` takes: ones that answer at once, never a blocking read.
PIPELINED = frozenset(
    {"delete", "eval", "evalsha", "exists", "get", "hget", "set", "xack", "xadd", "xdel"}
)

#: A held connection unused for longer than this is checked before its next pipeline, as the pool
#: checks every connection it hands out: a Redis restarted meanwhile costs no failed webhook.
#: Under load pipelines follow one another and none is checked.
IDLE_CHECK_SECONDS = 1.0

_Queued = Tuple[str, Tuple[Any, ...], Dict[str, Any], "asyncio.Future[Any]"]
# A command as it goes out: its redis-py method's name, its args and its keyword args.
_Command = Tuple[str, Tuple[Any, ...], Dict[str, Any]]
# A call of a batchable script waiting for its iteration's command: its keys, args and future.
_Call = Tuple[Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


# The command that runs several calls of one script: each call's KEYS and ARGV are sliced out of
# the command's (ARGV[1]: how many calls; then, per call, its key count, its argument count and
# its arguments; the keys follow one another in KEYS), the script's body runs as a function of
# them, under pcall, and each call's outcome comes back as {1, value} or {0, error text}. A
# value of nil ends its Lua table there, so a call that returned nothing answers {1}.
_MANY = """
%(prelude)s
local function one(KEYS, ARGV)
%(body)s
end
local out, k, a = {}, 0, 2
for call = 1, tonumber(ARGV[1]) do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local keys, args = {}, {}
  for i = 1, nk do keys[i] = KEYS[k + i] end
  for i = 1, na do args[i] = ARGV[a + 1 + i] end
  k, a = k + nk, a + 2 + na
  local ok, value = pcall(one, keys, args)
  if ok then
    out[call] = {1, value}
  else
    -- redis.call raises its error as a table {err = text}; Lua's own errors are strings.
    if type(value) == 'table' and value.err then value = value.err end
    out[call] = {0, tostring(value)}
  end
end
return out
"""


@dataclass(frozen=True)
class Script:
    """A Lua script, and the SHA1 Redis knows it by.

    ``prelude``: Lua that defines what the body uses (local functions), run once per command.
    ``batchable``: an :class:`AutoPipeline` sends the calls of one iteration as one command
    (:attr:`many`); only for a script that refers to its keys and arguments as ``KEYS`` and
    ``ARGV`` and ends with ``return``.
    """

    body: str
    prelude: str = ""
    batchable: bool = False
    sha: str = field(init=False)
    #: The script that runs several calls of this one in one command (only if ``batchable``).
    many: Optional[Script] = field(init=False, default=None)

    def __post_init__(self) -> None:
        text = self.prelude + self.body
        # Redis names scripts by SHA1: an identifier here, not a safeguard (and Python 3.8's
        # hashlib has no usedforsecurity to say so).
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()  # noqa: S324
        object.__setattr__(self, "sha", digest)
        if self.batchable:
            many = Script(_MANY % {"prelude": self.prelude, "body": self.body})
            object.__setattr__(self, "many", many)

    @property
    def text(self) -> str:
        """What Redis runs for one call."""
        return self.prelude + self.body

    def __repr__(self) -> str:
        return f"Script({self.sha[:12]})"


def run_script(
    commands: Any, script: Script, keys: Sequence[Any], args: Sequence[Any]
) -> Awaitable[Any]:
    """``script`` on ``commands``: by its SHA1 through an :class:`AutoPipeline`, else with its
    text on a plain client (``EVAL``, which always works)."""
    if isinstance(commands, AutoPipeline):
        return commands.script(script, keys, args)
    return commands.eval(script.text, len(keys), *keys, *args)  # type: ignore[no-any-return]


class AutoPipeline:
    """``await batched.get(key)`` for any command of :data:`PIPELINED`, on ``client``'s pool."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._queued: List[_Queued] = []
        self._scheduled = False
        self._running: Set[asyncio.Task[None]] = set()
        # The scripts issued so far, by SHA1: the text to send when Redis does not know one.
        self._scripts: Dict[str, str] = {}
        # The last command queued, if it runs calls of a batchable script: its SHA1 and the
        # calls, which the next call of that script joins.
        self._tail: Optional[Tuple[str, List[_Call]]] = None
        # The pool's connection this sends on, held while it works (see _exchange).
        self._connection: Any = None
        # A pipeline is on the wire: what is issued meanwhile waits for it.
        self._busy = False
        self._idle_since = 0.0
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
        self._tail = None
        if not self._scheduled:
            self._scheduled = True
            # At the end of this iteration: what the other coroutines issue meanwhile joins.
            loop.call_soon(self._send)
        return future

    def script(
        self, script: Script, keys: Sequence[Any], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        """Queue ``script`` with ``keys`` and ``args`` (``EVALSHA``); the future of its answer."""
        many = script.many
        if many is None:
            self._scripts.setdefault(script.sha, script.text)
            return self.call("evalsha", script.sha, len(keys), *keys, *args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        tail = self._tail
        # By SHA1: comparing the frozen dataclasses would compare every field at each call.
        if tail is not None and tail[0] == many.sha:
            calls = tail[1]
        else:
            calls = []
            # Its place in the pipeline: a command whose arguments are filled in at the send.
            self._scripts.setdefault(many.sha, many.text)
            self.call("evalsha", many.sha, calls).add_done_callback(partial(_settle, calls))
            self._tail = (many.sha, calls)
        calls.append((keys, args, future))
        return future

    def _send(self) -> None:
        self._scheduled = False
        if self._busy or not self._queued:
            return  # the pipeline on the wire sends what was queued meanwhile when it is done
        batch, self._queued = self._queued, []
        self._tail = None
        self._busy = True
        task = asyncio.ensure_future(self._execute([_combined(queued) for queued in batch]))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, batch: List[_Queued]) -> None:
        try:
            try:
                answers = await self._exchange(
                    [(command, args, kwargs) for command, args, kwargs, _ in batch]
                )
                unknown = [i for i, answer in enumerate(answers) if self._unknown(batch[i], answer)]
                if unknown:
                    # Redis lost its scripts: those commands again with their text, in order.
                    again: List[_Command] = []
                    for i in unknown:
                        sha, *rest = batch[i][1]
                        again.append(("eval", (self._scripts[sha], *rest), {}))
                    for i, answer in zip(unknown, await self._exchange(again)):
                        answers[i] = answer
            finally:
                self._busy = False
                if self._queued and not self._scheduled:
                    self._send()  # what was issued while this batch was on the wire
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

    async def _exchange(self, commands: List[_Command]) -> List[Any]:
        """Send ``commands`` as one pipeline on the held connection; each one's answer or error.

        redis-py's own pipeline takes a connection from the pool for each execution, and the
        pool checks every connection it hands out for unread data (a read with a zero timeout:
        a timer, a future and a cancellation), which measured under a webhook load cost more
        than the rest of the pipeline. One pipeline at a time is on the wire anyway (the next
        one gathers what was issued meanwhile), so it keeps one connection while it is healthy.
        The commands are still built by redis-py's own methods and their answers read and
        converted by its own ``parse_response``, as its pipeline does.
        """
        pipe = self._client.pipeline(transaction=False)
        for command, args, kwargs in commands:
            getattr(pipe, command)(*args, **kwargs)
        stack = pipe.command_stack
        client = self._client
        connection = self._connection
        if connection is not None and time.monotonic() - self._idle_since > IDLE_CHECK_SECONDS:
            # Idle a while: Redis may have restarted or dropped it since. The pool's own check,
            # which the pool would have run: a connection that was closed goes, unused.
            try:
                stale = await connection.can_read_destructive()
            except (RedisConnectionError, OSError):
                stale = True
            if stale:
                self._connection = None
                await _discard(client, connection)
                connection = None
        if connection is None:
            connection = await client.connection_pool.get_connection("PIPELINE")
            self._connection = connection
        try:
            await connection.send_packed_command(
                connection.pack_commands([args for args, _ in stack])
            )
            answers: List[Any] = []
            for args, options in stack:
                try:
                    answers.append(await client.parse_response(connection, args[0], **options))
                except ResponseError as exc:
                    answers.append(exc)
            self._idle_since = time.monotonic()
        except BaseException:
            # Whatever is left on that connection is unknown: it goes, and the next pipeline
            # takes a fresh one.
            self._connection = None
            await _discard(client, connection)
            raise
        return answers

    def _unknown(self, queued: _Queued, answer: Any) -> bool:
        return (
            queued[0] == "evalsha"
            and isinstance(answer, NoScriptError)
            and queued[1][0] in self._scripts
        )

    async def aclose(self) -> None:
        """Wait for the pipelines on the wire (queued commands go out first), then give the
        held connection back to the client's pool."""
        self._send()
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._client.connection_pool.release(connection)


async def _discard(client: Any, connection: Any) -> None:
    """Close a connection whose state is unknown and give it back to its pool."""
    try:
        await connection.disconnect()
    finally:
        await client.connection_pool.release(connection)


def _combined(queued: _Queued) -> _Queued:
    """A queued command, with the calls of a batchable script as that command's arguments."""
    command, args, kwargs, future = queued
    if command != "evalsha" or len(args) != 2 or not isinstance(args[1], list):
        return queued
    sha, calls = args
    keys: List[Any] = []
    argv: List[Any] = [len(calls)]
    for call_keys, call_args, _ in calls:
        keys.extend(call_keys)
        argv.append(len(call_keys))
        argv.append(len(call_args))
        argv.extend(call_args)
    return command, (sha, len(keys), *keys, *argv), kwargs, future


def _settle(calls: List[_Call], done: asyncio.Future[Any]) -> None:
    """Each call's own outcome, from the answer of the command that ran them all."""
    failure: Optional[BaseException] = None
    if done.cancelled():
        failure = asyncio.CancelledError()
    elif done.exception() is not None:
        failure = done.exception()
    answers = [] if failure is not None else done.result()
    if failure is None and (not isinstance(answers, list) or len(answers) != len(calls)):
        failure = ResponseError(f"A batched script's answer did not hold its {len(calls)} calls")
    for i, (_, _, future) in enumerate(calls):
        if future.done():
            continue  # its caller was cancelled; the call ran all the same
        if failure is not None:
            if isinstance(failure, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(failure)
            continue
        answer = answers[i]
        if isinstance(answer, list) and answer and answer[0] == 1:
            future.set_result(answer[1] if len(answer) > 1 else None)
        else:
            text = answer[1] if isinstance(answer, list) and len(answer) > 1 else answer
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            future.set_exception(ResponseError(str(text)))


__all__ = ["PIPELINED", "AutoPipeline", "Script", "run_script"]

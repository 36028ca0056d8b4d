"""What-ifs for benchmarks 1b, 2 and 3, chosen by ``ZAPI_BENCH_WHATIF`` in a process's environment.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; ``bench/stack.py`` puts this
folder there, with the variable set, for an extra ``rasa run``, and ``bench/ingest.py`` for one
extra benchmark server; no other process gets it.

``validation-cached`` (1b): Rasa 3.6's ``RemoteAction._validate_action_result`` calls
``jsonschema.validate(result, schema)``, which checks the schema itself against its metaschema on
every call (tens of milliseconds, on the event loop) before validating the answer. Building the
validator once and reusing it validates the same answers against the same schema, with the same
``ValidationError`` on a bad answer.

``sends-stubbed`` (3): ``ZApiClient.send`` returns at once as if Z-API had accepted the message,
with no HTTP. Everything else in our channel runs as usual (webhook, worker, turn, answers,
sent markers), so comparing this process with the real one splits the channel's cost into the
sends and the rest.

``memory-inbox`` (2): the embedded delivery's ``accept`` deduplicates in a set and queues the
turn, with no SQLite file, as the release before the durable deliveries did. Measured beside the
real channel in the same run, it shows what keeping each message on disk costs on that machine.

``state-thread`` (2): the state file is written by a thread of the bot's own process, as before
the writer process (``zapi_channel.delivery.writer``): the same batches, on the event loop's GIL.
Measured beside the real channel, it shows what the writer process changes on that machine.

``commit-wait`` (2): ``memory-inbox``, except that each webhook first waits for a timer of
:data:`WAIT_SECONDS` that the webhooks of one loop iteration share, as they share a commit. It
shows what the second step of each webhook's task costs, apart from the file and the writer.

``writer-idle`` (2): the real channel and its writer process, every message handed over and
answered as usual, but the writer runs no SQL for the webhooks and their answered marks (it still
wraps each batch in a transaction, which writes nothing). It shows what crossing to the writer
process costs the event loop, apart from SQLite's work and the disk.

``writer-busy`` (2): ``writer-idle``, with the writer spending :data:`BUSY_SECONDS` of CPU on
each webhook's message, in a loop that touches no file and little memory: about what the real
writer spends on one. It shows what the writer's CPU alone, on the core that wrk also uses,
costs the event loop.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Tuple

MODE = os.environ.get("ZAPI_BENCH_WHATIF", "")
#: The writer process inherits the environment: it runs the what-if's operations (by name, from
#: this module) and changes nothing itself.
IN_WRITER = "zapi_channel.delivery.writer" in getattr(sys, "orig_argv", ())
#: ``commit-wait``: about a commit on a fast disk.
WAIT_SECONDS = 0.001
#: ``writer-busy``: about the real writer's CPU per message in the ingestion benchmark.
BUSY_SECONDS = 0.0001


def _cache_validation() -> None:
    import jsonschema
    from rasa.core.actions.action import RemoteAction

    original = RemoteAction._validate_action_result
    validators: Dict[str, Any] = {}

    def _validate_action_result(self: RemoteAction, result: Dict[str, Any]) -> bool:
        validator = validators.get("spec")
        if validator is None:
            spec = self.action_response_format_spec()
            validator = jsonschema.validators.validator_for(spec)(spec)
            validators["spec"] = validator
        if validator.is_valid(result):
            return True
        # An invalid answer: Rasa's own code raises its usual error with its usual message.
        return bool(original(self, result))

    RemoteAction._validate_action_result = _validate_action_result


def _stub_sends() -> None:
    from zapi_channel.client import SendResult, ZApiClient

    async def send(self: ZApiClient, endpoint: str, body: Mapping[str, Any]) -> SendResult:
        return SendResult(message_id="STUBBED", zaap_id="STUBBED", id="STUBBED")

    ZApiClient.send = send  # type: ignore[method-assign]


def _memory_inbox() -> None:
    # What the release before the durable deliveries did after the 200, in the same process and
    # the same run: deduplicate in a set and queue the turn. Nothing reaches the file.
    from zapi_channel.delivery.base import identified
    from zapi_channel.delivery.embedded import EmbeddedDelivery
    from zapi_channel.inbound import InboundMessage

    seen: set = set()  # type: ignore[type-arg]

    async def accept(self: EmbeddedDelivery, message: InboundMessage) -> bool:
        if message.dedup_key in seen:
            return False
        seen.add(message.dedup_key)
        if not message.metadata.get("is_group"):
            message = identified(message, message.phone, list(message.forms))
        self._turns.submit(message)
        return True

    EmbeddedDelivery.accept = accept  # type: ignore[method-assign]


def _commit_wait() -> None:
    import asyncio

    from zapi_channel.delivery.embedded import EmbeddedDelivery

    _memory_inbox()
    keep = EmbeddedDelivery.accept
    waiting: List[asyncio.Future[None]] = []

    def _release() -> None:
        batch = waiting[:]
        waiting.clear()
        for future in batch:
            if not future.done():
                future.set_result(None)

    async def accept(self: EmbeddedDelivery, message: Any) -> bool:
        loop = asyncio.get_running_loop()
        if not waiting:
            loop.call_later(WAIT_SECONDS, _release)
        future = loop.create_future()
        waiting.append(future)
        await future
        return await keep(self, message)

    EmbeddedDelivery.accept = accept  # type: ignore[method-assign]


_idle_seqs = itertools.count(1)


def idle_accept(connection: Any, *, values: Tuple[Any, ...], ttl: float, now: float) -> Any:
    """``writer-idle``'s answer to a webhook: a row id and the customer as their own
    conversation, as a first message by number gets (``values[2]`` is the phone)."""
    return next(_idle_seqs), values[2], [values[2]]


def busy_accept(connection: Any, *, values: Tuple[Any, ...], ttl: float, now: float) -> Any:
    """``writer-busy``'s answer: :func:`idle_accept`'s, after :data:`BUSY_SECONDS` of CPU."""
    end = time.perf_counter() + BUSY_SECONDS
    while time.perf_counter() < end:
        pass
    return idle_accept(connection, values=values, ttl=ttl, now=now)


def idle_done(connection: Any, *, seqs: Tuple[int, ...]) -> None:
    """``writer-idle``'s answered mark: nothing to write."""


def _writer_idle(accept: Any = idle_accept) -> None:
    from zapi_channel.delivery import embedded

    # Looked up by name when a webhook's operation is made; the writer finds these here.
    embedded._accept = accept
    embedded._done = idle_done  # type: ignore[assignment]


def _writer_busy() -> None:
    _writer_idle(busy_accept)


def _state_thread() -> None:
    from zapi_channel.delivery import embedded
    from zapi_channel.delivery.sqlite import SqliteThread

    class InAThread(SqliteThread):
        """Taken where the state file would start its writer process."""

        def __init__(self, connect: Any, *, where: str, keep_fds: Any = ()) -> None:
            super().__init__(connect, where=where)
            self.on_restart: Any = None  # a thread is never restarted

    embedded.SqliteProcess = InAThread  # type: ignore[misc]


_MODES = {
    "validation-cached": (_cache_validation, "Rasa's action results validated, validator cached"),
    "sends-stubbed": (_stub_sends, "ZApiClient.send stubbed: no HTTP"),
    "memory-inbox": (_memory_inbox, "accepted messages kept in memory only, as before the file"),
    "state-thread": (_state_thread, "the state file written by a thread, as before the writer"),
    "commit-wait": (_commit_wait, "accepted messages kept in memory after a shared timer's wait"),
    "writer-idle": (_writer_idle, "every message crosses to the writer, which runs no SQL"),
    "writer-busy": (_writer_busy, "as writer-idle, the writer spinning on each message"),
}

if MODE in _MODES and not IN_WRITER:
    try:
        change, what = _MODES[MODE]
        change()
    except ImportError:  # not a Rasa process: nothing to change
        pass
    else:
        # In the process's log, so a reader can see the what-if was really in place.
        print(f"bench/whatif: {what}", file=sys.stderr)

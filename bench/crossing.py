"""What one operation's crossing to the state file's writer process costs the event loop, apart.

The ingestion benchmark (:mod:`bench.ingest`) measures the whole channel under wrk, where the
load generator, the event loop and the writer share two cores. This measures only the crossing,
in a process of its own with nothing else running: webhooks waiting at once each hand a message
to a real :class:`~zapi_channel.delivery.writer.SqliteProcess` (the bench's webhook body, parsed
as the channel parses it, crossing as the channel sends it), whose operation does nothing, and
wait for its answer. The event loop's CPU per operation is everything the crossing costs it:
queueing and pickling the operations, the frames each way and waking each waiter. uvloop, as
under sanic.

Run as ``python -m bench.crossing [DIR]``: prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict, Tuple

#: As many webhooks waiting at once as wrk's connections in the ingestion benchmark.
WAITING = 50
OPERATIONS = 20_000


def connect(path: str) -> sqlite3.Connection:
    """The writer's connection (it runs no SQL here, but a batch opens a transaction)."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def nothing(connection: sqlite3.Connection, *, values: Tuple[Any, ...]) -> None:
    """The operation: the message's values cross, nothing is written."""


def _values() -> Tuple[Any, ...]:
    from bench import bodies, wrk
    from bench.server import INSTANCE_ID
    from zapi_channel.config import ChannelConfig
    from zapi_channel.inbound import InboundMessage, parse_body

    body = bodies.received_template().replace(wrk.PHONE, "5511999990000")
    config = ChannelConfig.from_mapping(
        {
            "instance_id": INSTANCE_ID,
            "instance_token": "t",
            "client_token": "c",
            "webhook_token": "w",
        }
    )
    message = parse_body(body.replace(wrk.MESSAGE_ID, "BENCH0001").encode(), config)
    assert isinstance(message, InboundMessage), message
    return message.as_values()


async def _measure(folder: Path) -> Dict[str, float]:
    # By the module's name, not __main__'s: the writer finds its functions by name.
    from bench.crossing import connect, nothing
    from zapi_channel.delivery.writer import SqliteProcess

    values = _values()
    writer = SqliteProcess(partial(connect, str(folder / "crossing.db")), where="crossing")
    try:
        each = OPERATIONS // WAITING

        async def webhook() -> None:
            for _ in range(each):
                await writer.call(partial(nothing, values=values))

        await webhook()  # started, warm
        cpu, wall = time.thread_time(), time.perf_counter()
        await asyncio.gather(*(webhook() for _ in range(WAITING)))
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        writer.close()
    done = each * WAITING
    return {"waiting": WAITING, "operations": done, "loop_us": 1e6 * cpu / done,
            "wall_us": 1e6 * wall / done}  # fmt: skip


def main(argv: Any) -> int:
    import uvloop

    with tempfile.TemporaryDirectory(dir=argv[1] if len(argv) > 1 else None) as folder:
        uvloop.install()
        print(json.dumps(asyncio.run(_measure(Path(folder)))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

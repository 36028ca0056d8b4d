"""Where the slow acks' time went, read from inside our server (``bench.server.AckTrace``).

A CPU profile says what the process spends its time on; it cannot say why one ack in a hundred
took three times the others. For that the benchmark server times, from inside, what an ack is
made of: the webhook handler from its start to its answer, and within it the wait for the state
file's commit; every commit of the state file's writer and every checkpoint of its WAL; and how late
the event loop woke up for a 1 ms timer, which is how long something held the loop (a full
garbage collection, a long callback, the GIL in another thread). What the client saw beyond the
handler's time happened outside our code: in sanic's reading and writing, in the kernel, in the
load generator, or while other processes had the CPU.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import httpx

from bench.common import Server
from bench.report import Table
from bench.stats import ms

HEADERS = (
    "server",
    "handler p50 / p99 / max",
    "of it, waiting for the state file p50 / p99 / max",
    "commits (without waiting for the disk)",
    "commit p99 / max",
    "WAL checkpoints (longest)",
    "event loop held ≥ 5 ms (longest)",
)


def take(server: Server) -> Dict[str, Any]:
    """The server's figures since the last call (the call starts them again)."""
    found: Dict[str, Any] = httpx.get(f"{server.url}/_bench/trace", timeout=10).json()
    return found


def _three(d: Dict[str, float]) -> str:
    if not d.get("count"):
        return "none"
    return f"{ms(d['p50'])} / {ms(d['p99'])} / {ms(d['max'])}"


def row(label: str, trace: Dict[str, Any]) -> Sequence[str]:
    commits = trace["commit_ms"]
    checkpoints = trace["checkpoint_ms"]
    late = trace["loop_late_ms"]
    return [
        label,
        _three(trace["handler_ms"]),
        _three(trace["waited_ms"]),
        f"{commits['count']:,} ({trace['commits_unflushed']:,})",
        f"{ms(commits['p99'])} / {ms(commits['max'])}" if commits["count"] else "none",
        f"{checkpoints['count']} ({ms(checkpoints['max'])})" if checkpoints["count"] else "0",
        f"{trace['loop_late_over_5ms']} ({ms(late['max'])})" if late["count"] else "0",
    ]


def table(rows: List[Tuple[str, Dict[str, Any]]]) -> Table:
    return Table(list(HEADERS), [row(label, trace) for label, trace in rows])


def explain(trace: Dict[str, Any], client_p99: float, target_ms: float) -> str:
    """What the trace says about a client-side p99 over ``target_ms``: one or two sentences."""
    handler = trace["handler_ms"]
    waited = trace["waited_ms"]
    commits = trace["commit_ms"]
    late = trace["loop_late_ms"]
    parts = [
        f"Inside the server (the trace below), the handler's p99 was {ms(handler['p99'])} "
        f"(the client saw {ms(client_p99)}); its wait for the state file's commit, "
        f"{ms(waited['p99'])}."
    ]
    if handler["p99"] < target_ms or client_p99 > 2 * handler["p99"]:
        parts.append(
            f"So {'the rest' if handler['p99'] < target_ms else 'most'} of the tail is outside "
            "our handler: waiting for the loop to read the request, sanic's reading and "
            "writing, the kernel, the load generator, or the other processes on these two cores."
        )
    if commits["count"] and commits["max"] >= target_ms:
        parts.append(
            f"The slowest commit took {ms(commits['max'])} against a p99 of "
            f"{ms(commits['p99'])}: the disk's flush now and then stalls (this machine's disk), "
            "and every webhook waiting for that commit waits with it."
        )
    if late["count"] and late["max"] >= target_ms:
        parts.append(
            f"The event loop was held for up to {ms(late['max'])} "
            f"({trace['loop_late_over_5ms']} time(s) 5 ms or more): every connection waits "
            "meanwhile."
        )
    return " ".join(parts) + " "

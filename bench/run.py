"""``make bench``: run every benchmark and write ``docs/benchmarks.md``.

::

    python -m bench.run                  # everything, about 8 minutes on two cores
    python -m bench.run --only ingest    # one or more benchmarks; the report goes to the log folder
    python -m bench.run --quick          # shorter runs, to try the harness out

Every server is a child process on a loopback port and is stopped before the next benchmark
starts, also on Ctrl-C or an error. Logs of every process go to a temporary folder, printed at
the start.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional

from bench import ack, cluster, e2e, ingest, memory, outbound, report, scale
from bench.common import Context
from bench.procs import ROOT
from bench.report import Section
from bench.wrk import require_wrk

BENCHMARKS: Dict[str, Callable[[Context], List[Section]]] = {
    "ack": lambda ctx: [ack.run(ctx)],
    "e2e": e2e.run,
    "ingest": lambda ctx: [ingest.run(ctx)],
    "outbound": lambda ctx: [outbound.run(ctx)],
    "memory": lambda ctx: [memory.run(ctx)],
    "scale": lambda ctx: [scale.run(ctx)],
    "cluster": lambda ctx: [cluster.run(ctx)],
}

PREAMBLE = """
## How these numbers are made

- **Everything real, everything local.** Every server is its own process on a loopback port: our
  channel and Rasa's channels in sanic 21.12 servers registered with Rasa's own
  `rasa.core.channels.channel.register`, the Z-API emulator (`python -m zapi_channel.emulator`),
  and for the end-to-end benchmarks the real demo bot (`rasa run` with `models/demo.tar.gz`, the
  action server), started the way `make run` starts them.
- **Ratios from the same run.** This machine (2 cores) is shared with other work, so absolute
  numbers move from run to run. Each result is compared with its baseline measured in the same
  run, back to back or interleaved (A, B, A, B, ...), and the ratio is what to read. The load
  average above says how busy the machine was.
- **Short and bounded.** Each measurement lasts seconds; every load loop is bounded in count and
  in time; nothing is left running.
- **Two load generators, each where it fits.** *wrk* (C, closed-loop, Debian's package) where the
  question is "how much can the server take": it costs far less CPU per request than any Python
  client, so on two cores the server stays the bottleneck. An *open-loop asyncio + httpx
  generator* (`bench/load.py`) where the question is "how long does each request take at a given
  arrival rate": wrk waits for each answer before sending the next request on that connection,
  which hides queueing behind a slow server (coordinated omission).
- **Benchmarks are not tests.** Nothing here fails a build; targets are reported as met or
  missed, with the reason.
"""


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of {', '.join(BENCHMARKS)}; report goes to the log folder",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (numbers are rougher)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="the report to write"
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    require_wrk()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="zapi-bench-"))
    partial = bool(args.only) or args.quick
    # A partial or quick run never overwrites the published report.
    out: Path = log_dir / "benchmarks.md" if partial else args.out
    ctx = Context(log_dir=log_dir, docs_dir=out.parent, quick=args.quick)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = report.machine_table()
    print(f"Logs and raw output: {log_dir}", flush=True)
    began = time.monotonic()
    sections: List[Section] = []
    failed = False
    for name in chosen:
        print(f"== {name} ...", flush=True)
        step = time.monotonic()
        try:
            sections += BENCHMARKS[name](ctx)
        except Exception:  # noqa: BLE001 - one broken benchmark must not lose the others' results
            failed = True
            traceback.print_exc()
            print(f"== {name} failed; see the logs in {log_dir}", flush=True)
            continue
        print(f"== {name} done in {time.monotonic() - step:.0f} s", flush=True)
    total = time.monotonic() - began
    report.write(
        out,
        sections=sections,
        machine=machine,
        preamble=PREAMBLE,
        total_seconds=total,
        started=started,
        quick=args.quick,
    )
    print(f"Wrote {out} ({total:.0f} s in all)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

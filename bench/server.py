"""One benchmark server per process: a channel on sanic with a stub agent instead of a model.

The channel is registered exactly the way ``rasa run`` registers it
(``rasa.core.channels.channel.register([channel], app, route="/webhooks/")`` with the agent in
``app.ctx.agent``), so what is measured is the channel and sanic, not a model::

    python -m bench.server --channel zapi --port 5100 --bot-delay-ms 300 \\
        --emulator-url http://127.0.0.1:8300 --webhook-token secret

Channels: ``zapi`` (ours), ``rest`` and ``twilio`` (Rasa's built-in ones), and ``bare``: a plain
sanic handler that only JSON-parses the body and answers 200, the ceiling for any channel.

Twilio's output channel calls ``api.twilio.com`` with the blocking ``requests`` library and no
timeout. Nothing outside this machine may be contacted, so its client is pointed at a loopback
port: ``--twilio-api closed`` (a bound port that refuses connections: each send fails at once)
or ``blackhole`` (a port that accepts connections and never answers, the way an unreachable API
looks behind a firewall that drops packets).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import socket
import tempfile
import time
from array import array
from typing import Any, Dict, List, Optional, Sequence

from rasa.core.channels.channel import InputChannel, UserMessage, register
from rasa.core.channels.rest import RestInput
from rasa.core.channels.twilio import TwilioInput
from rasa.core.constants import DEFAULT_KEEP_ALIVE_TIMEOUT
from sanic import Sanic, response
from sanic.request import Request
from sanic.response import HTTPResponse

from bench.stats import percentile
from zapi_channel.channel import ZApiInput
from zapi_channel.config import ChannelConfig

CHANNELS = ("zapi", "rest", "twilio", "bare")
REPLY_TEXT = "Hi! I'm a stub bot."

# The emulator's default instance (zapi_channel.emulator): local, made-up values.
INSTANCE_ID = "EMULATOR0000000000000000000000001"
INSTANCE_TOKEN = "emulator-instance-token"
CLIENT_TOKEN = "emulator-client-token"


class StubAgent:
    """Stands in for ``rasa.core.agent.Agent``: ``handle_message`` is all a channel calls.

    It waits ``delay`` seconds (the bot "thinking") and, if ``reply``, sends one text through the
    message's own output channel, as a Rasa turn would.
    """

    def __init__(self, delay: float, reply: bool) -> None:
        self.delay = delay
        self.reply = reply
        self.handled = 0

    async def handle_message(self, message: UserMessage) -> None:
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        if self.reply:
            await message.output_channel.send_text_message(message.sender_id, REPLY_TEXT)
        self.handled += 1


class FullCollections:
    """Counts Python's full (generation 2) garbage collections and how long each one stopped
    the process: a full collection walks every tracked object, and Rasa's imports leave
    over a hundred thousand of them in a channel's process."""

    def __init__(self) -> None:
        self.pauses_ms: List[float] = []
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: Dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._started) * 1000)

    def stats(self) -> Dict[str, Any]:
        return {
            "gc_full": len(self.pauses_ms),
            "gc_full_max_ms": max(self.pauses_ms, default=0.0),
            "gc_objects": len(gc.get_objects()),
        }


def _percentiles(values: Sequence[float]) -> Dict[str, float]:
    if not values:
        return {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values),
    }


class AckTrace:
    """Where our channel's ack time goes, from inside the server: each webhook's handler time,
    each commit of the state file's writer (how many operations it held, whether anyone waited
    for it), each checkpoint of its WAL, and how late the event loop woke up for a 1 ms timer
    (anything that held the loop: a full GC, a long callback, the GIL held by another thread).

    Only the benchmark server measures this, by wrapping the objects of one channel instance
    after start-up; the channel itself carries none of it. Nothing is timed until the first
    ``GET /_bench/trace`` (so a benchmark that never asks, the memory one, measures a server
    without it); each call returns the figures since the last one and starts again.
    """

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        # Arrays of C doubles, 8 bytes a value: section 6 reads the server's memory per customer
        # while this records every webhook of its bursts.
        self.handler_ms = array("d")
        self.commit_ms = array("d")
        self.waited_ms = array("d")
        self.commit_ops = array("l")
        self.unflushed = 0
        self.checkpoint_ms = array("d")
        self.loop_late_ms = array("d")

    def wrap(self, channel: ZApiInput) -> None:
        receive = channel._receive

        async def timed(request: Request) -> HTTPResponse:
            started = time.perf_counter()
            try:
                return await receive(request)
            finally:
                self.handler_ms.append((time.perf_counter() - started) * 1000)

        channel._receive = timed  # type: ignore[method-assign]
        thread = getattr(channel.delivery, "_thread", None)
        if thread is None:
            return  # the Redis delivery: no state file
        call = thread.call

        async def timed_call(operation: Any) -> Any:
            started = time.perf_counter()
            try:
                return await call(operation)
            finally:
                self.waited_ms.append((time.perf_counter() - started) * 1000)

        thread.call = timed_call

        def batch(seconds: float, operations: int, awaited: bool) -> None:
            # Told by the writer (a process of its own: its own clock of the batch) or thread.
            self.commit_ms.append(seconds * 1000)
            self.commit_ops.append(operations)
            if not awaited:
                self.unflushed += 1

        def checkpoint(seconds: float) -> None:
            self.checkpoint_ms.append(seconds * 1000)

        thread.on_batch, thread.on_checkpoint = batch, checkpoint

    async def watch_loop(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            late = (time.perf_counter() - started) * 1000 - 1.0
            if late >= 1.0:
                self.loop_late_ms.append(late)

    def take(self) -> Dict[str, Any]:
        found = {
            "handler_ms": _percentiles(self.handler_ms),
            "commit_ms": _percentiles(self.commit_ms),
            "waited_ms": _percentiles(self.waited_ms),
            "commit_ops_max": max(self.commit_ops, default=0),
            # Together, how much of the time the writer spent in its batches (statements
            # and commit), and how many operations a batch held on average.
            "commit_ms_sum": sum(self.commit_ms),
            "commit_ops_sum": sum(self.commit_ops),
            "commits_unflushed": self.unflushed,
            "checkpoint_ms": _percentiles(self.checkpoint_ms),
            # Only wake-ups at least 1 ms late are kept: the count is of stalls, not of timers.
            "loop_late_ms": _percentiles(self.loop_late_ms),
            "loop_late_over_5ms": sum(1 for v in self.loop_late_ms if v >= 5.0),
        }
        self._clear()
        return found


def loopback_trap(kind: str) -> socket.socket:
    """A loopback port for Twilio's client: ``closed`` refuses connections, ``blackhole``
    accepts them and never answers. The socket is returned so that it stays open."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    if kind == "blackhole":
        # Connections complete in the kernel's backlog; nothing ever reads or answers them.
        sock.listen(64)
    return sock


def point_twilio_at(port: int) -> None:
    """Send every Twilio API call to ``http://127.0.0.1:<port>`` instead of api.twilio.com.

    ``get_hostname`` is the one place the twilio client rewrites each request's URL; patching
    it leaves Rasa's code path (the blocking call inside ``async def``) exactly as it is.
    """
    from urllib.parse import urlsplit, urlunsplit

    from twilio.base.client_base import ClientBase

    def to_loopback(self: ClientBase, uri: str) -> str:
        parts = urlsplit(uri)
        return urlunsplit(parts._replace(scheme="http", netloc=f"127.0.0.1:{port}"))

    ClientBase.get_hostname = to_loopback


def bare_handler(app: Sanic) -> None:
    """The ceiling: what any JSON webhook must do at least (read, parse, answer 200)."""

    async def receive(request: Request) -> HTTPResponse:
        json.loads(request.body or b"")
        return response.json({"status": "accepted"})

    async def health(request: Request) -> HTTPResponse:
        return response.json({"status": "ok"})

    app.add_route(receive, "/webhooks/bare/webhook", methods=["POST"])
    app.add_route(health, "/webhooks/bare/", methods=["GET"])


def build_channel(args: argparse.Namespace) -> Optional[InputChannel]:
    if args.channel == "zapi":
        return ZApiInput(
            ChannelConfig.from_mapping(
                {
                    "instance_id": INSTANCE_ID,
                    "instance_token": INSTANCE_TOKEN,
                    "client_token": CLIENT_TOKEN,
                    "webhook_token": args.webhook_token,
                    # Without an emulator nothing is sent (the no-op agent never answers).
                    "base_url": args.emulator_url or "http://127.0.0.1:9",
                    # Never into the work tree.
                    "state_path": args.state_dir + "/zapi-channel.db",
                    # Set: the Redis delivery instead of the SQLite file.
                    "redis_url": args.redis_url,
                    "redis_prefix": args.redis_prefix,
                }
            )
        )
    if args.channel == "rest":
        return RestInput()
    if args.channel == "twilio":
        return TwilioInput("ACbench", "bench-auth-token", "+15550000000")
    return None


def build_app(args: argparse.Namespace, agent: StubAgent, collections: FullCollections) -> Sanic:
    app = Sanic(f"bench_{args.channel}", configure_logging=False)
    app.config.MOTD = False
    # The same keep-alive as `rasa run`, so load generators keep their connections.
    app.config.KEEP_ALIVE_TIMEOUT = DEFAULT_KEEP_ALIVE_TIMEOUT
    app.ctx.agent = agent
    channel = build_channel(args)
    if channel is None:
        bare_handler(app)
    else:
        register([channel], app, route="/webhooks/")

    async def stats(request: Request) -> HTTPResponse:
        return response.json({"handled": agent.handled, **collections.stats()})

    app.add_route(stats, "/_bench/stats", methods=["GET"])
    trace = AckTrace()

    async def take_trace(request: Request) -> HTTPResponse:
        if not isinstance(channel, ZApiInput):
            return response.json({"error": "only our channel is traced"}, status=404)
        if not hasattr(app.ctx, "loop_watch"):
            trace.wrap(channel)
            app.ctx.loop_watch = asyncio.get_running_loop().create_task(trace.watch_loop())
        return response.json(trace.take())

    app.add_route(take_trace, "/_bench/trace", methods=["GET"])

    async def count_from_here(app: Sanic, loop: Any) -> None:
        # Registered after the channel's listeners, so it runs after them: our channel collects
        # and freezes once at start (zapi_channel/channel.py), which is starting up, not serving.
        collections.pauses_ms.clear()

    app.register_listener(count_from_here, "after_server_start")
    return app


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channel", choices=CHANNELS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bot-delay-ms", type=int, default=0)
    parser.add_argument("--no-reply", action="store_true", help="the agent sends nothing")
    parser.add_argument("--emulator-url", default="")
    parser.add_argument("--webhook-token", default="bench-webhook-token")
    parser.add_argument(
        "--state-dir",
        default=tempfile.gettempdir(),
        help="where our channel keeps its state file",
    )
    parser.add_argument("--redis-url", default="", help="our channel with redis_url")
    parser.add_argument("--redis-prefix", default="")
    parser.add_argument("--twilio-api", choices=("closed", "blackhole"), default="closed")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    # INFO, like `rasa run` without --debug: the log lines each channel writes are part of it.
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    trap: Any = None
    if args.channel == "twilio":
        trap = loopback_trap(args.twilio_api)
        point_twilio_at(trap.getsockname()[1])
    agent = StubAgent(args.bot_delay_ms / 1000, reply=not args.no_reply)
    app = build_app(args, agent, FullCollections())
    try:
        app.run(host="127.0.0.1", port=args.port, workers=1, access_log=False, auto_reload=False)
    finally:
        if trap is not None:
            trap.close()


if __name__ == "__main__":
    main()

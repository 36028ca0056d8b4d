"""``python -m zapi_channel.emulator`` and ``zapi-channel emulator``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from typing import (
    Dict,
    Optional,
    Sequence,
)

from sanic import Sanic

from zapi_channel.emulator.app import build_app
from zapi_channel.emulator.rules import _CUSTOMER_PHONE
from zapi_channel.emulator.server import Emulator
from zapi_channel.emulator.values import (
    DEFAULT_CLIENT_TOKEN,
    DEFAULT_HOST,
    DEFAULT_INSTANCE_ID,
    DEFAULT_INSTANCE_TOKEN,
    DEFAULT_PHONE,
    DEFAULT_PORT,
    EmulatedInstance,
    check_webhook_url,
)

# -- command line -------------------------------------------------------------------------------


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m zapi_channel.emulator",
        description="Run a local Z-API emulator: Z-API's HTTP API and webhooks, no phone needed.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (%(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on; 0 picks a free one"
    )
    parser.add_argument("--instance-id", default=DEFAULT_INSTANCE_ID)
    parser.add_argument("--instance-token", default=DEFAULT_INSTANCE_TOKEN)
    parser.add_argument("--client-token", default=DEFAULT_CLIENT_TOKEN)
    parser.add_argument("--phone", default=DEFAULT_PHONE, help="the simulated phone's number")
    parser.add_argument(
        "--disconnected", action="store_true", help="start with the phone not connected"
    )
    parser.add_argument(
        "--webhook-url",
        help="the channel's webhook: set as the received, delivery and message-status webhook",
    )
    parser.add_argument(
        "--allow-http-webhooks",
        dest="allow_http_webhooks",
        action="store_true",
        default=True,
        help="accept http webhooks on 127.0.0.1, localhost or ::1 (the default)",
    )
    parser.add_argument(
        "--no-allow-http-webhooks",
        dest="allow_http_webhooks",
        action="store_false",
        help="accept https webhooks only, as Z-API does",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    return parser


def emulator_from_args(args: argparse.Namespace) -> Emulator:
    """The emulator the command line describes (``ValueError`` for an unusable option)."""
    if not _CUSTOMER_PHONE.fullmatch(args.phone) or "@" in args.phone:
        raise ValueError(f"--phone must be digits with the country code, not {args.phone!r}")
    webhooks: Dict[str, str] = {}
    if args.webhook_url:
        problem = check_webhook_url(args.webhook_url, allow_local_http=args.allow_http_webhooks)
        if problem is not None:
            local = " (http is accepted only for 127.0.0.1, localhost and ::1)"
            raise ValueError(f"--webhook-url: {problem}{local if args.allow_http_webhooks else ''}")
        webhooks = {kind: args.webhook_url for kind in ("received", "delivery", "message-status")}
    instance = EmulatedInstance(
        instance_id=args.instance_id.strip(),
        instance_token=args.instance_token.strip(),
        client_token=args.client_token.strip(),
        connected=not args.disconnected,
        phone=args.phone,
        webhooks=webhooks,
    )
    if not (instance.instance_id and instance.instance_token and instance.client_token):
        raise ValueError("--instance-id, --instance-token and --client-token may not be empty")
    return Emulator([instance], allow_http_webhooks=args.allow_http_webhooks)


def _listen(host: str, port: int) -> socket.socket:
    # Bound here rather than by sanic: sanic logs a failed bind and returns as if all went well.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def main(argv: Optional[Sequence[str]] = None, *, prog: Optional[str] = None) -> int:
    """Run the emulator until interrupted. Exit codes: 0 stopped, 1 cannot listen, 2 usage."""
    args = build_parser(prog).parse_args(argv)
    try:
        emulator = emulator_from_args(args)
    except ValueError as exc:
        print(f"zapi-channel emulator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO, and a webhook URL carries the channel's secret.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        print(
            f"zapi-channel emulator: cannot listen on {args.host}:{args.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    instance_id = args.instance_id.strip()
    app = build_app(emulator)

    async def announce(app: Sanic, loop: asyncio.AbstractEventLoop) -> None:
        # Scripts wait for this line (and read the port from it when started with --port 0).
        print(f"Z-API emulator on http://{host}:{port} (instance {instance_id})", flush=True)
        print(f"Chat as a customer at http://{host}:{port}/", flush=True)

    app.register_listener(announce, "after_server_start")
    app.run(sock=sock, workers=1, auto_reload=False, access_log=False, motd=False)
    return 0


def run() -> None:
    """Console entry point."""
    sys.exit(main())

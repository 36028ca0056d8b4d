"""``zapi-channel``: the setup steps of a hosted panel, as a command line.

Exit codes (stable, documented in the README):

====  =====================================================================
 0    done
 1    Z-API answered with an error that is not about credentials
 2    usage or configuration error (a missing key, a bad option)
 3    invalid credentials: Z-API refused the instance id, token or Client-Token
 4    the instance is not connected to WhatsApp yet (scan the QR code)
 5    Z-API could not be reached (network, DNS, timeout)
 6    verify --public-url: Z-API's "On message received" does not point at this bot
====  =====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Coroutine,
    Dict,
    List,
    Optional,
    Sequence,
    TextIO,
)

from zapi_channel import setup
from zapi_channel.client import QueuedMessage, ZApiClient
from zapi_channel.config import DEFAULT_STATE_PATH, ZApiCredentials, clean
from zapi_channel.delivery import UNKNOWN, Journal, open_journal
from zapi_channel.errors import (
    ConfigError,
    InvalidCredentials,
    NotConnected,
    TransportError,
    ZApiError,
)
from zapi_channel.setup.credstore import CredentialsFile

EXIT_OK = 0
EXIT_ZAPI_ERROR = 1
EXIT_USAGE = 2
EXIT_INVALID_CREDENTIALS = 3
EXIT_NOT_CONNECTED = 4
EXIT_NETWORK = 5
EXIT_WEBHOOK_ELSEWHERE = 6

_PROMPTS = {
    "instance_id": "Instance ID",
    "instance_token": "Instance Token",
    "client_token": "Account Security Token (Client-Token)",
}

_WHERE_TO_FIND = (
    "Check the Instance ID and Instance Token on the instance's page of Z-API's dashboard, and the "
    "Account Security Token under Security (it is sent as the Client-Token header)."
)


class _Out:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, *lines: str) -> None:
        for line in lines:
            print(line, file=self.stream)


def _make_client(timeout: float) -> setup.ClientFactory:
    def factory(credentials: ZApiCredentials) -> ZApiClient:
        return ZApiClient(credentials, timeout=timeout)

    return factory


def _ask(key: str, given: Optional[str], stdin: TextIO) -> str:
    """A credential from its option, or from a prompt that does not echo it."""
    value = clean(given)
    if value:
        return value
    if stdin.isatty():
        return clean(getpass.getpass(f"{_PROMPTS[key]}: "))
    # Piped input (scripts): one value per line, in the order of the prompts.
    print(f"{_PROMPTS[key]}: ", end="", file=sys.stderr, flush=True)
    return clean(stdin.readline())


def _next_step_webhook(out: _Out, store: CredentialsFile, public_url: Optional[str]) -> None:
    if public_url:
        url = setup.webhook_url(public_url, setup.webhook_token_of(store))
        out(
            "",
            "Next: in Z-API's dashboard open the instance, Webhooks, and paste this URL into",
            '"On message received" (or run `zapi-channel register-webhook --public-url ...`):',
            f"  {url}",
        )
    else:
        out(
            "",
            'Next: get the webhook URL to paste into Z-API\'s "On message received":',
            "  zapi-channel webhook-url --public-url https://<where rasa run is reachable>",
        )


async def _cmd_connect(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    values = {key: _ask(key, getattr(args, key), args.stdin) for key in _PROMPTS}
    block = store.resolved_block()
    base_url = clean(args.base_url) or clean(block.get("base_url")) or None
    mapping: Dict[str, Any] = dict(values)
    if base_url:
        mapping["base_url"] = base_url
    credentials = ZApiCredentials.from_mapping(mapping)
    status = await setup.connect(store, credentials, _make_client(args.timeout))
    if block.get("active") is False or clean(block.get("active")).lower() == "false":
        store.write({"active": True})
    out(f"Credentials are valid and saved to {store.path}.")
    if status.connected:
        out("Connected: the instance is paired with a WhatsApp number.")
    else:
        out(
            "The instance is not connected yet: open Z-API's dashboard, scan the instance's QR "
            "code with WhatsApp on the phone, then run `zapi-channel verify`."
        )
    _next_step_webhook(out, store, args.public_url)
    return EXIT_OK


async def _cmd_webhook_url(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    out(setup.webhook_url(args.public_url, setup.webhook_token_of(store)))
    return EXIT_OK


async def _cmd_register_webhook(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    url = await setup.register_webhook(
        store, args.public_url, _make_client(args.timeout), presence=args.presence
    )
    kinds = [k for k in setup.CALLBACK_FIELDS if args.presence or k != "chat-presence"]
    out(
        f"Z-API will now post these callbacks ({', '.join(kinds)}) to:",
        f"  {url}",
        '"Notify sent by me" is on: when you answer a customer from the phone, the bot steps '
        "back in that chat (handoff_minutes, or until you type the handoff_resume_command).",
        "Next: send a WhatsApp message to the instance's number and watch rasa run's log.",
    )
    return EXIT_OK


async def _last_callback(args: argparse.Namespace, store: CredentialsFile) -> Optional[str]:
    """What the bot heard last from Z-API about the connection, as a line to print."""
    try:
        async with _opened_state(args, store) as journal:
            state = await journal.whatsapp() if journal is not None else None
    except ZApiError:
        return None
    if state is None:
        return None
    when = datetime.fromtimestamp(state[1], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    said = "connected" if state[0] else "disconnected"
    return f"The bot's last connection callback from Z-API ({when}) said: {said}."


async def _cmd_verify(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    credentials = setup.current_credentials(store)
    result = await setup.verify(credentials, _make_client(args.timeout))
    heard = await _last_callback(args, store)
    if heard:
        out(heard)
    received_ok = True
    if args.public_url:
        received_ok = await _report_webhooks(args, store, out)
    else:
        out("(Give --public-url URL to check which of Z-API's callbacks point at this bot.)")
    if result.connected:
        out(f"Connected: WhatsApp number {result.phone or '(unknown)'}.")
        return EXIT_OK if received_ok else EXIT_WEBHOOK_ELSEWHERE
    out(
        "The instance is not connected yet"
        + (f" (Z-API says: {result.status.error})" if result.status.error else "")
        + ".",
        "If the phone was paired before: check that it is on and online, then try "
        "`zapi-channel restart`.",
        "Otherwise open Z-API's dashboard, scan the instance's QR code with WhatsApp on the phone",
        "(Settings > Linked devices > Link a device), then run `zapi-channel verify` again.",
    )
    return EXIT_NOT_CONNECTED


async def _report_webhooks(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> bool:
    """Callback by callback, where Z-API posts; True when "received" comes to this bot."""
    url = setup.webhook_url(args.public_url, setup.webhook_token_of(store))
    report = await setup.webhook_report(
        setup.current_credentials(store), url, _make_client(args.timeout)
    )
    out("Z-API's callbacks (GET me):")
    for kind, (state, host) in report.items():
        if state == setup.OURS:
            where = "this bot"
        elif state == setup.EMPTY:
            where = "not set" + (" (fine: optional)" if kind == "chat-presence" else "")
        else:
            where = f"ELSEWHERE: {host}"
        out(f"  {kind:<15} {where}")
    if report["received"][0] == setup.OURS:
        return True
    out(
        'Customers\' messages do not reach this bot: "On message received" is not its URL.',
        f"Fix it with: zapi-channel register-webhook --public-url {args.public_url}",
    )
    return False


async def _cmd_restart(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    async with _make_client(args.timeout)(setup.current_credentials(store)) as client:
        confirmed = await client.restart()
    out(
        "Asked Z-API to restart the instance"
        + ("" if confirmed else " (Z-API did not confirm)")
        + ". It often reconnects a dropped session without a new QR scan: "
        "run `zapi-channel verify` in a minute."
    )
    return EXIT_OK if confirmed else EXIT_ZAPI_ERROR


#: How many queued messages `zapi-channel queue` prints (all of them are counted).
_QUEUE_SHOWN = 10


def _queued_line(message: QueuedMessage) -> str:
    when = (
        datetime.fromtimestamp(message.created, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if message.created is not None
        else "(time unknown)"
    )
    text = " ".join(message.text.split())
    text = text if len(text) <= 60 else text[:59] + "…"
    return f"  {when}  {message.phone or '(no phone)'}  {text!r}"


async def _cmd_queue(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    async with _make_client(args.timeout)(setup.current_credentials(store)) as client:
        contents = await client.queue()
        if contents.size == 0:
            out("Z-API's queue is empty: nothing waits to be sent.")
            return EXIT_OK
        out(f"{contents.size} message(s) wait in Z-API's queue, oldest first:")
        out(*(_queued_line(m) for m in contents.messages[:_QUEUE_SHOWN]))
        if contents.size > _QUEUE_SHOWN:
            out(f"  ... and {contents.size - _QUEUE_SHOWN} more")
        if args.queue_command != "clear":
            out(
                "Z-API sends them when the phone is connected again, however late. "
                "`zapi-channel queue clear` drops them all."
            )
            return EXIT_OK
        if not args.yes:
            print(
                f"Delete these {contents.size} message(s)? They will never be sent. "
                "Type yes to confirm: ",
                end="",
                file=args.stdout,
                flush=True,
            )
            if args.stdin.readline().strip().lower() not in ("y", "yes"):
                out("Nothing was deleted.")
                return EXIT_ZAPI_ERROR
        await client.clear_queue()
    out(f"Z-API's queue is cleared: {contents.size} message(s) will not be sent.")
    return EXIT_OK


async def _cmd_rotate(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    changes = {key: getattr(args, key) for key in _PROMPTS if getattr(args, key)}
    if not changes:
        if not args.stdin.isatty():
            raise ConfigError(
                "Give the new values with --instance-id, --instance-token and/or --client-token."
            )
        for key in _PROMPTS:
            value = clean(getpass.getpass(f"New {_PROMPTS[key]} (Enter keeps the current one): "))
            if value:
                changes[key] = value
    status = await setup.rotate(store, changes, _make_client(args.timeout))
    out(
        f"New credentials are valid and saved to {store.path}.",
        "The webhook URL is unchanged: nothing to update on Z-API's side.",
    )
    if not status.connected:
        out("Note: the instance is not connected yet; scan its QR code on Z-API's dashboard.")
    return EXIT_OK


async def _cmd_disconnect(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    confirmed = await setup.disconnect(store, _make_client(args.timeout))
    out(
        "Disconnected the WhatsApp session on Z-API"
        + ("" if confirmed else " (Z-API did not confirm; it may already have been disconnected)")
        + ".",
        f"The channel is marked inactive (active: false in {store.path}): the bot answers no "
        "webhook and sends nothing.",
        "The Z-API instance itself still exists; delete it on Z-API's dashboard if you no longer "
        "need it. To use it again: scan the QR code, then run `zapi-channel connect`.",
    )
    return EXIT_OK


def _journal(args: argparse.Namespace, store: CredentialsFile) -> Optional[Journal]:
    """The bot's journal, or None when the bot has never run here (no state file to read)."""
    block = dict(store.resolved_block())
    if args.state:
        block = {"state_path": args.state}
    elif clean(block.get("redis_url")):
        return open_journal(block)
    state_path = Path(clean(block.get("state_path")) or DEFAULT_STATE_PATH)
    if not state_path.exists():
        return None
    return open_journal({"state_path": str(state_path)})


@asynccontextmanager
async def _opened_state(
    args: argparse.Namespace, store: CredentialsFile
) -> AsyncIterator[Optional[Journal]]:
    """:func:`_journal`, closed when the block ends (None when the bot never ran here)."""
    journal = _journal(args, store)
    try:
        yield journal
    finally:
        if journal is not None:
            await journal.aclose()


def _no_journal(args: argparse.Namespace, store: CredentialsFile) -> str:
    path = args.state or clean(store.resolved_block().get("state_path")) or DEFAULT_STATE_PATH
    return f"{path} (there is no such file yet: the bot has not run from this folder)"


async def _cmd_failed_list(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    async with _opened_state(args, store) as journal:
        if journal is None:
            out(f"No failed sends in {_no_journal(args, store)}.")
            return EXIT_OK
        entries = await journal.entries()
    if not entries:
        out(f"No failed sends in {journal.where}.")
        return EXIT_OK
    out(f"{len(entries)} answer(s) Z-API did not take ({journal.where}):")
    for entry in entries:
        preview = str(entry.body.get("message") or entry.body.get("caption") or "")[:40]
        out(
            f"  {entry.id}  {entry.at}  {entry.endpoint:<18} {entry.phone:<16} "
            f"{entry.outcome:<8} {preview!r}",
            f"      {entry.error}",
        )
    out(
        "Resend with `zapi-channel failed retry` (all failed ones) or `... retry ID ...`.",
        "Entries marked unknown may already have reached the customer: they are resent only by ID.",
    )
    return EXIT_OK


async def _cmd_failed_retry(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    async with _opened_state(args, store) as journal:
        if journal is None:
            if args.ids:
                raise ConfigError(f"Not in {_no_journal(args, store)}: {', '.join(args.ids)}")
            out("Nothing to resend.")
            return EXIT_OK
        return await _resend(args, store, journal, out)


async def _resend(
    args: argparse.Namespace, store: CredentialsFile, journal: Journal, out: _Out
) -> int:
    entries = await journal.entries()
    if args.ids:
        chosen = [entry for entry in entries if entry.id in set(args.ids)]
        missing = sorted(set(args.ids) - {entry.id for entry in chosen})
        if missing:
            raise ConfigError(f"Not in {journal.where}: {', '.join(missing)}")
    else:
        # An unknown outcome may already have been delivered: resending it needs a decision.
        chosen = [entry for entry in entries if entry.outcome != UNKNOWN]
    if not chosen:
        out("Nothing to resend.")
        return EXIT_OK
    resent: List[str] = []
    failed = 0
    credentials = setup.current_credentials(store)
    async with ZApiClient(credentials, timeout=args.timeout) as client:
        for entry in chosen:
            try:
                await client.send(entry.endpoint, entry.body)
            except (InvalidCredentials, TransportError):
                await journal.remove(resent)
                raise
            except ZApiError as exc:
                failed += 1
                out(f"  {entry.id}: still failing: {exc}")
                continue
            resent.append(entry.id)
            out(f"  {entry.id}: resent to {entry.phone}")
    await journal.remove(resent)
    out(f"Resent {len(resent)}; {failed} still failing (kept in {journal.where}).")
    return EXIT_OK if failed == 0 else EXIT_ZAPI_ERROR


async def _cmd_handoff_list(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    async with _opened_state(args, store) as journal:
        if journal is None:
            out(f"No chat is paused ({_no_journal(args, store)}).")
            return EXIT_OK
        paused = await journal.handoffs()
    if not paused:
        out(f"No chat is paused: the bot answers everyone ({journal.where}).")
        return EXIT_OK
    out(f"{len(paused)} chat(s) the owner is answering, the bot quiet there ({journal.where}):")
    now = time.time()
    for conversation, until in paused:
        minutes = max(0.0, (until - now) / 60)
        out(f"  {conversation:<24} for {minutes:.0f} more minute(s)")
    out("Hand one back now with `zapi-channel handoff resume PHONE`.")
    return EXIT_OK


async def _cmd_handoff_resume(args: argparse.Namespace, store: CredentialsFile, out: _Out) -> int:
    phone = clean(args.phone)
    async with _opened_state(args, store) as journal:
        if journal is None:
            raise ConfigError(f"No chat is paused: {_no_journal(args, store)}")
        conversation = await journal.find_conversation(phone) or phone
        handed_back = await journal.hand_back(conversation)
    if not handed_back:
        out(f"{phone} is not paused: the bot already answers it.")
        return EXIT_OK
    out(f"The bot answers {phone} again from the customer's next message on.")
    return EXIT_OK


Command = Callable[[argparse.Namespace, CredentialsFile, _Out], Coroutine[Any, Any, int]]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--credentials",
        type=Path,
        default=argparse.SUPPRESS,
        help="the credentials.yml to read and update (default: ./credentials.yml)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds to wait for Z-API (default: 15)",
    )

    def creds_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--instance-id", dest="instance_id", help="the Instance ID")
        sub.add_argument("--instance-token", dest="instance_token", help="the Instance Token")
        sub.add_argument(
            "--client-token", dest="client_token", help="the Account Security Token (Client-Token)"
        )

    parser = argparse.ArgumentParser(
        prog="zapi-channel",
        description="Set up the Z-API WhatsApp channel of a Rasa bot.",
        parents=[common],
        epilog="Exit codes: 0 done, 1 Z-API error, 2 usage/configuration, 3 invalid credentials, "
        "4 not connected, 5 Z-API unreachable, 6 (verify --public-url) customers' messages are "
        "not posted to this bot.",
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs.required = True

    connect = subs.add_parser(
        "connect", parents=[common], help="validate and save the three credentials"
    )
    creds_options(connect)
    connect.add_argument("--public-url", help="https address of rasa run, to print the webhook URL")
    connect.add_argument("--base-url", help="Z-API's address (default https://api.z-api.io)")
    connect.set_defaults(handler=_cmd_connect)

    url = subs.add_parser("webhook-url", parents=[common], help="print the webhook URL")
    url.add_argument(
        "--public-url", required=True, help="https address where rasa run is reachable"
    )
    url.set_defaults(handler=_cmd_webhook_url)

    register = subs.add_parser(
        "register-webhook", parents=[common], help="point every Z-API callback at this bot"
    )
    register.add_argument("--public-url", required=True, help="https address of rasa run")
    register.add_argument(
        "--presence", action="store_true", help="also chat presence (typing...) callbacks"
    )
    register.set_defaults(handler=_cmd_register_webhook)

    verify = subs.add_parser("verify", parents=[common], help="check that WhatsApp is connected")
    verify.add_argument(
        "--public-url",
        dest="public_url",
        help="also check, callback by callback, that Z-API posts to this bot's webhook",
    )
    verify.set_defaults(handler=_cmd_verify, state=None)

    restart = subs.add_parser(
        "restart", parents=[common], help="restart the instance (often recovers a dropped session)"
    )
    restart.set_defaults(handler=_cmd_restart)

    queue = subs.add_parser(
        "queue", parents=[common], help="what waits in Z-API's queue (sends held while offline)"
    )
    queue.add_argument(
        "queue_command",
        nargs="?",
        choices=("show", "clear"),
        default="show",
        metavar="ACTION",
        help="show (the default) or clear: delete every queued message, after a confirmation",
    )
    queue.add_argument("--yes", action="store_true", help="clear without asking")
    queue.set_defaults(handler=_cmd_queue)

    rotate = subs.add_parser(
        "rotate", parents=[common], help="replace credentials (validated before saving)"
    )
    creds_options(rotate)
    rotate.set_defaults(handler=_cmd_rotate)

    disconnect = subs.add_parser(
        "disconnect", parents=[common], help="end the WhatsApp session and deactivate the channel"
    )
    disconnect.set_defaults(handler=_cmd_disconnect)

    failed = subs.add_parser("failed", help="answers Z-API did not take: list or resend them")
    failed_subs = failed.add_subparsers(dest="failed_command", metavar="ACTION")
    failed_subs.required = True
    failed_list = failed_subs.add_parser("list", parents=[common], help="show the journal")
    failed_retry = failed_subs.add_parser("retry", parents=[common], help="resend entries")
    failed_retry.add_argument(
        "ids", nargs="*", metavar="ID", help="entries to resend (default: all failed)"
    )
    for sub in (failed_list, failed_retry):
        sub.add_argument(
            "--state",
            metavar="PATH",
            help="the bot's state file (default: Redis with redis_url, else state_path, "
            "zapi-channel.db)",
        )
    failed_list.set_defaults(handler=_cmd_failed_list)
    failed_retry.set_defaults(handler=_cmd_failed_retry)

    handoff = subs.add_parser(
        "handoff", help="chats the shop's owner took over from the phone: list or end them"
    )
    handoff_subs = handoff.add_subparsers(dest="handoff_command", metavar="ACTION")
    handoff_subs.required = True
    handoff_list = handoff_subs.add_parser("list", parents=[common], help="the paused chats")
    handoff_resume = handoff_subs.add_parser(
        "resume", parents=[common], help="hand a chat back to the bot now"
    )
    handoff_resume.add_argument("phone", metavar="PHONE", help="the customer's number or @lid")
    for sub in (handoff_list, handoff_resume):
        sub.add_argument(
            "--state", metavar="PATH", help="the bot's state file (default: as for `failed`)"
        )
    handoff_list.set_defaults(handler=_cmd_handoff_list)
    handoff_resume.set_defaults(handler=_cmd_handoff_resume)

    # Listed here for --help; main() hands its arguments to the emulator's own parser.
    subs.add_parser("emulator", help="run a local Z-API emulator (see `zapi-channel emulator -h`)")
    return parser


def _explain(exc: ZApiError, command: str, out: _Out) -> int:
    nothing = {
        "connect": " Nothing was saved.",
        "rotate": " The previous credentials are kept unchanged.",
    }.get(command, "")
    if isinstance(exc, InvalidCredentials):
        out(f"Invalid credentials: {exc}.{nothing}", _WHERE_TO_FIND)
        return EXIT_INVALID_CREDENTIALS
    if isinstance(exc, NotConnected):
        out(
            f"The instance is not connected yet: {exc}.",
            "Scan the instance's QR code on Z-API's dashboard, then run `zapi-channel verify`.",
        )
        return EXIT_NOT_CONNECTED
    if isinstance(exc, TransportError):
        out(f"Could not reach Z-API: {exc}.{nothing}", "Check the network and try again.")
        return EXIT_NETWORK
    if isinstance(exc, ConfigError):
        out(f"Configuration error: {exc}{nothing}")
        return EXIT_USAGE
    out(f"Z-API error: {exc}.{nothing}")
    return EXIT_ZAPI_ERROR


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    stdout: TextIO = sys.stdout,
    stdin: TextIO = sys.stdin,
) -> int:
    """Run the command line; returns the exit code."""
    arguments = list(argv) if argv is not None else sys.argv[1:]
    if arguments[:1] == ["emulator"]:
        from zapi_channel import emulator

        return emulator.main(arguments[1:], prog="zapi-channel emulator")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(arguments)
    args.credentials = getattr(args, "credentials", Path("credentials.yml"))
    args.timeout = getattr(args, "timeout", 15.0)
    args.stdin = stdin
    args.stdout = stdout
    out = _Out(stdout)
    store = CredentialsFile(args.credentials)
    handler: Command = args.handler
    try:
        return asyncio.run(handler(args, store, out))
    except ZApiError as exc:
        return _explain(exc, args.command, out)
    except KeyboardInterrupt:
        out("Interrupted; nothing was saved.")
        return 130


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


__all__: List[str] = ["main", "run"]

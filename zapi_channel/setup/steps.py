"""The setup flow a hosted admin panel would offer.

Connect, webhook URL, verify, rotate, disconnect.

Each step is a small async function over a
:class:`~zapi_channel.setup.credstore.CredentialsFile` and a client factory (so tests and the CLI
share the same code). The rule that matters: credentials are validated against Z-API *before*
anything is written, so a failed step leaves the files byte for byte as they were.
"""

from __future__ import annotations

import secrets as _secrets
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from zapi_channel.client import CALLBACK_URL_FIELDS, InstanceStatus, ZApiClient
from zapi_channel.config import CREDENTIAL_KEYS, DEFAULT_BASE_URL, ZApiCredentials, clean
from zapi_channel.errors import ConfigError, ZApiResponseError
from zapi_channel.setup.credstore import CredentialsFile

#: The route of the webhook, relative to the public URL of ``rasa run``.
WEBHOOK_PATH = "/webhooks/zapi/webhook"

ClientFactory = Callable[[ZApiCredentials], ZApiClient]


@dataclass(frozen=True)
class Verification:
    """What ``GET status`` (and ``GET device`` when connected) said about the instance."""

    connected: bool
    phone: Optional[str]
    status: InstanceStatus


def new_webhook_token() -> str:
    """A fresh secret for the webhook URL (256 bits, URL-safe)."""
    return _secrets.token_urlsafe(32)


def webhook_url(public_url: str, webhook_token: str) -> str:
    """The URL to paste into Z-API's "On message received" field."""
    base = clean(public_url).rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"--public-url must be the address where rasa run is reachable, such as "
            f"https://bot.example.com (got {public_url!r})"
        )
    return f"{base}{WEBHOOK_PATH}?token={webhook_token}"


#: Hosts whose http webhooks are let through: only the local emulator can post to them (Z-API
#: itself cannot reach this machine's loopback, and refuses http anyway).
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def require_https(url: str) -> None:
    # Z-API's webhook settings accept https URLs only; refusing here gives a clearer message than
    # Z-API's own rejection.
    parts = urlsplit(url)
    if parts.scheme == "http" and (parts.hostname or "").lower() in _LOOPBACK:
        return
    if parts.scheme != "https":
        raise ConfigError(
            "Z-API accepts only https webhook URLs. Put rasa run behind HTTPS (a reverse proxy "
            "or a tunnel such as ngrok or cloudflared) and pass that https address as "
            "--public-url. (http is accepted only for this machine's loopback, where the "
            "local emulator posts.)"
        )


def current_credentials(store: CredentialsFile) -> ZApiCredentials:
    return ZApiCredentials.from_mapping(store.resolved_block())


def webhook_token_of(store: CredentialsFile) -> str:
    token = clean(store.resolved_block().get("webhook_token"))
    if not token:
        raise ConfigError(
            f"There is no webhook_token in {store.path} yet: run `zapi-channel connect` first."
        )
    return token


async def validate(credentials: ZApiCredentials, make_client: ClientFactory) -> InstanceStatus:
    """``GET status``: raises :class:`InvalidCredentials` when Z-API refuses the set."""
    async with make_client(credentials) as client:
        return await client.status()


async def verify(credentials: ZApiCredentials, make_client: ClientFactory) -> Verification:
    """The "Check again" step: is a phone paired, and which number is it?"""
    async with make_client(credentials) as client:
        status = await client.status()
        phone = None
        if status.connected:
            phone = (await client.device()).phone or None
        return Verification(connected=status.connected, phone=phone, status=status)


async def connect(
    store: CredentialsFile,
    credentials: ZApiCredentials,
    make_client: ClientFactory,
) -> InstanceStatus:
    """Validate, then save the three credentials and make sure a webhook token exists."""
    status = await validate(credentials, make_client)
    updates: Dict[str, Any] = _credential_values(credentials)
    existing = store.resolved_block()
    if not clean(existing.get("webhook_token")):
        updates["webhook_token"] = new_webhook_token()
    # Only a non-default address is worth writing (the local emulator, a proxy).
    if credentials.base_url != DEFAULT_BASE_URL or clean(existing.get("base_url")):
        updates["base_url"] = credentials.base_url
    store.write(updates)
    return status


async def rotate(
    store: CredentialsFile,
    changes: Mapping[str, Optional[str]],
    make_client: ClientFactory,
) -> InstanceStatus:
    """Replace any of the three credentials; the new set is validated before anything is written.

    The webhook token, and so the webhook URL, stays as it is.
    """
    unknown = set(changes) - set(CREDENTIAL_KEYS)
    if unknown:
        raise ConfigError(f"rotate changes only {', '.join(CREDENTIAL_KEYS)}")
    given = {key: clean(value) for key, value in changes.items() if clean(value)}
    if not given:
        raise ConfigError("Nothing to rotate: give at least one new credential.")
    merged = dict(store.resolved_block())
    merged.update(given)
    candidate = ZApiCredentials.from_mapping(merged)
    status = await validate(candidate, make_client)
    store.write({key: getattr(candidate, key) for key in given})
    return status


async def disconnect(store: CredentialsFile, make_client: ClientFactory) -> bool:
    """``GET disconnect`` on Z-API, then mark the channel inactive.

    The channel is marked inactive even when Z-API reports the session was already gone: the
    person asked for the bot to stop answering, and that must hold.
    """
    credentials = current_credentials(store)
    async with make_client(credentials) as client:
        done = await client.disconnect()
    store.write({"active": False})
    return done


#: The callbacks the bot needs, and the ``GET me`` field that shows where each one points.
#: Chat presence (typing...) is only asked for: it is chatty and the bot does nothing with it.
CALLBACK_FIELDS: Mapping[str, str] = CALLBACK_URL_FIELDS
OURS, EMPTY, ELSEWHERE = "ours", "empty", "elsewhere"


async def register_webhook(
    store: CredentialsFile, public_url: str, make_client: ClientFactory, *, presence: bool = False
) -> str:
    """Point every callback the bot uses at it (``PUT update-webhook-<kind>``, one per kind).

    Received messages, delivery reports, message statuses, connected and disconnected; chat
    presence only with ``presence``. It also turns on "notify sent by me"
    (``PUT update-notify-sent-by-me``): what the shop's owner types on the phone then reaches
    the bot, which steps back (human takeover). One call per kind rather than
    ``update-every-webhooks``, which would also set chat presence.
    """
    url = webhook_url(public_url, webhook_token_of(store))
    require_https(url)
    kinds = [kind for kind in CALLBACK_FIELDS if presence or kind != "chat-presence"]
    async with make_client(current_credentials(store)) as client:
        for kind in kinds:
            if not await client.update_webhook(kind, url):
                raise ZApiResponseError(
                    f'Z-API did not confirm the "{kind}" webhook change (no {{"value": true}} '
                    "in its answer).",
                    endpoint=f"update-webhook-{kind}",
                )
        if not await client.update_notify_sent_by_me(True):
            raise ZApiResponseError(
                'Z-API did not confirm "notify sent by me" (no {"value": true} in its answer); '
                "the webhook itself is set.",
                endpoint="update-notify-sent-by-me",
            )
    return url


async def webhook_report(
    credentials: ZApiCredentials, url: str, make_client: ClientFactory
) -> Dict[str, Tuple[str, str]]:
    """Where each callback points, from ``GET me``: (:data:`OURS`, :data:`EMPTY` or
    :data:`ELSEWHERE`, the other URL's scheme and host). Never the other URL whole: it may hold
    someone's token."""
    async with make_client(credentials) as client:
        me = await client.me()
    report: Dict[str, Tuple[str, str]] = {}
    for kind, field in CALLBACK_FIELDS.items():
        value = clean(me.get(field))
        if value == url:
            report[kind] = (OURS, "")
        elif not value:
            report[kind] = (EMPTY, "")
        else:
            report[kind] = (ELSEWHERE, host_of(value))
    return report


def host_of(url: str) -> str:
    """The part of a callback URL that is safe to show: scheme and host."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "(not a URL)"


def _credential_values(credentials: ZApiCredentials) -> Dict[str, Any]:
    return {key: getattr(credentials, key) for key in CREDENTIAL_KEYS}


__all__ = [
    "CALLBACK_FIELDS",
    "ELSEWHERE",
    "EMPTY",
    "OURS",
    "WEBHOOK_PATH",
    "Verification",
    "connect",
    "current_credentials",
    "disconnect",
    "host_of",
    "new_webhook_token",
    "register_webhook",
    "require_https",
    "rotate",
    "validate",
    "verify",
    "webhook_report",
    "webhook_token_of",
    "webhook_url",
]

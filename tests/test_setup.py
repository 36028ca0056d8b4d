from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import respx

from tests.conftest import CLIENT_TOKEN, INSTANCE_ID, INSTANCE_TOKEN, PLACEHOLDERS
from zapi_channel import setup
from zapi_channel.client import ZApiClient
from zapi_channel.config import ZApiCredentials
from zapi_channel.errors import ConfigError, InvalidCredentials
from zapi_channel.setup.credstore import CredentialsFile


def factory(credentials: ZApiCredentials) -> ZApiClient:
    return ZApiClient(credentials)


@pytest.fixture
def store(tmp_path: Path) -> CredentialsFile:
    path = tmp_path / "credentials.yml"
    path.write_text(PLACEHOLDERS)
    return CredentialsFile(path, environ={})


def files(store: CredentialsFile) -> tuple:  # type: ignore[type-arg]
    return tuple(p.read_bytes() if p.exists() else None for p in (store.path, store.dotenv_path))


def connected(zapi: respx.MockRouter) -> None:
    zapi["status"].mock(return_value=httpx.Response(200, json={"connected": True}))
    zapi["device"].mock(return_value=httpx.Response(200, json={"phone": "5511999999999"}))


async def test_connect_saves_after_validation_and_creates_a_webhook_token(
    zapi: respx.MockRouter, store: CredentialsFile, credentials: ZApiCredentials
) -> None:
    connected(zapi)
    status = await setup.connect(store, credentials, factory)
    assert status.connected
    block = store.resolved_block()
    assert (block["instance_id"], block["instance_token"], block["client_token"]) == (
        INSTANCE_ID,
        INSTANCE_TOKEN,
        CLIENT_TOKEN,
    )
    assert len(block["webhook_token"]) >= 40


async def test_connect_with_invalid_credentials_writes_nothing(
    zapi: respx.MockRouter, store: CredentialsFile, credentials: ZApiCredentials
) -> None:
    zapi["status"].mock(
        return_value=httpx.Response(403, json={"error": f"Client-Token {CLIENT_TOKEN} not allowed"})
    )
    before = files(store)
    with pytest.raises(InvalidCredentials):
        await setup.connect(store, credentials, factory)
    assert files(store) == before


async def test_rotate_validates_the_new_set_first_and_keeps_the_webhook_token(
    zapi: respx.MockRouter, store: CredentialsFile, credentials: ZApiCredentials
) -> None:
    connected(zapi)
    await setup.connect(store, credentials, factory)
    hook_before = store.resolved_block()["webhook_token"]
    new_api = f"https://api.z-api.io/instances/{INSTANCE_ID}/token/NEWTOKEN"
    with respx.mock(assert_all_called=False) as router:
        status = router.get(f"{new_api}/status", name="status").mock(
            return_value=httpx.Response(200, json={"connected": True})
        )
        await setup.rotate(store, {"instance_token": " NEWTOKEN\n"}, factory)
    assert status.called
    block = store.resolved_block()
    assert block["instance_token"] == "NEWTOKEN"
    assert block["client_token"] == CLIENT_TOKEN
    assert block["webhook_token"] == hook_before


async def test_a_failed_rotation_keeps_the_previous_set_byte_for_byte(
    zapi: respx.MockRouter, store: CredentialsFile, credentials: ZApiCredentials
) -> None:
    connected(zapi)
    await setup.connect(store, credentials, factory)
    before = files(store)
    zapi["status"].mock(
        return_value=httpx.Response(403, json={"error": "Client-Token BAD not allowed"})
    )
    with pytest.raises(InvalidCredentials):
        await setup.rotate(store, {"client_token": "BAD"}, factory)
    assert zapi["status"].calls.last.request.headers["Client-Token"] == "BAD"
    assert files(store) == before


async def test_rotate_needs_at_least_one_value(store: CredentialsFile) -> None:
    with pytest.raises(ConfigError):
        await setup.rotate(store, {"client_token": "  "}, factory)


async def test_disconnect_calls_zapi_and_marks_the_channel_inactive(
    zapi: respx.MockRouter, store: CredentialsFile, credentials: ZApiCredentials
) -> None:
    connected(zapi)
    await setup.connect(store, credentials, factory)
    zapi["disconnect"].mock(return_value=httpx.Response(200, json={"value": True}))
    assert await setup.disconnect(store, factory) is True
    assert zapi["disconnect"].called
    assert store.raw_block()["active"] is False


def test_webhook_url_layout() -> None:
    assert (
        setup.webhook_url("https://bot.example.com/", "TOK")
        == "https://bot.example.com/webhooks/zapi/webhook?token=TOK"
    )
    with pytest.raises(ConfigError):
        setup.webhook_url("bot.example.com", "TOK")


async def test_register_webhook_refuses_http_before_calling_zapi(
    zapi: respx.MockRouter, store: CredentialsFile, credentials: ZApiCredentials
) -> None:
    connected(zapi)
    await setup.connect(store, credentials, factory)
    with pytest.raises(ConfigError, match="https"):
        await setup.register_webhook(store, "http://bot.example.com", factory)
    assert not zapi["update-webhook-received"].called
    url = await setup.register_webhook(store, "https://bot.example.com", factory)
    for kind in ("received", "delivery", "message-status", "connected", "disconnected"):
        sent = zapi[f"update-webhook-{kind}"].calls.last.request
        assert json.loads(sent.content) == {"value": url}, kind
    # Chat presence only when asked for.
    assert not zapi["update-webhook-chat-presence"].called
    await setup.register_webhook(store, "https://bot.example.com", factory, presence=True)
    assert zapi["update-webhook-chat-presence"].called
    # And the owner's messages from the phone reach the bot (human takeover).
    notify = zapi["update-notify-sent-by-me"].calls.last.request
    assert json.loads(notify.content) == {"notifySentByMe": True}

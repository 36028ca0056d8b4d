"""Shared test fixtures: credentials, a channel config, Z-API callback fixtures, a respx router."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import httpx
import pytest
import respx

from tests.redis_server import ensure_redis
from zapi_channel.client import WEBHOOK_KINDS
from zapi_channel.config import ChannelConfig, ZApiCredentials

FIXTURES = Path(__file__).parent / "fixtures"

# Distinctive values so that a leak is easy to find in any output.
INSTANCE_ID = "A20DA9C0183A2D35A260F53F5D2B9244"
INSTANCE_TOKEN = "INSTTOKEN-3f9a7c1e5b2d4a6f8e0c"
CLIENT_TOKEN = "CLIENTTOKEN-7e5d3c1b9a8f6e4d2c0b"
WEBHOOK_TOKEN = "WEBHOOKTOKEN-0a1b2c3d4e5f6a7b8c9d"
BASE_URL = "https://api.z-api.io"
API = f"{BASE_URL}/instances/{INSTANCE_ID}/token/{INSTANCE_TOKEN}"
SECRETS = (INSTANCE_TOKEN, CLIENT_TOKEN, WEBHOOK_TOKEN)


#: A credentials.yml whose channel block reads every secret from the environment.
PLACEHOLDERS = """\
# Rasa channels
zapi_channel.ZApiInput:
  instance_id: ${ZAPI_INSTANCE_ID}
  instance_token: ${ZAPI_INSTANCE_TOKEN}
  client_token: ${ZAPI_CLIENT_TOKEN}
  webhook_token: ${ZAPI_WEBHOOK_TOKEN}
"""


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis to test against (the machine's, or one started for the run), else skip."""
    url = ensure_redis()
    if url is None:
        pytest.skip("no Redis server: install redis-server (CI does)")
    return url


#: Every state file a test made, in one folder removed when the run ends.
STATE_DIR = Path(tempfile.mkdtemp(prefix="zapi-tests-"))
atexit.register(shutil.rmtree, STATE_DIR, ignore_errors=True)


def fresh_state_path() -> str:
    """A state file of its own: never the work tree's, never another channel's."""
    return str(STATE_DIR / f"{uuid.uuid4().hex}.db")


def channel_block(**overrides: Any) -> Dict[str, Any]:
    block: Dict[str, Any] = {
        "instance_id": INSTANCE_ID,
        "instance_token": INSTANCE_TOKEN,
        "client_token": CLIENT_TOKEN,
        "webhook_token": WEBHOOK_TOKEN,
        "state_path": fresh_state_path(),
        # respx intercepts httpx's own transport only: unit tests of the channel mock Z-API
        # there. The default (aiohttp) runs in tests/test_transport.py and the end-to-end tests.
        "http_transport": "httpx",
    }
    block.update(overrides)
    return block


@pytest.fixture
def credentials() -> ZApiCredentials:
    return ZApiCredentials(INSTANCE_ID, INSTANCE_TOKEN, CLIENT_TOKEN)


@pytest.fixture
def config() -> ChannelConfig:
    return ChannelConfig.from_mapping(channel_block())


@pytest.fixture
def callback() -> Callable[[str], Dict[str, Any]]:
    """Load ``tests/fixtures/callbacks/<name>.json`` as a fresh dict."""

    def load(name: str) -> Dict[str, Any]:
        data: Dict[str, Any] = json.loads(
            (FIXTURES / "callbacks" / f"{name}.json").read_text(encoding="utf-8")
        )
        return data

    return load


SEND_ENDPOINTS = (
    "send-text",
    "send-image",
    "send-audio",
    "send-video",
    "send-sticker",
    "send-link",
    "send-location",
    "send-reaction",
    "send-button-list",
    "send-option-list",
    "send-button-actions",
)


def ok_send(message_id: str = "3999984263738042930CD6ECDE9VDWSA") -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "zaapId": "3999984263738042930CD6ECDE9VDWSA",
            "messageId": message_id,
            "id": message_id,
        },
    )


@pytest.fixture
def zapi() -> Iterator[respx.MockRouter]:
    """One respx router for Z-API, its routes named after Z-API's endpoints."""
    with respx.mock(base_url=API, assert_all_called=False) as router:
        router.get("/status", name="status")
        router.get("/device", name="device")
        router.get("/me", name="me")
        router.get("/disconnect", name="disconnect")
        router.get("/restart", name="restart")
        for endpoint in SEND_ENDPOINTS:
            router.post(f"/{endpoint}", name=endpoint).mock(return_value=ok_send())
        router.post(path__regex=r"/send-document/(?P<extension>\w+)$", name="send-document").mock(
            return_value=ok_send()
        )
        router.post("/read-message", name="read-message").mock(return_value=httpx.Response(204))
        for kind in WEBHOOK_KINDS:
            router.put(f"/update-webhook-{kind}", name=f"update-webhook-{kind}").mock(
                return_value=httpx.Response(200, json={"value": True})
            )
        router.put("/update-every-webhooks", name="update-every-webhooks").mock(
            return_value=httpx.Response(200, json={"value": True})
        )
        router.put("/update-notify-sent-by-me", name="update-notify-sent-by-me").mock(
            return_value=httpx.Response(200, json={"value": True})
        )
        router.put("/update-queue-settings", name="update-queue-settings").mock(
            return_value=httpx.Response(200, json={"value": True})
        )
        # The queue's three verbs on one path, one route each (respx matches method and path).
        router.post("/queue", name="queue").mock(
            return_value=httpx.Response(200, json={"messages": [], "hasMore": False})
        )
        router.get("/queue", name="queue (older docs)")
        router.delete("/queue", name="delete queue").mock(return_value=httpx.Response(200))
        yield router

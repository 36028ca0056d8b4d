"""The Z-API emulator, served for real on free 127.0.0.1 ports and driven over HTTP.

Every test gets its own emulator and its own webhook receiver (a second small sanic app that
records what the emulator posts), both running inside the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import httpx
import pytest
from aiohttp import web
from sanic import Sanic
from sanic.server.async_server import AsyncioServer

from zapi_channel.client import QUEUE_LIMIT, QUEUE_PAGE_SIZE, WEBHOOK_KINDS, ZApiClient
from zapi_channel.config import ChannelConfig, ZApiCredentials
from zapi_channel.emulator import (
    BUTTON_TERMS_ERROR,
    DEFAULT_CLIENT_TOKEN,
    DEFAULT_INSTANCE_ID,
    DEFAULT_INSTANCE_TOKEN,
    EmulatedInstance,
    Emulator,
    Faults,
    Reply,
    build_app,
    build_parser,
    check_webhook_url,
    emulator_from_args,
    fake_lid,
    main,
    validate_send,
)
from zapi_channel.errors import InvalidCredentials, SendNotAccepted
from zapi_channel.inbound import InboundMessage, parse_callback

FIXTURES = Path(__file__).parent / "fixtures" / "callbacks"

# sanic 21.12 rewrites some of its own methods ("touchup") when a server starts; a second server
# in the same process fails unless test mode keeps the originals. Test mode also lets app names
# repeat. Set at import, so that it holds before any test of the session starts a server.
Sanic.test_mode = True

INSTANCE_ID = "3C6FEMULATORTEST0000000000000001"
TOKEN = "instance-token-for-tests"
CLIENT_TOKEN = "client-token-for-tests"
HOOK_SECRET = "hook-secret-for-tests"
CUSTOMER = "5511999999999"


# -- serving sanic apps inside the test's loop --------------------------------------------------


class Served:
    def __init__(self, server: AsyncioServer, port: int) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{port}"


def _unique(prefix: str) -> str:
    # Sanic 21.12 refuses two apps of one name in a process.
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def serve(app: Sanic) -> Served:
    # create_server() turns port 0 into 8000, so the free port comes from a socket bound here.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = await app.create_server(sock=sock, return_asyncio_server=True, access_log=False)
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.start_serving()
    await server.after_start()
    return Served(server, sock.getsockname()[1])


async def shutdown(served: Served) -> None:
    server = served.server
    await server.before_stop()
    server.close()
    await server.wait_closed()
    for connection in list(server.connections):
        connection.close_if_idle()
    await server.after_stop()


class Receiver:
    """Records every callback posted to ``/hook/<kind>`` and answers ``status``.

    An aiohttp app rather than a second sanic one: it starts in a fraction of the time.
    """

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Dict[str, Any]]] = []
        self.status = 200
        self.base = ""

    async def hook(self, request: web.Request) -> web.Response:
        self.calls.append((request.match_info["kind"], await request.json()))
        return web.json_response({"ok": True}, status=self.status)

    def url(self, kind: str) -> str:
        return f"{self.base}/hook/{kind}?token={HOOK_SECRET}"

    def bodies(self, kind: str) -> List[Dict[str, Any]]:
        return [body for called, body in self.calls if called == kind]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook/{kind}", receiver.hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield receiver
    await runner.cleanup()


@pytest.fixture
def instance(receiver: Receiver) -> EmulatedInstance:
    return EmulatedInstance(
        instance_id=INSTANCE_ID,
        instance_token=TOKEN,
        client_token=CLIENT_TOKEN,
        webhooks={kind: receiver.url(kind) for kind in WEBHOOK_KINDS},
    )


@pytest.fixture
def emulator(instance: EmulatedInstance) -> Emulator:
    return Emulator([instance], allow_http_webhooks=True)


@pytest.fixture
async def base_url(emulator: Emulator) -> AsyncIterator[str]:
    served = await serve(build_app(emulator, _unique("zapi-emulator")))
    yield served.url
    await shutdown(served)


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


@pytest.fixture
def posted() -> List[Dict[str, Any]]:
    """The callbacks an ``offline`` emulator posted, in order."""
    return []


@pytest.fixture
async def offline(posted: List[Dict[str, Any]]) -> AsyncIterator[Emulator]:
    """An emulator with no server: the state logic the server calls, called directly.

    Used for the many variations of one rule; each rule also has at least one test over HTTP.
    Its webhook posts go to an injected ``httpx.MockTransport`` that records them in ``posted``.
    """

    def record(request: httpx.Request) -> httpx.Response:
        posted.append(json.loads(request.content))
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as client:
        emulator = Emulator(
            [EmulatedInstance(INSTANCE_ID, TOKEN, CLIENT_TOKEN)], http_client=client
        )
        yield emulator
        await emulator.aclose()


async def handle(
    emulator: Emulator, method: str, endpoint: str, body: Any = None, *, raw: Optional[bytes] = None
) -> Reply:
    return await emulator.handle_zapi(
        method,
        INSTANCE_ID,
        TOKEN,
        endpoint,
        client_token=CLIENT_TOKEN,
        content_type="application/json",
        body=raw if raw is not None else json.dumps(body).encode(),
    )


async def call(
    http: httpx.AsyncClient,
    method: str,
    endpoint: str,
    body: Any = None,
    *,
    client_token: Optional[str] = CLIENT_TOKEN,
    instance_id: str = INSTANCE_ID,
    token: str = TOKEN,
    content_type: Optional[str] = "application/json",
    raw: Optional[bytes] = None,
) -> httpx.Response:
    headers = {}
    if client_token is not None:
        headers["Client-Token"] = client_token
    if content_type is not None:
        headers["Content-Type"] = content_type
    content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return await http.request(
        method,
        f"/instances/{instance_id}/token/{token}/{endpoint}",
        headers=headers,
        content=content,
    )


async def say(http: httpx.AsyncClient, **message: Any) -> httpx.Response:
    return await http.post("/_emulator/messages", json={"phone": CUSTOMER, **message})


async def messages(http: httpx.AsyncClient, phone: str = CUSTOMER) -> List[Dict[str, Any]]:
    answer = await http.get("/_emulator/messages", params={"phone": phone})
    assert answer.status_code == 200
    result: List[Dict[str, Any]] = answer.json()["messages"]
    return result


def fixture(name: str) -> Dict[str, Any]:
    loaded: Dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return loaded


# -- credentials, verbs, content type ------------------------------------------------------------


async def test_unknown_instance_is_400_instance_not_found(http: httpx.AsyncClient) -> None:
    answer = await call(http, "GET", "status", instance_id="NOPE")
    assert (answer.status_code, answer.json()) == (400, {"error": "Instance not found"})


async def test_wrong_instance_token_is_400_instance_not_found(http: httpx.AsyncClient) -> None:
    answer = await call(http, "GET", "status", token="wrong-token")
    assert (answer.status_code, answer.json()) == (400, {"error": "Instance not found"})


async def test_missing_client_token_is_400_not_configured(http: httpx.AsyncClient) -> None:
    answer = await call(http, "GET", "status", client_token=None)
    assert answer.status_code == 400
    assert answer.json() == {"error": "your client-token is not configured"}


async def test_wrong_client_token_is_403_and_echoed(http: httpx.AsyncClient) -> None:
    answer = await call(http, "GET", "status", client_token="wrong-client-token")
    assert answer.status_code == 403
    assert answer.json() == {"error": "Client-Token wrong-client-token not allowed"}


async def test_instance_is_checked_before_client_token(http: httpx.AsyncClient) -> None:
    answer = await call(http, "GET", "status", token="wrong", client_token="also-wrong")
    assert (answer.status_code, answer.json()) == (400, {"error": "Instance not found"})


@pytest.mark.parametrize("content_type", [None, "text/plain"])
async def test_post_without_json_content_type_is_415(
    http: httpx.AsyncClient, content_type: Optional[str]
) -> None:
    body = {"phone": CUSTOMER, "message": "hi"}
    answer = await call(http, "POST", "send-text", body, content_type=content_type)
    assert (answer.status_code, answer.json()) == (415, {"error": "Unsupported Media Type"})


@pytest.mark.parametrize(("method", "endpoint"), [("GET", "send-text"), ("POST", "status")])
async def test_wrong_verb_is_405(http: httpx.AsyncClient, method: str, endpoint: str) -> None:
    answer = await call(http, method, endpoint, {} if method == "POST" else None)
    assert answer.status_code == 405


@pytest.mark.parametrize("endpoint", ["no-such-endpoint", "send-document", "send-document/a/b"])
async def test_unknown_endpoint_is_404(http: httpx.AsyncClient, endpoint: str) -> None:
    answer = await call(http, "POST", endpoint, {"phone": CUSTOMER})
    assert (answer.status_code, answer.json()) == (404, {"error": "Not found"})


async def test_body_that_is_not_json_is_400(http: httpx.AsyncClient) -> None:
    answer = await call(http, "POST", "send-text", raw=b"not json")
    assert answer.status_code == 400


@pytest.mark.parametrize("raw", [b"[1, 2]", b"", b'"text"', b"\xff"])
async def test_body_that_is_not_a_json_object_is_400(offline: Emulator, raw: bytes) -> None:
    assert (await handle(offline, "POST", "send-text", raw=raw)).status == 400


# -- instance calls -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connected", "error"),
    [(True, "You are already connected."), (False, "You are not connected.")],
)
async def test_status_reports_the_connection(
    http: httpx.AsyncClient, instance: EmulatedInstance, connected: bool, error: str
) -> None:
    instance.connected = connected
    answer = await call(http, "GET", "status")
    assert answer.status_code == 200
    assert answer.json() == {
        "connected": connected,
        "error": error,
        "smartphoneConnected": connected,
    }


async def test_device_describes_the_phone_when_connected(http: httpx.AsyncClient) -> None:
    answer = await call(http, "GET", "device")
    assert answer.status_code == 200
    assert answer.json() == {
        "phone": "5511900000000",
        "name": "Z-API emulator",
        "isBusiness": False,
        "originalDevice": "android",
    }


async def test_device_is_400_when_not_connected(
    http: httpx.AsyncClient, instance: EmulatedInstance
) -> None:
    instance.connected = False
    answer = await call(http, "GET", "device")
    assert (answer.status_code, answer.json()) == (400, {"error": "You are not connected."})


@pytest.mark.parametrize("connected", [True, False])
async def test_me_shows_webhooks_and_connection(
    http: httpx.AsyncClient, instance: EmulatedInstance, receiver: Receiver, connected: bool
) -> None:
    instance.connected = connected
    instance.webhooks.pop("chat-presence")
    me = (await call(http, "GET", "me")).json()
    assert me["id"] == INSTANCE_ID
    assert me["connected"] is connected
    assert me["paymentStatus"] == "PAID"
    assert isinstance(me["due"], int) and me["due"] > 1_600_000_000_000  # epoch ms
    assert me["receivedCallbackUrl"] == receiver.url("received")
    assert me["deliveryCallbackUrl"] == receiver.url("delivery")
    assert me["messageStatusCallbackUrl"] == receiver.url("message-status")
    assert me["connectedCallbackUrl"] == receiver.url("connected")
    assert me["disconnectedCallbackUrl"] == receiver.url("disconnected")
    assert me["presenceChatCallbackUrl"] == ""


async def test_disconnect_drops_the_session_and_posts_the_callback(
    http: httpx.AsyncClient, emulator: Emulator, receiver: Receiver
) -> None:
    answer = await call(http, "GET", "disconnect")
    assert answer.json() == {"value": True}
    assert (await call(http, "GET", "status")).json()["connected"] is False
    assert await emulator.drain()
    [callback] = receiver.bodies("disconnected")
    assert callback["type"] == "DisconnectedCallback"
    assert callback["disconnected"] is True
    assert callback["instanceId"] == INSTANCE_ID


async def test_restart_answers_value_true(http: httpx.AsyncClient) -> None:
    answer = await call(http, "GET", "restart")
    assert (answer.status_code, answer.json()) == (200, {"value": True})


# -- sending -------------------------------------------------------------------------------------

VALID_SENDS: Dict[str, Tuple[Dict[str, Any], Optional[str]]] = {
    # endpoint: (body, the record's expected text)
    "send-text": (
        {"phone": CUSTOMER, "message": "Olá! *Bem-vindo*", "delayTyping": 2, "delayMessage": 1},
        "Olá! *Bem-vindo*",
    ),
    "send-image": (
        {"phone": CUSTOMER, "image": "https://example.com/a.jpg", "caption": "A picture"},
        "A picture",
    ),
    "send-audio": ({"phone": CUSTOMER, "audio": "https://example.com/a.ogg"}, None),
    "send-video": (
        {"phone": CUSTOMER, "video": "https://example.com/a.mp4", "caption": "A video"},
        "A video",
    ),
    "send-document/pdf": (
        {"phone": CUSTOMER, "document": "https://example.com/a.pdf", "fileName": "invoice"},
        None,
    ),
    "send-link": (
        {
            "phone": CUSTOMER,
            "message": "Our site: https://z-api.io",
            "image": "https://z-api.io/logo.png",
            "linkUrl": "https://z-api.io",
            "title": "Z-API",
            "linkDescription": "WhatsApp integration",
        },
        "Our site: https://z-api.io",
    ),
    "send-sticker": ({"phone": CUSTOMER, "sticker": "https://example.com/s.webp"}, None),
    "send-location": (
        {
            "phone": CUSTOMER,
            "title": "Store",
            "address": "Av. Brasil, 1000",
            "latitude": "-23.4209995",
            "longitude": "-51.9330558",
        },
        None,
    ),
    "send-reaction": (
        {"phone": CUSTOMER, "reaction": "❤️", "messageId": "3EB0C431C26A1D3E9A51"},
        None,
    ),
    "send-button-list": (
        {
            "phone": CUSTOMER,
            "message": "Is it good?",
            "buttonList": {"buttons": [{"id": "1", "label": "Great"}, {"id": "2", "label": "Ok"}]},
        },
        "Is it good?",
    ),
    "send-option-list": (
        {
            "phone": CUSTOMER,
            "message": "Pick one",
            "optionList": {
                "title": "Options",
                "buttonLabel": "Open",
                "options": [
                    {"id": "1", "title": "Z-API", "description": "Wings for your imagination"},
                    {"id": "2", "title": "Others"},
                ],
            },
        },
        "Pick one",
    ),
    "send-button-actions": (
        {
            "phone": CUSTOMER,
            "message": "Reach us",
            "buttonActions": [
                {"id": "1", "type": "CALL", "phone": "554498398733", "label": "Call us"},
                {"id": "2", "type": "URL", "url": "https://z-api.io", "label": "Website"},
            ],
        },
        "Reach us",
    ),
}

REQUIRED_FIELD = {
    "send-text": "message",
    "send-image": "image",
    "send-audio": "audio",
    "send-video": "video",
    "send-document/pdf": "document",
    "send-link": "linkUrl",
    "send-sticker": "sticker",
    "send-location": "latitude",
    "send-reaction": "messageId",
    "send-button-list": "buttonList",
    "send-option-list": "optionList",
    "send-button-actions": "buttonActions",
}


@pytest.mark.parametrize("endpoint", sorted(VALID_SENDS))
async def test_every_send_endpoint_accepts_a_valid_body_and_records_it(
    http: httpx.AsyncClient, endpoint: str
) -> None:
    body, text = VALID_SENDS[endpoint]
    answer = await call(http, "POST", endpoint, body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert set(result) == {"zaapId", "messageId", "id"}
    assert len(result["zaapId"]) == 32 and result["zaapId"] == result["zaapId"].upper()
    assert len(result["messageId"]) == 20 and result["messageId"] == result["messageId"].upper()
    assert result["id"] == result["messageId"]
    [record] = await messages(http)
    assert record["from"] == "bot"
    assert record["endpoint"] == endpoint
    assert record["body"] == body
    assert record["text"] == text
    assert record["message_id"] == result["messageId"]
    assert isinstance(record["momment"], int)


@pytest.mark.parametrize("endpoint", sorted(REQUIRED_FIELD))
async def test_every_send_endpoint_names_a_missing_required_field(
    offline: Emulator, endpoint: str
) -> None:
    body = dict(VALID_SENDS[endpoint][0])
    missing = REQUIRED_FIELD[endpoint]
    del body[missing]
    reply = await handle(offline, "POST", endpoint, body)
    assert (reply.status, reply.body) == (400, {"error": f"{missing} is required"})
    assert offline.conversation(CUSTOMER) == []


async def test_a_missing_field_is_400_over_http(http: httpx.AsyncClient) -> None:
    answer = await call(http, "POST", "send-image", {"phone": CUSTOMER, "caption": "no image"})
    assert (answer.status_code, answer.json()) == (400, {"error": "image is required"})
    assert await messages(http) == []


@pytest.mark.parametrize("endpoint", sorted(VALID_SENDS))
def test_validate_send_accepts_the_valid_bodies(endpoint: str) -> None:
    assert validate_send(endpoint, VALID_SENDS[endpoint][0]) is None


@pytest.mark.parametrize(
    ("endpoint", "change", "error"),
    [
        ("send-text", {"message": "   "}, "message is required"),
        ("send-text", {"message": 42}, "message must be a string"),
        ("send-text", {"delayTyping": 16}, "delayTyping must be a whole number"),
        ("send-text", {"delayMessage": True}, "delayMessage must be a whole number"),
        ("send-text", {"phone": None}, "phone is required"),
        ("send-link", {"message": "no link here"}, "message must end with linkUrl"),
        # Z-API's docs mark the preview's picture, title and description required.
        ("send-link", {"image": ""}, "image is required"),
        ("send-link", {"linkDescription": None}, "linkDescription is required"),
        ("send-link", {"linkType": "HUGE"}, "linkType must be SMALL, MEDIUM or LARGE"),
        ("send-location", {"latitude": -23.4}, "latitude must be a string"),
        ("send-location", {"longitude": "west"}, "longitude must be a number"),
        ("send-button-list", {"buttonList": {"buttons": []}}, "buttonList.buttons is required"),
        (
            "send-button-list",
            {"buttonList": {"buttons": [{"id": "1"}]}},
            "buttonList.buttons[0].label is required",
        ),
        (
            "send-option-list",
            {"optionList": {"title": "T", "buttonLabel": "B", "options": [{"id": "1"}]}},
            "optionList.options[0].title is required",
        ),
        (
            "send-button-actions",
            {"buttonActions": [{"type": "SMS", "label": "x"}]},
            "buttonActions[0].type must be one of CALL, URL, REPLY",
        ),
        (
            "send-button-actions",
            {"buttonActions": [{"type": "URL", "label": "x", "url": "z-api.io"}]},
            "buttonActions[0].url must start with http:// or https://",
        ),
    ],
)
async def test_invalid_send_fields_are_400_with_the_reason(
    offline: Emulator, endpoint: str, change: Dict[str, Any], error: str
) -> None:
    reply = await handle(offline, "POST", endpoint, {**VALID_SENDS[endpoint][0], **change})
    assert reply.status == 400
    assert reply.body["error"].startswith(error)


@pytest.mark.parametrize(
    "phone", ["+5511999999999", "551199", "55 11 99999-9999", "5511999999999@c.us", "abc"]
)
async def test_malformed_phone_is_400(offline: Emulator, phone: str) -> None:
    reply = await handle(offline, "POST", "send-text", {"phone": phone, "message": "hi"})
    assert reply.status == 400
    assert reply.body["error"].startswith("phone must be digits")


@pytest.mark.parametrize(
    "phone", ["81896604192873@lid", "120363019502650977-group", "5511999999999-1623281429-group"]
)
async def test_lid_and_group_ids_are_accepted_as_phone(offline: Emulator, phone: str) -> None:
    reply = await handle(offline, "POST", "send-text", {"phone": phone, "message": "hi"})
    assert reply.status == 200
    assert [record["text"] for record in offline.conversation(phone)] == ["hi"]


async def test_document_extension_must_be_alphanumeric(http: httpx.AsyncClient) -> None:
    body = {"phone": CUSTOMER, "document": "https://example.com/a.tar.gz"}
    answer = await call(http, "POST", "send-document/tar.gz", body)
    assert answer.status_code == 400
    assert "extension" in answer.json()["error"]


async def test_reply_buttons_cannot_be_mixed_with_url_buttons(http: httpx.AsyncClient) -> None:
    body = {
        "phone": CUSTOMER,
        "message": "Choose",
        "buttonActions": [
            {"id": "1", "type": "REPLY", "label": "Talk to us"},
            {"id": "2", "type": "URL", "url": "https://z-api.io", "label": "Website"},
        ],
    }
    answer = await call(http, "POST", "send-button-actions", body)
    assert answer.status_code == 400
    assert "REPLY" in answer.json()["error"]
    assert await messages(http) == []


async def test_reply_buttons_alone_are_accepted(http: httpx.AsyncClient) -> None:
    body = {
        "phone": CUSTOMER,
        "message": "Choose",
        "buttonActions": [
            {"id": "1", "type": "REPLY", "label": "Yes"},
            {"type": "REPLY", "label": "No"},
        ],
    }
    assert (await call(http, "POST", "send-button-actions", body)).status_code == 200


async def test_send_while_disconnected_is_queued_and_delivered_on_reconnect(
    http: httpx.AsyncClient, instance: EmulatedInstance, emulator: Emulator, receiver: Receiver
) -> None:
    await http.post("/_emulator/connection", json={"connected": False})
    first = await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "one"})
    second = await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "two"})
    assert first.status_code == second.status_code == 200
    assert await messages(http) == []
    listed = (await call(http, "POST", "queue", {})).json()
    assert [m["Message"] for m in listed["messages"]] == ["one", "two"]
    assert [m["MessageId"] for m in listed["messages"]] == [
        first.json()["messageId"],
        second.json()["messageId"],
    ]
    assert listed["hasMore"] is False
    await http.post("/_emulator/connection", json={"connected": True})
    assert await emulator.drain()
    assert [m["text"] for m in await messages(http)] == ["one", "two"]
    assert (await call(http, "POST", "queue", {})).json()["messages"] == []
    delivered = [body["messageId"] for body in receiver.bodies("delivery")]
    assert delivered == [first.json()["messageId"], second.json()["messageId"]]


async def test_send_while_disconnected_with_the_queue_off_is_400_and_records_nothing(
    http: httpx.AsyncClient, instance: EmulatedInstance
) -> None:
    setting = {"disableEnqueueWhenDisconnected": True}
    assert (await call(http, "PUT", "update-queue-settings", setting)).json() == {"value": True}
    instance.connected = False
    answer = await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "hi"})
    assert (answer.status_code, answer.json()) == (400, {"error": "You are not connected."})
    assert await messages(http) == []
    assert instance.queue == []


async def test_update_queue_settings_needs_a_boolean(http: httpx.AsyncClient) -> None:
    answer = await call(http, "PUT", "update-queue-settings", {"disableEnqueueWhenDisconnected": 1})
    assert answer.status_code == 400


async def test_queue_refuses_sends_beyond_its_limit(offline: Emulator) -> None:
    instance = offline.instances[INSTANCE_ID]
    instance.connected = False
    instance.queue.extend(
        {"zaap_id": str(n), "message_id": str(n), "body": {"phone": CUSTOMER}, "momment": 0}
        for n in range(QUEUE_LIMIT)
    )
    answer = await handle(offline, "POST", "send-text", {"phone": CUSTOMER, "message": "hi"})
    assert (answer.status, answer.body) == (400, {"error": "You are not connected."})
    assert len(instance.queue) == QUEUE_LIMIT


async def test_queue_pages_with_the_paging_state_it_gives(offline: Emulator) -> None:
    offline.instances[INSTANCE_ID].connected = False
    for n in range(45):
        await handle(offline, "POST", "send-text", {"phone": CUSTOMER, "message": f"m{n}"})
    seen: List[str] = []
    page = await handle(offline, "POST", "queue", {"pageSize": 100})
    while True:
        assert page.status == 200
        assert len(page.body["messages"]) <= QUEUE_PAGE_SIZE
        seen += [m["Message"] for m in page.body["messages"]]
        if not page.body["hasMore"]:
            break
        page = await handle(offline, "POST", "queue", {"pagingState": page.body["pagingState"]})
    assert seen == [f"m{n}" for n in range(45)]
    whole = await handle(offline, "GET", "queue")
    assert whole.body["size"] == 45
    assert (await handle(offline, "POST", "queue", {"pagingState": "bogus"})).status == 400


async def test_queue_with_an_empty_body_is_the_first_page(http: httpx.AsyncClient) -> None:
    answer = await call(http, "POST", "queue", raw=b"")
    assert (answer.status_code, answer.json()) == (200, {"messages": [], "hasMore": False})


async def test_delete_queue_empties_it_and_delete_one_removes_one(offline: Emulator) -> None:
    instance = offline.instances[INSTANCE_ID]
    instance.connected = False
    sent = [
        (await handle(offline, "POST", "send-text", {"phone": CUSTOMER, "message": m})).body
        for m in ("a", "b", "c")
    ]
    assert (await handle(offline, "DELETE", f"queue/{sent[1]['zaapId']}")).status == 200
    assert [r["text"] for r in instance.queue] == ["a", "c"]
    assert (await handle(offline, "DELETE", "queue/NOPE")).status == 404
    assert (await handle(offline, "DELETE", "queue")).status == 200
    assert instance.queue == []


async def test_fail_deliveries_reports_the_error_later_and_shows_no_status(
    http: httpx.AsyncClient, emulator: Emulator, receiver: Receiver
) -> None:
    await http.post("/_emulator/faults", json={"fail_deliveries": 1, "delivery_error": "Nope"})
    failed = await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "one"})
    fine = await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "two"})
    assert failed.status_code == fine.status_code == 200
    assert await emulator.drain()
    reports = {body["messageId"]: body.get("error") for body in receiver.bodies("delivery")}
    assert reports == {failed.json()["messageId"]: "Nope", fine.json()["messageId"]: None}
    statuses = {body["ids"][0] for body in receiver.bodies("message-status")}
    assert statuses == {fine.json()["messageId"]}
    assert [r["status"] for r in await messages(http)] == ["FAILED", "READ"]


async def test_refuse_buttons_reports_the_button_terms_for_interactive_sends_only(
    http: httpx.AsyncClient, emulator: Emulator, receiver: Receiver
) -> None:
    await http.post("/_emulator/faults", json={"refuse_buttons": True})
    buttons = {
        "phone": CUSTOMER,
        "message": "Choose",
        "buttonList": {"buttons": [{"id": "1", "label": "Yes"}]},
    }
    refused = await call(http, "POST", "send-button-list", buttons)
    text = await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "1. Yes"})
    assert await emulator.drain()
    reports = {body["messageId"]: body.get("error") for body in receiver.bodies("delivery")}
    assert reports == {
        refused.json()["messageId"]: BUTTON_TERMS_ERROR,
        text.json()["messageId"]: None,
    }


async def test_read_message_is_204_and_marks_the_customer_message_read(
    http: httpx.AsyncClient,
) -> None:
    message_id = (await say(http, text="hi")).json()["messageId"]
    answer = await call(http, "POST", "read-message", {"phone": CUSTOMER, "messageId": message_id})
    assert answer.status_code == 204
    assert answer.content == b""
    [record] = await messages(http)
    assert record["read"] is True


async def test_read_message_requires_message_id(http: httpx.AsyncClient) -> None:
    answer = await call(http, "POST", "read-message", {"phone": CUSTOMER})
    assert (answer.status_code, answer.json()) == (400, {"error": "messageId is required"})


async def test_send_is_followed_by_delivery_and_status_callbacks(
    http: httpx.AsyncClient, emulator: Emulator, receiver: Receiver
) -> None:
    sent = (await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "hi"})).json()
    assert await emulator.drain()
    [delivery] = receiver.bodies("delivery")
    assert delivery == {
        "phone": CUSTOMER,
        "zaapId": sent["zaapId"],
        "messageId": sent["messageId"],
        "instanceId": INSTANCE_ID,
        "momment": delivery["momment"],
        "type": "DeliveryCallback",
    }
    statuses = receiver.bodies("message-status")
    assert [s["status"] for s in statuses] == ["RECEIVED", "READ"]
    for status in statuses:
        assert set(status) == set(fixture("message_status.json"))
        assert status["ids"] == [sent["messageId"]]
        assert (status["phone"], status["isGroup"], status["phoneDevice"]) == (CUSTOMER, False, 0)
    [record] = await messages(http)
    assert record["status"] == "READ"
    assert receiver.bodies("received") == []  # notifySentByMe is off


# -- webhook settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow_local_http", "accepted"),
    [
        ("https://bot.example.com/webhook?token=x", False, True),
        ("http://bot.example.com/webhook", True, False),
        ("http://127.0.0.1:5005/webhooks/zapi/webhook", True, True),
        ("http://localhost:5005/webhook", True, True),
        ("http://[::1]:5005/webhook", True, True),
        ("http://127.0.0.1:5005/webhook", False, False),
        ("ftp://bot.example.com/webhook", True, False),
        ("https://", True, False),
        ("not a url", True, False),
    ],
)
def test_check_webhook_url(url: str, allow_local_http: bool, accepted: bool) -> None:
    problem = check_webhook_url(url, allow_local_http=allow_local_http)
    assert (problem is None) is accepted
    if not accepted:
        assert problem == "Invalid URL, only https allowed"


@pytest.mark.parametrize("kind", WEBHOOK_KINDS)
async def test_update_webhook_takes_https(offline: Emulator, kind: str) -> None:
    url = f"https://bot.example.com/{kind}"
    reply = await handle(offline, "PUT", f"update-webhook-{kind}", {"value": url})
    assert (reply.status, reply.body) == (200, {"value": True})
    assert offline.instances[INSTANCE_ID].webhooks[kind] == url


async def test_update_webhook_takes_https_over_http(
    http: httpx.AsyncClient, instance: EmulatedInstance
) -> None:
    url = "https://bot.example.com/webhook"
    answer = await call(http, "PUT", "update-webhook-received", {"value": url})
    assert (answer.status_code, answer.json()) == (200, {"value": True})
    assert (await call(http, "GET", "me")).json()["receivedCallbackUrl"] == url


async def test_update_webhook_refuses_plain_http(http: httpx.AsyncClient) -> None:
    body = {"value": "http://bot.example.com/webhook"}
    answer = await call(http, "PUT", "update-webhook-received", body)
    assert (answer.status_code, answer.json()) == (
        400,
        {"error": "Invalid URL, only https allowed"},
    )


async def test_update_webhook_takes_local_http_when_allowed(
    http: httpx.AsyncClient, instance: EmulatedInstance
) -> None:
    url = "http://localhost:5005/webhooks/zapi/webhook"
    answer = await call(http, "PUT", "update-webhook-received", {"value": url})
    assert answer.status_code == 200
    assert instance.webhooks["received"] == url


async def test_strict_emulator_refuses_local_http_webhooks(offline: Emulator) -> None:
    assert offline.allow_http_webhooks is False  # the default, as strict as Z-API
    body = {"value": "http://127.0.0.1:5005/webhook"}
    reply = await handle(offline, "PUT", "update-webhook-received", body)
    assert (reply.status, reply.body) == (400, {"error": "Invalid URL, only https allowed"})


async def test_update_webhook_requires_value(http: httpx.AsyncClient) -> None:
    answer = await call(http, "PUT", "update-webhook-delivery", {"url": "https://x.example"})
    assert (answer.status_code, answer.json()) == (400, {"error": "value is required"})


async def test_update_every_webhooks_sets_all_and_notify(
    http: httpx.AsyncClient, instance: EmulatedInstance
) -> None:
    url = "https://bot.example.com/all"
    body = {"value": url, "notifySentByMe": True}
    assert (await call(http, "PUT", "update-every-webhooks", body)).json() == {"value": True}
    assert instance.webhooks == {kind: url for kind in WEBHOOK_KINDS}
    assert instance.notify_sent_by_me is True
    assert (await call(http, "GET", "me")).json()["receiveCallbackSentByMe"] is True


async def test_notify_sent_by_me_echoes_our_sends_as_received_callbacks(
    http: httpx.AsyncClient, emulator: Emulator, receiver: Receiver
) -> None:
    body = {"notifySentByMe": True}
    assert (await call(http, "PUT", "update-notify-sent-by-me", body)).status_code == 200
    sent = (await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "hi"})).json()
    assert await emulator.drain()
    [echo] = receiver.bodies("received")
    assert set(echo) == set(fixture("received_own_echo.json"))
    assert (echo["fromMe"], echo["fromApi"], echo["status"]) == (True, True, "SENT")
    assert echo["messageId"] == sent["messageId"]
    assert echo["text"] == {"message": "hi"}


async def test_update_notify_sent_by_me_requires_a_boolean(http: httpx.AsyncClient) -> None:
    answer = await call(http, "PUT", "update-notify-sent-by-me", {"notifySentByMe": "yes"})
    assert answer.status_code == 400


# -- customer messages ---------------------------------------------------------------------------

CUSTOMER_MESSAGES = [
    # (request, fixture with the same shape, kind, recorded text)
    ({"text": "Hi there"}, "received_text.json", "text", "Hi there"),
    (
        {"button_id": "/ask_image", "label": "A picture", "reference_message_id": "3EB0FA99"},
        "received_button_reply.json",
        "button_reply",
        "A picture",
    ),
    (
        {"list_row_id": "/ask_document", "title": "A document", "reference_message_id": "3EB0FA"},
        "received_list_reply.json",
        "list_reply",
        "A document",
    ),
    (
        {"image_url": "https://example.com/cat.jpg", "caption": "Look at this"},
        "received_image.json",
        "image",
        "Look at this",
    ),
    (
        {"location": {"latitude": -23.42, "longitude": -51.93, "address": "Av. Brasil, 1000"}},
        "received_location.json",
        "location",
        None,
    ),
    ({"audio_url": "https://example.com/voice.ogg"}, "received_audio.json", "audio", None),
]


@pytest.mark.parametrize(("request_body", "fixture_name", "kind", "text"), CUSTOMER_MESSAGES)
async def test_customer_message_posts_a_complete_received_callback(
    http: httpx.AsyncClient,
    receiver: Receiver,
    request_body: Dict[str, Any],
    fixture_name: str,
    kind: str,
    text: Optional[str],
) -> None:
    answer = await say(http, sender_name="Ana Souza", **request_body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result == {
        "messageId": result["messageId"],
        "webhook_status": 200,
        "webhook_error": None,
    }
    assert len(result["messageId"]) >= 20 and result["messageId"] == result["messageId"].upper()

    [posted] = receiver.bodies("received")
    documented = fixture(fixture_name)
    assert set(posted) == set(documented)
    content_key = next(key for key in documented if isinstance(documented[key], dict))
    assert set(posted[content_key]) <= set(documented[content_key])
    for key, value in documented.items():
        if isinstance(value, bool):
            assert posted[key] is value, key
    assert posted["type"] == "ReceivedCallback"
    assert posted["instanceId"] == INSTANCE_ID
    assert posted["messageId"] == result["messageId"]
    assert posted["phone"] == CUSTOMER
    assert posted["connectedPhone"] == "5511900000000"
    assert posted["chatLid"] is None
    assert posted["senderLid"] == fake_lid(CUSTOMER) and posted["senderLid"].endswith("@lid")
    assert (posted["senderName"], posted["chatName"]) == ("Ana Souza", "Ana Souza")
    assert posted["status"] == "RECEIVED"
    assert isinstance(posted["momment"], int) and posted["momment"] > 1_600_000_000_000

    [record] = await messages(http)
    assert (record["from"], record["kind"], record["text"]) == ("customer", kind, text)
    assert record["message_id"] == result["messageId"]


@pytest.mark.parametrize(("request_body", "_fixture", "kind", "_text"), CUSTOMER_MESSAGES)
async def test_received_callbacks_parse_as_our_inbound_messages(
    offline: Emulator,
    posted: List[Dict[str, Any]],
    request_body: Dict[str, Any],
    _fixture: str,
    kind: str,
    _text: Optional[str],
) -> None:
    offline.instances[INSTANCE_ID].webhooks["received"] = "https://bot.example.com/webhook"
    reply = await offline.customer_message({"phone": CUSTOMER, **request_body})
    assert reply.body["webhook_status"] == 200
    [callback] = posted
    config = ChannelConfig.from_mapping(
        {
            "instance_id": INSTANCE_ID,
            "instance_token": TOKEN,
            "client_token": CLIENT_TOKEN,
            "webhook_token": HOOK_SECRET,
        }
    )
    parsed = parse_callback(callback, config)
    assert isinstance(parsed, InboundMessage), parsed
    assert parsed.kind == kind


async def test_button_reply_is_completed_from_the_bot_message(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    body, _ = VALID_SENDS["send-button-list"]
    sent = (await call(http, "POST", "send-button-list", body)).json()
    assert (await say(http, button_id="2")).status_code == 200
    [posted] = receiver.bodies("received")
    assert posted["buttonsResponseMessage"] == {"buttonId": "2", "message": "Ok"}
    assert posted["referenceMessageId"] == sent["messageId"]


async def test_list_reply_is_completed_from_the_bot_message(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    body, _ = VALID_SENDS["send-option-list"]
    sent = (await call(http, "POST", "send-option-list", body)).json()
    assert (await say(http, list_row_id="1")).status_code == 200
    [posted] = receiver.bodies("received")
    assert posted["listResponseMessage"] == {
        "message": "Wings for your imagination",
        "title": "Z-API",
        "selectedRowId": "1",
    }
    assert posted["referenceMessageId"] == sent["messageId"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"text": "hi"}, "phone is required"),
        ({"phone": CUSTOMER}, "the message needs one of"),
        ({"phone": CUSTOMER, "text": "hi", "image_url": "https://x.example/a.jpg"}, "give only"),
        ({"phone": "+55 11 99999", "text": "hi"}, "phone must be digits"),
        ({"phone": "120363019502650977-group", "text": "hi"}, "phone must be digits"),
        ({"phone": CUSTOMER, "button_id": "9"}, "label is required"),
        ({"phone": CUSTOMER, "location": {"latitude": "x", "longitude": 1}}, "location.latitude"),
    ],
)
async def test_bad_customer_message_is_400(
    offline: Emulator, body: Dict[str, Any], error: str
) -> None:
    reply = await offline.customer_message(body)
    assert reply.status == 400
    assert reply.body["error"].startswith(error)
    assert offline.conversations == {}


async def test_bad_customer_message_is_400_over_http(http: httpx.AsyncClient) -> None:
    answer = await http.post("/_emulator/messages", json={"text": "hi"})
    assert (answer.status_code, answer.json()) == (400, {"error": "phone is required"})


async def test_customer_message_without_webhook_is_recorded(
    http: httpx.AsyncClient, instance: EmulatedInstance, receiver: Receiver
) -> None:
    instance.webhooks.clear()
    result = (await say(http, text="hi")).json()
    assert result["webhook_status"] is None
    assert "no received webhook" in result["webhook_error"]
    assert receiver.calls == []
    assert [record["text"] for record in await messages(http)] == ["hi"]


async def test_customer_message_reports_an_unreachable_webhook(
    http: httpx.AsyncClient, instance: EmulatedInstance
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook?token={HOOK_SECRET}"
    closed.close()
    instance.webhooks["received"] = url
    result = (await say(http, text="hi")).json()
    assert result["webhook_status"] is None
    assert result["webhook_error"]
    assert HOOK_SECRET not in result["webhook_error"]


async def test_customer_message_reports_the_webhook_status(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.status = 500
    assert (await say(http, text="hi")).json()["webhook_status"] == 500


async def test_customer_cannot_write_to_a_disconnected_phone(
    http: httpx.AsyncClient, instance: EmulatedInstance
) -> None:
    instance.connected = False
    assert (await say(http, text="hi")).status_code == 409
    assert await messages(http) == []


# -- faults --------------------------------------------------------------------------------------


async def test_duplicate_deliveries_posts_every_received_callback_twice(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    await http.post("/_emulator/faults", json={"duplicate_deliveries": True})
    message_id = (await say(http, text="hi")).json()["messageId"]
    posted = receiver.bodies("received")
    assert [body["messageId"] for body in posted] == [message_id, message_id]
    assert posted[0] == posted[1]


async def test_fail_sends_fails_the_next_n_sends(http: httpx.AsyncClient) -> None:
    await http.post("/_emulator/faults", json={"fail_sends": 2})
    body = {"phone": CUSTOMER, "message": "hi"}
    for _ in range(2):
        answer = await call(http, "POST", "send-text", body)
        assert (answer.status_code, answer.json()) == (503, {"error": "Service Unavailable"})
    assert (await call(http, "POST", "send-text", body)).status_code == 200
    assert (await http.get("/_emulator/faults")).json()["fail_sends"] == 0
    assert len(await messages(http)) == 1


async def test_fail_sends_uses_the_chosen_status(http: httpx.AsyncClient) -> None:
    await http.post("/_emulator/faults", json={"fail_sends": 1, "fail_status": 500})
    answer = await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "hi"})
    assert (answer.status_code, answer.json()) == (500, {"error": "Internal Server Error"})


async def test_send_without_message_id_answers_value_false(http: httpx.AsyncClient) -> None:
    await http.post("/_emulator/faults", json={"send_without_message_id": 1})
    body = {"phone": CUSTOMER, "message": "hi"}
    answer = await call(http, "POST", "send-text", body)
    assert (answer.status_code, answer.json()) == (200, {"value": False})
    assert await messages(http) == []
    assert "messageId" in (await call(http, "POST", "send-text", body)).json()


async def test_send_delay_slows_every_send(http: httpx.AsyncClient) -> None:
    await http.post("/_emulator/faults", json={"send_delay_ms": 150})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "hi"})
    assert loop.time() - started >= 0.15


async def test_faults_merge_show_and_reset(http: httpx.AsyncClient) -> None:
    await http.post("/_emulator/faults", json={"fail_sends": 3})
    merged = (await http.post("/_emulator/faults", json={"send_delay_ms": 5})).json()
    assert (merged["fail_sends"], merged["send_delay_ms"]) == (3, 5)
    assert (await http.get("/_emulator/faults")).json() == merged
    assert (await http.delete("/_emulator/faults")).json() == Faults().to_dict()


@pytest.mark.parametrize(
    "change",
    [
        {"explode": True},
        {"fail_sends": -1},
        {"fail_sends": "2"},
        {"fail_status": 200},
        {"duplicate_deliveries": 1},
    ],
)
def test_bad_faults_are_refused(offline: Emulator, change: Dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        offline.set_faults(change)
    assert offline.faults == Faults()


async def test_bad_faults_are_400_over_http(http: httpx.AsyncClient) -> None:
    assert (await http.post("/_emulator/faults", json={"fail_sends": -1})).status_code == 400
    assert (await http.get("/_emulator/faults")).json() == Faults().to_dict()


# -- connection switch ---------------------------------------------------------------------------


async def test_connection_switch_posts_disconnected_then_connected(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    off = (await http.post("/_emulator/connection", json={"connected": False})).json()
    assert off == {"connected": False, "webhook_status": 200, "webhook_error": None}
    assert (await call(http, "GET", "status")).json()["connected"] is False
    [disconnected] = receiver.bodies("disconnected")
    assert set(disconnected) == set(fixture("disconnected.json"))
    assert disconnected["error"] == "Device has been disconnected"
    assert disconnected["disconnected"] is True

    on = (await http.post("/_emulator/connection", json={"connected": True})).json()
    assert on["connected"] is True
    [connected] = receiver.bodies("connected")
    assert set(connected) == set(fixture("connected.json"))
    assert (connected["connected"], connected["phone"]) == (True, "5511900000000")
    assert connected["instanceId"] == INSTANCE_ID
    assert (await call(http, "GET", "status")).json()["connected"] is True


async def test_connection_switch_requires_a_boolean(http: httpx.AsyncClient) -> None:
    assert (await http.post("/_emulator/connection", json={"connected": "no"})).status_code == 400


# -- conversations and health --------------------------------------------------------------------


async def test_conversation_keeps_customer_and_bot_messages_in_order(
    http: httpx.AsyncClient,
) -> None:
    await say(http, text="hi")
    await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "Hello!"})
    await say(http, text="more")
    await say(http, phone="5511888888888", text="another chat")
    conversation = await messages(http)
    assert [(r["from"], r["text"]) for r in conversation] == [
        ("customer", "hi"),
        ("bot", "Hello!"),
        ("customer", "more"),
    ]
    assert [r["momment"] for r in conversation] == sorted(r["momment"] for r in conversation)
    summaries = (await http.get("/_emulator/conversations")).json()["conversations"]
    assert {(s["phone"], s["count"]) for s in summaries} == {(CUSTOMER, 3), ("5511888888888", 1)}

    assert (await http.delete("/_emulator/messages")).status_code == 200
    assert await messages(http) == []


async def test_messages_without_phone_is_400(http: httpx.AsyncClient) -> None:
    assert (await http.get("/_emulator/messages")).status_code == 400


async def test_health_lists_instances(http: httpx.AsyncClient) -> None:
    answer = await http.get("/_emulator/health")
    assert answer.json() == {"status": "ok", "instances": [INSTANCE_ID]}


async def test_tokens_never_reach_the_logs(
    http: httpx.AsyncClient, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        await call(http, "GET", "status", client_token="wrong-client-token")
        await call(http, "GET", "status", token="wrong-instance-token")
        await call(http, "POST", "send-text", {"phone": CUSTOMER, "message": "hi"})
        await say(http, text="hi")
        assert await emulator.drain()
    ours = "\n".join(
        record.getMessage()
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))
    )
    assert "send-text" in ours
    for secret in (TOKEN, CLIENT_TOKEN, "wrong-client-token", "wrong-instance-token", HOOK_SECRET):
        assert secret not in ours


# -- our client against the emulator -------------------------------------------------------------


async def test_zapi_client_works_against_the_emulator(base_url: str) -> None:
    credentials = ZApiCredentials(
        instance_id=INSTANCE_ID,
        instance_token=TOKEN,
        client_token=CLIENT_TOKEN,
        base_url=base_url,
    )
    async with ZApiClient(credentials) as client:
        status = await client.status()
        assert status.connected is True
        result = await client.send_text(CUSTOMER, "Olá!")
        assert len(result.message_id) == 20
        assert result.id == result.message_id

    async with ZApiClient(credentials.replace(client_token="wrong-client-token")) as client:
        with pytest.raises(InvalidCredentials) as raised:
            await client.status()
    assert raised.value.status_code == 403
    assert "wrong-client-token" not in str(raised.value)
    assert "wrong-client-token" not in (raised.value.zapi_error or "")


async def test_zapi_client_sees_a_send_without_message_id_as_not_accepted(
    base_url: str, http: httpx.AsyncClient
) -> None:
    await http.post("/_emulator/faults", json={"send_without_message_id": 1})
    credentials = ZApiCredentials(INSTANCE_ID, TOKEN, CLIENT_TOKEN, base_url=base_url)
    async with ZApiClient(credentials) as client:
        with pytest.raises(SendNotAccepted):
            await client.send_text(CUSTOMER, "Olá!")


# -- command line --------------------------------------------------------------------------------


def test_command_line_defaults() -> None:
    args = build_parser().parse_args([])
    emulator = emulator_from_args(args)
    [instance] = emulator.instances.values()
    assert (args.host, args.port) == ("127.0.0.1", 8300)
    assert instance.instance_id == DEFAULT_INSTANCE_ID
    assert instance.instance_token == DEFAULT_INSTANCE_TOKEN
    assert instance.client_token == DEFAULT_CLIENT_TOKEN
    assert instance.connected is True
    assert instance.webhooks == {}
    assert emulator.allow_http_webhooks is True


def test_command_line_webhook_url_sets_received_delivery_and_status() -> None:
    url = "http://127.0.0.1:5005/webhooks/zapi/webhook?token=x"
    args = build_parser().parse_args(["--webhook-url", url, "--disconnected", "--phone", "5544999"])
    with pytest.raises(ValueError, match="--phone"):
        emulator_from_args(args)
    args.phone = "554499999999"
    [instance] = emulator_from_args(args).instances.values()
    assert instance.webhooks == {"received": url, "delivery": url, "message-status": url}
    assert instance.connected is False


@pytest.mark.parametrize(
    "argv",
    [
        ["--webhook-url", "http://bot.example.com/webhook"],
        ["--webhook-url", "http://127.0.0.1:5005/webhook", "--no-allow-http-webhooks"],
    ],
)
def test_command_line_refuses_webhooks_z_api_would_refuse(
    argv: List[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "only https" in capsys.readouterr().err


def test_instances_refuse_unknown_webhook_kinds() -> None:
    with pytest.raises(ValueError, match="unknown webhook kind"):
        EmulatedInstance("ID", "T", "C", webhooks={"recieved": "https://x.example"})


def test_faults_merged_keeps_the_original() -> None:
    faults = Faults()
    changed = faults.merged({"fail_sends": 1})
    assert (faults.fail_sends, changed.fail_sends) == (0, 1)


async def test_the_owner_writing_from_the_phone_is_posted_as_live_instances_do(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    answer = await say(http, text="Aqui é o dono", from_me=True)
    assert answer.status_code == 200, answer.text
    [posted] = receiver.bodies("received")
    assert (posted["fromMe"], posted["fromApi"], posted["status"]) == (True, False, "RECEIVED")
    assert posted["text"] == {"message": "Aqui é o dono"}
    conversation = await http.get("/_emulator/messages", params={"phone": CUSTOMER})
    [record] = conversation.json()["messages"]
    assert record["from"] == "owner"


async def test_from_me_must_be_a_boolean(http: httpx.AsyncClient) -> None:
    answer = await say(http, text="x", from_me="yes")
    assert answer.status_code == 400

"""ZApiClient behaves the same on both transports (``http_transport: httpx`` and ``aiohttp``).

respx intercepts httpx's own transport only, so these tests talk to a real server on loopback:
what the channel's retry policy decides from a failure (sent or not), timeouts, pooling, gzip
answers, headers, and that no token reaches an exception, on each transport.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import ssl
from typing import Any, AsyncIterator, Dict, List

import httpx
import pytest
from sanic import response
from sanic.request import Request
from sanic.response import HTTPResponse

from tests.conftest import CLIENT_TOKEN, INSTANCE_ID, INSTANCE_TOKEN
from tests.livesanic import free_port, new_app, serving
from zapi_channel.client import ZApiClient
from zapi_channel.config import ZApiCredentials
from zapi_channel.errors import TransportError, ZApiTimeout
from zapi_channel.retry import RetryPolicy
from zapi_channel.transport import AiohttpTransport

TRANSPORTS = ["httpx", "aiohttp"]
PHONE = "5511999999999"


class FakeZApi:
    """Z-API's send-text, with the failures the tests ask for, and what it saw."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []
        self.fail_first = 0
        self.delay = 0.0
        self.gzip = False
        self.set_cookie = ""

    async def send_text(self, request: Request, instance: str, token: str) -> HTTPResponse:
        self.calls.append(
            {
                "port": request.conn_info.client_port if request.conn_info else None,
                "headers": dict(request.headers),
                "body": request.json,
            }
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_first:
            self.fail_first -= 1
            return response.json({"error": "busy"}, status=503)
        body = json.dumps({"zaapId": "Z1", "messageId": f"M{len(self.calls)}", "id": "M"})
        if self.set_cookie:
            cookie, self.set_cookie = self.set_cookie, ""
            return response.raw(
                body.encode(), headers={"Set-Cookie": cookie}, content_type="application/json"
            )
        if self.gzip:
            return response.raw(
                gzip.compress(body.encode()),
                headers={"Content-Encoding": "gzip"},
                content_type="application/json",
            )
        return response.raw(body.encode(), content_type="application/json")


@pytest.fixture
async def fake() -> AsyncIterator[Any]:
    zapi = FakeZApi()
    app = new_app("fake-zapi")
    app.add_route(zapi.send_text, "/instances/<instance>/token/<token>/send-text", methods=["POST"])
    async with serving(app) as url:
        zapi.url = url  # type: ignore[attr-defined]
        yield zapi


async def no_sleep(seconds: float) -> None:
    return None


def client_for(url: str, transport: str, **options: Any) -> ZApiClient:
    credentials = ZApiCredentials(INSTANCE_ID, INSTANCE_TOKEN, CLIENT_TOKEN, base_url=url)
    return ZApiClient(credentials, transport=transport, sleep=no_sleep, **options)


def assert_no_token(exc: BaseException) -> None:
    """Neither the exception nor anything chained to it (cause or context) names the token."""
    for linked in chain(exc):
        assert INSTANCE_TOKEN not in str(linked), repr(linked)


def chain(exc: BaseException) -> List[BaseException]:
    found: List[BaseException] = []
    current: Any = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_send_carries_the_headers_and_body_and_reads_the_answer(
    fake: Any, transport: str
) -> None:
    async with client_for(fake.url, transport) as client:
        result = await client.send_text(PHONE, "Olá! 😀")
    assert result.message_id == "M1"
    [call] = fake.calls
    assert call["body"] == {"phone": PHONE, "message": "Olá! 😀"}
    headers = {key.lower(): value for key, value in call["headers"].items()}
    assert headers["client-token"] == CLIENT_TOKEN
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cookie_the_server_sets_is_sent_back_and_none_is_made_up(
    fake: Any, transport: str
) -> None:
    # Z-API's docs name no cookie; a proxy in front of it may set one (client._CookiesWhenSet).
    async with client_for(fake.url, transport) as client:
        await client.send_text(PHONE, "before")
        fake.set_cookie = "balancer=b7; Path=/"
        await client.send_text(PHONE, "sets it")
        await client.send_text(PHONE, "after")
    sent = [{k.lower(): v for k, v in call["headers"].items()}.get("cookie") for call in fake.calls]
    assert sent == [None, None, "balancer=b7"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_gzip_answer_is_decoded_once(fake: Any, transport: str) -> None:
    fake.gzip = True
    async with client_for(fake.url, transport) as client:
        assert (await client.send_text(PHONE, "hi")).message_id == "M1"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connections_are_pooled_and_reused(fake: Any, transport: str) -> None:
    async with client_for(fake.url, transport) as client:
        for n in range(10):
            await client.send_text(PHONE, f"m{n}")
    assert len(fake.calls) == 10
    assert len({call["port"] for call in fake.calls}) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_5xx_is_retried_the_same_way(fake: Any, transport: str) -> None:
    fake.fail_first = 2
    retried: List[str] = []
    async with client_for(
        fake.url, transport, retry=RetryPolicy(attempts=4), on_retry=retried.append
    ) as client:
        result = await client.send_text(PHONE, "hi")
    assert result.message_id == "M3" and len(retried) == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_connection_was_not_sent_and_is_retried(transport: str) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    retried: List[str] = []
    async with client_for(
        nowhere, transport, retry=RetryPolicy(attempts=3), on_retry=retried.append
    ) as client:
        with pytest.raises(TransportError) as caught:
            await client.send_text(PHONE, "hi")
    assert caught.value.request_sent is False
    assert len(retried) == 2
    assert_no_token(caught.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_read_timeout_may_have_been_sent_and_is_not_repeated(
    fake: Any, transport: str
) -> None:
    fake.delay = 1.0
    async with client_for(
        fake.url, transport, timeout=0.2, retry=RetryPolicy(attempts=3)
    ) as client:
        with pytest.raises(ZApiTimeout) as caught:
            await client.send_text(PHONE, "hi")
    assert caught.value.request_sent is True
    assert len(fake.calls) == 1  # never repeated: it may have reached the customer
    assert_no_token(caught.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_waiting_for_a_free_connection_too_long_was_not_sent(
    fake: Any, transport: str
) -> None:
    # One connection at most: while a slow send holds it, the next one times out waiting.
    fake.delay = 0.6
    timeout = httpx.Timeout(2.0, pool=0.2)
    if transport == "aiohttp":
        http = httpx.AsyncClient(timeout=timeout, transport=AiohttpTransport(max_connections=1))
    else:
        http = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1))
    credentials = ZApiCredentials(INSTANCE_ID, INSTANCE_TOKEN, CLIENT_TOKEN, base_url=fake.url)
    client = ZApiClient(credentials, http_client=http, retry=RetryPolicy(attempts=1))
    try:
        slow = asyncio.ensure_future(client.send_text(PHONE, "first"))
        await asyncio.sleep(0.1)
        with pytest.raises(ZApiTimeout) as caught:
            await client.send_text(PHONE, "second")
        assert caught.value.request_sent is False
        # aiohttp names the whole URL, token included, in this error: never passed on.
        assert_no_token(caught.value)
        assert (await slow).message_id == "M1"
    finally:
        await http.aclose()
    assert [call["body"]["message"] for call in fake.calls] == ["first"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_httpx_request_log_lines_carry_no_token(
    fake: Any, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with client_for(fake.url, transport) as client:
            await client.send_text(PHONE, "hi")
    assert caplog.records, "httpx logs each request whatever carries it"
    assert all(INSTANCE_TOKEN not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_proxy_variables_are_honoured(
    fake: Any, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake Z-API stands in for the proxy: a proxied http request names the real host.
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", fake.url)
    async with client_for("http://zapi.example.invalid", transport) as client:
        sent = await client.send_text(PHONE, "via the proxy")
    assert sent.message_id == "M1"
    assert fake.calls[0]["headers"]["host"] == "zapi.example.invalid"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_no_proxy_goes_direct(
    fake: Any, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with client_for(fake.url, transport) as client:
        sent = await client.send_text(PHONE, "direct")
    assert sent.message_id == "M1" and len(fake.calls) == 1


def test_an_unknown_transport_is_refused() -> None:
    credentials = ZApiCredentials(INSTANCE_ID, INSTANCE_TOKEN, CLIENT_TOKEN)
    with pytest.raises(ValueError, match="httpx, aiohttp"):
        ZApiClient(credentials, transport="curl")


async def test_the_aiohttp_session_is_made_in_the_running_loop_and_closed() -> None:
    transport = AiohttpTransport()
    assert "max_connections=50" in repr(transport)
    await transport.aclose()  # closing before any request is fine


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_ca_bundle_is_loaded_when_the_client_is_built_not_at_its_first_send(
    fake: Any, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # About 30 ms of parsing certifi's bundle: at the first send it would stall every webhook
    # waiting on the event loop. The channel builds its client in a worker thread instead.
    client = client_for(fake.url, transport)

    def refuse(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        raise AssertionError("a TLS context was made at a send")

    monkeypatch.setattr(ssl, "create_default_context", refuse)
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", refuse)
    async with client:
        assert (await client.send_text(PHONE, "first")).message_id == "M1"

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, List

import httpx
import pytest
import respx

from tests.conftest import API, CLIENT_TOKEN, INSTANCE_TOKEN, SECRETS
from zapi_channel.client import WEBHOOK_KINDS, ZApiClient, check_response
from zapi_channel.config import ZApiCredentials
from zapi_channel.errors import (
    InvalidCredentials,
    NotConnected,
    SendNotAccepted,
    TransportError,
    ZApiRequestError,
    ZApiResponseError,
    ZApiTimeout,
)
from zapi_channel.retry import RetryPolicy


class Sleeps(List[float]):
    """Records the waits between retries instead of sleeping."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(credentials: ZApiCredentials, sleeps: Sleeps) -> AsyncIterator[ZApiClient]:
    async with ZApiClient(credentials, sleep=sleeps) as zapi_client:
        yield zapi_client


def body_of(route: respx.Route) -> Any:
    return json.loads(route.calls.last.request.content)


async def test_every_call_carries_client_token_and_json_content_type(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["status"].mock(return_value=httpx.Response(200, json={"connected": True}))
    await client.status()
    await client.send_text("5511999999999", "hi")
    for route in ("status", "send-text"):
        headers = zapi[route].calls.last.request.headers
        assert headers["Client-Token"] == CLIENT_TOKEN
        assert headers["Content-Type"] == "application/json"


async def test_status_parses_connected_and_not_connected(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["status"].mock(
        side_effect=[
            httpx.Response(
                200,
                json={
                    "connected": True,
                    "error": "You are already connected.",
                    "smartphoneConnected": True,
                },
            ),
            httpx.Response(
                200,
                json={
                    "connected": False,
                    "error": "You are not connected.",
                    "smartphoneConnected": False,
                },
            ),
        ]
    )
    first = await client.status()
    second = await client.status()
    assert first.connected and first.smartphone_connected
    assert not second.connected and second.error == "You are not connected."


async def test_device_gives_the_paired_number(zapi: respx.MockRouter, client: ZApiClient) -> None:
    zapi["device"].mock(
        return_value=httpx.Response(
            200,
            json={
                "phone": "5511999999999",
                "name": "Shop",
                "isBusiness": True,
                "originalDevice": "iphone",
            },
        )
    )
    device = await client.device()
    assert (device.phone, device.name, device.is_business) == ("5511999999999", "Shop", True)


@pytest.mark.parametrize(
    ("method", "endpoint", "call"),
    [
        ("GET", "disconnect", lambda c: c.disconnect()),
        ("GET", "restart", lambda c: c.restart()),
        ("GET", "me", lambda c: c.me()),
    ],
)
async def test_instance_calls_use_zapi_verbs(
    zapi: respx.MockRouter, client: ZApiClient, method: str, endpoint: str, call: Any
) -> None:
    zapi[endpoint].mock(return_value=httpx.Response(200, json={"value": True}))
    await call(client)
    assert zapi[endpoint].calls.last.request.method == method


async def test_disconnect_reports_zapi_confirmation(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["disconnect"].mock(return_value=httpx.Response(200, json={"value": True}))
    assert await client.disconnect() is True


@pytest.mark.parametrize("kind", WEBHOOK_KINDS)
async def test_update_webhook_puts_the_url(
    zapi: respx.MockRouter, client: ZApiClient, kind: str
) -> None:
    assert await client.update_webhook(kind, "https://bot.example.com/hook") is True
    route = zapi[f"update-webhook-{kind}"]
    assert route.calls.last.request.method == "PUT"
    assert body_of(route) == {"value": "https://bot.example.com/hook"}


async def test_update_every_webhook_and_notify_sent_by_me(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    await client.update_every_webhook("https://bot.example.com/hook", notify_sent_by_me=True)
    await client.update_notify_sent_by_me(False)
    assert body_of(zapi["update-every-webhooks"]) == {
        "value": "https://bot.example.com/hook",
        "notifySentByMe": True,
    }
    assert body_of(zapi["update-notify-sent-by-me"]) == {"notifySentByMe": False}


async def test_send_text_body_and_result(zapi: respx.MockRouter, client: ZApiClient) -> None:
    result = await client.send_text("5511999999999", "Olá *mundo*", delay_typing=3)
    assert body_of(zapi["send-text"]) == {
        "phone": "5511999999999",
        "message": "Olá *mundo*",
        "delayTyping": 3,
    }
    assert result.message_id == "3999984263738042930CD6ECDE9VDWSA"
    assert zapi["send-text"].calls.last.request.method == "POST"


async def test_send_bodies_match_zapi_documentation(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    phone = "81896604192873@lid"
    await client.send_image(phone, "https://x.test/a.png", caption="A")
    await client.send_audio(phone, "https://x.test/a.ogg")
    await client.send_video(phone, "https://x.test/a.mp4", caption="V")
    await client.send_document(phone, "https://x.test/f.pdf", ".PDF", file_name="f.pdf")
    await client.send_link(phone, "see https://x.test", "https://x.test", title="T")
    await client.send_location(
        phone, title="Shop", address="Av. Paulista", latitude="-23.5", longitude="-46.6"
    )
    await client.send_reaction(phone, "MSGID", "👍")
    await client.send_button_list(phone, "Pick", [{"id": "/a", "label": "A"}])
    await client.send_option_list(
        phone,
        "Pick",
        title="T",
        button_label="Open",
        options=[{"id": "/a", "title": "A", "description": ""}],
    )
    await client.send_button_actions(
        phone, "Call", [{"id": "1", "type": "CALL", "label": "Call", "phone": "551100"}]
    )
    assert body_of(zapi["send-image"]) == {
        "phone": phone,
        "image": "https://x.test/a.png",
        "caption": "A",
    }
    assert body_of(zapi["send-audio"]) == {"phone": phone, "audio": "https://x.test/a.ogg"}
    assert body_of(zapi["send-video"])["video"] == "https://x.test/a.mp4"
    assert zapi["send-document"].calls.last.request.url.path.endswith("/send-document/pdf")
    assert body_of(zapi["send-document"]) == {
        "phone": phone,
        "document": "https://x.test/f.pdf",
        "fileName": "f.pdf",
    }
    assert body_of(zapi["send-link"])["linkUrl"] == "https://x.test"
    assert body_of(zapi["send-location"])["latitude"] == "-23.5"
    assert body_of(zapi["send-reaction"]) == {
        "phone": phone,
        "messageId": "MSGID",
        "reaction": "👍",
    }
    assert body_of(zapi["send-button-list"])["buttonList"] == {
        "buttons": [{"id": "/a", "label": "A"}]
    }
    assert body_of(zapi["send-option-list"])["optionList"]["buttonLabel"] == "Open"
    assert body_of(zapi["send-button-actions"])["buttonActions"][0]["type"] == "CALL"


async def test_document_extension_must_be_alphanumeric(client: ZApiClient) -> None:
    with pytest.raises(ValueError):
        await client.send_document("5511", "https://x.test/f", "../status")


async def test_read_message_accepts_204(zapi: respx.MockRouter, client: ZApiClient) -> None:
    await client.read_message("5511999999999", "ABC")
    assert body_of(zapi["read-message"]) == {"phone": "5511999999999", "messageId": "ABC"}


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"value": False}),
        httpx.Response(200, json={"zaapId": "Z", "id": "I"}),
        httpx.Response(200, json={"messageId": ""}),
        httpx.Response(201, content=b""),
    ],
)
async def test_a_send_without_message_id_is_a_failure(
    zapi: respx.MockRouter, client: ZApiClient, answer: httpx.Response
) -> None:
    zapi["send-text"].mock(return_value=answer)
    with pytest.raises(SendNotAccepted) as caught:
        await client.send_text("5511999999999", "hi")
    assert caught.value.endpoint == "send-text"


async def test_403_with_zapi_body_is_invalid_credentials_without_the_token(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["status"].mock(
        return_value=httpx.Response(403, json={"error": f"Client-Token {CLIENT_TOKEN} not allowed"})
    )
    with pytest.raises(InvalidCredentials) as caught:
        await client.status()
    assert caught.value.status_code == 403
    assert CLIENT_TOKEN not in str(caught.value)
    assert CLIENT_TOKEN not in (caught.value.zapi_error or "")
    assert "not allowed" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "your client-token is not configured"),
        (404, "Instance not found"),
        (400, "Instance not found"),
        (200, "Instance not found"),
        (401, "Unauthorized"),
    ],
)
async def test_credential_failures_map_to_invalid_credentials(
    zapi: respx.MockRouter, client: ZApiClient, status: int, error: str
) -> None:
    zapi["status"].mock(return_value=httpx.Response(status, json={"error": error}))
    with pytest.raises(InvalidCredentials):
        await client.status()


async def test_not_connected_answer_on_send_is_not_connected(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["send-text"].mock(
        return_value=httpx.Response(400, json={"error": "You are not connected."})
    )
    with pytest.raises(NotConnected):
        await client.send_text("5511999999999", "hi")


async def test_other_errors_carry_status_and_zapi_text(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["send-text"].mock(return_value=httpx.Response(500, json={"error": "Internal failure"}))
    with pytest.raises(ZApiResponseError) as caught:
        await client.send_text("5511999999999", "hi")
    assert (caught.value.status_code, caught.value.zapi_error) == (500, "Internal failure")
    assert not isinstance(caught.value, InvalidCredentials)


async def test_non_json_error_body_is_kept_short(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["send-text"].mock(return_value=httpx.Response(502, text="<html>" + "x" * 5000))
    with pytest.raises(ZApiResponseError) as caught:
        await client.send_text("5511999999999", "hi")
    assert len(str(caught.value)) < 400


async def test_connect_timeout_means_the_request_was_not_sent(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["send-text"].mock(side_effect=httpx.ConnectTimeout("timed out"))
    with pytest.raises(ZApiTimeout) as caught:
        await client.send_text("5511999999999", "hi")
    assert caught.value.request_sent is False


async def test_read_timeout_means_the_outcome_is_unknown(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["send-text"].mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(ZApiTimeout) as caught:
        await client.send_text("5511999999999", "hi")
    assert caught.value.request_sent is True


async def test_connection_refused_is_a_transport_error_without_the_url(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["status"].mock(side_effect=httpx.ConnectError(f"cannot connect to {API}/status"))
    with pytest.raises(TransportError) as caught:
        await client.status()
    assert INSTANCE_TOKEN not in str(caught.value)
    assert caught.value.request_sent is False


async def test_injected_http_client_is_used_and_not_closed(credentials: ZApiCredentials) -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"connected": True})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with ZApiClient(credentials, http_client=http) as client:
        await client.status()
    assert seen and seen[0].endswith("/status")
    assert not http.is_closed
    await http.aclose()


async def test_httpx_request_log_lines_do_not_carry_the_instance_token(
    zapi: respx.MockRouter, client: ZApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    zapi["status"].mock(return_value=httpx.Response(200, json={"connected": True}))
    with caplog.at_level(logging.DEBUG):
        await client.status()
        await client.send_text("5511999999999", "hi")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "status" in text
    for secret in SECRETS:
        assert secret not in text


def test_check_response_returns_decoded_body_on_success() -> None:
    response = httpx.Response(200, json={"value": True})
    assert check_response("restart", response) == {"value": True}


OK = httpx.Response(200, json={"messageId": "M1"})


@pytest.mark.parametrize("status", [502, 503, 504, 429])
async def test_transient_statuses_are_retried_until_success(
    zapi: respx.MockRouter, client: ZApiClient, sleeps: Sleeps, status: int
) -> None:
    zapi["send-text"].mock(side_effect=[httpx.Response(status), httpx.Response(status), OK])
    result = await client.send_text("5511999999999", "hi")
    assert result.message_id == "M1"
    assert zapi["send-text"].call_count == 3
    assert len(sleeps) == 2
    assert all(0 <= wait <= client.retry.max_seconds for wait in sleeps)


async def test_retry_after_is_honoured(
    zapi: respx.MockRouter, client: ZApiClient, sleeps: Sleeps
) -> None:
    zapi["send-text"].mock(side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), OK])
    await client.send_text("5511999999999", "hi")
    assert sleeps == [7.0]


async def test_a_huge_retry_after_is_capped(
    zapi: respx.MockRouter, client: ZApiClient, sleeps: Sleeps
) -> None:
    zapi["send-text"].mock(side_effect=[httpx.Response(503, headers={"Retry-After": "3600"}), OK])
    await client.send_text("5511999999999", "hi")
    assert sleeps == [client.retry.max_retry_after]


@pytest.mark.parametrize("status", [400, 403, 404, 500])
async def test_client_errors_are_not_retried(
    zapi: respx.MockRouter, client: ZApiClient, sleeps: Sleeps, status: int
) -> None:
    zapi["send-text"].mock(return_value=httpx.Response(status, json={"error": "no"}))
    with pytest.raises(ZApiRequestError):
        await client.send_text("5511999999999", "hi")
    assert zapi["send-text"].call_count == 1
    assert sleeps == []


async def test_a_refused_connection_is_retried(zapi: respx.MockRouter, client: ZApiClient) -> None:
    zapi["send-text"].mock(side_effect=[httpx.ConnectError("refused"), OK])
    assert (await client.send_text("5511999999999", "hi")).message_id == "M1"


async def test_a_read_timeout_is_never_resent(zapi: respx.MockRouter, client: ZApiClient) -> None:
    zapi["send-text"].mock(side_effect=[httpx.ReadTimeout("slow"), OK])
    with pytest.raises(ZApiTimeout):
        await client.send_text("5511999999999", "hi")
    assert zapi["send-text"].call_count == 1


async def test_a_missing_message_id_is_not_retried(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["send-text"].mock(side_effect=[httpx.Response(200, json={"value": False}), OK])
    with pytest.raises(SendNotAccepted):
        await client.send_text("5511999999999", "hi")
    assert zapi["send-text"].call_count == 1


async def test_retries_stop_at_the_bound_with_the_last_error(
    zapi: respx.MockRouter, credentials: ZApiCredentials, sleeps: Sleeps
) -> None:
    zapi["send-text"].mock(return_value=httpx.Response(503, json={"error": "busy"}))
    async with ZApiClient(credentials, retry=RetryPolicy(attempts=3), sleep=sleeps) as client:
        with pytest.raises(ZApiResponseError) as caught:
            await client.send_text("5511999999999", "hi")
    assert caught.value.status_code == 503
    assert zapi["send-text"].call_count == 3
    assert len(sleeps) == 2


class _ImportSpy:
    """A meta-path finder that finds nothing and records what was looked for.

    Successful imports are served from ``sys.modules`` without asking any finder, so only an
    import that fails (and is therefore retried on every call) reaches it.
    """

    def __init__(self) -> None:
        self.names: List[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self.names.append(name)


async def test_a_send_over_a_real_socket_searches_for_no_module(
    credentials: ZApiCredentials,
) -> None:
    # httpcore asks for sniffio on every lock it builds; without it installed each send searched
    # sys.path several times, a quarter of the client's CPU per send (docs/benchmarks.md).
    import sys

    from sanic import response
    from sanic.request import Request
    from sanic.response import HTTPResponse

    from tests.livesanic import new_app, serving

    app = new_app("client")

    async def send_text(request: Request, instance: str, token: str) -> HTTPResponse:
        return response.json({"zaapId": "Z1", "messageId": "M1", "id": "M1"})

    app.add_route(send_text, "/instances/<instance>/token/<token>/send-text", methods=["POST"])
    spy = _ImportSpy()
    async with serving(app) as url:
        live = ZApiCredentials(
            instance_id=credentials.instance_id,
            instance_token=credentials.instance_token,
            client_token=credentials.client_token,
            base_url=url,
        )
        async with ZApiClient(live) as client:
            # The first sends import what they need for good; only failing imports repeat.
            for _ in range(2):
                await client.send_text("5511999999999", "warm-up")
            sys.meta_path.insert(0, spy)
            try:
                for _ in range(3):
                    assert (await client.send_text("5511999999999", "hi")).message_id == "M1"
            finally:
                sys.meta_path.remove(spy)
    assert spy.names == []


@pytest.mark.parametrize(
    "preset, expected",
    [
        (logging.NOTSET, logging.WARNING),
        (logging.INFO, logging.INFO),
        (logging.DEBUG, logging.DEBUG),
    ],
)
def test_httpx_request_lines_are_quieted_unless_configured(preset: int, expected: int) -> None:
    from zapi_channel.client import quiet_httpx_request_log

    httpx_logger = logging.getLogger("httpx")
    before = httpx_logger.level
    try:
        httpx_logger.setLevel(preset)
        quiet_httpx_request_log()
        assert httpx_logger.level == expected
    finally:
        httpx_logger.setLevel(before)


async def test_each_call_is_logged_by_endpoint_name_at_debug(
    zapi: respx.MockRouter, client: ZApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="zapi_channel.client"):
        await client.send_text("5511999999999", "hi")
        await client.send_text("5511999999999", "again")
    lines = [r.getMessage() for r in caplog.records if r.name == "zapi_channel.client"]
    assert len(lines) == 2 and all("POST send-text -> 200" in line for line in lines)
    assert not any(secret in line for line in lines for secret in SECRETS)


# -- the queue -------------------------------------------------------------------------------------


def queued(n: int) -> Any:
    return {
        "ZaapId": f"Z{n}",
        "_id": f"Z{n}",
        "MessageId": f"M{n}",
        "Phone": "5511999999999",
        "Message": f"message {n}",
        "Created": 1774968031776 + n,
    }


async def test_queue_pages_through_post_queue_with_the_paging_state(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["queue"].mock(
        side_effect=[
            httpx.Response(
                200, json={"messages": [queued(1), queued(2)], "pagingState": "p2", "hasMore": True}
            ),
            httpx.Response(200, json={"messages": [queued(3)], "hasMore": False}),
        ]
    )
    contents = await client.queue()
    assert contents.size == 3
    assert [m.zaap_id for m in contents.messages] == ["Z1", "Z2", "Z3"]
    assert contents.messages[0].created == pytest.approx(1774968031.777)
    bodies = [json.loads(call.request.content) for call in zapi["queue"].calls]
    assert bodies == [{"pageSize": 30}, {"pageSize": 30, "pagingState": "p2"}]


async def test_queue_stops_at_its_limit_even_if_z_api_says_there_is_more(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    page = {"messages": [queued(n) for n in range(30)], "pagingState": "again", "hasMore": True}
    zapi["queue"].mock(return_value=httpx.Response(200, json=page))
    contents = await client.queue(limit=60)
    assert (contents.size, zapi["queue"].call_count) == (60, 2)


async def test_queue_falls_back_to_get_queue_on_an_instance_without_post(
    zapi: respx.MockRouter, client: ZApiClient
) -> None:
    zapi["queue"].mock(return_value=httpx.Response(405, json={"error": "Method Not Allowed"}))
    # The older docs type "size" as a string and list everything.
    zapi["queue (older docs)"].mock(
        return_value=httpx.Response(200, json={"size": "2", "messages": [queued(1), {"odd": 1}]})
    )
    contents = await client.queue()
    assert contents.size == 2
    assert [m.message_id for m in contents.messages] == ["M1"]


async def test_queue_does_not_hide_other_errors(zapi: respx.MockRouter, client: ZApiClient) -> None:
    zapi["queue"].mock(return_value=httpx.Response(500, json={"error": "boom"}))
    with pytest.raises(ZApiResponseError):
        await client.queue()
    assert not zapi["queue (older docs)"].called


async def test_clear_queue_deletes_it(zapi: respx.MockRouter, client: ZApiClient) -> None:
    await client.clear_queue()
    assert zapi["delete queue"].called


@pytest.mark.parametrize(
    ("answer", "confirmed"),
    [({"value": True}, True), ({"success": True}, True), ({"value": False}, False), (None, False)],
)
async def test_update_queue_settings_sends_the_inverse_flag(
    zapi: respx.MockRouter, client: ZApiClient, answer: Any, confirmed: bool
) -> None:
    zapi["update-queue-settings"].mock(return_value=httpx.Response(200, json=answer))
    assert await client.update_queue_settings(enqueue_when_disconnected=False) is confirmed
    assert body_of(zapi["update-queue-settings"]) == {"disableEnqueueWhenDisconnected": True}

"""The Z-API client: the only code in zapi-channel that speaks HTTP.

One pooled :class:`httpx.AsyncClient` per channel, explicit timeouts, ``Client-Token`` and
``Content-Type: application/json`` on every call. Every answer goes through :func:`check_response`,
the single place where HTTP statuses and Z-API's error bodies become :mod:`zapi_channel.errors`.

Tests inject their own ``httpx.AsyncClient`` (or use respx) instead of patching anything::

    client = ZApiClient(credentials, http_client=httpx.AsyncClient(transport=transport))
    result = await client.send_text("5511999999999", "Olá!")
    result.message_id
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import httpx

from zapi_channel.config import HTTP_TRANSPORTS, ZApiCredentials
from zapi_channel.errors import (
    InvalidCredentials,
    NotConnected,
    SendNotAccepted,
    TransportError,
    ZApiResponseError,
    ZApiTimeout,
)
from zapi_channel.redaction import install_log_redaction, redact
from zapi_channel.retry import RetryPolicy
from zapi_channel.transport import AiohttpTransport

logger = logging.getLogger(__name__)

install_log_redaction()


def quiet_httpx_request_log() -> None:
    """Raise httpx's logger to WARNING, unless someone has set its level already.

    httpx logs every request at INFO (``HTTP Request: POST <url> "HTTP/1.1 200 OK"``): under
    ``rasa run``'s default INFO level that is two lines per customer message, each costing about
    a tenth of a send's CPU (docs/benchmarks.md), and each carrying the token-bearing URL (the
    filter above redacts it). :meth:`ZApiClient._call` logs the endpoint name and status at DEBUG
    instead. Rasa quiets chatty libraries the same way; a level set on purpose is left alone.
    """
    httpx_logger = logging.getLogger("httpx")
    if httpx_logger.level == logging.NOTSET:
        httpx_logger.setLevel(logging.WARNING)


quiet_httpx_request_log()

DEFAULT_TIMEOUT = 15.0
#: Connections to Z-API at most, on either transport.
MAX_CONNECTIONS = 50
#: Z-API keeps at most this many sends for a disconnected phone (docs: the queue's introduction).
QUEUE_LIMIT = 1000
#: The largest ``POST /queue`` page Z-API serves.
QUEUE_PAGE_SIZE = 30
#: Parsed URLs kept per client: the fixed endpoints, with room for custom ``send-*`` ones.
_URL_CACHE_SIZE = 64

#: The ``update-webhook-*`` endpoints, by the callback they configure.
WEBHOOK_KINDS = (
    "received",
    "delivery",
    "message-status",
    "connected",
    "disconnected",
    "chat-presence",
)

#: The ``GET me`` field that shows where each kind of callback points (Z-API's "me" page).
CALLBACK_URL_FIELDS: Mapping[str, str] = {
    "received": "receivedCallbackUrl",
    "delivery": "deliveryCallbackUrl",
    "message-status": "messageStatusCallbackUrl",
    "connected": "connectedCallbackUrl",
    "disconnected": "disconnectedCallbackUrl",
    "chat-presence": "presenceChatCallbackUrl",
}


class _CookiesWhenSet(httpx.Cookies):
    """httpx's cookie jar, updated only by a response that sets a cookie.

    httpx updates the jar from every response, and to do so builds a ``urllib`` request and
    response stand-in each time: about a seventh of a send's CPU on the aiohttp transport
    (docs/benchmarks.md, section 4). Z-API authenticates by the URL's token and the
    ``Client-Token`` header, and its docs say nothing of cookies, but a proxy in front of it
    may set one: a ``Set-Cookie`` answer is kept exactly as httpx keeps it, and sent back.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class _HttpClient(httpx.AsyncClient):
    """The pooled client :class:`ZApiClient` builds for itself: httpx's, with the jar above."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.cookies = httpx.Cookies()  # through the setter below, so the jar is ours

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._jar = _CookiesWhenSet(httpx.Cookies(cookies).jar)


@dataclass(frozen=True)
class InstanceStatus:
    """Answer of ``GET status``: https://developer.z-api.io/en/instance/status"""

    connected: bool
    smartphone_connected: Optional[bool]
    error: Optional[str]


@dataclass(frozen=True)
class DeviceInfo:
    """Answer of ``GET device``: the phone paired with the instance."""

    phone: str
    name: Optional[str]
    is_business: Optional[bool]
    original_device: Optional[str]


@dataclass(frozen=True)
class QueuedMessage:
    """One send waiting in Z-API's queue (``/queue``), as much of it as Z-API lists."""

    zaap_id: str
    message_id: Optional[str]
    phone: str
    text: str
    #: When it was queued, in epoch seconds (Z-API lists epoch milliseconds).
    created: Optional[float]


@dataclass(frozen=True)
class QueueContents:
    """What waits in Z-API's queue: ``size`` counts everything, ``messages`` may be a prefix."""

    size: int
    messages: Tuple[QueuedMessage, ...]


@dataclass(frozen=True)
class SendResult:
    """A send that Z-API accepted: queued, not yet delivered."""

    message_id: str
    zaap_id: Optional[str]
    id: Optional[str]


def _error_text(body: Any) -> Optional[str]:
    if isinstance(body, Mapping):
        for key in ("error", "message"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
    if isinstance(body, str) and body.strip():
        return body.strip()[:200]
    return None


def _decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def _looks_like_bad_credentials(error: str) -> bool:
    lowered = error.lower()
    return "client-token" in lowered or "instance not found" in lowered


def _looks_not_connected(error: str) -> bool:
    lowered = error.lower()
    # Z-API's documented wording for an unpaired instance ("You are not connected.", "You need to
    # restore the session."); what a send answers in that state is not documented, so both the
    # status wording and a generic "not connected" are recognised.
    return "not connected" in lowered or "restore the session" in lowered


def check_response(
    endpoint: str,
    response: httpx.Response,
    *,
    secrets: Sequence[str] = (),
) -> Any:
    """Return the decoded body of a successful answer, or raise the matching error.

    ``secrets`` are removed from Z-API's error text: a 403 answers ``"Client-Token <the token> not
    allowed"``, which must not end up in an exception message or a log.
    """
    body = _decode(response)
    status = response.status_code
    raw_error = _error_text(body) if (status >= 400 or isinstance(body, Mapping)) else None
    error = redact(raw_error, secrets) if raw_error else None

    if status in (401, 403) or (
        status in (400, 404) and error is not None and _looks_like_bad_credentials(error)
    ):
        raise InvalidCredentials(
            f"Z-API refused the credentials on {endpoint} (HTTP {status}: {error or 'no details'})",
            endpoint=endpoint,
            status_code=status,
            zapi_error=error,
        )
    if status >= 400:
        if error is not None and _looks_not_connected(error):
            raise NotConnected(
                f"The Z-API instance is not connected ({endpoint}: {error})",
                endpoint=endpoint,
                status_code=status,
                zapi_error=error,
            )
        raise ZApiResponseError(
            f"Z-API answered HTTP {status} on {endpoint}: {error or 'no details'}",
            endpoint=endpoint,
            status_code=status,
            zapi_error=error,
            retry_after=_retry_after(response),
        )
    # Seen in practice: a wrong instance answered with HTTP 200 and {"error": "Instance not found"}.
    if error is not None and isinstance(body, Mapping) and "instance not found" in error.lower():
        raise InvalidCredentials(
            f"Z-API refused the credentials on {endpoint} ({error})",
            endpoint=endpoint,
            status_code=status,
            zapi_error=error,
        )
    return body


def _retry_after(response: httpx.Response) -> Optional[float]:
    """Seconds from a ``Retry-After`` header (delta-seconds form; an HTTP date is ignored)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _send_result(endpoint: str, body: Any, status: int, secrets: Sequence[str]) -> SendResult:
    # Z-API has been seen answering 200 with {"value": false} or with no messageId when it did not
    # queue the message: only a messageId proves the send was accepted.
    if isinstance(body, Mapping):
        message_id = body.get("messageId")
        if isinstance(message_id, str) and message_id:
            zaap = body.get("zaapId")
            ident = body.get("id")
            return SendResult(
                message_id=message_id,
                zaap_id=zaap if isinstance(zaap, str) else None,
                id=ident if isinstance(ident, str) else None,
            )
    error = _error_text(body)
    if error is not None and _looks_not_connected(error):
        raise NotConnected(
            f"The Z-API instance is not connected ({endpoint}: {redact(error, secrets)})",
            endpoint=endpoint,
            status_code=status,
            zapi_error=redact(error, secrets),
        )
    raise SendNotAccepted(
        f"Z-API did not accept the message on {endpoint} (HTTP {status}, no messageId"
        + (f": {redact(error, secrets)})" if error else ")"),
        endpoint=endpoint,
        status_code=status,
        zapi_error=redact(error, secrets) if error else None,
    )


class ZApiClient:
    """Async client for one Z-API instance.

    Owns its ``httpx.AsyncClient`` unless one is injected; call :meth:`aclose` (or use
    ``async with``) when done.
    """

    def __init__(
        self,
        credentials: ZApiCredentials,
        *,
        http_client: Optional[httpx.AsyncClient] = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        sleep: Optional[Callable[[float], Awaitable[Any]]] = None,
        on_retry: Optional[Callable[[str], None]] = None,
        transport: str = "httpx",
    ) -> None:
        self.credentials = credentials
        #: Sends are retried on transient failures; one attempt means no retry.
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._on_retry = on_retry
        self._owns_client = http_client is None
        self._urls: Dict[str, httpx.URL] = {}
        if transport not in HTTP_TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(HTTP_TRANSPORTS)}")
        # A client of our own carries the headers itself: httpx merges a request's headers into
        # the client's on every call, which costs more than sending them.
        self._request_headers: Optional[Dict[str, str]] = self._headers if http_client else None
        self._http = http_client or _HttpClient(
            headers=self._headers,
            # Connecting should be quick; Z-API itself may take a while to answer a send.
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=20),
            # httpx's API either way; "aiohttp" only moves the bytes (zapi_channel.transport).
            transport=AiohttpTransport(max_connections=MAX_CONNECTIONS)
            if transport == "aiohttp"
            else None,
        )

    def __repr__(self) -> str:
        return f"ZApiClient({self.credentials!r})"

    def _url(self, endpoint: str) -> httpx.URL:
        # httpx validates a URL string character by character on every request: parse each
        # endpoint's URL once (a twentieth of a send's CPU).
        url = self._urls.get(endpoint)
        if url is None:
            url = httpx.URL(self.credentials.url_for(endpoint))
            if len(self._urls) < _URL_CACHE_SIZE:
                self._urls[endpoint] = url
        return url

    async def __aenter__(self) -> ZApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.aclose()

    @property
    def _headers(self) -> Dict[str, str]:
        return {
            "Client-Token": self.credentials.client_token,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    async def request(
        self, method: str, endpoint: str, body: Optional[Mapping[str, Any]] = None
    ) -> Any:
        """Call ``endpoint`` and return its decoded JSON answer."""
        _, answer = await self._call(method, endpoint, body)
        return answer

    async def _call(
        self, method: str, endpoint: str, body: Optional[Mapping[str, Any]]
    ) -> Tuple[int, Any]:
        """The one boundary where transport failures become :class:`TransportError` and HTTP
        answers go through :func:`check_response`. Only the endpoint name is ever logged.
        """
        url = self._url(endpoint)
        secrets = self.credentials.secrets()
        started = time.perf_counter()
        try:
            response = await self._http.request(
                method,
                url,
                headers=self._request_headers,
                # Z-API answers 415 to a call without a JSON content type, GETs included.
                content=_json_bytes(body) if body is not None else None,
            )
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ZApiTimeout(
                f"Z-API did not accept a connection in time ({endpoint})",
                endpoint=endpoint,
                request_sent=False,
            ) from exc
        except httpx.TimeoutException as exc:
            raise ZApiTimeout(
                f"Z-API did not answer in time ({endpoint}); the request may have gone through",
                endpoint=endpoint,
                request_sent=True,
            ) from exc
        except httpx.ConnectError as exc:
            raise TransportError(
                f"Could not reach Z-API ({endpoint}): {redact(str(exc), secrets)}",
                endpoint=endpoint,
                request_sent=False,
            ) from exc
        except httpx.TransportError as exc:
            raise TransportError(
                f"The connection to Z-API broke ({endpoint}): {type(exc).__name__}",
                endpoint=endpoint,
                request_sent=True,
            ) from exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.debug(
            "Z-API %s %s -> %s in %.0f ms", method, endpoint, response.status_code, elapsed_ms
        )
        return response.status_code, check_response(endpoint, response, secrets=secrets)

    async def send(self, endpoint: str, body: Mapping[str, Any]) -> SendResult:
        """POST a message to a ``send-*`` endpoint; succeeds only when Z-API returns a messageId.

        Transient failures are retried by :attr:`retry`; what is raised is the last failure.
        """

        async def attempt() -> SendResult:
            status, answer = await self._call("POST", endpoint, body)
            return _send_result(endpoint, answer, status, self.credentials.secrets())

        return await self.retry.run(
            attempt, endpoint=endpoint, sleep=self._sleep, on_retry=self._on_retry
        )

    # -- instance -------------------------------------------------------------------------------

    async def status(self) -> InstanceStatus:
        body = await self.request("GET", "status")
        data = body if isinstance(body, Mapping) else {}
        smartphone = data.get("smartphoneConnected")
        error = data.get("error")
        return InstanceStatus(
            connected=data.get("connected") is True,
            smartphone_connected=smartphone if isinstance(smartphone, bool) else None,
            error=error if isinstance(error, str) and error else None,
        )

    async def device(self) -> DeviceInfo:
        body = await self.request("GET", "device")
        data = body if isinstance(body, Mapping) else {}
        name = data.get("name")
        business = data.get("isBusiness")
        original = data.get("originalDevice")
        return DeviceInfo(
            phone=str(data.get("phone") or ""),
            name=name if isinstance(name, str) else None,
            is_business=business if isinstance(business, bool) else None,
            original_device=original if isinstance(original, str) else None,
        )

    async def me(self) -> Dict[str, Any]:
        body = await self.request("GET", "me")
        return dict(body) if isinstance(body, Mapping) else {}

    async def disconnect(self) -> bool:
        return _value_true(await self.request("GET", "disconnect"))

    async def restart(self) -> bool:
        return _value_true(await self.request("GET", "restart"))

    # -- webhooks -------------------------------------------------------------------------------

    async def update_webhook(self, kind: str, url: str) -> bool:
        """``PUT update-webhook-{kind}``; Z-API accepts only https URLs."""
        if kind not in WEBHOOK_KINDS:
            raise ValueError(f"unknown webhook kind {kind!r}; known: {', '.join(WEBHOOK_KINDS)}")
        return _value_true(await self.request("PUT", f"update-webhook-{kind}", {"value": url}))

    async def update_every_webhook(self, url: str, *, notify_sent_by_me: bool = False) -> bool:
        body = {"value": url, "notifySentByMe": notify_sent_by_me}
        return _value_true(await self.request("PUT", "update-every-webhooks", body))

    async def update_notify_sent_by_me(self, enabled: bool) -> bool:
        body = {"notifySentByMe": enabled}
        return _value_true(await self.request("PUT", "update-notify-sent-by-me", body))

    # -- the queue ------------------------------------------------------------------------------

    async def update_queue_settings(self, *, enqueue_when_disconnected: bool) -> bool:
        """``PUT update-queue-settings``; ``True`` when Z-API confirms the change.

        What it answers is not documented: ``{"value": true}`` (Z-API's usual) and
        ``{"success": true}`` (seen in other clients' code) both count as confirmed.
        """
        body = {"disableEnqueueWhenDisconnected": not enqueue_when_disconnected}
        answer = await self.request("PUT", "update-queue-settings", body)
        return isinstance(answer, Mapping) and (
            answer.get("value") is True or answer.get("success") is True
        )

    async def queue(self, *, limit: int = QUEUE_LIMIT) -> QueueContents:
        """What waits in Z-API's queue, paging through at most ``limit`` messages.

        Z-API's docs describe it two ways: ``POST /queue`` answers pages (``pageSize``,
        ``pagingState``, ``hasMore``), and an older page ``GET /queue`` answers everything with
        its ``size``. POST is asked first; an instance that answers it 404 or 405 is asked GET.
        """
        try:
            answer = await self.request("POST", "queue", {"pageSize": QUEUE_PAGE_SIZE})
        except ZApiResponseError as exc:
            if exc.status_code not in (404, 405):
                raise
            return _queue_contents(await self.request("GET", "queue"))
        listed: List[QueuedMessage] = []
        # Z-API keeps at most 1,000 queued sends: the page count is bounded either way.
        for _ in range(limit // QUEUE_PAGE_SIZE + 2):
            page = _queue_contents(answer)
            listed += page.messages
            state = answer.get("pagingState") if isinstance(answer, Mapping) else None
            more = isinstance(answer, Mapping) and answer.get("hasMore") is True
            if not more or not isinstance(state, str) or not state or len(listed) >= limit:
                break
            body = {"pageSize": QUEUE_PAGE_SIZE, "pagingState": state}
            answer = await self.request("POST", "queue", body)
        # POST's pages carry no total: the size is what was listed.
        return QueueContents(len(listed), tuple(listed[:limit]))

    async def clear_queue(self) -> None:
        """``DELETE /queue``: drop every send Z-API still holds for this instance."""
        await self.request("DELETE", "queue")

    # -- sending --------------------------------------------------------------------------------

    async def send_text(
        self,
        phone: str,
        message: str,
        *,
        delay_typing: Optional[int] = None,
        delay_message: Optional[int] = None,
        reply_to: Optional[str] = None,
    ) -> SendResult:
        body: Dict[str, Any] = {"phone": phone, "message": message}
        _put(body, delayTyping=delay_typing, delayMessage=delay_message, messageId=reply_to)
        return await self.send("send-text", body)

    async def send_image(
        self,
        phone: str,
        image: str,
        *,
        caption: Optional[str] = None,
        delay_message: Optional[int] = None,
        view_once: Optional[bool] = None,
    ) -> SendResult:
        body: Dict[str, Any] = {"phone": phone, "image": image}
        _put(body, caption=caption, delayMessage=delay_message, viewOnce=view_once)
        return await self.send("send-image", body)

    async def send_audio(
        self, phone: str, audio: str, *, delay_typing: Optional[int] = None
    ) -> SendResult:
        body: Dict[str, Any] = {"phone": phone, "audio": audio}
        _put(body, delayTyping=delay_typing)
        return await self.send("send-audio", body)

    async def send_video(
        self, phone: str, video: str, *, caption: Optional[str] = None
    ) -> SendResult:
        body: Dict[str, Any] = {"phone": phone, "video": video}
        _put(body, caption=caption)
        return await self.send("send-video", body)

    async def send_document(
        self,
        phone: str,
        document: str,
        extension: str,
        *,
        file_name: Optional[str] = None,
        caption: Optional[str] = None,
    ) -> SendResult:
        extension = extension.lower().lstrip(".")
        if not extension.isalnum():
            raise ValueError(f"a document extension is letters and digits, not {extension!r}")
        body: Dict[str, Any] = {"phone": phone, "document": document}
        _put(body, fileName=file_name, caption=caption)
        return await self.send(f"send-document/{extension}", body)

    async def send_link(
        self,
        phone: str,
        message: str,
        link_url: str,
        *,
        image: Optional[str] = None,
        title: Optional[str] = None,
        description: Optional[str] = None,
    ) -> SendResult:
        body: Dict[str, Any] = {"phone": phone, "message": message, "linkUrl": link_url}
        _put(body, image=image, title=title, linkDescription=description)
        return await self.send("send-link", body)

    async def send_location(
        self, phone: str, *, title: str, address: str, latitude: str, longitude: str
    ) -> SendResult:
        body = {
            "phone": phone,
            "title": title,
            "address": address,
            "latitude": str(latitude),
            "longitude": str(longitude),
        }
        return await self.send("send-location", body)

    async def send_reaction(self, phone: str, message_id: str, reaction: str) -> SendResult:
        body = {"phone": phone, "messageId": message_id, "reaction": reaction}
        return await self.send("send-reaction", body)

    async def send_button_list(
        self, phone: str, message: str, buttons: Sequence[Mapping[str, str]]
    ) -> SendResult:
        body = {"phone": phone, "message": message, "buttonList": {"buttons": list(buttons)}}
        return await self.send("send-button-list", body)

    async def send_option_list(
        self,
        phone: str,
        message: str,
        *,
        title: str,
        button_label: str,
        options: Sequence[Mapping[str, str]],
    ) -> SendResult:
        body = {
            "phone": phone,
            "message": message,
            "optionList": {"title": title, "buttonLabel": button_label, "options": list(options)},
        }
        return await self.send("send-option-list", body)

    async def send_button_actions(
        self, phone: str, message: str, actions: Sequence[Mapping[str, str]]
    ) -> SendResult:
        body = {"phone": phone, "message": message, "buttonActions": list(actions)}
        return await self.send("send-button-actions", body)

    async def read_message(self, phone: str, message_id: str) -> None:
        """Mark a customer's message as read (Z-API answers 204)."""
        await self.request("POST", "read-message", {"phone": phone, "messageId": message_id})


def _queue_contents(body: Any) -> QueueContents:
    data = body if isinstance(body, Mapping) else {}
    entries = data.get("messages")
    listed: List[QueuedMessage] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        zaap_id = entry.get("ZaapId") or entry.get("_id")
        if not isinstance(zaap_id, str):
            continue
        message_id = entry.get("MessageId")
        created = entry.get("Created")
        listed.append(
            QueuedMessage(
                zaap_id=zaap_id,
                message_id=message_id if isinstance(message_id, str) else None,
                phone=str(entry.get("Phone") or ""),
                text=str(entry.get("Message") or ""),
                created=created / 1000
                if isinstance(created, (int, float)) and not isinstance(created, bool)
                else None,
            )
        )
    # The older docs type "size" as a string.
    size = data.get("size")
    try:
        counted = int(size) if size is not None and not isinstance(size, bool) else len(listed)
    except (TypeError, ValueError):
        counted = len(listed)
    return QueueContents(max(counted, len(listed)), tuple(listed))


def _value_true(body: Any) -> bool:
    return isinstance(body, Mapping) and body.get("value") is True


def _put(body: Dict[str, Any], **optional: Any) -> None:
    for key, value in optional.items():
        if value is not None:
            body[key] = value


def _json_bytes(body: Mapping[str, Any]) -> bytes:
    """Serialise a request body the way Z-API expects: UTF-8 JSON, non-ASCII kept as is."""
    # "replace": a lone surrogate in a bot's text must cost one character, not the answer.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


__all__: List[str] = [
    "CALLBACK_URL_FIELDS",
    "HTTP_TRANSPORTS",
    "QUEUE_LIMIT",
    "WEBHOOK_KINDS",
    "DeviceInfo",
    "InstanceStatus",
    "QueueContents",
    "QueuedMessage",
    "SendResult",
    "ZApiClient",
    "check_response",
]

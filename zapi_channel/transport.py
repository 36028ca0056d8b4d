"""An httpx transport that sends through aiohttp (``http_transport: aiohttp``).

Why: inside ``rasa run`` one send through httpx's own transport (httpcore over anyio) cost about
1.6 ms of CPU, against 0.14 ms for the same call through aiohttp (docs/benchmarks.md, section 4;
encode/httpx#3215). The design card keeps httpx as the API of every outbound call, so
:class:`~zapi_channel.client.ZApiClient` and its respx tests still speak httpx; only the bytes
go through aiohttp, which Rasa 3.6 already depends on.

Why not the ``httpx-aiohttp`` package: every release either requires aiohttp 3.10 or later
(Rasa 3.6 pins ``aiohttp>=3.9,<3.10``) or, for 0.1.1 to 0.1.5, declares any aiohttp 3 but imports
names that aiohttp added in 3.10 (``ConnectionTimeoutError``), so it fails at import beside Rasa.

What must not change with the transport, and ``tests/test_transport.py`` checks on both:

- *Whether a failed request may have reached Z-API.* The client decides from the httpx
  exception whether a send may be retried: :class:`httpx.ConnectError`,
  :class:`httpx.ConnectTimeout` and :class:`httpx.PoolTimeout` mean it was not sent; any other
  timeout or transport error means it may have been. aiohttp's failures are mapped to exactly
  those, and when a failure cannot be placed, to "may have been sent", which is never retried.
- *Timeouts*: httpx's connect, read and pool timeouts become aiohttp's ``sock_connect``,
  ``sock_read`` and ``connect`` (aiohttp's ``connect`` covers the wait for a free connection).
- *Pooling*: one connector per client, the same connection limit, and idle connections dropped
  after httpx's keep-alive expiry (5 s), so that a connection the server closed is not reused.
- *No secret in an exception*: aiohttp puts the URL, and so the instance token, in some error
  messages. The mapped exception carries a redacted message and no chained aiohttp exception.
- *Bodies*: aiohttp does not decompress; httpx decodes ``Content-Encoding`` as it always does.
- *Trust and proxies*: the CA bundle is certifi's, as httpx's is, and ``HTTPS_PROXY`` and the
  other proxy variables are honoured, as httpx honours them (httpx ignores them itself once it
  is given a transport). Like httpx, the transport reads them once, when it opens its session:
  aiohttp's ``trust_env`` would read the whole environment and try to open ``~/.netrc`` on
  every request, measured at about a sixth of a send's CPU.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from typing import Any, Dict, Optional, Tuple

import aiohttp
import aiohttp.helpers
import certifi
import httpx

from zapi_channel.redaction import redact_url

#: httpx's default keep-alive expiry: a pooled connection idle for longer is not reused.
KEEPALIVE_SECONDS = 5.0


def _mapped(exc: BaseException) -> httpx.TransportError:
    """The httpx exception that says what an aiohttp failure means for a retry."""
    message = redact_url(str(exc)) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        # DNS, refused, unreachable, TLS: nothing was sent.
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        # aiohttp 3.9 raises this class for both: "Connection timeout to host ..." while getting
        # a connection (waiting for the pool included), "Timeout on reading data from socket"
        # after the request went out.
        if message.startswith("Connection timeout"):
            return httpx.ConnectTimeout(message)
        return httpx.ReadTimeout(message)
    if isinstance(exc, asyncio.TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
        return httpx.ReadError(message)
    # ClientResponseError (a malformed answer) and anything aiohttp adds later: may have been sent.
    return httpx.RemoteProtocolError(message)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests with one pooled :class:`aiohttp.ClientSession`.

    The session is made on the first request: aiohttp binds it to the running event loop, and
    the channel is built before Rasa's server loop starts. The TLS context is made here instead:
    loading certifi's CA bundle takes about 30 ms, which on the first send would hold up every
    webhook waiting on the event loop (the channel builds its client in a worker thread).
    """

    def __init__(self, *, max_connections: int = 50) -> None:
        self._limit = max_connections
        self._tls = ssl.create_default_context(cafile=certifi.where())
        self._session: Optional[aiohttp.ClientSession] = None
        # The proxy variables as they were when the session opened, and what they say for each
        # (scheme, host) asked so far: a bot calls one host, so this stays one entry or two.
        self._proxies: Dict[str, Any] = {}
        self._routes: Dict[Tuple[str, str], Tuple[Any, Any]] = {}

    def __repr__(self) -> str:
        return f"AiohttpTransport(max_connections={self._limit})"

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                keepalive_timeout=KEEPALIVE_SECONDS,
                enable_cleanup_closed=True,
                ssl=self._tls,
            )
            # No cookies kept between calls and no decompression here (httpx does it). Proxies
            # are read here, once, rather than by trust_env on every request (module docstring);
            # aiohttp's own reader, so that the variables mean what they meant with trust_env.
            self._proxies = dict(aiohttp.helpers.proxies_from_env())
            self._routes.clear()
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
            )
        return self._session

    def _proxy_for(self, url: httpx.URL) -> Tuple[Any, Any]:
        """(proxy URL, proxy credentials) for ``url``, or (None, None) to go direct."""
        route = self._routes.get((url.scheme, url.host))
        if route is None:
            info = self._proxies.get(url.scheme)
            if info is None or urllib.request.proxy_bypass(url.host):
                route = (None, None)
            else:
                route = (info.proxy, info.proxy_auth)
            self._routes[(url.scheme, url.host)] = route
        return route

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        limits: Any = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=limits.get("pool"),
            sock_connect=limits.get("connect"),
            sock_read=limits.get("read"),
        )
        body = await request.aread()
        proxy, proxy_auth = self._proxy_for(request.url)
        failure: Optional[httpx.TransportError] = None
        try:
            async with session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
                proxy=proxy,
                proxy_auth=proxy_auth,
            ) as answer:
                content = await answer.read()
                status, headers = answer.status, list(answer.raw_headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            failure = _mapped(exc)
        if failure is not None:
            # Raised outside the except block, so that the aiohttp exception, whose message may
            # hold the token-bearing URL, is neither its cause nor its context.
            raise failure
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


__all__ = ["KEEPALIVE_SECONDS", "AiohttpTransport"]

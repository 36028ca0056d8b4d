"""The webhook's secret cannot be bypassed: every way of (not) giving it, on the real blueprint.

Z-API signs nothing (see shared/zapi-reference.md), so the only proof that a callback comes from
our Z-API instance is the secret we put in the webhook URL: ``?token=<webhook_token>``. The rules
these tests pin:

- **401** when no token is given: no ``token`` query parameter, or only empty ones (``?token=``,
  ``?token``). A token anywhere else (a header, the body, the path, a fragment, a form field) is
  not a token: 401 as well, never a pass.
- **403** when a token is given and is not exactly ours: wrong case, surrounding whitespace or
  padding, a prefix, a suffix, and also *two* token parameters, even if one (or both) is right.
- **Accepted** when exactly one non-empty ``token`` parameter decodes to exactly our token. The
  query string is percent-decoded once before comparing (``%57EBHOOK...`` *is* ``WEBHOOK...``: a
  URL is allowed to spell any character that way, and Z-API may normalise the URL it calls), but
  never twice (``%2557`` is ``%57``, not ``W``), and ``+`` is a space, so it never matches.
- Only ``POST /webhook`` processes anything: other methods get 405, other paths 404.

"Nothing processed" is checked by behaviour: the bot received nothing, and the very same callback
sent afterwards with the right token is ``accepted``, not a ``duplicate`` (so the refused request
did not even reach deduplication).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import httpx
import pytest
from rasa.core.channels.channel import register

from tests.conftest import FIXTURES, WEBHOOK_TOKEN, channel_block
from tests.livesanic import new_app, serving
from tests.test_channel import RecordingAgent
from zapi_channel.channel import ZApiInput
from zapi_channel.config import ChannelConfig

# One server for the whole module (starting one costs more than all its requests): every test
# sends its own callback, with its own messageId, so that what one test processed cannot hide
# what another did.
pytestmark = pytest.mark.asyncio(scope="module")

PATH = "/webhooks/zapi/webhook"
TOKEN = WEBHOOK_TOKEN
PAYLOAD: Dict[str, Any] = json.loads(
    Path(FIXTURES, "callbacks", "received_text.json").read_text(encoding="utf-8")
)


def percent_encoded(text: str, lower: bool = False) -> str:
    encoded = "".join(f"%{ord(char):02X}" for char in text)
    return encoded.lower() if lower else encoded


class Webhook:
    def __init__(self, channel: ZApiInput, agent: RecordingAgent, base: str) -> None:
        self.channel = channel
        self.agent = agent
        self.base = base
        self.http = httpx.AsyncClient(base_url=base, timeout=10)
        self.message_id = ""
        self.body = b""

    def fresh(self, **changes: Any) -> bytes:
        """A new text callback, never sent before; ``self.body`` until the next call."""
        self.message_id = f"AUTH{uuid.uuid4().hex.upper()}"
        self.body = json.dumps({**PAYLOAD, "messageId": self.message_id, **changes}).encode()
        return self.body

    async def post_query(
        self, query: Optional[bytes], body: Optional[bytes] = None, **kwargs: Any
    ) -> httpx.Response:
        """POST with ``query`` sent byte for byte (httpx would re-encode a ``params`` dict)."""
        url = httpx.URL(self.base + PATH, query=query) if query is not None else PATH
        return await self.http.post(url, content=self.body if body is None else body, **kwargs)

    def received(self) -> List[str]:
        return [m.message_id for m in self.agent.messages if m.message_id == self.message_id]

    async def assert_nothing_processed(self) -> None:
        assert await self.channel.delivery.workers.join(5)
        assert self.received() == []
        answer = await self.post_query(f"token={TOKEN}".encode())
        assert answer.json() == {"status": "accepted"}, "the refused request was remembered"
        assert await self.channel.delivery.workers.join(5)
        assert self.received() == [self.message_id]


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Webhook]:
    folder = tmp_path_factory.mktemp("auth")
    config = ChannelConfig.from_mapping(channel_block(state_path=str(folder / "state.db")))
    channel = ZApiInput(config)
    agent = RecordingAgent()
    app = new_app("auth")
    app.ctx.agent = agent
    register([channel], app, route="/webhooks/")
    async with serving(app) as base:
        hook = Webhook(channel, agent, base)
        try:
            yield hook
        finally:
            await hook.http.aclose()


@pytest.fixture
def webhook(server: Webhook) -> Webhook:
    server.fresh()
    return server


REFUSED_QUERIES: List[Tuple[str, Optional[bytes], int]] = [
    # (case, raw query string, status)
    ("absent", None, 401),
    ("empty query", b"", 401),
    ("empty value", b"token=", 401),
    ("no value", b"token", 401),
    ("only empty values", b"token=&token=", 401),
    ("other parameter", f"secret={TOKEN}".encode(), 401),
    ("name upper case", f"TOKEN={TOKEN}".encode(), 401),
    ("name capitalised", f"Token={TOKEN}".encode(), 401),
    ("name with brackets", f"token[]={TOKEN}".encode(), 401),
    ("name with a space", f"token%20={TOKEN}".encode(), 401),
    ("wrong", b"token=wrong", 403),
    ("a single space", b"token=%20", 403),
    ("upper case", f"token={TOKEN.upper()}".encode(), 403),
    ("lower case", f"token={TOKEN.lower()}".encode(), 403),
    ("swapped case", f"token={TOKEN.swapcase()}".encode(), 403),
    ("leading space", f"token=%20{TOKEN}".encode(), 403),
    ("trailing space", f"token={TOKEN}%20".encode(), 403),
    ("plus is a space", f"token=+{TOKEN}".encode(), 403),
    ("trailing plus", f"token={TOKEN}+".encode(), 403),
    ("leading tab", f"token=%09{TOKEN}".encode(), 403),
    ("trailing newline", f"token={TOKEN}%0A".encode(), 403),
    ("trailing CRLF", f"token={TOKEN}%0D%0A".encode(), 403),
    ("trailing NUL", f"token={TOKEN}%00".encode(), 403),
    ("leading BOM", f"token=%EF%BB%BF{TOKEN}".encode(), 403),
    ("zero-width space", f"token={TOKEN}%E2%80%8B".encode(), 403),
    ("quoted", f"token=%22{TOKEN}%22".encode(), 403),
    ("first character", f"token={TOKEN[:1]}".encode(), 403),
    ("half", f"token={TOKEN[: len(TOKEN) // 2]}".encode(), 403),
    ("all but the last character", f"token={TOKEN[:-1]}".encode(), 403),
    ("one character more", f"token={TOKEN}x".encode(), 403),
    ("twice in one value", f"token={TOKEN}{TOKEN}".encode(), 403),
    ("semicolon is no separator", f"token={TOKEN};x=1".encode(), 403),
    (
        "double percent-encoding",
        f"token={percent_encoded(TOKEN).replace('%', '%25')}".encode(),
        403,
    ),
    ("%u escapes", ("token=" + "".join(f"%u{ord(c):04X}" for c in TOKEN)).encode(), 403),
    ("right then wrong", f"token={TOKEN}&token=wrong".encode(), 403),
    ("wrong then right", f"token=wrong&token={TOKEN}".encode(), 403),
    ("right twice", f"token={TOKEN}&token={TOKEN}".encode(), 403),
    ("right and right in another spelling", f"token={TOKEN}&t%6Fken={TOKEN}".encode(), 403),
]


@pytest.mark.parametrize(
    ("query", "status"),
    [pytest.param(query, status, id=case) for case, query, status in REFUSED_QUERIES],
)
async def test_a_query_without_exactly_our_token_is_refused(
    webhook: Webhook, query: Optional[bytes], status: int
) -> None:
    answer = await webhook.post_query(query)
    assert answer.status_code == status
    assert answer.json() == {"error": "missing token" if status == 401 else "invalid token"}
    await webhook.assert_nothing_processed()


ACCEPTED_QUERIES: List[Tuple[str, bytes]] = [
    ("plain", f"token={TOKEN}".encode()),
    ("every character percent-encoded", f"token={percent_encoded(TOKEN)}".encode()),
    ("lower-case percent hex", f"token={percent_encoded(TOKEN, lower=True)}".encode()),
    ("only the dashes encoded", f"token={TOKEN.replace('-', '%2D')}".encode()),
    ("parameter name percent-encoded", f"t%6Fken={TOKEN}".encode()),
    ("among other parameters", f"a=1&token={TOKEN}&b=2".encode()),
    # An empty parameter is no parameter (the query parser drops blank values): one token remains.
    ("with an empty second token", f"token={TOKEN}&token=".encode()),
]


@pytest.mark.parametrize(
    "query", [pytest.param(query, id=case) for case, query in ACCEPTED_QUERIES]
)
async def test_exactly_our_token_however_percent_encoded_is_accepted(
    webhook: Webhook, query: bytes
) -> None:
    answer = await webhook.post_query(query)
    assert answer.json() == {"status": "accepted"}
    assert await webhook.channel.delivery.workers.join(5)
    assert webhook.received() == [webhook.message_id]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": f"Bearer {TOKEN}"}, id="authorization-bearer"),
        pytest.param({"Authorization": TOKEN}, id="authorization-bare"),
        pytest.param({"token": TOKEN}, id="token-header"),
        pytest.param({"X-Token": TOKEN}, id="x-token"),
        pytest.param({"Client-Token": TOKEN}, id="client-token"),
        pytest.param({"X-Webhook-Token": TOKEN}, id="x-webhook-token"),
        pytest.param({"Cookie": f"token={TOKEN}"}, id="cookie"),
    ],
)
async def test_the_token_in_a_header_is_not_a_token(
    webhook: Webhook, headers: Dict[str, str]
) -> None:
    answer = await webhook.post_query(None, headers=headers)
    assert answer.status_code == 401
    await webhook.assert_nothing_processed()


async def test_the_token_in_the_json_body_is_not_a_token(webhook: Webhook) -> None:
    answer = await webhook.post_query(None, body=webhook.fresh(token=TOKEN))
    assert answer.status_code == 401
    await webhook.assert_nothing_processed()


async def test_the_token_in_a_form_body_is_not_a_token(webhook: Webhook) -> None:
    answer = await webhook.post_query(
        None,
        body=f"token={TOKEN}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 401
    await webhook.assert_nothing_processed()


@pytest.mark.parametrize(
    "path", [f"{PATH}/{TOKEN}", f"{PATH}/token/{TOKEN}", f"{PATH}/token={TOKEN}"]
)
async def test_the_token_in_the_path_is_not_a_route(webhook: Webhook, path: str) -> None:
    answer = await webhook.http.post(path, content=webhook.body)
    assert answer.status_code == 404
    await webhook.assert_nothing_processed()


async def test_the_token_in_a_fragment_is_never_sent(webhook: Webhook) -> None:
    # HTTP clients drop the fragment before sending: the server sees no token at all.
    answer = await webhook.http.post(f"{PATH}#token={TOKEN}", content=webhook.body)
    assert answer.status_code == 401
    await webhook.assert_nothing_processed()


async def test_a_fragment_sent_anyway_is_not_part_of_the_query(webhook: Webhook) -> None:
    # Only a raw socket can put '#' on the request line; the URL parser still cuts it off.
    host, port = webhook.base.rsplit("/", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST {PATH}#token={TOKEN} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {len(webhook.body)}\r\n\r\n".encode()
            + webhook.body
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 401 ")
    await webhook.assert_nothing_processed()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_only_post_reaches_the_webhook(webhook: Webhook, method: str) -> None:
    answer = await webhook.http.request(method, PATH, params={"token": TOKEN}, content=webhook.body)
    assert answer.status_code == 405
    await webhook.assert_nothing_processed()


async def test_the_right_token_with_another_instances_callback_is_ignored(
    webhook: Webhook,
) -> None:
    ours = json.loads(webhook.body)
    other = json.dumps({**ours, "instanceId": "3C6F0000000000000000000000000000"}).encode()
    answer = await webhook.post_query(f"token={TOKEN}".encode(), body=other)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ignored"
    await webhook.assert_nothing_processed()


async def test_the_token_is_compared_in_constant_time(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy around hmac.compare_digest, which channel.py calls through the module attribute. A
    # token of another length must reach it too: a length check first would leak the length.
    calls: List[Tuple[Any, Any]] = []
    original = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for given, status in (("x", 403), (TOKEN[:-1] + "?", 403), (TOKEN, 200)):
        answer = await webhook.post_query(f"token={given}".encode(), body=webhook.fresh())
        assert answer.status_code == status
    # Each request first compares its whole query string with "token=<ours>" (the URL Z-API was
    # given); only one that differs goes on to the parsed token, compared in constant time too.
    ours, query = TOKEN.encode(), f"token={TOKEN}".encode()
    compared = [{a, b} for a, b in calls if ours in (a, b) or query in (a, b)]
    near = (TOKEN[:-1] + "?").encode()
    assert compared == [
        {b"token=x", query},
        {b"x", ours},
        {b"token=" + near, query},
        {near, ours},
        {query},
    ]

"""Hostile and malformed requests against the real webhook blueprint, served on a real socket.

The blueprint is registered with Rasa's own ``register()`` and served by ``tests.livesanic``, as in
``test_channel.py``. Every random request is drawn from ``random.Random(SEED)``: the same requests
on every run (CI needs that), and ``ZAPI_FUZZ_SEED=<n> pytest tests/test_webhook_fuzz.py`` explores
new ones; every failure message names the seed.

What is checked, whatever arrives: never a 5xx, never a dropped connection (except for request
heads with raw non-ASCII bytes, see ``test_requests_with_raw_non_ascii_bytes_in_the_head``), the
health check still answers afterwards, the bot receives exactly the messages that the pure parser
says are new customer messages, no more, and memory does not grow with duplicates. The shutdown
path (a webhook arriving while the channel stops) gets the same treatment at the end.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import gc
import gzip
import json
import os
import random
import resource
import tracemalloc
import urllib.parse
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional, Set, Tuple

import httpx
import pytest
from rasa.core.channels.channel import register

from tests.conftest import FIXTURES, INSTANCE_ID, WEBHOOK_TOKEN, channel_block
from tests.livesanic import new_app, serving
from tests.test_channel import RecordingAgent
from zapi_channel.channel import ZApiInput
from zapi_channel.config import ChannelConfig
from zapi_channel.inbound import (
    DeliveryFailed,
    Event,
    Ignored,
    InboundMessage,
    Invalid,
    parse_callback,
)

SEED = int(os.environ.get("ZAPI_FUZZ_SEED", "20240611"))
# Takeover off: an owner's message among the fixtures would otherwise (rightly) hold back the
# customer's later messages, which this test expects to reach the bot; test_channel covers it.
CONFIG = ChannelConfig.from_mapping(channel_block(handoff_minutes=0))
CAP = CONFIG.max_body_bytes
PATH = "/webhooks/zapi/webhook"
CALLBACKS: Dict[str, Dict[str, Any]] = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in sorted(Path(FIXTURES, "callbacks").glob("*.json"))
}


@dataclass
class Served:
    channel: ZApiInput
    agent: Any
    base: str
    http: httpx.AsyncClient
    #: (message_id, phone, text) of every message the parser says the bot must receive.
    expected: List[Tuple[str, str, str]] = field(default_factory=list)
    seen_keys: Set[str] = field(default_factory=set)

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        content: bytes = b"",
        headers: Optional[Dict[str, Any]] = None,
    ) -> httpx.Response:
        try:
            answer = await self.http.request(
                method, path, params=params, content=content, headers=headers
            )
        except httpx.LocalProtocolError:
            raise  # a request h11 refuses to send: the test's own mistake
        except httpx.TransportError as exc:  # the server dropped us: a crash, not an answer
            raise AssertionError(
                f"seed {SEED}: {method} {path} params={params!r} headers={headers!r} "
                f"body={content[:200]!r}... got no answer: {exc!r}"
            ) from exc
        assert answer.status_code < 500, (
            f"seed {SEED}: {method} {path} params={params!r} body={content[:300]!r} -> "
            f"{answer.status_code} {answer.text[:300]}"
        )
        return answer

    def predict(self, body: bytes) -> Tuple[int, Optional[str]]:
        """What the webhook must answer to ``body`` sent with the right token, per the parser."""
        if len(body) > CAP:
            return 413, None
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return 400, None
        parsed = parse_callback(payload, CONFIG)
        if isinstance(parsed, Invalid):
            return 400, None
        if isinstance(parsed, Ignored):
            return 200, "ignored"
        if isinstance(parsed, (Event, DeliveryFailed)):
            return 200, "logged"
        assert isinstance(parsed, InboundMessage)
        if parsed.dedup_key in self.seen_keys:
            return 200, "duplicate"
        self.seen_keys.add(parsed.dedup_key)
        if not parsed.from_owner:  # the owner's messages pause the bot, they reach no turn
            self.expected.append((parsed.message_id, parsed.phone, parsed.text))
        return 200, "accepted"

    async def post_checked(
        self,
        body: bytes,
        *,
        headers: Optional[Dict[str, Any]] = None,
        params: Any = None,
        plain: Optional[bytes] = None,
        expect: Optional[Tuple[int, Optional[str]]] = None,
    ) -> httpx.Response:
        """POST ``body`` with the right token; the answer must be the one the parser predicts.

        ``plain`` is what a compressed ``body`` decompresses to; ``expect`` replaces the
        prediction where the webhook refuses before parsing (an unknown Content-Encoding).
        """
        status, outcome = expect if expect is not None else self.predict(plain or body)
        answer = await self.send(
            "POST", PATH, params=params or {"token": WEBHOOK_TOKEN}, content=body, headers=headers
        )
        got = answer.json().get("status") if answer.status_code == 200 else None
        assert (answer.status_code, got) == (status, outcome), (
            f"seed {SEED}: body={body[:300]!r} -> {answer.status_code} {answer.text[:300]}"
        )
        return answer

    async def check_received_exactly_what_was_expected(self) -> None:
        assert await self.channel.delivery.workers.join(10)
        got = collections.Counter(
            # The phone the answers go to: the message's own, whatever conversation it joined.
            (m.message_id, m.output_channel._address(m.sender_id), m.text)
            for m in getattr(self.agent, "messages", [])
        )
        assert got == collections.Counter(self.expected), f"seed {SEED}"

    async def check_alive(self) -> None:
        answer = await self.send("GET", "/webhooks/zapi/")
        assert answer.status_code == 200 and answer.json()["status"] == "ok"


def random_bytes(rng: random.Random, size: int) -> bytes:
    """``rng.randbytes(size)``, which Python 3.8 lacks (the same bytes: it is defined so)."""
    return rng.getrandbits(size * 8).to_bytes(size, "little") if size else b""


@pytest.fixture
def channel_config(tmp_path: Path) -> ChannelConfig:
    """``CONFIG``, with the state file in the test's own folder.

    The channel reads its inbox when the server starts: one shared with other tests could hand
    this test messages it never sent.
    """
    return ChannelConfig.from_mapping(
        channel_block(state_path=str(tmp_path / "state.db"), handoff_minutes=0)
    )


@asynccontextmanager
async def served(channel: ZApiInput, agent: Any = None) -> AsyncIterator[Served]:
    agent = agent if agent is not None else RecordingAgent()
    app = new_app("fuzz")
    app.ctx.agent = agent
    register([channel], app, route="/webhooks/")
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        yield Served(channel, agent, base, http)


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def random_text(rng: random.Random, size: int = 12, surrogates: bool = True) -> str:
    alphabet = "aZ09 -_@.+/%&=?#;:\"'\\\n\t\x00éã中😀\u202e\ufeff"
    # A lone surrogate survives json.dumps as an escape and json.loads as a str (but cannot be
    # put in a URL or a header, which must be UTF-8 or Latin-1 bytes).
    tail = rng.choice(["", "\ud800"]) if surrogates else ""
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, size))) + tail


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 3 and roll < 0.3:
        return {random_text(rng, 6): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            -1,
            rng.randint(-(2**70), 2**70),
            rng.uniform(-1e300, 1e300),
            float("inf"),
            float("nan"),
            "",
            " ",
            "true",
            INSTANCE_ID,
            "120363019502650977-group",
            random_text(rng),
        ]
    )


def wrong_type(value: Any, rng: random.Random) -> Any:
    """A JSON value of another type than ``value``."""
    while True:
        candidate = random_json(rng)
        if type(candidate) is not type(value):
            return candidate


def with_fresh_id(payload: Dict[str, Any], rng: random.Random) -> Dict[str, Any]:
    payload = copy.deepcopy(payload)
    payload["messageId"] = f"FUZZ{rng.getrandbits(64):016X}"
    return payload


CONTENT_TYPES = [
    None,
    "",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=zzz",
    "application/json; charset=latin-1",
    "application/xml",
    "image/png",
    "application/json, text/html",
    "*/*",
]


async def test_random_requests_never_crash_and_only_valid_messages_reach_the_bot(
    channel_config: ChannelConfig,
) -> None:
    rng = random.Random(SEED)
    text = CALLBACKS["received_text"]
    async with served(ZApiInput(channel_config)) as s:
        # Every fixture as it is: the baseline the mutations below start from.
        for name in sorted(CALLBACKS):
            await s.post_checked(dumps(with_fresh_id(CALLBACKS[name], rng)))

        # Random bytes, with the right token.
        for _ in range(40):
            size = rng.choice([0, 1, 2, 16, 512, 4096, 60_000])
            body = (
                random_bytes(rng, size)
                if rng.random() < 0.7
                else rng.choice([b"{", b"[", b'"']) + random_bytes(rng, size)
            )
            await s.post_checked(body)

        # Valid bodies under wrong, random or absent content types: the type is not what decides.
        for _ in range(30):
            content_type = rng.choice(CONTENT_TYPES)
            headers = {} if content_type is None else {"Content-Type": content_type}
            await s.post_checked(dumps(with_fresh_id(text, rng)), headers=headers)

        # Every field of real callbacks, one at a time, replaced by a value of another type;
        # then nested fields; then several fields at once.
        for name in ("received_text", "received_image", "received_button_reply", "delivery_error"):
            for key in CALLBACKS[name]:
                payload = with_fresh_id(CALLBACKS[name], rng)
                payload[key] = wrong_type(payload.get(key), rng)
                await s.post_checked(dumps(payload))
        for name in ("received_text", "received_list_reply", "received_reaction", "received_image"):
            payload = CALLBACKS[name]
            for outer, inner in payload.items():
                if isinstance(inner, dict):
                    for key in list(inner):
                        mutated = with_fresh_id(payload, rng)
                        mutated[outer][key] = wrong_type(inner[key], rng)
                        await s.post_checked(dumps(mutated))
        for _ in range(40):
            payload = with_fresh_id(CALLBACKS[rng.choice(sorted(CALLBACKS))], rng)
            for key in rng.sample(sorted(payload), rng.randint(1, 4)):
                if rng.random() < 0.3:
                    del payload[key]
                else:
                    payload[key] = wrong_type(payload[key], rng)
            payload[random_text(rng, 8)] = random_json(rng)
            await s.post_checked(dumps(payload))

        # Random headers on a valid body. httpx (h11) sends printable ASCII without leading or
        # trailing blanks only; raw bytes in a header are the raw-socket test's job.
        def header_value(raw: bytes) -> bytes:
            return bytes(c for c in raw if 0x20 <= c < 0x7F).strip()

        for _ in range(30):
            name = "X-" + "".join(rng.choice("abcXYZ019-") for _ in range(rng.randint(1, 20)))
            headers = {name: header_value(random_bytes(rng, rng.randint(0, 200)))}
            well_known = rng.choice(["Authorization", "Cookie", "X-Forwarded-For", "Accept"])
            headers[well_known] = header_value(random_text(rng, surrogates=False).encode())
            if rng.random() < 0.2:
                headers["Expect"] = "100-continue"
            body = dumps(with_fresh_id(text, rng))
            encoding = rng.choice([None, None, "gzip", "br", "identity", "x"])
            if encoding is None:
                await s.post_checked(body, headers=headers)
                continue
            headers["Content-Encoding"] = encoding
            if encoding == "gzip":
                await s.post_checked(gzip.compress(body), headers=headers, plain=body)
            elif encoding == "identity":
                await s.post_checked(body, headers=headers)
            else:
                await s.post_checked(body, headers=headers, expect=(415, None))

        # Random query strings, sometimes with the right token, a wrong one, or several.
        for _ in range(40):
            params = [
                (random_text(rng, 6, surrogates=False), random_text(rng, 10, surrogates=False))
                for _ in range(rng.randint(0, 4))
            ]
            roll = rng.random()
            if roll < 0.4:
                params.insert(rng.randint(0, len(params)), ("token", WEBHOOK_TOKEN))
            elif roll < 0.6:
                params.append(("token", random_text(rng, 20, surrogates=False)))
            elif roll < 0.7:
                params += [("token", WEBHOOK_TOKEN), ("token", random_text(rng, 4, False))]
            body = dumps(with_fresh_id(text, rng))
            request = s.http.build_request("POST", PATH, params=params, content=body)
            args = urllib.parse.parse_qs(request.url.query.decode(), errors="replace")
            tokens = args.get("token", [])
            if tokens == [WEBHOOK_TOKEN]:
                await s.post_checked(body, params=params)
            else:
                answer = await s.send("POST", PATH, params=params, content=body)
                assert answer.status_code == (401 if not tokens else 403), (SEED, params)

        # Other methods and other paths: refused before anything is read.
        body = dumps(with_fresh_id(text, rng))
        for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
            answer = await s.send(method, PATH, params={"token": WEBHOOK_TOKEN}, content=body)
            assert answer.status_code == 405, method
        for path in (
            f"{PATH}/x",
            f"{PATH}/{WEBHOOK_TOKEN}",
            "/webhooks/zapi//webhook",
            "/webhooks/ZAPI/webhook",
            "/webhooks/zapi/webhook%00",
            "/webhooks/zapi/%2e%2e/zapi/webhook",
            "/" + "a" * 4000,
        ):
            answer = await s.send("POST", path, params={"token": WEBHOOK_TOKEN}, content=body)
            assert answer.status_code in (400, 404, 405), (path, answer.status_code)

        await s.check_received_exactly_what_was_expected()
        assert s.expected, "the fuzz sent no valid message at all: the generators are broken"
        await s.check_alive()


def padded_to(size: int) -> bytes:
    """A valid text callback whose JSON body is exactly ``size`` bytes long."""
    payload = {**CALLBACKS["received_text"], "messageId": f"PAD{size}", "padding": ""}
    payload["padding"] = "x" * (size - len(dumps(payload)))
    body = dumps(payload)
    assert len(body) == size
    return body


async def test_bodies_at_the_size_cap(channel_config: ChannelConfig) -> None:
    async with served(ZApiInput(channel_config)) as s:
        await s.post_checked(padded_to(CAP))
        assert (
            await s.send("POST", PATH, params={"token": WEBHOOK_TOKEN}, content=padded_to(CAP + 1))
        ).status_code == 413
        # Far over the cap (sanic's own limit is 100 MB: this one reaches our check).
        answer = await s.send(
            "POST", PATH, params={"token": WEBHOOK_TOKEN}, content=padded_to(8 * CAP)
        )
        assert answer.status_code == 413
        await s.check_received_exactly_what_was_expected()
        assert [m.message_id for m in s.agent.messages] == [f"PAD{CAP}"]
        await s.check_alive()


def nested(opener: bytes, depth: int, closed: bool) -> bytes:
    unit, closer = (b'{"a":', b"}") if opener == b"{" else (b"[", b"]")
    return unit * depth + (b"1" + closer * depth if closed else b"")


@pytest.mark.parametrize("depth", [10_000, 100_000])
async def test_deeply_nested_json_is_refused_without_crashing(
    depth: int, channel_config: ChannelConfig
) -> None:
    template = dumps({**CALLBACKS["received_text"], "text": "@@"})
    # 100,000 levels of '{"a":' take 500 KB: the cap is raised (the largest allowed is 16 MiB) so
    # that every body reaches the JSON decoder instead of stopping at the 413.
    roomy = dataclasses.replace(channel_config, max_body_bytes=1024 * 1024)
    async with served(ZApiInput(roomy)) as s:
        for opener in (b"[", b"{"):
            for closed in (False, True):
                structure = nested(opener, depth, closed)
                for body in (structure, template.replace(b'"@@"', structure)):
                    answer = await s.send(
                        "POST", PATH, params={"token": WEBHOOK_TOKEN}, content=body
                    )
                    assert answer.status_code == 400
                    assert answer.json() == {"error": "the body is not JSON"}
        # Depths that json.loads does accept, in fields whose value ends up in a log line or in
        # the answer (notification, phone, type...): whatever the parser makes of them, no 5xx.
        # (Well under the interpreter's recursion limit of 1000, so that json.loads in this test
        # and in the server agree.)
        for depth_ok in (100, 400, 700):
            for key in ("notification", "phone", "type", "senderName", "text", "reaction"):
                payload = {**CALLBACKS["received_text"], key: "@@"}
                payload["messageId"] = f"D{depth_ok}{key}"
                for opener in (b"[", b"{"):
                    structure = nested(opener, depth_ok, closed=True)
                    await s.post_checked(dumps(payload).replace(b'"@@"', structure))
        await s.check_received_exactly_what_was_expected()
        await s.check_alive()


@pytest.mark.parametrize(
    "literal",
    [
        pytest.param(b"1" * 4000, id="int-4000-digits"),  # Python still converts it
        pytest.param(b"1" * 5000, id="int-5000-digits"),  # over Python's int-string limit
        pytest.param(b"-" + b"9" * 100_000, id="int-100k-digits"),
        pytest.param(b"1e999999", id="float-overflow"),  # inf
        pytest.param(b"-1e-999999", id="float-underflow"),  # -0.0
        pytest.param(b"1." + b"5" * 100_000, id="float-100k-digits"),
        pytest.param(b"123456789012345678901234567890e-400", id="float-denormal"),
        pytest.param(b"NaN", id="nan"),
        pytest.param(b"-Infinity", id="minus-infinity"),
    ],
)
async def test_huge_numbers_anywhere_are_handled(
    literal: bytes, channel_config: ChannelConfig
) -> None:
    async with served(ZApiInput(channel_config)) as s:
        for key in ("messageId", "phone", "momment", "instanceId", "fromMe", "text"):
            payload = {**CALLBACKS["received_text"], "messageId": f"N{key}", key: "@@"}
            await s.post_checked(dumps(payload).replace(b'"@@"', literal))
        await s.check_received_exactly_what_was_expected()
        await s.check_alive()


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda body: body.replace(b"Hi there", b"Hi \xff there"), id="0xff"),
        pytest.param(lambda body: body.replace(b"Hi there", b"Hi \x80 there"), id="continuation"),
        pytest.param(lambda body: body.replace(b"Hi there", b"Hi \xc0\xaf there"), id="overlong"),
        pytest.param(
            lambda body: body.replace(b"Hi there", b"Hi \xed\xa0\x80 there"), id="surrogate"
        ),
        pytest.param(lambda body: body.replace(b"Hi there", b"Hi \xe2\x82"), id="truncated"),
        pytest.param(
            lambda body: body.decode().replace("Hi there", "Olá").encode("latin-1"), id="latin-1"
        ),
        # json.loads detects a BOM and UTF-16/32 (RFC 8259 section 8.1 lets a parser accept
        # them): these are valid messages and must be processed like any other.
        pytest.param(lambda body: b"\xef\xbb\xbf" + body, id="utf-8-bom"),
        pytest.param(lambda body: body.decode().encode("utf-16"), id="utf-16"),
        pytest.param(lambda body: body.decode().encode("utf-32-le"), id="utf-32-le"),
    ],
)
async def test_bodies_that_are_not_utf8(mangle: Any, channel_config: ChannelConfig) -> None:
    async with served(ZApiInput(channel_config)) as s:
        await s.post_checked(mangle(dumps(CALLBACKS["received_text"])))
        await s.check_received_exactly_what_was_expected()
        await s.check_alive()


async def raw_exchange(base: str, request: bytes) -> bytes:
    host, port = base.rsplit("/", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


TOKEN_QUERY = f"token={WEBHOOK_TOKEN}".encode()


@pytest.mark.parametrize(
    ("target", "header"),
    [
        (PATH.encode() + b"?" + TOKEN_QUERY + b"&x=\xff\xfe", b""),
        (PATH.encode() + b"?token=\xff", b""),
        (PATH.encode() + b"?x=\xc3\xa9&" + TOKEN_QUERY, b""),
        (PATH.encode() + b"\xff?" + TOKEN_QUERY, b""),
        (PATH.encode() + b"?" + TOKEN_QUERY + b"#frag", b""),
        (PATH.encode() + b"?" + TOKEN_QUERY, b"X-Name: Maring\xc3\xa1 \xff\xfe\r\n"),
        (PATH.encode() + b"?" + TOKEN_QUERY, b"Content-Type: application/json; \xff\r\n"),
        (PATH.encode() + b"?" + TOKEN_QUERY, b"X-\xff: 1\r\n"),
    ],
)
async def test_requests_with_raw_non_ascii_bytes_in_the_head(
    target: bytes, header: bytes, channel_config: ChannelConfig
) -> None:
    # No HTTP client sends these (they percent-encode URLs and refuse such header bytes); only a
    # raw socket can. sanic 21.12 cannot build a request object from a non-ASCII request target and
    # closes the connection without an answer (it logs "protocol.connection_task uncaught"). That
    # is tolerated here: nothing reaches the channel and the server goes on serving. What is not
    # tolerated is a 5xx or a processed message.
    body = dumps(CALLBACKS["received_text"])
    async with served(ZApiInput(channel_config)) as s:
        answer = await raw_exchange(
            s.base,
            b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + header + b"Connection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body,
        )
        status_line = answer.split(b"\r\n", 1)[0]
        assert answer == b"" or status_line.split()[1][:1] in (b"2", b"4"), answer[:200]
        if answer and status_line.split()[1] == b"200":
            # The fragment case (the query before '#' holds the right token) and the headers.
            assert target.endswith(b"#frag") or header
            s.predict(body)
        await s.check_received_exactly_what_was_expected()
        await s.check_alive()


class CountingAgent:
    """Counts messages without keeping them, so the test itself does not grow."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_message(self, message: Any) -> None:
        self.count += 1


class KeepAliveClient:
    """A bare HTTP/1.1 client on one kept-alive connection.

    httpx costs several times the server's own work per request and allocates as it goes; this
    keeps the loop fast under tracemalloc and what is measured mostly the server's.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.head = f"POST {PATH}?token={WEBHOOK_TOKEN} HTTP/1.1\r\nHost: x\r\n".encode()

    async def post(self, body: bytes) -> bytes:
        self.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return await self.reader.readexactly(length)


def traced_and_peak() -> Tuple[int, int]:
    gc.collect()
    # ru_maxrss is in KiB on Linux.
    return tracemalloc.get_traced_memory()[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def test_memory_stays_flat_under_distinct_and_duplicate_messages(
    channel_config: ChannelConfig,
) -> None:
    # Deduplication keys live in the state file, not in memory; a few hundred bytes a distinct
    # message leave room for the allocator's noise. A duplicate must add nothing. Anything else
    # kept per request would be a leak.
    agent = CountingAgent()
    channel = ZApiInput(channel_config)
    base = CALLBACKS["received_text"]

    def body(i: int) -> bytes:
        # 50 senders: per-sender queues are created and removed all the time.
        phone = f"55119{i % 50:08d}"
        return dumps(
            {**base, "messageId": f"MEM{i:06d}", "phone": phone, "chatLid": None, "senderLid": None}
        )

    async def post_all(client: KeepAliveClient, bodies: List[bytes], status: bytes) -> None:
        for one in bodies:
            assert await client.post(one) == b'{"status":"%s"}' % status
        assert await channel.delivery.workers.join(10)

    async with served(channel, agent) as s:
        host, port = s.base.rsplit("/", 1)[1].split(":")
        client = KeepAliveClient(*await asyncio.open_connection(host, int(port)))
        # Warm-up, untraced: first-use imports, caches, sanic's and the loop's lazy structures.
        await post_all(client, [body(i) for i in range(500)], b"accepted")
        # tracemalloc counts what is allocated after start() and still alive: the growth.
        tracemalloc.start()
        try:
            traced_0, rss_0 = traced_and_peak()
            await post_all(client, [body(i) for i in range(500, 2500)], b"accepted")
            traced_1, rss_1 = traced_and_peak()
            await post_all(client, [body(i) for i in range(2100, 2500)] * 5, b"duplicate")
            traced_2, rss_2 = traced_and_peak()
        finally:
            tracemalloc.stop()
        client.writer.close()
        await client.writer.wait_closed()
        await s.check_alive()
    assert agent.count == 2500
    distinct, duplicates = traced_1 - traced_0, traced_2 - traced_1
    print(
        f"\n+{distinct / 1024:.0f} KiB traced after 2000 distinct messages "
        f"({distinct / 2000:.0f} B each), {duplicates / 1024:+.0f} KiB after 2000 duplicates; "
        f"ru_maxrss {rss_0} -> {rss_1} -> {rss_2} KiB"
    )
    # Bounds, generous on purpose. A dedup entry needs a few hundred bytes; 1 KiB a distinct
    # message leaves room for allocator noise, while keeping the parsed payload (~3 KiB) or the
    # UserMessage of each message would blow it. 256 KiB over 2000 duplicates is 128 bytes a
    # request: nothing may be kept for a duplicate.
    assert distinct < 2000 * 1024
    assert duplicates < 256 * 1024
    # ru_maxrss is a high-water mark (KiB on Linux) and also sees memory outside Python's
    # allocator (httptools, ujson): 64 MiB only catches a runaway.
    assert rss_2 - rss_0 < 64 * 1024


# -- shutdown ---------------------------------------------------------------------------------------

STOPPING_BODIES = [
    pytest.param(dumps(CALLBACKS["received_text"]), id="plain"),
    pytest.param(
        dumps({**CALLBACKS["received_text"], "senderName": "Ana \ud83d"}),
        id="lone-surrogate",
        # A JSON string may hold a lone surrogate escape ("\ud83d": half an emoji, as a UTF-16
        # producer that cuts a string can send). json.loads keeps it; UTF-8 cannot encode it, so the
        # parser replaces it before anything is written.
    ),
]


@pytest.mark.parametrize("body", STOPPING_BODIES)
async def test_a_message_arriving_while_stopping_is_acknowledged_and_kept(
    channel_config: ChannelConfig, body: bytes
) -> None:
    channel = ZApiInput(channel_config)
    stuck = RecordingAgent()
    stuck.gate = asyncio.Event()  # a turn is still running, so the stop waits its grace period
    first = {**CALLBACKS["received_text"], "messageId": "FIRST", "phone": "5511777777777"}
    async with served(channel, stuck) as s:
        await s.post_checked(dumps(first))
        stopping = asyncio.ensure_future(channel.close(grace_seconds=0.3))
        await asyncio.sleep(0.05)
        answer = await s.send("POST", PATH, params={"token": WEBHOOK_TOKEN}, content=body)
        assert answer.json() == {"status": "accepted"}
        await stopping
        stuck.gate.set()
        # Stopped: nothing more is acknowledged, so Z-API keeps what it could not deliver.
        # (503 is the one 5xx the webhook means: the fuzzing helper refuses every 5xx.)
        refused = await s.http.post(PATH, params={"token": WEBHOOK_TOKEN}, content=body)
        assert refused.status_code == 503
    async with served(ZApiInput(channel_config)) as again:
        await asyncio.sleep(0.05)  # the server-start listener queues what was kept
        await again.channel.delivery.workers.join(5)
        assert [m.message_id for m in again.agent.messages] == [
            "FIRST",
            json.loads(body)["messageId"],
        ]


async def test_every_unanswered_message_is_kept_at_shutdown_whatever_its_text(
    channel_config: ChannelConfig,
) -> None:
    agent = RecordingAgent()
    agent.gate = asyncio.Event()  # the bot is stuck: nothing finishes
    channel = ZApiInput(channel_config)
    odd = {**CALLBACKS["received_text"], "messageId": "ODD", "senderName": "Ana \ud83d"}
    plain = {**CALLBACKS["received_text"], "messageId": "PLAIN", "phone": "5511888888888"}
    async with served(channel, agent) as s:
        for payload in (odd, plain):
            await s.post_checked(dumps(payload))
        try:
            await channel.close(grace_seconds=0.05)
        finally:
            agent.gate.set()
    async with served(ZApiInput(channel_config)) as again:
        await asyncio.sleep(0.05)
        await again.channel.delivery.workers.join(5)
        assert sorted(m.message_id for m in again.agent.messages) == ["ODD", "PLAIN"]

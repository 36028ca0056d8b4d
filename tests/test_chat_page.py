"""The emulator's chat page (``GET /``): served right, and driven in a real headless Chromium.

The browser tests need Playwright for Python and a Chromium on the machine (Debian's ``chromium``
package; ``CHROMIUM_PATH`` names another binary). They skip, saying which is missing, without
them (``ZAPI_REQUIRE_BROWSER=1`` makes that a failure, for CI, which installs both). No Rasa is involved: a tiny fake bot answers the emulator's
ReceivedCallbacks by calling the emulator's Z-API endpoints, as the channel does.

Screenshots of each browser test land in its ``tmp_path`` (the path is printed; ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import shutil
import struct
import sys
import uuid
import zlib
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, NoReturn, Tuple

import httpx
import pytest
from sanic import response
from sanic.request import Request
from sanic.response import HTTPResponse

from tests.livesanic import free_port, new_app, serving
from tests.processes import Process
from zapi_channel.emulator import (
    DEFAULT_CLIENT_TOKEN,
    DEFAULT_INSTANCE_ID,
    DEFAULT_INSTANCE_TOKEN,
    STATIC_DIR,
    STATIC_FILES,
    EmulatedInstance,
    Emulator,
    build_app,
)

CUSTOMER = "5511999990001"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Set where the browser tests must run: then a missing browser fails them instead of skipping.
REQUIRE_BROWSER = os.environ.get("ZAPI_REQUIRE_BROWSER") == "1"
#: How long the page may take to show something (it polls every 700 ms).
SHOWN_WITHIN_MS = 10_000


def tiny_png(width: int = 60, height: int = 40) -> bytes:
    """A small picture (a sun over a gradient sky), made here so that no test needs a network."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = bytearray()
    for y in range(height):
        rows.append(0)  # no filter
        for x in range(width):
            if (x - 42) ** 2 + (y - 13) ** 2 < 60:
                rows += bytes((255, 214, 64))
            elif y > 30:
                rows += bytes((37, 148, 96))
            else:
                rows += bytes((120 + y * 3, 190 + y, 240))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows)))
        + chunk(b"IEND", b"")
    )


PNG_URI = "data:image/png;base64," + base64.b64encode(tiny_png()).decode("ascii")


def tiny_wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    """Half a second of a quiet 440 Hz tone, as a WAV file: a voice note that needs no network."""
    samples = bytes(
        128 + int(20 * math.sin(2 * math.pi * 440 * n / rate)) for n in range(int(seconds * rate))
    )
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)  # PCM, mono, 8-bit
    data = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples))
    body = b"WAVE" + data + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


WAV_URI = "data:audio/wav;base64," + base64.b64encode(tiny_wav()).decode("ascii")


# -- the fake bot -------------------------------------------------------------------------------


def bot_answers(callback: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """What the fake bot sends for one ReceivedCallback: (Z-API endpoint, body) pairs."""
    phone = callback["phone"]
    text = (callback.get("text") or {}).get("message")
    button = (callback.get("buttonsResponseMessage") or {}).get("buttonId")
    if text == "hi":
        buttons = [{"id": "/ask_image", "label": "A picture"}, {"id": "/ask_help", "label": "Help"}]
        return [
            ("send-text", {"phone": phone, "message": "*Hello* there!"}),
            (
                "send-button-list",
                {"phone": phone, "message": "Pick one", "buttonList": {"buttons": buttons}},
            ),
        ]
    if button == "/ask_image":
        return [("send-image", {"phone": phone, "image": PNG_URI, "caption": "Here"})]
    return []


class FakeBot:
    """A webhook that answers like the channel would: through the emulator's Z-API endpoints."""

    def __init__(self) -> None:
        self.received: List[Dict[str, Any]] = []
        self.zapi: httpx.AsyncClient = httpx.AsyncClient()

    def use_emulator(self, emulator_url: str) -> None:
        self.zapi = httpx.AsyncClient(
            base_url=f"{emulator_url}/instances/{DEFAULT_INSTANCE_ID}/token/{DEFAULT_INSTANCE_TOKEN}",
            headers={"Client-Token": DEFAULT_CLIENT_TOKEN},
            timeout=5,
        )

    async def webhook(self, request: Request) -> HTTPResponse:
        callback = request.json
        self.received.append(callback)
        for endpoint, body in bot_answers(callback):
            answer = await self.zapi.post(f"/{endpoint}", json=body)
            assert answer.status_code == 200, answer.text
        return response.json({"ok": True})


@dataclass
class Stack:
    emulator: Emulator
    url: str
    bot: FakeBot
    zapi: httpx.AsyncClient

    async def bot_sends(self, endpoint: str, body: Dict[str, Any]) -> str:
        """Send as the bot, outside any conversation turn; returns the message id."""
        answer = await self.zapi.post(f"/{endpoint}", json={"phone": CUSTOMER, **body})
        assert answer.status_code == 200, answer.text
        message_id: str = answer.json()["messageId"]
        return message_id


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """The emulator and the fake bot, both served on loopback ports in the test's event loop."""
    bot = FakeBot()
    bot_app = new_app("fake-bot")
    bot_app.add_route(bot.webhook, "/webhook", methods=["POST"])
    async with AsyncExitStack() as stack:
        bot_url = await stack.enter_async_context(serving(bot_app))
        instance = EmulatedInstance(
            instance_id=DEFAULT_INSTANCE_ID,
            instance_token=DEFAULT_INSTANCE_TOKEN,
            client_token=DEFAULT_CLIENT_TOKEN,
            webhooks={"received": f"{bot_url}/webhook"},
        )
        emulator = Emulator([instance], allow_http_webhooks=True)
        # Entered after the bot: the emulator stops first, so no callback is left in flight.
        app = build_app(emulator, f"zapi-emulator-{uuid.uuid4().hex[:12]}")
        url = await stack.enter_async_context(serving(app))
        bot.use_emulator(url)
        stack.push_async_callback(bot.zapi.aclose)
        yield Stack(emulator, url, bot, bot.zapi)


# -- serving the page (no browser) --------------------------------------------------------------


async def test_chat_page_and_assets_are_served_with_their_content_types(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        for name, content_type in STATIC_FILES.items():
            asset = await http.get(f"/_emulator/static/{name}")
            assert (asset.status_code, asset.headers["content-type"]) == (200, content_type)
            assert asset.content == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize(
    "path",
    # ../channel.py exists beside static/: a path that climbs out must still not reach it.
    ["/_emulator/static/nope.js", "/_emulator/static/..%2Fchannel.py", "/_emulator/static/"],
)
async def test_only_the_chat_page_files_are_served(stack: Stack, path: str) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        assert (await http.get(path)).status_code == 404


def test_page_references_only_assets_that_are_served() -> None:
    html = (STATIC_DIR / "chat.html").read_text(encoding="utf-8")
    referenced = {part.split('"')[0] for part in html.split("/_emulator/static/")[1:]}
    assert referenced and referenced <= set(STATIC_FILES)


def test_command_line_emulator_serves_the_chat_page(tmp_path: Path) -> None:
    port = free_port()
    emulator = Process(
        "emulator", [sys.executable, "-m", "zapi_channel.emulator", "--port", str(port)], tmp_path
    )
    try:
        emulator.wait_http(f"http://127.0.0.1:{port}/_emulator/health", 30)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        script = httpx.get(f"http://127.0.0.1:{port}/_emulator/static/chat.js", timeout=5)
    finally:
        emulator.stop()
    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert f"Chat as a customer at http://127.0.0.1:{port}/" in emulator.log()


# -- in a browser -------------------------------------------------------------------------------


def no_browser(reason: str) -> NoReturn:
    if REQUIRE_BROWSER:
        pytest.fail(f"{reason} (and ZAPI_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    found = found or shutil.which("chromium-browser")
    if not found:
        no_browser("no Chromium: apt-get install chromium (or set CHROMIUM_PATH)")
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        import playwright.async_api as playwright_api
    except ImportError:
        no_browser("Playwright is not installed: pip install playwright")
    executable = chromium_path()
    async with playwright_api.async_playwright() as playwright:
        # Debian's Chromium, never a downloaded one (`playwright install` is not needed).
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Any, stack: Stack) -> AsyncIterator[Any]:
    """The chat page, open on CUSTOMER's chat; fails the test on any script error or CSP report."""
    context = await browser.new_context(viewport={"width": 1180, "height": 760})
    opened = await context.new_page()
    opened.set_default_timeout(SHOWN_WITHIN_MS)
    errors: List[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await opened.goto(f"{stack.url}/")
    await opened.fill("#phone", CUSTOMER)
    await opened.press("#phone", "Enter")
    yield opened
    await context.close()
    assert errors == []


def expect(target: Any) -> Any:
    from playwright.async_api import expect as playwright_expect

    return playwright_expect(target)


async def screenshot(page: Any, path: Path) -> None:
    await page.screenshot(path=str(path))
    print(f"\nscreenshot: {path}")


async def test_customer_chats_with_the_bot_and_clicks_a_button(
    page: Any, stack: Stack, tmp_path: Path
) -> None:
    await page.fill("#sender-name", "Maria")
    await page.fill("#text", "hi")
    await page.press("#text", "Enter")

    await expect(page.locator(".row.me .bubble .text")).to_have_text("hi", use_inner_text=True)
    greeting = page.locator(".row.bot .bubble").filter(has_text="Hello there!")
    await expect(greeting.locator("strong")).to_have_text("Hello")
    await expect(page.locator(".row.bot .choice")).to_have_text(["A picture", "Help"])

    await page.get_by_role("button", name="A picture").click()

    picture = page.locator(".row.bot .bubble.kind-send-image")
    await expect(picture.locator("img")).to_have_attribute("src", PNG_URI)
    await expect(picture.locator(".text")).to_have_text("Here", use_inner_text=True)
    assert await picture.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
    # The click reached the bot exactly as a WhatsApp button reply does.
    button_list_id = stack.emulator.conversation(CUSTOMER)[2]["message_id"]
    click = stack.bot.received[-1]
    assert click["buttonsResponseMessage"] == {"buttonId": "/ask_image", "message": "A picture"}
    assert (click["referenceMessageId"], click["senderName"]) == (button_list_id, "Maria")
    await expect(page.locator(".row.me .meta .ticks")).to_have_count(2)
    await screenshot(page, tmp_path / "chat-page.png")


async def test_bot_text_is_escaped_before_it_is_formatted(page: Any) -> None:
    cases = {
        "<script>alert(1)</script>": "&lt;script&gt;alert(1)&lt;/script&gt;",
        "*bold* _italic_ ~strike~": "<strong>bold</strong> <em>italic</em> <s>strike</s>",
        "*<b>x</b>*": "<strong>&lt;b&gt;x&lt;/b&gt;</strong>",
        "```*not* bold```": '<code class="mono">*not* bold</code>',
        "snake_case_name 2*3*4": "snake_case_name 2*3*4",
        'see https://x.io/?a=1&b="2"': (
            'see <a href="https://x.io/?a=1&amp;b=" target="_blank" rel="noopener noreferrer">'
            "https://x.io/?a=1&amp;b=</a>&quot;2&quot;"
        ),
    }
    for text, html in cases.items():
        assert await page.evaluate("text => window.ZapiChat.formatText(text)", text) == html
    assert await page.evaluate("window.ZapiChat.safeUrl('javascript:alert(1)')") is None


async def test_bot_html_renders_as_text(page: Any, stack: Stack) -> None:
    hostile = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> *hi*'
    await stack.bot_sends("send-text", {"message": hostile})
    await stack.bot_sends(
        "send-image", {"image": "javascript:window.__xss = 3", "caption": "<b>caption</b>"}
    )

    bubble = page.locator(".row.bot .bubble.kind-send-text .text")
    await expect(bubble).to_contain_text("<script>window.__xss = 1</script><img src=x")
    await expect(page.locator(".kind-send-image .text")).to_contain_text("<b>caption</b>")
    assert await page.locator("#messages script, #messages img, #messages b").count() == 0
    assert await page.evaluate("window.__xss") is None


async def test_every_kind_of_bot_message_is_drawn_and_lists_answer_like_whatsapp(
    page: Any, stack: Stack, tmp_path: Path
) -> None:
    await stack.bot_sends(
        "send-document/pdf",
        {"document": "https://example.com/files/menu.pdf", "fileName": "menu"},
    )
    await stack.bot_sends(
        "send-link",
        {
            "message": "Our site: https://example.com",
            "image": PNG_URI,
            "linkUrl": "https://example.com",
            "title": "Example",
            "linkDescription": "What we do",
        },
    )
    await stack.bot_sends(
        "send-location",
        {
            "title": "Our shop",
            "address": "Av. Paulista, 1000",
            "latitude": "-23.5617",
            "longitude": "-46.6560",
        },
    )
    options = [
        {"id": "/size_s", "title": "Small", "description": "300 ml"},
        {"id": "/size_l", "title": "Large", "description": "500 ml"},
    ]
    list_id = await stack.bot_sends(
        "send-option-list",
        {
            "message": "Which _size_?",
            "optionList": {"title": "Sizes", "buttonLabel": "See sizes", "options": options},
        },
    )

    document = page.locator("a.document")
    await expect(document.locator(".doc-name")).to_have_text("menu.pdf")
    await expect(document.locator(".doc-icon")).to_have_text("PDF")
    await expect(document).to_have_attribute("download", "menu.pdf")
    await expect(page.locator(".link-card .link-title")).to_have_text("Example")
    await expect(page.locator(".location .place-title")).to_have_text("Our shop")
    await page.get_by_role("button", name="See sizes").click()
    await page.locator(".option").filter(has_text="Large").click()

    await expect(page.locator(".row.me .bubble")).to_contain_text("Large")
    answer = stack.emulator.conversation(CUSTOMER)[-1]
    assert answer["content"]["listResponseMessage"] == {
        "message": "500 ml",
        "title": "Large",
        "selectedRowId": "/size_l",
    }
    await expect(page.locator(".row.me .quote")).to_contain_text("Which size?")
    assert stack.emulator.conversation(CUSTOMER)[3]["message_id"] == list_id
    await page.set_viewport_size({"width": 1180, "height": 1240})
    await screenshot(page, tmp_path / "chat-page-kinds.png")


async def test_answers_look_as_on_whatsapp_captions_voice_notes_link_cards_and_quotes(
    page: Any, stack: Stack, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        asked = await http.post(
            "/_emulator/messages", json={"phone": CUSTOMER, "text": "what do you have?"}
        )
    question = asked.json()["messageId"]
    # What the channel sends for a text+image response, quoting the question (quote_replies).
    await stack.bot_sends(
        "send-image", {"image": PNG_URI, "caption": "Our *special* today", "messageId": question}
    )
    await stack.bot_sends("send-text", {"message": "And a voice note:"})
    await stack.bot_sends("send-audio", {"audio": WAV_URI, "waveform": True})
    await stack.bot_sends(
        "send-link",
        {
            "message": "Everything is on our site\n\nhttps://shop.example.com/menu",
            "image": PNG_URI,
            "linkUrl": "https://shop.example.com/menu",
            "title": "Our menu",
            "linkDescription": "Pizzas, drinks and desserts",
        },
    )
    await stack.bot_sends("send-sticker", {"sticker": PNG_URI})

    picture = page.locator(".row.bot .bubble.kind-send-image")
    # The caption is under the picture, in the same bubble, and the quote is above both.
    await expect(picture.locator(".quote")).to_contain_text("what do you have?")
    await expect(picture.locator(".text strong")).to_have_text("special")
    image_box = await picture.locator("img").bounding_box()
    caption_box = await picture.locator(".text").bounding_box()
    quote_box = await picture.locator(".quote").bounding_box()
    assert quote_box["y"] + quote_box["height"] <= image_box["y"] + 1
    assert image_box["y"] + image_box["height"] <= caption_box["y"] + 1
    # The voice note is a player that can play.
    voice = page.locator(".row.bot .bubble.kind-send-audio")
    await expect(voice.locator(".subtext")).to_have_text("Voice message")
    player = voice.locator("audio")
    await expect(player).to_have_attribute("src", WAV_URI)
    await player.evaluate("audio => { audio.preload = 'auto'; audio.load(); }")
    await page.wait_for_function(
        "() => document.querySelector('.kind-send-audio audio').duration > 0.4"
    )
    # The link is a card: picture, title, description and site, then the text.
    card = page.locator(".row.bot .bubble.kind-send-link .link-card")
    await expect(card.locator(".link-title")).to_have_text("Our menu")
    await expect(card.locator(".link-description")).to_have_text("Pizzas, drinks and desserts")
    await expect(card.locator(".link-host")).to_have_text("shop.example.com")
    await expect(card).to_have_attribute("href", "https://shop.example.com/menu")
    assert await card.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
    # A sticker has no bubble around it.
    sticker = page.locator(".row.bot .bubble.kind-send-sticker")
    await expect(sticker.locator("img.sticker-image")).to_be_visible()
    assert await sticker.evaluate("b => getComputedStyle(b).backgroundColor") == "rgba(0, 0, 0, 0)"
    await page.set_viewport_size({"width": 1180, "height": 1100})
    await screenshot(page, tmp_path / "chat-page-shaped.png")


async def test_chat_list_switches_conversations_and_starts_new_ones(
    page: Any, stack: Stack
) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        for phone, text in ((CUSTOMER, "first chat"), ("5521988887777", "second chat")):
            answer = await http.post("/_emulator/messages", json={"phone": phone, "text": text})
            assert answer.status_code == 200

    await expect(page.locator("#messages")).to_contain_text("first chat")
    await page.locator(".chat-item").filter(has_text="+55 21 98888-7777").click()
    await expect(page.locator("#messages")).to_contain_text("second chat")
    await expect(page.locator("#messages")).not_to_contain_text("first chat")
    await expect(page.locator("#phone")).to_have_value("5521988887777")

    await page.fill("#new-chat", "5531977776666")
    await page.press("#new-chat", "Enter")
    await expect(page.locator(".chat-item.active")).to_contain_text("+55 31 97777-6666")
    await expect(page.locator("#messages .empty")).to_contain_text("+55 31 97777-6666")


async def test_the_open_chat_in_the_list_counts_the_messages_it_shows(
    page: Any, stack: Stack
) -> None:
    # The open chat's messages are polled on every tick and the chat list on every third: read
    # both in one go, the moment a new message shows, so a stale count cannot hide in between.
    shown_and_listed = """() => [
        document.querySelectorAll("#messages .row.me").length,
        document.querySelector(".chat-item.active .chat-item-sub").textContent,
    ]"""
    async with httpx.AsyncClient(base_url=stack.url) as http:
        for n in range(1, 4):
            answer = await http.post(
                "/_emulator/messages", json={"phone": CUSTOMER, "text": f"message {n}"}
            )
            assert answer.status_code == 200
            for _ in range(500):
                shown, listed = await page.evaluate(shown_and_listed)
                if shown >= n:
                    break
                await asyncio.sleep(0.01)
            assert shown >= n, "the message never showed"
            count = int(listed.split()[0]) if listed[0].isdigit() else 0
            assert count >= shown, f"{shown} message(s) shown, the chat list says {listed!r}"


async def test_the_shop_can_write_from_its_phone(page: Any, stack: Stack, tmp_path: Path) -> None:
    toggle = page.get_by_role("button", name="Write as the shop, from its phone")
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-pressed", "true")
    await page.fill("#text", "Oi, aqui é o Carlos da loja")
    await page.press("#text", "Enter")
    owner = page.locator(".row.owner .bubble")
    await expect(owner.locator(".sender")).to_have_text("Shop (from the phone)")
    await expect(owner.locator(".text")).to_have_text(
        "Oi, aqui é o Carlos da loja", use_inner_text=True
    )
    # What the bot got is what a live instance posts for the owner typing on the phone.
    posted = stack.bot.received[-1]
    assert (posted["fromMe"], posted["fromApi"], posted["status"]) == (True, False, "RECEIVED")
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-pressed", "false")
    await screenshot(page, tmp_path / "chat-page-owner.png")

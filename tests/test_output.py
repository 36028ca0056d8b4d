"""ZApiOutput: Rasa's responses become Z-API calls (respx routes named after endpoints)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List

import httpx
import pytest
import respx

from tests.conftest import SECRETS, channel_block
from zapi_channel.channel import ZApiOutput
from zapi_channel.client import ZApiClient
from zapi_channel.config import ChannelConfig
from zapi_channel.delivery import FAILED, UNKNOWN
from zapi_channel.delivery.embedded import EmbeddedDelivery
from zapi_channel.outbound import Choice

PHONE = "5544999999999"
MENU = [
    {"title": "A picture", "payload": "/ask_image"},
    {"title": "A document", "payload": "/ask_document"},
    {"title": "Talk to us", "payload": "/ask_help"},
]


def sent(route: respx.Route) -> List[Dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


async def no_sleep(seconds: float) -> None:
    return None


@pytest.fixture
async def make_output(tmp_path: Path) -> AsyncIterator[Any]:
    made: List[EmbeddedDelivery] = []

    def make(**overrides: Any) -> ZApiOutput:
        config = ChannelConfig.from_mapping(channel_block(**overrides))
        client = ZApiClient(config.credentials, sleep=no_sleep)
        made.append(EmbeddedDelivery(tmp_path / f"state-{len(made)}.db"))
        return ZApiOutput(client, config, made[-1])

    yield make
    for delivery in made:
        await delivery.aclose()


@pytest.fixture
async def output(make_output: Any) -> AsyncIterator[ZApiOutput]:
    yield make_output()


async def test_text_goes_to_send_text_at_the_phone_as_received(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    await output.send_text_message("81896604192873@lid", "Hello!")
    assert sent(zapi["send-text"]) == [{"phone": "81896604192873@lid", "message": "Hello!"}]


async def test_long_text_is_split_and_sent_in_order(
    zapi: respx.MockRouter, make_output: Any
) -> None:
    output = make_output(max_text_length=100)
    paragraphs = [f"Paragraph {i}. " + "word " * 12 for i in range(5)]
    await output.send_text_message(PHONE, "\n\n".join(paragraphs))
    messages = [body["message"] for body in sent(zapi["send-text"])]
    assert len(messages) == 5
    assert [m.split(".")[0] for m in messages] == [f"Paragraph {i}" for i in range(5)]


async def test_delay_typing_is_sent_when_configured(
    zapi: respx.MockRouter, make_output: Any
) -> None:
    await make_output(delay_typing=2).send_text_message(PHONE, "hi")
    assert sent(zapi["send-text"])[0]["delayTyping"] == 2


async def test_image(zapi: respx.MockRouter, output: ZApiOutput) -> None:
    await output.send_image_url(PHONE, "https://x.test/cat.jpg")
    assert sent(zapi["send-image"]) == [{"phone": PHONE, "image": "https://x.test/cat.jpg"}]


async def test_attachment_file_goes_to_send_document_with_its_extension(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    await output.send_attachment(PHONE, "https://x.test/files/brochure.pdf")
    assert zapi["send-document"].calls.last.request.url.path.endswith("/send-document/pdf")
    assert sent(zapi["send-document"]) == [
        {
            "phone": PHONE,
            "document": "https://x.test/files/brochure.pdf",
            "fileName": "brochure.pdf",
        }
    ]


async def test_attachment_that_is_not_a_file_is_sent_as_a_link(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    await output.send_attachment(PHONE, "https://x.test/pricing")
    # Z-API's docs mark image, title and linkDescription required: each gets a sensible value.
    assert sent(zapi["send-link"]) == [
        {
            "phone": PHONE,
            "message": "https://x.test/pricing",
            "image": "https://x.test/favicon.ico",
            "linkUrl": "https://x.test/pricing",
            "title": "x.test",
            "linkDescription": "x.test/pricing",
        }
    ]


async def test_custom_json_reaches_the_named_endpoint_with_phone(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    custom = {
        "zapi": {
            "endpoint": "send-location",
            "body": {"title": "Shop", "address": "Av", "latitude": "1", "longitude": "2"},
        }
    }
    await output.send_custom_json(PHONE, custom)
    assert sent(zapi["send-location"]) == [
        {"phone": PHONE, "title": "Shop", "address": "Av", "latitude": "1", "longitude": "2"}
    ]


async def test_custom_json_cannot_reach_instance_endpoints(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    await output.send_custom_json(PHONE, {"zapi": {"endpoint": "disconnect", "body": {}}})
    assert not zapi["disconnect"].called


async def test_buttons_in_text_mode_are_a_numbered_list_and_remembered(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    await output.send_text_with_buttons(PHONE, "What would you like?", MENU)
    assert sent(zapi["send-text"]) == [
        {
            "phone": PHONE,
            "message": "What would you like?\n\n*1.* A picture\n*2.* A document\n*3.* Talk to us",
        }
    ]
    assert await output.delivery.take_choices(PHONE) == [
        Choice(b["title"], b["payload"]) for b in MENU
    ]


async def test_buttons_mode_uses_send_button_list(zapi: respx.MockRouter, make_output: Any) -> None:
    await make_output(buttons_as="buttons").send_text_with_buttons(PHONE, "Pick", MENU)
    [body] = sent(zapi["send-button-list"])
    assert body["buttonList"]["buttons"] == [
        {"id": b["payload"], "label": b["title"]} for b in MENU
    ]
    assert not zapi["send-text"].called


async def test_list_mode_uses_send_option_list(zapi: respx.MockRouter, make_output: Any) -> None:
    await make_output(buttons_as="list").send_quick_replies(PHONE, "Pick", MENU)
    [body] = sent(zapi["send-option-list"])
    assert [o["id"] for o in body["optionList"]["options"]] == [
        "/ask_image",
        "/ask_document",
        "/ask_help",
    ]


async def test_failed_buttons_fall_back_to_numbered_text(
    zapi: respx.MockRouter, make_output: Any
) -> None:
    zapi["send-button-list"].mock(
        return_value=httpx.Response(400, json={"error": "button terms not accepted"})
    )
    await make_output(buttons_as="buttons").send_text_with_buttons(PHONE, "Pick", MENU)
    assert "*2.* A document" in sent(zapi["send-text"])[0]["message"]


async def test_a_failing_send_never_raises_and_is_journaled(
    zapi: respx.MockRouter,
    output: ZApiOutput,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    zapi["send-text"].mock(return_value=httpx.Response(500, json={"error": "boom"}))
    with caplog.at_level(logging.ERROR):
        await output.send_text_message(PHONE, "hi")
    [entry] = await output.delivery.entries()
    assert (entry.endpoint, entry.body, entry.outcome) == (
        "send-text",
        {"phone": PHONE, "message": "hi"},
        FAILED,
    )
    assert "boom" in entry.error
    assert entry.id in caplog.text and "zapi-channel failed retry" in caplog.text
    # The state file and its write-ahead log, where the latest commits are.
    journal_text = b"".join(p.read_bytes() for p in tmp_path.glob("state-0.db*")).decode(
        "utf-8", "replace"
    )
    assert "boom" in journal_text
    for secret in SECRETS:
        assert secret not in caplog.text
        assert secret not in journal_text


async def test_a_transient_failure_is_retried_and_not_journaled(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    zapi["send-text"].mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json={"messageId": "M"})]
    )
    await output.send_text_message(PHONE, "hi")
    assert zapi["send-text"].call_count == 2
    assert await output.delivery.entries() == []


async def test_an_answer_whose_outcome_is_unknown_is_journaled_as_unknown_not_resent(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    zapi["send-text"].mock(side_effect=httpx.ReadTimeout("no answer"))
    await output.send_text_message(PHONE, "hi")
    assert zapi["send-text"].call_count == 1
    assert [e.outcome for e in await output.delivery.entries()] == [UNKNOWN]


async def test_when_a_part_fails_the_later_parts_of_the_same_text_are_journaled_not_sent(
    zapi: respx.MockRouter, make_output: Any
) -> None:
    output = make_output(max_text_length=100)
    zapi["send-text"].mock(
        side_effect=[
            httpx.Response(200, json={"messageId": "1"}),
            httpx.Response(400, json={"error": "bad"}),
        ]
    )
    await output.send_text_message(PHONE, "\n\n".join(["a" * 90, "b" * 90, "c" * 10]))
    assert zapi["send-text"].call_count == 2
    failed, skipped = await output.delivery.entries()
    assert failed.body["message"] == "b" * 90
    assert skipped.body["message"] == "c" * 10
    assert "earlier part" in skipped.error


def record_order(zapi: respx.MockRouter, *names: str) -> List[str]:
    order: List[str] = []
    for name in names:
        zapi[name].side_effect = lambda request, name=name: (
            order.append(name),
            httpx.Response(200, json={"messageId": "X"}),
        )[1]
    return order


async def test_text_with_an_image_is_one_captioned_picture(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    await output.send_response(
        PHONE, {"text": "Here is a picture", "image": "https://x.test/a.png"}
    )
    assert sent(zapi["send-image"]) == [
        {"phone": PHONE, "image": "https://x.test/a.png", "caption": "Here is a picture"}
    ]
    assert not zapi["send-text"].called


async def test_text_longer_than_a_caption_goes_first_then_the_bare_picture(
    zapi: respx.MockRouter, make_output: Any
) -> None:
    output = make_output(max_text_length=4096)
    order = record_order(zapi, "send-text", "send-image")
    text = "word " * 300  # 1,500 characters: past WhatsApp's 1,024 of a caption
    await output.send_response(PHONE, {"text": text, "image": "https://x.test/a.png"})
    assert order == ["send-text", "send-image"]
    assert "caption" not in sent(zapi["send-image"])[0]


async def test_audio_attachment_is_a_voice_message_after_its_text(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    order = record_order(zapi, "send-text", "send-audio")
    await output.send_response(PHONE, {"text": "Listen:", "attachment": "https://x.test/hello.ogg"})
    assert order == ["send-text", "send-audio"]
    assert sent(zapi["send-audio"]) == [
        {"phone": PHONE, "audio": "https://x.test/hello.ogg", "waveform": True}
    ]


async def test_a_text_with_a_link_is_one_link_card(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    await output.send_response(
        PHONE,
        {
            "text": "Our menu",
            "attachment": {
                "url": "https://shop.test/menu",
                "title": "Menu",
                "image": "https://shop.test/m.jpg",
            },
        },
    )
    (body,) = sent(zapi["send-link"])
    assert body["message"] == "Our menu\n\nhttps://shop.test/menu"
    assert (body["title"], body["image"]) == ("Menu", "https://shop.test/m.jpg")
    assert not zapi["send-text"].called


async def test_link_preview_image_setting_is_the_default_picture(
    zapi: respx.MockRouter, make_output: Any
) -> None:
    output = make_output(link_preview_image="https://cdn.test/logo.png")
    await output.send_attachment(PHONE, "https://shop.test/menu")
    assert sent(zapi["send-link"])[0]["image"] == "https://cdn.test/logo.png"


async def test_quote_goes_on_the_first_message_that_can_quote_and_only_once(
    zapi: respx.MockRouter, tmp_path: Path
) -> None:
    config = ChannelConfig.from_mapping(channel_block())
    client = ZApiClient(config.credentials, sleep=no_sleep)
    delivery = EmbeddedDelivery(tmp_path / "state.db")
    try:
        output = ZApiOutput(client, config, delivery, quote="3EB0CUSTOMER")
        await output.send_response(PHONE, {"attachment": "https://x.test/a.mp3"})
        await output.send_response(PHONE, {"text": "first"})
        await output.send_response(PHONE, {"text": "second"})
    finally:
        await delivery.aclose()
    # send-audio documents no messageId: the quote waits for the first text.
    assert "messageId" not in sent(zapi["send-audio"])[0]
    assert [body.get("messageId") for body in sent(zapi["send-text"])] == ["3EB0CUSTOMER", None]


async def test_send_response_passes_extra_keys_without_breaking(
    zapi: respx.MockRouter, output: ZApiOutput
) -> None:
    await output.send_response(
        PHONE, {"text": "hi", "buttons": MENU, "template_name": "utter_menu", "id": None}
    )
    assert zapi["send-text"].called

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import pytest

from zapi_channel.emulator import validate_send
from zapi_channel.outbound import (
    AUDIO,
    CAPTION_LIMIT,
    DOCUMENT,
    IMAGE,
    LINK,
    STICKER,
    VIDEO,
    Choice,
    InvalidCustomPayload,
    Plan,
    Send,
    Shaping,
    ZApiRequest,
    attachment_of,
    buttons_request,
    choices_from_buttons,
    custom_request,
    document_extension,
    file_name_of,
    link_body,
    match_choice,
    media_kind,
    render_choices,
    shape_response,
    split_text,
    text_bodies,
)

MENU = [
    Choice("A picture", "/ask_image"),
    Choice("A document", "/ask_document"),
    Choice("Talk to us", "/ask_help"),
]


def test_short_text_is_one_part() -> None:
    assert split_text("  hello  ", 100) == ["hello"]


def test_long_text_splits_at_paragraphs_first() -> None:
    first = "a" * 60
    second = "b" * 60
    assert split_text(f"{first}\n\n{second}", 100) == [first, second]


def test_long_text_splits_at_sentence_ends_when_there_is_no_paragraph() -> None:
    text = "This is one sentence. " * 10
    parts = split_text(text, 50)
    assert all(len(part) <= 50 for part in parts)
    assert all(part.endswith(".") for part in parts)
    assert " ".join(parts) == text.strip()


def test_a_word_longer_than_the_limit_is_cut_and_nothing_is_lost() -> None:
    text = "x" * 250
    parts = split_text(text, 100)
    assert [len(p) for p in parts] == [100, 100, 50]
    assert "".join(parts) == text


def test_split_keeps_every_word_in_order() -> None:
    words = [f"word{i}" for i in range(500)]
    parts = split_text(" ".join(words), 120)
    assert " ".join(parts).split() == words


def test_text_bodies_add_delay_typing() -> None:
    assert text_bodies("hi", 100, 3) == [("send-text", {"message": "hi", "delayTyping": 3})]
    assert text_bodies("hi", 100, None) == [("send-text", {"message": "hi"})]


def test_render_choices_numbers_them_in_whatsapp_bold() -> None:
    assert render_choices("What now?", MENU[:2]) == "What now?\n\n*1.* A picture\n*2.* A document"


@pytest.mark.parametrize(
    ("reply", "payload"),
    [
        ("2", "/ask_document"),
        (" 1. ", "/ask_image"),
        ("*3*", "/ask_help"),
        ("a DOCUMENT", "/ask_document"),
    ],
)
def test_a_number_or_the_exact_title_maps_back_to_the_payload(reply: str, payload: str) -> None:
    chosen = match_choice(reply, MENU)
    assert chosen is not None and chosen.payload == payload


@pytest.mark.parametrize("reply", ["0", "4", "document please", "", "12"])
def test_other_replies_do_not_map(reply: str) -> None:
    assert match_choice(reply, MENU) is None


def test_choices_from_rasa_buttons_skip_empty_entries() -> None:
    buttons = [{"title": "Yes", "payload": "/affirm"}, {}, "junk", {"payload": "/deny"}]
    assert choices_from_buttons(buttons) == [Choice("Yes", "/affirm"), Choice("/deny", "/deny")]


def test_buttons_mode_uses_button_list_with_the_numbered_text_as_fallback() -> None:
    endpoint, body = buttons_request("Pick", MENU, "buttons") or ("", {})
    assert endpoint == "send-button-list"
    assert body["buttonList"]["buttons"][0] == {"id": "/ask_image", "label": "A picture"}
    assert "*1.* A picture" in body["message"]


def test_more_than_three_buttons_become_an_option_list() -> None:
    many = [*MENU, Choice("Four", "/four")]
    endpoint, body = buttons_request("Pick", many, "buttons") or ("", {})
    assert endpoint == "send-option-list"
    assert [o["id"] for o in body["optionList"]["options"]] == [
        "/ask_image",
        "/ask_document",
        "/ask_help",
        "/four",
    ]


def test_list_mode_uses_option_list_and_text_mode_uses_none() -> None:
    assert (buttons_request("Pick", MENU, "list") or ("", {}))[0] == "send-option-list"
    assert buttons_request("Pick", MENU, "text") is None


@pytest.mark.parametrize(
    ("url", "mime", "extension"),
    [
        ("https://x.test/files/brochure.PDF", None, "pdf"),
        ("https://x.test/download?id=3", "application/pdf", "pdf"),
        ("https://x.test/report%20final.xlsx?sig=abc", None, "xlsx"),
        ("https://x.test/page.html", None, None),
        ("https://x.test/", None, None),
    ],
)
def test_document_extension(url: str, mime: str, extension: str) -> None:
    assert document_extension(url, mime) == extension


def test_file_name_of_url() -> None:
    assert file_name_of("https://x.test/a/report%20final.pdf?x=1") == "report final.pdf"
    assert file_name_of("https://x.test/") is None


def test_custom_request_reaches_send_endpoints() -> None:
    custom = {
        "zapi": {
            "endpoint": "send-location",
            "body": {"title": "Shop", "latitude": "1", "longitude": "2"},
        }
    }
    assert custom_request(custom) == (
        "send-location",
        {"title": "Shop", "latitude": "1", "longitude": "2"},
    )
    assert (
        custom_request({"zapi": {"endpoint": "send-document/pdf", "body": {}}})[0]
        == "send-document/pdf"
    )


@pytest.mark.parametrize(
    "custom",
    [
        {"zapi": {"endpoint": "disconnect"}},
        {"zapi": {"endpoint": "update-webhook-received", "body": {}}},
        {"zapi": {"endpoint": "send-text/../../disconnect"}},
        {"zapi": {"endpoint": "send-text", "body": []}},
        {"something": "else"},
        "text",
    ],
)
def test_custom_request_refuses_anything_but_a_send(custom: object) -> None:
    with pytest.raises(InvalidCustomPayload):
        custom_request(custom)


# -- whole responses (shape_response) -----------------------------------------------------------

PHONE = "5544999999999"


def requests_of(plan: Plan) -> List[Tuple[str, Dict[str, Any]]]:
    return [(send.request.endpoint, send.request.body) for send in plan.sends]


def every_request(plan: Plan) -> Iterator[ZApiRequest]:
    def walk(sends: Iterable[Send]) -> Iterator[ZApiRequest]:
        for send in sends:
            yield send.request
            yield from walk(send.fallback)

    return walk(plan.sends)


@pytest.mark.parametrize(
    ("attachment", "kind"),
    [
        # By MIME type first...
        ({"url": "https://x.test/f", "mime_type": "audio/ogg; codecs=opus"}, AUDIO),
        ({"url": "https://x.test/f", "mime_type": "video/mp4"}, VIDEO),
        ({"url": "https://x.test/f", "mime_type": "image/png"}, IMAGE),
        ({"url": "https://x.test/f", "mime_type": "image/webp"}, STICKER),
        ({"url": "https://x.test/f", "mime_type": "application/pdf"}, DOCUMENT),
        ({"url": "https://x.test/page.pdf", "mime_type": "text/html"}, LINK),
        # ... a MIME type beats a misleading extension ...
        ({"url": "https://x.test/download.php", "mimeType": "audio/mpeg"}, AUDIO),
        # ... the Messenger-style attachment many Rasa bots already write ...
        ({"type": "audio", "payload": {"url": "https://x.test/hello"}}, AUDIO),
        ({"type": "file", "payload": {"url": "https://x.test/a.xlsx"}}, DOCUMENT),
        # ... else the extension, case and query aside.
        ("https://x.test/voice.MP3?sig=1", AUDIO),
        ("https://x.test/voice.opus", AUDIO),
        ("https://x.test/clip.mp4", VIDEO),
        ("https://x.test/cat.jpeg", IMAGE),
        ("https://x.test/hi.webp", STICKER),
        ("https://x.test/price%20list.xlsx", DOCUMENT),
        ("https://x.test/pricing", LINK),
        ("https://x.test/about.html", LINK),
        ("https://x.test/", LINK),
        # A data: URI names its type.
        ("data:audio/ogg;base64,T2dnUw==", AUDIO),
        ("data:application/pdf;base64,JVBERi0=", DOCUMENT),
    ],
)
def test_attachments_are_routed_by_mime_type_then_extension(attachment: Any, kind: str) -> None:
    parsed = attachment_of(attachment)
    assert parsed is not None
    assert media_kind(parsed) == kind


@pytest.mark.parametrize(
    ("attachment", "endpoint", "key"),
    [
        ("https://x.test/voice.ogg", "send-audio", "audio"),
        ("https://x.test/clip.mp4", "send-video", "video"),
        ("https://x.test/cat.png", "send-image", "image"),
        ("https://x.test/hi.webp", "send-sticker", "sticker"),
        ("https://x.test/menu.pdf", "send-document/pdf", "document"),
        ("https://x.test/menu", "send-link", "linkUrl"),
    ],
)
def test_each_kind_of_attachment_is_its_send(attachment: str, endpoint: str, key: str) -> None:
    [(sent_to, body)] = requests_of(shape_response({"attachment": attachment}, PHONE))
    assert sent_to == endpoint
    assert body["phone"] == PHONE and body[key] == attachment


def test_an_unknown_mime_type_is_a_document_named_after_the_url() -> None:
    plan = shape_response(
        {"attachment": {"url": "https://x.test/get?id=7", "mime_type": "application/zip"}},
        PHONE,
    )
    [(endpoint, _)] = requests_of(plan)
    assert endpoint == "send-document/zip"


@pytest.mark.parametrize(
    ("media", "endpoint"),
    [
        ({"image": "https://x.test/a.png"}, "send-image"),
        ({"attachment": "https://x.test/a.mp4"}, "send-video"),
        ({"attachment": "https://x.test/a.pdf"}, "send-document/pdf"),
    ],
)
def test_text_with_media_is_one_captioned_message(media: Dict[str, str], endpoint: str) -> None:
    [(sent_to, body)] = requests_of(shape_response({"text": " Look! ", **media}, PHONE))
    assert (sent_to, body["caption"]) == (endpoint, "Look!")


def test_a_caption_of_exactly_the_limit_stays_a_caption_one_more_does_not() -> None:
    image = "https://x.test/a.png"
    fits = shape_response({"text": "x" * CAPTION_LIMIT, "image": image}, PHONE)
    assert [e for e, _ in requests_of(fits)] == ["send-image"]
    longer = shape_response({"text": "x" * (CAPTION_LIMIT + 1), "image": image}, PHONE)
    assert [e for e, _ in requests_of(longer)] == ["send-text", "send-image"]
    assert "caption" not in requests_of(longer)[1][1]


def test_text_with_audio_or_a_sticker_goes_first_uncaptioned() -> None:
    for url, endpoint in (
        ("https://x.test/a.mp3", "send-audio"),
        ("https://x.test/a.webp", "send-sticker"),
    ):
        plan = shape_response({"text": "Here", "attachment": url}, PHONE)
        assert [e for e, _ in requests_of(plan)] == ["send-text", endpoint]
        assert "caption" not in requests_of(plan)[1][1]


def test_audio_is_a_voice_note_with_the_recording_delay() -> None:
    options = Shaping(delay_typing=3)
    [(_, body)] = requests_of(
        shape_response({"attachment": "https://x.test/a.ogg"}, PHONE, options)
    )
    assert body == {
        "phone": PHONE,
        "audio": "https://x.test/a.ogg",
        "waveform": True,
        "delayTyping": 3,
    }


def test_text_with_a_link_is_one_link_card_ending_with_the_url() -> None:
    [(endpoint, body)] = requests_of(
        shape_response({"text": "See our menu", "attachment": "https://www.shop.test/menu/"}, PHONE)
    )
    assert endpoint == "send-link"
    assert body == {
        "phone": PHONE,
        "message": "See our menu\n\nhttps://www.shop.test/menu/",
        "image": "https://www.shop.test/favicon.ico",
        "linkUrl": "https://www.shop.test/menu/",
        "title": "shop.test",
        "linkDescription": "shop.test/menu",
    }


def test_a_link_keeps_the_title_description_and_picture_it_was_given() -> None:
    body = link_body(
        "https://shop.test/p/1",
        "Our offer https://shop.test/p/1",
        title="Offer",
        description="Two for one",
        image="https://cdn.test/1.jpg",
    )
    # The text already ends with the URL: it is not repeated.
    assert body["message"] == "Our offer https://shop.test/p/1"
    assert (body["title"], body["linkDescription"], body["image"]) == (
        "Offer",
        "Two for one",
        "https://cdn.test/1.jpg",
    )


def test_buttons_come_last_after_their_media_and_remember_the_choices() -> None:
    plan = shape_response(
        {
            "text": "Which one?",
            "image": "https://x.test/menu.png",
            "buttons": [{"title": "Pizza", "payload": "/pizza"}],
        },
        PHONE,
        Shaping(buttons_as="buttons"),
    )
    assert [e for e, _ in requests_of(plan)] == ["send-image", "send-button-list"]
    interactive = plan.sends[1]
    assert interactive.choices == (Choice("Pizza", "/pizza"),)
    # If Z-API refuses the buttons, the same choices go as numbered text.
    assert [s.request.body["message"] for s in interactive.fallback] == ["Which one?\n\n*1.* Pizza"]


def test_choices_in_text_mode_are_remembered_on_the_numbered_text() -> None:
    plan = shape_response(
        {"text": "Which one?", "quick_replies": [{"title": "Yes", "payload": "/yes"}]}, PHONE
    )
    [send] = plan.sends
    assert send.request.endpoint == "send-text" and send.choices == (Choice("Yes", "/yes"),)


def test_long_text_parts_after_the_first_continue_it() -> None:
    plan = shape_response({"text": "word " * 100}, PHONE, Shaping(text_limit=100))
    assert len(plan.sends) > 1
    assert [s.continues for s in plan.sends] == [False] + [True] * (len(plan.sends) - 1)


def test_custom_payload_keeps_working_and_a_bad_one_is_skipped_with_a_reason() -> None:
    custom = {"zapi": {"endpoint": "send-reaction", "body": {"reaction": "👍", "messageId": "ABC"}}}
    plan = shape_response({"text": "ok", "custom": custom}, PHONE)
    assert requests_of(plan) == [
        ("send-text", {"phone": PHONE, "message": "ok"}),
        ("send-reaction", {"phone": PHONE, "reaction": "👍", "messageId": "ABC"}),
    ]
    bad = shape_response({"custom": {"zapi": {"endpoint": "disconnect"}}}, PHONE)
    assert bad.sends == () and "custom" in bad.skipped[0]


def test_an_attachment_without_a_url_is_skipped_with_a_reason() -> None:
    plan = shape_response({"text": "hi", "attachment": {"title": "no url"}}, PHONE)
    assert [e for e, _ in requests_of(plan)] == ["send-text"]
    assert plan.skipped == ("an attachment without a URL",)


def test_rasa_empty_values_are_absent_parts() -> None:
    plan = shape_response(
        {
            "text": "hi",
            "image": None,
            "attachment": None,
            "custom": None,
            "elements": None,
            "buttons": None,
            "quick_replies": None,
            "template_name": "utter_hi",
        },
        PHONE,
    )
    assert requests_of(plan) == [("send-text", {"phone": PHONE, "message": "hi"})]
    assert plan.skipped == ()


def test_elements_are_captioned_cards_and_their_buttons() -> None:
    plan = shape_response(
        {
            "elements": [
                {"title": "Pizza", "subtitle": "Large", "image_url": "https://x.test/p.png"},
                {"title": "Soda", "buttons": [{"title": "Add", "payload": "/add"}]},
            ]
        },
        PHONE,
    )
    assert requests_of(plan)[0] == (
        "send-image",
        {"phone": PHONE, "image": "https://x.test/p.png", "caption": "*Pizza*\nLarge"},
    )
    assert requests_of(plan)[1][1]["message"] == "*Soda*\n\n*1.* Add"


@pytest.mark.parametrize(
    ("response", "quoted_endpoint"),
    [
        ({"text": "hi"}, "send-text"),
        ({"text": "hi", "image": "https://x.test/a.png"}, "send-image"),
        ({"attachment": "https://x.test/a.ogg", "text": "hi"}, "send-text"),
        ({"attachment": "https://x.test/menu"}, "send-link"),
    ],
)
def test_a_quote_goes_on_the_first_send_that_documents_message_id(
    response: Dict[str, Any], quoted_endpoint: str
) -> None:
    plan = shape_response(response, PHONE, quote="3EB0ABC")
    quoting = [e for e, body in requests_of(plan) if body.get("messageId") == "3EB0ABC"]
    assert plan.quoted and quoting == [quoted_endpoint]


def test_nothing_quotable_quotes_nothing() -> None:
    plan = shape_response({"attachment": "https://x.test/a.ogg"}, PHONE, quote="3EB0ABC")
    assert not plan.quoted
    assert "messageId" not in plan.sends[0].request.body


RESPONSES: List[Dict[str, Any]] = [
    {"text": "hi"},
    {"text": "x" * 5000},
    {"text": "Look", "image": "https://x.test/a.png"},
    {"text": "Listen", "attachment": "https://x.test/a.mp3"},
    {"text": "Watch", "attachment": {"url": "https://x.test/v", "mime_type": "video/mp4"}},
    {"text": "Sticker", "attachment": "https://x.test/s.webp"},
    {"text": "Read", "attachment": "https://x.test/terms.pdf"},
    {"text": "Visit", "attachment": "https://shop.test/"},
    {"attachment": "https://shop.test/a-page"},
    {"attachment": {"url": "https://shop.test/a", "title": "", "description": " "}},
    {"text": "Pick", "buttons": [{"title": "A", "payload": "/a"}, {"title": "B", "payload": "/b"}]},
    {"text": "", "buttons": [{"title": "A", "payload": "/a"}]},
    {"text": "Pick", "buttons": [{"title": f"{i}", "payload": f"/p{i}"} for i in range(5)]},
    {
        "elements": [
            {
                "title": "T",
                "subtitle": "S",
                "image_url": "https://x.test/e.png",
                "buttons": [{"title": "Go", "payload": "/go"}],
            }
        ]
    },
    {
        "custom": {
            "zapi": {
                "endpoint": "send-location",
                "body": {
                    "title": "Shop",
                    "address": "Av. Brasil",
                    "latitude": "-23.4",
                    "longitude": "-51.9",
                },
            }
        }
    },
]


@pytest.mark.parametrize("buttons_as", ["text", "buttons", "list"])
@pytest.mark.parametrize("quote", [None, "3EB0C431C26A1D3E9A51"])
@pytest.mark.parametrize("index", range(len(RESPONSES)))
def test_every_body_the_channel_builds_passes_the_emulators_rules(
    index: int, buttons_as: str, quote: Optional[str]
) -> None:
    options = Shaping(buttons_as=buttons_as, delay_typing=2)
    plan = shape_response(RESPONSES[index], PHONE, options, quote=quote)
    assert plan.sends
    for request in every_request(plan):
        assert validate_send(request.endpoint, request.body) is None, request

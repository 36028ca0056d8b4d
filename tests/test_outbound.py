from __future__ import annotations

import pytest

from zapi_channel.outbound import (
    Choice,
    InvalidCustomPayload,
    buttons_request,
    choices_from_buttons,
    custom_request,
    document_extension,
    file_name_of,
    match_choice,
    render_choices,
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

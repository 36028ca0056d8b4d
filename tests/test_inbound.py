"""Every documented callback shape, parsed field by field (fixtures follow Z-API/docs)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from tests.conftest import INSTANCE_ID, channel_block
from zapi_channel.config import ChannelConfig
from zapi_channel.inbound import (
    DeliveryFailed,
    Event,
    Ignored,
    InboundMessage,
    Invalid,
    merge_burst,
    mergeable,
    parse_body,
    parse_callback,
)

Load = Callable[[str], Dict[str, Any]]


def message(payload: Any, config: ChannelConfig) -> InboundMessage:
    parsed = parse_callback(payload, config)
    assert isinstance(parsed, InboundMessage), parsed
    return parsed


def test_text_becomes_a_message_with_the_envelope_in_metadata(
    callback: Load, config: ChannelConfig
) -> None:
    payload = callback("received_text")
    parsed = message(payload, config)
    assert parsed.text == "Hi there"
    assert parsed.kind == "text"
    assert parsed.phone == "5544999999999"
    assert parsed.message_id == "3EB0C431C26A1D3E9A51"
    assert parsed.dedup_key == f"{INSTANCE_ID}:3EB0C431C26A1D3E9A51"
    meta = parsed.metadata
    assert meta["message_id"] == "3EB0C431C26A1D3E9A51"
    assert meta["phone"] == "5544999999999"
    assert meta["sender_name"] == "Ana Souza"
    assert meta["chat_name"] == "Ana Souza"
    assert meta["chat_lid"] == payload["chatLid"]
    assert meta["sender_lid"] == payload["senderLid"]
    assert meta["connected_phone"] == "554499999999"
    assert meta["momment"] == payload["momment"]
    assert meta["is_group"] is False
    assert meta["participant_phone"] is None


def test_a_parsed_message_is_the_one_its_constructor_would_make(
    callback: Load, config: ChannelConfig
) -> None:
    # The parser fills the instance's fields without __init__: every field, nothing else.
    parsed = parse_body(json.dumps(callback("received_text")).encode(), config)
    assert isinstance(parsed, InboundMessage)
    assert parsed.__dict__.keys() == {f.name for f in dataclasses.fields(InboundMessage)}
    made = InboundMessage(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(parsed)})
    assert made == parsed and made.__dict__ == parsed.__dict__
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.text = "changed"  # type: ignore[misc]


def test_evolve_is_replace_for_the_fields_and_refuses_other_names(
    callback: Load, config: ChannelConfig
) -> None:
    original = message(callback("received_text"), config)
    changed = original.evolve(sender_id="conversation-1", lid="123@lid", raw={})
    assert changed == dataclasses.replace(
        original, sender_id="conversation-1", lid="123@lid", raw={}
    )
    assert changed.raw == {} and changed.sender_id == "conversation-1"
    assert original.sender_id == "" and original.raw  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.text = "still frozen"  # type: ignore[misc]
    with pytest.raises(TypeError, match="sender"):
        original.evolve(sender="conversation-1")


def test_a_message_crosses_as_plain_values_and_comes_back_whole_without_its_raw_body(
    callback: Load, config: ChannelConfig
) -> None:
    original = message(callback("received_text"), config).evolve(sender_id="c-1", lid="9@lid")
    values = original.as_values()
    assert all(type(v) in (str, bool, dict, type(None)) for v in values)  # no object to pickle
    back = InboundMessage.from_values(values)
    assert dataclasses.asdict(back) == {**dataclasses.asdict(original), "raw": {}}
    assert original.raw  # the original keeps its own


def test_lid_only_sender_is_answered_at_exactly_the_lid(
    callback: Load, config: ChannelConfig
) -> None:
    parsed = message(callback("received_lid_only"), config)
    assert parsed.phone.endswith("@lid")
    assert parsed.phone == callback("received_lid_only")["phone"]


def test_button_reply_gives_the_button_id(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_button_reply")
    parsed = message(payload, config)
    assert parsed.text == payload["buttonsResponseMessage"]["buttonId"] == "/ask_image"
    assert parsed.kind == "button_reply"
    assert parsed.metadata["button"]["label"] == payload["buttonsResponseMessage"]["message"]
    assert parsed.metadata["reference_message_id"] == payload["referenceMessageId"]


def test_list_reply_gives_the_selected_row_id(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_list_reply")
    parsed = message(payload, config)
    assert parsed.text == "/ask_document"
    assert parsed.kind == "list_reply"
    assert parsed.metadata["list"]["title"] == payload["listResponseMessage"]["title"]


def test_image_caption_is_the_text_and_media_details_are_kept(
    callback: Load, config: ChannelConfig
) -> None:
    payload = callback("received_image")
    parsed = message(payload, config)
    assert parsed.text == "Look at this"
    assert parsed.kind == "image"
    media = parsed.metadata["media"]
    assert media["url"] == payload["image"]["imageUrl"]
    assert media["mime_type"] == "image/jpeg"


def test_image_without_caption_gets_the_configured_text(
    callback: Load, config: ChannelConfig
) -> None:
    parsed = message(callback("received_image_no_caption"), config)
    assert parsed.text == "/zapi_image"


def test_video_caption_and_url(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_video")
    parsed = message(payload, config)
    assert parsed.kind == "video"
    assert parsed.metadata["media"]["url"] == payload["video"]["videoUrl"]
    assert parsed.text == (payload["video"].get("caption") or "/zapi_video")


def test_document_keeps_file_name_and_mime_type(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_document")
    parsed = message(payload, config)
    assert parsed.kind == "document"
    assert parsed.metadata["media"]["file_name"] == "invoice.pdf"
    assert parsed.metadata["media"]["mime_type"] == "application/pdf"
    assert parsed.metadata["media"]["url"] == payload["document"]["documentUrl"]
    # Z-API documents no caption on documents: the configured text stands in.
    assert parsed.text == (payload["document"].get("caption") or "/zapi_document")


@pytest.mark.parametrize(
    ("fixture", "kind", "text"),
    [
        ("received_audio", "audio", "/zapi_audio"),
        ("received_sticker", "sticker", "/zapi_sticker"),
        ("received_location", "location", "/zapi_location"),
        ("received_contact", "contact", "/zapi_contact"),
    ],
)
def test_textless_content_gets_its_configured_text(
    callback: Load, config: ChannelConfig, fixture: str, kind: str, text: str
) -> None:
    parsed = message(callback(fixture), config)
    assert (parsed.kind, parsed.text) == (kind, text)


def test_audio_details_in_metadata(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_audio")
    media = message(payload, config).metadata["media"]
    assert media["url"] == payload["audio"]["audioUrl"]
    assert media["ptt"] is True
    assert media["seconds"] == 7


def test_location_and_contact_are_kept_whole(callback: Load, config: ChannelConfig) -> None:
    location = callback("received_location")
    assert message(location, config).metadata["location"] == location["location"]
    contact = callback("received_contact")
    assert (
        message(contact, config).metadata["contact"]["displayName"]
        == contact["contact"]["displayName"]
    )


def test_configured_media_text_is_used(callback: Load) -> None:
    config = ChannelConfig.from_mapping(channel_block(media_texts={"audio": "voice note"}))
    assert message(callback("received_audio"), config).text == "voice note"


@pytest.mark.parametrize(
    ("fixture", "reason"),
    [
        ("received_own_echo", "fromMe"),
        ("received_group_text", "group"),
        ("received_newsletter", "newsletter"),
        ("received_broadcast", ""),
        ("received_status_reply", "status"),
        ("received_waiting_message", "waiting"),
        ("received_notification", "notification"),
        ("received_reaction", "reaction"),
        ("received_edited_text", "edit"),
    ],
)
def test_callbacks_that_must_never_be_answered_are_ignored(
    callback: Load, config: ChannelConfig, fixture: str, reason: str
) -> None:
    parsed = parse_callback(callback(fixture), config)
    assert isinstance(parsed, Ignored)
    assert reason in parsed.reason


def test_a_broadcast_from_someone_else_is_ignored_for_being_a_broadcast(
    callback: Load, config: ChannelConfig
) -> None:
    payload = callback("received_broadcast")
    payload["fromMe"] = False
    parsed = parse_callback(payload, config)
    assert isinstance(parsed, Ignored) and "broadcast" in parsed.reason


@pytest.mark.parametrize(
    "flag", ["isNewsletter", "broadcast", "isStatusReply", "waitingMessage", "isGroup"]
)
def test_each_flag_alone_is_enough_to_ignore(
    callback: Load, config: ChannelConfig, flag: str
) -> None:
    payload = callback("received_text")
    payload[flag] = True
    assert isinstance(parse_callback(payload, config), Ignored)


def test_groups_are_answered_when_enabled_with_the_participant(callback: Load) -> None:
    config = ChannelConfig.from_mapping(channel_block(allow_groups=True))
    payload = callback("received_group_text")
    parsed = message(payload, config)
    assert parsed.phone == payload["phone"]
    assert parsed.metadata["is_group"] is True
    assert parsed.metadata["participant_phone"] == payload["participantPhone"]


def test_reactions_are_received_when_enabled(callback: Load) -> None:
    config = ChannelConfig.from_mapping(channel_block(allow_reactions=True))
    payload = callback("received_reaction")
    parsed = message(payload, config)
    assert parsed.text == "/zapi_reaction"
    assert parsed.metadata["reaction"]["value"] == payload["reaction"]["value"]
    removed = parse_callback(callback("received_reaction_removed"), config)
    assert isinstance(removed, Ignored) and "removed" in removed.reason


def test_another_instance_is_ignored(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_text")
    payload["instanceId"] = "SOMEONEELSE"
    parsed = parse_callback(payload, config)
    assert isinstance(parsed, Ignored) and "instanceId" in parsed.reason


def test_unknown_type_is_ignored(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_text")
    payload["type"] = "FutureCallback"
    assert isinstance(parse_callback(payload, config), Ignored)


def test_delivery_error_is_a_failure_naming_message_and_error(
    callback: Load, config: ChannelConfig
) -> None:
    payload = callback("delivery_error")
    parsed = parse_callback(payload, config)
    assert isinstance(parsed, DeliveryFailed)
    assert (parsed.message_id, parsed.phone) == (payload["messageId"], payload["phone"])
    assert parsed.error == payload["error"]
    shadow = parse_callback(callback("delivery_error_shadow_ban"), config)
    assert isinstance(shadow, DeliveryFailed) and shadow.error_code == "SHADOW_BAN"


def test_a_delivery_error_without_a_message_id_is_still_logged(
    callback: Load, config: ChannelConfig
) -> None:
    payload = callback("delivery_error")
    del payload["messageId"]
    parsed = parse_callback(payload, config)
    assert isinstance(parsed, Event) and parsed.level == logging.WARNING


@pytest.mark.parametrize(
    ("fixture", "level"),
    [
        ("delivery", logging.DEBUG),
        ("message_status", logging.DEBUG),
        ("connected", logging.INFO),
        ("disconnected", logging.ERROR),
        ("presence", logging.DEBUG),
    ],
)
def test_status_callbacks_are_logged_never_answered(
    callback: Load, config: ChannelConfig, fixture: str, level: int
) -> None:
    parsed = parse_callback(callback(fixture), config)
    assert isinstance(parsed, Event)
    assert parsed.level == level


@pytest.mark.parametrize("payload", [None, [], "text", 3, True, {"no": "type"}, {"type": 5}])
def test_bodies_that_are_not_callbacks_are_invalid(payload: Any, config: ChannelConfig) -> None:
    assert isinstance(parse_callback(payload, config), Invalid)


@pytest.mark.parametrize("missing", ["phone", "messageId"])
def test_received_without_identity_is_invalid(
    callback: Load, config: ChannelConfig, missing: str
) -> None:
    payload = callback("received_text")
    del payload[missing]
    assert isinstance(parse_callback(payload, config), Invalid)


@pytest.mark.parametrize("bad", [None, 5, [], {"message": None}, {"message": "   "}])
def test_wrong_types_in_content_never_raise(
    callback: Load, config: ChannelConfig, bad: Any
) -> None:
    payload = callback("received_text")
    payload["text"] = bad
    assert isinstance(parse_callback(payload, config), Ignored)


def test_unknown_fields_do_not_break_parsing(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_text")
    payload["brandNewField"] = {"nested": [1, 2]}
    assert message(payload, config).text == "Hi there"


@pytest.mark.parametrize("value", ["true", "True ", 1])
def test_a_malformed_truthy_from_me_still_fails_safe(
    callback: Load, config: ChannelConfig, value: Any
) -> None:
    payload = callback("received_text")
    payload["fromMe"] = value
    parsed = parse_callback(payload, config)
    # Never the customer's: the owner's message, which pauses the bot and is never answered.
    assert isinstance(parsed, InboundMessage) and parsed.from_owner


@pytest.mark.parametrize(
    "phone", ["120363019502650977-GROUP", " 120363019502650977-group ", "status@BROADCAST "]
)
def test_suffix_rules_ignore_case_and_padding(
    callback: Load, config: ChannelConfig, phone: str
) -> None:
    payload = callback("received_text")
    payload["phone"] = phone
    assert isinstance(parse_callback(payload, config), Ignored)


def test_padding_around_phone_and_message_id_is_removed(
    callback: Load, config: ChannelConfig
) -> None:
    payload = callback("received_text")
    payload["phone"] = " 5544999999999\n"
    payload["messageId"] = " ABC "
    parsed = message(payload, config)
    assert (parsed.phone, parsed.message_id) == ("5544999999999", "ABC")


def test_an_absurdly_long_message_id_is_invalid(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_text")
    payload["messageId"] = "X" * 10_000
    assert isinstance(parse_callback(payload, config), Invalid)


def test_lone_surrogates_are_replaced_everywhere(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_text")
    payload["senderName"] = "Ana \ud83d"
    payload["text"] = {"message": "oi \udc00"}
    parsed = message(payload, config)
    assert parsed.text == "oi ?"
    assert parsed.metadata["sender_name"] == "Ana ?"
    json.dumps(parsed.raw, ensure_ascii=False).encode("utf-8")  # would raise before the fix


def test_log_summaries_stay_one_bounded_line(callback: Load, config: ChannelConfig) -> None:
    payload = callback("delivery_error")
    payload["error"] = "x\n[2026] CRITICAL forged line" + "y" * 10_000
    payload["phone"] = "5544\nforged"
    parsed = parse_callback(payload, config)
    assert isinstance(parsed, DeliveryFailed)
    for logged in (parsed.error, parsed.phone):
        assert "\n" not in logged and len(logged) < 600


@pytest.mark.parametrize(
    "lone",
    [
        pytest.param(b"\\ud83d", id="escape"),
        pytest.param(b"\\uDE00", id="upper-case escape"),
        pytest.param(b"\xed\xa0\xbd", id="raw bytes"),
    ],
)
def test_a_raw_body_with_a_lone_surrogate_is_cleaned(
    lone: bytes, callback: Load, config: ChannelConfig
) -> None:
    payload = callback("received_text")
    payload["text"]["message"] = "hi MARK"
    parsed = parse_body(json.dumps(payload).encode().replace(b"MARK", lone), config)
    assert isinstance(parsed, InboundMessage)
    assert parsed.text == "hi ?"


def test_a_raw_body_with_a_surrogate_pair_keeps_its_emoji(
    callback: Load, config: ChannelConfig
) -> None:
    payload = callback("received_text")
    payload["text"]["message"] = "hi \U0001f600"
    parsed = parse_body(json.dumps(payload).encode(), config)
    assert isinstance(parsed, InboundMessage)
    assert parsed.text == "hi \U0001f600"


@pytest.mark.parametrize("body", [b"", b"{", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe"])
def test_a_raw_body_that_is_not_json_is_invalid(body: bytes, config: ChannelConfig) -> None:
    assert parse_body(body, config) == Invalid("the body is not JSON")


SEEN = {
    # fixture: (outcome, what the bot receives or why it is not answered)
    "seen_lid_phone": ("message", "Oi, ainda estão abertos?"),
    "seen_number_with_chatlid": ("message", "Queria fazer um pedido"),
    "seen_null_chatlid": ("message", "Bom dia"),
    "seen_owner_message": ("owner", "Oi Ana, aqui é o Carlos da loja. Já separei seu pedido."),
    "seen_owner_message_no_fromapi": ("owner", "Pode passar amanhã"),
    "seen_api_echo": ("ignored", "fromApi"),
    "seen_waiting_not_from_me": ("ignored", "waiting"),
    "seen_numeric_message_id": ("message", "número"),
    "seen_hex40_message_id": ("message", "iPhone id"),
    "seen_dash_message_id": ("message", "id com traço"),
    "seen_custom_message_id": ("message", "id do cliente"),
    "seen_edit_with_edit_message_id": ("ignored", "edit"),
    "seen_revoke_reusing_id": ("ignored", "REVOKE"),
    "seen_live_location": ("message", "/zapi_location"),
    "seen_ptv": ("message", "/zapi_unsupported"),
    "seen_buttons_message": ("message", "/zapi_unsupported"),
    "seen_document_caption": ("message", "segue o pedido"),
    "seen_sticker_size": ("message", "/zapi_sticker"),
    "seen_profile_name_updated": ("ignored", "PROFILE_NAME_UPDATED"),
    "seen_chat_label_association": ("ignored", "CHAT_LABEL_ASSOCIATION"),
    "seen_call_voice": ("ignored", "CALL_VOICE"),
    "seen_status_read_by_me": ("event", "24 message(s)"),
    "seen_status_played_microseconds": ("event", "PLAYED"),
    "seen_delivery_zaap_differs": ("event", "sent message"),
}


@pytest.mark.parametrize("fixture", sorted(SEEN))
def test_shapes_seen_in_real_traffic(callback: Load, config: ChannelConfig, fixture: str) -> None:
    outcome, detail = SEEN[fixture]
    parsed = parse_callback(callback(fixture), config)
    if outcome == "ignored":
        assert isinstance(parsed, Ignored) and detail in parsed.reason, parsed
    elif outcome == "event":
        assert isinstance(parsed, Event) and detail in parsed.summary, parsed
    else:
        assert isinstance(parsed, InboundMessage), parsed
        assert parsed.text == detail
        assert parsed.from_owner is (outcome == "owner")


def test_a_number_with_a_chat_lid_carries_both_forms(callback: Load, config: ChannelConfig) -> None:
    parsed = parse_callback(callback("seen_number_with_chatlid"), config)
    assert isinstance(parsed, InboundMessage)
    assert parsed.forms == ("5544999999999", "81896604192873@lid")
    lid_only = parse_callback(callback("seen_lid_phone"), config)
    assert isinstance(lid_only, InboundMessage)
    assert (lid_only.lid, lid_only.number, lid_only.forms) == (
        "81896604192873@lid",
        None,
        ("81896604192873@lid",),
    )
    no_lid = parse_callback(callback("seen_null_chatlid"), config)
    assert isinstance(no_lid, InboundMessage) and no_lid.lid is None


def test_a_numeric_message_id_is_read_as_text(callback: Load, config: ChannelConfig) -> None:
    parsed = parse_callback(callback("seen_numeric_message_id"), config)
    assert isinstance(parsed, InboundMessage) and parsed.message_id == "1867371624"


def test_the_owner_reacting_or_pinning_is_not_a_takeover(
    callback: Load, config: ChannelConfig
) -> None:
    payload = callback("seen_owner_message")
    del payload["text"]
    payload["pinMessage"] = {"action": "pin", "referencedMessage": {"messageId": "X"}}
    assert isinstance(parse_callback(payload, config), Ignored)


EXAMPLES = json.loads((Path(__file__).parent / "fixtures" / "received_examples.json").read_text())


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["title"] for e in EXAMPLES])
def test_every_example_of_the_received_callback_page(
    config: ChannelConfig, example: Dict[str, Any]
) -> None:
    parsed = parse_callback(example["body"], config)
    if example["expected"] == "ignored":
        assert isinstance(parsed, Ignored), parsed
    else:
        assert isinstance(parsed, InboundMessage), parsed
        assert parsed.from_owner is (example["expected"] == "owner")


def with_id(payload: Dict[str, Any], message_id: str, text: str) -> Dict[str, Any]:
    return {**payload, "messageId": message_id, "text": {"message": text}}


def test_a_burst_is_one_message_with_every_id(callback: Load, config: ChannelConfig) -> None:
    payload = callback("received_text")
    parts = [
        message(with_id(payload, f"3EB0{n}", text), config)
        for n, text in enumerate(["oi", "tudo bem?", "queria fazer um pedido"])
    ]
    merged = merge_burst(parts)
    assert merged.text == "oi\ntudo bem?\nqueria fazer um pedido"
    assert merged.message_id == "3EB00" and merged.dedup_key == parts[0].dedup_key
    assert merged.metadata["message_ids"] == ["3EB00", "3EB01", "3EB02"]
    # The one to quote and to mark read is the last the customer wrote.
    assert merged.latest_message_id == "3EB02" and parts[1].latest_message_id == "3EB01"
    assert merge_burst(parts[:1]) is parts[0]
    with pytest.raises(ValueError):
        merge_burst([])


@pytest.mark.parametrize(
    ("fixture", "merges"),
    [
        ("received_text", True),
        ("received_image", False),  # media (a caption too) is never merged into text
        ("received_audio", False),
        ("received_button_reply", False),
        ("received_group_text", False),  # two participants' texts are not one message
    ],
)
def test_what_can_be_part_of_a_burst(callback: Load, fixture: str, merges: bool) -> None:
    config = ChannelConfig.from_mapping(channel_block(allow_groups=True))
    assert mergeable(message(callback(fixture), config)) is merges

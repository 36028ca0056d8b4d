"""Properties of :func:`zapi_channel.inbound.parse_callback` that must hold for *any* JSON value.

The example-based tests in ``test_inbound.py`` pin what each documented callback means; these
check the promises that no fixture can: whatever arrives (any JSON value, or a real callback with
fields deleted, added or of the wrong type), the parser answers with exactly one outcome and never
raises, and the rules that keep the bot from answering what it must not answer cannot be slipped
past with an odd value somewhere else in the body.

Determinism: every test runs with ``derandomize=True`` and ``database=None``. ``derandomize`` seeds
hypothesis from the test's own source, so CI and every developer run the same examples, and a
failure reproduces by simply running the test again. ``database=None`` keeps hypothesis from
writing a ``.hypothesis/`` folder into the work tree (with derandomize it would never replay
anything anyway). The price is that CI never tries new examples: to hunt for them, run locally with
``derandomize`` off and a larger ``max_examples`` in ``DETERMINISTIC``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Dict, List

from hypothesis import HealthCheck, event, find, given, settings
from hypothesis import strategies as st

from tests.conftest import FIXTURES, INSTANCE_ID, channel_block
from zapi_channel.config import DEFAULT_MEDIA_TEXTS, ChannelConfig
from zapi_channel.errors import ConfigError
from zapi_channel.inbound import (
    DeliveryFailed,
    Event,
    Ignored,
    InboundMessage,
    Invalid,
    parse_body,
    parse_callback,
    sanitize,
)

OUTCOMES = (InboundMessage, Ignored, Event, Invalid, DeliveryFailed)

DEFAULT = ChannelConfig.from_mapping(channel_block())
GROUPS = ChannelConfig.from_mapping(channel_block(allow_groups=True))
EVERYTHING = ChannelConfig.from_mapping(channel_block(allow_groups=True, allow_reactions=True))
CONFIGS = st.sampled_from([DEFAULT, GROUPS, EVERYTHING])

CALLBACKS: Dict[str, Dict[str, Any]] = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in sorted(Path(FIXTURES, "callbacks").glob("*.json"))
}
RECEIVED = sorted(name for name in CALLBACKS if name.startswith("received_"))

# Every key some fixture has, plus the ones the parser reads that no fixture carries: mutations
# must hit (and add) the fields that decide, not only those one fixture happens to have.
KNOWN_KEYS = sorted(
    {key for payload in CALLBACKS.values() for key in payload}
    | {
        "notification",
        "reaction",
        "buttonsResponseMessage",
        "listResponseMessage",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "location",
        "contact",
        "text",
        "chatLid",
        "referenceMessageId",
        "error",
        "errorCode",
        "ids",
        "status",
    }
)

# Settings shared by every property; each test sets max_examples so that the file runs in ~15 s.
DETERMINISTIC = {
    "derandomize": True,
    "database": None,
    # Timings vary on shared CI machines; a slow example is not a failure here.
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
}

# Unicode text including lone surrogates: JSON can carry them ("\ud800"), json.loads keeps them.
texts = st.text(st.characters(exclude_categories=()), max_size=12)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
# Values a wrong-typed or hostile field is most likely to be confused with.
tricky_values = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        1.5,
        "",
        " ",
        "\n\t",
        "true",
        "false",
        "null",
        "0",
        [],
        {},
        {"message": "hi"},
        [True],
        INSTANCE_ID,
        INSTANCE_ID.lower(),
        f" {INSTANCE_ID} ",
        "5511999999999",
        "120363019502650977-group",
        "120363019502650977@g.us",
        "120363025246125486@newsletter",
        "5511999999999-broadcast",
        "status@broadcast",
        "81896604192873@lid",
        "ReceivedCallback",
        "DeliveryCallback",
    ]
)
values = st.one_of(tricky_values, json_values)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), texts)


@st.composite
def mutated_callbacks(draw: st.DrawFn, names: List[str] = RECEIVED) -> Dict[str, Any]:
    """A real fixture with up to four fields replaced, deleted, added, or changed one level down."""
    payload: Dict[str, Any] = copy.deepcopy(CALLBACKS[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(0, 4))):
        operation = draw(st.sampled_from(["set", "delete", "set_nested", "delete_nested"]))
        nested = sorted(key for key, value in payload.items() if isinstance(value, dict))
        # Drawn values are copied: strategies such as st.just() hand out one shared object, and
        # a later "set_nested" would otherwise change it for every following example.
        if operation == "set":
            payload[draw(keys)] = copy.deepcopy(draw(values))
        elif operation == "delete" and payload:
            del payload[draw(st.sampled_from(sorted(payload)))]
        elif operation == "set_nested" and nested:
            inner = payload[draw(st.sampled_from(nested))]
            inner[draw(st.one_of(st.sampled_from(sorted(inner) or ["message"]), texts))] = (
                copy.deepcopy(draw(values))
            )
        elif operation == "delete_nested" and nested:
            inner = payload[draw(st.sampled_from(nested))]
            if inner:
                del inner[draw(st.sampled_from(sorted(inner)))]
    return payload


any_callbacks = st.one_of(
    mutated_callbacks(),
    mutated_callbacks(sorted(CALLBACKS)),
    json_values,
)


def outcome_of(payload: Any, config: ChannelConfig) -> Any:
    parsed = parse_callback(payload, config)
    assert sum(isinstance(parsed, kind) for kind in OUTCOMES) == 1, parsed
    event(type(parsed).__name__)
    return parsed


@settings(max_examples=200, **DETERMINISTIC)
@given(payload=json_values, config=CONFIGS)
def test_any_json_value_has_exactly_one_outcome(payload: Any, config: ChannelConfig) -> None:
    outcome_of(payload, config)


# The ways one JSON value can reach the webhook as bytes: lone surrogates as escapes, as the raw
# bytes json.loads lets through ("surrogatepass"), or in a UTF-16 body, which json.loads also reads.
ENCODINGS = {
    "ascii escapes": lambda value: json.dumps(value).encode("ascii"),
    "raw utf-8": lambda value: json.dumps(value, ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    ),
    "utf-16": lambda value: json.dumps(value, ensure_ascii=False).encode("utf-16", "surrogatepass"),
}


# Lone halves of an emoji, whole emoji, accents and ASCII: generic text rarely draws a surrogate,
# and the fields that reach the bot (text, sender name) are the ones that must come out clean.
surrogate_texts = st.text(
    st.sampled_from(["a", "\u00e9", "\ud83d", "\ude00", "\U0001f600", "\\"]), min_size=1, max_size=6
)


@st.composite
def callbacks_with_surrogates(draw: st.DrawFn) -> Dict[str, Any]:
    payload: Dict[str, Any] = copy.deepcopy(CALLBACKS["received_text"])
    payload["text"] = {"message": draw(surrogate_texts)}
    payload["senderName"] = draw(surrogate_texts)
    return payload


@settings(max_examples=300, **DETERMINISTIC)
@given(
    payload=st.one_of(any_callbacks, callbacks_with_surrogates()),
    config=CONFIGS,
    encoding=st.sampled_from(sorted(ENCODINGS)),
)
def test_the_raw_body_parses_as_its_decoded_value_does(
    payload: Any, config: ChannelConfig, encoding: str
) -> None:
    # parse_body skips the surrogate walk when the bytes rule surrogates out: that shortcut must
    # never change an outcome, whatever the text and however it is encoded. repr, not ==, because
    # NaN (which JSON carries) is not equal to itself.
    # The oracle is the value the body decodes to: json.loads joins a surrogate pair that the
    # value held as two separate code points into one emoji, as it would for Z-API's bytes.
    body = ENCODINGS[encoding](payload)
    assert repr(parse_body(body, config)) == repr(parse_callback(json.loads(body), config))


@settings(max_examples=200, **DETERMINISTIC)
@given(payload=any_callbacks, config=CONFIGS)
def test_a_mangled_callback_has_exactly_one_outcome_and_is_left_untouched(
    payload: Any, config: ChannelConfig
) -> None:
    before = json.dumps(payload)
    first = outcome_of(payload, config)
    assert json.dumps(payload) == before, "parse_callback changed its input"
    assert parse_callback(payload, config) == first, "parse_callback is not deterministic"


@settings(max_examples=200, **DETERMINISTIC)
@given(payload=any_callbacks, config=CONFIGS)
def test_an_inbound_message_has_text_phone_and_id(payload: Any, config: ChannelConfig) -> None:
    parsed = outcome_of(payload, config)
    if not isinstance(parsed, InboundMessage):
        return
    for value in (parsed.text, parsed.phone, parsed.message_id):
        assert isinstance(value, str) and value.strip(), parsed
    assert parsed.instance_id == config.credentials.instance_id
    assert parsed.dedup_key == f"{INSTANCE_ID}:{parsed.message_id}"
    # A cleaned copy: equal to the payload once its lone surrogates are replaced (a dict key
    # such as "\ud800" included), and to the payload itself when there was nothing to clean.
    assert parsed.raw == sanitize(payload)


# Whatever credentials.yml says in media_texts (null, "", blanks: all legal YAML).
media_text_overrides = st.dictionaries(
    st.sampled_from(sorted(DEFAULT_MEDIA_TEXTS)), st.one_of(st.none(), texts), max_size=4
)


@settings(max_examples=200, **DETERMINISTIC)
@given(payload=mutated_callbacks(), overrides=media_text_overrides)
def test_configured_media_texts_never_make_an_empty_message(
    payload: Dict[str, Any], overrides: Dict[str, Any]
) -> None:
    try:
        config = ChannelConfig.from_mapping(
            channel_block(media_texts=overrides, allow_groups=True, allow_reactions=True)
        )
    except ConfigError:
        return  # refusing a blank text at start-up would be a fix as good as ignoring the message
    parsed = outcome_of(payload, config)
    if isinstance(parsed, InboundMessage):
        assert parsed.text.strip(), (parsed.kind, overrides)


@settings(max_examples=200, **DETERMINISTIC)
@given(payload=mutated_callbacks(), config=CONFIGS)
def test_our_own_message_is_never_answered(payload: Dict[str, Any], config: ChannelConfig) -> None:
    payload["fromMe"] = True
    parsed = outcome_of(payload, config)
    # The owner's messages pause the bot; they never reach a turn as the customer's.
    assert not isinstance(parsed, InboundMessage) or parsed.from_owner


@settings(max_examples=200, **DETERMINISTIC)
@given(
    payload=mutated_callbacks(),
    instance=values.filter(lambda value: value != INSTANCE_ID),
    absent=st.booleans(),
    config=CONFIGS,
)
def test_another_instances_callback_is_never_answered(
    payload: Dict[str, Any], instance: Any, absent: bool, config: ChannelConfig
) -> None:
    if absent:
        payload.pop("instanceId", None)
    else:
        payload["instanceId"] = instance
    assert not isinstance(outcome_of(payload, config), InboundMessage)


group_markers = st.one_of(
    st.just({"isGroup": True}),
    texts.map(lambda prefix: {"phone": f"{prefix}-group"}),
    texts.map(lambda prefix: {"phone": f"{prefix}@g.us"}),
)


@settings(max_examples=200, **DETERMINISTIC)
@given(payload=mutated_callbacks(), marker=group_markers)
def test_a_group_message_is_never_answered_unless_groups_are_allowed(
    payload: Dict[str, Any], marker: Dict[str, Any]
) -> None:
    payload.update(marker)
    assert not isinstance(outcome_of(payload, DEFAULT), InboundMessage)


@settings(max_examples=200, **DETERMINISTIC)
@given(payload=any_callbacks, config=CONFIGS)
def test_reasons_do_not_grow_with_the_payload(payload: Any, config: ChannelConfig) -> None:
    # Reasons are logged and returned in the 400/200 body: a 250 KB field must not come back whole.
    parsed = outcome_of(payload, config)
    if isinstance(parsed, (Ignored, Invalid)):
        assert isinstance(parsed.reason, str) and parsed.reason
        assert len(parsed.reason) < 1000
    if isinstance(parsed, Event):
        # ERROR only for a lost session: someone must act on it.
        assert parsed.level in (logging.DEBUG, logging.INFO, logging.WARNING) or (
            parsed.level == logging.ERROR and parsed.connected is False
        )
    if isinstance(parsed, DeliveryFailed):
        assert len(parsed.error) < 1000 and len(parsed.phone) < 1000


def test_the_generators_reach_messages_that_are_answered() -> None:
    # Guards the properties above against passing vacuously: the mutated callbacks must still
    # produce answerable messages, including group messages when groups are allowed.
    search = settings(max_examples=500, **DETERMINISTIC)
    answered = find(
        mutated_callbacks(),
        lambda payload: (
            payload not in CALLBACKS.values()
            and isinstance(parse_callback(payload, DEFAULT), InboundMessage)
        ),
        settings=search,
    )
    assert isinstance(parse_callback(answered, DEFAULT), InboundMessage)

    def group_answered(payload: Dict[str, Any]) -> bool:
        payload = {**payload, "isGroup": True}
        return isinstance(parse_callback(payload, GROUPS), InboundMessage)

    assert group_answered(find(mutated_callbacks(), group_answered, settings=search))

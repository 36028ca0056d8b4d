"""The requests the benchmarks send: Z-API callbacks, Rasa rest messages, Twilio forms.

Z-API bodies come from the emulator's own ``received_envelope`` (the documented field order and
values), so the channel parses what Z-API really posts.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional
from urllib.parse import urlencode

from bench import wrk
from bench.server import CLIENT_TOKEN, INSTANCE_ID, INSTANCE_TOKEN
from zapi_channel.config import ChannelConfig
from zapi_channel.emulator import EmulatedInstance, received_envelope
from zapi_channel.inbound import InboundMessage, parse_callback

_INSTANCE = EmulatedInstance(INSTANCE_ID, INSTANCE_TOKEN, CLIENT_TOKEN)


def phone_for(number: int) -> str:
    """A distinct, valid customer number per message: every message is a new conversation."""
    return f"55119{number % 100_000_000:08d}"


def message_id_for(number: int, prefix: str = "BENCH") -> str:
    return f"{prefix}{number:015d}"


def received_callback(
    phone: str, message_id: str, text: str, *, momment: int = 0
) -> Dict[str, Any]:
    payload = received_envelope(
        _INSTANCE, phone=phone, message_id=message_id, momment=momment, sender_name="Bench"
    )
    payload["type"] = "ReceivedCallback"
    payload["text"] = {"message": text}
    return payload


def received_template(text: str = "hi") -> str:
    """A ReceivedCallback with wrk's placeholders for the message id and the phone."""
    payload = received_callback(wrk.PHONE, wrk.MESSAGE_ID, text, momment=1_700_000_000)
    # wrk fills in the phone and the id only: one made-up LID for every request would link all
    # of them into one customer's conversation.
    payload["senderLid"] = payload["chatLid"] = None
    return json.dumps(payload)


def rest_body(sender: str, text: str, metadata: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    body: Dict[str, Any] = {"sender": sender, "message": text}
    if metadata is not None:
        # RestInput passes the body's "metadata" on to the bot (RestInput.get_metadata).
        body["metadata"] = metadata
    return body


_CONFIG = ChannelConfig.from_mapping(
    {
        "instance_id": INSTANCE_ID,
        "instance_token": INSTANCE_TOKEN,
        "client_token": CLIENT_TOKEN,
        "webhook_token": "unused-here",
    }
)


def channel_metadata(phone: str, message_id: str, text: str) -> Dict[str, Any]:
    """The metadata our channel hands Rasa with this customer's message (the WhatsApp name and
    the rest of the envelope, under "zapi").

    The end-to-end baseline sends the same through Rasa's rest channel: the demo's actions read
    it (the greeting uses the customer's name), so without it the bot itself would do less work
    behind rest, and that difference would be counted as our channel's.
    """
    parsed = parse_callback(received_callback(phone, message_id, text), _CONFIG)
    assert isinstance(parsed, InboundMessage), parsed
    return {"zapi": dict(parsed.metadata)}


def twilio_form(sender: str, text: str) -> bytes:
    # What Twilio posts for an incoming WhatsApp message (the fields TwilioInput reads).
    return urlencode(
        {"From": f"whatsapp:+{sender}", "Body": text, "To": "whatsapp:+15550000000"}
    ).encode()

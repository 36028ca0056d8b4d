"""The requests the benchmarks send: Z-API callbacks, Rasa rest messages, Twilio forms.

Z-API bodies come from the emulator's own ``received_envelope`` (the documented field order and
values), so the channel parses what Z-API really posts.
"""

from __future__ import annotations

import json
from typing import Any, Dict
from urllib.parse import urlencode

from bench import wrk
from bench.server import CLIENT_TOKEN, INSTANCE_ID, INSTANCE_TOKEN
from zapi_channel.emulator import EmulatedInstance, received_envelope

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
    return json.dumps(received_callback(wrk.PHONE, wrk.MESSAGE_ID, text, momment=1_700_000_000))


def rest_body(sender: str, text: str) -> Dict[str, Any]:
    return {"sender": sender, "message": text}


def twilio_form(sender: str, text: str) -> bytes:
    # What Twilio posts for an incoming WhatsApp message (the fields TwilioInput reads).
    return urlencode(
        {"From": f"whatsapp:+{sender}", "Body": text, "To": "whatsapp:+15550000000"}
    ).encode()

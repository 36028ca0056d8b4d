"""A local Z-API: its HTTP API, its webhooks and a pretend customer, with no phone and no account.

Developers and the end-to-end tests run the whole loop against it: a customer message goes in as a
``ReceivedCallback`` posted to the channel's webhook, Rasa answers through ``send-*`` calls, and the
emulator answers those the way Z-API does, then posts the delivery and status callbacks.

Run it (``--help`` lists every flag)::

    python -m zapi_channel.emulator --port 8300 \\
        --webhook-url "http://127.0.0.1:5005/webhooks/zapi/webhook?token=..."

point the channel's ``base_url`` at ``http://127.0.0.1:8300`` with the emulator's credentials
(printed defaults: :data:`DEFAULT_INSTANCE_ID`, :data:`DEFAULT_INSTANCE_TOKEN`,
:data:`DEFAULT_CLIENT_TOKEN`), and talk as a customer::

    curl -s localhost:8300/_emulator/messages -d '{"phone": "5511999999999", "text": "oi"}'
    curl -s 'localhost:8300/_emulator/messages?phone=5511999999999'

It is strict where Z-API is strict (credentials, verbs, content type, required fields, https-only
webhooks), so a channel bug shows up here before it shows up on WhatsApp. Behaviour that Z-API does
not document is marked *guess* below; see ``/work/shared/zapi-reference.md`` for the facts.

HTTP webhooks: Z-API accepts only https webhook URLs, and so does :class:`Emulator` by default. A
local Rasa listens on plain http, so ``Emulator(allow_http_webhooks=True)`` also accepts ``http``
URLs whose host is ``127.0.0.1``, ``localhost`` or ``::1`` (never any other http URL). The command
line turns this on by default, since it is a local development tool; ``--no-allow-http-webhooks``
makes it as strict as Z-API.

The emulator's own JSON API lives under ``/_emulator`` (customer messages, conversations, faults,
connection switch, health); see :func:`build_app`. Its chat page, at ``/``, is that API
in a browser: type as the customer, see the bot's answers as WhatsApp shows them.

The package, one module per part: ``values`` (defaults, replies, instances, faults), ``rules``
(which send bodies Z-API accepts, pure), ``customer`` (the pretend customer's messages as Z-API's
callbacks, pure), ``server`` (the emulator's state, its REST API and the webhooks it posts),
``app`` (the sanic app that serves it, HTTP only), ``page`` (the chat page's files from
``zapi_channel/static``) and ``cli`` (the command line).
"""

from zapi_channel.client import CALLBACK_URL_FIELDS
from zapi_channel.emulator.app import build_app
from zapi_channel.emulator.cli import build_parser, emulator_from_args, main, run
from zapi_channel.emulator.customer import (
    CONTENT_KEYS,
    CustomerMessage,
    parse_customer_message,
    received_callback,
    received_envelope,
)
from zapi_channel.emulator.page import STATIC_DIR, STATIC_FILES
from zapi_channel.emulator.rules import (
    ENDPOINT_METHODS,
    SEND_CHECKS,
    base_endpoint,
    validate_send,
)
from zapi_channel.emulator.server import Emulator
from zapi_channel.emulator.values import (
    BUTTON_TERMS_ERROR,
    DEFAULT_CLIENT_TOKEN,
    DEFAULT_HOST,
    DEFAULT_INSTANCE_ID,
    DEFAULT_INSTANCE_TOKEN,
    DEFAULT_PHONE,
    DEFAULT_PORT,
    EmulatedInstance,
    Faults,
    Reply,
    WebhookResult,
    check_webhook_url,
    fake_lid,
    new_message_id,
    new_zaap_id,
)

__all__ = [
    "BUTTON_TERMS_ERROR",
    "CALLBACK_URL_FIELDS",
    "CONTENT_KEYS",
    "DEFAULT_CLIENT_TOKEN",
    "DEFAULT_HOST",
    "DEFAULT_INSTANCE_ID",
    "DEFAULT_INSTANCE_TOKEN",
    "DEFAULT_PHONE",
    "DEFAULT_PORT",
    "ENDPOINT_METHODS",
    "SEND_CHECKS",
    "STATIC_DIR",
    "STATIC_FILES",
    "CustomerMessage",
    "EmulatedInstance",
    "Emulator",
    "Faults",
    "Reply",
    "WebhookResult",
    "base_endpoint",
    "build_app",
    "build_parser",
    "check_webhook_url",
    "emulator_from_args",
    "fake_lid",
    "main",
    "new_message_id",
    "new_zaap_id",
    "parse_customer_message",
    "received_callback",
    "received_envelope",
    "run",
    "validate_send",
]

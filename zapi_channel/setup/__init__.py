"""The setup side: what a bot builder runs once, or now and then, never the running bot.

- :mod:`~zapi_channel.setup.steps`: validate, connect, webhook URL, verify, rotate, disconnect.
- :mod:`~zapi_channel.setup.credstore`: reading and rewriting ``credentials.yml`` and ``.env``.
- :mod:`~zapi_channel.setup.cli`: the ``zapi-channel`` command line over both.

The steps are re-exported here: ``from zapi_channel import setup; await setup.connect(...)``.
"""

from zapi_channel.setup.steps import (
    CALLBACK_FIELDS,
    ELSEWHERE,
    EMPTY,
    OURS,
    WEBHOOK_PATH,
    ClientFactory,
    Verification,
    connect,
    current_credentials,
    disconnect,
    host_of,
    new_webhook_token,
    register_webhook,
    require_https,
    rotate,
    validate,
    verify,
    webhook_report,
    webhook_token_of,
    webhook_url,
)

__all__ = [
    "CALLBACK_FIELDS",
    "ELSEWHERE",
    "EMPTY",
    "OURS",
    "WEBHOOK_PATH",
    "ClientFactory",
    "Verification",
    "connect",
    "current_credentials",
    "disconnect",
    "host_of",
    "new_webhook_token",
    "register_webhook",
    "require_https",
    "rotate",
    "validate",
    "verify",
    "webhook_report",
    "webhook_token_of",
    "webhook_url",
]

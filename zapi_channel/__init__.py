"""zapi-channel: a Rasa channel that puts a Rasa assistant on WhatsApp through Z-API.

Rasa loads the channel by module path from ``credentials.yml`` (``zapi_channel.ZApiInput:``).
``ZApiInput`` and ``ZApiOutput`` import Rasa, which takes a second or two, so they are loaded on
first access: the ``zapi-channel`` command line starts instantly and never needs Rasa.
"""

from typing import TYPE_CHECKING, Any

from zapi_channel.client import DeviceInfo, InstanceStatus, SendResult, ZApiClient
from zapi_channel.config import ChannelConfig, ZApiCredentials
from zapi_channel.errors import (
    ConfigError,
    InvalidCredentials,
    NotConnected,
    SendNotAccepted,
    TransportError,
    ZApiError,
    ZApiResponseError,
    ZApiTimeout,
)

if TYPE_CHECKING:
    from zapi_channel.channel import ZApiInput, ZApiOutput

__version__ = "0.1.0"

__all__ = [
    "ChannelConfig",
    "ConfigError",
    "DeviceInfo",
    "InstanceStatus",
    "InvalidCredentials",
    "NotConnected",
    "SendNotAccepted",
    "SendResult",
    "TransportError",
    "ZApiClient",
    "ZApiCredentials",
    "ZApiError",
    "ZApiInput",
    "ZApiOutput",
    "ZApiResponseError",
    "ZApiTimeout",
]


def __getattr__(name: str) -> Any:
    if name in ("ZApiInput", "ZApiOutput"):
        from zapi_channel import channel

        return getattr(channel, name)
    raise AttributeError(f"module 'zapi_channel' has no attribute {name!r}")

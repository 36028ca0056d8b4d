"""Every exception zapi-channel raises.

The tree::

    ZApiError                      base: catch this to catch everything below
    ├── ConfigError                credentials.yml / options are missing or malformed
    ├── InvalidCredentials         Z-API refused the instance id, instance token or Client-Token
    ├── NotConnected               the instance exists but no phone is paired (QR code not scanned)
    ├── ZApiResponseError          any other answer Z-API gave that is not a success
    │   └── SendNotAccepted        a send answered 2xx but carried no ``messageId``
    ├── TransportError             Z-API could not be reached (DNS, refused, TLS, ...)
    │   └── ZApiTimeout            Z-API did not answer in time
    └── StateError                 the channel's own state (the SQLite file, Redis) failed
        ├── StateUnavailable       a write did not take (disk full, read-only, Redis down):
        │                          the webhook answers 503 so that Z-API sends the message again
        ├── StateCorrupt           the state file is not a readable SQLite database: no start
        └── StateInUse             another process already consumes the state file: no start

Low-level ``httpx`` errors are translated into this tree at exactly one place
(:meth:`zapi_channel.client.ZApiClient.request`). Context is keyword-only and never holds a secret:
the endpoint *name* (``"send-text"``), never the URL, because Z-API puts the instance token in the
URL path.
"""

from __future__ import annotations

from typing import Any, Optional, Type


class ZApiError(Exception):
    """Base class of every error raised by zapi-channel."""


class ConfigError(ZApiError):
    """The channel's configuration is missing something or holds a bad value."""


class ZApiRequestError(ZApiError):
    """An error tied to one call to one Z-API endpoint."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        status_code: Optional[int] = None,
        zapi_error: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status_code = status_code
        self.zapi_error = zapi_error


class InvalidCredentials(ZApiRequestError):
    """Z-API does not accept the instance id, the instance token or the Client-Token."""


class NotConnected(ZApiRequestError):
    """The instance is valid but its WhatsApp session is not connected."""


class ZApiResponseError(ZApiRequestError):
    """Z-API answered, and the answer is not a success.

    ``retry_after`` holds the seconds of a ``Retry-After`` header, when Z-API sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        status_code: Optional[int] = None,
        zapi_error: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint, status_code=status_code, zapi_error=zapi_error)
        self.retry_after = retry_after


class SendNotAccepted(ZApiResponseError):
    """A send was answered without a ``messageId``: Z-API did not queue the message."""


class TransportError(ZApiRequestError):
    """Z-API could not be reached, or the connection broke before an answer came.

    ``request_sent`` tells whether the request may already have reached Z-API (a read timeout, a
    connection dropped mid-answer): resending such a message could deliver it twice.
    """

    def __init__(self, message: str, *, endpoint: str, request_sent: bool) -> None:
        super().__init__(message, endpoint=endpoint)
        self.request_sent = request_sent


class ZApiTimeout(TransportError):
    """Z-API did not answer within the configured timeout."""


class StateError(ZApiError):
    """The channel's own state could not be used. ``where`` names it (a path, never a URL)."""

    def __init__(self, message: str, *, where: str) -> None:
        super().__init__(message)
        self.where = where

    def __reduce__(self) -> Any:
        # It crosses from the state file's writer process pickled; the default reduction
        # calls the class with its message only, and ``where`` is required.
        return (_state_error, (type(self), str(self), self.where))


def _state_error(kind: Type[StateError], message: str, where: str) -> StateError:
    return kind(message, where=where)


class StateUnavailable(StateError):
    """A read or write of the state did not take; nothing was acknowledged."""


class StateCorrupt(StateError):
    """The state file cannot be read as the channel's SQLite database."""


class StateInUse(StateError):
    """Another running process already owns the state file."""


__all__ = [
    "ConfigError",
    "InvalidCredentials",
    "NotConnected",
    "SendNotAccepted",
    "StateCorrupt",
    "StateError",
    "StateInUse",
    "StateUnavailable",
    "TransportError",
    "ZApiError",
    "ZApiRequestError",
    "ZApiResponseError",
    "ZApiTimeout",
]

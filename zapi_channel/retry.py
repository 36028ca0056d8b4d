"""When and how a failed send is tried again.

Only failures that are safe to repeat are retried: the request never reached Z-API (connection
refused, connect timeout), or Z-API said "not now" (429, 502, 503, 504). A client error
(400/403/404) will fail the same way again, and a read timeout means the message may already be
queued on Z-API: sending it again could deliver it twice, so it is reported, not repeated.

Example::

    policy = RetryPolicy(attempts=4, initial_seconds=0.5, max_seconds=8)
    policy.is_transient(exc)  # -> bool

The waits grow exponentially with full jitter (a wait drawn between 0 and
``initial_seconds * 2 ** (retry - 1)``, capped at ``max_seconds``), so many conversations retrying
at once do not hit Z-API in lockstep; a ``Retry-After`` from Z-API wins.

The loop is written out rather than built with tenacity: a send's first attempt, which is
nearly every send, then costs one ``await`` and no retry machinery (tenacity's wrapper inspected
the callables on every call, about a tenth of a send's CPU on the aiohttp transport).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, TypeVar

from zapi_channel.errors import (
    InvalidCredentials,
    NotConnected,
    SendNotAccepted,
    TransportError,
    ZApiResponseError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a send is repeated (``attempts`` counts the first try)."""

    attempts: int = 4
    initial_seconds: float = 0.5
    max_seconds: float = 8.0
    #: A Retry-After longer than this is capped: a customer should not wait minutes for an answer.
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    @staticmethod
    def is_transient(exc: BaseException) -> bool:
        if isinstance(exc, TransportError):
            return not exc.request_sent
        if isinstance(exc, (InvalidCredentials, NotConnected, SendNotAccepted)):
            return False
        return isinstance(exc, ZApiResponseError) and exc.status_code in RETRYABLE_STATUSES

    def wait_before(self, retry: int, exc: BaseException) -> float:
        """Seconds to wait before retry number ``retry`` (from 1) after ``exc``."""
        if isinstance(exc, ZApiResponseError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        ceiling = min(self.max_seconds, self.initial_seconds * 2 ** (retry - 1))
        return random.uniform(0.0, ceiling)  # noqa: S311 - jitter, not a secret

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        endpoint: str,
        sleep: Optional[Callable[[float], Awaitable[Any]]] = None,
        on_retry: Optional[Callable[[str], None]] = None,
    ) -> T:
        """Run ``call``, repeating it on transient failures; the last failure is re-raised.

        ``on_retry(endpoint)`` is told of each new attempt (the metrics count them).
        """
        attempt = 1
        while True:
            try:
                return await call()
            except Exception as exc:
                if attempt >= self.attempts or not self.is_transient(exc):
                    raise
                wait = self.wait_before(attempt, exc)
                if on_retry is not None:
                    on_retry(endpoint)
                logger.warning(
                    "Z-API %s failed (attempt %d of %d): %s; retrying in %.1f s",
                    endpoint,
                    attempt,
                    self.attempts,
                    exc,
                    wait,
                )
            await (sleep if sleep is not None else asyncio.sleep)(wait)
            attempt += 1


__all__ = ["RETRYABLE_STATUSES", "RetryPolicy"]

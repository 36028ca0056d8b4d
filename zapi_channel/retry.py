"""When and how a failed send is tried again.

Only failures that are safe to repeat are retried: the request never reached Z-API (connection
refused, connect timeout), or Z-API said "not now" (429, 502, 503, 504). A client error
(400/403/404) will fail the same way again, and a read timeout means the message may already be
queued on Z-API: sending it again could deliver it twice, so it is reported, not repeated.

Example::

    policy = RetryPolicy(attempts=4, initial_seconds=0.5, max_seconds=8)
    policy.is_transient(exc)  # -> bool

The waits grow exponentially with full jitter (tenacity's ``wait_random_exponential``), so many
conversations retrying at once do not hit Z-API in lockstep; a ``Retry-After`` from Z-API wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

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

    def _wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, ZApiResponseError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        jittered = wait_random_exponential(multiplier=self.initial_seconds, max=self.max_seconds)
        return float(jittered(state))

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

        def log_retry(state: RetryCallState) -> None:
            if on_retry is not None:
                on_retry(endpoint)
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            logger.warning(
                "Z-API %s failed (attempt %d of %d): %s; retrying in %.1f s",
                endpoint,
                state.attempt_number,
                self.attempts,
                exc,
                wait,
            )

        options: dict[str, Any] = {}
        if sleep is not None:
            options["sleep"] = sleep
        retrying = AsyncRetrying(
            retry=retry_if_exception(self.is_transient),
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            before_sleep=log_retry,
            reraise=True,
            **options,
        )
        result: T = await retrying(call)
        return result


__all__ = ["RETRYABLE_STATUSES", "RetryPolicy"]

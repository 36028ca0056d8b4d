"""The delivery layer's interface: what happens to a customer message after the webhook's 200.

A :class:`Delivery` keeps an accepted message durably *before* the webhook answers, runs its turn
in order per customer, and forgets it only once the turn is over. Beside the inbox it holds the
small state the conversation needs across turns and restarts: deduplication keys, the numbered
choices last offered, sent markers (which answers of a message already went out), the messages
our sends created, the links between a customer's number and ``@lid``, the conversations a human
took over, and the failed-sends journal.

Identity. WhatsApp names one customer by a number or by a ``<digits>@lid``, and Z-API switches
between the two. A customer's Rasa conversation (``sender_id``) is the form under which the
customer was *first* seen, exactly as Z-API sent it; every other form that any callback links to
it (a number arriving with a ``chatLid``, an ``@lid`` phone whose number is known) maps to the
same conversation from then on. Why the first form and not always the ``@lid`` that Z-API's tips
prefer: a conversation that began before its link was known keeps its ``sender_id``, so no history
is orphaned, including every conversation of the versions that keyed them by ``phone``. When two
forms had each begun a conversation before a callback linked them, the older conversation wins
and both forms go to it from then on (the younger one's history stays in the tracker store).
Answers go to the ``phone`` of the message being answered, as Z-API sent it.

Two implementations, chosen by configuration (:func:`zapi_channel.delivery.open_delivery`):
:class:`~zapi_channel.delivery.embedded.EmbeddedDelivery` (one SQLite file, the default) and
:class:`~zapi_channel.delivery.shared.RedisDelivery` (``redis_url``: several instances). Both pass
the same contract suite (``tests/test_delivery_contract.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
)

from zapi_channel.delivery.workers import ConversationWorkers
from zapi_channel.inbound import InboundMessage, merge_burst, mergeable
from zapi_channel.outbound import Choice

logger = logging.getLogger(__name__)

#: The outcome of a send that was not confirmed.
FAILED = "failed"  # Z-API refused it or could not be reached: it was not sent
UNKNOWN = "unknown"  # the request went out and no answer came: it may have been sent

#: How long the numbered choices last offered to a customer still answer a reply.
CHOICES_TTL_SECONDS = 24 * 3600.0

#: Runs one Rasa turn for a message.
TurnHandler = Callable[[InboundMessage], Awaitable[None]]


@dataclass(frozen=True)
class FailedSend:
    """An answer Z-API finally did not take: the request body (never a token) and the error."""

    id: str
    at: str
    endpoint: str
    body: Dict[str, Any]
    error: str
    outcome: str

    @property
    def phone(self) -> str:
        return str(self.body.get("phone", ""))

    @classmethod
    def new(cls, endpoint: str, body: Mapping[str, Any], error: str, outcome: str) -> FailedSend:
        return cls(
            id=uuid.uuid4().hex[:12],
            at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            endpoint=endpoint,
            body=dict(body),
            error=error,
            outcome=outcome,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FailedSend:
        return cls(
            id=str(data["id"]),
            at=str(data["at"]),
            endpoint=str(data["endpoint"]),
            body=dict(data.get("body") or {}),
            error=str(data.get("error", "")),
            outcome=str(data.get("outcome", FAILED)),
        )

    def to_json(self) -> str:
        # "replace": a lone surrogate in a body must not make the journal itself fail.
        text = json.dumps(asdict(self), ensure_ascii=False)
        return text.encode("utf-8", "replace").decode("utf-8")


class Journal(Protocol):
    """What the command line reads and edits: failed sends (``zapi-channel failed list``,
    ``failed retry``) and the conversations a human took over (``zapi-channel handoff``)."""

    @property
    def where(self) -> str: ...

    async def record(
        self, endpoint: str, body: Mapping[str, Any], error: str, outcome: str
    ) -> FailedSend: ...

    async def entries(self) -> List[FailedSend]: ...

    async def remove(self, ids: Iterable[str]) -> int:
        """Drop entries (after a successful resend); returns how many were removed."""

    async def handoffs(self) -> List[Tuple[str, float]]:
        """``(sender_id, paused until)`` of every conversation a human holds, in epoch seconds."""

    async def find_conversation(self, form: str) -> Optional[str]:
        """The ``sender_id`` a number or ``@lid`` belongs to, if it was ever seen."""

    async def hand_back(self, conversation: str) -> bool:
        """End a takeover now: the bot answers the customer's next message. False if none."""

    async def set_whatsapp(self, connected: bool, at: float) -> None:
        """Note what the last connection callback said, and when (epoch seconds)."""

    async def whatsapp(self) -> Optional[Tuple[bool, float]]:
        """What the last connection callback said and when; None before the first one."""

    async def aclose(self) -> None: ...


class Delivery(Journal, Protocol):
    """The channel's only view of its state. See the module docstring."""

    async def accept(self, message: InboundMessage) -> bool:
        """Keep ``message`` durably and queue its turn; False if it was seen before.

        Raises :class:`~zapi_channel.errors.StateUnavailable` when it could not be kept: the
        webhook must then not answer 2xx.
        """

    async def start(self, handler: TurnHandler) -> None:
        """Run turns from now on: first what an earlier run kept and did not answer, in order."""

    async def stop(self, grace_seconds: float) -> List[InboundMessage]:
        """Start no new turn; let queued ones finish within the grace period, then cancel them.

        Returns the messages whose turn did not finish: they stay kept for the next start.
        Messages accepted from now on are kept, not run.
        """

    @property
    def pending(self) -> int:
        """Messages accepted here whose turn has not finished (queued or running)."""

    async def remember_choices(self, phone: str, choices: List[Choice]) -> None: ...

    async def take_choices(self, phone: str) -> Optional[List[Choice]]:
        """The choices last offered to ``phone``, forgotten once read: they answer one reply."""

    async def already_sent(self, message_key: str, answer: int) -> bool:
        """Whether answer number ``answer`` (from 1) to a message went out in an earlier run."""

    async def mark_sent(self, message_key: str, answer: int) -> None: ...

    async def remember_outgoing(self, message_id: str, record: Mapping[str, Any]) -> None:
        """Keep what one of our sends was (endpoint, phone, body) under the id Z-API gave it."""

    async def outgoing(self, message_id: str) -> Optional[Dict[str, Any]]:
        """What :meth:`remember_outgoing` kept, while it lasts (a day)."""

    async def pause(self, conversation: str, until: float) -> None:
        """A human took the conversation over until ``until`` (epoch seconds)."""

    async def handoff(self, conversation: str) -> Optional[float]:
        """Until when a human holds the conversation (0: handed back); None if nobody does."""

    async def end_handoff(self, conversation: str) -> None: ...


#: The most messages one burst merges: a backlog (after a restart) is not one endless message.
MAX_BURST = 20


class Turns:
    """Per-customer FIFO turns, shared by both implementations.

    ``finish`` runs after a turn ended, well or badly, but not when a stop cancelled it: a
    cancelled turn's message stays kept, to run again on the next start.

    With a ``merge_window`` (seconds), a customer's texts that arrive within the window of each
    other make one turn (:func:`~zapi_channel.inbound.merge_burst`). The first text's turn waits
    until the customer has been quiet for a window, but never longer than three windows after
    that text arrived; it waits outside the concurrency limit, and then takes the texts queued
    behind it. Each message is still kept, deduplicated and finished on its own.
    """

    def __init__(
        self,
        max_concurrency: int,
        finish: Callable[[InboundMessage], Awaitable[None]],
        *,
        merge_window: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._window = max(0.0, merge_window)
        self.workers: ConversationWorkers[InboundMessage] = ConversationWorkers(
            max_concurrency, before=self._settle if self._window else None
        )
        self._finish = finish
        self._clock = clock
        # When each waiting message arrived, and each conversation's latest arrival.
        self._arrived: Dict[str, float] = {}
        self._latest: Dict[str, float] = {}
        self.handler: Optional[TurnHandler] = None

    def submit(self, message: InboundMessage) -> None:
        if message.raw:
            # Not needed by the turn (see identified()): groups are not identified.
            message = message.evolve(raw={})
        if self._window:
            now = self._clock()
            self._arrived[message.dedup_key] = now
            self._latest[message.conversation] = now
        # Per conversation, not per phone: both forms of one customer wait in one queue.
        self.workers.submit(message.conversation, message, partial(self._run, message))

    async def _settle(self, conversation: str, message: InboundMessage) -> None:
        """Wait for the rest of a burst that ``message`` may begin."""
        if not mergeable(message):
            return
        first = self._arrived.get(message.dedup_key, self._clock())
        deadline = first + 3 * self._window
        while True:
            now = self._clock()
            wake = min(self._latest.get(conversation, first) + self._window, deadline)
            if wake <= now:
                return
            await asyncio.sleep(wake - now)

    async def _run(self, message: InboundMessage) -> None:
        assert self.handler is not None
        batch = [message]
        if self._window and mergeable(message):
            batch += self.workers.take_following(
                message.conversation, mergeable, limit=MAX_BURST - 1
            )
        try:
            await self.handler(merge_burst(batch))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Run again, it would most likely fail again, at every start: it is logged, and done.
            logger.exception("The turn of message %s failed", message.message_id)
        for done in batch:
            await self._finish(done)
            arrived = self._arrived.pop(done.dedup_key, None)
            if arrived is not None and self._latest.get(done.conversation) == arrived:
                # Nothing newer from this customer: forget it (the table stays bounded).
                del self._latest[done.conversation]

    async def stop(self, grace_seconds: float) -> List[InboundMessage]:
        if await self.workers.join(grace_seconds):
            return []
        unfinished = await self.workers.cancel()
        self._arrived.clear()
        self._latest.clear()
        return unfinished


#: How long the messages our sends created are remembered (their echoes come within seconds;
#: delivery failures within minutes).
OUTGOING_TTL_SECONDS = 24 * 3600.0


def identified(message: InboundMessage, sender_id: str, linked: Sequence[str]) -> InboundMessage:
    """``message`` in its conversation, with both forms of the customer when either is known."""
    lid = message.lid or next((f for f in linked if f.lower().endswith("@lid")), None)
    number = message.number or next((f for f in linked if f.isdigit()), None)
    metadata = {**message.metadata, "lid": lid, "phone_number": number, "sender_id": sender_id}
    # The raw callback is not needed past the webhook: a queued message holds only what its
    # turn reads (thousands may wait, and each raw body is a few dozen objects more to keep).
    return message.evolve(sender_id=sender_id, lid=lid, number=number, metadata=metadata, raw={})


def message_record(message: InboundMessage) -> Dict[str, Any]:
    """The parsed message as an inbox keeps it: a restart or another instance parse no more."""
    return {
        "instance_id": message.instance_id,
        "message_id": message.message_id,
        "phone": message.phone,
        "text": message.text,
        "kind": message.kind,
        "metadata": message.metadata,
        "from_owner": message.from_owner,
        "from_api": message.from_api,
        "lid": message.lid,
        "number": message.number,
        "sender_id": message.sender_id,
    }


def message_from_record(data: Any) -> Optional[InboundMessage]:
    """:func:`message_record` undone; None for anything else (a damaged entry is skipped)."""
    try:
        return InboundMessage(
            instance_id=str(data["instance_id"]),
            message_id=str(data["message_id"]),
            phone=str(data["phone"]),
            text=str(data["text"]),
            kind=str(data["kind"]),
            metadata=dict(data["metadata"]),
            raw={},
            from_owner=bool(data.get("from_owner")),
            from_api=bool(data.get("from_api")),
            lid=data.get("lid") or None,
            number=data.get("number") or None,
            sender_id=str(data.get("sender_id") or ""),
        )
    except (TypeError, KeyError, ValueError):
        return None


#: Built once: ``json.dumps`` with options builds an encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def encode_message(message: InboundMessage) -> str:
    return _ENCODER.encode(message_record(message))


def decode_message(text: Any) -> Optional[InboundMessage]:
    try:
        return message_from_record(json.loads(text))
    except (ValueError, TypeError):
        return None


__all__ = [
    "CHOICES_TTL_SECONDS",
    "FAILED",
    "MAX_BURST",
    "OUTGOING_TTL_SECONDS",
    "UNKNOWN",
    "Delivery",
    "FailedSend",
    "Journal",
    "TurnHandler",
    "Turns",
    "decode_message",
    "encode_message",
    "identified",
    "message_from_record",
    "message_record",
]

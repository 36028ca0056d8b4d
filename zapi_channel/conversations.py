"""Human takeover, in the Rasa conversation itself: paused, resumed, and the owner's words kept.

When the shop's owner answers a customer from the phone, the bot steps back with Rasa's own
mechanism: a ``ConversationPaused`` event. Rasa then still records the customer's messages in the
tracker (so the bot knows them when it resumes) but predicts no action and sends nothing
(``MessageProcessor._should_handle_message``). ``ConversationResumed`` hands the conversation back.
The owner's messages are recorded as what they are, the business speaking: ``BotUttered`` events
whose metadata says ``{"zapi": {"sent_by": "owner"}}``.

Each change takes the conversation's lock from Rasa's lock store, as Rasa's own turns do, so it
never interleaves with a turn of another instance.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Protocol

logger = logging.getLogger(__name__)


class Conversations(Protocol):
    #: Whether a paused conversation still records the customer's messages (so the channel
    #: hands them to Rasa); if not, the channel holds them back itself.
    records_paused_messages: bool

    async def pause(
        self, sender_id: str, owner_text: Optional[str], metadata: Dict[str, Any]
    ) -> None:
        """Record what the owner wrote (if anything) and make sure the conversation is paused."""

    async def resume(self, sender_id: str) -> None:
        """Resume the conversation if it is paused."""

    async def keep_paused(self, sender_id: str) -> None:
        """Pause it again if something (a new session) resumed it while a human holds it."""


class RasaConversations:
    """:class:`Conversations` over a running Rasa ``Agent`` (``app.ctx.agent`` in ``rasa run``)."""

    records_paused_messages = True

    def __init__(self, agent: Any) -> None:
        self._agent = agent

    def __repr__(self) -> str:
        return "RasaConversations()"

    @staticmethod
    def supports(agent: Any) -> bool:
        return hasattr(agent, "processor") and hasattr(agent, "lock_store")

    async def _tracker(self, sender_id: str) -> Any:
        from rasa.core.channels.channel import CollectingOutputChannel

        # A new conversation starts its session here, not on the customer's next message: a
        # session start resets the tracker, pause included. Whatever a custom session start
        # would say goes nowhere: the owner is talking.
        return await self._agent.processor.fetch_tracker_and_update_session(
            sender_id, CollectingOutputChannel()
        )

    async def pause(
        self, sender_id: str, owner_text: Optional[str], metadata: Dict[str, Any]
    ) -> None:
        from rasa.shared.core.events import BotUttered, ConversationPaused

        async with self._agent.lock_store.lock(sender_id):
            tracker = await self._tracker(sender_id)
            changed = owner_text is not None or not tracker.is_paused()
            if owner_text is not None:
                tracker.update(BotUttered(owner_text, metadata={"zapi": metadata}))
            if not tracker.is_paused():
                tracker.update(ConversationPaused())
            if changed:
                await self._agent.processor.save_tracker(tracker)

    async def resume(self, sender_id: str) -> None:
        from rasa.shared.core.events import ConversationResumed

        async with self._agent.lock_store.lock(sender_id):
            tracker = await self._tracker(sender_id)
            if tracker.is_paused():
                tracker.update(ConversationResumed())
                await self._agent.processor.save_tracker(tracker)

    async def keep_paused(self, sender_id: str) -> None:
        await self.pause(sender_id, None, {})


class NoConversations:
    """For an agent without a tracker store (tests, custom servers): takeover only stops answers.

    Without Rasa's pause the channel still withholds the bot's turn while a human holds the
    conversation, but the customer's messages are not recorded.
    """

    records_paused_messages = False

    def __repr__(self) -> str:
        return "NoConversations()"

    async def pause(
        self, sender_id: str, owner_text: Optional[str], metadata: Dict[str, Any]
    ) -> None:
        return None

    async def resume(self, sender_id: str) -> None:
        return None

    async def keep_paused(self, sender_id: str) -> None:
        return None


__all__ = ["Conversations", "NoConversations", "RasaConversations"]

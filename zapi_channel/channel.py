"""The Rasa glue: ``ZApiInput`` (the webhook) and ``ZApiOutput`` (the answers).

Thin on purpose: deciding what a callback means lives in :mod:`zapi_channel.inbound`, shaping the
answers in :mod:`zapi_channel.outbound`, HTTP in :mod:`zapi_channel.client`. This module only wires
them to sanic and to Rasa's ``on_new_message``.

``credentials.yml``::

    zapi_channel.ZApiInput:
      instance_id: ${ZAPI_INSTANCE_ID}
      instance_token: ${ZAPI_INSTANCE_TOKEN}
      client_token: ${ZAPI_CLIENT_TOKEN}
      webhook_token: ${ZAPI_WEBHOOK_TOKEN}
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Set

from rasa.core.channels.channel import InputChannel, OutputChannel, UserMessage
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from zapi_channel.client import ZApiClient
from zapi_channel.config import ChannelConfig
from zapi_channel.conversations import Conversations, NoConversations, RasaConversations
from zapi_channel.delivery import FAILED, UNKNOWN, Delivery, open_delivery
from zapi_channel.errors import StateError, StateUnavailable, TransportError, ZApiError
from zapi_channel.inbound import DeliveryFailed, InboundMessage
from zapi_channel.metrics import CONTENT_TYPE, Metrics
from zapi_channel.outbound import (
    Send,
    Shaping,
    ZApiRequest,
    attachment_of,
    match_choice,
    shape_response,
)
from zapi_channel.retry import RetryPolicy
from zapi_channel.webhook import (
    LOGGED,
    NOT_KEPT,
    Accept,
    Connection,
    Reply,
    Report,
    after_accept,
    authenticate,
    decide,
    decode_body,
    expected_query,
)

logger = logging.getLogger(__name__)

CHANNEL_NAME = "zapi"

#: Interactive sends whose refusal for the button terms has a numbered-text fallback.
_INTERACTIVE = frozenset({"send-button-list", "send-option-list", "send-button-actions"})


def shaping_for(config: ChannelConfig) -> Shaping:
    """The settings of ``config`` that shape answers."""
    return Shaping(
        text_limit=config.max_text_length,
        delay_typing=config.delay_typing,
        buttons_as=config.buttons_as,
        link_image=config.link_preview_image,
    )


class ZApiOutput(OutputChannel):
    """Sends Rasa's answers through Z-API.

    A failing send is logged and never raised: an exception here would make Rasa abort the turn
    and not save the tracker, losing the customer's message as well.
    """

    @classmethod
    def name(cls) -> str:
        # Rasa picks a response's ``channel: zapi`` variant by comparing with this name.
        return CHANNEL_NAME

    def __init__(
        self,
        client: ZApiClient,
        config: ChannelConfig,
        delivery: Delivery,
        *,
        message_key: Optional[str] = None,
        in_flight: Optional[Set[asyncio.Task[bool]]] = None,
        conversation: Optional[str] = None,
        reply_to: Optional[str] = None,
        quote: Optional[str] = None,
        metrics: Optional[Metrics] = None,
        shaping: Optional[Shaping] = None,
    ) -> None:
        self.client = client
        self.config = config
        self.delivery = delivery
        self._metrics = metrics
        # Given by ZApiInput, which builds it once: an output channel is made for every turn.
        self._shaping = shaping or shaping_for(config)
        # The customer's message the turn's first answer quotes (``quote_replies``).
        self._quote = quote
        self._quoted = False
        # Rasa addresses answers to the conversation (sender_id); WhatsApp takes them at the
        # phone the customer's message came from, exactly as Z-API sent it.
        self._conversation = conversation
        self._reply_to = reply_to
        # The message this turn answers ("<instance>:<messageId>"): its answers are numbered, so
        # that a turn run again after a crash skips the ones that already went out.
        self._message_key = message_key
        self._answers = 0
        self._in_flight = in_flight

    def __repr__(self) -> str:
        return f"ZApiOutput({self.client.credentials!r})"

    def _address(self, recipient_id: str) -> str:
        if self._reply_to and recipient_id == self._conversation:
            return self._reply_to
        return recipient_id

    async def _deliver(self, request: ZApiRequest) -> bool:
        self._answers += 1
        key = self._message_key
        if key is not None and await self.delivery.already_sent(key, self._answers):
            logger.info(
                "Answer %d to %s was sent before a restart; not repeating it", self._answers, key
            )
            return True
        # A stop may cancel the turn while this request is on the wire. The send and its marker
        # run as their own task, shielded from that cancellation, so that whether the answer went
        # out is known when the stop counts what each cut-short turn already sent.
        task = asyncio.ensure_future(self._send(request, self._answers))
        if self._in_flight is not None:
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return await asyncio.shield(task)

    async def _send(self, request: ZApiRequest, answer: int) -> bool:
        endpoint, body = request.endpoint, request.body
        try:
            result = await self.client.send(endpoint, body)
        except Exception as exc:
            # Whatever went wrong, raising would abort Rasa's turn and lose the tracker update.
            if not isinstance(exc, ZApiError):
                logger.exception("Unexpected error sending an answer to %s", body.get("phone"))
            # Retries (zapi_channel.retry) are exhausted, or repeating could deliver twice.
            sent = isinstance(exc, TransportError) and exc.request_sent
            outcome = UNKNOWN if sent else FAILED
            if self._metrics is not None:
                self._metrics.sent(endpoint, outcome)
            await self._journal(request, str(exc), outcome)
            return False
        if self._metrics is not None:
            self._metrics.sent(endpoint, "sent")
        try:
            # Its echo ("notify sent by me") must not read as the owner taking over.
            await self.delivery.remember_outgoing(
                result.message_id,
                {"endpoint": endpoint, "phone": body.get("phone"), "body": body},
            )
        except StateUnavailable as exc:
            logger.warning("Could not remember sent message %s: %s", result.message_id, exc)
        if self._message_key is not None:
            try:
                await self.delivery.mark_sent(self._message_key, answer)
            except StateUnavailable as exc:
                # Sent all the same; only a re-run after a crash could repeat it.
                logger.warning("Could not note answer %d as sent: %s", answer, exc)
        return True

    async def _journal(self, request: ZApiRequest, error: str, outcome: str) -> None:
        """Keep an answer Z-API did not take, and say where, so that a person can resend it."""
        endpoint, body = request.endpoint, request.body
        phone = body.get("phone")
        try:
            entry = await self.delivery.record(endpoint, body, error, outcome)
        except StateUnavailable as exc:
            # Nowhere to keep it: the log line is all that is left, so it carries the answer.
            logger.error(
                "Z-API did not take an answer for %s (%s, outcome %s): %s. It could not be "
                "kept either (%s); the answer was: %r",
                phone,
                endpoint,
                outcome,
                error,
                exc,
                body,
            )
            return
        logger.error(
            "Z-API did not take an answer for %s (%s, outcome %s): %s. Kept as %s in %s; "
            "resend with `zapi-channel failed retry %s`.",
            phone,
            endpoint,
            outcome,
            error,
            entry.id,
            self.delivery.where,
            entry.id,
        )

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        """One Rasa response, shaped as WhatsApp shows it (:func:`outbound.shape_response`).

        Replaces Rasa's dispatch, which sends text, image and attachment as separate messages.
        """
        quote = None if self._quoted else self._quote
        plan = shape_response(message, self._address(recipient_id), self._shaping, quote=quote)
        self._quoted = self._quoted or plan.quoted
        for reason in plan.skipped:
            logger.warning("Skipping %s for %s", reason, recipient_id)
        await self._deliver_all(recipient_id, plan.sends)

    async def _deliver_all(self, recipient_id: str, sends: Iterable[Send]) -> None:
        failed: Optional[Send] = None
        for send in sends:
            if send.continues and failed is not None:
                # The later parts would read as nonsense without this one: they are kept in the
                # journal, in order, to be resent together with it.
                await self._journal(
                    send.request,
                    f"not sent: an earlier part of the same answer failed "
                    f"({failed.request.endpoint})",
                    FAILED,
                )
                continue
            failed = None
            if send.choices:
                await self.delivery.remember_choices(recipient_id, list(send.choices))
            if await self._deliver(send.request):
                continue
            if send.fallback:
                logger.warning("Falling back to a numbered text list for %s", recipient_id)
                await self._deliver_all(recipient_id, send.fallback)
            else:
                failed = send

    # Rasa's per-kind entry points, for code that calls them directly: each is one response.

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        await self.send_response(recipient_id, {"text": text})

    async def send_image_url(self, recipient_id: str, image: str, **kwargs: Any) -> None:
        await self.send_response(recipient_id, {"image": image})

    async def send_attachment(self, recipient_id: str, attachment: Any, **kwargs: Any) -> None:
        if not attachment_of(attachment):
            logger.warning("Skipping an attachment without a URL for %s", recipient_id)
            return
        await self.send_response(recipient_id, {"attachment": attachment})

    async def send_text_with_buttons(
        self,
        recipient_id: str,
        text: str,
        buttons: List[Dict[str, Any]],
        **kwargs: Any,
    ) -> None:
        await self.send_response(recipient_id, {"text": text, "buttons": buttons})

    async def send_quick_replies(
        self,
        recipient_id: str,
        text: str,
        quick_replies: List[Dict[str, Any]],
        **kwargs: Any,
    ) -> None:
        await self.send_response(recipient_id, {"text": text, "quick_replies": quick_replies})

    async def send_custom_json(
        self, recipient_id: str, json_message: Dict[str, Any], **kwargs: Any
    ) -> None:
        await self.send_response(recipient_id, {"custom": json_message})

    async def send_elements(
        self, recipient_id: str, elements: Iterable[Dict[str, Any]], **kwargs: Any
    ) -> None:
        await self.send_response(recipient_id, {"elements": list(elements)})


class ZApiInput(InputChannel):
    """Receives Z-API's webhooks at ``/webhooks/zapi/webhook?token=<webhook_token>``."""

    @classmethod
    def name(cls) -> str:
        return CHANNEL_NAME

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> ZApiInput:
        return cls(ChannelConfig.from_mapping(credentials or {}))

    def __init__(
        self,
        config: ChannelConfig,
        *,
        http_client: Optional[Any] = None,
        delivery: Optional[Delivery] = None,
    ) -> None:
        self.config = config
        self._http_client = http_client
        self._client: Optional[ZApiClient] = None
        # Opened here, while rasa run starts: a damaged or busy state file stops it at once,
        # with the what-to-do as the last line of Rasa's traceback and as one ERROR line.
        try:
            self.delivery: Delivery = delivery or open_delivery(config)
        except StateError as exc:
            logger.error("%s", exc)
            raise
        self._sends: Set[asyncio.Task[bool]] = set()
        self._background: Set[asyncio.Future[None]] = set()
        self.metrics = Metrics()
        self._shaping = shaping_for(config)
        self._metrics_auth = (
            f"Bearer {config.metrics_token}".encode() if config.metrics_token else None
        )
        self._refused = 0
        self._refused_reported_at = -60.0
        self._not_kept = 0
        self._token_query = expected_query(config.webhook_token)
        self._stopping = False
        self._closed = False
        # Replaced at server start by the running agent's (see conversations.py).
        self.conversations: Conversations = NoConversations()

    def __repr__(self) -> str:
        return f"ZApiInput({self.config!r})"

    @property
    def client(self) -> ZApiClient:
        # Built at server start (see _build_client), or on first use before that: it lives in
        # the server's event loop, not the one (if any) Rasa used while loading credentials.
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> ZApiClient:
        return ZApiClient(
            self.config.credentials,
            http_client=self._http_client,
            timeout=self.config.timeout_seconds,
            retry=RetryPolicy(attempts=self.config.retry_attempts),
            on_retry=self.metrics.retried,
            transport=self.config.http_transport,
        )

    async def _build_client(self) -> None:
        """Build the client in a worker thread: either transport loads certifi's CA bundle when
        it is built (about 30 ms), and the server is already taking webhooks on this loop."""
        if self._client is not None:
            return
        client = await asyncio.get_running_loop().run_in_executor(None, self._new_client)
        if self._client is None:  # nothing used the property meanwhile
            self._client = client

    def get_output_channel(
        self, message_key: Optional[str] = None, message: Optional[InboundMessage] = None
    ) -> ZApiOutput:
        return ZApiOutput(
            self.client,
            self.config,
            self.delivery,
            message_key=message_key,
            in_flight=self._sends,
            conversation=message.conversation if message is not None else None,
            reply_to=message.phone if message is not None else None,
            quote=self._quote_for(message),
            metrics=self.metrics,
            shaping=self._shaping,
        )

    def _quote_for(self, message: Optional[InboundMessage]) -> Optional[str]:
        """The message id the answer quotes, as ``quote_replies`` says."""
        mode = self.config.quote_replies
        if message is None or mode == "never":
            return None
        if mode == "groups" and not message.metadata.get("is_group"):
            return None
        # A merged burst quotes its last message: the one the customer just wrote.
        return message.latest_message_id

    async def close(self, grace_seconds: Optional[float] = None) -> None:
        """Finish queued turns within the grace period, keep the rest, close the HTTP client."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        unfinished = await self.delivery.stop(grace)
        if self._sends:
            # Requests already on the wire finish (or time out), and note that they were sent,
            # before the state is closed.
            await asyncio.wait(set(self._sends), timeout=self.config.timeout_seconds + 1)
        if self._background:
            # Fallback texts and the queue setting: given the same time, then dropped.
            _, late = await asyncio.wait(
                set(self._background), timeout=self.config.timeout_seconds + 1
            )
            for task in late:
                task.cancel()
        if unfinished:
            logger.warning(
                "Stopping with %d customer message(s) not answered yet: they stay in %s and "
                "are answered first by the next start",
                len(unfinished),
                self.delivery.where,
            )
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._closed = True
        await self.delivery.aclose()

    async def _turn(
        self,
        message: InboundMessage,
        on_new_message: Callable[[UserMessage], Awaitable[Any]],
    ) -> None:
        # Timed by hand rather than with .time(): one object fewer for every message.
        started = time.perf_counter()
        try:
            await self._one_turn(message, on_new_message)
        finally:
            self.metrics.turn_seconds.observe(time.perf_counter() - started)

    async def _one_turn(
        self,
        message: InboundMessage,
        on_new_message: Callable[[UserMessage], Awaitable[Any]],
    ) -> None:
        if message.from_owner:
            await self._owner_turn(message)
            return
        if self.config.handoff_minutes > 0 and not await self._bot_may_answer(message):
            if not self.conversations.records_paused_messages:
                return  # nothing would record it, and nothing may answer it
            # Rasa records it in the paused conversation and predicts nothing.
        await self._customer_turn(message, on_new_message)

    async def _owner_turn(self, message: InboundMessage) -> None:
        """The shop's owner wrote in this chat from the phone (or WhatsApp Web)."""
        conversation = message.conversation
        if await self._sent_by_us(message.message_id) is not None:
            # The echo of one of our sends that Z-API did not mark fromApi: ours, not a human.
            logger.debug("Our own message %s came back; not a takeover", message.message_id)
            return
        command = self.config.handoff_resume_command
        if command and message.text.strip().lower() == command.lower():
            await self.delivery.end_handoff(conversation)
            await self.conversations.resume(conversation)
            logger.info("The owner handed %s back to the bot (%s)", conversation, command)
            return
        until = time.time() + self.config.handoff_minutes * 60
        await self.delivery.pause(conversation, until)
        owner = {**message.metadata, "sent_by": "owner"}
        await self.conversations.pause(conversation, message.text, owner)
        logger.info(
            "The owner is answering %s from the phone: the bot stays quiet there for %g "
            "minute(s) after the owner's last message, or until the owner types %s",
            conversation,
            self.config.handoff_minutes,
            command,
        )

    async def _bot_may_answer(self, message: InboundMessage) -> bool:
        """False while a human holds the conversation; ends a takeover that is over."""
        conversation = message.conversation
        until = await self.delivery.handoff(conversation)
        if until is None:
            return True
        if until > time.time():
            # A session that expired meanwhile starts anew, unpaused: pause it again.
            await self.conversations.keep_paused(conversation)
            logger.info(
                "Message %s of %s recorded, not answered: the owner is answering",
                message.message_id,
                conversation,
            )
            return False
        await self.delivery.end_handoff(conversation)
        await self.conversations.resume(conversation)
        logger.info("The bot answers %s again: the owner's takeover is over", conversation)
        return True

    async def _customer_turn(
        self,
        message: InboundMessage,
        on_new_message: Callable[[UserMessage], Awaitable[Any]],
    ) -> None:
        text = message.text
        metadata = dict(message.metadata)
        # Read the choices in the worker, not in the request: an earlier message of this customer
        # may still be producing the menu this answer refers to.
        offered = await self.delivery.take_choices(message.conversation)
        if offered and message.kind == "text":
            chosen = match_choice(text, offered)
            if chosen is not None:
                metadata["choice"] = {"title": chosen.title, "payload": chosen.payload}
                text = chosen.payload
        if self.config.mark_read:
            await self._mark_read(message)
        await on_new_message(
            UserMessage(
                text=text,
                output_channel=self.get_output_channel(message.dedup_key, message),
                sender_id=message.conversation,
                input_channel=CHANNEL_NAME,
                message_id=message.message_id,
                metadata={CHANNEL_NAME: metadata},
            )
        )

    async def _mark_read(self, message: InboundMessage) -> None:
        # Z-API documents read-message for numbers only, not for @lid.
        number = message.number or (message.phone if message.metadata.get("is_group") else None)
        if number is None:
            logger.debug("Not marking %s as read: no number known for it", message.message_id)
            return
        try:
            # A merged burst: reading its last message reads the chat up to it.
            await self.client.read_message(number, message.latest_message_id)
        except ZApiError as exc:
            logger.warning("Could not mark message %s as read: %s", message.message_id, exc)

    # -- the webhook ------------------------------------------------------------------------------

    def _refused_request(self, request: Request) -> None:
        # Refusals are not rate-limited here: the token has 256 bits, so guessing is hopeless, and
        # a refusal costs a constant-time compare and no parsing. Throttling abusive clients is the
        # reverse proxy's job. Refusals are counted and reported, at most once a minute.
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_reported_at >= 60:
            logger.warning(
                "Refused %d webhook request(s) without the right token in the last minute "
                "(latest from %s). If that is Z-API, its webhook URL is outdated: run "
                "`zapi-channel webhook-url`.",
                self._refused,
                request.ip,
            )
            self._refused, self._refused_reported_at = 0, now

    def _not_kept_report(self, message: InboundMessage, exc: StateUnavailable) -> None:
        # One ERROR when keeping starts to fail, not one per webhook while it goes on.
        self._not_kept += 1
        if self._not_kept == 1:
            logger.error(
                "Could not keep customer message %s in %s, so the webhook answers 503 and Z-API "
                "will send it again: %s. Until this is fixed (free disk space, a writable folder, "
                "Redis up) no new message is accepted.",
                message.message_id,
                exc.where,
                exc,
            )
        else:
            logger.debug("Still unable to keep messages in %s: %s", exc.where, exc)

    async def _keep(self, message: InboundMessage) -> Reply:
        if self._closed:
            # Stopped: Z-API's resend reaches the next start (or another instance).
            logger.info("Stopped: answered 503 to message %s", message.message_id)
            return NOT_KEPT
        try:
            new = await self.delivery.accept(message)
        except StateUnavailable as exc:
            self._not_kept_report(message, exc)
            return NOT_KEPT
        if self._not_kept:
            logger.warning(
                "Messages are kept in %s again (%d webhook(s) answered 503 meanwhile)",
                self.delivery.where,
                self._not_kept,
            )
            self._not_kept = 0
        return after_accept(new)

    async def _receive(self, request: Request) -> HTTPResponse:
        started = time.perf_counter()
        reply = await self._answer(request)
        self.metrics.ack_seconds.observe(time.perf_counter() - started)
        self.metrics.webhook(reply.outcome, reply.reason)
        return HTTPResponse(reply.encoded, status=reply.status, content_type="application/json")

    async def _answer(self, request: Request) -> Reply:
        refused = authenticate(request.query_string, self._token_query, self.config.webhook_token)
        if refused is not None:
            self._refused_request(request)
            return refused
        body = decode_body(
            request.body or b"", request.headers.get("content-encoding"), self.config.max_body_bytes
        )
        if isinstance(body, Reply):
            return body
        decision = decide(body, self.config)
        if isinstance(decision, Accept):
            return await self._keep(decision.message)
        if isinstance(decision, Report):
            await self._delivery_failed(decision.failure)
            return LOGGED
        if isinstance(decision, Connection):
            await self._connection_changed(decision)
            return LOGGED
        if decision.log is not None:
            logger.log(*decision.log)
        return decision

    async def _sent_by_us(self, message_id: str) -> Optional[Dict[str, Any]]:
        """What we sent as ``message_id``, or ``None`` if it is not one of our sends.

        Z-API may post a callback about a send (its echo, a delivery error) before its answer to
        that send has reached us, so before the send is remembered: an unknown id waits for the
        sends on the wire, briefly, and is looked up again.
        """
        # Taken before the lookup: a send that finishes while the lookup runs is waited for too
        # (already done by then), and looked up again after it.
        on_the_wire = set(self._sends)
        sent = await self.delivery.outgoing(message_id)
        if sent is None and on_the_wire:
            await asyncio.wait(on_the_wire, timeout=min(self.config.timeout_seconds, 5.0))
            sent = await self.delivery.outgoing(message_id)
        return sent

    async def _delivery_failed(self, failure: DeliveryFailed) -> None:
        """A send Z-API had queued failed: keep it for a person, or fall back where that helps."""
        try:
            sent = await self._sent_by_us(failure.message_id)
        except StateUnavailable as exc:
            sent = None
            logger.warning("Could not look up sent message %s: %s", failure.message_id, exc)
        code = f" (errorCode {failure.error_code})" if failure.error_code else ""
        if sent is None or sent.get("reported"):
            # Not one of ours (another client of the instance, or older than a day), or a
            # redelivery of a report already handled.
            logger.warning(
                "Z-API could not deliver message %s to %s: %s%s",
                failure.message_id,
                failure.phone,
                failure.error,
                code,
            )
            self.metrics.delivery_failures.labels("foreign").inc()
            return
        endpoint = str(sent.get("endpoint") or "")
        body = dict(sent.get("body") or {})
        await self.delivery.remember_outgoing(failure.message_id, {**sent, "reported": True})
        message = body.get("message")
        if failure.button_terms and endpoint in _INTERACTIVE and isinstance(message, str):
            # The interactive message carries its choices as numbered text: sent as plain text,
            # the customer can still answer with a number.
            logger.warning(
                "Z-API refused a %s message to %s because the button terms are not accepted: "
                "accept them on Z-API's panel (the instance's settings), or set buttons_as: "
                "text. Sending the same choices as numbered text instead.",
                endpoint,
                failure.phone,
            )
            phone = str(body.get("phone") or failure.phone)
            # Not awaited: Z-API's callback gets its answer now, not after our send.
            self._in_background(self.get_output_channel().send_text_message(phone, message))
            self.metrics.delivery_failures.labels("fallback").inc()
            return
        self.metrics.delivery_failures.labels("journaled").inc()
        await self.get_output_channel()._journal(
            ZApiRequest(endpoint, body),
            f"Z-API reported after queueing it: {failure.error}{code}",
            FAILED,
        )

    def _in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _apply_queue_setting(self, enqueue: bool) -> None:
        """Set Z-API's queue for a disconnected phone as ``queue_when_disconnected`` says."""
        try:
            confirmed = await self.client.update_queue_settings(enqueue_when_disconnected=enqueue)
        except ZApiError as exc:
            confirmed = False
            reason = str(exc)
        else:
            reason = "it did not confirm the change"
        if confirmed:
            logger.info(
                "Z-API %s sends while the phone is disconnected (queue_when_disconnected: %s)",
                "queues" if enqueue else "no longer queues",
                "true" if enqueue else "false",
            )
            return
        logger.warning(
            "Could not set Z-API's queue for a disconnected phone (queue_when_disconnected: %s): "
            "%s. Z-API keeps its current setting; sends it refuses are kept in the failed-sends "
            "journal either way.",
            "true" if enqueue else "false",
            reason,
        )

    async def _connection_changed(self, change: Connection) -> None:
        """Note the WhatsApp session's state; say so loudly only when it changes."""
        try:
            before = await self.delivery.whatsapp()
            await self.delivery.set_whatsapp(change.connected, time.time())
        except StateUnavailable as exc:
            before = None
            logger.warning("Could not note the WhatsApp connection state: %s", exc)
        self.metrics.connection(change.connected)
        event = change.event
        changed = before is None or before[0] != change.connected
        logger.log(event.level if changed else logging.DEBUG, "%s: %s", event.type, event.summary)

    async def _health(self, request: Request) -> HTTPResponse:
        health: Dict[str, Any] = {
            "status": "ok",
            "channel": CHANNEL_NAME,
            "active": self.config.active,
            "whatsapp": "unknown",
            "whatsapp_since": None,
        }
        try:
            state = await self.delivery.whatsapp()
        except StateUnavailable:
            state = None
        if state is not None:
            # As the last connection callback said: Z-API posts one when the session changes.
            health["whatsapp"] = "connected" if state[0] else "disconnected"
            health["whatsapp_since"] = datetime.fromtimestamp(state[1], timezone.utc).isoformat(
                timespec="seconds"
            )
        return response.json(health)

    async def _metrics(self, request: Request) -> HTTPResponse:
        given = request.headers.get("authorization")
        assert self._metrics_auth is not None  # the route exists only with a token
        if not given:
            return response.json(
                {"error": "missing token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="zapi-channel metrics"'},
            )
        if not hmac.compare_digest(given.strip().encode(), self._metrics_auth):
            return response.json({"error": "invalid token"}, status=403)
        await self._refresh_gauges()
        return response.raw(self.metrics.render(), content_type=CONTENT_TYPE)

    async def _refresh_gauges(self) -> None:
        """What the state holds, read at scrape time (it may change behind our back: the CLI
        resends failed entries and ends handoffs)."""
        metrics = self.metrics
        metrics.inbox_backlog.set(self.delivery.pending)
        try:
            metrics.failed_sends.set(len(await self.delivery.entries()))
            metrics.paused_conversations.set(len(await self.delivery.handoffs()))
            state = await self.delivery.whatsapp()
        except StateUnavailable as exc:
            # The scrape still answers: the gauges keep their last values.
            logger.warning("Metrics: could not read %s: %s", self.delivery.where, exc)
            return
        metrics.connection(state[0] if state is not None else None)

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        # A unique blueprint name per channel object: sanic refuses two blueprints of one name,
        # and tests build several apps in one process.
        bp = Blueprint(f"zapi_webhook_{id(self):x}", __name__)

        # sanic sets attributes on its handlers, which bound methods cannot take: functions.
        async def health(request: Request) -> HTTPResponse:
            return await self._health(request)

        async def receive(request: Request) -> HTTPResponse:
            return await self._receive(request)

        async def metrics(request: Request) -> HTTPResponse:
            return await self._metrics(request)

        async def run_turn(message: InboundMessage) -> None:
            await self._turn(message, on_new_message)

        async def start(app: Any, loop: Any) -> None:
            # Rasa has loaded the model by now (before_server_start). Its ~600k long-lived objects
            # would make every full garbage collection pause the event loop for hundreds of ms,
            # the whole tail of the webhook's ack latency (docs/benchmarks.md): collect once, then
            # leave them out of later collections.
            gc.collect()
            gc.freeze()
            agent = getattr(app.ctx, "agent", None)
            if RasaConversations.supports(agent):
                self.conversations = RasaConversations(agent)
            await self._build_client()  # before the turns resumed from the state send anything
            await self.delivery.start(run_turn)
            if self.config.queue_when_disconnected is not None:
                # Not awaited: Z-API being slow or down must not hold up the webhook.
                self._in_background(self._apply_queue_setting(self.config.queue_when_disconnected))

        async def finish(app: Any, loop: Any) -> None:
            await self.close()

        # Registered by call rather than decorator: sanic's decorators are untyped.
        bp.add_route(health, "/", methods=["GET"])
        bp.add_route(receive, "/webhook", methods=["POST"])
        if self._metrics_auth is not None:
            bp.add_route(metrics, "/metrics", methods=["GET"])
        bp.listener(start, "after_server_start")
        bp.listener(finish, "before_server_stop")
        return bp


__all__ = ["CHANNEL_NAME", "ZApiInput", "ZApiOutput"]

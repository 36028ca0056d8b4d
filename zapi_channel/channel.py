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
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Set

from rasa.core.channels.channel import InputChannel, OutputChannel, UserMessage
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from zapi_channel.client import ZApiClient
from zapi_channel.config import ChannelConfig
from zapi_channel.errors import TransportError, ZApiError
from zapi_channel.inbound import (
    Event,
    Ignored,
    InboundMessage,
    Invalid,
    parse_body,
    parse_callback,
)
from zapi_channel.inbox import PendingInbox
from zapi_channel.journal import FAILED, UNKNOWN, Journal, JsonlJournal, RedisJournal
from zapi_channel.outbound import (
    InvalidCustomPayload,
    buttons_request,
    choices_from_buttons,
    custom_request,
    document_extension,
    file_name_of,
    match_choice,
    render_choices,
    text_bodies,
)
from zapi_channel.retry import RetryPolicy
from zapi_channel.state import ChannelState, MemoryState, RedisState
from zapi_channel.stream_inbox import StreamInbox
from zapi_channel.workers import ConversationWorkers

logger = logging.getLogger(__name__)

CHANNEL_NAME = "zapi"


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
        state: ChannelState,
        journal: Journal,
        *,
        reply_key: Optional[str] = None,
        in_flight: Optional[Set[asyncio.Task[bool]]] = None,
    ) -> None:
        self.client = client
        self.config = config
        self.state = state
        self.journal = journal
        # Names this turn's answers ("<instance>:<messageId>:<n>") so that a turn run again after
        # a crash skips the answers that already went out.
        self._reply_key = reply_key
        self._answers = 0
        self._in_flight = in_flight

    def __repr__(self) -> str:
        return f"ZApiOutput({self.client.credentials!r})"

    async def _deliver(self, recipient_id: str, endpoint: str, body: Dict[str, Any]) -> bool:
        request = {"phone": recipient_id, **body}
        self._answers += 1
        marker = f"{self._reply_key}:{self._answers}" if self._reply_key else None
        if marker is not None and await self.state.already_sent(marker):
            logger.info(
                "Answer %d to %s was sent before a restart; not repeating it",
                self._answers,
                self._reply_key,
            )
            return True
        # A stop may cancel the turn while this request is on the wire. The send and its marker
        # run as their own task, shielded from that cancellation, so that whether the answer went
        # out is known when the stop counts what each cut-short turn already sent.
        task = asyncio.ensure_future(self._send(recipient_id, endpoint, request, marker))
        if self._in_flight is not None:
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return await asyncio.shield(task)

    async def _send(
        self, recipient_id: str, endpoint: str, request: Dict[str, Any], marker: Optional[str]
    ) -> bool:
        try:
            await self.client.send(endpoint, request)
        except Exception as exc:
            # Whatever went wrong, raising would abort Rasa's turn and lose the tracker update.
            if not isinstance(exc, ZApiError):
                logger.exception("Unexpected error sending an answer to %s", recipient_id)
            # Retries (zapi_channel.retry) are exhausted, or repeating could deliver twice.
            sent = isinstance(exc, TransportError) and exc.request_sent
            outcome = UNKNOWN if sent else FAILED
            loop = asyncio.get_running_loop()
            entry = await loop.run_in_executor(
                None, self.journal.record, endpoint, request, str(exc), outcome
            )
            logger.error(
                "Z-API did not take an answer for %s (%s, outcome %s): %s. Kept as %s in %s; "
                "resend with `zapi-channel failed retry %s`.",
                recipient_id,
                endpoint,
                outcome,
                exc,
                entry.id,
                self.journal.where,
                entry.id,
            )
            return False
        if marker is not None:
            await self.state.mark_sent(marker)
        return True

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        parts = text_bodies(text, self.config.max_text_length, self.config.delay_typing)
        for index, (endpoint, body) in enumerate(parts):
            if not await self._deliver(recipient_id, endpoint, body):
                # The later parts would read as nonsense without this one: they are kept in the
                # journal, in order, to be resent together with it.
                loop = asyncio.get_running_loop()
                for later_endpoint, later_body in parts[index + 1 :]:
                    await loop.run_in_executor(
                        None,
                        self.journal.record,
                        later_endpoint,
                        {"phone": recipient_id, **later_body},
                        f"not sent: an earlier part of the same answer failed ({endpoint})",
                        FAILED,
                    )
                return

    async def send_image_url(self, recipient_id: str, image: str, **kwargs: Any) -> None:
        await self._deliver(recipient_id, "send-image", {"image": image})

    async def send_attachment(self, recipient_id: str, attachment: Any, **kwargs: Any) -> None:
        url = attachment.get("url") if isinstance(attachment, dict) else attachment
        if not isinstance(url, str) or not url.strip():
            logger.warning("Skipping an attachment without a URL for %s", recipient_id)
            return
        url = url.strip()
        mime = attachment.get("mime_type") if isinstance(attachment, dict) else None
        extension = document_extension(url, mime if isinstance(mime, str) else None)
        if extension is None:
            # Not a file: WhatsApp shows a link preview instead.
            await self._deliver(recipient_id, "send-link", {"message": url, "linkUrl": url})
            return
        body: Dict[str, Any] = {"document": url}
        name = file_name_of(url)
        if name:
            body["fileName"] = name
        await self._deliver(recipient_id, f"send-document/{extension}", body)

    async def send_text_with_buttons(
        self,
        recipient_id: str,
        text: str,
        buttons: List[Dict[str, Any]],
        **kwargs: Any,
    ) -> None:
        choices = choices_from_buttons(buttons)
        if not choices:
            await self.send_text_message(recipient_id, text or "")
            return
        # Remember the choices before sending: the customer may answer "2" right away.
        await self.state.remember_choices(recipient_id, choices)
        interactive = buttons_request(text or "", choices, self.config.buttons_as)
        if interactive is not None:
            endpoint, body = interactive
            if await self._deliver(recipient_id, endpoint, body):
                return
            logger.warning("Falling back to a numbered text list for %s", recipient_id)
        await self.send_text_message(recipient_id, render_choices(text or "", choices))

    async def send_quick_replies(
        self,
        recipient_id: str,
        text: str,
        quick_replies: List[Dict[str, Any]],
        **kwargs: Any,
    ) -> None:
        await self.send_text_with_buttons(recipient_id, text, quick_replies, **kwargs)

    async def send_custom_json(
        self, recipient_id: str, json_message: Dict[str, Any], **kwargs: Any
    ) -> None:
        try:
            endpoint, body = custom_request(json_message)
        except InvalidCustomPayload as exc:
            logger.warning("Skipping a custom response for %s: %s", recipient_id, exc)
            return
        await self._deliver(recipient_id, endpoint, body)

    async def send_elements(
        self, recipient_id: str, elements: Iterable[Dict[str, Any]], **kwargs: Any
    ) -> None:
        for element in elements:
            title = str(element.get("title") or "")
            subtitle = str(element.get("subtitle") or "")
            text = f"*{title}*\n{subtitle}".strip() if subtitle else f"*{title}*"
            image = element.get("image_url")
            if isinstance(image, str) and image:
                await self.send_image_url(recipient_id, image)
            await self.send_text_with_buttons(recipient_id, text, element.get("buttons") or [])


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
        state: Optional[ChannelState] = None,
    ) -> None:
        self.config = config
        self._http_client = http_client
        self._client: Optional[ZApiClient] = None
        self.stream: Optional[StreamInbox] = None
        if state is None and config.redis_url:
            shared = RedisState(config.redis_url, prefix=config.redis_prefix)
            self.stream = StreamInbox(
                shared.redis,
                prefix=config.redis_prefix,
                partitions=config.inbox_partitions,
                lease_seconds=config.inbox_lease_seconds,
            )
            state = shared
        self.state: ChannelState = state or MemoryState()
        self.workers: ConversationWorkers[InboundMessage] = ConversationWorkers(
            config.max_concurrency
        )
        self.inbox = PendingInbox(Path(config.pending_inbox_path))
        self._sends: Set[asyncio.Task[bool]] = set()
        self._refused = 0
        self._refused_reported_at = -60.0
        self._token_query = f"token={config.webhook_token}".encode()
        self._stopping = False
        self.journal: Journal = (
            RedisJournal(config.redis_url, prefix=config.redis_prefix)
            if config.redis_url
            else JsonlJournal(Path(config.failed_sends_path))
        )

    def __repr__(self) -> str:
        return f"ZApiInput({self.config!r})"

    @property
    def client(self) -> ZApiClient:
        # Built on first use so that it lives in the server's event loop, not the one (if any)
        # Rasa used while loading credentials.
        if self._client is None:
            self._client = ZApiClient(
                self.config.credentials,
                http_client=self._http_client,
                timeout=self.config.timeout_seconds,
                retry=RetryPolicy(attempts=self.config.retry_attempts),
            )
        return self._client

    def get_output_channel(self, reply_key: Optional[str] = None) -> ZApiOutput:
        return ZApiOutput(
            self.client,
            self.config,
            self.state,
            self.journal,
            reply_key=reply_key,
            in_flight=self._sends,
        )

    async def close(self, grace_seconds: Optional[float] = None) -> None:
        """Finish queued turns within the grace period, keep the rest, close the HTTP client."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        if self.stream is not None:
            await self.stream.stop_reading()
        if not await self.workers.join(grace):
            unfinished = await self.workers.cancel()
            if self._sends:
                # Requests already on the wire finish (or time out) before anything is counted.
                await asyncio.wait(set(self._sends), timeout=self.config.timeout_seconds + 1)
        else:
            unfinished = []
        if self.stream is not None:
            # Not acknowledged: they stay in Redis for whichever instance owns the partition next.
            await self.stream.release()
            if unfinished:
                logger.warning(
                    "Stopping with %d customer message(s) not answered yet: they stay in the "
                    "Redis inbox for the next owner",
                    len(unfinished),
                )
        elif unfinished:
            kept = self.inbox.save(
                [
                    {"payload": message.raw, "answers_sent": await self._answers_sent(message)}
                    for message in unfinished
                ]
            )
            logger.warning(
                "Stopping with %d customer message(s) not answered yet: kept in %s, they are "
                "answered on the next start",
                kept,
                self.inbox.path,
            )
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self.state.aclose()

    def _accept(
        self,
        message: InboundMessage,
        on_new_message: Callable[[UserMessage], Awaitable[Any]],
        ack: Optional[Callable[[], Awaitable[None]]] = None,
    ) -> None:
        async def job() -> None:
            try:
                await self._turn(message, on_new_message)
            finally:
                if ack is not None:
                    await ack()

        self.workers.submit(message.phone, message, job)

    async def _consume(
        self,
        partition: int,
        entry_id: str,
        payload: Dict[str, Any],
        on_new_message: Callable[[UserMessage], Awaitable[Any]],
    ) -> None:
        """An entry of the Redis inbox: already authenticated and deduplicated by the webhook."""
        assert self.stream is not None
        stream = self.stream
        parsed = parse_callback(payload, self.config)

        async def ack() -> None:
            await stream.ack(partition, entry_id)

        if isinstance(parsed, InboundMessage):
            self._accept(parsed, on_new_message, ack)
        else:
            await ack()

    async def _resume(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """Queue what the previous run acknowledged but did not answer, before anything new."""
        records = self.inbox.take()
        resumed = 0
        for record in records:
            parsed = parse_callback(record.get("payload"), self.config)
            if isinstance(parsed, InboundMessage) and await self.state.first_time(parsed.dedup_key):
                # A turn cut short may have sent some answers already: the re-run skips them.
                for number in range(1, _count(record.get("answers_sent")) + 1):
                    await self.state.mark_sent(f"{parsed.dedup_key}:{number}")
                self._accept(parsed, on_new_message)
                resumed += 1
        if records:
            logger.info("Answering %d message(s) kept by the previous run", resumed)

    async def _answers_sent(self, message: InboundMessage) -> int:
        """How many answers to ``message`` already went out (its turn may have been cut short)."""
        count = 0
        while await self.state.already_sent(f"{message.dedup_key}:{count + 1}"):
            count += 1
        return count

    # -- the webhook ------------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> Optional[HTTPResponse]:
        # Refusals are not rate-limited here: the token has 256 bits, so guessing is hopeless, and
        # a refusal costs a constant-time compare and no parsing. Throttling abusive clients is the
        # reverse proxy's job. Refusals are counted and reported, at most once a minute.
        # Z-API calls back the exact URL it was given, "...?token=<token>": one constant-time
        # compare of the whole query string settles that case without sanic parsing the query
        # (urllib's parse_qs was a tenth of the webhook's CPU). Any other shape (more parameters,
        # percent-encoding, a wrong token) takes the full check below. A request line with bytes
        # that are not UTF-8 never gets here: sanic drops it while reading the head
        # (tests/test_webhook_fuzz.py).
        if hmac.compare_digest(request.query_string.encode(), self._token_query):
            return None
        tokens = request.args.getlist("token") if "token" in request.args else []
        if not tokens:
            self._refused_request(request)
            return response.json({"error": "missing token"}, status=401)
        # Exactly one token: "?token=wrong&token=right" must not pass by picking the good one.
        given = tokens[0] if len(tokens) == 1 else ""
        if not hmac.compare_digest(given.encode(), self.config.webhook_token.encode()):
            self._refused_request(request)
            return response.json({"error": "invalid token"}, status=403)
        return None

    def _refused_request(self, request: Request) -> None:
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

    async def _turn(
        self,
        message: InboundMessage,
        on_new_message: Callable[[UserMessage], Awaitable[Any]],
    ) -> None:
        text = message.text
        metadata = dict(message.metadata)
        # Read the choices in the worker, not in the request: an earlier message of this customer
        # may still be producing the menu this answer refers to.
        offered = await self.state.take_choices(message.phone)
        if offered and message.kind == "text":
            chosen = match_choice(text, offered)
            if chosen is not None:
                metadata["choice"] = {"title": chosen.title, "payload": chosen.payload}
                text = chosen.payload
        if self.config.mark_read:
            try:
                await self.client.read_message(message.phone, message.message_id)
            except ZApiError as exc:
                logger.warning("Could not mark message %s as read: %s", message.message_id, exc)
        await on_new_message(
            UserMessage(
                text=text,
                output_channel=self.get_output_channel(reply_key=message.dedup_key),
                sender_id=message.phone,
                input_channel=CHANNEL_NAME,
                message_id=message.message_id,
                metadata={CHANNEL_NAME: metadata},
            )
        )

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        # A unique blueprint name per channel object: sanic refuses two blueprints of one name,
        # and tests build several apps in one process.
        bp = Blueprint(f"zapi_webhook_{id(self):x}", __name__)

        async def health(request: Request) -> HTTPResponse:
            return response.json(
                {"status": "ok", "channel": CHANNEL_NAME, "active": self.config.active}
            )

        async def receive(request: Request) -> HTTPResponse:
            refused = self._authenticate(request)
            if refused is not None:
                return refused
            body = request.body or b""
            if len(body) > self.config.max_body_bytes:
                return response.json({"error": "body too large"}, status=413)
            parsed = parse_body(body, self.config)
            if isinstance(parsed, Invalid):
                return response.json({"error": parsed.reason}, status=400)
            if isinstance(parsed, Ignored):
                logger.debug("Ignored a Z-API callback: %s", parsed.reason)
                return response.json({"status": "ignored", "reason": parsed.reason})
            if isinstance(parsed, Event):
                logger.log(parsed.level, "%s: %s", parsed.type, parsed.summary)
                return response.json({"status": "logged"})
            if not self.config.active:
                logger.info(
                    "The channel is inactive (active: false): dropped message %s",
                    parsed.message_id,
                )
                return response.json({"status": "inactive"})
            if not await self.state.first_time(parsed.dedup_key):
                logger.debug("Duplicate delivery of message %s ignored", parsed.message_id)
                return response.json({"status": "duplicate"})

            if self.stream is not None:
                try:
                    await self.stream.append(parsed.phone, parsed.raw)
                except Exception:
                    logger.exception("Could not store message %s in Redis", parsed.message_id)
                    await self.state.forget(parsed.dedup_key)
                    return response.json({"error": "could not store the message"}, status=503)
                return response.json({"status": "accepted"})
            if self._stopping:
                # Shutting down: no new turn starts, but an acknowledged message is never lost.
                self.inbox.save([{"payload": parsed.raw, "answers_sent": 0}])
                return response.json({"status": "accepted"})
            self._accept(parsed, on_new_message)
            return response.json({"status": "accepted"})

        async def start(app: Any, loop: Any) -> None:
            # Rasa has loaded the model by now (before_server_start). Its ~600k long-lived objects
            # would make every full garbage collection pause the event loop for hundreds of ms,
            # the whole tail of the webhook's ack latency (docs/benchmarks.md): collect once, then
            # leave them out of later collections.
            gc.collect()
            gc.freeze()
            await self._resume(on_new_message)
            if self.stream is not None:

                async def consume(partition: int, entry_id: str, payload: Dict[str, Any]) -> None:
                    await self._consume(partition, entry_id, payload, on_new_message)

                self.stream.start(consume)

        async def finish(app: Any, loop: Any) -> None:
            await self.close()

        # Registered by call rather than decorator: sanic's decorators are untyped.
        bp.add_route(health, "/", methods=["GET"])
        bp.add_route(receive, "/webhook", methods=["POST"])
        bp.listener(start, "after_server_start")
        bp.listener(finish, "before_server_stop")
        return bp


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


__all__ = ["CHANNEL_NAME", "ZApiInput", "ZApiOutput"]

"""The emulator itself: its instances' state, Z-API's REST API and the webhooks it posts.

What it serves over HTTP, and the chat page, are :mod:`~zapi_channel.emulator.app`'s."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from datetime import datetime, timezone
from http import HTTPStatus
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

import httpx

from zapi_channel.client import CALLBACK_URL_FIELDS, QUEUE_LIMIT, QUEUE_PAGE_SIZE, WEBHOOK_KINDS
from zapi_channel.emulator.customer import (
    _echo_content,
    parse_customer_message,
    received_callback,
    received_envelope,
)
from zapi_channel.emulator.rules import ENDPOINT_METHODS, SEND_CHECKS, base_endpoint, validate_send
from zapi_channel.emulator.values import (
    _DAY_MS,
    _INTERACTIVE,
    _NOT_CONNECTED,
    BUTTON_TERMS_ERROR,
    QUEUE_DEFAULT_PAGE_SIZE,
    WEBHOOK_TIMEOUT,
    EmulatedInstance,
    Faults,
    Reply,
    WebhookResult,
    _error,
    _same,
    check_webhook_url,
    new_message_id,
    new_zaap_id,
)

# Named explicitly: one logger for the whole emulator.
logger = logging.getLogger("zapi_channel.emulator")


def _queue_entry(instance: EmulatedInstance, record: Mapping[str, Any]) -> Dict[str, Any]:
    """A queued send as ``/queue`` lists it (field names from Z-API's queue page)."""
    created = int(record["momment"])
    return {
        "_id": record["zaap_id"],
        "ZaapId": record["zaap_id"],
        "MessageId": record["message_id"],
        "InstanceId": instance.instance_id,
        "Phone": record["body"]["phone"],
        "Message": record.get("text") or "",
        "DelayMessage": record["body"].get("delayMessage", -1),
        "DelayTyping": record["body"].get("delayTyping", 0),
        "Created": created,
        "CreatedAt": datetime.fromtimestamp(created / 1000, timezone.utc).isoformat(
            timespec="milliseconds"
        ),
    }


def _paging_offset(state: Any) -> Optional[int]:
    """Where a ``pagingState`` the emulator gave points (0 without one); ``None`` if not ours."""
    if state is None:
        return 0
    if not isinstance(state, str):
        return None
    try:
        offset = json.loads(base64.urlsafe_b64decode(state.encode()))["offset"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None
    return offset if isinstance(offset, int) and offset >= 0 else None


def _record_text(body: Mapping[str, Any]) -> Optional[str]:
    for key in ("message", "caption"):
        value = body.get(key)
        if isinstance(value, str):
            return value
    return None


def _decode_object(raw: bytes) -> Optional[Dict[str, Any]]:
    try:
        decoded = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


# -- the emulator -------------------------------------------------------------------------------

Record = Dict[str, Any]


class Emulator:
    """The state of the emulated Z-API and everything that changes it.

    The methods that decide (:meth:`handle_zapi`, :meth:`customer_message`, :meth:`set_faults`...)
    return a :class:`Reply` and know nothing of sanic; :func:`~zapi_channel.emulator.app.build_app`
    only translates HTTP.

    Example::

        emulator = Emulator([EmulatedInstance("ID", "TOKEN", "CLIENT")], allow_http_webhooks=True)
        app = build_app(emulator, "zapi-emulator-1")
    """

    def __init__(
        self,
        instances: Iterable[EmulatedInstance] = (),
        *,
        allow_http_webhooks: bool = False,
        webhook_timeout: float = WEBHOOK_TIMEOUT,
        http_client: Optional[httpx.AsyncClient] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.instances: Dict[str, EmulatedInstance] = {}
        for instance in instances:
            self.add_instance(instance)
        self.allow_http_webhooks = allow_http_webhooks
        self.webhook_timeout = webhook_timeout
        #: Conversation by (instance id, customer phone): customer and bot records, in order.
        self.conversations: Dict[Tuple[str, str], List[Record]] = {}
        self.faults = Faults()
        self._clock = clock
        self._started_ms = self.now_ms()
        self._http_client = http_client
        self._owns_client = http_client is None
        self._tasks: Set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Emulator(instances={len(self.instances)})"

    # -- state --------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def add_instance(self, instance: EmulatedInstance) -> None:
        if instance.instance_id in self.instances:
            raise ValueError("an instance with this id already exists")
        self.instances[instance.instance_id] = instance

    def resolve_instance(self, instance_id: Optional[str] = None) -> Optional[EmulatedInstance]:
        """The named instance, or the first one when no name is given."""
        if instance_id is not None:
            return self.instances.get(instance_id)
        return next(iter(self.instances.values()), None)

    def conversation(self, phone: str, instance_id: Optional[str] = None) -> List[Record]:
        instance = self.resolve_instance(instance_id)
        if instance is None:
            return []
        return self.conversations.get((instance.instance_id, phone), [])

    def _append(self, instance: EmulatedInstance, phone: str, record: Record) -> None:
        self.conversations.setdefault((instance.instance_id, phone), []).append(record)

    def conversation_summaries(self) -> List[Dict[str, Any]]:
        return [
            {"instance_id": instance_id, "phone": phone, "count": len(records)}
            for (instance_id, phone), records in self.conversations.items()
        ]

    def clear_conversations(self) -> None:
        self.conversations.clear()

    def set_faults(self, changes: Mapping[str, Any]) -> Faults:
        """Merge ``changes`` into the current faults (``ValueError`` on a bad key or value)."""
        self.faults = self.faults.merged(changes)
        return self.faults

    def reset_faults(self) -> Faults:
        self.faults = Faults()
        return self.faults

    def health(self) -> Dict[str, Any]:
        return {"status": "ok", "instances": list(self.instances)}

    # -- the Z-API side -----------------------------------------------------------------------

    async def handle_zapi(
        self,
        method: str,
        instance_id: str,
        token: str,
        endpoint: str,
        *,
        client_token: Optional[str],
        content_type: Optional[str],
        body: bytes = b"",
    ) -> Reply:
        """Answer one call to ``/instances/{instance_id}/token/{token}/{endpoint}``."""
        reply = await self._zapi(
            method.upper(), instance_id, token, endpoint, client_token, content_type, body
        )
        # The endpoint name only: the URL holds the instance token.
        name = endpoint.strip("/") if base_endpoint(endpoint) else "(unknown endpoint)"
        logger.info("Z-API %s %s -> %d", method.upper(), name[:80], reply.status)
        return reply

    async def _zapi(
        self,
        method: str,
        instance_id: str,
        token: str,
        endpoint: str,
        client_token: Optional[str],
        content_type: Optional[str],
        body: bytes,
    ) -> Reply:
        # Z-API checks the instance first, then the Client-Token.
        instance = self.instances.get(instance_id)
        if instance is None or not _same(token, instance.instance_token):
            return _error(400, "Instance not found")
        if not client_token:
            return _error(400, "your client-token is not configured")
        if not _same(client_token, instance.client_token):
            # Z-API really echoes the value it refused: the client must redact it.
            return _error(403, f"Client-Token {client_token} not allowed")
        base = base_endpoint(endpoint)
        if base is None:
            return _error(404, "Not found")
        if method not in ENDPOINT_METHODS[base]:
            return _error(405, "Method Not Allowed")
        payload: Dict[str, Any] = {}
        if method in ("POST", "PUT") and not (base == "queue" and not body.strip()):
            if "application/json" not in (content_type or "").lower():
                return _error(415, "Unsupported Media Type")
            decoded = _decode_object(body)
            if decoded is None:
                return _error(400, "The body must be a JSON object")
            payload = decoded
        if base in SEND_CHECKS:
            return await self._send(instance, endpoint.strip("/"), payload)
        if base == "read-message":
            return self._read_message(instance, payload)
        if base.startswith("update-webhook-"):
            return self._update_webhooks(instance, [base[len("update-webhook-") :]], payload)
        if base == "update-every-webhooks":
            return self._update_webhooks(instance, list(WEBHOOK_KINDS), payload)
        if base == "update-notify-sent-by-me":
            return self._update_notify(instance, payload)
        if base == "update-queue-settings":
            return self._update_queue_settings(instance, payload)
        if base == "queue":
            return self._queue(instance, method, payload)
        if base == "queue/{zaapId}":
            return self._delete_queued(instance, endpoint.strip("/").partition("/")[2])
        return self._instance_call(instance, base)

    def _instance_call(self, instance: EmulatedInstance, name: str) -> Reply:
        if name == "status":
            return Reply(
                200,
                {
                    "connected": instance.connected,
                    "error": "You are already connected." if instance.connected else _NOT_CONNECTED,
                    "smartphoneConnected": instance.connected,
                },
            )
        if name == "device":
            if not instance.connected:
                return _error(400, _NOT_CONNECTED)
            return Reply(
                200,
                {
                    "phone": instance.phone,
                    "name": instance.name,
                    "isBusiness": False,
                    "originalDevice": "android",
                },
            )
        if name == "me":
            return Reply(200, self._me(instance))
        if name == "disconnect":
            if instance.connected:
                instance.connected = False
                # Z-API answers first and posts the callback on its own time.
                self._spawn(self._post(instance, "disconnected", self._disconnected(instance)))
            return Reply(200, {"value": True})
        return Reply(200, {"value": True})  # restart

    def _me(self, instance: EmulatedInstance) -> Dict[str, Any]:
        # Field names from Z-API's "me" page. "token" is there too: Z-API returns the instance
        # token, so code that logs this answer whole leaks it (here as on Z-API).
        data: Dict[str, Any] = {
            "id": instance.instance_id,
            "token": instance.instance_token,
            "name": instance.name,
            # The brief asks for epoch ms; the docs' example looks like seconds (guess either way).
            "due": self._started_ms + 30 * _DAY_MS,
            "connected": instance.connected,
            "paymentStatus": "PAID",
        }
        for kind, key in CALLBACK_URL_FIELDS.items():
            # Unset URLs as "" (the docs' example shows "" for an unset initialDataCallbackUrl).
            data[key] = instance.webhooks.get(kind, "")
        data["receiveCallbackSentByMe"] = instance.notify_sent_by_me
        return data

    def _update_webhooks(
        self, instance: EmulatedInstance, kinds: Sequence[str], payload: Mapping[str, Any]
    ) -> Reply:
        url = payload.get("value")
        if not isinstance(url, str) or not url.strip():
            return _error(400, "value is required")
        problem = check_webhook_url(url, allow_local_http=self.allow_http_webhooks)
        if problem is not None:
            return _error(400, problem)
        notify = payload.get("notifySentByMe")
        if len(kinds) > 1 and notify is not None and not isinstance(notify, bool):
            return _error(400, "notifySentByMe must be true or false")
        for kind in kinds:
            instance.webhooks[kind] = url.strip()
        if len(kinds) > 1 and isinstance(notify, bool):
            instance.notify_sent_by_me = notify
        return Reply(200, {"value": True})

    def _update_notify(self, instance: EmulatedInstance, payload: Mapping[str, Any]) -> Reply:
        notify = payload.get("notifySentByMe")
        if not isinstance(notify, bool):
            return _error(400, "notifySentByMe is required (true or false)")
        instance.notify_sent_by_me = notify
        return Reply(200, {"value": True})

    def _update_queue_settings(
        self, instance: EmulatedInstance, payload: Mapping[str, Any]
    ) -> Reply:
        disable = payload.get("disableEnqueueWhenDisconnected")
        if not isinstance(disable, bool):
            return _error(400, "disableEnqueueWhenDisconnected is required (true or false)")
        instance.enqueue_when_disconnected = not disable
        # What this endpoint answers is not documented (guess): Z-API's usual {"value": true}.
        return Reply(200, {"value": True})

    def _queue(self, instance: EmulatedInstance, method: str, payload: Mapping[str, Any]) -> Reply:
        if method == "DELETE":
            instance.queue.clear()
            return Reply(200, {"value": True})
        if method == "GET":
            # The older docs' answer: everything, with its size.
            return Reply(
                200,
                {
                    "size": len(instance.queue),
                    "messages": [_queue_entry(instance, r) for r in instance.queue],
                },
            )
        size = payload.get("pageSize", QUEUE_DEFAULT_PAGE_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size:
            return _error(400, "pageSize must be a positive whole number")
        size = min(size, QUEUE_PAGE_SIZE)
        start = _paging_offset(payload.get("pagingState"))
        if start is None:
            return _error(400, "pagingState is not one this queue gave")
        page = instance.queue[start : start + size]
        more = start + size < len(instance.queue)
        body: Dict[str, Any] = {
            "messages": [_queue_entry(instance, r) for r in page],
            "hasMore": more,
        }
        if more:
            body["pagingState"] = base64.urlsafe_b64encode(
                json.dumps({"offset": start + size}).encode()
            ).decode()
        return Reply(200, body)

    def _delete_queued(self, instance: EmulatedInstance, zaap_id: str) -> Reply:
        kept = [r for r in instance.queue if r["zaap_id"] != zaap_id]
        if len(kept) == len(instance.queue):
            return _error(404, "Message not found in the queue")
        instance.queue[:] = kept
        return Reply(200, {"value": True})

    def _flush_queue(self, instance: EmulatedInstance) -> None:
        """The phone is back: Z-API sends what it queued, in order (docs: queue introduction)."""
        queued, instance.queue[:] = list(instance.queue), []
        for record in queued:
            record["status"] = "SENT"
            self._append(instance, record["body"]["phone"], record)
            self._spawn(self._after_send(instance, record))

    def _read_message(self, instance: EmulatedInstance, payload: Mapping[str, Any]) -> Reply:
        problem = validate_send("read-message", payload)
        if problem is not None:
            return _error(400, problem)
        if not instance.connected:
            return _error(400, _NOT_CONNECTED)
        for record in self.conversations.get((instance.instance_id, payload["phone"]), []):
            if record["from"] == "customer" and record["message_id"] == payload["messageId"]:
                record["read"] = True
        return Reply(204)

    async def _send(
        self, instance: EmulatedInstance, endpoint: str, payload: Dict[str, Any]
    ) -> Reply:
        faults = self.faults
        if faults.send_delay_ms:
            await asyncio.sleep(faults.send_delay_ms / 1000)
        # An outage answers before Z-API looks at the body.
        if faults.fail_sends > 0:
            faults.fail_sends -= 1
            return _error(faults.fail_status, HTTPStatus(faults.fail_status).phrase)
        problem = validate_send(endpoint, payload)
        if problem is not None:
            return _error(400, problem)
        # Disconnected, Z-API queues the send (up to QUEUE_LIMIT) and answers as usual. With the
        # queue turned off, or full, what it answers is not documented (guess): the same 400 as
        # other calls that need the phone.
        if not instance.connected and (
            not instance.enqueue_when_disconnected or len(instance.queue) >= QUEUE_LIMIT
        ):
            return _error(400, _NOT_CONNECTED)
        if faults.send_without_message_id > 0:
            faults.send_without_message_id -= 1
            return Reply(200, {"value": False})
        message_id = new_message_id()
        zaap_id = new_zaap_id()
        record: Record = {
            "from": "bot",
            "endpoint": endpoint,
            "body": payload,
            "text": _record_text(payload),
            "message_id": message_id,
            "zaap_id": zaap_id,
            "momment": self.now_ms(),
            "status": "SENT",
        }
        # Failures Z-API finds after it queued the message are decided now, so that the faults
        # apply to the next sends in order.
        if faults.refuse_buttons and base_endpoint(endpoint) in _INTERACTIVE:
            record["delivery_error"] = BUTTON_TERMS_ERROR
        elif faults.fail_deliveries > 0:
            faults.fail_deliveries -= 1
            record["delivery_error"] = faults.delivery_error
        if not instance.connected:
            record["status"] = "QUEUED"
            instance.queue.append(record)
        else:
            self._append(instance, payload["phone"], record)
            # Z-API answers "queued" at once; delivery and status callbacks come later.
            self._spawn(self._after_send(instance, record))
        return Reply(200, {"zaapId": zaap_id, "messageId": message_id, "id": message_id})

    async def _after_send(self, instance: EmulatedInstance, record: Record) -> None:
        body: Mapping[str, Any] = record["body"]
        phone: str = body["phone"]
        error = record.get("delivery_error")
        if error is not None:
            # The customer never sees it: a DeliveryCallback with the error, and no statuses.
            record["status"] = "FAILED"
            await self._post(instance, "delivery", self._delivery(instance, record, error))
            return
        if instance.notify_sent_by_me:
            echo = _echo_content(record["endpoint"], body)
            if echo is not None:
                payload = received_envelope(
                    instance,
                    phone=phone,
                    message_id=record["message_id"],
                    momment=self.now_ms(),
                    sender_name=instance.name,
                    from_me=True,
                    status="SENT",
                )
                payload["type"] = "ReceivedCallback"
                payload[echo[0]] = echo[1]
                await self._post(instance, "received", payload)
        await self._post(instance, "delivery", self._delivery(instance, record))
        for status in ("RECEIVED", "READ"):
            record["status"] = status
            await self._post(
                instance,
                "message-status",
                {
                    "instanceId": instance.instance_id,
                    "status": status,
                    "ids": [record["message_id"]],
                    "momment": self.now_ms(),
                    "phoneDevice": 0,
                    "phone": phone,
                    "type": "MessageStatusCallback",
                    "isGroup": phone.endswith("-group"),
                },
            )

    def _delivery(
        self, instance: EmulatedInstance, record: Record, error: Optional[str] = None
    ) -> Dict[str, Any]:
        """The DeliveryCallback of one send; with ``error``, the report of its failure."""
        callback = {
            "phone": record["body"]["phone"],
            "zaapId": record["zaap_id"],
            "messageId": record["message_id"],
            "instanceId": instance.instance_id,
            "momment": self.now_ms(),
            "type": "DeliveryCallback",
        }
        if error is not None:
            callback["error"] = error
        return callback

    def _connected(self, instance: EmulatedInstance) -> Dict[str, Any]:
        return {
            "type": "ConnectedCallback",
            "connected": True,
            "momment": self.now_ms(),
            "instanceId": instance.instance_id,
            "phone": instance.phone,
        }

    def _disconnected(self, instance: EmulatedInstance) -> Dict[str, Any]:
        return {
            "momment": self.now_ms(),
            "error": "Device has been disconnected",
            "disconnected": True,
            "type": "DisconnectedCallback",
            "instanceId": instance.instance_id,
        }

    # -- the emulator's own API ---------------------------------------------------------------

    async def customer_message(self, body: Any) -> Reply:
        """A customer sends a message: record it and post the ReceivedCallback (awaited)."""
        if not isinstance(body, Mapping):
            return _error(400, "the body must be a JSON object")
        instance = self._instance_for(body)
        if isinstance(instance, Reply):
            return instance
        parsed = parse_customer_message(self._fill_choice(instance, body))
        if isinstance(parsed, str):
            return _error(400, parsed)
        from_owner = body.get("from_me", False)
        if not isinstance(from_owner, bool):
            return _error(400, "from_me must be true or false")
        if not instance.connected:
            return _error(409, "The instance is not connected: its phone receives nothing")
        message_id = new_message_id()
        momment = self.now_ms()
        self._append(
            instance,
            parsed.phone,
            {
                "from": "owner" if from_owner else "customer",
                "text": parsed.text,
                "kind": parsed.kind,
                "message_id": message_id,
                "momment": momment,
                "sender_name": parsed.sender_name,
                "content": {parsed.content_key: parsed.content},
                "read": False,
            },
        )
        payload = received_callback(
            instance, parsed, message_id=message_id, momment=momment, from_owner=from_owner
        )
        # Z-API reports the owner's messages only with "notify sent by me" on; asking the
        # emulator to play the owner is taken as that being on, whatever the setting says.
        result = await self._post(instance, "received", payload)
        if self.faults.duplicate_deliveries and instance.webhooks.get("received"):
            await self._post(instance, "received", payload)
        return Reply(
            200,
            {
                "messageId": message_id,
                "webhook_status": result.status,
                "webhook_error": result.error,
            },
        )

    def _instance_for(self, body: Mapping[str, Any]) -> Union[EmulatedInstance, Reply]:
        instance_id = body.get("instance_id")
        if instance_id is not None and not isinstance(instance_id, str):
            return _error(400, "instance_id must be a string")
        instance = self.resolve_instance(instance_id)
        return instance if instance is not None else _error(404, "Unknown instance")

    def _fill_choice(
        self, instance: EmulatedInstance, body: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Complete a button or list reply from the bot message that offered the choice.

        ``{"phone", "button_id"}`` is enough when the bot sent that button: its label and the
        message it belongs to (``referenceMessageId``) are taken from the conversation.
        """
        phone = body.get("phone")
        button_id = body.get("button_id")
        row_id = body.get("list_row_id")
        if not isinstance(phone, str) or not isinstance(button_id or row_id, str):
            return body
        filled = dict(body)
        for record in reversed(self.conversations.get((instance.instance_id, phone), [])):
            if record["from"] != "bot":
                continue
            sent: Mapping[str, Any] = record["body"]
            if isinstance(button_id, str):
                buttons = list(sent.get("buttonList", {}).get("buttons", []))
                buttons += [a for a in sent.get("buttonActions", []) if a.get("type") == "REPLY"]
                match = next((b for b in buttons if b.get("id") == button_id), None)
                if match is not None:
                    filled.setdefault("label", match.get("label"))
                    filled.setdefault("reference_message_id", record["message_id"])
                    return filled
            else:
                options = sent.get("optionList", {}).get("options", [])
                match = next((o for o in options if o.get("id") == row_id), None)
                if match is not None:
                    filled.setdefault("title", match.get("title"))
                    filled.setdefault("description", match.get("description"))
                    filled.setdefault("reference_message_id", record["message_id"])
                    return filled
        return body

    async def set_connection(self, body: Any) -> Reply:
        """Switch the simulated phone on or off and post the matching callback (awaited)."""
        if not isinstance(body, Mapping) or not isinstance(body.get("connected"), bool):
            return _error(400, "connected is required (true or false)")
        instance = self._instance_for(body)
        if isinstance(instance, Reply):
            return instance
        instance.connected = body["connected"]
        if instance.connected:
            result = await self._post(instance, "connected", self._connected(instance))
            self._flush_queue(instance)
        else:
            result = await self._post(instance, "disconnected", self._disconnected(instance))
        return Reply(
            200,
            {
                "connected": instance.connected,
                "webhook_status": result.status,
                "webhook_error": result.error,
            },
        )

    # -- webhooks and background work ---------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        # Created on first use so that it binds to the loop the server runs in.
        if self._http_client is None:
            self._http_client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.webhook_timeout, connect=min(self.webhook_timeout, 5.0)),
                headers={"User-Agent": "zapi-channel-emulator"},
            )
        return self._http_client

    async def _post(
        self, instance: EmulatedInstance, kind: str, payload: Mapping[str, Any]
    ) -> WebhookResult:
        url = instance.webhooks.get(kind)
        callback = payload.get("type")
        if not url:
            logger.debug("%s not posted: no %s webhook", callback, kind)
            return WebhookResult(None, f"no {kind} webhook is configured")
        try:
            answer = await self._http().post(url, json=payload)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # The webhook URL usually holds the channel's secret: never log it or answer it.
            error = f"{type(exc).__name__}: {exc}".replace(url, "<webhook url>")
            logger.warning("%s to the %s webhook failed: %s", callback, kind, error)
            return WebhookResult(None, error)
        logger.info("%s -> %s webhook: HTTP %d", callback, kind, answer.status_code)
        return WebhookResult(answer.status_code, None)

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Background callback failed", exc_info=task.exception())

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every pending callback has been posted; ``False`` if time ran out."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return True

    async def aclose(self) -> None:
        """Let pending callbacks finish (briefly), then close the pooled HTTP client."""
        if not await self.drain(timeout=2.0):
            pending = list(self._tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._http_client is not None and self._owns_client:
            await self._http_client.aclose()
            self._http_client = None

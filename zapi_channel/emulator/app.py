"""The emulator's sanic app: Z-API's routes, the emulator's own JSON API and the chat page.

It only translates HTTP. Every decision is the :class:`~zapi_channel.emulator.server.Emulator`'s,
which answers with a :class:`~zapi_channel.emulator.values.Reply` and knows nothing of sanic.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine, Sequence, Tuple, Union

from sanic import Sanic, response
from sanic.request import Request
from sanic.response import HTTPResponse

from zapi_channel.emulator.page import static_file
from zapi_channel.emulator.server import Emulator, _decode_object
from zapi_channel.emulator.values import Reply, _error
from zapi_channel.redaction import TokenPathFilter


def build_app(emulator: Emulator, name: str = "zapi-emulator") -> Sanic:
    """A sanic app serving ``emulator``.

    ``/instances/<id>/token/<token>/<endpoint>``: Z-API. Under ``/_emulator``:
    ``POST|GET|DELETE messages``, ``GET conversations``, ``GET|POST|DELETE faults``,
    ``POST connection``, ``GET health``, and ``GET static/<file>`` for the chat page served
    at ``GET /``. Sanic keeps a registry of app names: give each app in one process its own
    ``name``.
    """
    _install_log_redaction()
    app = Sanic(name, configure_logging=False)
    app.config.MOTD = False
    app.config.ACCESS_LOG = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    # Ctrl-C should not wait 15 s for idle keep-alive connections.
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 2.0

    async def zapi(request: Request, instance_id: str, token: str, endpoint: str) -> HTTPResponse:
        reply = await emulator.handle_zapi(
            request.method,
            instance_id,
            token,
            endpoint,
            client_token=request.headers.get("client-token"),
            content_type=request.headers.get("content-type"),
            body=request.body,
        )
        return to_http(reply)

    async def post_message(request: Request) -> HTTPResponse:
        return to_http(await emulator.customer_message(_decode_object(request.body)))

    async def get_messages(request: Request) -> HTTPResponse:
        phone = request.args.get("phone")
        if not phone:
            return to_http(_error(400, "phone is required (?phone=5511999999999)"))
        instance_id = request.args.get("instance_id")
        if emulator.resolve_instance(instance_id) is None:
            return to_http(_error(404, "Unknown instance"))
        return response.json({"messages": emulator.conversation(phone, instance_id)})

    async def delete_messages(request: Request) -> HTTPResponse:
        emulator.clear_conversations()
        return response.json({"value": True})

    async def conversations(request: Request) -> HTTPResponse:
        return response.json({"conversations": emulator.conversation_summaries()})

    async def get_faults(request: Request) -> HTTPResponse:
        return response.json(emulator.faults.to_dict())

    async def post_faults(request: Request) -> HTTPResponse:
        changes = _decode_object(request.body)
        if changes is None:
            return to_http(_error(400, "the body must be a JSON object"))
        try:
            return response.json(emulator.set_faults(changes).to_dict())
        except ValueError as exc:
            return to_http(_error(400, str(exc)))

    async def delete_faults(request: Request) -> HTTPResponse:
        return response.json(emulator.reset_faults().to_dict())

    async def connection(request: Request) -> HTTPResponse:
        return to_http(await emulator.set_connection(_decode_object(request.body)))

    async def health(request: Request) -> HTTPResponse:
        return response.json(emulator.health())

    async def chat_page(request: Request) -> HTTPResponse:
        return to_http(await static_file("chat.html"))

    async def static(request: Request, name: str) -> HTTPResponse:
        return to_http(await static_file(name))

    async def stopped(app: Sanic, loop: asyncio.AbstractEventLoop) -> None:
        await emulator.aclose()

    # Registered by call rather than decorator: sanic's decorators are untyped.
    app.add_route(
        zapi,
        "/instances/<instance_id>/token/<token>/<endpoint:path>",
        methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
        name="zapi",
    )
    routes: Sequence[Tuple[Callable[..., Coroutine[Any, Any, HTTPResponse]], str, str]] = (
        (post_message, "messages", "POST"),
        (get_messages, "messages", "GET"),
        (delete_messages, "messages", "DELETE"),
        (conversations, "conversations", "GET"),
        (get_faults, "faults", "GET"),
        (post_faults, "faults", "POST"),
        (delete_faults, "faults", "DELETE"),
        (connection, "connection", "POST"),
        (health, "health", "GET"),
    )
    for handler, path, method in routes:
        app.add_route(
            handler,
            f"/_emulator/{path}",
            methods=[method],
            name=f"emulator_{method.lower()}_{path}",
        )
    app.add_route(chat_page, "/", methods=["GET"], name="emulator_chat_page")
    app.add_route(static, "/_emulator/static/<name>", methods=["GET"], name="emulator_static")
    app.register_listener(stopped, "after_server_stop")
    return app


def to_http(reply: Union[Reply, HTTPResponse]) -> HTTPResponse:
    """The emulator's :class:`Reply` as sanic's response (a response passes through)."""
    if isinstance(reply, HTTPResponse):
        return reply
    if reply.body is None:
        return response.empty(status=reply.status)
    return response.json(reply.body, status=reply.status)


_SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.access", "sanic.server")


def _install_log_redaction() -> None:
    # Sanic logs the request URL when a handler fails; Z-API URLs carry the instance token.
    for name in _SANIC_LOGGERS:
        sanic_logger = logging.getLogger(name)
        if not any(isinstance(f, TokenPathFilter) for f in sanic_logger.filters):
            sanic_logger.addFilter(TokenPathFilter())


__all__ = ["build_app", "to_http"]

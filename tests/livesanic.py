"""Run a sanic app on a free loopback port inside the test's own event loop.

sanic-testing (the in-process client) for sanic 21.12 needs an httpx older than respx supports, so
the blueprint is tested the way it runs in production: a real server on a real socket.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

from sanic import Sanic

# sanic 21.12 rewrites some of its own methods ("touchup") when a server starts; starting a second
# server in the same process fails unless test mode keeps the originals around.
Sanic.test_mode = True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_app(prefix: str = "test") -> Sanic:
    # sanic keeps a registry of app names per process: every test gets a fresh one.
    return Sanic(f"{prefix}_{uuid.uuid4().hex[:12]}")


@asynccontextmanager
async def serving(app: Sanic) -> AsyncIterator[str]:
    """Serve ``app`` until the block ends; yields its base URL."""
    port = free_port()
    server = await app.create_server(
        host="127.0.0.1", port=port, return_asyncio_server=True, access_log=False
    )
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.before_stop()
        server.close()
        await server.wait_closed()
        # Closing the listener leaves keep-alive connections open; their tasks would then wake
        # in a closed event loop and log "Closing failed". Close them the way sanic's own
        # shutdown does, and give them a moment to finish.
        for connection in list(server.connections):
            connection.close_if_idle()
        for _ in range(100):
            if not server.connections:
                break
            await asyncio.sleep(0.01)
        await server.after_stop()

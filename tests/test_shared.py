"""The shared delivery's Redis client: commands packed in C, byte for byte as redis-py packs them."""

from __future__ import annotations

from typing import Any, Tuple

import pytest
import redis.asyncio as redis_asyncio
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from zapi_channel.delivery.shared import _PackedByHiredis, connect, packing_in_c

PACKED = packing_in_c(Connection)

NAMES = st.sampled_from(["SET", "EVALSHA", "XADD", "CONFIG GET", "script load", b"XINFO GROUPS"])
# Everything redis-py's encoder takes: text (any that UTF-8 can write), bytes, ints, floats.
ARGS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",))),
    st.binary(),
    st.integers(),
    st.floats(allow_nan=False),
)


def packed(connection_class: type, *args: Any) -> bytes:
    return b"".join(connection_class(decode_responses=True).pack_command(*args))


@given(name=NAMES, args=st.lists(ARGS, max_size=6))
def test_a_command_is_packed_as_redis_py_packs_it(name: Any, args: Tuple[Any, ...]) -> None:
    assert packed(PACKED, name, *args) == packed(Connection, name, *args)


def test_a_large_payload_is_the_same_bytes_too() -> None:
    payload = "ã" * 10_000  # above redis-py's chunking cutoff: it sends it in pieces
    assert packed(PACKED, "XADD", "inbox:0", "*", "payload", payload) == packed(
        Connection, "XADD", "inbox:0", "*", "payload", payload
    )


@pytest.mark.parametrize("refused", [None, True, ["a list"], {"a": "dict"}])
def test_what_redis_py_refuses_is_refused_alike(refused: Any) -> None:
    for connection_class in (Connection, PACKED):
        with pytest.raises(DataError):
            connection_class(decode_responses=True).pack_command("SET", "key", refused)


@pytest.mark.parametrize(
    ("url", "chosen"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///run/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_every_kind_of_redis_url_keeps_its_own_connection_and_packs_in_c(
    url: str, chosen: type
) -> None:
    client = connect(url)  # no connection is made until a command
    made = client.connection_pool.connection_class
    assert issubclass(made, chosen) and issubclass(made, _PackedByHiredis)
    assert packing_in_c(made) is made and packing_in_c(chosen) is made


async def test_commands_packed_in_c_reach_a_real_redis(redis_url: str) -> None:
    client = connect(redis_url)
    plain = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.set("test-shared:packed", "olá 👋", ex=60)
        assert await plain.get("test-shared:packed") == "olá 👋"
        echoed = await client.eval("return {ARGV[1], ARGV[2]}", 0, 1.5, "ação")
        assert echoed == ["1.5", "ação"]
    finally:
        await client.delete("test-shared:packed")
        await client.close()
        await plain.close()

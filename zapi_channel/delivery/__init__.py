"""The delivery layer: what happens to a customer message after the webhook's 200.

- :mod:`~zapi_channel.delivery.base`: the :class:`Delivery` interface, shared types and turns.
- :mod:`~zapi_channel.delivery.embedded`: the default, one SQLite file (``state_path``).
- :mod:`~zapi_channel.delivery.shared`: several instances through Redis (``redis_url``).
- :mod:`~zapi_channel.delivery.streams`: the Redis Streams inbox the shared delivery reads.
- :mod:`~zapi_channel.delivery.batching`: Redis commands sent a burst per pipeline.
- :mod:`~zapi_channel.delivery.sqlite`: the thread that owns the SQLite connection.
- :mod:`~zapi_channel.delivery.workers`: per-customer FIFO turns with a concurrency bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from zapi_channel.config import DEFAULT_STATE_PATH, ChannelConfig, clean
from zapi_channel.delivery.base import FAILED, UNKNOWN, Delivery, FailedSend, Journal


def open_delivery(config: ChannelConfig) -> Delivery:
    """The delivery ``config`` asks for: Redis with ``redis_url``, else the SQLite file.

    Opening the file checks it: a damaged file, or one another process consumes, raises here,
    before the bot starts (:class:`~zapi_channel.errors.StateCorrupt`, ``StateInUse``).
    """
    if config.redis_url:
        from zapi_channel.delivery.shared import RedisDelivery, connect

        return RedisDelivery(
            connect(config.redis_url),
            prefix=config.redis_prefix,
            partitions=config.inbox_partitions,
            lease_seconds=config.inbox_lease_seconds,
            dedup_ttl_seconds=config.dedup_ttl_seconds,
            max_concurrency=config.max_concurrency,
            merge_window=config.merge_window_ms / 1000,
        )
    from zapi_channel.delivery.embedded import EmbeddedDelivery

    return EmbeddedDelivery(
        Path(config.state_path),
        dedup_ttl_seconds=config.dedup_ttl_seconds,
        max_concurrency=config.max_concurrency,
        merge_window=config.merge_window_ms / 1000,
    )


def open_journal(block: Mapping[str, Any]) -> Journal:
    """The failed-sends journal a channel block points at, for the command line.

    It opens the state file without consuming it, so it works beside a running bot.
    """
    redis_url = clean(block.get("redis_url"))
    if redis_url:
        from zapi_channel.delivery.shared import RedisJournal, connect

        return RedisJournal(connect(redis_url), prefix=clean(block.get("redis_prefix")) or "zapi")
    from zapi_channel.delivery.embedded import EmbeddedJournal

    return EmbeddedJournal.open(Path(clean(block.get("state_path")) or DEFAULT_STATE_PATH))


__all__ = [
    "FAILED",
    "UNKNOWN",
    "Delivery",
    "FailedSend",
    "Journal",
    "open_delivery",
    "open_journal",
]

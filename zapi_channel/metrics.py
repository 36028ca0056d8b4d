"""The channel's metrics, in Prometheus' text format through ``prometheus-client``.

Served at ``GET /webhooks/zapi/metrics`` only when ``metrics_token`` is set, and only to
``Authorization: Bearer <metrics_token>``: the webhook is public, the metrics are not.

Each channel object has a registry of its own rather than the process-wide default: a test (or
a process) may build several channels, and each ``rasa run`` instance serves its own numbers,
which is what Prometheus expects of several instances.

No label ever holds a phone number, a message id or a token: every label takes values from a
short, fixed list (endpoint names are cut to Z-API's base name), so the number of series stays
bounded whatever customers send. What each metric means, with alert rules and a dashboard:
``docs/operations.md``.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

#: The text format's content type, for the HTTP answer.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: An endpoint label: Z-API's base name ("send-document/pdf" -> "send-document").
_ENDPOINT = re.compile(r"[a-z][a-z0-9-]{0,39}")

#: Ack latency: the webhook answers in about a millisecond; Z-API waits some seconds at most.
_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: A turn runs the model, custom actions and the sends: from tens of ms to seconds.
_TURN_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

WHATSAPP_STATES = ("connected", "disconnected", "unknown")


def endpoint_label(endpoint: str) -> str:
    """A bounded label for a Z-API endpoint; anything odd becomes ``other``."""
    base = endpoint.strip("/").split("/", 1)[0]
    return base if _ENDPOINT.fullmatch(base) else "other"


class Metrics:
    """Every metric of one channel, in its own registry. :meth:`render` gives the text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.webhooks = Counter(
            "zapi_webhooks",
            "Webhook requests by outcome: accepted, duplicate, ignored (reason says which "
            "class), event, inactive, invalid, too_large, refused, unavailable",
            ["outcome", "reason"],
            registry=registry,
        )
        self.ack_seconds = Histogram(
            "zapi_webhook_ack_seconds",
            "Time from the webhook handler's start to its answer",
            buckets=_ACK_BUCKETS,
            registry=registry,
        )
        self.turn_seconds = Histogram(
            "zapi_turn_seconds",
            "Time one customer message takes through Rasa, its sends included",
            buckets=_TURN_BUCKETS,
            registry=registry,
        )
        self.sends = Counter(
            "zapi_sends",
            "Answers sent to Z-API by endpoint and outcome: sent, failed (journaled), unknown "
            "(may have gone through; journaled)",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "zapi_send_retries",
            "Sends tried again after a transient failure",
            ["endpoint"],
            registry=registry,
        )
        self.delivery_failures = Counter(
            "zapi_delivery_failures",
            "Failures Z-API reported after queueing a send: journaled, fallback (buttons sent "
            "again as numbered text) or foreign (not a send of this bot)",
            ["handled"],
            registry=registry,
        )
        self.failed_sends = Gauge(
            "zapi_failed_sends",
            "Entries in the failed-sends journal (zapi-channel failed list)",
            registry=registry,
        )
        self.inbox_backlog = Gauge(
            "zapi_inbox_backlog",
            "Customer messages acknowledged and not answered yet",
            registry=registry,
        )
        self.paused_conversations = Gauge(
            "zapi_paused_conversations",
            "Conversations the shop's owner took over from the phone",
            registry=registry,
        )
        self.whatsapp = Enum(
            "zapi_whatsapp",
            "The WhatsApp session as the last connection callback said",
            states=list(WHATSAPP_STATES),
            registry=registry,
        )
        self.whatsapp.state("unknown")
        self._webhook_children: Dict[Tuple[str, str], Any] = {}

    def webhook(self, outcome: str, reason: str = "") -> None:
        # Once per webhook: the labelled child is looked up once per label pair, not each time
        # (``labels()`` validates and locks), so counting stays a fraction of a microsecond.
        child = self._webhook_children.get((outcome, reason))
        if child is None:
            child = self._webhook_children[(outcome, reason)] = self.webhooks.labels(
                outcome, reason
            )
        child.inc()

    def sent(self, endpoint: str, outcome: str) -> None:
        self.sends.labels(endpoint_label(endpoint), outcome).inc()

    def retried(self, endpoint: str) -> None:
        self.retries.labels(endpoint_label(endpoint)).inc()

    def connection(self, connected: Optional[bool]) -> None:
        self.whatsapp.state(
            "unknown" if connected is None else "connected" if connected else "disconnected"
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "WHATSAPP_STATES", "Metrics", "endpoint_label"]

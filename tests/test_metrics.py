"""The metrics registry on its own: names, bounded labels, the text format."""

from __future__ import annotations

from typing import Dict, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zapi_channel.metrics import Metrics, endpoint_label


def samples(metrics: Metrics) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize(
    ("endpoint", "label"),
    [
        ("send-text", "send-text"),
        ("send-document/pdf", "send-document"),
        ("/send-image/", "send-image"),
        ("5511999999999", "other"),  # never a phone number as a label
        ("x" * 200, "other"),
        ("Send-Text", "other"),
    ],
)
def test_endpoint_labels_are_bounded(endpoint: str, label: str) -> None:
    assert endpoint_label(endpoint) == label


def test_counters_and_states_render_in_the_text_format() -> None:
    metrics = Metrics()
    metrics.webhook("accepted")
    metrics.webhook("accepted")
    metrics.webhook("ignored", "group")
    metrics.sent("send-document/pdf", "sent")
    metrics.retried("send-text")
    metrics.connection(False)
    found = samples(metrics)
    assert found[("zapi_webhooks_total", (("outcome", "accepted"), ("reason", "")))] == 2
    assert found[("zapi_webhooks_total", (("outcome", "ignored"), ("reason", "group")))] == 1
    key = ("zapi_sends_total", (("endpoint", "send-document"), ("outcome", "sent")))
    assert found[key] == 1
    assert found[("zapi_send_retries_total", (("endpoint", "send-text"),))] == 1
    assert found[("zapi_whatsapp", (("zapi_whatsapp", "disconnected"),))] == 1
    assert found[("zapi_whatsapp", (("zapi_whatsapp", "connected"),))] == 0


def test_each_channel_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.webhook("accepted")
    assert ("zapi_webhooks_total", (("outcome", "accepted"), ("reason", ""))) not in samples(second)


def test_a_new_registry_says_the_connection_is_unknown() -> None:
    found = samples(Metrics())
    assert found[("zapi_whatsapp", (("zapi_whatsapp", "unknown"),))] == 1


def test_the_dashboard_and_the_alerts_query_only_metrics_that_exist() -> None:
    import json
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    alerts = re.findall(r"expr: (.+)", (docs / "operations.md").read_text())
    assert queries and len(alerts) == 3
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    served = {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }
    for query in queries + alerts:
        for name in re.findall(r"\bzapi_[a-z_]+", query):
            assert name in served, (name, query)

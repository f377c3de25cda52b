"""GET /metrics rendered from hand-made snapshots: every series unique, no secret in a label."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from stackmon.agent.metrics import render_metrics
from stackmon.model import HostSnapshot, UwsgiInstance


def series(snap: HostSnapshot) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    text = render_metrics(snap).decode()
    return [(s.name, tuple(sorted(s.labels.items())), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def test_an_instance_url_is_redacted_in_labels():
    inst = UwsgiInstance(address="http://127.0.0.1:9003/stats?token=abc123", version="2.0",
                         master_pid=1, listen_queue=0, listen_queue_max=100, sockets=(),
                         workers=())
    snap = HostSnapshot(name="web-1", taken_at=1.0, reachable=True, uwsgi=(inst,))
    text = render_metrics(snap).decode()
    assert "abc123" not in text
    assert 'instance="http://127.0.0.1:9003/stats?token=<redacted>"' in text

"""GET /metrics rendered from hand-made snapshots: every series unique, no secret in a label."""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from stackmon.agent.metrics import render_metrics
from stackmon.model import HostSnapshot, Listener, UwsgiInstance


def series(snap: HostSnapshot) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    text = render_metrics(snap).decode()
    return [(s.name, tuple(sorted(s.labels.items())), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def test_reuseport_listeners_on_one_address_are_distinct_series():
    # nginx `listen 80 reuseport`: the kernel lists one listening socket per worker, same address
    snap = HostSnapshot(name="web-1", taken_at=1.0, reachable=True, listeners=(
        Listener("0.0.0.0:80", "tcp", "nginx", queue=0, backlog=511, inode=1001, pids=(11,)),
        Listener("0.0.0.0:80", "tcp", "nginx", queue=7, backlog=511, inode=1002, pids=(12,)),
        Listener("/run/app.sock", "unix", "uwsgi", queue=1, backlog=100, inode=2001),
    ))
    got = series(snap)
    keys = Counter((name, labels) for name, labels, _ in got)
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]
    queues = {dict(labels)["inode"]: value for name, labels, value in got
              if name == "stackmon_listener_queue" and dict(labels)["listener"] == "0.0.0.0:80"}
    assert queues == {"1001": 0.0, "1002": 7.0}  # each socket's own queue, not a sum


def test_listeners_without_inodes_still_give_unique_series():
    snap = HostSnapshot(name="web-1", taken_at=1.0, reachable=True, listeners=(
        Listener("0.0.0.0:80", "tcp", "nginx", queue=0, backlog=511),
        Listener("0.0.0.0:80", "tcp", "nginx", queue=3, backlog=511),
    ))
    keys = Counter((name, labels) for name, labels, _ in series(snap))
    assert all(n == 1 for n in keys.values())


def test_an_instance_url_is_redacted_in_labels():
    inst = UwsgiInstance(address="http://127.0.0.1:9003/stats?token=abc123", version="2.0",
                         master_pid=1, listen_queue=0, listen_queue_max=100, sockets=(),
                         workers=())
    snap = HostSnapshot(name="web-1", taken_at=1.0, reachable=True, uwsgi=(inst,))
    text = render_metrics(snap).decode()
    assert "abc123" not in text
    assert 'instance="http://127.0.0.1:9003/stats?token=<redacted>"' in text

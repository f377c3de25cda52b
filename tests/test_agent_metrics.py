"""GET /metrics rendered from hand-made snapshots: every series unique, no secret in a label,
the logs' window figures by cause and status, the health check and the health model's verdict.
(tests/test_metrics_clients.py: the same through a real agent on a real stack.)"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stackmon.agent.metrics import MAX_LABEL, render_metrics
from stackmon.health import assess
from stackmon.logs.access import EndpointStat, HttpSummary, Percentiles
from stackmon.logs.host import LogSummary, SourceStatus
from stackmon.logs.nginx_errors import UpstreamError
from stackmon.logs.uwsgi_events import Event
from stackmon.model import HostSnapshot, Listener, UwsgiInstance
from stackmon.sources.lb_probe import HealthCheck


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


# ------------------------------------------------------------------ logs, health check, verdict


def logs_summary(**kw: Any) -> LogSummary:
    http = HttpSummary(
        window_s=60.0, source="/var/log/nginx/access.log", requests=120, per_s=2.0,
        covered_s=60.0,
        status={"2xx": 80, "3xx": 0, "4xx": 5, "5xx": 35, "499": 2, "502": 30, "503": 0,
                "504": 5},
        upstream_ms=Percentiles(p50=12.0, p95=250.0, p99=4000.0),
        timing="$upstream_response_time",
        top_5xx=(EndpointStat("/report?token=SECRET-TOP", 30, 30, 10.0, 5.0),),
        top_slow=(), unparsed=0, log_format="main", missing=(), advice=None)
    errors = (
        UpstreamError("queue_full", "unix:/run/app.sock", 30, 1000.0, 1050.0,
                      'connect() to unix:/run/app.sock failed (11: Resource temporarily '
                      'unavailable) while connecting to upstream, request: "GET '
                      '/report?token=SECRET-SAMPLE HTTP/1.1", client: 10.9.8.7'),
        UpstreamError("read_timeout", "127.0.0.1:3031", 5, 1010.0, 1040.0, "timed out"),
    )
    events = (Event(1049.0, "uwsgi", "harakiri", 3, 4242, "/report?token=SECRET-EVENT",
                    "HARAKIRI ON WORKER 3"),)
    sources = (SourceStatus("nginx_access", "/var/log/nginx/access.log", None, None, 10, 0, 0,
                            ()),
               SourceStatus("nginx_error", "/var/log/nginx/error.log", None,
                            "permission denied", 0, 0, 0, ()),
               SourceStatus("uwsgi", None, "app", "not a file: syslog", 0, 0, 0, ()))
    base: dict[str, Any] = {"taken_at": 1060.0, "window_s": 60.0, "http": http,
                            "upstream_errors": errors, "events": events, "sources": sources}
    base.update(kw)
    return LogSummary(**base)


def by_name(snap: HostSnapshot) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for name, labels, value in series(snap):
        out.setdefault(name, {})[labels] = value
    return out


def test_log_figures_by_cause_upstream_and_status_without_request_data() -> None:
    snap = HostSnapshot(name="web-1", taken_at=1060.0, reachable=True, logs=logs_summary())
    got = by_name(snap)
    assert got["stackmon_upstream_errors"] == {
        (("cause", "queue_full"), ("host", "web-1"), ("upstream", "unix:/run/app.sock")): 30.0,
        (("cause", "read_timeout"), ("host", "web-1"), ("upstream", "127.0.0.1:3031")): 5.0,
    }
    classes = {dict(k)["status"]: v for k, v in got["stackmon_http_responses"].items()}
    assert classes == {"2xx": 80.0, "3xx": 0.0, "4xx": 5.0, "5xx": 35.0}
    assert sum(classes.values()) == got["stackmon_http_requests"][(("host", "web-1"),)]
    codes = {dict(k)["status"]: v for k, v in got["stackmon_http_error_responses"].items()}
    assert codes == {"499": 2.0, "502": 30.0, "503": 0.0, "504": 5.0}
    quantiles = {dict(k)["quantile"]: v
                 for k, v in got["stackmon_http_upstream_response_seconds"].items()}
    assert quantiles == {"0.5": 0.012, "0.95": 0.25, "0.99": 4.0}
    assert {dict(k)["variable"] for k in got["stackmon_http_upstream_response_seconds"]} == {
        "upstream_response_time"}
    assert got["stackmon_log_window_seconds"] == {(("host", "web-1"),): 60.0}
    ok = {dict(k)["kind"]: v for k, v in got["stackmon_log_source_ok"].items()}
    assert ok == {"nginx_access": 1.0, "nginx_error": 0.0}  # syslog: nothing to read
    text = render_metrics(snap).decode()
    for leak in ("SECRET", "10.9.8.7", "/report", "HARAKIRI"):
        assert leak not in text, leak
    # Windowed counts are gauges: Prometheus would otherwise let rate() run on them.
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["stackmon_upstream_errors"] == "gauge"
    assert types["stackmon_http_responses"] == "gauge"


def test_a_format_without_timing_gives_no_percentiles() -> None:
    logs = logs_summary()
    assert logs.http is not None
    http = replace(logs.http, upstream_ms=None, timing=None,
                   missing=("$upstream_response_time",))
    snap = HostSnapshot(name="web-1", taken_at=1060.0, reachable=True,
                        logs=replace(logs, http=http))
    got = by_name(snap)
    assert "stackmon_http_upstream_response_seconds" not in got
    assert "stackmon_http_responses" in got


def test_hostile_upstream_names_are_cleaned_capped_and_unique() -> None:
    long = "unix:/run/" + "a" * 400
    errors = (UpstreamError("other", long + "x", 1, 1.0, 1.0, ""),
              UpstreamError("other", long + "y", 2, 1.0, 1.0, ""),
              UpstreamError("other", "evil\x1b[2J\nname", 3, 1.0, 1.0, ""))
    snap = HostSnapshot(name="web-1", taken_at=1060.0, reachable=True,
                        logs=logs_summary(upstream_errors=errors, http=None))
    got = by_name(snap)["stackmon_upstream_errors"]
    upstreams = [dict(k)["upstream"] for k in got]
    assert len(upstreams) == 2  # the two long names are one series once capped
    assert all(len(u) <= MAX_LABEL + 3 for u in upstreams)
    assert not any("\x1b" in u or "\n" in u for u in upstreams)
    assert "stackmon_http_requests" not in by_name(snap)


def check(**kw: Any) -> HealthCheck:
    base: dict[str, Any] = {"url": "http://127.0.0.1/healthz?token=SECRET-URL", "ok": False,
                            "last_ms": 5000.0, "max_ms": 5004.0, "failures_in_row": 2,
                            "out_of_service": True, "last_error": "timed out after 5 s",
                            "timeout_s": 5.0}
    base.update(kw)
    return HealthCheck(**base)


def test_health_check_and_severity() -> None:
    snap = HostSnapshot(name="web-1", taken_at=1.0, reachable=True, health=check())
    got = by_name(snap)
    one = (("host", "web-1"),)
    assert got["stackmon_health_check_ok"] == {one: 0.0}
    assert got["stackmon_health_check_failures_in_row"] == {one: 2.0}
    assert got["stackmon_health_check_out_of_service"] == {one: 1.0}
    assert got["stackmon_health_check_latency_seconds"] == {one: 5.0}
    assert got["stackmon_health_check_max_latency_seconds"] == {one: 5.004}
    assert got["stackmon_host_severity"] == {one: 3.0}  # out of service: critical
    assert got["stackmon_host_reason_severity"] == {(("host", "web-1"), ("kind", "health")): 3.0}
    assert "SECRET-URL" not in render_metrics(snap).decode()

    passing = replace(snap, health=check(ok=True, last_ms=20.0, max_ms=20.0,
                                         failures_in_row=0, out_of_service=False))
    got = by_name(passing)
    assert got["stackmon_health_check_ok"] == {one: 1.0}
    assert got["stackmon_host_severity"] == {one: 0.0}
    assert "stackmon_host_reason_severity" not in got or not got["stackmon_host_reason_severity"]

    pending = replace(snap, health=check(ok=None, last_ms=None, max_ms=None,
                                         failures_in_row=0, out_of_service=False))
    got = by_name(pending)
    assert "stackmon_health_check_ok" not in got  # no probe has finished: no answer yet
    assert got["stackmon_health_check_out_of_service"] == {one: 0.0}


def test_severity_matches_the_health_model() -> None:
    # 35 5xx in 60 s among 120 requests: critical by the policy's share rule.
    snap = HostSnapshot(name="web-1", taken_at=1060.0, reachable=True, logs=logs_summary())
    assert assess(snap).severity == "critical"
    got = by_name(snap)
    assert got["stackmon_host_severity"] == {(("host", "web-1"),): 3.0}
    assert got["stackmon_host_reason_severity"][(("host", "web-1"), ("kind", "http"))] == 3.0
    down = HostSnapshot(name="web-1", taken_at=1.0, reachable=False)
    assert by_name(down)["stackmon_host_severity"] == {(("host", "web-1"),): 3.0}
    stale = HostSnapshot(name="web-1", taken_at=1.0, reachable=True, stale_s=12.0)
    assert by_name(stale)["stackmon_host_severity"] == {(("host", "web-1"),): 1.0}

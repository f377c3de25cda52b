"""GET /metrics: the figures of one HostSnapshot in the Prometheus text format.

The agent already knows everything uwsgi_exporter and nginx-prometheus-exporter would scrape,
plus what they cannot see (in-flight request ages, kernel accept queues of unix sockets, fds
against each process's own limit), so it exposes them from the same snapshot its API serves:
one poll feeds both.

Labels identify *where* (host, instance = the stats address, worker id, socket/listener
address and inode, process role and pid) and never carry request data: no URIs, no header
values, no vars, whatever they contain; an instance address that is a URL is shown redacted.
Counters are uWSGI's and nginx's own cumulative counters, so they reset when the process does,
which Prometheus' rate() handles.

Values come from other processes, so nothing about them is assumed: a number too big for a
float is exported as +Inf (never an OverflowError that fails the whole page), label text has
lone surrogates and control characters made visible and is capped in length, and workers that
share an id (cheaper mode lists the unspawned ones as id 0; a broken producer may repeat ids)
get `worker="ID@POSITION"` (1-based position in the list, which is the worker's identity), so
series stay unique while the usual, unique ids keep their plain label.

What the clients got, from the logs (stackmon.logs), and how bad the host is (stackmon.health):

- `stackmon_upstream_errors{cause,upstream}`, `stackmon_http_responses{status}` (2xx..5xx,
  which add up to `stackmon_http_requests`), `stackmon_http_error_responses{status}` (499,
  502, 503, 504: subsets of the classes, kept apart so that `sum()` over either metric is
  right), `stackmon_http_requests`: counts of log lines in the last `stackmon_log_window_seconds`
  (60 s by default). They are WINDOWED GAUGES, not counters, on purpose: a log summary says
  how many lines of each cause are in the window, not how many left it since the last poll,
  so a counter built from it would over- or under-count, and an agent scraped less often than
  the window would silently lose lines. Use them as they are
  (`stackmon_upstream_errors{cause="queue_full"} > 0`: the unix queue overflowed in the last
  minute), or per second as `stackmon_upstream_errors / on(host) group_left
  stackmon_log_window_seconds`; never `rate()` or `increase()` on them. For rates use the
  true counters `stackmon_upstream_errors_total{cause,upstream}` and
  `stackmon_http_responses_by_status_total{status}`, counted where the lines are read (since
  stackmon started following the logs). Labels: the cause (a fixed
  vocabulary), the upstream as nginx names it (a socket address or an upstream block's name,
  at most 64 per host) and status classes: never a URI, a client or a header.
- `stackmon_http_upstream_response_seconds{quantile,variable}`: p50/p95/p99 over the window of
  the access log's timing variable (`upstream_response_time`, else `request_time`); absent
  when the log_format has none.
- `stackmon_health_check_ok`, `_failures_in_row`, `_out_of_service`, `_latency_seconds`,
  `_max_latency_seconds`: the load balancer's health check as stackmon probes it (absent
  without a `health` URL; `_ok` and the latencies absent until the first probe ends).
- `stackmon_host_severity`: health.assess() as a number, 0 ok, 1 unknown, 2 warn,
  3 critical: the same verdict as the TUI's tab and `snapshot`'s exit code;
  `stackmon_host_reason_severity{kind}` the worst reason of each kind (request, queue, fds,
  http, health, source, unreachable, stale) on the same scale.
- `stackmon_log_source_ok{kind,path}`: 0 when a followed log could not be read this poll.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from stackmon import redact
from stackmon.health import SEVERITY_RANK, assess
from stackmon.logs.access import HttpSummary
from stackmon.logs.host import LogSummary
from stackmon.model import LEVELS, HostSnapshot, Worker
from stackmon.sources.lb_probe import HealthCheck

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LABEL = 256


def _num(value: float | int | None) -> float:
    """A sample value; integers past float range become +/-Inf instead of raising."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _label(value: object) -> str:
    """A label value: visible, encodable, bounded (a 5,000-digit pid would not even str())."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 63:
        return "out-of-range"
    text = redact.visible(str(value))
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL] + "..."


def _worker_labels(workers: tuple[Worker, ...]) -> list[str]:
    """The `worker` label of each worker: its id, or id@position when the id is not unique."""
    counts = Counter(w.id for w in workers)
    return [_label(w.id) if counts[w.id] == 1 else f"{_label(w.id)}@{pos}"
            for pos, w in enumerate(workers, 1)]


def _families(h: HostSnapshot) -> Iterator[Metric]:
    host = _label(h.name)
    up = GaugeMetricFamily("stackmon_host_up", "1 when the host's sources answered this poll",
                           labels=["host"])
    up.add_metric([host], 1.0 if h.reachable else 0.0)
    yield up
    errs = GaugeMetricFamily("stackmon_source_errors", "Sources that failed in this poll",
                             labels=["host"])
    errs.add_metric([host], float(len(h.errors)))
    yield errs
    stale = GaugeMetricFamily("stackmon_data_age_seconds",
                              "Age of the data served (0 when fresh)", labels=["host"])
    stale.add_metric([host], float(h.stale_s or 0.0))
    yield stale

    wl = ["host", "instance", "worker"]
    busy = GaugeMetricFamily("stackmon_uwsgi_worker_busy", "1 when the worker is in a request",
                             labels=wl)
    requests = CounterMetricFamily("stackmon_uwsgi_worker_requests",
                                   "Requests finished by the worker", labels=wl)
    exceptions = CounterMetricFamily("stackmon_uwsgi_worker_exceptions",
                                     "Exceptions raised in the worker", labels=wl)
    respawns = CounterMetricFamily("stackmon_uwsgi_worker_respawns",
                                   "Times the worker was (re)spawned", labels=wl)
    harakiri = CounterMetricFamily("stackmon_uwsgi_worker_harakiri",
                                   "Requests the worker lost to harakiri", labels=wl)
    rss = GaugeMetricFamily("stackmon_uwsgi_worker_rss_bytes",
                            "Resident memory reported by uWSGI (0 without memory-report)",
                            labels=wl)
    avg_rt = GaugeMetricFamily("stackmon_uwsgi_worker_avg_response_seconds",
                               "uWSGI's running average response time", labels=wl)
    il = ["host", "instance"]
    in_flight = GaugeMetricFamily("stackmon_uwsgi_requests_in_flight",
                                  "Requests running now, by age level",
                                  labels=[*il, "level"])
    oldest = GaugeMetricFamily("stackmon_uwsgi_oldest_request_seconds",
                               "Age of the longest-running request in flight (0: none)",
                               labels=il)
    workers = GaugeMetricFamily("stackmon_uwsgi_workers", "Workers of the instance",
                                labels=il)
    busy_n = GaugeMetricFamily("stackmon_uwsgi_busy_workers", "Workers in a request",
                               labels=il)
    sl = ["host", "instance", "socket"]
    queue = GaugeMetricFamily("stackmon_uwsgi_listen_queue",
                              "Connections waiting in the socket's accept queue", labels=sl)
    backlog = GaugeMetricFamily("stackmon_uwsgi_listen_queue_max",
                                "The socket's accept queue limit (listen backlog)", labels=sl)
    for inst in h.uwsgi:
        # A stats-http address is a URL, and a URL may carry a token in its query.
        ib = [host, _label(redact.clean(str(inst.address)))]
        counts = dict.fromkeys(LEVELS, 0)
        age = 0.0
        for w, worker_label in zip(inst.workers, _worker_labels(inst.workers), strict=True):
            lab = [*ib, worker_label]
            busy.add_metric(lab, 1.0 if w.busy else 0.0)
            requests.add_metric(lab, _num(w.requests))
            exceptions.add_metric(lab, _num(w.exceptions))
            respawns.add_metric(lab, _num(w.respawn_count))
            harakiri.add_metric(lab, _num(w.harakiri_count))
            rss.add_metric(lab, _num(w.rss))
            avg_rt.add_metric(lab, _num(w.avg_rt_ms) / 1000.0)
            for r in w.requests_in_flight:
                if r.level in counts:
                    counts[r.level] += 1
                age = max(age, _num(r.running_s or 0.0))
        for level, n in counts.items():
            in_flight.add_metric([*ib, level], float(n))
        oldest.add_metric(ib, age)
        workers.add_metric(ib, float(len(inst.workers)))
        busy_n.add_metric(ib, _num(inst.busy_workers))
        seen_sockets: set[str] = set()
        for sock in inst.sockets:
            name = _label(sock.name)
            if name in seen_sockets:  # a repeated socket name: one series (the first)
                continue
            seen_sockets.add(name)
            queue.add_metric([*ib, name], _num(sock.queue))
            backlog.add_metric([*ib, name], _num(sock.max_queue))
    yield from (busy, requests, exceptions, respawns, harakiri, rss, avg_rt, in_flight, oldest,
                workers, busy_n, queue, backlog)

    # `inode` tells apart sockets sharing an address: with `listen ... reuseport` nginx opens
    # one listening socket per worker on the same address, each with its own accept queue, and
    # without it they would be identical series (invalid exposition). Not summed: one full
    # queue among idle ones is exactly what reuseport imbalance looks like.
    ll = ["host", "listener", "kind", "owner", "inode"]
    lq = GaugeMetricFamily("stackmon_listener_queue",
                           "Kernel accept queue of a monitored listening socket", labels=ll)
    lb = GaugeMetricFamily("stackmon_listener_backlog",
                           "Kernel accept queue limit of a monitored listening socket",
                           labels=ll)
    seen: set[tuple[str, ...]] = set()
    for li in h.listeners:
        lab = [host, _label(li.address), _label(li.kind), _label(li.owner), _label(li.inode)]
        key = tuple(lab)
        if key in seen:  # inode unknown (0) twice, from an older agent: one series only
            continue
        seen.add(key)
        lq.add_metric(lab, _num(li.queue))
        lb.add_metric(lab, _num(li.backlog))
    yield from (lq, lb)

    pl = ["host", "role", "pid"]
    fds = GaugeMetricFamily("stackmon_process_open_fds", "Open file descriptors", labels=pl)
    fd_limit = GaugeMetricFamily("stackmon_process_max_fds",
                                 "Soft limit on open files (0: unknown)", labels=pl)
    seen_procs: set[tuple[str, ...]] = set()
    for p in h.fds.processes:
        lab = [host, _label(p.role), _label(p.pid)]
        if tuple(lab) in seen_procs:  # a pid listed twice (or two out-of-range ones)
            continue
        seen_procs.add(tuple(lab))
        fds.add_metric(lab, _num(p.open))
        fd_limit.add_metric(lab, _num(p.limit))
    yield from (fds, fd_limit)
    if h.fds.system is not None:
        so = GaugeMetricFamily("stackmon_system_open_fds", "File handles allocated system-wide",
                               labels=["host"])
        so.add_metric([host], _num(h.fds.system.open))
        sm = GaugeMetricFamily("stackmon_system_max_fds", "fs.file-max", labels=["host"])
        sm.add_metric([host], _num(h.fds.system.max))
        yield from (so, sm)

    k = h.kernel
    if k.somaxconn is not None:
        g = GaugeMetricFamily("stackmon_kernel_somaxconn", "net.core.somaxconn", labels=["host"])
        g.add_metric([host], _num(k.somaxconn))
        yield g
    for name, value, text in (
        ("stackmon_kernel_listen_overflows", k.listen_overflows,
         "TcpExt ListenOverflows: connections dropped on a full accept queue"),
        ("stackmon_kernel_listen_drops", k.listen_drops, "TcpExt ListenDrops"),
    ):
        if value is not None:
            c = CounterMetricFamily(name, text, labels=["host"])
            c.add_metric([host], _num(value))
            yield c

    nginx = h.nginx
    if nginx is not None:
        conns = GaugeMetricFamily("stackmon_nginx_connections",
                                  "nginx client connections by state",
                                  labels=["host", "state"])
        for state, count in (("active", nginx.active), ("reading", nginx.reading),
                             ("writing", nginx.writing), ("waiting", nginx.waiting)):
            conns.add_metric([host, state], _num(count))
        yield conns
        for name, total, text in (
            ("stackmon_nginx_accepts", nginx.accepts, "Client connections accepted"),
            ("stackmon_nginx_handled", nginx.handled, "Client connections handled"),
            ("stackmon_nginx_dropped", nginx.dropped,
             "Connections accepted but not handled (worker_connections ran out)"),
            ("stackmon_nginx_requests", nginx.requests, "Client requests"),
        ):
            c = CounterMetricFamily(name, text, labels=["host"])
            c.add_metric([host], _num(total))
            yield c


def _log_families(host: str, logs: LogSummary) -> Iterator[Metric]:
    """The logs' window figures (windowed gauges: see the module docstring)."""
    window = GaugeMetricFamily("stackmon_log_window_seconds",
                               "The window the log figures cover", labels=["host"])
    window.add_metric([host], _num(logs.window_s))
    yield window
    errors = GaugeMetricFamily(
        "stackmon_upstream_errors",
        "nginx upstream failures in the last window, by cause and upstream (error-log lines; "
        "a windowed count, not a counter: do not rate())", labels=["host", "cause", "upstream"])
    seen: set[tuple[str, str]] = set()
    for e in logs.upstream_errors:
        key = (_label(e.cause), _label(redact.clean(e.upstream)))
        if key not in seen:  # two upstreams alike once capped: one series (the first)
            seen.add(key)
            errors.add_metric([host, *key], _num(e.count))
    yield errors
    yield from _log_counters(host, logs)
    http = logs.http
    if http is not None:
        yield from _http_families(host, http)
    sources = GaugeMetricFamily("stackmon_log_source_ok",
                                "1 when the log was read this poll, 0 when it could not be",
                                labels=["host", "kind", "path"])
    seen_paths: set[tuple[str, str]] = set()
    for s in logs.sources:
        if s.path is None:  # not a file (syslog, stderr): nothing to read, nothing failed
            continue
        key = (_label(s.kind), _label(s.path))
        if key not in seen_paths:
            seen_paths.add(key)
            sources.add_metric([host, *key], 0.0 if s.error else 1.0)
    yield sources


def _log_counters(host: str, logs: LogSummary) -> Iterator[Metric]:
    """True counters, for rate() and increase(): every line counted since the agent (or the
    stackmon polling it) started following the logs. They restart at 0 with the process, which
    Prometheus handles as a counter reset."""
    failures = CounterMetricFamily(
        "stackmon_upstream_failures", "nginx upstream failures by cause and upstream since "
        "stackmon started following the error log (use rate())",
        labels=["host", "cause", "upstream"])
    seen: set[tuple[str, str]] = set()
    for cause, upstream, count in logs.upstream_totals:
        key = (_label(cause), _label(redact.clean(upstream)))
        if key not in seen:
            seen.add(key)
            failures.add_metric([host, *key], _num(count))
    yield failures
    if logs.status_totals:
        responses = CounterMetricFamily(
            "stackmon_http_responses_by_status", "Access-log responses by status class (2xx.."
            "5xx) and for 499, 502, 503, 504 alone, since stackmon started following the log "
            "(use rate())", labels=["host", "status"])
        for status, count in logs.status_totals:
            responses.add_metric([host, _label(status)], _num(count))
        yield responses


def _http_families(host: str, http: HttpSummary) -> Iterator[Metric]:
    requests = GaugeMetricFamily("stackmon_http_requests",
                                 "Requests in the access log in the last window",
                                 labels=["host"])
    requests.add_metric([host], _num(http.requests))
    per_s = GaugeMetricFamily("stackmon_http_requests_per_second",
                              "Requests per second over the part of the window covered",
                              labels=["host"])
    per_s.add_metric([host], _num(http.per_s))
    classes = GaugeMetricFamily("stackmon_http_responses",
                                "Responses in the last window by status class (they add up "
                                "to stackmon_http_requests; a windowed count)",
                                labels=["host", "status"])
    codes = GaugeMetricFamily("stackmon_http_error_responses",
                              "499, 502, 503 and 504 responses in the last window (each also "
                              "counted in its class; a windowed count)",
                              labels=["host", "status"])
    for status, count in http.status.items():
        family = classes if status.endswith("xx") else codes
        family.add_metric([host, _label(status)], _num(count))
    yield from (requests, per_s, classes, codes)
    if http.upstream_ms is not None:
        q = GaugeMetricFamily("stackmon_http_upstream_response_seconds",
                              "Percentiles of the access log's timing variable over the "
                              "window", labels=["host", "quantile", "variable"])
        variable = _label((http.timing or "unknown").lstrip("$"))
        for quantile, ms in (("0.5", http.upstream_ms.p50), ("0.95", http.upstream_ms.p95),
                             ("0.99", http.upstream_ms.p99)):
            q.add_metric([host, quantile, variable], _num(ms) / 1000.0)
        yield q


def _health_check_families(host: str, check: HealthCheck) -> Iterator[Metric]:
    """The LB's health check as stackmon probes it (no URL label: one check per host, and a
    URL is request data)."""
    def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, text, labels=["host"])
        g.add_metric([host], value)
        return g

    if check.ok is not None:
        yield gauge("stackmon_health_check_ok", "1 when the last health check passed",
                    1.0 if check.ok else 0.0)
    yield gauge("stackmon_health_check_failures_in_row", "Health checks failed in a row",
                _num(check.failures_in_row))
    yield gauge("stackmon_health_check_out_of_service",
                "1 when the load balancer would have taken the host out of service",
                1.0 if check.out_of_service else 0.0)
    if check.last_ms is not None:
        yield gauge("stackmon_health_check_latency_seconds", "Duration of the last health check",
                    _num(check.last_ms) / 1000.0)
    if check.max_ms is not None:
        yield gauge("stackmon_health_check_max_latency_seconds",
                    "The slowest health check in the window", _num(check.max_ms) / 1000.0)


def _severity_families(host: str, h: HostSnapshot) -> Iterator[Metric]:
    """health.assess(): the one verdict, as 0 ok, 1 unknown, 2 warn, 3 critical."""
    state = assess(h)
    sev = GaugeMetricFamily("stackmon_host_severity",
                            "The host's state: 0 ok, 1 unknown, 2 warn, 3 critical",
                            labels=["host"])
    sev.add_metric([host], float(SEVERITY_RANK[state.severity]))
    yield sev
    kinds: dict[str, int] = {}
    for r in state.reasons:
        kinds[r.kind] = max(kinds.get(r.kind, 0), SEVERITY_RANK[r.severity])
    by_kind = GaugeMetricFamily("stackmon_host_reason_severity",
                                "The worst reason of each kind (same scale as "
                                "stackmon_host_severity)", labels=["host", "kind"])
    for kind, rank in kinds.items():
        by_kind.add_metric([host, _label(kind)], float(rank))
    yield by_kind


def _all_families(h: HostSnapshot) -> Iterator[Metric]:
    yield from _families(h)
    host = _label(h.name)
    yield from _severity_families(host, h)
    if h.logs is not None:
        yield from _log_families(host, h.logs)
    if h.health is not None:
        yield from _health_check_families(host, h.health)


class _SnapshotCollector:
    """A prometheus_client collector over one fixed snapshot (no describe(): nothing is
    collected at registration)."""

    def __init__(self, snap: HostSnapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        return _all_families(self.snap)


def render_metrics(snap: HostSnapshot) -> bytes:
    """The exposition text for one host's snapshot (a fresh registry each time: the figures
    are the snapshot's, nothing accumulates in the process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return generate_latest(registry)

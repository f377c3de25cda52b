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
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from stackmon import redact
from stackmon.model import LEVELS, HostSnapshot, Worker

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


class _SnapshotCollector:
    """A prometheus_client collector over one fixed snapshot (no describe(): nothing is
    collected at registration)."""

    def __init__(self, snap: HostSnapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        return _families(self.snap)


def render_metrics(snap: HostSnapshot) -> bytes:
    """The exposition text for one host's snapshot (a fresh registry each time: the figures
    are the snapshot's, nothing accumulates in the process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return generate_latest(registry)

"""The incident report: a recording's period reduced to figures, stuck requests and a timeline.

`analyse(recording, start, end)` reads every poll in the period once (the host objects as
stored: no model objects needed) and returns an `Incident`; report_html / report_md render it.
The figures come from the polls themselves, so anyone can check them against the file with
sqlite3 and zstd (tests/test_report*.py do).

Series per host (one point per poll):
- busy workers / workers (a worker is busy when its status is "busy" or a core is in a request);
- listen queue depth per listener against its backlog (the kernel's figures);
- 5xx by cause: per second, from the monotonic counters the logs keep (`upstream_totals` by
  cause, `status_totals` for 5xx), differenced between polls (a counter that goes down, a
  restart of the reader, counts nothing);
- requests/s (the access log's window, else nginx's counter) and upstream p50/p95/p99;
- file descriptors: the fullest process of each role against its own limit, in percent.

Stuck requests: every request seen running past the `slow` threshold, followed across polls by
(instance, worker, pid, core, started_at). How it ended is read from what happened next: a
harakiri of that worker or pid, a kill by stackmon (audit log) or a worker killed by a signal,
a reload, else "finished" (gone on the next poll), or "still running" at the end of the period.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from stackmon.record.store import ActionRow, EventRow, Recording
from stackmon.redact import clean

CAUSE_ORDER = ("queue_full", "refused", "connect_timeout", "read_timeout", "closed_mid_request",
               "no_live_upstreams", "other")
FIVE_XX = ("502", "503", "504")
ENDED_WINDOW_S = 5.0


@dataclass
class HostSeries:
    """One host's figures over the period, one value per poll (None: not known then)."""

    name: str
    t: list[float] = field(default_factory=list)
    severity: list[str] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    queues: dict[str, list[int | None]] = field(default_factory=dict)
    backlogs: dict[str, int] = field(default_factory=dict)
    errors_per_s: dict[str, list[float]] = field(default_factory=dict)
    status_per_s: dict[str, list[float]] = field(default_factory=dict)
    rps: list[float | None] = field(default_factory=list)
    p50: list[float | None] = field(default_factory=list)
    p95: list[float | None] = field(default_factory=list)
    p99: list[float | None] = field(default_factory=list)
    fds: dict[str, list[float | None]] = field(default_factory=dict)
    errors_total: dict[str, int] = field(default_factory=dict)
    status_total: dict[str, int] = field(default_factory=dict)


@dataclass
class StuckRequest:
    host: str
    instance: str
    worker: int
    pid: int
    core: int
    method: str
    uri: str
    started_at: float | None
    first_seen: float
    last_seen: float
    longest_s: float
    level: str
    ended: str = "finished"
    ended_at: float | None = None


@dataclass
class Incident:
    start: float
    end: float
    polls: int
    hosts: list[HostSeries]
    stuck: list[StuckRequest]
    events: list[EventRow]
    actions: list[ActionRow]
    problems: list[str]
    slow_s: float
    critical_since: dict[str, list[float]]

    def summary(self) -> list[str]:
        """A few sentences for the top of the report."""
        out = [f"{_clock(self.start, True)} to {_clock(self.end, True)} "
               f"({_duration(self.end - self.start)}), {self.polls} polls of "
               f"{len(self.hosts)} host(s)."]
        for h in self.hosts:
            parts = []
            if h.busy:
                i = max(range(len(h.busy)), key=lambda k: h.busy[k])
                parts.append(f"peak busy workers {h.busy[i]}/{h.workers[i]} at {_clock(h.t[i])}")
            for address, series in h.queues.items():
                values = [v for v in series if v is not None]
                if values and max(values) > 0:
                    parts.append(f"queue {address} peak {max(values)}/{h.backlogs[address]}")
            total_5xx = sum(h.status_total.values())
            if total_5xx:
                parts.append("5xx " + ", ".join(f"{k}: {v}" for k, v in
                                                 sorted(h.status_total.items()) if v))
            if h.errors_total:
                parts.append("upstream errors " + ", ".join(
                    f"{k}: {v}" for k, v in h.errors_total.items() if v))
            turns = self.critical_since.get(h.name, [])
            if turns:
                parts.append("critical from " + ", ".join(_clock(t) for t in turns[:5]))
            out.append(f"{h.name}: " + ("; ".join(parts) if parts else "nothing notable") + ".")
        if self.stuck:
            ends: dict[str, int] = defaultdict(int)
            for s in self.stuck:
                ends[s.ended] += 1
            worst = max(self.stuck, key=lambda s: s.longest_s)
            out.append(f"{len(self.stuck)} request(s) ran past {self.slow_s:g} s "
                       f"({', '.join(f'{n} {k}' for k, n in ends.items())}); the longest, "
                       f"{worst.method} {worst.uri} on worker {worst.worker}, ran "
                       f"{_duration(worst.longest_s)}.")
        done = [a for a in self.actions if a.outcome != "started"]  # its outcome follows
        if done:
            out.append(f"{len(done)} action(s) by stackmon: " + ", ".join(
                f"{a.action} {a.outcome} at {_clock(a.at)}" for a in done[:6]) + ".")
        if self.problems:
            out.append(f"The recording is damaged: {len(self.problems)} problem(s); the "
                       "figures cover what could be read.")
        return out


def _clock(at: float, day: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if day else "%H:%M:%S", time.localtime(at))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def busy_workers(doc: dict[str, Any]) -> tuple[int, int]:
    """(busy, total) workers of a host object, as the model counts them."""
    busy = total = 0
    for inst in doc.get("uwsgi") or []:
        for w in inst.get("workers") or []:
            total += 1
            if w.get("status") == "busy" or any(c.get("in_request") for c in w.get("cores")
                                                or []):
                busy += 1
    return busy, total


def _upstream_totals(doc: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for e in doc.get("upstream_totals") or []:
        out[str(e.get("cause") or "other")] += int(e.get("count") or 0)
    return out


def _status_totals(doc: dict[str, Any]) -> dict[str, int]:
    totals = doc.get("status_totals") or {}
    return {k: int(totals.get(k) or 0) for k in FIVE_XX}


def _fds(doc: dict[str, Any]) -> dict[str, float]:
    """The fullest process of each role (uwsgi, nginx) and the system, in percent."""
    out: dict[str, float] = {}
    fds = doc.get("fds") or {}
    for p in fds.get("processes") or []:
        limit = p.get("limit") or 0
        if limit > 0:
            role = str(p.get("role") or "").split("-")[0] or "other"
            out[role] = max(out.get(role, 0.0), 100.0 * (p.get("open") or 0) / limit)
    system = fds.get("system")
    if system and system.get("max"):
        out["system"] = 100.0 * (system.get("open") or 0) / system["max"]
    return out


class _Builder:
    """Accumulates one host's series and its stuck requests, poll by poll."""

    def __init__(self, name: str, slow_s: float) -> None:
        self.series = HostSeries(name)
        self.slow_s = slow_s
        self.prev_up: dict[str, int] | None = None
        self.prev_status: dict[str, int] | None = None
        self.prev_t: float | None = None
        self.open: dict[tuple[Any, ...], StuckRequest] = {}
        self.done: list[StuckRequest] = []
        self.pids: dict[tuple[str, int], int] = {}

    def add(self, t: float, severity: str, doc: dict[str, Any]) -> None:
        s = self.series
        n = len(s.t)
        s.t.append(t)
        s.severity.append(severity)
        busy, total = busy_workers(doc)
        s.busy.append(busy)
        s.workers.append(total)
        for li in doc.get("listeners") or []:
            address = clean(str(li.get("address") or "?"))[:60]
            series = s.queues.setdefault(address, [None] * n)
            series.append(int(li.get("queue") or 0))
            s.backlogs[address] = max(s.backlogs.get(address, 0), int(li.get("backlog") or 0))
        for series in s.queues.values():
            if len(series) < n + 1:
                series.append(None)
        self._counters(t, doc, n)
        http = doc.get("http") or None
        nginx = doc.get("nginx") or None
        rps = http.get("per_s") if http else (nginx.get("requests_per_s") if nginx else None)
        s.rps.append(float(rps) if rps is not None else None)
        upstream = (http or {}).get("upstream_ms") or {}
        s.p50.append(upstream.get("p50"))
        s.p95.append(upstream.get("p95"))
        s.p99.append(upstream.get("p99"))
        for role, pct in _fds(doc).items():
            s.fds.setdefault(role, [None] * n).append(pct)
        for fd_series in s.fds.values():
            if len(fd_series) < n + 1:
                fd_series.append(None)
        if doc.get("reachable") and doc.get("stale_s") is None:
            self._requests(t, doc)

    def _counters(self, t: float, doc: dict[str, Any], n: int) -> None:
        s = self.series
        up, status = _upstream_totals(doc), _status_totals(doc)
        dt = (t - self.prev_t) if self.prev_t is not None else 0.0
        for key, now, prev, rates, totals in (
                *((c, up.get(c, 0), (self.prev_up or {}).get(c), s.errors_per_s,
                   s.errors_total) for c in sorted(set(up) | set(self.prev_up or {}))),
                *((c, status[c], (self.prev_status or {}).get(c), s.status_per_s,
                   s.status_total) for c in FIVE_XX)):
            delta = now - prev if prev is not None and now >= prev else 0
            series = rates.setdefault(key, [0.0] * n)
            series.append(delta / dt if dt > 0 else 0.0)
            totals[key] = totals.get(key, 0) + delta
        for rates in (s.errors_per_s, s.status_per_s):
            for series in rates.values():
                if len(series) < n + 1:
                    series.append(0.0)
        self.prev_up, self.prev_status, self.prev_t = up, status, t

    def _requests(self, t: float, doc: dict[str, Any]) -> None:
        seen = set()
        for inst in doc.get("uwsgi") or []:
            address = str(inst.get("address") or "")
            for w in inst.get("workers") or []:
                self.pids[(address, int(w.get("id") or 0))] = int(w.get("pid") or 0)
                for r in w.get("requests_in_flight") or []:
                    running = r.get("running_s")
                    key = (address, w.get("id"), w.get("pid"), r.get("core"),
                           r.get("started_at"))
                    stuck = self.open.get(key)
                    if stuck is None:
                        if running is None or running < self.slow_s:
                            continue
                        stuck = self.open[key] = StuckRequest(
                            host=self.series.name, instance=clean(address),
                            worker=int(w.get("id") or 0), pid=int(w.get("pid") or 0),
                            core=int(r.get("core") or 0), method=clean(str(r.get("method"))),
                            uri=clean(str(r.get("uri") or ""))[:300],
                            started_at=r.get("started_at"), first_seen=t, last_seen=t,
                            longest_s=float(running), level=str(r.get("level") or "ok"))
                    seen.add(key)
                    stuck.last_seen = t
                    stuck.longest_s = max(stuck.longest_s, float(running or 0.0))
                    if r.get("level") == "critical":
                        stuck.level = "critical"
        for key in [k for k in self.open if k not in seen]:
            stuck = self.open.pop(key)
            stuck.ended_at = t
            self.done.append(stuck)


def _went_ahead(a: ActionRow) -> bool:
    """An audit record saying the action was carried out (not "started", refused, failed)."""
    return not a.outcome.startswith(("started", "refused", "failed"))


def _ending(stuck: StuckRequest, events: list[EventRow], actions: list[ActionRow]) -> str:
    """How a stuck request ended, from what happened around its disappearance."""
    if stuck.ended_at is None:
        return "still running"
    # From a little before it was last seen (a reload's mercy, a kill's 3 s grace) to just
    # after the poll that no longer showed it (log lines get the time they were read).
    lo, hi = stuck.last_seen - ENDED_WINDOW_S, stuck.ended_at + 2.0

    def mine(worker: int | None, pid: int | None) -> bool:
        # The worker's number is enough: the log's pid may be another namespace's.
        return pid == stuck.pid or worker == stuck.worker

    for a in actions:
        if a.host == stuck.host and lo <= a.at <= hi and a.action.startswith("kill") \
                and a.target_pid == stuck.pid and _went_ahead(a):
            return "killed"
    kinds = [e.kind for e in events if e.host == stuck.host and lo <= e.at <= hi
             and (mine(e.worker, e.pid) or e.kind in ("reload", "chain_reload"))]
    if "harakiri" in kinds:
        return "harakiri"
    # A reload kills the workers still busy past their mercy: their deaths are the reload's.
    if "reload" in kinds or "chain_reload" in kinds or any(
            a.host == stuck.host and lo <= a.at <= hi and "reload" in a.action
            and _went_ahead(a) for a in actions):
        return "reload"
    if "killed" in kinds or "worker_died" in kinds or "no_mercy" in kinds:
        return "killed"
    return "finished"


def analyse(recording: Recording, start: float | None = None, end: float | None = None,
            slow_s: float | None = None) -> Incident:
    """Read the period's polls once and reduce them (see the module docstring)."""
    settings = recording.settings
    slow = float(slow_s if slow_s is not None else settings.get("slow") or 10.0)
    refs = recording.polls(start, end)
    builders: dict[str, _Builder] = {}
    turns: dict[str, list[float]] = defaultdict(list)
    last_severity: dict[str, str] = {}
    count = 0
    for ref, doc in recording.iter_docs(refs):
        count += 1
        b = builders.setdefault(ref.host, _Builder(ref.host, slow))
        b.add(ref.taken_at, ref.severity, doc)
        if ref.severity == "critical" and last_severity.get(ref.host) != "critical":
            turns[ref.host].append(ref.taken_at)
        last_severity[ref.host] = ref.severity
    lo = refs[0].taken_at if refs else (start or 0.0)
    hi = refs[-1].taken_at if refs else (end or 0.0)
    events = recording.events(lo - ENDED_WINDOW_S, hi + ENDED_WINDOW_S)
    actions = recording.actions(lo - ENDED_WINDOW_S, hi + ENDED_WINDOW_S)
    stuck: list[StuckRequest] = []
    for b in builders.values():
        stuck += b.done + list(b.open.values())
    for s in stuck:
        s.ended = _ending(s, events, actions)
    stuck.sort(key=lambda s: s.first_seen)
    return Incident(start=lo, end=hi, polls=count, hosts=[b.series for b in builders.values()],
                    stuck=stuck, events=[e for e in events if lo <= e.at <= hi],
                    actions=[a for a in actions if lo <= a.at <= hi],
                    problems=list(recording.problems), slow_s=slow,
                    critical_since=dict(turns))

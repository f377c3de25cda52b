"""The health model: the one place that decides how bad a host is, and why.

Before this module the tab badge warned at 50 % of a listen queue, the gauge at 70 % and the
doctor at 80 %, and fds at 70/90 in one place and 80/95 in another: the same host could be
"ok" in the tab and red in the gauge. Everything that grades a host now asks here: the TUI's
badges, header and gauges, `snapshot`'s exit code, /metrics and the doctor.

A host's state is a severity (ok < unknown < warn < critical) and the reasons behind it, each
with its own severity, a short badge ("CRIT 2", "QUEUE 93%", "502 12/s", "LB OUT") for a tab
and a sentence for a header or a report. Severity of a single gauge (a queue, a process's fds)
comes from the same thresholds through `fill_severity`.

Thresholds and why:
- Listen queue: warn at 70 %, critical at 90 % of the backlog, or above it (a full queue reads
  backlog+1; on a unix socket nginx then gets EAGAIN and answers 502 at once). 70 % leaves the
  seconds a burst takes to fill the rest; 50 % flagged every healthy burst in the demo.
- File descriptors: warn at 80 %, critical at 95 % of the process's own soft limit (accept()
  fails with EMFILE at 100 %: new clients get nothing, existing ones still work).
- 5xx from the access log: any 502/503/504 in the window is a warning (a client saw it); a rate of
  at least 1/s, or 5 % of requests with at least 5 of them, is critical.
- The load balancer's health check: out of service is critical (the LB stops sending traffic);
  one failure, or a probe slower than 80 % of the LB timeout, is a warning; so is a streak that
  took the host out and ended less than 5 minutes ago (the LB puts a host back only after its
  healthy threshold of passing checks: ALB 5 x 30 s, CLB 10 x 30 s).
- Request ages: the request's own level (Thresholds.slow / critical, from the hosts file).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from stackmon.model import HostSnapshot
from stackmon.units import human_age

Severity = Literal["ok", "unknown", "warn", "critical"]
SEVERITY_RANK: dict[Severity, int] = {"ok": 0, "unknown": 1, "warn": 2, "critical": 3}
SEVERITIES: tuple[Severity, ...] = ("ok", "unknown", "warn", "critical")


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The thresholds, as fractions and rates; one instance shared by every consumer."""

    queue_warn: float = 0.70
    queue_critical: float = 0.90
    fd_warn: float = 0.80
    fd_critical: float = 0.95
    errors_critical_per_s: float = 1.0
    errors_critical_share: float = 0.05
    errors_critical_min: int = 5
    probe_slow_share: float = 0.8
    lb_out_recent_s: float = 300.0  # an LB OUT episode is a warning this long after it ended


DEFAULT_POLICY = HealthPolicy()


@dataclass(frozen=True, slots=True)
class Reason:
    """One thing wrong with a host: how bad, what kind, a tab badge and a sentence."""

    severity: Severity
    kind: str  # unreachable, stale, request, queue, fds, http, health, source
    badge: str
    text: str


@dataclass(frozen=True, slots=True)
class HostState:
    """A host's severity and its reasons, worst first. `label` is what a tab shows."""

    severity: Severity
    reasons: tuple[Reason, ...]
    label: str

    @property
    def critical(self) -> bool:
        return self.severity == "critical"


def worst(severities: Iterable[Severity]) -> Severity:
    return max(severities, key=SEVERITY_RANK.__getitem__, default="ok")


def fill_severity(value: int, limit: int, warn: float, critical: float) -> Severity:
    """value/limit against fractional thresholds, exact in integers (9/10 is 90 %)."""
    if limit <= 0:
        return "unknown"
    if value * 100 >= round(critical * 100) * limit:
        return "critical"
    if value * 100 >= round(warn * 100) * limit:
        return "warn"
    return "ok"


def queue_severity(queue: int, backlog: int, policy: HealthPolicy = DEFAULT_POLICY) -> Severity:
    return fill_severity(queue, backlog, policy.queue_warn, policy.queue_critical)


def fd_severity(open_fds: int, limit: int, policy: HealthPolicy = DEFAULT_POLICY) -> Severity:
    return fill_severity(open_fds, limit, policy.fd_warn, policy.fd_critical)


def _percent(value: int, limit: int) -> int:
    return value * 100 // limit


def _request_reasons(host: HostSnapshot) -> Iterator[Reason]:
    # (age, -worker id, at least, what): of equal ages the lowest worker id, as the worker
    # list's worst; "at least": from stale data (the last good sample), as the rows say "≥".
    critical: list[tuple[float, int, str, str]] = []
    slow = 0
    for inst in host.uwsgi:
        at_least = "≥" if inst.stale_s is not None or host.stale_s is not None else ""
        for w in inst.workers:
            for r in w.requests_in_flight:
                if r.level == "critical":
                    critical.append((r.running_s or 0.0, -w.id, at_least,
                                     f"worker {w.id} {r.method} {r.uri}"))
                elif r.level == "slow":
                    slow += 1
    if critical:
        age, _, at_least, what = max(critical)
        # Whole seconds cut down, as the rows show ages: rounded, it read "oldest 30 s" over
        # a row's "CRIT 29s".
        yield Reason("critical", "request", f"CRIT {len(critical)}",
                     f"{len(critical)} request(s) past the critical age; oldest "
                     f"{at_least}{int(age)} s: {what}")
    if slow:
        yield Reason("warn", "request", f"SLOW {slow}", f"{slow} slow request(s)")


def queues(host: HostSnapshot) -> Iterator[tuple[str, int, int]]:
    """Every accept queue of the host as (name, depth, backlog): uWSGI sockets (kernel figures
    merged in by the collector) and the kernel's listeners."""
    for inst in host.uwsgi:
        for s in inst.sockets:
            yield s.name, s.queue, s.max_queue
    for li in host.listeners:
        yield li.address, li.queue, li.backlog


def _queue_reasons(host: HostSnapshot, policy: HealthPolicy) -> Iterator[Reason]:
    worst_q: tuple[int, str, int, int] | None = None
    for name, depth, backlog in queues(host):
        if backlog > 0 and (worst_q is None or _percent(depth, backlog) > worst_q[0]):
            worst_q = (_percent(depth, backlog), name, depth, backlog)
    if worst_q is None:
        return
    pct, name, depth, backlog = worst_q
    sev = queue_severity(depth, backlog, policy)
    if sev in ("warn", "critical"):
        full = " (full: new connections are refused)" if depth > backlog else ""
        yield Reason(sev, "queue", f"QUEUE {pct}%",
                     f"listen queue {name} at {depth}/{backlog}{full}")


def _fd_reasons(host: HostSnapshot, policy: HealthPolicy) -> Iterator[Reason]:
    worst_p: tuple[int, int, int, str] | None = None
    for p in host.fds.processes:
        if p.limit > 0 and (worst_p is None or _percent(p.open, p.limit) > worst_p[0]):
            worst_p = (_percent(p.open, p.limit), p.open, p.limit, f"{p.role} {p.pid}")
    system = host.fds.system
    if system is not None and system.max > 0:
        pct = _percent(system.open, system.max)
        if worst_p is None or pct > worst_p[0]:
            worst_p = (pct, system.open, system.max, "system (file-nr)")
    if worst_p is None:
        return
    pct, used, limit, who = worst_p
    sev = fd_severity(used, limit, policy)
    if sev in ("warn", "critical"):
        yield Reason(sev, "fds", f"FDS {pct}%", f"file descriptors of {who} at {used}/{limit}")


CAUSE_WORDS = {
    "queue_full": "uWSGI listen queue full", "refused": "nothing listening (refused)",
    "connect_timeout": "connect timed out", "read_timeout": "upstream read timed out",
    "closed_mid_request": "worker died mid-request", "no_live_upstreams": "no live upstreams",
    "other": "other upstream errors",
}


def _http_reasons(host: HostSnapshot, policy: HealthPolicy) -> Iterator[Reason]:
    """5xx the clients got (access log), with their main cause (error log) in the sentence."""
    logs = host.logs
    if logs is None or logs.http is None:
        return
    http = logs.http
    bad = {code: http.status.get(code, 0) for code in ("502", "503", "504")}
    total = sum(bad.values())
    if not total:
        return
    code = max(bad, key=lambda c: bad[c])
    span = max(min(http.covered_s, http.window_s), 1.0)
    rate = total / span
    critical = rate >= policy.errors_critical_per_s or (
        total >= policy.errors_critical_min
        and total >= policy.errors_critical_share * max(http.requests, 1))
    rate_text = f"{rate:.1f}/s" if rate >= 0.1 else f"×{total}"
    cause = max(logs.upstream_errors, key=lambda e: e.count, default=None)
    why = f": {CAUSE_WORDS.get(cause.cause, cause.cause)} on {cause.upstream} " \
          f"(×{cause.count})" if cause is not None else ""
    counts = ", ".join(f"{c} ×{n}" for c, n in bad.items() if n)
    yield Reason("critical" if critical else "warn", "http", f"{code} {rate_text}",
                 f"{counts} in {span:.0f} s{why}")


def _probe_reasons(host: HostSnapshot, policy: HealthPolicy) -> Iterator[Reason]:
    check = host.health
    if check is None or check.ok is None:
        return
    ep = check.episode
    if check.ok and ep is not None and ep.out_at is not None and ep.end is not None \
            and host.taken_at - ep.end <= policy.lb_out_recent_s:
        # Passing again, but the LB took the host out and puts it back only after its
        # healthy threshold of passing checks: on-call must still hear of it.
        yield Reason("warn", "health", "LB WAS OUT", ep.sentence())
    if check.out_of_service:
        yield Reason("critical", "health", "LB OUT",
                     f"the load balancer would take this host out: {check.failures_in_row} "
                     f"health checks failed in a row ({check.last_error})")
    elif not check.ok:
        when = f"; out of service in {check.out_in_s:.0f} s" if check.out_in_s else ""
        yield Reason("warn", "health", "HEALTH FAIL",
                     f"health check failed {check.failures_in_row}× in a row "
                     f"({check.last_error}){when}")
    elif check.last_ms is not None and \
            check.last_ms >= policy.probe_slow_share * check.timeout_s * 1000:
        yield Reason("warn", "health", "HEALTH SLOW",
                     f"health check took {check.last_ms:.0f} ms of the LB's "
                     f"{check.timeout_s:g} s timeout")


def _source_reasons(host: HostSnapshot) -> Iterator[Reason]:
    names: list[str] = []
    for e in host.errors:
        name = (e.source.split() or ["?"])[0]
        if name not in names:
            names.append(name)
    if names:
        yield Reason("warn", "source", f"PARTIAL: {', '.join(names)} down",
                     "; ".join(f"{e.source}: {e.message}" for e in host.errors))


def reasons(host: HostSnapshot, policy: HealthPolicy = DEFAULT_POLICY) -> list[Reason]:
    """Every reason, in no particular order (assess sorts them)."""
    if not host.reachable:
        why = host.errors[0].message if host.errors else "no answer"
        return [Reason("critical", "unreachable", f"UNREACHABLE {why}".rstrip(),
                       f"host unreachable: {why}")]
    # What the clients get comes first among reasons of equal severity (the sort is stable):
    # "502 ×37: queue full on app.sock" is the page, a stuck worker is usually why.
    out: list[Reason] = []
    out.extend(_http_reasons(host, policy))
    out.extend(_probe_reasons(host, policy))
    out.extend(_request_reasons(host))
    out.extend(_queue_reasons(host, policy))
    out.extend(_fd_reasons(host, policy))
    out.extend(_source_reasons(host))
    return out


def assess(host: HostSnapshot, policy: HealthPolicy = DEFAULT_POLICY) -> HostState:
    """The host's state: worst reason first; stale data says so and is at least `unknown`."""
    found = sorted(reasons(host, policy), key=lambda r: -SEVERITY_RANK[r.severity])
    severity = found[0].severity if found else "ok"
    label = found[0].badge if found else "ok"
    if host.stale_s is not None:
        stale = f"STALE {human_age(host.stale_s)}"
        if host.reachable:
            label = stale if severity == "ok" else f"{stale} {label}"
        else:
            label = f"{label} (data {human_age(host.stale_s)} old)"
        if SEVERITY_RANK[severity] < SEVERITY_RANK["unknown"]:
            severity = "unknown"
        found.append(Reason("unknown", "stale", stale,
                            f"showing data {host.stale_s:.0f} s old"))
    return HostState(severity=severity, reasons=tuple(found), label=label)

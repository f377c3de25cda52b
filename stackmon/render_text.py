"""The plain-text summary printed by `stackmon snapshot` (without --json).

Written for a person reading a terminal or a runbook paste: the sick things first on each line
(busy workers, requests past the thresholds, queues against their limits), 80 columns wide where
the data allows. Text from the stats document is already redacted and made visible by the
sources; text from configuration (host names, addresses, URLs: a hosts file may name a host
"\x1b]52;..." and write the reader's clipboard) and error messages are not, so every line goes
through redact.visible on its way out: no control character, no lone surrogate (which would
make the write to stdout raise) ever reaches the terminal.
"""

from __future__ import annotations

import time

from stackmon.deadlines import describe, nearest
from stackmon.health import CAUSE_WORDS, assess
from stackmon.model import HostSnapshot, Snapshot, Thresholds, UwsgiInstance, Worker
from stackmon.redact import visible
from stackmon.stuck import group_stuck
from stackmon.units import human_age, human_bytes

__all__ = ["human_age", "human_bytes", "render_host", "render_snapshot"]


def _pct(used: int, limit: int) -> str:
    return f"{100 * used / limit:.0f}%" if limit else "?"


def _worker_lines(w: Worker) -> list[str]:
    pid = str(w.pid) if w.spawned else "-"
    lines = [
        f"  worker {w.id:<3} pid {pid:<7} {w.status:<6} req {w.requests:<7} "
        f"exc {w.exceptions:<3} respawn {max(0, w.respawn_count - 1):<3} "
        f"harakiri {w.harakiri_count:<2} avg {w.avg_rt_ms:.0f}ms "
        # rss 0: uWSGI reports memory only with memory-report on: unknown, not zero
        f"rss {human_bytes(w.rss) if w.rss else '?'}"
        + ("" if w.spawned else "  (no process: waiting for its respawn)")
    ]
    for c in w.cores:
        r = c.request
        if r is None:
            continue
        mark = {"ok": "", "slow": "  SLOW", "critical": "  CRITICAL"}[r.level]
        what = f"{r.method} {r.uri}".strip() or "(request details not captured)"
        soonest = nearest(r.deadlines)
        due = f"  · {describe(soonest)}" if soonest is not None else ""
        lines.append(f"      core {r.core}: {what}  from {r.remote_addr or '?'}  "
                     f"running {human_age(r.running_s)}{mark}{due}")
    return lines


def _cheap_line(cheap: list[Worker]) -> str:
    """The workers cheaper mode has not spawned, as one line: they have no pid, counters or
    requests, so a row each would only push the live workers off the screen."""
    ids = [w.id for w in cheap]
    span = (f"worker {ids[0]}" if len(ids) == 1 else
            f"workers {ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else
            "workers " + ", ".join(map(str, ids)))
    return f"  {len(cheap)} cheap (not spawned): {span}"


def _emperor_lines(u: UwsgiInstance) -> list[str]:
    lines = [f"  uWSGI emperor {u.version or '?'} at {u.address}  pid {u.master_pid}  "
             f"vassals {len(u.vassals)}"]
    for v in u.vassals:
        state = "ready" if v.ready else "not ready"
        where = f"stats {v.stats}" if v.stats else f"stats ? ({v.stats_note or 'not located'})"
        lines.append(f"    vassal {v.name}  pid {v.pid or '-'}  {state}  respawns {v.respawns}  "
                     f"{where}")
    for warning in u.warnings:
        lines.append(f"    note: {warning}")
    return lines


def _instance_lines(u: UwsgiInstance) -> list[str]:
    if u.kind == "emperor":
        return _emperor_lines(u)
    cheap = [w for w in u.workers if w.cheap]
    lines = [
        f"  uWSGI {u.version or '?'} at {u.address}  master {u.master_pid}  "
        f"busy {u.busy_workers}/{len(u.workers)}" + (f" ({len(cheap)} cheap)" if cheap else "")
        + f"  listen queue {u.listen_queue}/{u.listen_queue_max}"
    ]
    if u.stale_s is not None:
        lines[0] += f"  STALE {u.stale_s:.0f}s (stats not answering; last good data)"
    for s in u.sockets:
        lines.append(f"    socket {s.name}  queue {s.queue}/{s.max_queue} ({s.source})")
    for w in u.workers:
        if not w.cheap:
            lines.extend(_worker_lines(w))
    if cheap:
        lines.append(_cheap_line(cheap))
    for warning in u.warnings:
        lines.append(f"    note: {warning}")
    return lines


def _clients_lines(h: HostSnapshot) -> list[str]:
    """What the clients got (access and error logs) and what the LB sees (its health check)."""
    lines: list[str] = []
    logs = h.logs
    if logs is not None and logs.http is not None:
        http = logs.http
        st = http.status
        codes = "  ".join(f"{k} {st.get(k, 0)}" for k in ("2xx", "3xx", "4xx", "5xx")) + \
            "  (" + "  ".join(f"{k} {st.get(k, 0)}" for k in ("499", "502", "503", "504")) + ")"
        lines.append(f"  http last {http.window_s:.0f}s: {http.requests} requests, "
                     f"{http.per_s:.1f}/s  {codes}")
        if http.upstream_ms is not None:
            p = http.upstream_ms
            lines.append(f"    {http.timing or 'upstream'} p50 {p.p50:.0f}ms  p95 {p.p95:.0f}ms  "
                         f"p99 {p.p99:.0f}ms")
        elif http.advice:
            lines.append(f"    no timing: {http.advice}")
        for e in http.top_5xx[:3]:
            lines.append(f"    5xx on {e.endpoint}: {e.errors_5xx} of {e.requests}")
    if logs is not None:
        for u in logs.upstream_errors:
            words = CAUSE_WORDS.get(u.cause, u.cause)
            lines.append(f"  upstream {u.cause} ({words}) on {u.upstream}: {u.count} in window, "
                         f"last {time.strftime('%H:%M:%S', time.localtime(u.last_at))}")
        for ev in logs.events[:5]:
            when = time.strftime("%H:%M:%S", time.localtime(ev.at))
            lines.append(f"  event {when} {ev.source} {ev.kind}: {ev.text}")
        for src in logs.sources:
            if src.error:
                lines.append(f"  log {src.kind} {src.path or ''}: {src.error}".replace("  :", ":"))
    c = h.health
    if c is not None:
        if c.ok is None:
            lines.append(f"  health {c.url}: first probe running")
        else:
            verdict = "OUT OF SERVICE (the LB would take this host out)" if c.out_of_service \
                else ("ok" if c.ok else f"FAILING: {c.last_error}")
            ms = f"{c.last_ms:.0f}ms (worst {c.max_ms:.0f}ms)" if c.last_ms is not None else "?"
            lines.append(f"  health {c.url}: {verdict}  {ms}  failures in a row "
                         f"{c.failures_in_row}")
    return lines


def render_host(h: HostSnapshot) -> list[str]:
    """The host's lines, not yet made visible (render_snapshot does that for every line)."""
    state = assess(h)
    head = f"== {h.name}  [{state.severity}: {state.label}]"
    if h.group:
        head += f"  group {h.group}"
    lines = [head]
    lines.extend(f"  ! {r.text}" for r in state.reasons if r.severity in ("warn", "critical"))
    lines.extend(f"  stuck together: {g.text()}" for g in group_stuck(h, min_count=2))
    for e in h.errors:
        lines.append(f"  error: {e.source}: {e.message}")
    for u in h.uwsgi:
        lines.extend(_instance_lines(u))
    n = h.nginx
    if n is not None:
        rate = f"{n.requests_per_s:.1f} req/s" if n.requests_per_s is not None else "req/s ?"
        lines.append(f"  nginx {n.url}: active {n.active}  reading {n.reading}  "
                     f"writing {n.writing}  waiting {n.waiting}  dropped {n.dropped}  {rate}")
    for li in h.listeners:
        lines.append(f"  listen {li.kind:<4} {li.address}  queue {li.queue}/{li.backlog}  "
                     f"({li.owner or 'other'})")
    if h.fds.system is not None:
        sysfd = h.fds.system
        lines.append(f"  fds system {sysfd.open}/{sysfd.max} ({_pct(sysfd.open, sysfd.max)})")
    for p in h.fds.processes:
        limit = str(p.limit) if p.limit else "unlimited"
        lines.append(f"  fds {p.role:<12} pid {p.pid:<7} {p.open}/{limit} "
                     f"({_pct(p.open, p.limit)})")
    k = h.kernel
    if k.somaxconn is not None:
        lines.append(f"  kernel somaxconn {k.somaxconn}  ListenOverflows {k.listen_overflows}  "
                     f"ListenDrops {k.listen_drops}")
    lines.extend(_clients_lines(h))
    return lines


def render_snapshot(snap: Snapshot, thresholds: Thresholds) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.taken_at))
    out = [f"stackmon snapshot {when}  (slow >= {thresholds.slow:g}s, "
           f"critical >= {thresholds.critical:g}s)"]
    for h in snap.hosts:
        out.extend(render_host(h))
    return "\n".join(map(visible, out)) + "\n"

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

import math
import time

from stackmon.model import HostSnapshot, Snapshot, Thresholds, UwsgiInstance, Worker
from stackmon.redact import visible


def human_bytes(n: int) -> str:
    if not 0 <= n < 2**63:  # not a size (a foreign agent's document): say so, do not crash
        return "?"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


def human_age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _pct(used: int, limit: int) -> str:
    return f"{100 * used / limit:.0f}%" if limit else "?"


def _worker_lines(w: Worker) -> list[str]:
    lines = [
        f"  worker {w.id:<3} pid {w.pid:<7} {w.status:<6} req {w.requests:<7} "
        f"exc {w.exceptions:<3} respawn {w.respawn_count:<3} harakiri {w.harakiri_count:<2} "
        f"avg {w.avg_rt_ms:.0f}ms rss {human_bytes(w.rss)}"
    ]
    for c in w.cores:
        r = c.request
        if r is None:
            continue
        mark = {"ok": "", "slow": "  SLOW", "critical": "  CRITICAL"}[r.level]
        what = f"{r.method} {r.uri}".strip() or "(request details not captured)"
        lines.append(f"      core {r.core}: {what}  from {r.remote_addr or '?'}  "
                     f"running {human_age(r.running_s)}{mark}")
    return lines


def _instance_lines(u: UwsgiInstance) -> list[str]:
    lines = [
        f"  uWSGI {u.version or '?'} at {u.address}  master {u.master_pid}  "
        f"busy {u.busy_workers}/{len(u.workers)}  "
        f"listen queue {u.listen_queue}/{u.listen_queue_max}"
    ]
    for s in u.sockets:
        lines.append(f"    socket {s.name}  queue {s.queue}/{s.max_queue} ({s.source})")
    for w in u.workers:
        lines.extend(_worker_lines(w))
    for warning in u.warnings:
        lines.append(f"    note: {warning}")
    return lines


def render_host(h: HostSnapshot) -> list[str]:
    """The host's lines, not yet made visible (render_snapshot does that for every line)."""
    state = "ok" if h.reachable and not h.errors else ("partial" if h.reachable else
                                                       "UNREACHABLE")
    head = f"== {h.name}  [{state}]"
    if h.stale_s is not None:
        head += f"  data {human_age(h.stale_s)} old"
    lines = [head]
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
    return lines


def render_snapshot(snap: Snapshot, thresholds: Thresholds) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.taken_at))
    out = [f"stackmon snapshot {when}  (slow >= {thresholds.slow:g}s, "
           f"critical >= {thresholds.critical:g}s)"]
    for h in snap.hosts:
        out.extend(render_host(h))
    return "\n".join(map(visible, out)) + "\n"

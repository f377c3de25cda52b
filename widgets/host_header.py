"""HostHeader and host_state(): one line that says whether a host needs you, and why.

`host_state()` is the single definition of "how bad is this host" (the header badge, and the
app's tab badges use it too), in the order an on-call engineer cares: a host we cannot see, a
request stuck past the critical threshold, a listen queue about to refuse connections, then
slow requests, a filling queue, and sources that failed. Stale data is always said (STALE 12s),
in front of whatever the old data shows, because old numbers read as current are worse than
no numbers.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.widget import Widget

from stackmon.model import HostSnapshot
from stackmon.render_text import human_age
from widgets._fmt import SEVERITY_RANK, Severity, fmt_rate, plain
from widgets._styles import StyleMemo

QUEUE_WARN_PCT = 50
QUEUE_CRITICAL_PCT = 90


def worst_queue_percent(host: HostSnapshot) -> int | None:
    """The fullest accept queue of the host against its backlog (uWSGI sockets, each
    instance's listen queue, kernel listeners), whole percent; None when no backlog is known."""
    pairs: list[tuple[int, int]] = []
    for u in host.uwsgi:
        pairs.append((u.listen_queue, u.listen_queue_max))
        pairs.extend((s.queue, s.max_queue) for s in u.sockets)
    pairs.extend((li.queue, li.backlog) for li in host.listeners)
    known = [queue * 100 // limit for queue, limit in pairs if limit > 0]
    return max(known) if known else None


def _error_sources(host: HostSnapshot) -> str:
    # SourceError.source is e.g. "nginx http://127.0.0.1/nginx_status": its first word names it.
    names: list[str] = []
    for e in host.errors:
        name = (e.source.split() or ["?"])[0]
        if name not in names:
            names.append(name)
    return ", ".join(names)


def host_state(host: HostSnapshot) -> tuple[str, Severity]:
    """(badge label, severity) of a host; severity is one of ok, warn, critical, unknown.

    Worst wins: unreachable (critical); a critical request ("CRIT n"); a listen queue >= 90% of
    its backlog ("QUEUE 93%", critical); slow requests ("SLOW n", warn); a queue >= 50% (warn);
    failed sources ("PARTIAL: nginx down", warn); else "ok". Stale data prefixes "STALE 12s"
    and is at least "unknown". The label may quote an error message: show it as plain text.
    """
    if not host.reachable:
        reason = plain(host.errors[0].message) if host.errors else ""
        label = f"UNREACHABLE {reason}".rstrip()
        if host.stale_s is not None:
            label += f" (data {human_age(host.stale_s)} old)"
        return label, "critical"

    n_critical = n_slow = 0
    for u in host.uwsgi:
        for w in u.workers:
            for r in w.requests_in_flight:
                if r.level == "critical":
                    n_critical += 1
                elif r.level == "slow":
                    n_slow += 1
    queue = worst_queue_percent(host)

    candidates: list[tuple[str, Severity]] = []
    if n_critical:
        candidates.append((f"CRIT {n_critical}", "critical"))
    if queue is not None and queue >= QUEUE_CRITICAL_PCT:
        candidates.append((f"QUEUE {queue}%", "critical"))
    if n_slow:
        candidates.append((f"SLOW {n_slow}", "warn"))
    if queue is not None and QUEUE_WARN_PCT <= queue < QUEUE_CRITICAL_PCT:
        candidates.append((f"QUEUE {queue}%", "warn"))
    if host.errors:
        candidates.append((f"PARTIAL: {plain(_error_sources(host))} down", "warn"))

    severity: Severity
    label, severity = "ok", "ok"
    for cand_label, cand_severity in candidates:
        if SEVERITY_RANK[cand_severity] > SEVERITY_RANK[severity]:
            label, severity = cand_label, cand_severity

    if host.stale_s is not None:
        stale = f"STALE {human_age(host.stale_s)}"
        label = stale if severity == "ok" else f"{stale} {label}"
        if SEVERITY_RANK[severity] < SEVERITY_RANK["unknown"]:
            severity = "unknown"
    return label, severity


class HostHeader(StyleMemo, Widget):
    """`web-1  CRIT 2  uWSGI 2.0.28  master 4242  busy 5/8  req/s 12.3` on one line.

    The widget carries the CSS class `-ok`, `-warn`, `-critical` or `-unknown` for its state.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "host-header--name",
        "host-header--label",
        "host-header--ok",
        "host-header--warn",
        "host-header--critical",
        "host-header--unknown",
    }
    """
    | Class | What |
    | :- | :- |
    | `host-header--name` | the host name |
    | `host-header--label` | field names |
    | `host-header--ok` / `--warn` / `--critical` / `--unknown` | the state badge |
    """

    DEFAULT_CSS = """
    HostHeader {
        height: 1;
        width: 1fr;
        background: $panel;
        & > .host-header--name { text-style: bold; }
        & > .host-header--label { color: $text-muted; }
        & > .host-header--ok { color: $text-success; text-style: bold; }
        & > .host-header--warn { color: $warning; text-style: bold reverse; }
        & > .host-header--critical { color: $error; text-style: bold reverse; }
        & > .host-header--unknown { color: $text-muted; text-style: bold reverse; }
    }
    """

    def __init__(
        self,
        host: HostSnapshot | None = None,
        rps: float | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._fields: tuple[str, ...] = ()
        self._severity: Severity = "unknown"
        self.add_class("-unknown")
        if host is not None:
            self.set_snapshot(host, rps)

    @property
    def severity(self) -> Severity:
        return self._severity

    def set_snapshot(self, host: HostSnapshot, rps: float | None) -> None:
        """Show this poll of the host; `rps`: requests per second (nginx's, or None)."""
        label, severity = host_state(host)
        versions = sorted({u.version or "?" for u in host.uwsgi})
        masters = [str(u.master_pid) for u in host.uwsgi]
        busy = sum(u.busy_workers for u in host.uwsgi)
        total = sum(len(u.workers) for u in host.uwsgi)
        fields = (
            plain(host.name),
            label,
            severity,
            ",".join(plain(v) for v in versions) if versions else "-",
            ",".join(masters) if masters else "-",
            f"{busy}/{total}" if host.uwsgi else "-",
            fmt_rate(rps),
        )
        if fields == self._fields:
            return
        self._fields = fields
        if severity != self._severity:
            self.remove_class(f"-{self._severity}")
            self.add_class(f"-{severity}")
            self._severity = severity
        self.refresh()

    def render(self) -> Text:
        text = Text(no_wrap=True, end="")
        if not self._fields:
            return text
        name, label, severity, version, master, busy, rps = self._fields
        style = self.get_component_rich_style
        field = style("host-header--label", partial=True)
        text.append(name, style("host-header--name", partial=True))
        text.append("  ")
        text.append(f" {label} ", style(f"host-header--{severity}", partial=True))
        for caption, value in (("uWSGI", version), ("master", master), ("busy", busy),
                               ("req/s", rps)):
            text.append(f"  {caption} ", field)
            text.append(value)
        text.truncate(self.content_region.width, overflow="ellipsis")
        return text

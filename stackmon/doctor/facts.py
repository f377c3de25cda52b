"""What the doctor knows, gathered once, frozen: the input of every rule and of nothing else.

Rules are pure functions of these objects (rules.py), so each can be tested by building a Facts
by hand; gathering them (files, /proc, a live poll) is gather.py's business. Everything a
finding cites carries its origin: an Option or Directive knows its file and line, a live value
knows the host and the /proc file or stats address it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from stackmon.doctor.nginx_conf import NginxConf
from stackmon.model import HostSnapshot, UwsgiInstance
from stackmon.uwsgi_ini import Option

Severity = Literal["info", "warn", "critical"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warn", "info")


@dataclass(frozen=True)
class LbSettings:
    """The load balancer in front (AWS ELB/ALB defaults, docs/reference.md §7)."""

    idle_timeout: float = 60.0
    health_timeout: float = 5.0
    health_interval: float = 30.0
    unhealthy_threshold: int = 2

    @property
    def health_window(self) -> float:
        """How long a host may fail health checks before the LB takes it out of service:
        `unhealthy_threshold` checks, `health_interval` apart (2 x 30 s = 60 s by default)."""
        return self.health_interval * self.unhealthy_threshold


@dataclass(frozen=True)
class SystemFacts:
    """Host-wide kernel settings and counters (this machine, this network namespace).

    listen_overflows is (first, second) cumulative TcpExt ListenOverflows read `interval`
    seconds apart (second None when only one sample was taken)."""

    somaxconn: int | None = None
    file_nr: int | None = None  # allocated file handles
    file_max: int | None = None
    nr_open: int | None = None
    listen_overflows: tuple[int | None, int | None] = (None, None)
    overflow_interval: float = 0.0
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class UwsgiFacts:
    """One uWSGI configuration: an ini file given by the user, or a running instance's options
    found from its command line (then master_pid, stats address and the live instance)."""

    name: str
    options: tuple[Option, ...]
    master_pid: int | None = None
    stats_address: str | None = None
    live: UwsgiInstance | None = None


@dataclass(frozen=True)
class NginxFacts:
    """One nginx configuration, with the running master it belongs to when known."""

    conf: NginxConf
    master_pid: int | None = None
    discovered: bool = False  # found from the master's command line, not given


@dataclass(frozen=True)
class LiveFacts:
    """Two polls of one monitored host, `interval` seconds apart (second may be None)."""

    first: HostSnapshot
    second: HostSnapshot | None = None
    interval: float = 0.0

    @property
    def latest(self) -> HostSnapshot:
        return self.second if self.second is not None else self.first


@dataclass(frozen=True)
class HostFacts:
    """Everything known about one host (the local machine when only files were given)."""

    name: str
    uwsgi: tuple[UwsgiFacts, ...] = ()
    nginx: tuple[NginxFacts, ...] = ()
    live: LiveFacts | None = None
    # (upstream, time) of each full-queue 502 in nginx's error log over the logs' window: the
    # log summary keeps a count per upstream, and telling overflows during a reload from the
    # others needs each one's time.
    queue_full_at: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Facts:
    system: SystemFacts
    lb: LbSettings
    hosts: tuple[HostFacts, ...] = ()


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Evidence:
    """Where a finding comes from: a file and line ("<default>" with line 0 for a default,
    "/proc/..." or a host's live source) and the values seen there."""

    file: str
    line: int
    values: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "values": dict(self.values)}


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    title: str
    evidence: tuple[Evidence, ...]
    why: str
    fix: str
    host: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "severity": self.severity, "title": self.title,
                               "evidence": [e.to_dict() for e in self.evidence],
                               "why": self.why, "fix": self.fix}
        if self.host is not None:
            out["host"] = self.host
        return out


@dataclass(frozen=True)
class Input:
    """One thing the doctor read (or tried to): shown so a clean report says what it covered."""

    kind: str  # "uwsgi-ini", "uwsgi-instance", "nginx-conf", "kernel", "live", "log", "logs"
    source: str
    host: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "source": self.source}
        if self.host is not None:
            out["host"] = self.host
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    inputs: tuple[Input, ...] = ()

    @property
    def problems(self) -> bool:
        return any(f.severity in ("warn", "critical") for f in self.findings)

    @property
    def errors(self) -> tuple[Input, ...]:
        return tuple(i for i in self.inputs if i.error is not None)

    def by_severity(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1, "findings": [f.to_dict() for f in self.findings],
                "inputs": [i.to_dict() for i in self.inputs]}

"""One host's logs followed together and reduced to a `LogSummary` each poll.

`HostLogs(specs)` owns a LogTail and a reducer per log; `poll()` reads what is new in every
log (plain file reads: run it in a thread from an event loop) and returns an immutable
LogSummary of the last `window_s` seconds: the access log's figures (`http`), upstream failures
by cause and upstream (`upstream_errors`), uWSGI events and stackmon's own actions (`events`,
newest first) and one `SourceStatus` per log (its error, skipped bytes, cut lines, notes), so a
log that cannot be read is an entry of its own while the others still count.

Several access logs (one per nginx server) feed one window, each with its own format.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stackmon.logs.access import STATUS_KEYS, AccessWindow, HttpSummary
from stackmon.logs.nginx_errors import ErrorWindow, UpstreamError
from stackmon.logs.nginx_errors import line_time as error_line_time
from stackmon.logs.nginx_format import COMBINED, LogFormat
from stackmon.logs.tail import DEFAULT_MAX_LINE, DEFAULT_POLL_BUDGET, LogTail, TailRead
from stackmon.logs.uwsgi_events import Event, EventLog
from stackmon.logs.uwsgi_events import line_time as uwsgi_line_time

if TYPE_CHECKING:  # the model imports this module; discovery imports the model
    from stackmon.logs.discover import LogTarget

__all__ = ["HostLogs", "LogSpec", "LogSummary", "SourceStatus"]

KINDS = ("nginx_access", "nginx_error", "uwsgi")


@dataclass(frozen=True)
class LogSpec:
    """A log to follow. `path` None with `not_file` set is a log that exists only as a
    reason ("not a file: syslog:server=..."). `label` names a uWSGI instance in events."""

    kind: str
    path: str | None
    log_format: LogFormat | None = None
    not_file: str | None = None
    where: str = ""
    label: str | None = None

    @classmethod
    def from_target(cls, target: LogTarget, label: str | None = None) -> LogSpec:
        return cls(kind=target.kind, path=target.path, log_format=target.log_format,
                   not_file=target.message, where=target.where, label=label)


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """How one log is doing. `error` set: nothing was read from it this poll (missing,
    unreadable, not a file); `notes` are recent events of the file (rotations, skips)."""

    kind: str
    path: str | None
    label: str | None
    error: str | None
    lines: int
    skipped_bytes: int
    cut_lines: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class LogSummary:
    """A host's log figures over the last `window_s` seconds, built every poll."""

    taken_at: float
    window_s: float
    http: HttpSummary | None
    upstream_errors: tuple[UpstreamError, ...]
    events: tuple[Event, ...]
    sources: tuple[SourceStatus, ...] = field(default=())
    # Monotonic counts since stackmon started following the logs (what Prometheus counters
    # need): responses by STATUS_KEYS, upstream failures by (cause, upstream).
    status_totals: tuple[tuple[str, int], ...] = ()
    upstream_totals: tuple[tuple[str, str, int], ...] = ()

    def errors(self) -> list[tuple[str, str]]:
        """(source, message) of every log that could not be read: for a host's `errors`."""
        return [(f"{s.kind} log", f"{s.path or ''}: {s.error}".lstrip(": "))
                for s in self.sources if s.error]

    def as_json(self) -> dict[str, Any]:
        """The snapshot JSON keys (docs/contracts.md) `http`, `upstream_errors`, `events`, plus
        `log_sources`."""
        http = self.http
        return {
            "http": None if http is None else {
                "window_s": http.window_s, "source": http.source, "requests": http.requests,
                "per_s": round(http.per_s, 3), "status": dict(http.status),
                "upstream_ms": None if http.upstream_ms is None else {
                    "p50": http.upstream_ms.p50, "p95": http.upstream_ms.p95,
                    "p99": http.upstream_ms.p99},
                "timing": http.timing, "log_format": http.log_format,
                "missing": list(http.missing), "advice": http.advice,
                "unparsed": http.unparsed,
                "top_5xx": [_endpoint(e) for e in http.top_5xx],
                "top_slow": [_endpoint(e) for e in http.top_slow],
            },
            "upstream_errors": [
                {"cause": e.cause, "upstream": e.upstream, "count": e.count,
                 "first_at": e.first_at, "last_at": e.last_at, "sample": e.sample}
                for e in self.upstream_errors],
            "events": [
                {"at": e.at, "source": e.source, "kind": e.kind, "worker": e.worker,
                 "pid": e.pid, "uri": e.uri, "text": e.text} for e in self.events],
            "status_totals": dict(self.status_totals),
            "upstream_totals": [{"cause": c, "upstream": u, "count": n}
                                for c, u, n in self.upstream_totals],
            "log_sources": [
                {"kind": s.kind, "path": s.path, "label": s.label, "error": s.error,
                 "skipped_bytes": s.skipped_bytes, "cut_lines": s.cut_lines,
                 "notes": list(s.notes)} for s in self.sources],
        }


def _endpoint(e: Any) -> dict[str, Any]:
    return {"endpoint": e.endpoint, "requests": e.requests, "5xx": e.errors_5xx,
            "mean_ms": round(e.mean_ms, 3), "max_ms": round(e.max_ms, 3)}


class _Source:
    """One followed log: its spec, its tail and what recently happened to it."""

    def __init__(self, spec: LogSpec, tail: LogTail | None) -> None:
        self.spec = spec
        self.tail = tail
        self.last: TailRead | None = None
        self.recent: deque[tuple[float, int, int, tuple[str, ...]]] = deque(maxlen=256)


class HostLogs:
    """Follows a host's logs; `poll()` once per interval gives a LogSummary."""

    def __init__(
        self,
        specs: Sequence[LogSpec],
        *,
        window_s: float = 60.0,
        max_events: int = 50,
        max_line: int = DEFAULT_MAX_LINE,
        poll_budget: int = DEFAULT_POLL_BUDGET,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = float(window_s)
        self.max_events = max_events
        self._clock = clock
        now = clock()
        since = now - self.window_s
        self._access = AccessWindow(COMBINED, window_s=window_s, started_at=now)
        self._errors = ErrorWindow(window_s=window_s)
        self._events = EventLog(window_s=window_s)
        self._sources: list[_Source] = []
        self._has_access = False
        for spec in specs:
            if spec.kind not in KINDS:
                raise ValueError(f"unknown log kind {spec.kind!r}")
            tail = None
            if spec.path is not None:
                tail = LogTail(spec.path, max_line=max_line, poll_budget=poll_budget,
                               since=since, line_time=_line_time(spec),
                               backfill_limit=poll_budget if spec.kind != "uwsgi"
                               else min(poll_budget, 1024 * 1024))
            self._has_access = self._has_access or spec.kind == "nginx_access"
            self._sources.append(_Source(spec, tail))
        paths = [s.spec.path for s in self._sources
                 if s.spec.kind == "nginx_access" and s.spec.path]
        self._access.source = ", ".join(paths)
        formats = [s.spec.log_format for s in self._sources
                   if s.spec.kind == "nginx_access" and s.spec.path]
        self._access.format = formats[0] if formats and formats[0] else COMBINED

    @property
    def paths(self) -> list[str | None]:
        """The followed paths, in spec order (None for a log that is not a file)."""
        return [s.spec.path for s in self._sources]

    def record(self, event: Event) -> None:
        """An event stackmon itself caused (a kill, a reload): source "stackmon"."""
        self._events.record(event)

    def poll(self) -> LogSummary:
        now = self._clock()
        for source in self._sources:
            self._poll_one(source, now)
        http = self._access.summary(now) if self._has_access else None
        return LogSummary(
            taken_at=now, window_s=self.window_s, http=http,
            upstream_errors=self._errors.summary(now),
            events=self._events.summary(now, self.max_events),
            sources=tuple(self._status(s, now) for s in self._sources),
            status_totals=tuple(zip(STATUS_KEYS, self._access.totals, strict=True))
            if self._has_access else (),
            upstream_totals=tuple((c, u, n) for (c, u), n in self._errors.totals.items()))

    def close(self) -> None:
        for source in self._sources:
            if source.tail is not None:
                source.tail.close()

    def __enter__(self) -> HostLogs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _poll_one(self, source: _Source, now: float) -> None:
        if source.tail is None:
            return
        read = source.tail.poll()
        source.last = read
        if read.skipped_bytes or read.cut_lines or read.notes:
            source.recent.append((now, read.skipped_bytes, read.cut_lines, read.notes))
        if not read.lines:
            return
        spec = source.spec
        if spec.kind == "nginx_access":
            self._access.add_lines(read.lines, now, backfill=read.backfill,
                                   log_format=spec.log_format or COMBINED)
        elif spec.kind == "nginx_error":
            self._errors.add_lines(read.lines, now)
        else:
            self._events.add_uwsgi_lines(read.lines, now, backfill=read.backfill,
                                         instance=spec.label)

    def _status(self, source: _Source, now: float) -> SourceStatus:
        spec = source.spec
        floor = now - self.window_s
        recent = [r for r in source.recent if r[0] >= floor]
        error = spec.not_file if spec.path is None else (
            source.last.error if source.last is not None else None)
        notes: list[str] = []
        for r in recent:
            notes.extend(n for n in r[3] if n not in notes)
        return SourceStatus(
            kind=spec.kind, path=spec.path, label=spec.label, error=error,
            lines=len(source.last.lines) if source.last is not None else 0,
            skipped_bytes=sum(r[1] for r in recent), cut_lines=sum(r[2] for r in recent),
            notes=tuple(notes[-5:]))


def _line_time(spec: LogSpec) -> Callable[[str], float | None]:
    """How the backward scan of the first poll reads a line's time, per kind of log."""
    if spec.kind == "nginx_access":
        fmt = spec.log_format or COMBINED

        def access_time(line: str) -> float | None:
            rec = fmt.parse(line)
            return rec.at if rec is not None else None
        return access_time
    if spec.kind == "nginx_error":
        return error_line_time
    return uwsgi_line_time

"""uWSGI log lines turned into events: harakiri, worker deaths and respawns, NO MERCY, reloads,
chain reload steps and full TCP listen queues (texts from uWSGI 2.0's core/master*.c,
docs/reference.md §5).

- harakiri: `*** HARAKIRI ON WORKER N (pid: P, try: T[, graceful: ...]) ***`, then `HARAKIRI
  [core C] IP - METHOD URI since EPOCH` and/or `HARAKIRI: --- uWSGI worker N [core C] (pid: P)
  WAS managing request URI since DATE ---` (these complete the event with its URI);
- worker_died: `DAMN ! worker N (pid: P) died[, killed by signal S] :( trying respawn ...`
  (also `MISTERIOUSLY killed by signal S`);
- respawn: `Respawned uWSGI worker N (new pid: P)`;
- usr2: `SIGUSR2: --- uWSGI worker N (pid: P) is managing request URI since DATE ---` (what a
  worker writes after its C backtrace when sent SIGUSR2: the kill's "SIGUSR2 first");
- no_mercy: `worker N (pid: P) is taking too much time to die...NO MERCY !!!`;
- reload: `...gracefully killing workers...` (start), `...brutally killing workers...`,
  `gracefully (RE)spawned uWSGI master process (pid: P)` (end);
- chain_reload: `chain reload starting...`, `chain next victim is worker N`, `chain reloading
  complete`;
- queue_full: `*** uWSGI listen queue of socket "NAME" (fd: N) full !!! (Q/MAX) ***` (TCP
  sockets only: uWSGI cannot see a unix socket's queue; nginx's queue_full covers those).

Timestamps: most of these lines carry none. An event gets, in order: the time in the line
itself (the `Fri Nov 27 06:19:02 2026 - ` prefix of uWSGI's verbose lines such as harakiri's,
or of every line with `log-date`), else the time it was read. Lines that were already in the
log when stackmon started (backfill) get the time of the latest timestamped line before them
(request-log lines carry `[Tue May  7 10:00:00 2024]`; uWSGI writes local time), and are
dropped when there is none: an event at an unknown time must not show as "now".
Event texts are the line itself, redacted (a URI can carry a token), at most 300 characters.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from stackmon.redact import clean

__all__ = ["Event", "EventLog", "line_time", "parse_uwsgi_line"]

MAX_EVENTS = 200
_TEXT_LEN = 300

_HARAKIRI = re.compile(r"\*\*\* HARAKIRI ON WORKER (\d+) \(pid: (\d+)")
_HARAKIRI_CORE = re.compile(r"HARAKIRI \[core \d+\] \S* - (\S+) (.*) since (\d+)\s*$")
_HARAKIRI_WAS = re.compile(r"HARAKIRI: --- uWSGI worker (\d+)(?: core \d+)? \(pid: (\d+)\) WAS "
                           r"managing request (.*) since ")
_DIED = re.compile(r"DAMN ! worker (\d+) \(pid: (\d+)\) (?:died|MISTERIOUSLY)"
                   r"(?:.*?killed by signal (\d+))?")
# What a worker writes on SIGUSR2 (seen, 2.0.31): a C backtrace, then this line.
_USR2 = re.compile(r"SIGUSR2: --- uWSGI worker (\d+)(?: core \d+)? \(pid: (\d+)\) is managing "
                   r"request (.*?) since .* ---")
_RESPAWN = re.compile(r"Respawned uWSGI worker (\d+) \(new pid: (\d+)\)")
_NO_MERCY = re.compile(r"worker (\d+) \(pid: (\d+)\) is taking too much time to die\.\.\.NO MERCY")
_QUEUE = re.compile(r'listen queue of socket "([^"]*)" \(fd: \d+\) full !!! \((\d+)/(\d+)\)')
_CHAIN_VICTIM = re.compile(r"chain next victim is worker (\d+)")
_RESPAWNED_MASTER = re.compile(r"gracefully \(RE\)spawned uWSGI master process \(pid: (\d+)\)")
_DATE = r"(\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4})"
_REQUEST_DATE = re.compile(r"\[pid: \d+\|app: [^]]*\] .*? \[" + _DATE + r"\] ")
_LOG_DATE = re.compile(_DATE + " - ")
_PLAIN = (
    ("...gracefully killing workers...", "reload", "graceful reload started"),
    ("...brutally killing workers...", "reload", "brutal reload: killing workers"),
    ("chain reload starting...", "chain_reload", "chain reload started"),
    ("chain reloading complete", "chain_reload", "chain reload complete"),
)
# Substrings that must be present for any event: one cheap test skips request-log lines.
_TRIGGERS = ("HARAKIRI", "SIGUSR2", "DAMN !", "Respawned", "NO MERCY", "listen queue", "chain",
             "killing workers", "(RE)spawned")


@dataclass(frozen=True, slots=True)
class Event:
    """The JSON's `events` entry (docs/contracts.md). worker/pid/uri are None when the line does
    not say."""

    at: float
    source: str
    kind: str
    worker: int | None
    pid: int | None
    uri: str | None
    text: str


def parse_uwsgi_line(line: str, at: float) -> Event | None:
    """The event one uWSGI log line reports (at `at` unless the line has its own time)."""
    if not any(t in line for t in _TRIGGERS):
        return None
    stamped = _LOG_DATE.match(line)
    if stamped:
        at = _local_time(stamped.group(1)) or at
        line = line[stamped.end():]
    text = clean(line.strip())[:_TEXT_LEN]
    m = _HARAKIRI.search(line)
    if m:
        return Event(at, "uwsgi", "harakiri", int(m.group(1)), int(m.group(2)), None, text)
    m = _HARAKIRI_CORE.search(line)
    if m:
        return Event(at, "uwsgi", "harakiri", None, None, clean(m.group(2)), text)
    m = _HARAKIRI_WAS.search(line)
    if m:
        return Event(at, "uwsgi", "harakiri", int(m.group(1)), int(m.group(2)),
                     clean(m.group(3)), text)
    m = _USR2.search(line)
    if m:  # the request a worker was running when asked (kill's "SIGUSR2 first")
        return Event(at, "uwsgi", "usr2", int(m.group(1)), int(m.group(2)), clean(m.group(3)),
                     text)
    m = _DIED.search(line)
    if m:
        return Event(at, "uwsgi", "worker_died", int(m.group(1)), int(m.group(2)), None, text)
    m = _RESPAWN.search(line)
    if m:
        return Event(at, "uwsgi", "respawn", int(m.group(1)), int(m.group(2)), None, text)
    m = _NO_MERCY.search(line)
    if m:
        return Event(at, "uwsgi", "no_mercy", int(m.group(1)), int(m.group(2)), None, text)
    m = _QUEUE.search(line)
    if m:
        return Event(at, "uwsgi", "queue_full", None, None, None, text)
    m = _CHAIN_VICTIM.search(line)
    if m:
        return Event(at, "uwsgi", "chain_reload", int(m.group(1)), None, None, text)
    m = _RESPAWNED_MASTER.search(line)
    if m:
        return Event(at, "uwsgi", "reload", None, int(m.group(1)), None, text)
    for needle, kind, _ in _PLAIN:
        if needle in line:
            return Event(at, "uwsgi", kind, None, None, None, text)
    return None


def line_time(line: str) -> float | None:
    """The local time a uWSGI log line carries, or None: the `Fri Nov 27 06:19:02 2026 - `
    prefix of verbose lines (harakiri) and `log-date`, or the `[Tue May  7 10:00:00 2024]` of
    a request-log line (after optional `{address space usage...}` memory-report fields)."""
    m = _LOG_DATE.match(line)
    if m is None:
        m = _REQUEST_DATE.search(line) if "[pid: " in line else None
    return _local_time(m.group(1)) if m else None


_time_cache: dict[str, float | None] = {}


def _local_time(text: str) -> float | None:
    if text in _time_cache:
        return _time_cache[text]
    try:
        value: float | None = time.mktime(time.strptime(" ".join(text.split()),
                                                        "%a %b %d %H:%M:%S %Y"))
    except (ValueError, OverflowError):
        value = None
    if len(_time_cache) > 1024:
        _time_cache.clear()
    _time_cache[text] = value
    return value


class EventLog:
    """The newest events of one host (bounded), from any number of uWSGI logs and from
    stackmon's own actions (`record`)."""

    def __init__(self, *, window_s: float = 60.0, max_events: int = MAX_EVENTS) -> None:
        self.window_s = float(window_s)
        self._events: deque[Event] = deque(maxlen=max_events)

    def add_uwsgi_lines(self, lines: Iterable[str], now: float, *, backfill: bool = False,
                        instance: str | None = None) -> None:
        """Events from uWSGI log lines read at `now` (see the module docstring for times).
        A harakiri's request lines that follow its `HARAKIRI ON WORKER` line complete that
        event (URI, time) instead of adding another one."""
        last_seen: float | None = None
        for line in lines:
            if backfill:
                last_seen = line_time(line) or last_seen
            at = now if not backfill else last_seen
            if at is None:
                continue
            event = parse_uwsgi_line(line, at)
            if event is None:
                continue
            if instance is not None:
                event = Event(event.at, event.source, event.kind, event.worker, event.pid,
                              event.uri, f"[{instance}] {event.text}")
            self._merge_or_add(event)

    def record(self, event: Event) -> None:
        """An event from elsewhere (stackmon's own kill/reload actions: source "stackmon")."""
        self._events.append(event)

    def _merge_or_add(self, event: Event) -> None:
        prev = self._events[-1] if self._events else None
        if (event.kind == "harakiri" and prev is not None and prev.kind == "harakiri"
                and prev.uri is None and event.uri is not None
                and (event.worker is None or event.worker == prev.worker)):
            self._events[-1] = Event(prev.at, prev.source, prev.kind, prev.worker, prev.pid,
                                     event.uri, prev.text)
            return
        if (event.kind == "harakiri" and prev is not None and prev.kind == "harakiri"
                and event.uri is not None and prev.uri == event.uri
                and (event.worker is None or event.worker == prev.worker)):
            return  # the second description of the same harakiri
        self._events.append(event)

    def summary(self, now: float, limit: int = 50) -> tuple[Event, ...]:
        """Events of the window, newest first, at most `limit`."""
        floor = now - self.window_s
        out = [e for e in reversed(self._events) if e.at >= floor]
        out.sort(key=lambda e: -e.at)
        return tuple(out[:limit])

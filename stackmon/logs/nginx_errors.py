"""nginx error-log lines classified by why the upstream failed, per upstream, over a window.

An access log says "502"; only the error log says why. The exact texts (docs/reference.md §5,
from nginx's sources) map to causes:

- queue_full: `connect() to unix:... failed (11: Resource temporarily unavailable) while
  connecting to upstream` (a full unix-socket listen queue: Linux returns EAGAIN);
- refused: `connect() ... failed (111: Connection refused)` or `(2: No such file or
  directory)` while connecting (nothing listening: a restart window, a wrong path);
- connect_timeout: `upstream timed out (110: ...) while connecting to upstream` (a full TCP
  queue drops SYNs);
- read_timeout: `upstream timed out (110: ...) while reading response header from upstream`
  (or while reading the body);
- closed_mid_request: `upstream prematurely closed connection while reading ...` or `recv()
  failed (104: Connection reset by peer) while reading ...` (the worker died: harakiri, a
  kill, NO MERCY);
- no_live_upstreams: `no live upstreams while connecting to upstream`;
- other: any other line naming an upstream (`upstream: "..."`) at error level or worse, e.g.
  `(13: Permission denied)`.

Lines that name no upstream (start-up notices, client errors) are not upstream errors and are
not counted. The upstream is the `upstream: "uwsgi://unix:/run/app.sock:"` field without its
scheme and URI (`unix:/run/app.sock`, `127.0.0.1:3031`); for no_live_upstreams it is the
upstream group's name. Times are nginx's local time (no zone in the line). Per cause and
upstream the window keeps per-second counts, the first and last time, and ONE sample line,
redacted (the request line and referrer can carry tokens) and cut to 500 characters.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from stackmon.redact import clean

__all__ = [
    "CAUSES",
    "ErrorLine",
    "ErrorWindow",
    "UpstreamError",
    "arrivals",
    "classify",
    "line_time",
    "parse_error_line",
]

CAUSES = ("queue_full", "refused", "connect_timeout", "read_timeout", "closed_mid_request",
          "no_live_upstreams", "other")
MAX_KEYS = 64
_SAMPLE_LEN = 500

_LINE = re.compile(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(\w+)\] (\d+)#\d+: (?:\*\d+ )?(.*)\Z",
                   re.DOTALL)
_UPSTREAM = re.compile(r', upstream: "([^"]*)"')
_LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "error": 3, "warn": 4, "notice": 5, "info": 6,
           "debug": 7}


@dataclass(frozen=True, slots=True)
class ErrorLine:
    """One parsed error-log line that concerns an upstream."""

    at: float
    level: str
    cause: str
    upstream: str
    message: str


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """The JSON's `upstream_errors` entry (docs/contracts.md): a cause at one upstream in the
    window."""

    cause: str
    upstream: str
    count: int
    first_at: float
    last_at: float
    sample: str


def classify(message: str) -> str | None:
    """The cause of an nginx error message, or None when it is not about an upstream."""
    if "while connecting to upstream" in message:
        if "(11: Resource temporarily unavailable)" in message:
            return "queue_full"
        if "(111: Connection refused)" in message or "(2: No such file or directory)" in message:
            return "refused"
        if "upstream timed out" in message:
            return "connect_timeout"
        if message.startswith("no live upstreams"):
            return "no_live_upstreams"
        return "other"
    if "upstream timed out" in message and "while reading" in message:
        return "read_timeout"
    if "while reading" in message and "upstream" in message and (
            "upstream prematurely closed connection" in message
            or "(104: Connection reset by peer)" in message):
        return "closed_mid_request"
    if ', upstream: "' in message:
        return "other"
    return None


def upstream_name(field: str) -> str:
    """`uwsgi://unix:/run/app.sock:` -> `unix:/run/app.sock`; `http://10.0.0.1:8000/x` ->
    `10.0.0.1:8000`; `uwsgi://backend` -> `backend`."""
    rest = field.split("://", 1)[1] if "://" in field else field
    if rest.startswith("unix:"):
        path = rest[5:]
        end = path.find(":")
        return "unix:" + (path if end < 0 else path[:end])
    return rest.split("/", 1)[0]


_time_cache: dict[str, float] = {}


def _local_time(text: str) -> float:
    cached = _time_cache.get(text)
    if cached is None:
        if len(_time_cache) > 1024:
            _time_cache.clear()
        cached = _time_cache[text] = time.mktime(time.strptime(text, "%Y/%m/%d %H:%M:%S"))
    return cached


def line_time(line: str) -> float | None:
    """The time of any error-log line (None when it does not start with one)."""
    stamp = line[:19]
    if len(stamp) != 19 or stamp[4] != "/" or stamp[10] != " ":
        return None
    try:
        return _local_time(stamp)
    except (ValueError, OverflowError):
        return None


def parse_error_line(line: str) -> ErrorLine | None:
    """An upstream failure from one error-log line, or None (another kind of line, an info
    level line, or garbage)."""
    m = _LINE.match(line)
    if m is None:
        return None
    level, message = m.group(2), m.group(4)
    if _LEVELS.get(level, 9) > _LEVELS["error"]:
        return None
    cause = classify(message)
    if cause is None:
        return None
    up = _UPSTREAM.search(message)
    try:
        at = _local_time(m.group(1))
    except (ValueError, OverflowError):
        return None
    return ErrorLine(at, level, cause, upstream_name(up.group(1)) if up else "", message)


class _Tally:
    __slots__ = ("first_at", "last_at", "per_second", "sample")

    def __init__(self, at: float, sample: str) -> None:
        self.per_second: dict[int, int] = {}
        self.first_at = at
        self.last_at = at
        self.sample = sample


class ErrorWindow:
    """Upstream failures of one error log over the last `window_s` seconds."""

    def __init__(self, *, window_s: float = 60.0, source: str = "") -> None:
        self.window_s = float(window_s)
        self.source = source
        self._tallies: dict[tuple[str, str], _Tally] = {}
        # Every failure counted since start, by (cause, upstream): monotonic, for rate().
        self.totals: dict[tuple[str, str], int] = {}

    def add_lines(self, lines: Iterable[str], now: float) -> None:
        floor = now - self.window_s
        for line in lines:
            if "upstream" not in line:
                continue  # most error-log lines are not about upstreams: skip the regex
            err = parse_error_line(line)
            if err is not None and err.at >= floor:
                self.add(err)

    def add(self, err: ErrorLine) -> None:
        key = (err.cause, err.upstream)
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= MAX_KEYS:
                key = (err.cause, "(other)")
                tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = _Tally(err.at, _sample(err.message))
        second = int(err.at)
        tally.per_second[second] = tally.per_second.get(second, 0) + 1
        if key not in self.totals and len(self.totals) >= 4 * MAX_KEYS:
            key = (err.cause, "(other)")
        self.totals[key] = self.totals.get(key, 0) + 1
        tally.first_at = min(tally.first_at, err.at)
        if err.at >= tally.last_at:
            tally.last_at = err.at
            tally.sample = _sample(err.message)

    def summary(self, now: float) -> tuple[UpstreamError, ...]:
        """Causes in the window, most frequent first."""
        floor = now - self.window_s
        out = []
        for (cause, upstream), tally in list(self._tallies.items()):
            for second in [s for s in tally.per_second if s + 1 <= floor]:
                del tally.per_second[second]
            if not tally.per_second:
                del self._tallies[(cause, upstream)]
                continue
            first = max(tally.first_at, float(min(tally.per_second)))
            out.append(UpstreamError(cause, upstream, sum(tally.per_second.values()),
                                     first, tally.last_at, tally.sample))
        out.sort(key=lambda e: (-e.count, CAUSES.index(e.cause), e.upstream))
        return tuple(out)


def _sample(message: str) -> str:
    text = clean(message)
    return text if len(text) <= _SAMPLE_LEN else text[: _SAMPLE_LEN - 1] + "…"


def arrivals(prev: UpstreamError | None, cur: UpstreamError, total_before: int | None = None,
             total: int | None = None) -> int:
    """Failures of one (cause, upstream) logged between two summaries of the same logs.

    Exact from the running totals when both summaries have them; else from the window's
    tallies: exact while nothing left the window, 0 when some left and none came, and at
    least 1 when the window both lost and gained some (what left is not known)."""
    if total_before is not None and total is not None and total >= total_before:
        return total - total_before
    if prev is None:
        return cur.count
    if cur.first_at == prev.first_at:  # nothing left the window: the difference is exact
        return max(0, cur.count - prev.count)
    if cur.last_at == prev.last_at:  # some left, none came
        return 0
    return max(1, cur.count - prev.count)

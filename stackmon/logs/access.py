"""Access-log lines reduced to a rolling window: requests, status classes, latency
percentiles and the endpoints behind 5xx and slowness.

Memory is bounded whatever the traffic: one bucket per second of the window (default 60), each
holding counters, a latency histogram (log-spaced bins 5 % wide, so p50/p95/p99 are within
5 %) and at most `MAX_ENDPOINTS` endpoints (the rest are counted under "(other)"). A summary
merges at most 60 buckets, cheap enough to build every second.

Time: a record is placed by the time nginx logged (`$time_local`...), so a line read late
still counts in its own second. A format without a time variable uses the read time. Records
older than the window are dropped as they arrive; a record from the future (clock skew) counts
in the current second.

Endpoints are shown, so they are made safe and few: the query string is dropped, path
segments that are ids (numbers, UUIDs, hex, long random-looking tokens) become `:id`, the rest
passes through stackmon.redact.clean (tokens and control characters), and the method leads:
`GET /api/users/:id`. 499 (the client gave up) is counted in 4xx and on its own; 502, 503 and
504 in 5xx and on their own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from stackmon.logs.nginx_format import AccessRecord, LogFormat
from stackmon.redact import clean

__all__ = [
    "STATUS_KEYS",
    "AccessWindow",
    "EndpointStat",
    "HttpSummary",
    "Percentiles",
    "fold_path",
]

STATUS_KEYS = ("2xx", "3xx", "4xx", "5xx", "499", "502", "503", "504")
MAX_ENDPOINTS = 200
TOP_N = 5
OTHER = "(other)"
_BIN = math.log(1.05)
_SINGLE = {499: 4, 502: 5, 503: 6, 504: 7}
_ID_SEGMENT = re.compile(
    r"\d+|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
    r"|(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}|(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])"
    r"[A-Za-z0-9_-]{16,}|[\d.,:-]+"
)
# A hash inside a segment (app.3f2a1b9c.js, report-2f8e0a11c9.pdf): folded in place.
_EMBEDDED_HASH = re.compile(r"(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}")
_MAX_ENDPOINT_LEN = 120
_fold_cache: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p95: float
    p99: float


@dataclass(frozen=True, slots=True)
class EndpointStat:
    """One endpoint in the window: requests, 5xx, and upstream (or request) time."""

    endpoint: str
    requests: int
    errors_5xx: int
    total_ms: float
    max_ms: float

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class HttpSummary:
    """The access log's figures over the last `window_s` seconds (docs/contracts.md: `http`).

    per_s divides by the part of the window actually covered (`covered_s`: shorter just after
    start when the log held less history). `upstream_ms` is None when the format logs no
    timing (`timing` None; `missing`/`advice` say what to add) or no request had a time.
    `unparsed` counts lines that did not match the format (garbage, another format).
    """

    window_s: float
    source: str
    requests: int
    per_s: float
    covered_s: float
    status: dict[str, int]
    upstream_ms: Percentiles | None
    timing: str | None
    top_5xx: tuple[EndpointStat, ...]
    top_slow: tuple[EndpointStat, ...]
    unparsed: int
    log_format: str
    missing: tuple[str, ...]
    advice: str | None


def fold_path(uri: str) -> str:
    """`/api/users/123/orders/9f86d081884c7d65?x=1` -> `/api/users/:id/orders/:id`, redacted,
    control characters made visible, at most 120 characters."""
    cached = _fold_cache.get(uri)
    if cached is not None:
        return cached
    path = uri.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        folded = clean(path[:40]) or "-"
    else:
        segments = [":id" if _ID_SEGMENT.fullmatch(seg) else _EMBEDDED_HASH.sub(":id", seg)
                    for seg in path.split("/")]
        folded = clean("/".join(segments))
    if len(folded) > _MAX_ENDPOINT_LEN:
        folded = folded[: _MAX_ENDPOINT_LEN - 1] + "…"
    if len(_fold_cache) > 8192:
        _fold_cache.clear()
    _fold_cache[uri] = folded
    return folded


class _Bucket:
    """One second of the window."""

    __slots__ = ("endpoints", "hist", "requests", "status")

    def __init__(self) -> None:
        self.requests = 0
        self.status = [0] * len(STATUS_KEYS)
        self.hist: dict[int, int] = {}
        # endpoint -> [requests, 5xx, total_ms, max_ms]
        self.endpoints: dict[str, list[float]] = {}


class AccessWindow:
    """Accumulates one access log's records; `summary(now)` gives the window's figures."""

    def __init__(self, log_format: LogFormat, *, window_s: float = 60.0, source: str = "",
                 started_at: float | None = None) -> None:
        self.format = log_format
        self.window_s = float(window_s)
        self.source = source
        self._buckets: dict[int, _Bucket] = {}
        self._unparsed: dict[int, int] = {}
        self._covered_from = started_at
        # Every record counted since this window was made, by STATUS_KEYS: monotonic, so
        # Prometheus can take rate() of it (the window's figures go up and down).
        self.totals = [0] * len(STATUS_KEYS)

    def add_lines(self, lines: Iterable[str], now: float, *, backfill: bool = False,
                  log_format: LogFormat | None = None) -> None:
        """Parse (with `log_format`, default the window's) and count lines read at `now`.
        Backfilled lines without a logged time are dropped: they were written at an unknown
        time before stackmon started."""
        parse = (log_format or self.format).parse
        floor = now - self.window_s
        earliest = now
        for line in lines:
            if not line:
                continue
            rec = parse(line)
            if rec is None:
                second = int(now)
                self._unparsed[second] = self._unparsed.get(second, 0) + 1
                continue
            at = rec.at
            if at is None:
                if backfill:
                    continue
                at = now
            elif at > now:
                at = now
            if at < floor:
                continue
            earliest = min(earliest, at)
            self.add(rec, at)
        if self._covered_from is None or (backfill and earliest < self._covered_from):
            self._covered_from = earliest if backfill else now

    def add(self, rec: AccessRecord, at: float) -> None:
        second = int(at)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = _Bucket()
        bucket.requests += 1
        status = rec.status
        cls = status // 100 - 2
        if 0 <= cls <= 3:
            bucket.status[cls] += 1
            self.totals[cls] += 1
        single = _SINGLE.get(status)
        if single is not None:
            bucket.status[single] += 1
            self.totals[single] += 1
        seconds = rec.upstream_s if rec.upstream_s is not None else rec.request_s
        ms = seconds * 1000.0 if seconds is not None else None
        if ms is not None:
            b = int(math.log(ms) / _BIN) + 1 if ms >= 1.0 else 0
            bucket.hist[b] = bucket.hist.get(b, 0) + 1
        endpoint = f"{rec.method} {fold_path(rec.uri)}" if rec.method else fold_path(rec.uri)
        stats = bucket.endpoints.get(endpoint)
        if stats is None:
            if len(bucket.endpoints) >= MAX_ENDPOINTS:
                endpoint = OTHER
                stats = bucket.endpoints.get(OTHER)
            if stats is None:
                stats = bucket.endpoints[endpoint] = [0, 0, 0.0, 0.0]
        stats[0] += 1
        if status >= 500:
            stats[1] += 1
        if ms is not None:
            stats[2] += ms
            if ms > stats[3]:
                stats[3] = ms

    def prune(self, now: float) -> None:
        floor = int(now - self.window_s)
        for store in (self._buckets, self._unparsed):
            for second in [s for s in store if s < floor]:
                del store[second]

    def summary(self, now: float) -> HttpSummary:
        """The figures for (now - window_s, now]."""
        self.prune(now)
        floor = now - self.window_s
        buckets = [b for s, b in self._buckets.items() if s + 1 > floor]
        requests = sum(b.requests for b in buckets)
        status = [0] * len(STATUS_KEYS)
        hist: dict[int, int] = {}
        endpoints: dict[str, list[float]] = {}
        for b in buckets:
            for i, n in enumerate(b.status):
                status[i] += n
            for k, n in b.hist.items():
                hist[k] = hist.get(k, 0) + n
            for name, st in b.endpoints.items():
                acc = endpoints.get(name)
                if acc is None:
                    endpoints[name] = list(st)
                else:
                    acc[0] += st[0]
                    acc[1] += st[1]
                    acc[2] += st[2]
                    acc[3] = max(acc[3], st[3])
        covered = self.window_s
        if self._covered_from is not None:
            covered = max(1.0, min(self.window_s, now - self._covered_from))
        stats = [EndpointStat(name, int(v[0]), int(v[1]), v[2], v[3])
                 for name, v in endpoints.items()]
        fmt = self.format
        return HttpSummary(
            window_s=self.window_s, source=self.source, requests=requests,
            per_s=requests / covered, covered_s=covered,
            status=dict(zip(STATUS_KEYS, status, strict=True)),
            upstream_ms=_percentiles(hist), timing=fmt.timing,
            top_5xx=tuple(sorted((s for s in stats if s.errors_5xx),
                                 key=lambda s: (-s.errors_5xx, s.endpoint))[:TOP_N]),
            top_slow=tuple(sorted((s for s in stats if s.total_ms > 0),
                                  key=lambda s: (-s.total_ms, s.endpoint))[:TOP_N]),
            unparsed=sum(n for s, n in self._unparsed.items() if s + 1 > floor),
            log_format=fmt.name, missing=fmt.missing, advice=fmt.advice(),
        )


def _percentiles(hist: dict[int, int]) -> Percentiles | None:
    total = sum(hist.values())
    if not total:
        return None
    bins = sorted(hist.items())
    out = []
    for q in (0.50, 0.95, 0.99):
        rank = q * total
        seen = 0
        for b, n in bins:
            seen += n
            if seen >= rank:
                out.append(_bin_value(b))
                break
    return Percentiles(*out)


def _bin_value(b: int) -> float:
    """A bin's representative value in ms: the geometric middle of its edges (0: under 1 ms,
    shown as 0.5)."""
    if b == 0:
        return 0.5
    return round(math.exp((b - 0.5) * _BIN), 3)

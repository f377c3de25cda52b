"""The load balancer's view of a host: its health check, probed as the LB probes it.

The seed outage: a graceful reload held the listen queue for the whole worker-reload-mercy, the
ELB's health check (timeout 5 s, interval 30 s, unhealthy threshold 2) timed out twice, and the
LB took the host out of service, on top of the 502s. Nothing on the host said so. This source
requests the host's `health` URL through nginx, exactly like the LB (a plain GET, the LB's
timeout, healthy only on 200, its default matcher), on stackmon's own interval, and says when the
LB would take the host out.

The LB probes every `interval` (30 s) and takes a host out after `unhealthy_threshold` (2)
failures in a row. We probe more often, so "failures in a row" counts our probes, and the host
is called out of service once it has been failing for as long as the LB needs to see
`unhealthy_threshold` failures: (threshold - 1) x interval after the first failure (the LB's
probes may land anywhere in that span; this is the earliest it can happen, which is what an
on-call engineer needs to know). A probe runs in the background: a poll never waits for it (the
LB's timeout is longer than a poll's deadline), it reads the latest result and whether a probe is
in flight and for how long.

Cadence: stackmon probes on every poll (`kick()`, each second by default), not every
`interval`: the LB's probes land at a phase nobody knows, and probing each second sees every
second of an outage. So the probe lines with user agent `stackmon-health-probe` that nginx logs
each second are stackmon's own, and `failures_in_row` counts stackmon's probes while the LB's
`unhealthy_threshold` counts the LB's checks, `interval` apart. They are made to agree through
time: a failing streak of D seconds holds at most floor(D / interval) + 1 of the LB's checks, so
the LB takes the host out only when the streak lasts (threshold - 1) x interval. A 16 s outage
under the ELB's 30 s x 2 holds at most one LB check: the LB would NOT take the host out, and
the streak's episode says so (a review read "fails 0" after such an outage and thought the
failures were lost: "fails" is the streak now, reset by the first pass).

Every streak of failures is kept as a `ProbeEpisode` (start, end, how many probes failed, when
the LB would have taken the host out and for how long): `HealthCheck.episode` is the latest for
the panel and the health model, `take_news()` hands finished ones (and the moment a streak
reaches OUT) to the host as events for the events screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import ssl
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from stackmon.redact import clean

HEALTHY_STATUS = 200
EPISODES_KEPT = 20  # finished failing streaks remembered (the panel shows the latest)
EPISODE_SHOWN_S = 600.0  # how long the panel shows a finished streak after it ended


def _clock(at: float) -> str:
    """HH:MM:SS local time, as nginx's logs and the events screen show it."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(at))
    except (OverflowError, OSError, ValueError):
        return "?"


@dataclass(frozen=True, slots=True)
class ProbeEpisode:
    """One streak of failed probes, from the first failure to the first pass (end None: still
    failing). `out_at`: when the LB would have taken the host out (None: the streak was too
    short for `threshold` of its checks `interval` apart)."""

    start: float
    end: float | None
    failures: int  # stackmon's probes that failed (one per poll)
    last_error: str
    interval: float
    threshold: int
    out_at: float | None = None

    @property
    def span_s(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - self.start)

    @property
    def out_for_s(self) -> float | None:
        """How long the host was out by the LB's count (until the first passing probe; the
        real LB keeps it out until its healthy threshold of checks has passed too)."""
        if self.out_at is None or self.end is None:
            return None
        return max(0.0, self.end - self.out_at)

    @property
    def lb_checks(self) -> int:
        """The most of the LB's checks, `interval` apart, that can have fallen in the streak
        [start, end): ceil(span / interval), at least one (the LB's threshold is reached when
        this is; a streak still going counts up to now)."""
        span = self.span_s or 0.0
        return max(1, math.ceil(span / self.interval)) if self.interval > 0 else self.failures

    def recent(self, now: float | None) -> bool:
        """Finished less than EPISODE_SHOWN_S before `now` (the panel's line)."""
        return self.end is not None and now is not None and now - self.end <= EPISODE_SHOWN_S

    def short(self) -> str:
        """The panel's line: "OUT for 16 s at 15:35:54" or "failed 13 s at 15:43:16 (LB:
        not out)"."""
        if self.out_at is not None:
            took = "now" if self.out_for_s is None else f"for {self.out_for_s:.0f} s"
            return f"LB OUT {took} at {_clock(self.out_at)} (×{self.failures} failed)"
        span = "" if self.span_s is None else f" for {self.span_s:.0f} s"
        return (f"failed ×{self.failures}{span} at {_clock(self.start)}: "
                f"LB not out: ≤{self.lb_checks} of its checks in it, {self.threshold} "
                "needed")  # "(≤1 of 2 checks)" read as cryptic (review)

    def sentence(self) -> str:
        """The events screen's text for a finished streak."""
        err = f" ({self.last_error})" if self.last_error else ""
        span = self.span_s or 0.0
        lb = (f"the LB checks every {self.interval:g} s and takes a host out after "
              f"{self.threshold} failed in a row")
        if self.out_at is not None:
            return (f"the load balancer would have taken this host OUT at {_clock(self.out_at)}"
                    f" for {self.out_for_s or 0.0:.0f} s: health check failed ×{self.failures} "
                    f"from {_clock(self.start)} to {_clock(self.start + span)}{err}; {lb}, "
                    "and puts it back only after its healthy threshold of passing checks")
        return (f"health check failed ×{self.failures} for {span:.0f} s from "
                f"{_clock(self.start)}{err}; the load balancer would not have taken this host "
                f"out: at most {self.lb_checks} of its checks fell in it ({lb})")


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """What the probes of one health URL have seen so far."""

    url: str
    ok: bool | None  # None before the first probe has finished
    last_ms: float | None
    max_ms: float | None  # the slowest probe in the window
    failures_in_row: int
    out_of_service: bool
    last_error: str = ""  # why the last probe failed ("timed out after 5 s", "HTTP 502")
    checked_at: float | None = None
    in_flight_s: float | None = None  # a probe running now, for this long
    timeout_s: float = 5.0
    failing_since: float | None = None
    out_in_s: float | None = None  # while failing: seconds until the LB would take it out
    episode: ProbeEpisode | None = None  # the latest failing streak, going on or finished


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    """The LB's health-check settings (hosts file: health_timeout, health_interval,
    unhealthy_threshold); defaults are the ELB's."""

    timeout: float = 5.0
    interval: float = 30.0
    unhealthy_threshold: int = 2
    window: float = 60.0  # how long the worst latency is remembered


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")
STATUS_LINE_MAX = 8 * 1024  # bytes read for the status line at most


async def get_status(url: str) -> int:
    """The status code of a GET of `url` on a new connection (the LB's way: no keep-alive,
    `Connection: close`), read from the status line alone; the caller bounds the time.

    Why not httpx: a GET on a new connection cost 1.6-1.7 ms of CPU in httpx, httpcore and
    anyio, 0.40-0.41 ms this way (300 GETs of the demo's /health, process time; py-spy on
    the demo had the probe at 13 % of the TUI's busy samples), and the probe runs every poll.
    TLS is not verified, as an LB does not verify its targets."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {clean(url)}")
    port = parts.port or (443 if parts.scheme == "https" else 80)  # ValueError if bad
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target):  # no header injection
        raise ValueError(f"the URL's path has spaces or control characters: {clean(url)}")
    context = None
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        parts.hostname, port, ssl=context, limit=STATUS_LINE_MAX,
        server_hostname=parts.hostname if context else None)
    try:
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        host += f":{parts.port}" if parts.port else ""
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: "
                     "stackmon-health-probe\r\nConnection: close\r\n\r\n".encode("latin-1"))
        line = await reader.readuntil(b"\n")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    match = _STATUS_LINE.match(line)
    if match is None:
        raise ValueError(f"not an HTTP reply: {clean(line[:60].decode('latin-1'))}")
    return int(match.group(1))


class HealthProbe:
    """Probes one URL in the background; `state()` is the latest HealthCheck."""

    def __init__(self, url: str, policy: ProbePolicy | None = None) -> None:
        self.url = url
        self.policy = policy or ProbePolicy()
        self._shown = clean(url)
        self._task: asyncio.Task[None] | None = None
        self._started: float | None = None
        self._latencies: list[tuple[float, float]] = []  # (time, ms), within the window
        self._last: tuple[bool, float | None, str, float] | None = None
        self._failures = 0
        self._failing_since: float | None = None
        self._last_error = ""
        self._threshold_at: float | None = None  # when the streak reached the threshold
        self._episodes: deque[ProbeEpisode] = deque(maxlen=EPISODES_KEPT)
        self._news: list[tuple[str, float, str]] = []  # (kind, at, text) for take_news()
        self._announced_out = False  # this streak's "OUT" was handed out

    def kick(self) -> None:
        """Start a probe unless one is in flight (call once per poll)."""
        if self._task is None or self._task.done():
            self._started = time.time()
            self._task = asyncio.create_task(self._probe(), name=f"health {self._shown}")

    async def probe_now(self) -> HealthCheck:
        """One probe, awaited (for one-shot commands)."""
        self.kick()
        assert self._task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.state()

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _probe(self) -> None:
        started = time.monotonic()
        ok, error = False, ""
        try:
            async with asyncio.timeout(self.policy.timeout):
                status = await get_status(self.url)
            ok = status == HEALTHY_STATUS
            if not ok:
                error = f"HTTP {status}"
        except TimeoutError:
            error = f"timed out after {self.policy.timeout:g} s"
        except (ValueError, OSError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            error = clean(str(exc) or type(exc).__name__)
        ms = (time.monotonic() - started) * 1000
        self._record(ok, ms, error, time.time())

    def _record(self, ok: bool, ms: float, error: str, now: float) -> None:
        self._latencies = [(t, v) for t, v in self._latencies if now - t <= self.policy.window]
        self._latencies.append((now, ms))
        if ok:
            if self._failing_since is not None:
                # The streak ends when the passing probe was sent: the host answered then.
                self._end_streak(max(self._failing_since, now - ms / 1000))
            self._failures, self._failing_since = 0, None
        else:
            self._failures += 1
            self._last_error = error
            if self._failing_since is None:
                # When the failing probe was sent: a timeout comes back `timeout` later, and
                # a review saw a 16 s outage read "for 7 s from" 5 s after it began.
                self._failing_since = now - ms / 1000
            if self._failures == self.policy.unhealthy_threshold:
                self._threshold_at = now
        self._last = (ok, ms, error, now)

    def _out_at(self, until: float, *, ended: bool = False) -> float | None:
        """When the current streak (failing until `until`) took the host out by the LB's
        count: threshold failures and (threshold - 1) x interval of failing; None if not.
        An ended streak is [start, end): an LB check at `end` itself saw the pass."""
        if self._failing_since is None or self._threshold_at is None:
            return None
        at = max(self._failing_since + self._needed(), self._threshold_at)
        return at if until > at or (until == at and not ended) else None

    def _needed(self) -> float:
        return (self.policy.unhealthy_threshold - 1) * self.policy.interval

    def _episode(self, end: float | None, now: float) -> ProbeEpisode | None:
        if self._failing_since is None:
            return None
        return ProbeEpisode(start=self._failing_since, end=end, failures=self._failures,
                            last_error=self._last_error, interval=self.policy.interval,
                            threshold=self.policy.unhealthy_threshold,
                            out_at=self._out_at(now if end is None else end,
                                                ended=end is not None))

    def _end_streak(self, end: float) -> None:
        episode = self._episode(end, end)
        self._threshold_at, self._announced_out = None, False
        if episode is None:
            return
        self._episodes.append(episode)
        # "lb_in" at the streak's end (the host passes again), "health_fail" at its start.
        if episode.out_at is not None:
            self._news.append(("lb_in", end, episode.sentence()))
        else:
            self._news.append(("health_fail", episode.start, episode.sentence()))

    def take_news(self, now: float | None = None) -> list[tuple[str, float, str]]:
        """What happened since the last call, as (kind, at, text) events: `lb_out` when a
        streak reaches the LB's threshold (once per streak), then `lb_in` when it ends (or
        `health_fail` for a streak the LB would not have noticed). Called once per poll."""
        now = time.time() if now is None else now
        out_at = self._out_at(now)
        if out_at is not None and not self._announced_out:
            self._announced_out = True
            self._news.append(("lb_out", out_at, (
                f"the load balancer would take this host OUT now: health check failing since "
                f"{_clock(self._failing_since or out_at)}, ×{self._failures} "
                f"({self._last_error}); out after {self.policy.unhealthy_threshold} failed "
                f"checks {self.policy.interval:g} s apart")))
        news, self._news = self._news, []
        return news

    def episodes(self) -> list[ProbeEpisode]:
        """The finished failing streaks remembered, oldest first."""
        return list(self._episodes)

    def state(self, now: float | None = None) -> HealthCheck:
        now = time.time() if now is None else now
        in_flight = (now - self._started if self._task is not None and not self._task.done()
                     and self._started is not None else None)
        if self._last is None:
            return HealthCheck(url=self._shown, ok=None, last_ms=None, max_ms=None,
                               failures_in_row=0, out_of_service=False,
                               in_flight_s=in_flight, timeout_s=self.policy.timeout)
        ok, ms, error, checked = self._last
        recent = [v for t, v in self._latencies if now - t <= self.policy.window]
        out, out_in = self._lb_verdict(now)
        episode = self._episode(None, now) or (self._episodes[-1] if self._episodes else None)
        return HealthCheck(url=self._shown, ok=ok, last_ms=ms, max_ms=max(recent, default=ms),
                           failures_in_row=self._failures, out_of_service=out,
                           last_error=error, checked_at=checked, in_flight_s=in_flight,
                           timeout_s=self.policy.timeout, failing_since=self._failing_since,
                           out_in_s=out_in, episode=episode)

    def _lb_verdict(self, now: float) -> tuple[bool, float | None]:
        """(out of service, seconds until it would be) from the current failing streak."""
        if self._failing_since is None:
            return False, None
        needed = self._needed()
        failing_for = now - self._failing_since
        out = self._failures >= self.policy.unhealthy_threshold and failing_for >= needed
        return out, None if out else max(0.0, needed - failing_for)

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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import httpx

from stackmon.redact import clean

HEALTHY_STATUS = 200


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


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    """The LB's health-check settings (hosts file: health_timeout, health_interval,
    unhealthy_threshold); defaults are the ELB's."""

    timeout: float = 5.0
    interval: float = 30.0
    unhealthy_threshold: int = 2
    window: float = 60.0  # how long the worst latency is remembered


class HealthProbe:
    """Probes one URL in the background; `state()` is the latest HealthCheck."""

    def __init__(self, url: str, policy: ProbePolicy | None = None) -> None:
        self.url = url
        self.policy = policy or ProbePolicy()
        self._shown = clean(url)
        self._task: asyncio.Task[None] | None = None
        self._started: float | None = None
        self._client: httpx.AsyncClient | None = None
        self._latencies: list[tuple[float, float]] = []  # (time, ms), within the window
        self._last: tuple[bool, float | None, str, float] | None = None
        self._failures = 0
        self._failing_since: float | None = None

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
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # A new connection per probe, like the LB (no keep-alive across probes).
            self._client = httpx.AsyncClient(
                trust_env=False, verify=False, follow_redirects=False,
                timeout=httpx.Timeout(self.policy.timeout),
                limits=httpx.Limits(max_keepalive_connections=0),
                headers={"User-Agent": "stackmon-health-probe"})
        return self._client

    async def _probe(self) -> None:
        started = time.monotonic()
        ok, error = False, ""
        try:
            async with asyncio.timeout(self.policy.timeout):
                resp = await self._http().get(self.url)
            ok = resp.status_code == HEALTHY_STATUS
            if not ok:
                error = f"HTTP {resp.status_code}"
        except (TimeoutError, httpx.TimeoutException):
            error = f"timed out after {self.policy.timeout:g} s"
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError) as exc:
            error = clean(str(exc) or type(exc).__name__)
        ms = (time.monotonic() - started) * 1000
        self._record(ok, ms, error, time.time())

    def _record(self, ok: bool, ms: float, error: str, now: float) -> None:
        self._latencies = [(t, v) for t, v in self._latencies if now - t <= self.policy.window]
        self._latencies.append((now, ms))
        if ok:
            self._failures, self._failing_since = 0, None
        else:
            self._failures += 1
            if self._failing_since is None:
                self._failing_since = now
        self._last = (ok, ms, error, now)

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
        return HealthCheck(url=self._shown, ok=ok, last_ms=ms, max_ms=max(recent, default=ms),
                           failures_in_row=self._failures, out_of_service=out,
                           last_error=error, checked_at=checked, in_flight_s=in_flight,
                           timeout_s=self.policy.timeout, failing_since=self._failing_since,
                           out_in_s=out_in)

    def _lb_verdict(self, now: float) -> tuple[bool, float | None]:
        """(out of service, seconds until it would be) from the current failing streak."""
        if self._failing_since is None:
            return False, None
        needed = (self.policy.unhealthy_threshold - 1) * self.policy.interval
        failing_for = now - self._failing_since
        out = self._failures >= self.policy.unhealthy_threshold and failing_for >= needed
        return out, None if out else max(0.0, needed - failing_for)

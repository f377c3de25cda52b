"""Traffic for the demo stack: what makes `stackmon demo` look like a bad day in production.

Three loops share one stop event:
- steady traffic, a few requests per second (/, /fast, /healthz, some /slow, a rare /error);
- a couple of stuck requests always in flight, with realistic URIs (/hang/report?id=42,
  /hang/export.csv) and the headers that redaction must hide (Cookie, Authorization). The demo
  is how new users learn the tool, so a stuck request must be there whenever they look: one
  that ends (finished, or its worker killed from stackmon, or cut by a reload's mercy) is sent
  again within a couple of seconds. nginx gives up on a hang after uwsgi_read_timeout (504)
  while the worker keeps sleeping; from then on the client cannot see the worker, so with the
  stats address each slot looks for its own request (tagged X-Demo-Hang) in the stats, and
  re-sends as soon as it is gone; without it, the slot waits for the hang's own duration;
- now and then a burst: every core gets a /slow?s=5, then more connections than there are
  cores pile up behind them, so the listen queue fills for a few seconds (and overflows into
  502s when the burst is bigger than the backlog).

Everything is bounded (connections, concurrency, timeouts, loop waits) and stops promptly when
the event is set. Only the loopback base_url given is ever contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from stackmon.addresses import AddressError, StatsAddress, parse_stats_address
from stackmon.model import SourceError, Thresholds
from stackmon.sources.uwsgi_stats import poll_stats

# Deliberately fake secrets: the UI must show them as redacted.
DEMO_HEADERS: dict[str, str] = {
    "Cookie": "sessionid=demo-not-a-secret; theme=dark",
    "Authorization": "Bearer demo-not-a-token",
    "User-Agent": "stackmon-demo/1",
}

HANG_PATHS: tuple[str, ...] = (
    "/hang/report?id=42",
    "/hang/export.csv",
    "/hang/api/v1/orders?page=7&sort=created",
    "/hang/search?q=invoices+2024",
)

HANG_TAG = "X-Demo-Hang"  # which slot's which hang: found again in the stats' request vars
HANG_TAG_VAR = "HTTP_X_DEMO_HANG"
RESEND_AFTER = (0.5, 2.0)  # seconds before a hang that ended is sent again
WATCH_EVERY = 2.0  # seconds between looks at the stats for a hang nginx gave up on

# (path, weight) for steady traffic; /slow durations are filled in per request.
STEADY_MIX: tuple[tuple[str, int], ...] = (
    ("/", 30),
    ("/fast", 30),
    ("/healthz", 10),
    ("/slow", 15),
    ("/static/missing.png", 3),
    ("/error", 2),
)


@dataclass
class TrafficStats:
    """Live counters (read them from anywhere; only the traffic loop writes)."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # steady requests not sent because the concurrency bound was reached
    hangs_started: int = 0
    hangs_resent_early: int = 0  # ended before their time (killed, mercy), then sent again
    bursts: int = 0

    def record(self, status: int | None = None, error: BaseException | None = None) -> None:
        if status is not None:
            self.statuses[status] += 1
        if error is not None:
            self.errors[type(error).__name__] += 1


def check_loopback(base_url: str) -> str:
    """The base URL without a trailing slash, if and only if it points at loopback."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"traffic base_url must be http(s): {base_url!r}")
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback:
        raise ValueError(f"demo traffic only goes to loopback addresses, not {host!r}")
    return base_url.rstrip("/")


async def _sleep(stop_event: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early on stop; True if we should stop."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), timeout=seconds)
    return stop_event.is_set()


async def _get(
    client: httpx.AsyncClient,
    url: str,
    stats: TrafficStats,
    *,
    headers: dict[str, str] | None = None,
    timeout: float,
) -> None:
    stats.sent += 1
    try:
        resp = await client.get(url, headers=headers, timeout=timeout)
        stats.record(status=resp.status_code)
    except httpx.HTTPError as exc:
        stats.record(error=exc)


async def _steady(
    client: httpx.AsyncClient,
    base: str,
    stop_event: asyncio.Event,
    stats: TrafficStats,
    rng: random.Random,
    rate: float,
    max_concurrency: int,
) -> None:
    paths, weights = zip(*STEADY_MIX, strict=True)
    bound = asyncio.Semaphore(max_concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def one(path: str) -> None:
        try:
            await _get(client, base + path, stats, headers=DEMO_HEADERS, timeout=30.0)
        finally:
            bound.release()

    try:
        while not stop_event.is_set():
            path = rng.choices(paths, weights)[0]
            if path == "/slow":
                path = f"/slow?s={rng.uniform(0.5, 3.0):.1f}"
            if bound.locked():
                stats.skipped += 1  # the stack is saturated: do not pile up more
            else:
                await bound.acquire()
                task = asyncio.create_task(one(path))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if await _sleep(stop_event, rng.expovariate(rate)):
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class HangWatch:
    """Whether a tagged hang is still running on a worker, from the uWSGI stats (None: the
    stats cannot tell, e.g. no address or no answer)."""

    def __init__(self, stats_address: str | None) -> None:
        self.address: StatsAddress | None = None
        if stats_address:
            with contextlib.suppress(AddressError):
                self.address = parse_stats_address(stats_address)

    async def running(self, tag: str) -> bool | None:
        if self.address is None:
            return None
        got = await poll_stats(self.address, Thresholds(), timeout=2.0)
        if isinstance(got, SourceError):
            return None
        return any((HANG_TAG_VAR, tag) in r.vars for w in got.workers
                   for r in w.requests_in_flight)


async def _hang_slot(
    client: httpx.AsyncClient,
    base: str,
    stop_event: asyncio.Event,
    stats: TrafficStats,
    rng: random.Random,
    hang_seconds: tuple[float, float],
    slot: int = 0,
    watch: HangWatch | None = None,
) -> None:
    """Keep one stuck request in flight, and only one: the next is sent once the previous
    has ended on the server too (stuck cores stay at one per slot, never creeping up), and
    as soon as it has (a kill or a reload's mercy ends it early: re-sent within seconds)."""
    loop = asyncio.get_running_loop()
    watch = watch or HangWatch(None)
    seq = 0
    while not stop_event.is_set():
        seq += 1
        tag = f"{slot}-{seq}"
        seconds = rng.uniform(*hang_seconds)
        started = loop.time()
        stats.hangs_started += 1
        headers = {**DEMO_HEADERS, "X-Hang-Seconds": f"{seconds:.0f}", HANG_TAG: tag}
        status: list[int] = []
        request = asyncio.create_task(
            _hang_get(client, base + rng.choice(HANG_PATHS), stats, headers, seconds + 15.0,
                      status)
        )
        stop_wait = asyncio.create_task(stop_event.wait())
        await asyncio.wait({request, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if stop_event.is_set():
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
            return
        # 504: nginx gave up; the worker may still be on it: wait until it is not.
        if status == [504] and await _wait_server_side(stop_event, watch, tag,
                                                       started + seconds, loop):
            return
        if loop.time() < started + seconds - 1.0:
            stats.hangs_resent_early += 1
        if await _sleep(stop_event, rng.uniform(*RESEND_AFTER)):
            return


async def _hang_get(client: httpx.AsyncClient, url: str, stats: TrafficStats,
                    headers: dict[str, str], timeout: float, status: list[int]) -> None:
    """_get, keeping the status (504: nginx timed out; the worker may still run it)."""
    stats.sent += 1
    try:
        resp = await client.get(url, headers=headers, timeout=timeout)
        stats.record(status=resp.status_code)
        status.append(resp.status_code)
    except httpx.HTTPError as exc:
        stats.record(error=exc)


async def _wait_server_side(stop_event: asyncio.Event, watch: HangWatch, tag: str,
                            server_done: float, loop: asyncio.AbstractEventLoop) -> bool:
    """Wait until the tagged hang is no longer on a worker (stats), or, when the stats cannot
    tell, until its duration is over. True if we should stop."""
    while loop.time() < server_done:
        running = await watch.running(tag)
        if running is False:
            return stop_event.is_set()
        wait = WATCH_EVERY if running else server_done - loop.time()
        if await _sleep(stop_event, min(wait, server_done - loop.time())):
            return True
    return stop_event.is_set()


async def _burst(
    client: httpx.AsyncClient,
    base: str,
    stop_event: asyncio.Event,
    stats: TrafficStats,
    capacity: int,
    size: int,
    seconds: float,
) -> None:
    """Every core gets a /slow?s=N, then `size - capacity` quick requests queue behind them."""
    stats.bursts += 1
    slow = [
        asyncio.create_task(
            _get(client, f"{base}/slow?s={seconds:g}", stats, timeout=seconds + 60.0)
        )
        for _ in range(capacity)
    ]
    tasks = list(slow)
    if not await _sleep(stop_event, 0.3):  # let the slow ones take the cores first
        tasks += [
            asyncio.create_task(_get(client, f"{base}/fast?burst=1", stats, timeout=seconds + 60.0))
            for _ in range(max(0, size - capacity))
        ]
    stop_wait: asyncio.Task[Any] = asyncio.create_task(stop_event.wait())
    pending: set[asyncio.Task[Any]] = set(tasks)
    while pending and not stop_event.is_set():
        _, pending = await asyncio.wait(pending | {stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        pending.discard(stop_wait)
    stop_wait.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _bursts(
    client: httpx.AsyncClient,
    base: str,
    stop_event: asyncio.Event,
    stats: TrafficStats,
    rng: random.Random,
    burst_every: tuple[float, float],
    first_burst: float | None,
    capacity: int,
    size: int,
    seconds: float,
) -> None:
    wait = first_burst if first_burst is not None else rng.uniform(*burst_every)
    while not await _sleep(stop_event, wait):
        await _burst(client, base, stop_event, stats, capacity, size, seconds)
        wait = rng.uniform(*burst_every)


async def run_traffic(
    base_url: str,
    *,
    stop_event: asyncio.Event,
    rate: float = 3.0,
    hang_in_flight: int = 2,
    hang_seconds: tuple[float, float] = (90.0, 240.0),
    hang_every: float = 10.0,
    stats_address: str | None = None,
    burst_every: tuple[float, float] | None = (30.0, 60.0),
    first_burst: float | None = 15.0,
    capacity: int = 8,
    listen: int = 100,
    burst_size: int | None = None,
    burst_seconds: float = 5.0,
    max_concurrency: int = 16,
    seed: int | None = None,
    stats: TrafficStats | None = None,
) -> TrafficStats:
    """Generate demo traffic against `base_url` (loopback only) until `stop_event` is set.

    rate: steady requests per second (Poisson). hang_in_flight: stuck requests kept in flight,
    each lasting uniform(hang_seconds) on the server, sent again RESEND_AFTER seconds after it
    ended (hang_every: ignored, kept for callers). stats_address: the uWSGI stats server, to
    see a hang end after nginx gave up on it (a kill, a reload); see the module docstring.
    burst_every: (min, max) seconds between bursts, None for none; the first comes after
    first_burst. capacity: the stack's workers x threads. A burst is capacity + listen + 4
    connections unless burst_size says otherwise, so the backlog really fills (and a few
    overflow: 502 from nginx over a unix socket). Returns the counters (also live in `stats`).
    """
    base = check_loopback(base_url)
    stats = stats if stats is not None else TrafficStats()
    rng = random.Random(seed)
    size = burst_size if burst_size is not None else capacity + listen + 4
    timeout = httpx.Timeout(30.0, connect=5.0)
    # One client per kind of traffic: a burst must not eat the steady loop's connection pool.
    # trust_env=False: no proxy from the environment may reroute loopback traffic.
    clients = [
        httpx.AsyncClient(
            timeout=timeout, trust_env=False, limits=httpx.Limits(max_connections=max_concurrency)
        ),
        httpx.AsyncClient(
            timeout=timeout,
            trust_env=False,
            limits=httpx.Limits(max_connections=max(1, hang_in_flight)),
        ),
        httpx.AsyncClient(
            timeout=timeout,
            trust_env=False,
            limits=httpx.Limits(max_connections=max(1, size), max_keepalive_connections=0),
        ),
    ]
    steady_client, hang_client, burst_client = clients
    tasks = [
        asyncio.create_task(
            _steady(steady_client, base, stop_event, stats, rng, rate, max_concurrency)
        )
    ]
    watch = HangWatch(stats_address)
    tasks += [
        asyncio.create_task(
            _hang_slot(hang_client, base, stop_event, stats, rng, hang_seconds, slot, watch)
        )
        for slot in range(hang_in_flight)
    ]
    if burst_every is not None:
        tasks.append(
            asyncio.create_task(
                _bursts(
                    burst_client,
                    base,
                    stop_event,
                    stats,
                    rng,
                    burst_every,
                    first_burst,
                    capacity,
                    size,
                    burst_seconds,
                )
            )
        )
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.aclose()
    return stats


class TrafficThread:
    """run_traffic in its own thread and event loop, for callers without one (`demo --no-ui`,
    sync tests). The TUI, which has a loop, can create a task from run_traffic directly."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        check_loopback(base_url)
        self.base_url = base_url
        self.kwargs = kwargs
        self.stats = TrafficStats()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stackmon-traffic", daemon=True)

    def start(self) -> TrafficThread:
        self._thread.start()
        self._ready.wait(timeout=5.0)
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await run_traffic(self.base_url, stop_event=self._stop, stats=self.stats, **self.kwargs)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported through .error, the thread just ends
            self.error = exc
        finally:
            self._ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> TrafficThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

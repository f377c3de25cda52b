"""Polling hosts forever, each on its own, so one dead host never stalls another.

`HostPoller` runs one host: a poll every `interval` (fixed rate, not interval + poll time), each
poll cut at a deadline of timeout * 2 + 1 s so a black-holed host cannot hold its loop, and
exponential backoff while the host keeps failing (interval, 2x, 4x... capped at
min(4 x interval, 10 s), never below the interval; reset by the first success). While it
backs off, or while a retry hangs, the poller still delivers the host's unreachable state every
interval with the last good data and a growing `stale_s`, so a screen never freezes on an old
"fine" picture. `pause()` stops polling (nothing is sent), `resume()` polls at once, and
`poll_now()` skips the wait and any backoff (after an action: the next poll shows it).

Snapshots are delivered through a callback `on_snapshot(index, snapshot)` (the index keeps
tabs in the hosts-file order) and/or the async iterator `snapshots()`.

`Fleet` runs the pollers of every host in `Targets` concurrently, staggers their first polls
over one interval (100 hosts do not all fire in the same millisecond) and merges their
snapshots into one callback or one async iterator of (index, snapshot).

This is core (no Textual): the TUI, the benchmark and any daemon use it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from stackmon.config import HostConfig, Settings, Targets
from stackmon.hosts import Host, open_host
from stackmon.model import HostSnapshot, SourceError

log = logging.getLogger("stackmon.poller")

SnapshotCallback = Callable[[int, HostSnapshot], None]
BACKOFF_CAP_S = 10.0


def backoff_cap(interval: float) -> float:
    """The longest wait between tries of a failing host: 4 x interval, at most 10 s, and
    never shorter than the interval itself."""
    return max(interval, min(4 * interval, BACKOFF_CAP_S))


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Latest:
    """A one-slot mailbox: a slow reader gets the newest item, never a backlog."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)

    def put(self, item: object) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    async def get(self) -> object:
        return await self._queue.get()


class HostPoller:
    """Polls one host forever (see the module docstring); `run()` is the task to start."""

    def __init__(self, index: int, host: HostConfig, settings: Settings,
                 on_snapshot: SnapshotCallback | None = None, *,
                 collector: Host | None = None,
                 max_backoff: float | None = None, start_delay: float = 0.0) -> None:
        self.index = index
        self.host = host
        # A host whose group has its own settings ([groups.NAME]) is polled by them.
        settings = host.settings if host.settings is not None else settings
        self.settings = settings
        self.on_snapshot = on_snapshot
        self.collector = collector or open_host(host, settings)
        self.interval = settings.interval
        self.deadline = settings.timeout * 2 + 1
        self.max_backoff = backoff_cap(self.interval) if max_backoff is None else max_backoff
        self.start_delay = start_delay
        self.failures = 0  # consecutive unreachable polls
        self.latest: HostSnapshot | None = None
        self.polls = 0
        self._running = asyncio.Event()
        self._running.set()
        self._wake = asyncio.Event()
        self._waiter: asyncio.Future[None] | None = None
        self._retry_at = 0.0
        self._last_errors: tuple[SourceError, ...] = ()
        self._mailboxes: list[_Latest] = []

    # --- control ----------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        """Stop polling until resume() (a poll already running finishes and is delivered)."""
        self._running.clear()

    def resume(self) -> None:
        if self.paused:
            self._running.set()
            self._wake_up()

    def poll_now(self) -> None:
        """Poll at once, even while backing off (ignored while paused)."""
        self._retry_at = 0.0
        self._wake_up()

    def backoff_delay(self) -> float:
        """Seconds to wait after the current run of failures before trying again."""
        if self.failures <= 0:
            return self.interval
        return min(self.interval * 2 ** (self.failures - 1), self.max_backoff)

    # --- delivery ---------------------------------------------------------------------------

    async def snapshots(self) -> AsyncIterator[HostSnapshot]:
        """Every snapshot from now on (the newest one if the reader falls behind)."""
        box = _Latest()
        self._mailboxes.append(box)
        try:
            while True:
                item = await box.get()
                assert isinstance(item, HostSnapshot)
                yield item
        finally:
            self._mailboxes.remove(box)

    def _deliver(self, snap: HostSnapshot) -> None:
        self.latest = snap
        for box in self._mailboxes:
            box.put(snap)
        if self.on_snapshot is not None:
            try:
                self.on_snapshot(self.index, snap)
            except Exception:  # a broken consumer must not stop the polling
                log.exception("snapshot callback failed for host %s", self.host.name)

    def _still_failing(self, now_mono: float) -> HostSnapshot:
        """The unreachable state again, with the last good data's age as of now."""
        errors = list(self._last_errors)
        wait = self._retry_at - now_mono
        if wait >= self.interval / 2:
            shown = f"{wait:.0f}" if wait >= 2 else f"{wait:.1f}"
            errors.append(SourceError(self.host.name, f"next try in {shown} s "
                                                      f"({self.failures} failed in a row)"))
        return self.collector.unreachable(time.time(), errors)

    # --- polling ----------------------------------------------------------------------------

    async def poll_once(self) -> HostSnapshot:
        """One poll within the deadline; updates the failure count; does not deliver."""
        taken_at = time.time()
        started = time.monotonic()
        self.polls += 1
        try:
            # asyncio.timeout, not wait_for: no extra task per poll (500 hosts: 500 a second)
            async with asyncio.timeout(self.deadline):
                snap = await self.collector.poll()
        except TimeoutError:
            snap = self.collector.timed_out(taken_at, self.deadline)
        except Exception as exc:  # a bug in a source must not end this host's polling
            log.exception("poll of host %s failed", self.host.name)
            snap = self.collector.unreachable(taken_at, [SourceError(
                self.host.name, f"internal error while polling: {type(exc).__name__}")])
        if snap.reachable:
            self.failures = 0
            self._retry_at = 0.0
        else:
            self.failures += 1
            self._last_errors = snap.errors
            self._retry_at = started + self.backoff_delay()
        return snap

    async def _sleep_until(self, when: float) -> None:
        """Sleep until `when` or until woken (poll_now, resume). A bare future and a timer
        handle: wait_for(Event.wait()) cost a task per sleep, a tenth of a core for 500 hosts."""
        delay = when - time.monotonic()
        if delay <= 0 or self._wake.is_set():
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(delay, _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake_up(self) -> None:
        self._wake.set()
        if self._waiter is not None:
            _settle(self._waiter)

    async def _poll_reporting(self) -> HostSnapshot:
        """poll_once(), while telling every interval that a failing host is still failing
        (a retry that hangs until its deadline must not freeze the host's age). A host that
        is not failing has nothing to tell meanwhile: polled directly, without a task."""
        if self.failures <= 0:
            return await self.poll_once()
        task = asyncio.ensure_future(self.poll_once())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.interval)
                if done:
                    return task.result()
                if self.failures > 0:
                    self._deliver(self._still_failing(time.monotonic()))
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def run(self) -> None:
        """Poll until cancelled; closes what it opened on the way out."""
        try:
            next_due = time.monotonic() + self.start_delay
            while True:
                await self._sleep_until(next_due)
                if self.paused:
                    await self._running.wait()
                    next_due = time.monotonic()
                woken = self._wake.is_set()
                self._wake.clear()
                now = time.monotonic()
                # Retries fall on the interval's ticks: a quarter interval of slack keeps a
                # retry due "now" from slipping to the next tick by a scheduling jitter.
                if self.failures and now < self._retry_at - self.interval / 4 and not woken:
                    self._deliver(self._still_failing(now))
                else:
                    self._deliver(await self._poll_reporting())
                next_due += self.interval
                now = time.monotonic()
                if next_due <= now:
                    # The poll overran its slot. A host that answered (slowly) is polled again
                    # at once, the freshest data it can give; a failing one waits an interval.
                    next_due = now if not self.failures else now + self.interval
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self.collector.aclose()


class Fleet:
    """The pollers of every host in `targets`, run together (see the module docstring)."""

    def __init__(self, targets: Targets, on_snapshot: SnapshotCallback | None = None, *,
                 stagger: bool = True) -> None:
        self.targets = targets
        self.on_snapshot = on_snapshot
        n = len(targets.hosts)
        spread = min(targets.settings.interval, 1.0) if stagger and n > 1 else 0.0
        self.pollers = [
            HostPoller(i, host, targets.settings, self._deliver,
                       start_delay=spread * i / n)
            for i, host in enumerate(targets.hosts)
        ]
        self._mailbox: asyncio.Queue[tuple[int, HostSnapshot]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def latest(self) -> list[HostSnapshot | None]:
        return [p.latest for p in self.pollers]

    def _deliver(self, index: int, snap: HostSnapshot) -> None:
        if self._mailbox is not None:
            self._mailbox.put_nowait((index, snap))
        if self.on_snapshot is not None:
            self.on_snapshot(index, snap)

    def start(self) -> None:
        """Start every poller as a task of the running loop (idempotent)."""
        if self._tasks:
            return
        for p in self.pollers:
            self._tasks.append(asyncio.create_task(p.run(), name=f"poll {p.host.name}"))

    async def run(self) -> None:
        """Start (if needed) and wait until cancelled; stops every poller on the way out."""
        self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.aclose()

    async def __aiter__(self) -> AsyncIterator[tuple[int, HostSnapshot]]:
        """(host index, snapshot) as they come; starts the pollers if needed."""
        if self._mailbox is None:
            self._mailbox = asyncio.Queue()
        self.start()
        while True:
            yield await self._mailbox.get()

    def pause(self) -> None:
        for p in self.pollers:
            p.pause()

    def resume(self) -> None:
        for p in self.pollers:
            p.resume()

    def poll_now(self, index: int | None = None) -> None:
        for p in self.pollers if index is None else [self.pollers[index]]:
            p.poll_now()

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

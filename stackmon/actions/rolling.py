"""A rolling reload: a group of hosts reloaded one at a time (or N), each back to normal first.

What on-call does by hand after a deploy, and what the seed outage was about: reloading every
host at once takes the whole group's workers through their mercy together, and a host whose
health check times out during the drain is taken out by the load balancer. So each host goes
through, in order:

1. a graceful reload of each of its uWSGI instances (Host.reload: the same checks and audit
   records as a single `stackmon reload`);
2. the drain followed until every worker is replaced (Host.follow; its own deadline is the
   mercy plus a margin);
3. settling: polls until the host's health check (when it has a `health` URL) has passed with
   a probe started after the drain, and every listen queue is back under the health model's
   warning level (stackmon.health.queue_severity "ok"), within `settle_timeout`.

The roll stops at the first host that fails any step, saying which host, which step and why;
hosts already in flight (max_unavailable > 1) are followed to their end, none is started after.
A host that the load balancer would take out (its health check failing for its whole
unhealthy threshold) fails at once rather than waiting out the settle timeout. A host that
stops answering while it drains or settles (its agent killed, its link cut) fails after
`unreachable_timeout`, naming why, rather than waiting out the mercy plus margin (the drain
would otherwise be blamed on "the master is re-executing") or the settle timeout; uWSGI alone
being away is the reload itself (the master re-execs and loads the app) and is not counted.

How this is tested: tests/test_rolling.py on stacks sharing loopback, and
tests/test_rolling_netns.py on three hosts in their own network namespaces, each a real
uWSGI + nginx with its agent, checked against the agents' audit logs, /proc and `ss`.

Every step is appended to the audit log (action "rolling reload", with `step` and `position`),
besides the records Host.reload and Host.follow write themselves; a step that cannot be audited
stops the roll. `on_step` receives a RollStep for every change, for a CLI or a screen.

This is core: no terminal, no Textual; `stackmon reload --group G --rolling` and the TUI drive
it the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError
from stackmon.actions.reload_progress import ReloadProgress
from stackmon.health import queue_severity, queues
from stackmon.hosts import Host
from stackmon.model import HostSnapshot

T = TypeVar("T")
Phase = Literal["waiting", "reloading", "draining", "settling", "done", "failed"]
ACTION = "rolling reload"


@dataclass(frozen=True, slots=True)
class RollPolicy:
    """How a roll proceeds. settle_timeout: how long a reloaded host may take to pass its
    health check and empty its queues (the LB's own window is health_interval x
    unhealthy_threshold: 60 s with ELB defaults)."""

    max_unavailable: int = 1
    mode: str = "graceful"
    instance: int | None = None  # None: every uWSGI instance of each host, in order
    settle_timeout: float = 60.0
    poll_interval: float = 0.5
    # A host in its drain or settling that answers nothing for this long stops the roll.
    unreachable_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class RollStep:
    """One change in the roll, for a progress display."""

    host: str
    position: int  # 1-based place of the host in the roll
    total: int
    phase: Phase
    message: str
    reload: ReloadProgress | None = None  # while draining


@dataclass(frozen=True, slots=True)
class RollResult:
    ok: bool
    done: tuple[str, ...]  # hosts reloaded and settled, in the order they finished
    failed: tuple[tuple[str, str], ...] = ()  # (host, reason)
    not_started: tuple[str, ...] = ()
    seconds: float = 0.0
    steps: tuple[RollStep, ...] = field(default=(), repr=False)

    @property
    def message(self) -> str:
        total = len(self.done) + len(self.failed) + len(self.not_started)
        if self.ok:
            return f"rolling reload done: {total} hosts reloaded in {self.seconds:.0f} s"
        host, reason = self.failed[0]
        rest = (f"; not started: {', '.join(self.not_started)}" if self.not_started else "")
        return (f"rolling reload stopped at {host}: {reason} ({len(self.done)}/{total} hosts "
                f"done{rest})")


class HostFailed(Exception):
    """A host did not come through a step; str() is the reason shown and audited."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step


class _Roll:
    """One run of a rolling reload (see the module docstring)."""

    def __init__(self, hosts: Sequence[Host], policy: RollPolicy, audit: AuditLog,
                 on_step: Callable[[RollStep], None] | None, group: str | None) -> None:
        self.hosts = list(hosts)
        self.policy = policy
        self.audit = audit
        self.on_step = on_step
        self.group = group
        self.steps: list[RollStep] = []
        self.done: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.started: set[int] = set()

    # --- reporting -------------------------------------------------------------------------

    def step(self, pos: int, phase: Phase, message: str,
             reload: ReloadProgress | None = None) -> None:
        s = RollStep(self.hosts[pos].name, pos + 1, len(self.hosts), phase, message, reload)
        self.steps.append(s)
        if self.on_step is not None:
            self.on_step(s)

    def record(self, pos: int, step: str, outcome: str, message: str, **extra: Any) -> None:
        self.audit.record(host=self.hosts[pos].name, action=ACTION, outcome=outcome,
                          message=message, step=step, position=pos + 1, of=len(self.hosts),
                          group=self.group, **extra)

    # --- one host ----------------------------------------------------------------------------

    async def run_host(self, pos: int) -> None:
        host = self.hosts[pos]
        started = time.monotonic()
        self.record(pos, "host", "started", f"reloading {host.name} ({pos + 1} of "
                                            f"{len(self.hosts)})")
        try:
            for index in await self.instances(pos):
                await self.reload_instance(pos, index)
            await self.settle(pos, time.time())
        except HostFailed as exc:
            self.failed.append((host.name, str(exc)))
            self.step(pos, "failed", str(exc))
            self.record(pos, exc.step, "failed", str(exc))
            return
        took = time.monotonic() - started
        self.done.append(host.name)
        self.step(pos, "done", f"{host.name}: reloaded and healthy in {took:.1f} s")
        self.record(pos, "host", "ok", f"{host.name} reloaded and settled",
                    seconds=round(took, 1))

    async def instances(self, pos: int) -> list[int]:
        """The instances to reload: the one asked for, or every instance the host shows now
        (an agent host's count is known only from its snapshot); emperors are not reloaded."""
        if self.policy.instance is not None:
            return [self.policy.instance]
        snap = await self.hosts[pos].poll()
        if not snap.reachable:
            raise HostFailed("reload", f"host unreachable before its reload: {_why(snap)}")
        found = [u.index for u in snap.uwsgi if u.kind == "instance"]
        if not found:
            raise HostFailed("reload", "no uWSGI instance answers on this host: "
                                       f"{_why(snap)}")
        return found

    async def reload_instance(self, pos: int, index: int) -> None:
        host = self.hosts[pos]
        self.step(pos, "reloading", f"{host.name}: {self.policy.mode} reload of instance "
                                    f"{index}")
        try:
            result = await host.reload(index, self.policy.mode, audit=self.audit)
        except ActionError as exc:
            raise HostFailed("reload", f"reload of instance {index} refused: "
                                       f"{exc.message}") from None
        if not result.ok:
            raise HostFailed("reload", f"reload of instance {index} failed: {result.message}")
        heard = [time.monotonic()]  # the last sample the follow got of the instance

        def on_progress(p: ReloadProgress) -> None:
            if p.stats_available:
                heard[0] = time.monotonic()
            self.step(pos, "draining", f"{host.name}: {p.message}", p)

        progress = await self.watched(pos, host.follow(index, result, on_progress,
                                                       audit=self.audit), heard)
        if not progress.done:
            raise HostFailed("drain", f"instance {index}: not every worker was replaced: "
                                      f"{progress.message}")
        self.record(pos, "drain", "ok", f"instance {index}: {progress.message}",
                    instance=index, seconds=round(progress.elapsed, 1))

    async def watched(self, pos: int, work: Awaitable[T], heard: list[float]) -> T:
        """`work` (a follow), stopped with HostFailed once the host has not answered for
        `unreachable_timeout`. A follow alone only sees "no sample" and would wait out the
        mercy and margin; `heard[0]` is when it last had one (monotonic)."""
        task = asyncio.ensure_future(work)
        watch = asyncio.create_task(self.watch(pos, heard))
        try:
            done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            watch.result()  # raises HostFailed
            raise AssertionError("the watch ends only by raising")  # pragma: no cover
        finally:
            for t in (task, watch):
                t.cancel()
            await asyncio.gather(task, watch, return_exceptions=True)

    async def watch(self, pos: int, heard: list[float]) -> None:
        """While the follow gets samples, nothing; after `unreachable_timeout` without one,
        a poll says whether the host itself is out of reach (HostFailed) or only its uWSGI
        is away (the reload itself: the follow's own deadline covers it)."""
        limit = self.policy.unreachable_timeout
        while True:
            await asyncio.sleep(self.policy.poll_interval)
            if time.monotonic() - heard[0] < limit:
                continue
            snap = await self.hosts[pos].poll()
            if _lost(snap):
                raise HostFailed("drain", f"host unreachable for {limit:g} s during its "
                                          f"drain: {_why(snap)}")
            heard[0] = time.monotonic()

    async def settle(self, pos: int, drained_at: float) -> None:
        """Poll until the health check passes (a probe started after the drain) and the
        queues are back to normal; HostFailed when the LB would take the host out or the
        settle timeout passes, with what was still wrong."""
        host = self.hosts[pos]
        deadline = time.monotonic() + self.policy.settle_timeout
        lost_since: float | None = None
        while True:
            snap = await host.poll()
            waiting = _not_settled(snap, drained_at)
            if not waiting:
                break
            lost_since = (lost_since or time.monotonic()) if _lost(snap) else None
            if lost_since is not None and \
                    time.monotonic() - lost_since >= self.policy.unreachable_timeout:
                raise HostFailed("settle", f"host unreachable for "
                                           f"{self.policy.unreachable_timeout:g} s after its "
                                           f"reload: {_why(snap)}")
            if _probed_since(snap, drained_at) and snap.health and snap.health.out_of_service:
                raise HostFailed("health", f"the load balancer would take it out: "
                                           f"{waiting}")
            if time.monotonic() > deadline:
                raise HostFailed("settle", f"not back to normal "
                                           f"{self.policy.settle_timeout:g} s after the "
                                           f"reload: {waiting}")
            self.step(pos, "settling", f"{host.name}: waiting: {waiting}")
            await asyncio.sleep(self.policy.poll_interval)
        what = "health check passed, queues normal" if host.config.health else "queues normal"
        self.record(pos, "settle", "ok", f"{host.name}: {what}")

    # --- the whole roll ----------------------------------------------------------------------

    async def run(self) -> None:
        """max_unavailable hosts at a time, in order; none started after a failure."""
        next_pos = 0
        running: dict[asyncio.Task[None], int] = {}
        while next_pos < len(self.hosts) or running:
            while (not self.failed and next_pos < len(self.hosts)
                   and len(running) < self.policy.max_unavailable):
                self.started.add(next_pos)
                running[asyncio.create_task(self.run_host(next_pos))] = next_pos
                next_pos += 1
            if not running:
                break
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                running.pop(task)
                task.result()  # an AuditWriteError or a bug: stop here, loudly


def _why(snap: HostSnapshot) -> str:
    return "; ".join(f"{e.source}: {e.message}" for e in snap.errors) or "no answer"


def _lost(snap: HostSnapshot) -> bool:
    """Whether the host itself is out of reach: nothing answered, and not only its uWSGI
    stats (errors named "uwsgi ADDR" by the stats source), which a reload takes away while
    the master re-execs and loads the app."""
    return not snap.reachable and not all(e.source.startswith("uwsgi ") for e in snap.errors)


def _probed_since(snap: HostSnapshot, when: float) -> bool:
    """Whether the host's latest health check is from a probe started at or after `when`
    (a verdict from before the drain ended says nothing about the reloaded workers)."""
    check = snap.health
    if check is None or check.ok is None or check.checked_at is None:
        return False
    return check.checked_at - (check.last_ms or 0.0) / 1000.0 >= when


def _not_settled(snap: HostSnapshot, drained_at: float) -> str:
    """What keeps `snap` from counting as back to normal ("" when nothing)."""
    if not snap.reachable:
        return f"host unreachable ({_why(snap)})"
    problems: list[str] = []
    check = snap.health
    if check is not None:
        if not _probed_since(snap, drained_at):
            problems.append("health check not yet probed since the reload")
        elif not check.ok:
            problems.append(f"health check failing ({check.last_error or 'not 200'}, "
                            f"{check.failures_in_row} in a row)")
    full = [f"{name} {depth}/{backlog}" for name, depth, backlog in queues(snap)
            if backlog > 0 and queue_severity(depth, backlog) != "ok"]
    if full:
        problems.append("listen queue " + ", ".join(full))
    if not any(u.workers for u in snap.uwsgi if u.kind == "instance"):
        problems.append("no uWSGI workers seen yet")
    return "; ".join(problems)


async def rolling_reload(hosts: Sequence[Host], *, audit: AuditLog,
                         policy: RollPolicy | None = None,
                         on_step: Callable[[RollStep], None] | None = None,
                         group: str | None = None) -> RollResult:
    """Reload `hosts` in order, `policy.max_unavailable` at a time, each settled before the
    next starts; stop at the first failure. Read-only hosts refuse the whole roll before
    anything is done (ActionError), audited."""
    policy = policy or RollPolicy()
    if policy.max_unavailable < 1:
        raise ActionError("bad_request", "--max-unavailable must be 1 or more")
    if not hosts:
        raise ActionError("not_found", "no hosts to reload")
    for h in hosts:
        if h.read_only:
            names = ", ".join(x.name for x in hosts if x.read_only)
            audit.record(host=h.name, action=ACTION, outcome="refused: read_only",
                         message=f"read-only hosts in the roll: {names}", group=group)
            raise ActionError("read_only", f"read-only mode: {names} cannot be reloaded; "
                                           "nothing was done")
    roll = _Roll(hosts, policy, audit, on_step, group)
    started = time.monotonic()
    await roll.run()
    not_started = tuple(h.name for i, h in enumerate(hosts) if i not in roll.started)
    return RollResult(ok=not roll.failed, done=tuple(roll.done), failed=tuple(roll.failed),
                      not_started=not_started, seconds=time.monotonic() - started,
                      steps=tuple(roll.steps))

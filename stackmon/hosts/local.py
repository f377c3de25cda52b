"""This machine's host: stats servers, stub_status, the kernel and /proc read here, actions
taken here (signals and the master FIFO, after the kernel confirms the target)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.actions.kill import fetch_instance, kill_worker
from stackmon.actions.reload import reload_uwsgi
from stackmon.actions.reload_progress import (
    ReloadFacts,
    ReloadProgress,
    follow_reload,
    reload_facts,
)
from stackmon.actions.stack import StackResult, find_py_spy, trace_worker
from stackmon.addresses import AddressError, StatsAddress, parse_stats_address
from stackmon.collect import (
    NGINX_RESCAN,
    LocalFacts,
    gather_local_facts,
    merge_kernel_queues,
    vassal_addresses,
)
from stackmon.config import HostConfig, Settings
from stackmon.deadlines import DeadlinePlan, annotate, plan_for
from stackmon.hosts.base import Host
from stackmon.hosts.local_logs import nginx_specs, uwsgi_specs
from stackmon.logs.host import HostLogs, LogSummary
from stackmon.logs.uwsgi_events import Event
from stackmon.model import HostSnapshot, NginxStatus, RequestKey, SourceError, UwsgiInstance
from stackmon.sources.lb_probe import HealthProbe, ProbePolicy
from stackmon.sources.nginx_status import StubStatusClient
from stackmon.sources.uwsgi_stats import poll_stats

if TYPE_CHECKING:
    from stackmon.record.history import HistoryLimits, HistoryPage

# How often the logs' locations are looked up again (a config edited and reloaded names new
# files); sooner when a master's pid changes.
LOG_REDISCOVER_S = 60.0
# How often every monitored process's fds are listed (/proc/PID/fd): accept queues are read
# every poll, fds move slowly and the listing was the poll's largest cost; sooner whenever
# the set of processes changes (a respawn, a reload).
FD_RESCAN_S = 5.0
# An emperor may run many vassals; each found with a stats server is polled as an instance.
MAX_VASSALS = 256
MAX_PENDING_EVENTS = 200


NAMES_KEPT = 4096  # request names remembered before the old ones are dropped
NAMES_KEPT_S = 600.0  # ... and those not seen for this long, when they are

def aged(inst: UwsgiInstance, sampled: float, now: float) -> UwsgiInstance:
    """`inst` (sampled at `sampled`) standing in at `now`: marked stale since then, its
    requests as they were then. Their ages are not grown from their start times: nobody knows
    whether they still run (a review stopped the master and watched a 0.9 s /slow, ended per
    nginx's log, age into CRIT with a made-up "nginx 504 in 35 s"). The screen says how old
    the data is and shows those ages as "at least"."""
    return replace(inst, stale_s=max(0.0, now - sampled))


@functools.lru_cache(maxsize=1)
def _py_spy_found() -> bool:
    """Looked up once: the TUI asks on every key and Footer refresh."""
    return find_py_spy() is not None


class LocalHost(Host):
    """Polls this machine's sources; holds the previous samples that rates need, the logs it
    follows and the LB probe."""

    def __init__(self, config: HostConfig, settings: Settings) -> None:
        super().__init__(config, settings)
        self._nginx = StubStatusClient(config.nginx) if config.nginx else None
        self._nginx_roles: dict[int, str] | None = None
        self._nginx_roles_at = 0.0
        self._last_instances: dict[int, tuple[UwsgiInstance, float]] = {}
        # "GET /x" of each request seen lately, by (instance, worker, RequestKey): a refused
        # kill names what it was for though the polls since no longer show it.
        self._request_names: dict[tuple[int, int, RequestKey], tuple[str, float]] = {}
        self._pending_events: list[Event] = []
        self._deadline_plan: DeadlinePlan | None = None
        self._last_facts: LocalFacts | None = None
        self._fd_scan_at = 0.0
        self._vassals: dict[StatsAddress, int] = {}  # an emperor's vassals: address -> index
        self._logs: HostLogs | None = None
        self._logs_key: tuple[object, ...] = ()
        self._logs_at = 0.0
        self.probe = None if config.health is None else HealthProbe(config.health, ProbePolicy(
            timeout=settings.health_timeout, interval=settings.health_interval,
            unhealthy_threshold=settings.unhealthy_threshold, window=settings.window))

    # --- polling ------------------------------------------------------------------------------

    async def sample_nginx(self) -> NginxStatus | SourceError | None:
        """One stub_status sample (kept for the next one's request rate)."""
        if self._nginx is None:
            return None
        return await self._nginx.sample(self.settings.timeout)

    def _carry_stale(self, results: list[tuple[int, UwsgiInstance | SourceError]],
                     now: float) -> list[UwsgiInstance]:
        """This poll's instances, with the last good sample standing in for each instance whose
        stats did not answer (a master stopped, busy or hung: exactly when its stuck requests
        matter most). The stand-in says how old it is (stale_s) and keeps its requests as they
        were then (see aged); its master and workers are still scanned for fds and queues,
        which need no stats server."""
        out: list[UwsgiInstance] = []
        for index, result in results:
            if isinstance(result, UwsgiInstance):
                out.append(result)
            elif (last := self._last_instances.get(index)) is not None:
                out.append(aged(*last, now))
        return out

    async def prime(self) -> None:
        if self.probe is not None:
            self.probe.kick()
        await self.sample_nginx()

    async def aclose(self) -> None:
        if self._nginx is not None:
            self._nginx.close()
        if self.probe is not None:
            await self.probe.aclose()
        if self._logs is not None:
            logs, self._logs = self._logs, None
            await asyncio.to_thread(logs.close)

    def _follow_logs(self, instances: list[UwsgiInstance],
                     nginx_roles: dict[int, str]) -> LogSummary | None:
        """This poll's log summary (in the poll's worker thread: plain file reads); the logs'
        locations are looked up on the first poll, when a master changes, and every minute."""
        key = (tuple((i.index, i.master_pid) for i in instances),
               tuple(sorted(p for p, r in nginx_roles.items() if r == "nginx-master")))
        due = time.monotonic() - self._logs_at > LOG_REDISCOVER_S
        if self._logs is None or key != self._logs_key or due:
            specs = nginx_specs(self.config, nginx_roles) + uwsgi_specs(
                self.config, instances, dict(self._addresses()))
            old = self._logs
            if old is None or [s.path for s in specs] != old.paths:
                self._logs = HostLogs(specs, window_s=self.settings.window) if specs else None
                if old is not None:
                    old.close()
            self._logs_key, self._logs_at = key, time.monotonic()
        if self._logs is None:
            return None
        while self._pending_events:
            self._logs.record(self._pending_events.pop(0))
        return self._logs.poll()

    def _local_facts(self, instances: list[UwsgiInstance],
                     roles: dict[int, str] | None) -> tuple[LocalFacts, LogSummary | None]:
        """Everything of a poll that reads files (in the poll's worker thread): the kernel's
        facts, the logs, and (refreshed when due) what the deadlines need from the configs."""
        fresh = time.monotonic() - self._fd_scan_at >= FD_RESCAN_S
        facts = gather_local_facts(instances, self.config.nginx, roles,
                                   previous=None if fresh else self._last_facts)
        if facts.rescanned:  # due, or the processes changed
            self._fd_scan_at = time.monotonic()
        self._last_facts = facts
        nginx_roles = facts.nginx_roles or {}
        self._plan_deadlines(instances, nginx_roles)
        return facts, self._follow_logs(instances, nginx_roles)

    def _plan_deadlines(self, instances: list[UwsgiInstance],
                        nginx_roles: dict[int, str]) -> None:
        masters = sorted(p for p, r in nginx_roles.items() if r == "nginx-master")
        nginx_master = masters[0] if masters else None
        plan = self._deadline_plan
        if plan is None or plan.due(instances, nginx_master):
            self._deadline_plan = plan_for(self.config, self.settings, instances, nginx_master,
                                           addresses=dict(self._addresses()), previous=plan)

    def _remember_names(self, instances: Sequence[UwsgiInstance], now: float) -> None:
        """Each request in flight by name, kept NAMES_KEPT_S after it was last seen."""
        for inst in instances:
            for w in inst.workers:
                for key, r in w.requests_by_key().items():
                    self._request_names[(inst.index, w.id, key)] = (f"{r.method} {r.uri}", now)
        if len(self._request_names) > NAMES_KEPT:  # bounded: the newest half stays
            newest = sorted(self._request_names.items(), key=lambda kv: kv[1][1])
            self._request_names = {k: v for k, v in newest[-NAMES_KEPT // 2:]
                                   if now - v[1] <= NAMES_KEPT_S}

    def requests_named(self, index: int, worker_id: int,
                       keys: Sequence[RequestKey] | None) -> str | None:
        """`GET /x, GET /y`: the requests of `keys` as this host's polls saw them (a refused
        kill's event names what it was for: the kill's own read no longer has them, and the
        row said only "core 0")."""
        named = [got[0] for k in keys or ()
                 if (got := self._request_names.get((index, worker_id, k))) is not None]
        return ", ".join(named) or None

    def record_event(self, kind: str, text: str, *, worker: int | None = None,
                     pid: int | None = None, uri: str | None = None) -> None:
        """An action stackmon took, shown among the log events (source "stackmon").

        Queued here and handed to the logs by the next poll, in the poll's thread: HostLogs is
        not thread-safe, and actions run on the event loop while polls read in a worker."""
        self._pending_events.append(Event(at=time.time(), source="stackmon", kind=kind,
                                          worker=worker, pid=pid, uri=uri, text=text))

    def _probe_news(self) -> None:
        """The LB probe's failing streaks as events (source "stackmon", kinds lb_out, lb_in,
        health_fail), at the moment they say: the events screen keeps stackmon's events for
        the session, so an outage the LB would have noticed stays on record after "fails"
        went back to 0 (a review found no trace of a 16 s streak of 502s)."""
        assert self.probe is not None
        for kind, at, text in self.probe.take_news():
            self._pending_events.append(Event(at=at, source="stackmon", kind=kind, worker=None,
                                              pid=None, uri=None, text=text))
        # Handed to the logs by the next poll; a host whose logs are not found keeps only
        # the newest (a flapping health check must not grow this without bound).
        del self._pending_events[:-MAX_PENDING_EVENTS]

    @property
    def traceable(self) -> bool:
        return bool(self.config.uwsgi or self._vassals)

    @property
    def captures_stacks(self) -> bool:
        return self.traceable and _py_spy_found()

    def _addresses(self) -> list[tuple[int, StatsAddress]]:
        """What to poll: the configured instances, then the vassals of emperors found so far
        (each keeps the index it was first given, so actions never shift to another one)."""
        configured = list(enumerate(self.config.uwsgi))
        return configured + [(i, a) for a, i in self._vassals.items()]

    def _learn_vassals(self, instances: tuple[UwsgiInstance, ...]) -> bool:
        """Remember the stats addresses of the emperors' vassals; True when there are new
        ones (an emperor host then shows one instance per vassal)."""
        known = {str(a) for a in self.config.uwsgi} | {str(a) for a in self._vassals}
        new = False
        for inst in instances:
            if inst.kind != "emperor":
                continue
            for text in vassal_addresses(inst):
                try:
                    addr = parse_stats_address(text)
                except AddressError:
                    continue
                if str(addr) not in known and len(self._vassals) < MAX_VASSALS:
                    self._vassals[addr] = len(self.config.uwsgi) + len(self._vassals)
                    known.add(str(addr))
                    new = True
        return new

    async def _uwsgi(self, index: int, address: StatsAddress) -> UwsgiInstance | SourceError:
        # poll_stats parses big documents in a thread and small ones inline (a thread hop
        # costs more than parsing a few workers).
        got = await poll_stats(address, self.settings.thresholds, timeout=self.settings.timeout)
        return replace(got, index=index) if isinstance(got, UwsgiInstance) and index else got

    async def poll(self) -> HostSnapshot:
        snap, new_vassals = await self._poll_round()
        if new_vassals:  # an emperor named vassals with stats: show them in this very poll
            snap, _ = await self._poll_round()
        return snap

    async def _poll_round(self) -> tuple[HostSnapshot, bool]:
        taken_at = time.time()
        addresses = self._addresses()
        results = await asyncio.gather(
            *(self._uwsgi(i, a) for i, a in addresses),
            self.sample_nginx(),
        )
        *uwsgi_results, nginx_result = results
        nginx = nginx_result if isinstance(nginx_result, NginxStatus | SourceError) else None
        errors: list[SourceError] = [r for r in uwsgi_results if isinstance(r, SourceError)]
        fresh = [r for r in uwsgi_results if isinstance(r, UwsgiInstance)]
        self._last_instances.update((i.index, (i, taken_at)) for i in fresh)
        self._remember_names(fresh, taken_at)
        if isinstance(nginx, SourceError):
            errors.append(nginx)
            nginx = None
        if self.probe is not None:
            self.probe.kick()
            self._probe_news()
        if not fresh and nginx is None and errors:  # nothing answered: the host is unreachable
            return self.unreachable(taken_at, errors), False
        # Stale ages are said as of now, when the snapshot is made: from `taken_at`, the
        # poll's start, "STALE 5s" lagged the truth by the stats' timeout (a review: 8 s).
        instances = self._carry_stale(
            [(i, r) for (i, _), r in zip(addresses, uwsgi_results, strict=True)
             if isinstance(r, UwsgiInstance | SourceError)], time.time())
        stale_roles = time.monotonic() - self._nginx_roles_at > NGINX_RESCAN
        facts, logs = await asyncio.to_thread(self._local_facts, instances,
                                              None if stale_roles else self._nginx_roles)
        if facts.nginx_roles is not self._nginx_roles:
            self._nginx_roles = facts.nginx_roles or None
            self._nginx_roles_at = time.monotonic() if facts.nginx_roles else 0.0
        errors.extend(facts.errors)
        if logs is not None:  # a log that is "not a file" is a note of the log panel, not a fault
            errors.extend(SourceError(f"{st.kind} log", f"{st.path}: {st.error}")
                          for st in logs.sources if st.error and st.path is not None)
        merged = tuple(merge_kernel_queues(i, facts.listeners) for i in instances)
        snap = HostSnapshot(
            name=self.name, taken_at=taken_at, reachable=True, stale_s=None,
            errors=tuple(errors),
            uwsgi=merged,
            nginx=nginx, listeners=facts.listeners, fds=facts.fds, kernel=facts.kernel,
            group=self.config.group, logs=logs,
            health=self.probe.state() if self.probe is not None else None,
        )
        if self._deadline_plan is not None:
            snap = annotate(snap, self._deadline_plan)
        self.last_good = snap
        return snap, self._learn_vassals(merged)

    # --- actions ------------------------------------------------------------------------------

    def target(self, index: int) -> ActionTarget:
        """Instance `index` as an action target; not_found when the host has no such one."""
        address = dict(self._addresses()).get(index)
        if address is None:
            vassals = f" and {len(self._vassals)} vassals" if self._vassals else ""
            raise ActionError("not_found", f"host {self.name!r} has no uwsgi instance {index} "
                                           f"(it has {len(self.config.uwsgi)}{vassals})")
        return ActionTarget(host=self.name, address=address, index=index,
                            read_only=self.read_only, timeout=self.settings.timeout)

    async def current_instance(self, index: int) -> UwsgiInstance:
        return await fetch_instance(self.target(index))

    async def kill(self, index: int, worker_id: int, expect_pid: int, signal: str, *,
                   audit: AuditLog, expect_spawn: float | None = None,
                   usr2_first: bool = False,
                   stack: dict[str, Any] | None = None,
                   expect_requests: Sequence[RequestKey] | None = None) -> ActionResult:
        try:
            result = await kill_worker(self.target(index), worker_id, expect_pid,
                                       signal,  # type: ignore[arg-type]  # kill_worker checks
                                       expect_spawn=expect_spawn, usr2_first=usr2_first,
                                       audit=audit, stack=stack,
                                       expect_requests=expect_requests)
        except ActionError as exc:
            self.record_kill(index, worker_id, expect_pid, signal, refused=exc,
                             expect_requests=expect_requests)
            raise
        self.record_kill(index, worker_id, expect_pid, signal, result=result)
        return result

    def record_kill(self, index: int, worker_id: int, pid: int, signal: str, *,
                    result: ActionResult | None = None, refused: ActionError | None = None,
                    expect_requests: Sequence[RequestKey] | None = None) -> None:
        """A kill as an event of this host (here and in the agent, which kills through
        kill_worker itself): `killed` with the requests it aborted (the uri column read "-"
        for every kill), or `kill_refused` with the requests it was for (a refusal was only
        in the audit log, then named only "core 0")."""
        if refused is not None:
            self.record_event("kill_refused", f"kill {signal} refused ({refused.kind}): "
                                              f"{refused.message}", worker=worker_id, pid=pid,
                              uri=self.requests_named(index, worker_id, expect_requests))
            return
        assert result is not None
        aborted = [f"{r.get('method', '')} {r.get('uri', '')}".strip()  # redacted at the parse
                   for r in result.data.get("requests") or () if isinstance(r, dict)]
        self.record_event("killed", result.message, worker=worker_id, pid=pid,
                          uri=", ".join(aborted) or None)

    async def trace(self, index: int, worker_id: int, expect_pid: int, *,
                    with_locals: bool = False,
                    expect_spawn: float | None = None) -> StackResult:
        return await trace_worker(self.target(index), worker_id, expect_pid,
                                  with_locals=with_locals, expect_spawn=expect_spawn)

    async def reload(self, index: int, mode: str, *, audit: AuditLog,
                     expect_master: int | None = None) -> ActionResult:
        result = await reload_uwsgi(self.target(index),
                                    mode,  # type: ignore[arg-type]  # checked by reload_uwsgi
                                    audit=audit, expect_master=expect_master)
        self.record_event("reload" if mode == "graceful" else "chain_reload", result.message,
                          pid=result.data.get("master_pid"))
        return result

    async def follow(self, index: int, result: ActionResult,
                     on_progress: Callable[[ReloadProgress], None], *,
                     audit: AuditLog) -> ReloadProgress:
        return await follow_reload(self.target(index), result, on_progress,
                                   audit=audit)

    def reload_facts(self, index: int, inst: UwsgiInstance) -> ReloadFacts | None:
        try:
            return reload_facts(self.target(index), inst)
        except ActionError:  # no such instance any more
            return None

    async def history_pages(self, since: float | None = None, until: float | None = None, *,
                            limits: HistoryLimits | None = None,
                            ) -> AsyncIterator[HistoryPage]:
        """This host's polls in its recording file (`recording`), when it has one."""
        from stackmon.record.history import HistoryError, HistoryLimits, recording_pages

        if not self.recording:
            raise HistoryError(f"host {self.name!r} is read on this machine and no recording "
                               "of it is configured: record it (stackmon record, stackmon "
                               "--record FILE) and replay the file")
        async for page in recording_pages(self.recording, self.name, self.config.group, since,
                                          until, limits or HistoryLimits()):
            yield page

"""One poll of one host: every source fetched concurrently, then assembled into a HostSnapshot.

A HostCollector keeps what a poll needs from the previous one (the last nginx sample for the
request rate, the last good snapshot for staleness). Sources fail independently: nginx down and
uWSGI fine gives a partial snapshot with the reason in `errors`; nothing at all gives an
unreachable snapshot that still carries the last good data and its age.

Kernel facts (queues from sock_diag, fds from /proc) are attributed to the monitored processes
only: the uWSGI masters and workers named by their own stats, and the nginx whose listener serves
the configured stub_status URL.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from stackmon.config import HostConfig, Settings, Targets
from stackmon.model import (
    FdReport,
    HostSnapshot,
    KernelCounters,
    Listener,
    NginxStatus,
    Snapshot,
    SourceError,
    UwsgiInstance,
)
from stackmon.sources import kernel
from stackmon.sources.nginx_status import fetch_stub_status
from stackmon.sources.uwsgi_stats import poll_stats

# How long the nginx processes found behind the status URL are trusted before /proc is scanned
# again (sooner when one of them exits).
NGINX_RESCAN = 30.0

if TYPE_CHECKING:
    from stackmon.agent.client import AgentSource


@dataclass(frozen=True, slots=True)
class LocalFacts:
    listeners: tuple[Listener, ...]
    fds: FdReport
    kernel: KernelCounters
    errors: tuple[SourceError, ...]
    nginx_roles: dict[int, str] = field(default_factory=dict)


def _nginx_pids(url: str | None, raw: list[kernel.RawListener]) -> dict[int, str]:
    """The nginx master and workers whose listener serves `url` ({} when not on this host).

    Several nginx instances may run on one host (the system's and a private one): only the one
    holding a listener on the URL's port is monitored.
    """
    if not url:
        return {}
    parts = urlsplit(url)
    port = str(parts.port or (443 if parts.scheme == "https" else 80))
    inodes = {li.inode for li in raw if li.kind == "tcp" and li.address.rsplit(":", 1)[-1] == port}
    if not inodes:
        return {}
    procs = kernel.processes_named("nginx")
    roles = kernel.nginx_roles(procs)
    parent = dict(procs)
    masters = set()
    for pid, _ppid in procs:
        if kernel.socket_inodes(pid) & inodes:
            masters.add(pid if roles.get(pid) == "nginx-master" else parent[pid])
    return {pid: role for pid, role in roles.items()
            if pid in masters or parent.get(pid) in masters}


def _uwsgi_roles(instances: list[UwsgiInstance]) -> dict[int, str]:
    roles: dict[int, str] = {}
    for inst in instances:
        if inst.master_pid > 0:
            roles[inst.master_pid] = "uwsgi-master"
        for w in inst.workers:
            if w.pid > 0:
                roles.setdefault(w.pid, "uwsgi-worker")
    return roles


def gather_local_facts(instances: list[UwsgiInstance], nginx_url: str | None,
                       nginx_roles: dict[int, str] | None = None) -> LocalFacts:
    """Queues, fds and kernel counters for the processes behind this host's targets.

    nginx_roles: the nginx processes found by an earlier poll; looked up again (a scan of
    /proc) only when not given. LocalFacts.nginx_roles says what was used, and is empty when
    one of them has gone (nginx restarted or reloaded: look again next time).
    """
    errors: list[SourceError] = []
    raw = kernel.listening_sockets()
    if isinstance(raw, SourceError):
        errors.append(raw)
        raw = []
    roles = _uwsgi_roles(instances)
    found = nginx_roles if nginx_roles is not None else _nginx_pids(nginx_url, raw)
    roles.update(found)
    scan = kernel.scan_processes(roles, sockets=kernel.masters(roles))
    errors.extend(scan.errors)
    counters, counter_errors = kernel.read_kernel_counters()
    errors.extend(counter_errors)
    if set(scan.vanished) & set(found):
        found = {}
    return LocalFacts(listeners=kernel.listeners_for(raw, scan.inode_pids, roles),
                      fds=scan.report, kernel=counters, errors=tuple(errors),
                      nginx_roles=found)


def _same_address(socket_name: str, listener: Listener) -> bool:
    if listener.kind == "unix":
        return socket_name == listener.address
    host, _, port = socket_name.rpartition(":")
    lhost, _, lport = listener.address.rpartition(":")
    if port != lport:
        return False
    return host in ("", "0.0.0.0", "*", lhost) or lhost in ("0.0.0.0", "[::]")


def merge_kernel_queues(inst: UwsgiInstance, listeners: tuple[Listener, ...]) -> UwsgiInstance:
    """Replace the stats' socket queues with the kernel's, which are exact and current.

    uWSGI reports 0/0 for unix sockets and samples TCP once a second; the kernel knows both
    the depth and the backlog the listen() call really got. listen_queue / listen_queue_max then
    describe the fullest socket, the one that decides whether connections are refused.
    """
    if not listeners:
        return inst
    # Only this instance's master's sockets: two instances may use the same relative name.
    own = [li for li in listeners if inst.master_pid in li.pids]
    sockets = []
    for s in inst.sockets:
        match = next((li for li in own if _same_address(s.name, li)), None)
        if match is not None:
            s = replace(s, queue=match.queue, max_queue=match.backlog, source="kernel")
        sockets.append(s)
    if not sockets:
        return inst
    worst = max(sockets, key=lambda s: (s.queue / s.max_queue if s.max_queue else 0, s.queue))
    return replace(inst, sockets=tuple(sockets), listen_queue=worst.queue,
                   listen_queue_max=worst.max_queue)


class HostCollector:
    """Polls one host; holds the previous samples that rates and staleness need.

    A local host is read from its sources here; a host with `agent = URL` is read through
    that agent (stackmon.agent.client.AgentSource: its own connection pool, the token from
    token_file, the agent's host object under the local name). Both fail the same way: an
    unreachable snapshot carrying the last good data and its age.
    """

    def __init__(self, host: HostConfig, settings: Settings) -> None:
        self.host = host
        self.settings = settings
        self.previous_nginx: NginxStatus | None = None
        self.last_good: HostSnapshot | None = None
        self._nginx_roles: dict[int, str] | None = None
        self._nginx_roles_at = 0.0
        self.agent: AgentSource | None = None
        if host.agent:
            from stackmon.agent.client import AgentSource

            self.agent = AgentSource(host, settings)

    async def aclose(self) -> None:
        """Release the agent connection pool (local hosts hold nothing of their own)."""
        if self.agent is not None:
            await self.agent.aclose()

    async def sample_nginx(self, client: httpx.AsyncClient) -> NginxStatus | SourceError | None:
        if not self.host.nginx:
            return None
        result = await fetch_stub_status(self.host.nginx, timeout=self.settings.timeout,
                                         previous=self.previous_nginx)
        if isinstance(result, NginxStatus):
            self.previous_nginx = result
        return result

    async def _uwsgi(self, index: int) -> UwsgiInstance | SourceError:
        # poll_stats parses big documents in a thread and small ones inline (a thread hop
        # costs more than parsing a few workers).
        got = await poll_stats(self.host.uwsgi[index], self.settings.thresholds,
                               timeout=self.settings.timeout)
        return replace(got, index=index) if isinstance(got, UwsgiInstance) and index else got

    async def poll(self, client: httpx.AsyncClient) -> HostSnapshot:
        taken_at = time.time()
        if self.agent is not None:
            return await self._poll_agent(self.agent, taken_at)
        results = await asyncio.gather(
            *(self._uwsgi(i) for i in range(len(self.host.uwsgi))),
            self.sample_nginx(client),
        )
        *uwsgi_results, nginx = results
        errors: list[SourceError] = [r for r in uwsgi_results if isinstance(r, SourceError)]
        instances = [r for r in uwsgi_results if isinstance(r, UwsgiInstance)]
        if isinstance(nginx, SourceError):
            errors.append(nginx)
            nginx = None
        if not instances and nginx is None and errors:
            return self._failed(taken_at, errors)
        stale_roles = time.monotonic() - self._nginx_roles_at > NGINX_RESCAN
        facts = await asyncio.to_thread(gather_local_facts, instances, self.host.nginx,
                                        None if stale_roles else self._nginx_roles)
        if facts.nginx_roles is not self._nginx_roles:
            self._nginx_roles = facts.nginx_roles or None
            self._nginx_roles_at = time.monotonic() if facts.nginx_roles else 0.0
        errors.extend(facts.errors)
        snap = HostSnapshot(
            name=self.host.name, taken_at=taken_at, reachable=True, stale_s=None,
            errors=tuple(errors),
            uwsgi=tuple(merge_kernel_queues(i, facts.listeners) for i in instances),
            nginx=nginx, listeners=facts.listeners, fds=facts.fds, kernel=facts.kernel,
        )
        self.last_good = snap
        return snap

    async def _poll_agent(self, agent: AgentSource, taken_at: float) -> HostSnapshot:
        doc = await agent.fetch()
        if isinstance(doc, SourceError):
            return self._failed(taken_at, [doc])
        snap = agent.to_snapshot(doc, time.time())
        if isinstance(snap, SourceError):
            return self._failed(taken_at, [snap])
        if snap.reachable and snap.stale_s is None:
            self.last_good = snap
        return snap

    def unreachable(self, taken_at: float, errors: list[SourceError]) -> HostSnapshot:
        """The failed snapshot for `errors` at `taken_at` (public for the poller, which
        repeats a host's failure with a growing age while it backs off)."""
        return self._failed(taken_at, errors)

    def timed_out(self, taken_at: float, limit: float) -> HostSnapshot:
        """What a poll cut short by the caller's deadline yields."""
        return self._failed(taken_at, [SourceError(self.host.name,
                                                   f"poll gave no answer within {limit:g} s")])

    def _failed(self, taken_at: float, errors: list[SourceError]) -> HostSnapshot:
        """Unreachable: the reason now, and the last good data with its age if there is any."""
        if self.last_good is None:
            return HostSnapshot(name=self.host.name, taken_at=taken_at, reachable=False,
                                errors=tuple(errors))
        return replace(self.last_good, taken_at=taken_at, reachable=False,
                       stale_s=max(0.0, taken_at - self.last_good.taken_at),
                       errors=tuple(errors))


async def poll_once(targets: Targets, rate_window: float = 0.5) -> Snapshot:
    """One poll of every host (for `stackmon snapshot`); nginx sampled twice for its rate."""
    collectors = [HostCollector(h, targets.settings) for h in targets.hosts]
    async with httpx.AsyncClient(trust_env=False) as client:
        if rate_window > 0 and any(h.nginx for h in targets.hosts):
            await asyncio.gather(*(c.sample_nginx(client) for c in collectors))
            await asyncio.sleep(rate_window)
        try:
            hosts = await asyncio.gather(*(c.poll(client) for c in collectors))
        finally:
            await asyncio.gather(*(c.aclose() for c in collectors))
    return Snapshot(taken_at=time.time(), hosts=tuple(hosts))

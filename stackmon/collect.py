"""This machine's kernel facts for one poll, attributed to the monitored processes.

stackmon.hosts.local.LocalHost polls a local host's sources and calls these to add what only
the kernel knows: accept queues of every listener (sock_diag) merged into the uWSGI sockets, and
fds of every monitored process against its own limit (/proc).

Kernel facts (queues from sock_diag, fds from /proc) are attributed to the monitored processes
only: the uWSGI masters and workers named by their own stats, and the nginx whose listener serves
the configured stub_status URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from stackmon.model import (
    FdReport,
    KernelCounters,
    Listener,
    SourceError,
    UwsgiInstance,
)
from stackmon.sources import kernel

# How long the nginx processes found behind the status URL are trusted before /proc is scanned
# again (sooner when one of them exits).
NGINX_RESCAN = 30.0

if TYPE_CHECKING:
    pass


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

"""Kernel facts for one local host: listen queues, fd usage against limits, kernel counters.

This module ties the two low-level readers together (sockdiag: netlink sock_diag listeners;
procfs: /proc reads) for the set of processes stackmon monitors, given as {pid: role} with roles
such as "uwsgi-master", "uwsgi-worker", "nginx-master", "nginx-worker". It produces exactly the
model objects a HostSnapshot carries (listeners, FdReport, KernelCounters) plus SourceErrors.

Ownership of a listener is decided by inode, never by name: the kernel reports a UNIX socket's
path exactly as it was passed to bind() (a relative path stays relative), and a TCP listener on
"0.0.0.0:80" may be written ":80" in a uWSGI config. The owner is whoever holds the socket in
/proc/PID/fd; workers inherit their master's listeners, so both are listed in `pids`.

Linux only; everything reads the caller's network namespace.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from stackmon.model import (
    FdReport,
    KernelCounters,
    Listener,
    ProcessFds,
    SourceError,
    SystemFds,
)
from stackmon.sources.procfs import (
    UNLIMITED,
    ProcFds,
    cmdline,
    fd_limits,
    is_exited,
    kernel_counters,
    nginx_roles,
    parent_pid,
    process_fds,
    processes_named,
    read_kernel_counters,
    socket_inodes,
    system_fds,
)
from stackmon.sources.sockdiag import RawListener, listening_sockets

__all__ = [
    "UNLIMITED",
    "FdScan",
    "KernelFacts",
    "ProcFds",
    "RawListener",
    "cmdline",
    "fd_limits",
    "kernel_counters",
    "kernel_facts",
    "listeners_for",
    "listening_sockets",
    "masters",
    "nginx_roles",
    "owner_of",
    "parent_pid",
    "process_fds",
    "process_report",
    "processes_named",
    "scan_processes",
    "socket_inodes",
    "system_fds",
]


@dataclass(frozen=True, slots=True)
class FdScan:
    """The result of scanning the monitored processes' fds.

    inode_pids maps a socket inode to the monitored pids holding it (for listeners_for).
    vanished lists pids that exited before or during the scan: normal when uWSGI respawns a
    worker between the stats poll and this scan, so they are not errors; the next poll has
    the new pids. errors holds the real problems (permission denied, unreadable /proc).
    """

    report: FdReport
    inode_pids: Mapping[int, frozenset[int]]
    errors: tuple[SourceError, ...] = ()
    vanished: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class KernelFacts:
    """Everything this module contributes to a HostSnapshot, from one call."""

    listeners: tuple[Listener, ...]
    fds: FdReport
    kernel: KernelCounters
    errors: tuple[SourceError, ...] = ()
    vanished: tuple[int, ...] = ()
    # Listeners nobody monitored holds; kept for "who listens on this port?" questions.
    unowned: tuple[RawListener, ...] = ()


def owner_of(role: str) -> str:
    """"uwsgi" for "uwsgi-worker", "nginx" for "nginx-master": the part before the first '-'."""
    return role.split("-", 1)[0]


def scan_processes(roles: Mapping[int, str], *, system: bool = True,
                   sockets: bool | Collection[int] = True) -> FdScan:
    """Open fds, fd limits and socket inodes of every monitored pid, plus (system=True) the
    host-wide fd figures.

    A pid whose fds cannot be read is left out of the report (a gauge without a count would
    mislead) and explained in errors, or listed in vanished when it has simply exited.

    sockets says whose socket inodes to collect: True (every pid), False (none: counts only),
    or a collection of pids. Collecting costs one readlink per fd (about 2 µs), so a busy
    nginx worker with 10,000 connections costs ~20 ms a poll; masters(roles) is enough to find
    the owners of listeners, because the masters create them and workers only inherit them
    (the listeners' pids then name the masters alone).
    """
    processes: list[ProcessFds] = []
    inode_pids: dict[int, set[int]] = {}
    errors: list[SourceError] = []
    vanished: list[int] = []
    for pid in sorted(roles):
        role = roles[pid]
        want = sockets if isinstance(sockets, bool) else pid in sockets
        got = process_fds(pid, sockets=want)
        if isinstance(got, SourceError):
            if is_exited(got):
                vanished.append(pid)
            else:
                errors.append(SourceError(got.source, f"{role}: {got.message}"))
            continue
        limits = fd_limits(pid)
        if isinstance(limits, SourceError):
            if is_exited(limits):
                vanished.append(pid)
                continue
            errors.append(SourceError(limits.source, f"{role}: {limits.message}"))
            soft = hard = 0  # ProcessFds: 0 means unknown
        else:
            soft, hard = limits
        processes.append(ProcessFds(pid=pid, role=role, open=got.open, limit=soft,
                                    hard_limit=hard))
        for inode in got.socket_inodes:
            inode_pids.setdefault(inode, set()).add(pid)
    sys_fds: SystemFds | None = None
    if system:
        got_sys = system_fds()
        if isinstance(got_sys, SourceError):
            errors.append(got_sys)
        else:
            sys_fds = got_sys
    return FdScan(
        report=FdReport(system=sys_fds, processes=tuple(processes)),
        inode_pids={inode: frozenset(pids) for inode, pids in inode_pids.items()},
        errors=tuple(errors),
        vanished=tuple(vanished),
    )


def masters(roles: Mapping[int, str]) -> frozenset[int]:
    """The pids whose role ends in "-master": the processes that create listeners."""
    return frozenset(pid for pid, role in roles.items() if role.endswith("-master"))


def process_report(roles: Mapping[int, str]) -> tuple[FdReport, Mapping[int, frozenset[int]]]:
    """scan_processes() as (FdReport, inode -> pids) for callers that do not report errors.

    Pids that exited or could not be read are simply missing from the report; use
    scan_processes() to learn why.
    """
    scan = scan_processes(roles)
    return scan.report, scan.inode_pids


def listeners_for(raw: Iterable[RawListener], inode_pids: Mapping[int, Iterable[int]],
                  roles: Mapping[int, str]) -> tuple[Listener, ...]:
    """The listeners held by monitored processes, with owner ("uwsgi"/"nginx") and pids.

    A listener held by processes of two owners (possible only through fd passing) is given to
    the owner of its lowest pid, which is normally the master that created it. Order: as the
    kernel listed them (TCP v4, TCP v6, UNIX).
    """
    out: list[Listener] = []
    for r in raw:
        holders = sorted(p for p in inode_pids.get(r.inode, ()) if p in roles)
        if not holders:
            continue
        out.append(Listener(address=r.address, kind=r.kind, owner=owner_of(roles[holders[0]]),
                            queue=r.queue, backlog=r.backlog, inode=r.inode,
                            pids=tuple(holders)))
    return tuple(out)


def kernel_facts(roles: Mapping[int, str], *,
                 sockets: bool | Collection[int] = True) -> KernelFacts:
    """One poll of the kernel for the monitored processes: what HostSnapshot needs.

    sockets is passed to scan_processes (masters(roles) for hosts with busy workers).
    Order matters a little: fds are scanned before the listeners are dumped, so a listener
    created in between is merely unowned for one poll, never attributed to a stale inode.
    """
    scan = scan_processes(roles, sockets=sockets)
    errors = list(scan.errors)
    raw = listening_sockets()
    listeners: tuple[Listener, ...] = ()
    unowned: tuple[RawListener, ...] = ()
    if isinstance(raw, SourceError):
        errors.append(raw)
    else:
        listeners = listeners_for(raw, scan.inode_pids, roles)
        owned = {lst.inode for lst in listeners}
        unowned = tuple(r for r in raw if r.inode not in owned)
    counters, counter_errors = read_kernel_counters()
    errors.extend(counter_errors)
    return KernelFacts(listeners=listeners, fds=scan.report, kernel=counters,
                       errors=tuple(errors), vanished=scan.vanished, unowned=unowned)

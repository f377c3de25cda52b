"""This machine's kernel facts for one poll, attributed to the monitored processes.

stackmon.hosts.local.LocalHost polls a local host's sources and calls these to add what only
the kernel knows: accept queues of every listener (sock_diag) merged into the uWSGI sockets, and
fds of every monitored process against its own limit (/proc).

Kernel facts (queues from sock_diag, fds from /proc) are attributed to the monitored processes
only: the uWSGI masters and workers behind the configured stats addresses, and the nginx whose
listener serves the configured stub_status URL.

A stats document's pids are not this host's pids by themselves: uWSGI in a container (its own
pid namespace) says "master 1, workers 2 and 3", which here are init and kernel threads; a
document from another machine names nobody here at all. So the master is found from the kernel
first (the holder of the stats address's listening socket, as stackmon.trust does before an
action) and the document's pids are used only when they are that process and its children:
directly when the document's master pid holds the socket, through NSpid (/proc/PID/status) when
the holder runs in a nested pid namespace and its innermost pid is the document's. Otherwise the
instance's fd and queue figures are left out with an error entry that says why; they are never
attributed to an unrelated local process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from stackmon import redact, trust, uwsgi_ini
from stackmon.addresses import AddressError, parse_stats_address
from stackmon.model import (
    FdReport,
    KernelCounters,
    Listener,
    SourceError,
    Thresholds,
    UwsgiInstance,
    Vassal,
)
from stackmon.sources import kernel, procfs
from stackmon.sources.kernel import FdScan

# How long the nginx processes found behind the status URL are trusted before /proc is scanned
# again (sooner when one of them exits).
NGINX_RESCAN = 30.0

# How long a failed search for the process behind a stats address (a scan of every process's
# fds) is remembered before it is tried again: a non-root user or a remote address would
# otherwise pay for that scan on every poll.
MASTER_RESCAN = 30.0
_CACHE_CAP = 256

# How long a confirmed {document pid: host pid} mapping of an instance is reused for the
# figures shown, while nothing it rests on changed: the listener's inode(s) in this poll's
# dump, the master's start time, and the pids the document names. Confirming costs a listing
# of the master's fds and its children every poll (0.4 ms of a 3.5 ms poll on the demo); the
# fds themselves are listed every FD_RESCAN_S anyway. Actions never use it: trust.py confirms
# afresh, with a pidfd held, before every signal.
CONFIRM_REUSE_S = 5.0


@dataclass(frozen=True, slots=True)
class _Confirmed:
    inodes: frozenset[int]
    doc_pids: tuple[int, ...]
    master_start: float
    pids: dict[int, int]
    at: float


_CONFIRMED: dict[str, _Confirmed] = {}


@dataclass(frozen=True, slots=True)
class LocalFacts:
    listeners: tuple[Listener, ...]
    fds: FdReport
    kernel: KernelCounters
    errors: tuple[SourceError, ...]
    nginx_roles: dict[int, str] = field(default_factory=dict)
    # What the fd scan covered (pid -> role) and found, for a later poll that reuses it.
    roles: dict[int, str] = field(default_factory=dict)
    scan: FdScan | None = None
    rescanned: bool = True  # False when `scan` is an earlier poll's
    # The kernel counters' own errors, carried with them when a later poll reuses them.
    kernel_errors: tuple[SourceError, ...] = ()


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


# (stats address, the document's master pid) -> (this host's master pid, its start time), or
# (0, when the search failed) for MASTER_RESCAN seconds.
_MASTERS: dict[tuple[str, int], tuple[int, float]] = {}


def _stats_inodes(address: str, raw: list[kernel.RawListener]) -> frozenset[int] | str:
    """The inodes of the listening socket(s) a client of `address` reaches on this host, or
    why there are none (another host's address, nothing listening)."""
    try:
        addr = parse_stats_address(address)
    except AddressError as exc:
        return str(exc)
    if addr.kind == "abstract":
        # uWSGI binds "\0name\0" (sock_diag shows "@name@"); other servers "\0name".
        names = {f"@{addr.path}", f"@{addr.path}@"}
        inodes = frozenset(r.inode for r in raw if r.kind == "unix" and r.address in names)
        return inodes or f"nothing on this host listens on @{addr.path}"
    got = trust.listener_inodes(addr, raw)
    if isinstance(got, trust.Refusal):
        return got.message
    return got[0]


def _topmost(holders: Iterable[int]) -> int | None:
    """The holder every other holder descends from (workers inherit the master's sockets)."""
    pool = set(holders)
    for candidate in sorted(pool):
        others = pool - {candidate}
        if all(_descends(h, candidate) for h in others):
            return candidate
    return None


def _descends(pid: int, ancestor: int) -> bool:
    for _ in range(256):
        parent = procfs.parent_pid(pid)
        if parent is None or parent <= 0:
            return False
        if parent == ancestor:
            return True
        pid = parent
    return False


def _start_time(pid: int) -> float:
    """The process's start in clock ticks since boot (/proc/PID/stat field 22): enough to
    tell a reused pid; 0.0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read(4096)
        return float(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return 0.0


def _own_depth() -> int:
    own = procfs.ns_pids(os.getpid())
    return len(own) if own else 1


def _find_master(inst: UwsgiInstance, inodes: frozenset[int]) -> int | str:
    """This host's pid of the master behind `inst`, or why it cannot be named."""
    doc_pid = inst.master_pid
    if doc_pid > 0 and kernel.socket_inodes(doc_pid) & inodes:
        return doc_pid  # the document's pid is this host's: same pid namespace
    key = (inst.address, doc_pid)
    cached = _MASTERS.get(key)
    if cached is not None:
        pid, stamp = cached
        if pid and _start_time(pid) == stamp and kernel.socket_inodes(pid) & inodes:
            return pid
        if not pid and time.monotonic() - stamp < MASTER_RESCAN:
            return _why_unnamed(doc_pid, None)
    if len(_MASTERS) > _CACHE_CAP:
        _MASTERS.clear()
    holders = procfs.socket_holders(inodes)
    master = _topmost(holders) if holders else None
    if master is None:
        _MASTERS[key] = (0, time.monotonic())
        return _why_unnamed(doc_pid, holders)
    ns = procfs.ns_pids(master)
    if ns and len(ns) > _own_depth() and ns[-1] == doc_pid:
        _MASTERS[key] = (master, _start_time(master))
        return master
    _MASTERS[key] = (0, time.monotonic())
    inside = f" (pid {ns[-1]} in its own pid namespace)" if ns and len(ns) > 1 else ""
    return (f"the stats name pid {doc_pid} as the master, but the process holding the stats "
            f"socket is pid {master}{inside}")


def _why_unnamed(doc_pid: int, holders: Mapping[int, frozenset[int]] | None) -> str:
    if holders:
        return "the stats socket is held by unrelated processes; cannot tell which is the master"
    if os.geteuid() != 0:
        return (f"cannot read which process holds the stats socket (/proc/PID/fd of another "
                f"user's processes; the stats name pid {doc_pid} as the master): run stackmon "
                "as the uWSGI user or as root")
    return "no process on this host holds the stats socket"


def _host_pids(inst: UwsgiInstance, master: int) -> dict[int, int]:
    """The document's pid -> this host's pid, for the master and the workers it lists.

    Workers must be the master's children. When the master runs in a nested pid namespace,
    its children are looked up by the innermost pid of their NSpid line. A worker not found
    among them (respawned since the document was written, or not a worker at all) is left out
    for this poll.
    """
    if master == inst.master_pid:
        # Only the master's children: a document naming any other process as a worker (a
        # stats server that lies, or a worker respawned since) gets no figures attributed.
        children = set(procfs.children(master))
        pids = {inst.master_pid: master}
        pids.update((w.pid, w.pid) for w in inst.workers if w.pid in children)
        return pids
    inner: dict[int, int] = {}
    for child in procfs.children(master):
        ns = procfs.ns_pids(child)
        if ns:
            inner[ns[-1]] = child
    pids = {inst.master_pid: master}
    pids.update((w.pid, inner[w.pid]) for w in inst.workers if w.pid in inner)
    return pids


def resolve_instance(inst: UwsgiInstance, raw: list[kernel.RawListener]
                     ) -> dict[int, int] | SourceError:
    """The document's pids of `inst` mapped to this host's ({doc pid: host pid}), or a
    SourceError saying why its fd and queue figures cannot be attributed (module docstring)."""
    inodes = _stats_inodes(inst.address, raw)
    if isinstance(inodes, frozenset):
        reused = _reuse_confirmed(inst, inodes)
        if reused is not None:
            return reused
        master = _find_master(inst, inodes)
        if isinstance(master, int):
            pids = _host_pids(inst, master)
            _remember_confirmed(inst, inodes, pids)
            return pids
        why = master
    else:
        why = inodes
    # Source "fds": what is missing is this instance's fd and queue figures, not the kernel.
    return SourceError("fds", f"uwsgi {redact.clean(inst.address)}: fd and queue figures "
                                 f"unavailable: {why}")


def _doc_pids(inst: UwsgiInstance) -> tuple[int, ...]:
    return (inst.master_pid, *(w.pid for w in inst.workers))


def _reuse_confirmed(inst: UwsgiInstance, inodes: frozenset[int]) -> dict[int, int] | None:
    """The mapping confirmed less than CONFIRM_REUSE_S ago, if nothing it rests on changed."""
    got = _CONFIRMED.get(inst.address)
    if (got is None or got.inodes != inodes or got.doc_pids != _doc_pids(inst)
            or time.monotonic() - got.at >= CONFIRM_REUSE_S):
        return None
    master = got.pids[inst.master_pid]
    if _start_time(master) != got.master_start:
        return None
    return dict(got.pids)


def _remember_confirmed(inst: UwsgiInstance, inodes: frozenset[int],
                        pids: dict[int, int]) -> None:
    if len(_CONFIRMED) > _CACHE_CAP:
        _CONFIRMED.clear()
    master = pids[inst.master_pid]
    _CONFIRMED[inst.address] = _Confirmed(inodes, _doc_pids(inst), _start_time(master),
                                          dict(pids), time.monotonic())


def _uwsgi_roles(instances: list[UwsgiInstance], raw: list[kernel.RawListener]
                 ) -> tuple[dict[int, str], dict[int, str], list[SourceError]]:
    """{host pid: role} of every resolved instance's processes, {host master pid: stats
    address} and the errors of the instances that could not be resolved."""
    roles: dict[int, str] = {}
    masters: dict[int, str] = {}
    errors: list[SourceError] = []
    for inst in instances:
        got = resolve_instance(inst, raw)
        if isinstance(got, SourceError):
            errors.append(got)
            continue
        host_master = got[inst.master_pid]
        roles[host_master] = "uwsgi-master"
        masters[host_master] = inst.address
        for doc_pid, host_pid in got.items():
            if doc_pid != inst.master_pid:
                roles.setdefault(host_pid, "uwsgi-worker")
    return roles, masters, errors


def gather_local_facts(instances: list[UwsgiInstance], nginx_url: str | None,
                       nginx_roles: dict[int, str] | None = None, *,
                       previous: LocalFacts | None = None) -> LocalFacts:
    """Queues, fds and kernel counters for the processes behind this host's targets.

    nginx_roles: the nginx processes found by an earlier poll; looked up again (a scan of
    /proc) only when not given. previous: an earlier result whose fd scan is reused when it
    covered exactly the same processes: the accept queues (sock_diag) and kernel counters are
    read every poll, the fds of every process (a /proc listing each) less often: they move
    slowly, and the scan was the poll's largest cost (bench/bench_tui_cpu.py, issue 12).
    LocalFacts.nginx_roles says what was used, and is empty when
    one of them has gone (nginx restarted or reloaded: look again next time). Each listener a
    uWSGI master holds names that instance's stats address (Listener.instance), which is how
    merge_kernel_queues finds an instance's sockets whatever pid namespace it runs in.
    """
    errors: list[SourceError] = []
    raw = kernel.listening_sockets()
    if isinstance(raw, SourceError):
        errors.append(raw)
        raw = []
    roles, masters, uwsgi_errors = _uwsgi_roles(instances, raw)
    errors.extend(uwsgi_errors)
    found = nginx_roles if nginx_roles is not None else _nginx_pids(nginx_url, raw)
    for pid, role in found.items():
        roles.setdefault(pid, role)
    rescanned = not (previous is not None and previous.scan is not None
                     and previous.roles == roles)
    if rescanned:
        scan = kernel.scan_processes(roles, sockets=kernel.masters(roles))
    else:
        assert previous is not None and previous.scan is not None
        scan = replace(previous.scan, vanished=())
    errors.extend(scan.errors)
    if rescanned or previous is None:
        counters, counter_errors = kernel.read_kernel_counters()
    else:
        # somaxconn (a sysctl) and the ListenOverflows counter, read with the fds (every
        # FD_RESCAN_S): /proc/net/netstat is generated whole on each read (0.19 ms, the
        # poll's largest read), no screen shows the counter, and /metrics exports it as a
        # counter (rate() over minutes); the doctor samples it itself.
        counters, counter_errors = previous.kernel, previous.kernel_errors
    errors.extend(counter_errors)
    if set(scan.vanished) & set(found):
        found = {}
    listeners = tuple(
        replace(li, instance=next((masters[p] for p in li.pids if p in masters), ""))
        for li in kernel.listeners_for(raw, scan.inode_pids, roles))
    return LocalFacts(listeners=listeners, fds=scan.report, kernel=counters,
                      errors=tuple(errors), nginx_roles=found, roles=roles, scan=scan,
                      rescanned=rescanned, kernel_errors=tuple(counter_errors))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _tcp_match(socket_name: str, listener: Listener) -> int:
    """How well a uWSGI TCP socket name matches a kernel listener: 3 the same address, 2 a
    wildcard on one side (`:3031`, `0.0.0.0:3031`, `*:3031`, `[::]:3031`), 1 the same port
    with a host name (`localhost:3031`), 0 not this listener."""
    host, _, port = socket_name.rpartition(":")
    lhost, _, lport = listener.address.rpartition(":")
    if not port or port != lport:
        return 0
    want, have = _ip(host), _ip(lhost)
    if want is not None and have is not None and want == have:
        return 3
    if host in ("", "*") or (want is not None and want.is_unspecified) or \
            (have is not None and have.is_unspecified):
        return 2
    return 1 if want is None else 0


def _unix_match(socket_name: str, listener: Listener) -> int:
    """A unix socket name against the kernel's: the same path, or the same abstract name
    (uWSGI's stats say `@name`, the kernel `@name@` for the "\\0name\\0" uWSGI binds)."""
    name, have = socket_name, listener.address
    if name == have:
        return 3
    if name.startswith("@") and have.startswith("@") and have.endswith("@") \
            and name == have[:-1]:
        return 3
    return 0


def _same_address(socket_name: str, listener: Listener) -> bool:
    return _match(socket_name, listener) > 0


def _match(socket_name: str, listener: Listener) -> int:
    if listener.kind == "unix":
        return _unix_match(socket_name, listener)
    if socket_name.startswith("@") or "/" in socket_name:
        return 0
    return _tcp_match(socket_name, listener)


def _own_listeners(inst: UwsgiInstance, listeners: tuple[Listener, ...]) -> list[Listener]:
    """The listeners this instance's master holds: tagged with its stats address by
    gather_local_facts, else (listeners built elsewhere) those whose pids include the
    document's master pid."""
    if any(li.instance for li in listeners):
        return [li for li in listeners if li.instance == inst.address]
    return [li for li in listeners if inst.master_pid in li.pids]


def merge_kernel_queues(inst: UwsgiInstance, listeners: tuple[Listener, ...]) -> UwsgiInstance:
    """Replace the stats' socket queues with the kernel's, which are exact and current.

    uWSGI reports 0/0 for unix sockets and samples TCP once a second; the kernel knows both
    the depth and the backlog the listen() call really got. listen_queue / listen_queue_max then
    describe the fullest socket, the one that decides whether connections are refused. Each
    socket takes the best-matching listener of this instance's master (exact address before a
    wildcard before a host name), so `:3031`, `0.0.0.0:3031`, `localhost:3031`, `@name` and
    relative unix paths all find theirs. An instance whose master has another pid here (a
    container) gets a warning naming it.
    """
    if not listeners:
        return inst
    # Only this instance's master's sockets: two instances may use the same relative name.
    own = _own_listeners(inst, listeners)
    sockets = []
    for s in inst.sockets:
        scored = [(_match(s.name, li), li) for li in own]
        best = max(scored, key=lambda pair: pair[0], default=(0, None))
        if best[1] is not None and best[0] > 0:
            li = best[1]
            s = replace(s, queue=li.queue, max_queue=li.backlog, source="kernel")
        sockets.append(s)
    warnings = inst.warnings
    here = own[0].pids[0] if own and own[0].pids else 0
    if here and inst.master_pid and inst.master_pid not in own[0].pids:
        note = (f"runs in another pid namespace: its pids are that namespace's (master "
                f"{inst.master_pid} is pid {here} on this host); fd figures use this host's")
        if note not in warnings:
            warnings = (*warnings, note)
    if inst.kind == "emperor" and here:
        inst = locate_vassals(inst, here)
    if not sockets:
        return replace(inst, warnings=warnings)
    worst = max(sockets, key=lambda s: (s.queue / s.max_queue if s.max_queue else 0, s.queue))
    return replace(inst, sockets=tuple(sockets), listen_queue=worst.queue,
                   listen_queue_max=worst.max_queue, warnings=warnings)


# --- an emperor's vassals ---------------------------------------------------------------------

# (the vassal's pid here, its start time) -> (what was found, when): a vassal's config is read
# again when it is respawned or every VASSAL_RECHECK seconds (its file may be edited, and the
# emperor reloads it under the same pid).
VASSAL_RECHECK = 60.0
_VASSALS: dict[tuple[int, float], tuple[Vassal, float]] = {}


def locate_vassals(emperor: UwsgiInstance, emperor_pid: int) -> UwsgiInstance:
    """`emperor` with each vassal's config file and stats address filled in, as far as they
    can be found; `emperor_pid` is the emperor's pid on this host, as the kernel confirmed it
    (the holder of its stats socket: merge_kernel_queues passes it).

    A vassal is looked up only when it is a child of that emperor (a document naming any other
    pid makes stackmon read nothing about it). Its config comes from its own command line
    (stackmon.uwsgi_ini.instance_options: relative to its cwd, read with its user's rights), its
    stats address from the `stats` option there (`http://` with `stats-http`; a relative unix
    path made absolute against its cwd). Vassals whose stats cannot be found say why in
    Vassal.stats_note.
    """
    if len(_VASSALS) > _CACHE_CAP:
        _VASSALS.clear()
    nested = emperor_pid != emperor.master_pid
    inner: dict[int, int] = {}
    if nested:
        for child in procfs.children(emperor_pid):
            ns = procfs.ns_pids(child)
            if ns:
                inner[ns[-1]] = child
    out = []
    for v in emperor.vassals:
        here = inner.get(v.pid, 0) if nested else v.pid
        out.append(_locate(v, here, emperor_pid))
    return replace(emperor, vassals=tuple(out))


def _locate(v: Vassal, pid: int, emperor_pid: int) -> Vassal:
    if v.pid <= 0:
        return replace(v, stats_note="not running")
    if pid <= 0 or procfs.parent_pid(pid) != emperor_pid:
        return replace(v, stats_note=f"pid {v.pid} is not a child of the emperor on this host; "
                                     "its config was not read")
    key = (pid, _start_time(pid))
    cached = _VASSALS.get(key)
    if cached is not None and time.monotonic() - cached[1] < VASSAL_RECHECK \
            and cached[0].name == v.name:
        found = cached[0]
        return replace(v, config=found.config, stats=found.stats, stats_note=found.stats_note)
    located = _from_config(v, pid)
    _VASSALS[key] = (located, time.monotonic())
    return located


def _from_config(v: Vassal, pid: int) -> Vassal:
    options = uwsgi_ini.instance_options(pid)
    if isinstance(options, SourceError):
        return replace(v, stats_note=options.message)
    config = next((o.file for o in options
                   if o.file not in (uwsgi_ini.CMDLINE, uwsgi_ini.ENVIRON)), "")
    stats = uwsgi_ini.last(options, "stats")
    if stats is None or not stats.value.strip():
        return replace(v, config=config, stats_note="its config sets no stats server")
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = ""
    address, note = stats_address(stats.value.strip(), uwsgi_ini.get_bool(options, "stats-http"),
                                  cwd)
    return replace(v, config=config, stats=address, stats_note=note)


def stats_address(value: str, http: bool, cwd: str) -> tuple[str, str]:
    """A `stats = VALUE` option as an address stackmon polls, and a note when it cannot be
    polled: `:1717` and `0.0.0.0:1717` are asked on loopback, a relative unix path is made
    absolute against the instance's cwd, `stats-http` becomes `http://host:port` (TCP only)."""
    if value.startswith("@"):
        kind = "abstract"
    elif "/" in value or ":" not in value:
        kind = "unix"
        if not value.startswith("/"):
            if not cwd:
                return "", f"relative stats path {value!r} and the vassal's cwd is unknown"
            value = os.path.join(cwd, value)
    else:
        kind = "tcp"
        host, _, port = value.rpartition(":")
        if host in ("", "*", "0.0.0.0"):
            value = f"127.0.0.1:{port}"
        elif host in ("[::]", "::"):
            value = f"[::1]:{port}"
    if http:
        if kind != "tcp":
            return "", (f"stats-http on a unix socket ({value}): stackmon reads stats-http over "
                        "TCP only")
        value = f"http://{value}"
    try:
        parse_stats_address(value)
    except AddressError as exc:
        return "", str(exc)
    return value, ""


def vassal_addresses(emperor: UwsgiInstance) -> tuple[str, ...]:
    """The stats addresses of an emperor's vassals that have one (after merge_kernel_queues
    or locate_vassals filled them in), in the document's order: what a host polls so that an
    emperor host shows an instance per vassal."""
    return tuple(v.stats for v in emperor.vassals if v.stats)


async def poll_vassals(emperor: UwsgiInstance, thresholds: Thresholds,
                       timeout: float) -> list[UwsgiInstance | SourceError]:
    """Poll every located vassal's stats server, in parallel, each as its own instance (its
    `address` is the vassal's stats address; errors name it)."""
    from stackmon.sources.uwsgi_stats import poll_stats

    addresses = vassal_addresses(emperor)
    return list(await asyncio.gather(*(poll_stats(parse_stats_address(a), thresholds,
                                                  timeout=timeout) for a in addresses)))

"""Which process really is the uWSGI master behind a stats address: the kernel's answer.

Why this exists: stackmon runs as root and acts on processes and files, but what it knows about
an instance comes from a stats document, which anyone who can listen on a port or a socket
path can serve. A document naming pid P as "the master" proves nothing, and neither does P's
name (any user can call a process `uwsgi`: `exec -a`, prctl) nor its command line (which then
names the master FIFO root would write to). So before any action:

- the master is the process that holds the stats socket's LISTENING inode, found from the
  kernel (sock_diag gives the listener for the address, /proc/PID/fd `socket:[INODE]` links
  give who holds it). uWSGI's master owns its stats socket; if children inherited it too, the
  master is the holder whose descendants are all the others. The stats' claimed pid must be
  exactly that process, or nothing is done;
- its uid, groups and start time are remembered (ConfirmedMaster), so that later checks (a
  FIFO or touch file owned by that uid, a worker that is its child, a pid not reused) are
  against facts the kernel gave, not against the document;
- a process in another pid namespace is refused rather than mapped: the stats' pids are that
  namespace's, and a pid taken as this host's would name an unrelated process;
- an address that is not on this host is refused as `not_local` (act through its agent).

`signal_checked` is the last step of every signal: the target is re-checked (same start time,
same parent) through a pidfd, so a pid reused between the check and the signal is never hit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import stat
from dataclasses import dataclass
from typing import Literal

import psutil

from stackmon.actions.base import RefusalKind
from stackmon.addresses import StatsAddress
from stackmon.bounded_io import BoundedReadError, read_file
from stackmon.model import SourceError
from stackmon.redact import clean
from stackmon.sources import procfs
from stackmon.sources.sockdiag import RawListener, listening_sockets, unix_listener_files

SOURCE = "trust"
_MAX_ANCESTRY = 256  # parent links followed before giving up (a loop or an absurd tree)


@dataclass(frozen=True, slots=True)
class Refusal(SourceError):
    """A SourceError that says what kind of refusal it is, in the actions' vocabulary."""

    kind: RefusalKind = "not_worker"


@dataclass(frozen=True, slots=True)
class ConfirmedMaster:
    """A uWSGI master as the kernel confirmed it: the holder of its stats listener.

    `start_time` is psutil's create_time (what it compares to detect a reused pid); `uid` and
    `euid` the real and effective uid, `gids` its groups (primary included), from
    /proc/PID/status; `listener` says which socket proved it, for messages and the audit log.
    """

    pid: int
    uid: int
    euid: int
    gids: frozenset[int]
    start_time: float
    listener: str

    def owns(self, st_uid: int) -> bool:
        """Whether a file owner is this master's user (real or effective uid)."""
        return st_uid in (self.uid, self.euid)


# ------------------------------------------------------------------ which listener


def _split_host(address: str) -> tuple[str, int] | None:
    """("127.0.0.1", 80) from a sock_diag TCP address "127.0.0.1:80" / "[::1]:80%lo"."""
    host, _, port = address.rpartition(":")
    host = host.split("%", 1)[0].strip("[]")
    return (host, int(port)) if port.isdigit() else None


def _is_local_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, or an address a socket can bind to: one of this host's (network namespace's)."""
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


def _tcp_listeners(host: str, port: int, shown: str,
                   listeners: list[RawListener] | None = None
                   ) -> tuple[frozenset[int], str] | Refusal:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return Refusal(SOURCE, f"cannot resolve {shown}: {exc}", "not_local")
    ips = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    local = {ip for ip in ips if _is_local_ip(ip)}
    if not local:
        return Refusal(SOURCE, f"{shown} is not an address of this host; act through that "
                               "host's stackmon agent", "not_local")
    raw = listening_sockets() if listeners is None else listeners
    if isinstance(raw, SourceError):
        return Refusal(SOURCE, f"cannot list this host's listeners to confirm {shown}: "
                               f"{raw.message}", "permission")
    tcp: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, str]] = []
    for listener in raw:
        parsed = _split_host(listener.address) if listener.kind == "tcp" else None
        if parsed is not None and parsed[1] == port:
            tcp.append((ipaddress.ip_address(parsed[0]), listener.inode, listener.address))
    inodes: set[int] = set()
    names: set[str] = set()
    for ip in local:
        # The kernel delivers to the most specific listener: the exact address, else the
        # wildcard of the family, else (IPv4 only) a dual-stack [::].
        wildcard = ipaddress.ip_address("::" if ip.version == 6 else "0.0.0.0")
        for want in (ip, wildcard, ipaddress.ip_address("::")):
            tier = [(ino, name) for have, ino, name in tcp if have == want]
            if tier:
                inodes.update(ino for ino, _ in tier)
                names.update(name for _, name in tier)
                break
    if not inodes:
        return Refusal(SOURCE, f"nothing on this host listens on {shown} any more", "gone")
    return frozenset(inodes), ", ".join(sorted(names))


def _unix_listeners(path: str) -> tuple[frozenset[int], str] | Refusal:
    """By the socket file's (dev, ino), not its name: names are as given to bind() (maybe
    relative) and a symlink or another mount namespace would make a name match meaningless."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return Refusal(SOURCE, f"cannot stat the stats socket {path}: "
                               f"{exc.strerror or exc}", "gone")
    if not stat.S_ISSOCK(st.st_mode):
        return Refusal(SOURCE, f"{path} is not a socket", "bad_request")
    files = unix_listener_files()
    if isinstance(files, SourceError):
        return Refusal(SOURCE, f"cannot list this host's unix listeners to confirm {path}: "
                               f"{files.message}", "permission")
    inodes = frozenset(f.inode for f in files if (f.dev, f.ino) == (st.st_dev, st.st_ino))
    if not inodes:
        return Refusal(SOURCE, f"nothing on this host listens on {path} any more", "gone")
    return inodes, path


def _abstract_listeners(name: str, listeners: list[RawListener] | None = None
                        ) -> tuple[frozenset[int], str] | Refusal:
    raw = listening_sockets() if listeners is None else listeners
    if isinstance(raw, SourceError):
        return Refusal(SOURCE, f"cannot list this host's listeners to confirm @{name}: "
                               f"{raw.message}", "permission")
    # The stats client dials "\0name\0" first (how uWSGI binds `@name`: sock_diag shows it
    # as @name@), then "\0name": the listener confirmed is the one the client reached.
    for want in ("@" + name + "@", "@" + name):
        inodes = frozenset(r.inode for r in raw if r.kind == "unix" and r.address == want)
        if inodes:
            return inodes, want
    return Refusal(SOURCE, f"nothing on this host listens on @{name} any more", "gone")


def listener_inodes(address: StatsAddress, listeners: list[RawListener] | None = None
                    ) -> tuple[frozenset[int], str] | Refusal:
    """The inodes of the listening socket(s) a connection to `address` reaches on this host,
    and a description of them; a Refusal (not_local for another host's address) otherwise.
    `listeners`: this host's sock_diag dump, when the caller took one an instant ago (a poll
    does, for the queues: a second dump of every TCP and unix listener per poll was a third of
    the poll's kernel reads); an action passes none and gets a dump of its own."""
    shown = clean(str(address))
    if address.kind in ("tcp", "http"):
        got = _tcp_listeners(address.host, address.port, shown, listeners)
    elif address.kind == "unix":
        got = _unix_listeners(address.path)
    else:
        got = _abstract_listeners(address.path, listeners)
    if isinstance(got, Refusal):
        return got
    inodes, names = got
    return inodes, f"{clean(names)} (socket inode {', '.join(map(str, sorted(inodes)))})"


# ------------------------------------------------------------------ which process


def _ancestors(pid: int) -> list[int]:
    chain: list[int] = []
    for _ in range(_MAX_ANCESTRY):
        parent = procfs.parent_pid(pid)
        if parent is None or parent <= 0 or parent in chain:
            break
        chain.append(parent)
        pid = parent
    return chain


def _topmost(holders: set[int]) -> int | None:
    """The holder that every other holder descends from (children inherit listening sockets
    across fork), or None when the holders are unrelated processes."""
    for candidate in sorted(holders):
        if all(h == candidate or candidate in _ancestors(h) for h in holders):
            return candidate
    return None


def _comm(pid: int) -> str:
    try:
        return clean(read_file(f"/proc/{pid}/comm", limit=256, what="comm")
                     .decode("utf-8", "replace").strip())
    except BoundedReadError:
        return "?"


def process_ids(pid: int) -> tuple[int, int, frozenset[int]] | None:
    """(real uid, effective uid, groups) from /proc/PID/status."""
    try:
        text = read_file(f"/proc/{pid}/status", limit=64 * 1024, what="process status")
    except BoundedReadError:
        return None
    uid = euid = -1
    gids: set[int] = set()
    for line in text.decode("ascii", "replace").splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        with contextlib.suppress(ValueError, IndexError):
            if key == "Uid":
                uid, euid = int(fields[0]), int(fields[1])
            elif key == "Gid":
                gids.update(int(g) for g in fields[:2])
            elif key == "Groups":
                gids.update(int(g) for g in fields)
    return (uid, euid, frozenset(gids)) if uid >= 0 else None


def _namespace_depth() -> int:
    own = procfs.ns_pids(os.getpid())
    return len(own) if own else 1


def confirm_master(address: StatsAddress, claimed_pid: int) -> ConfirmedMaster | Refusal:
    """The uWSGI master behind `address`, if and only if it is `claimed_pid` (the stats' "pid").

    The kernel decides: the process holding the listening socket that `address` reaches is the
    master (see the module docstring for why nothing the stats or the process says counts).
    Never raises; a Refusal says why in one line naming both the claimed pid and the holder.
    """
    shown = clean(str(address))
    if claimed_pid <= 0:
        return Refusal(SOURCE, f"the stats at {shown} name no master pid", "not_worker")
    found = listener_inodes(address)
    if isinstance(found, Refusal):
        return found
    inodes, listener = found
    holders = procfs.socket_holders(inodes)
    if not holders:
        why = "" if os.geteuid() == 0 else " (run stackmon as root or as the uWSGI user)"
        return Refusal(SOURCE, f"no process this user can inspect holds {listener}{why}; "
                               "cannot confirm the uWSGI master", "permission")
    master = _topmost(set(holders))
    if master is None:
        listed = ", ".join(f"{p} ({_comm(p)})" for p in sorted(holders))
        return Refusal(SOURCE, f"{listener} is held by unrelated processes ({listed}); cannot "
                               "tell which is the uWSGI master, refusing to act", "not_worker")
    nspid = procfs.ns_pids(master)
    if nspid is not None and len(nspid) > _namespace_depth():
        inside = nspid[-1]
        if inside == claimed_pid:
            return Refusal(SOURCE, f"the uWSGI master behind {shown} runs in another pid "
                                   f"namespace (pid {master} here, {inside} inside it); stackmon "
                                   "does not act across pid namespaces: run it or its agent "
                                   "inside that namespace", "not_local")
    if master != claimed_pid:
        also = (f"; pid {claimed_pid} holds it too, as a descendant of {master}"
                if claimed_pid in holders else "")
        return Refusal(SOURCE, f"the stats at {shown} name pid {claimed_pid} "
                               f"({_comm(claimed_pid)}) as the uWSGI master, but the process "
                               f"holding {listener} is pid {master} ({_comm(master)}){also}; "
                               "refusing to act on what the stats say", "not_worker")
    return _confirmed(master, inodes, listener)


def _confirmed(pid: int, inodes: frozenset[int], listener: str) -> ConfirmedMaster | Refusal:
    ids = process_ids(pid)
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        ids = None
    # Read after the start time: if the pid was reused in between, the newcomer does not hold
    # the listener and this fails.
    held = procfs.process_fds(pid)
    if ids is None or isinstance(held, SourceError) or not held.socket_inodes & inodes:
        return Refusal(SOURCE, f"the uWSGI master {pid} exited while it was being confirmed",
                       "gone")
    uid, euid, gids = ids
    return ConfirmedMaster(pid, uid, euid, gids, started, listener)


# ------------------------------------------------------------------ signals


@dataclass(frozen=True, slots=True)
class Identity:
    """What makes a pid the same process later: its start time and its parent."""

    start_time: float
    ppid: int


def identity(pid: int) -> Identity | None:
    """The process's start time and parent now; None when it is gone."""
    try:
        proc = psutil.Process(pid)
        return Identity(proc.create_time(), proc.ppid())
    except psutil.Error:
        return None


def signal_checked(pid: int, expect: Identity, sig: int) -> Literal["sent", "gone"] | Refusal:
    """Send `sig` to `pid` only if it is still the process `expect` describes.

    A pidfd is opened first and the identity checked after: a pid reused after the open leaves
    the pidfd on the exited process (the signal then fails with ESRCH: "gone"), and one reused
    before it fails the start-time check. psutil's own check covers the start time only; the
    parent check is what keeps a worker reparented after its master died from being hit.
    """
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    except OSError:
        pidfd = None  # no pidfds (old kernel, seccomp): the checks below still hold
    try:
        now = identity(pid)
        if now is None:
            return "gone"
        if now.start_time != expect.start_time:
            return Refusal(SOURCE, f"pid {pid} is now another process (started at "
                                   f"{now.start_time:.2f}, not {expect.start_time:.2f}); "
                                   "nothing was sent", "stale")
        if now.ppid != expect.ppid:
            return Refusal(SOURCE, f"pid {pid} is no longer a child of {expect.ppid} (its parent "
                                   f"is now {now.ppid}); nothing was sent", "stale")
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
        return "sent"
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return Refusal(SOURCE, f"not allowed to signal pid {pid}; run stackmon as the uWSGI "
                               "user or root", "permission")
    finally:
        if pidfd is not None:
            os.close(pidfd)

"""Process and system facts read from /proc: open fds, fd limits, socket inodes, kernel knobs.

Plain /proc reads rather than psutil: the poller asks every second for a few dozen processes,
and one `os.read` of a small /proc file is cheaper than building psutil objects. Everything here
is Linux-only and returns data or a SourceError with a reason a user can act on; expected
failures (a process that exits while it is read, a file we may not read) never raise.

A process that exits mid-scan is normal (uWSGI respawns workers, nginx replaces its workers on
reload), so it gets its own message, "has exited", distinct from a permission problem.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from stackmon.model import KernelCounters, SourceError, SystemFds

SOURCE = "kernel"
PROC = "/proc"

# "unlimited" in /proc/PID/limits. Linux never allows it for "Max open files" (the soft and hard
# limits are capped by fs.nr_open), so in practice this is never returned for fds; a big number
# rather than 0 because ProcessFds.limit == 0 means "unknown", and a gauge against 2**63-1 reads
# as empty, which is what unlimited means.
UNLIMITED = 2**63 - 1

_RDONLY = os.O_RDONLY | os.O_CLOEXEC


class ProcFds(NamedTuple):
    """What one listing of /proc/PID/fd found."""

    open: int
    socket_inodes: frozenset[int]


def _read(path: str, size: int = 65536) -> bytes:
    """One open/read/close: /proc files are generated whole on the first read for these sizes."""
    fd = os.open(path, _RDONLY)
    try:
        data = os.read(fd, size)
        if len(data) < size:
            return data
        chunks = [data]
        while chunk := os.read(fd, size):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _pid_error(pid: int, what: str, exc: OSError) -> SourceError:
    """The words for a failed read of /proc/PID/<what>."""
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ESRCH:
        # Missing from /proc is not always gone: /proc mounted with hidepid= hides other
        # users' processes, which kill(pid, 0) still sees (EPERM).
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return SourceError(SOURCE, f"process {pid} has exited")
        except PermissionError:
            return SourceError(
                SOURCE, f"process {pid} is hidden from this user by /proc's hidepid option: "
                        f"run stackmon as that process's user or as root")
        if os.path.exists(f"{PROC}/{pid}"):
            return SourceError(SOURCE, f"process {pid} has exited")  # while being read
        return SourceError(SOURCE, f"process {pid} is not visible in {PROC} "
                                   f"(another PID namespace?)")
    if isinstance(exc, PermissionError):
        return SourceError(
            SOURCE,
            f"not allowed to read {PROC}/{pid}/{what} (process {pid} belongs to another user): "
            f"run stackmon as that user or as root",
        )
    return SourceError(SOURCE, f"cannot read {PROC}/{pid}/{what}: {os.strerror(exc.errno or 0)}")


def _is_gone(pid: int) -> bool:
    """True for a zombie (exited, not yet reaped: no fds left) or a pid no longer in /proc."""
    try:
        stat = _read(f"{PROC}/{pid}/stat", 4096)
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X")


def is_exited(err: SourceError) -> bool:
    """True when a per-process error only says the process is gone (not worth an alarm)."""
    return err.message.endswith(" has exited")


def process_fds(pid: int, *, sockets: bool = True) -> ProcFds | SourceError:
    """How many fds `pid` has open and, with sockets=True, the inodes of its sockets.

    The socket inodes are what ties a listener from sock_diag to a process (`socket:[INODE]`
    links). Reading the links costs one readlink per fd, resolved against an open handle on
    /proc/PID/fd (dir_fd) so the kernel does not walk the full path each time; pass
    sockets=False when only the count is wanted (a busy nginx worker can hold thousands of fds).
    When `pid` is the calling process, the count includes the fd used to list the directory.
    """
    try:
        dfd = os.open(f"{PROC}/{pid}/fd", _RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        return _pid_error(pid, "fd", exc)
    try:
        names = os.listdir(dfd)
        if not names and _is_gone(pid):
            return SourceError(SOURCE, f"process {pid} has exited")
        if not sockets:
            return ProcFds(len(names), frozenset())
        inodes: set[int] = set()
        readlink = os.readlink
        for name in names:
            try:
                target = readlink(name, dir_fd=dfd)
            except FileNotFoundError:
                continue  # closed between the listing and the readlink
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
        return ProcFds(len(names), frozenset(inodes))
    except OSError as exc:
        # ENOENT here: the process exited after its fd directory was opened.
        return _pid_error(pid, "fd", exc)
    finally:
        os.close(dfd)


def socket_inodes(pid: int) -> frozenset[int]:
    """The inodes of every socket `pid` holds; empty when its fds cannot be read (exited, or
    another user's process): for set arithmetic in a hurry. process_fds says why."""
    got = process_fds(pid)
    return frozenset() if isinstance(got, SourceError) else got.socket_inodes


def _limit(text: str) -> int:
    return UNLIMITED if text == "unlimited" else int(text)


def fd_limits(pid: int) -> tuple[int, int] | SourceError:
    """(soft, hard) "Max open files" of `pid`, from /proc/PID/limits.

    /proc/PID/limits is world-readable, unlike prlimit() on another user's process (psutil's
    rlimit()), which needs CAP_SYS_RESOURCE. "unlimited" maps to UNLIMITED.
    """
    try:
        data = _read(f"{PROC}/{pid}/limits")
    except OSError as exc:
        return _pid_error(pid, "limits", exc)
    limits = parse_max_open_files(data.decode("ascii", "replace"))
    if limits is None:
        return SourceError(SOURCE, f"no readable 'Max open files' line in {PROC}/{pid}/limits")
    return limits


def parse_max_open_files(text: str) -> tuple[int, int] | None:
    """(soft, hard) from the text of a /proc/PID/limits file, None if the line is missing."""
    for line in text.splitlines():
        if line.startswith("Max open files"):
            fields = line[len("Max open files"):].split()
            try:
                return _limit(fields[0]), _limit(fields[1])
            except (IndexError, ValueError):
                return None
    return None


def system_fds() -> SystemFds | SourceError:
    """Open file handles against fs.file-max for the whole host, and fs.nr_open.

    /proc/sys/fs/file-nr is "allocated free max"; "free" has been 0 since Linux 2.6, but it is
    subtracted anyway so an old kernel reads right. nr_open (the ceiling for any process's
    "Max open files") is 0 when it cannot be read.
    """
    try:
        fields = _read(f"{PROC}/sys/fs/file-nr").split()
        allocated, free, maximum = (int(x) for x in fields[:3])
    except OSError as exc:
        return SourceError(SOURCE, f"cannot read {PROC}/sys/fs/file-nr: "
                                   f"{os.strerror(exc.errno or 0)}")
    except ValueError:
        return SourceError(SOURCE, f"unexpected contents in {PROC}/sys/fs/file-nr")
    try:
        nr_open = int(_read(f"{PROC}/sys/fs/nr_open"))
    except (OSError, ValueError):
        nr_open = 0
    return SystemFds(open=allocated - free, max=maximum, nr_open=nr_open)


def _netstat_values(data: bytes, section: bytes, names: tuple[bytes, ...]) -> list[int | None]:
    """Values from a /proc/net/netstat-style file: pairs of "Sect: names..." and "Sect: values"
    lines. Missing names give None (old kernels lack some counters)."""
    lines = data.split(b"\n")
    prefix = section + b":"
    for i in range(len(lines) - 1):
        if lines[i].startswith(prefix) and lines[i + 1].startswith(prefix):
            keys = lines[i].split()[1:]
            values = lines[i + 1].split()[1:]
            if len(keys) != len(values):
                break
            table = dict(zip(keys, values, strict=True))
            out: list[int | None] = []
            for name in names:
                raw = table.get(name)
                out.append(int(raw) if raw is not None and raw.isdigit() else None)
            return out
    return [None] * len(names)


def read_kernel_counters() -> tuple[KernelCounters, tuple[SourceError, ...]]:
    """kernel_counters() plus the reasons for any value left as None."""
    errors: list[SourceError] = []
    somaxconn: int | None = None
    overflows: int | None = None
    drops: int | None = None
    path = f"{PROC}/sys/net/core/somaxconn"
    try:
        somaxconn = int(_read(path))
    except OSError as exc:
        errors.append(SourceError(SOURCE, f"cannot read {path}: {os.strerror(exc.errno or 0)}"))
    except ValueError:
        errors.append(SourceError(SOURCE, f"unexpected contents in {path}"))
    path = f"{PROC}/net/netstat"
    try:
        overflows, drops = _netstat_values(_read(path), b"TcpExt",
                                           (b"ListenOverflows", b"ListenDrops"))
        if overflows is None or drops is None:
            errors.append(SourceError(SOURCE, f"no TcpExt ListenOverflows/ListenDrops in {path}"))
    except OSError as exc:
        errors.append(SourceError(SOURCE, f"cannot read {path}: {os.strerror(exc.errno or 0)}"))
    return KernelCounters(somaxconn, overflows, drops), tuple(errors)


def kernel_counters() -> KernelCounters:
    """net.core.somaxconn and the cumulative TcpExt ListenOverflows / ListenDrops counters of
    this network namespace; a value that cannot be read is None (read_kernel_counters says why).

    The counters only grow: a UI should show their rate. They count TCP only; a full UNIX
    listener makes the client's connect() wait or fail instead, with no counter.
    """
    return read_kernel_counters()[0]


def _comm_matches(pid_dir: str, want: bytes) -> bool:
    try:
        return _read(f"{PROC}/{pid_dir}/comm", 64).rstrip(b"\n") == want
    except OSError:
        return False  # exited, or hidden by hidepid


def parent_pid(pid: int) -> int | None:
    """The ppid from /proc/PID/stat (after the last ')', since comm may contain spaces and
    parentheses); None when the process is gone."""
    try:
        stat = _read(f"{PROC}/{pid}/stat", 4096)
        return int(stat[stat.rindex(b")") + 2 :].split(None, 2)[1])
    except (OSError, ValueError, IndexError):
        return None


def processes_named(name: str) -> list[tuple[int, int]]:
    """(pid, ppid) of every process whose comm is `name`, sorted by pid.

    comm (not the cmdline) because nginx rewrites its cmdline to "nginx: worker process" while
    its comm stays "nginx". The kernel truncates comm to 15 bytes, so `name` is too. Only
    matches pay for a second read (/proc/PID/stat for the ppid).
    """
    want = os.fsencode(name)[:15]
    found: list[tuple[int, int]] = []
    try:
        entries = os.listdir(PROC)
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit() and _comm_matches(entry, want):
            pid = int(entry)
            ppid = parent_pid(pid)
            if ppid is not None:
                found.append((pid, ppid))
    found.sort()
    return found


def cmdline(pid: int) -> str | None:
    """The command line with NULs as spaces (nginx rewrites it into one string), or None."""
    try:
        raw = _read(f"{PROC}/{pid}/cmdline")
    except OSError:
        return None
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


def nginx_roles(procs: list[tuple[int, int]]) -> dict[int, str]:
    """Roles of nginx processes found by processes_named("nginx"): "nginx-master",
    "nginx-worker" or "nginx-cache" (cache manager/loader).

    The title nginx gives its children ("nginx: worker process", also "... is shutting down"
    during a reload; "nginx: cache manager process") is definitive. "nginx: master process" is
    not: a worker keeps its master's title from fork() until it has initialised, which is the
    moment right after every reload. So a process whose parent is not nginx is a master; one
    whose parent is nginx is a worker, unless it says master and has nginx children of its own:
    the new master of a binary upgrade (USR2) is a child of the old master.
    """
    pids = {pid for pid, _ in procs}
    parents = {ppid for _, ppid in procs}
    roles: dict[int, str] = {}
    for pid, ppid in procs:
        title = cmdline(pid) or ""
        if title.startswith("nginx: worker process"):
            roles[pid] = "nginx-worker"
        elif title.startswith(("nginx: cache manager", "nginx: cache loader")):
            roles[pid] = "nginx-cache"
        elif ppid not in pids or (title.startswith("nginx: master process") and pid in parents):
            roles[pid] = "nginx-master"
        else:
            roles[pid] = "nginx-worker"
    return roles


def socket_holders(inodes: frozenset[int]) -> dict[int, frozenset[int]]:
    """Every process (pid -> which of `inodes` it holds) with a descriptor on one of these
    sockets, found by listing every /proc/PID/fd. Processes whose fds cannot be read (exited,
    another user's when not root) are skipped: as root, none are.

    This is how a listener from sock_diag is tied to the processes that own it: the kernel's
    answer, which a process cannot fake by naming itself (unlike comm or cmdline).
    """
    found: dict[int, frozenset[int]] = {}
    try:
        entries = os.listdir(PROC)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        got = process_fds(int(entry))
        if isinstance(got, SourceError):
            continue
        held = got.socket_inodes & inodes
        if held:
            found[int(entry)] = held
    return found


def ns_pids(pid: int) -> tuple[int, ...] | None:
    """The NSpid line of /proc/PID/status: the pid as seen from this /proc's pid namespace down
    to the process's own (one entry when both are the same); None when it cannot be read."""
    try:
        data = _read(f"{PROC}/{pid}/status")
    except OSError:
        return None
    for line in data.split(b"\n"):
        if line.startswith(b"NSpid:"):
            try:
                return tuple(int(x) for x in line[6:].split())
            except ValueError:
                return None
    return None


def children(pid: int) -> tuple[int, ...]:
    """The direct children of `pid` (all its threads' children), from
    /proc/PID/task/TID/children; empty when it is gone or the kernel lacks that file
    (CONFIG_PROC_CHILDREN), in which case /proc is scanned for processes whose parent it is."""
    found: set[int] = set()
    try:
        tids = os.listdir(f"{PROC}/{pid}/task")
    except OSError:
        return ()
    readable = False
    for tid in tids:
        try:
            data = _read(f"{PROC}/{pid}/task/{tid}/children")
        except OSError:
            continue
        readable = True
        found.update(int(x) for x in data.split() if x.isdigit())
    if not readable:
        try:
            entries = os.listdir(PROC)
        except OSError:
            return ()
        found = {int(e) for e in entries if e.isdigit() and parent_pid(int(e)) == pid}
    return tuple(sorted(found))

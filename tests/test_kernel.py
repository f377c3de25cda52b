"""The kernel-facts source against the real kernel: real listeners with real pending
connections, real child processes, and `ss` as the independent witness when it is installed."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from stackmon.collect import merge_kernel_queues
from stackmon.model import (
    FdReport,
    KernelCounters,
    Listener,
    Socket,
    SourceError,
    SystemFds,
    Thresholds,
    UwsgiInstance,
)
from stackmon.sources import kernel
from stackmon.sources.kernel import RawListener
from stackmon.sources.procfs import UNLIMITED, parse_max_open_files

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

def wait_for(pred: Callable[[], T], timeout: float = 3.0) -> T:
    """Poll until pred() is truthy: loopback handshakes complete asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def listeners() -> list[RawListener]:
    got = kernel.listening_sockets()
    assert not isinstance(got, SourceError), got
    return got


def by_inode(inode: int) -> RawListener | None:
    return next((r for r in listeners() if r.inode == inode), None)


def the(inode: int) -> RawListener:
    got = by_inode(inode)
    assert got is not None, f"no listener with inode {inode}"
    return got


def inode_of(sock: socket.socket) -> int:
    # A socket fd's st_ino is the sockfs inode that sock_diag and /proc/PID/fd name.
    return os.fstat(sock.fileno()).st_ino


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # sun_path is 108 bytes: pytest's tmp_path can be longer than that.
    d = Path(tempfile.mkdtemp(prefix="smk-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)  # by pid: only processes this test started
            p.wait(5)


def tcp_listener(closing: list[socket.socket], backlog: int, host: str = "127.0.0.1",
                 family: int = socket.AF_INET) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    closing.append(s)
    s.bind((host, 0))
    s.listen(backlog)
    return s


def unix_listener(closing: list[socket.socket], address: str, backlog: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    closing.append(s)
    s.bind(address)
    s.listen(backlog)
    return s


def connect_nonblocking(closing: list[socket.socket], family: int, address: Any,
                        n: int) -> list[int]:
    """n clients that are never accepted; the errno each connect_ex gave."""
    results = []
    for _ in range(n):
        c = socket.socket(family, socket.SOCK_STREAM)
        closing.append(c)
        c.setblocking(False)
        results.append(c.connect_ex(address))
    return results


# --- sock_diag -------------------------------------------------------------------------------


def test_tcp_listener_queue_and_backlog(closing: list[socket.socket]) -> None:
    s = tcp_listener(closing, backlog=5)
    host, port = s.getsockname()
    inode = inode_of(s)
    got = by_inode(inode)
    assert got == RawListener("tcp", f"127.0.0.1:{port}", 0, 5, inode)

    connect_nonblocking(closing, socket.AF_INET, (host, port), 3)
    found = wait_for(lambda: (r := by_inode(inode)) and r.queue == 3 and r)
    assert found and found.queue == 3 and found.backlog == 5


def test_tcp_full_queue_holds_backlog_plus_one_and_counts_overflows(
        closing: list[socket.socket]) -> None:
    before = kernel.kernel_counters()
    assert before.listen_overflows is not None and before.listen_drops is not None
    s = tcp_listener(closing, backlog=2)
    inode = inode_of(s)
    connect_nonblocking(closing, socket.AF_INET, s.getsockname(), 6)
    # The kernel admits backlog + 1 before it drops SYNs: "full" reads queue > backlog.
    got = wait_for(lambda: (r := by_inode(inode)) and r.queue == 3 and r)
    assert got and (got.queue, got.backlog) == (3, 2)

    def overflowed() -> bool:
        c = kernel.kernel_counters()
        return (c.listen_overflows or 0) > (before.listen_overflows or 0) and \
            (c.listen_drops or 0) > (before.listen_drops or 0)
    assert wait_for(overflowed)


def test_tcp6_listener_address(closing: list[socket.socket]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        s = tcp_listener(closing, backlog=7, host="::1", family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    port = s.getsockname()[1]
    connect_nonblocking(closing, socket.AF_INET6, ("::1", port), 2)
    inode = inode_of(s)
    got = wait_for(lambda: (r := by_inode(inode)) and r.queue == 2 and r)
    assert got == RawListener("tcp", f"[::1]:{port}", 2, 7, inode)


def test_backlog_is_capped_at_somaxconn(closing: list[socket.socket], short_dir: Path) -> None:
    somaxconn = kernel.kernel_counters().somaxconn
    assert somaxconn
    t = tcp_listener(closing, backlog=somaxconn + 1000)
    u = unix_listener(closing, str(short_dir / "big.sock"), backlog=somaxconn + 1000)
    assert the(inode_of(t)).backlog == somaxconn
    assert the(inode_of(u)).backlog == somaxconn


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_unix_listener_queue_and_backlog(closing: list[socket.socket], short_dir: Path,
                                         abstract: bool) -> None:
    if abstract:
        name = f"stackmon-test-{uuid.uuid4().hex[:12]}"
        bind_to, shown = "\0" + name, "@" + name
    else:
        bind_to = shown = str(short_dir / "app.sock")
    s = unix_listener(closing, bind_to, backlog=3)
    inode = inode_of(s)
    assert by_inode(inode) == RawListener("unix", shown, 0, 3, inode)

    assert connect_nonblocking(closing, socket.AF_UNIX, bind_to, 2) == [0, 0]
    got = by_inode(inode)
    assert got is not None and (got.queue, got.backlog) == (2, 3)

    # Beyond backlog + 1 the kernel refuses a non-blocking client with EAGAIN.
    more = connect_nonblocking(closing, socket.AF_UNIX, bind_to, 4)
    assert more == [0, 0, errno.EAGAIN, errno.EAGAIN]
    got = by_inode(inode)
    assert got is not None and (got.queue, got.backlog) == (4, 3)


def test_unix_seqpacket_and_unbound_sockets_are_not_listed(closing: list[socket.socket],
                                                           short_dir: Path) -> None:
    seq = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    closing.append(seq)
    seq.bind(str(short_dir / "seq.sock"))
    seq.listen(1)
    plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    closing.append(plain)
    inodes = {r.inode for r in listeners()}
    assert inode_of(seq) not in inodes and inode_of(plain) not in inodes


def _ss(*args: str) -> list[list[str]]:
    out = subprocess.run(["ss", "-H", *args], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def _ss_view() -> dict[int, tuple[str, str, int, int]]:
    """inode -> (kind, address, queue, backlog) as `ss -ltne` / `ss -lxn` print them."""
    view: dict[int, tuple[str, str, int, int]] = {}
    for f in _ss("-ltne"):
        inode = next(int(x[4:]) for x in f if x.startswith("ino:"))
        address = f[3]
        if address.startswith("*:"):  # ss's name for a dual-stack [::] listener
            address = "[::]" + address[1:]
        view[inode] = ("tcp", address, int(f[1]), int(f[2]))
    for f in _ss("-lxn"):
        if f[0] == "u_str" and f[1] == "LISTEN":
            view[int(f[-3])] = ("unix", " ".join(f[4:-3]), int(f[2]), int(f[3]))
    return view


def _our_view() -> dict[int, tuple[str, str, int, int]]:
    return {r.inode: (r.kind, r.address, r.queue, r.backlog) for r in listeners()}


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) not installed")
def test_matches_ss(closing: list[socket.socket], short_dir: Path) -> None:
    t = tcp_listener(closing, backlog=5)
    connect_nonblocking(closing, socket.AF_INET, t.getsockname(), 2)
    u = unix_listener(closing, str(short_dir / "ss.sock"), backlog=3)
    connect_nonblocking(closing, socket.AF_UNIX, str(short_dir / "ss.sock"), 1)
    a = unix_listener(closing, f"\0stackmon-ss-{uuid.uuid4().hex[:8]}", backlog=4)
    wait_for(lambda: the(inode_of(t)).queue == 2)
    # Other processes on this machine open and close listeners too: compare two snapshots of
    # ours taken around one of ss's, and retry until nothing moved in between.
    for _ in range(10):
        ours_before = _our_view()
        theirs = _ss_view()
        ours_after = _our_view()
        if ours_before == ours_after == theirs:
            break
        time.sleep(0.05)
    assert ours_before == theirs
    for s in (t, u, a):
        assert inode_of(s) in theirs
    assert theirs[inode_of(t)][2:] == (2, 5)
    assert theirs[inode_of(u)][2:] == (1, 3)


def test_listening_sockets_is_fast_enough_to_poll() -> None:
    listeners()  # warm up (module autoload on first use)
    t0 = time.perf_counter()
    for _ in range(20):
        listeners()
    per_call = (time.perf_counter() - t0) / 20
    assert per_call < 0.05, f"{per_call * 1000:.1f} ms per call"


# --- /proc: fds and limits -------------------------------------------------------------------


def test_process_fds_counts_opened_files_and_sees_socket_inodes(
        closing: list[socket.socket]) -> None:
    me = os.getpid()
    before = kernel.process_fds(me)
    assert not isinstance(before, SourceError)
    files = [open(__file__, "rb") for _ in range(3)]  # noqa: SIM115
    try:
        s = tcp_listener(closing, backlog=1)
        after = kernel.process_fds(me)
        assert not isinstance(after, SourceError)
        assert after.open == before.open + 4
        assert inode_of(s) in after.socket_inodes
        assert inode_of(s) in kernel.socket_inodes(me)
        count_only = kernel.process_fds(me, sockets=False)
        assert not isinstance(count_only, SourceError)
        assert count_only.open == after.open and not count_only.socket_inodes
    finally:
        for f in files:
            f.close()
    again = kernel.process_fds(me)
    assert not isinstance(again, SourceError) and again.open == before.open + 1


def test_fd_limits_of_self_match_getrlimit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def norm(v: int) -> int:
        return UNLIMITED if v == resource.RLIM_INFINITY else v
    assert kernel.fd_limits(os.getpid()) == (norm(soft), norm(hard))


def test_fd_limits_of_another_process(children: list[subprocess.Popen[bytes]]) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (123, hard))
    p = subprocess.Popen(["sleep", "30"], preexec_fn=lower)
    children.append(p)
    assert kernel.fd_limits(p.pid) == (123, hard)


def test_parse_max_open_files_unlimited() -> None:
    text = ("Limit                     Soft Limit           Hard Limit           Units\n"
            "Max open files            1024                 unlimited            files\n")
    assert parse_max_open_files(text) == (1024, UNLIMITED)
    assert parse_max_open_files("Max cpu time unlimited unlimited seconds\n") is None


def test_vanished_pid_is_an_outcome_not_an_exception() -> None:
    p = subprocess.Popen(["true"])
    p.wait(5)
    for got in (kernel.process_fds(p.pid), kernel.fd_limits(p.pid)):
        assert isinstance(got, SourceError)
        assert got.message == f"process {p.pid} has exited"
    assert kernel.socket_inodes(p.pid) == frozenset()
    scan = kernel.scan_processes({p.pid: "uwsgi-worker"}, system=False)
    assert scan.vanished == (p.pid,)
    assert scan.errors == () and scan.report.processes == ()


def test_zombie_counts_as_exited() -> None:
    p = subprocess.Popen(["true"])
    try:
        # Exited but not reaped: /proc/PID still exists, with an empty fd directory.
        assert wait_for(lambda: Path(f"/proc/{p.pid}/stat").read_text().split(") ")[1][0] == "Z")
        got = kernel.process_fds(p.pid)
        assert isinstance(got, SourceError) and got.message == f"process {p.pid} has exited"
    finally:
        p.wait(5)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_other_users_process_gives_a_permission_reason() -> None:
    # A forked child turns into "nobody" and reads pid 1's /proc entries.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, f"{kernel.process_fds(1)!r}\n{kernel.fd_limits(1)!r}\n"
                        f"{type(kernel.listening_sockets()).__name__}\n".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    fds_line, limits_line, diag_line = out.splitlines()
    assert "not allowed to read /proc/1/fd" in fds_line, fds_line
    assert "run stackmon as that user or as root" in fds_line
    # /proc/PID/limits is world-readable: no capability needed, unlike prlimit().
    assert limits_line.startswith("("), limits_line
    assert diag_line == "list"  # sock_diag dumps need no privilege


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to mount a private /proc")
def test_hidepid_is_not_mistaken_for_exited(short_dir: Path) -> None:
    # A proc mounted with hidepid=2 in a private mount namespace (nothing else sees it),
    # read by a child that has become "nobody".
    short_dir.chmod(0o755)  # mkdtemp's 0700 would stop "nobody" before /proc's rules do
    mnt = short_dir / "proc"
    mnt.mkdir()
    code = ("import os; from stackmon.sources import procfs; "
            f"procfs.PROC = {str(mnt)!r}; "
            "os.setgroups([]); os.setgid(65534); os.setuid(65534); "
            "print(procfs.process_fds(1).message); print(procfs.fd_limits(1).message)")
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount -t proc -o hidepid=2 proc "$1" && exec "$2" -c "$3"', "sh", str(mnt),
         sys.executable, code],
        capture_output=True, text=True, timeout=30)
    if out.returncode != 0 and "mount" in out.stderr:
        pytest.skip(f"cannot mount proc here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    for line in out.stdout.splitlines():
        assert "hidden from this user by /proc's hidepid option" in line


def test_system_fds() -> None:
    got = kernel.system_fds()
    assert isinstance(got, SystemFds)
    assert 0 < got.open <= got.max
    assert got.nr_open == int(Path("/proc/sys/fs/nr_open").read_text())


def test_kernel_counters() -> None:
    c = kernel.kernel_counters()
    assert isinstance(c, KernelCounters)
    assert c.somaxconn == int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert c.listen_overflows is not None and c.listen_overflows >= 0
    assert c.listen_drops is not None and c.listen_drops >= c.listen_overflows


# --- processes -------------------------------------------------------------------------------


def test_processes_named_finds_a_child_and_loses_it_when_stopped(
        children: list[subprocess.Popen[bytes]]) -> None:
    p = subprocess.Popen(["sleep", "30"])
    children.append(p)
    # Popen returns once exec() has started; the kernel renames comm a moment later.
    assert wait_for(lambda: (p.pid, os.getpid()) in kernel.processes_named("sleep"))
    assert (p.pid, os.getpid()) not in kernel.processes_named("sleepy")
    os.kill(p.pid, signal.SIGTERM)
    p.wait(5)
    assert all(pid != p.pid for pid, _ in kernel.processes_named("sleep"))


def test_processes_named_truncates_like_comm(children: list[subprocess.Popen[bytes]],
                                             short_dir: Path) -> None:
    long_name = short_dir / "a-very-long-program-name"
    long_name.symlink_to(shutil.which("sleep") or "/bin/sleep")
    p = subprocess.Popen([str(long_name), "30"])
    children.append(p)
    found = wait_for(lambda: p.pid in dict(kernel.processes_named(long_name.name)))
    assert found


def test_nginx_roles_from_cmdline_then_ppid(children: list[subprocess.Popen[bytes]]) -> None:
    sleep = shutil.which("sleep") or "/bin/sleep"
    # argv[0] is what nginx rewrites its cmdline to; comm stays the executable's name.
    master = subprocess.Popen(["nginx: master process /etc/nginx.conf", "30"], executable=sleep)
    worker = subprocess.Popen(["nginx: worker process", "30"], executable=sleep)
    shutting = subprocess.Popen(["nginx: worker process is shutting down", "30"],
                                executable=sleep)
    cache = subprocess.Popen(["nginx: cache manager process", "30"], executable=sleep)
    plain = subprocess.Popen([sleep, "30"])
    children.extend([master, worker, shutting, cache, plain])
    mine = {c.pid for c in children}

    def found() -> list[tuple[int, int]]:
        procs = [(pid, ppid) for pid, ppid in kernel.processes_named("sleep") if pid in mine]
        return procs if len(procs) == len(mine) else []
    procs = wait_for(found)
    assert procs
    roles = kernel.nginx_roles(procs)
    assert roles[master.pid] == "nginx-master"
    assert roles[worker.pid] == roles[shutting.pid] == "nginx-worker"
    assert roles[cache.pid] == "nginx-cache"
    assert roles[plain.pid] == "nginx-master"  # no nginx title, parent is not nginx
    # Parent in the set: a worker, whatever the title, unless it is a master with children
    # (the new master of a binary upgrade); a just-forked worker still has the master title.
    assert kernel.nginx_roles([(plain.pid, master.pid), (master.pid, 1)])[plain.pid] == \
        "nginx-worker"
    assert kernel.nginx_roles([(plain.pid, 1), (master.pid, plain.pid)])[master.pid] == \
        "nginx-worker"
    upgrade = kernel.nginx_roles([(plain.pid, 1), (master.pid, plain.pid),
                                  (worker.pid, master.pid)])
    assert upgrade == {plain.pid: "nginx-master", master.pid: "nginx-master",
                       worker.pid: "nginx-worker"}


# --- attribution -----------------------------------------------------------------------------


def test_attribution_maps_listener_inodes_to_monitored_pids(
        closing: list[socket.socket], short_dir: Path,
        children: list[subprocess.Popen[bytes]]) -> None:
    t = tcp_listener(closing, backlog=5)
    u = unix_listener(closing, str(short_dir / "own.sock"), backlog=3)
    # A child that inherits the unix listener, as a uWSGI worker inherits its master's.
    child = subprocess.Popen(["sleep", "30"], pass_fds=[u.fileno()])
    children.append(child)
    me = os.getpid()
    roles = {me: "uwsgi-master", child.pid: "uwsgi-worker"}

    scan = kernel.scan_processes(roles)
    assert scan.errors == () and scan.vanished == ()
    assert isinstance(scan.report, FdReport) and scan.report.system is not None
    assert [p.pid for p in scan.report.processes] == sorted(roles)
    mine = next(p for p in scan.report.processes if p.pid == me)
    assert mine.role == "uwsgi-master"
    assert (mine.limit, mine.hard_limit) == kernel.fd_limits(me)
    assert scan.inode_pids[inode_of(t)] == {me}
    assert scan.inode_pids[inode_of(u)] == {me, child.pid}

    raw = listeners()
    got = {li.inode: li for li in kernel.listeners_for(raw, scan.inode_pids, roles)}
    assert got[inode_of(t)].owner == "uwsgi" and got[inode_of(t)].pids == (me,)
    assert got[inode_of(u)].pids == tuple(sorted((me, child.pid)))
    assert got[inode_of(u)].address == str(short_dir / "own.sock")
    assert (got[inode_of(u)].queue, got[inode_of(u)].backlog) == (0, 3)
    # Listeners nobody monitored holds are left out.
    only_child = kernel.listeners_for(raw, scan.inode_pids, {child.pid: "nginx-worker"})
    assert {li.inode for li in only_child} == {inode_of(u)}
    assert only_child[0].owner == "nginx" and only_child[0].pids == (child.pid,)

    # Only the masters' links read: the listeners are found all the same, named by the master.
    lean = kernel.scan_processes(roles, sockets=kernel.masters(roles))
    assert kernel.masters(roles) == {me}
    assert lean.inode_pids[inode_of(u)] == {me}
    assert [p.pid for p in lean.report.processes] == [p.pid for p in scan.report.processes]
    # (Only this process's count is stable: the child may still be loading libc and locales.)
    assert next(p.open for p in lean.report.processes if p.pid == me) == mine.open

    report, inode_pids = kernel.process_report(roles)
    assert inode_pids == scan.inode_pids and len(report.processes) == 2


def test_kernel_facts_in_one_call(closing: list[socket.socket]) -> None:
    t = tcp_listener(closing, backlog=4)
    facts = kernel.kernel_facts({os.getpid(): "nginx-master"})
    assert facts.errors == ()
    assert any(li.inode == inode_of(t) and li.owner == "nginx" for li in facts.listeners)
    assert all(li.owner == "nginx" for li in facts.listeners)
    assert facts.fds.system is not None and facts.kernel.somaxconn
    assert inode_of(t) not in {r.inode for r in facts.unowned}


# --- the real servers ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def _stop(p: subprocess.Popen[bytes], sig: int, children: tuple[int, ...] = ()) -> None:
    """Stop a server this test started, by pid. uWSGI 2.0 loses the master's stop signal to a
    worker still starting up and then waits for it forever, so after a grace period the
    workers (pids this test saw, children of `p`) get the signal directly."""
    if p.poll() is not None:
        return
    os.kill(p.pid, sig)
    try:
        p.wait(2)
        return
    except subprocess.TimeoutExpired:
        pass
    for pid in children:
        if kernel.parent_pid(pid) == p.pid:
            os.kill(pid, sig)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)


@pytest.mark.stack
@pytest.mark.skipif(shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin") is None,
                    reason="nginx not installed")
def test_real_nginx_master_workers_and_listeners(short_dir: Path) -> None:
    port = _free_port()
    sock = short_dir / "nginx.sock"
    temp = " ".join(f"{k}_temp_path {short_dir}/{k};"
                    for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = short_dir / "nginx.conf"
    conf.write_text(
        f"daemon off; master_process on; worker_processes 2; pid {short_dir}/nginx.pid;\n"
        f"error_log {short_dir}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; {temp}\n"
        f"  server {{ listen 127.0.0.1:{port} backlog=17; listen unix:{sock} backlog=9;\n"
        "    location / { return 204; } } }\n")
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert nginx
    p = subprocess.Popen([nginx, "-p", str(short_dir), "-c", str(conf), "-e",
                          str(short_dir / "error.log")])
    try:
        def family() -> list[tuple[int, int]]:
            procs = kernel.processes_named("nginx")
            mine = [(pid, ppid) for pid, ppid in procs if pid == p.pid or ppid == p.pid]
            return mine if len(mine) == 3 else []
        procs = wait_for(family, timeout=10)
        assert procs, (short_dir / "error.log").read_text()
        roles = kernel.nginx_roles(procs)
        assert roles[p.pid] == "nginx-master"
        assert sorted(roles.values()) == ["nginx-master", "nginx-worker", "nginx-worker"]

        facts = kernel.kernel_facts(roles)
        assert facts.errors == (), facts.errors
        got = {li.address: li for li in facts.listeners}
        tcp, unix = got[f"127.0.0.1:{port}"], got[str(sock)]
        assert (tcp.kind, tcp.owner, tcp.backlog) == ("tcp", "nginx", 17)
        assert (unix.kind, unix.owner, unix.backlog) == ("unix", "nginx", 9)
        assert tcp.pids == unix.pids == tuple(sorted(roles))
        assert {f.pid for f in facts.fds.processes} == set(roles)
        assert all(f.open > 0 and f.limit > 0 for f in facts.fds.processes)
    finally:
        _stop(p, signal.SIGQUIT)


@pytest.mark.stack
def test_real_uwsgi_master_workers_and_listeners(short_dir: Path) -> None:
    uwsgi = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")
    if uwsgi is None:
        pytest.skip("uwsgi not installed")
    port = _free_port()
    sock = short_dir / "app.sock"
    p = subprocess.Popen([uwsgi, "--master", "--processes", "2", "--die-on-term",
                          "--socket", str(sock), "--socket", f"127.0.0.1:{port}",
                          "--listen", "7", "--logto", str(short_dir / "uwsgi.log")])
    procs: list[tuple[int, int]] = []
    try:
        def family() -> list[tuple[int, int]]:
            procs = kernel.processes_named("uwsgi")
            mine = [(pid, ppid) for pid, ppid in procs if pid == p.pid or ppid == p.pid]
            return mine if len(mine) == 3 else []
        procs = wait_for(family, timeout=10)
        assert procs, (short_dir / "uwsgi.log").read_text()
        # Ready = every process idle in its event loop. A stop signal that lands earlier can be
        # lost by a worker still starting (see _stop).
        wait_for(lambda: all(_wchan(pid) == "do_epoll_wait" for pid, _ in procs))
        roles = {pid: "uwsgi-master" if pid == p.pid else "uwsgi-worker"
                 for pid, _ in procs}
        facts = kernel.kernel_facts(roles)
        assert facts.errors == (), facts.errors
        got = {li.address: li for li in facts.listeners}
        for address in (str(sock), f"127.0.0.1:{port}"):
            assert got[address].backlog == 7 and got[address].owner == "uwsgi"
            assert got[address].pids == tuple(sorted(roles))
    finally:
        _stop(p, signal.SIGINT, tuple(pid for pid, _ in procs or ()))


def _listener(address: str, kind: str = "tcp", queue: int = 0, backlog: int = 100,
              pids: tuple[int, ...] = (10,), instance: str = "") -> Listener:
    return Listener(address=address, kind=kind,  # type: ignore[arg-type]
                    owner="uwsgi", queue=queue, backlog=backlog, pids=pids, instance=instance)


def _inst(*names: str, master: int = 10, address: str = "127.0.0.1:9002") -> UwsgiInstance:
    return UwsgiInstance(address=address, version="2.0.31", master_pid=master, listen_queue=0,
                         listen_queue_max=0,
                         sockets=tuple(Socket(name=n, proto="uwsgi", queue=0, max_queue=0)
                                       for n in names), workers=())


@pytest.mark.parametrize(("name", "kernel"), [
    ("@app", "@app@"),                      # uWSGI binds "\0app\0"; stats say @app
    ("@app", "@app"),                       # another server's "\0app"
    ("/run/app.sock", "/run/app.sock"),
    ("app.sock", "app.sock"),               # relative, as given to bind()
    (":3031", "0.0.0.0:3031"),
    ("0.0.0.0:3031", "0.0.0.0:3031"),
    ("*:3031", "0.0.0.0:3031"),
    ("[::]:3031", "[::]:3031"),
    ("127.0.0.1:3031", "127.0.0.1:3031"),
    ("localhost:3031", "127.0.0.1:3031"),   # a host name: the master's own listener on the port
])
def test_every_socket_spelling_takes_the_kernels_figures(name: str, kernel: str) -> None:
    kind = "unix" if kernel.startswith(("@", "/")) or kernel.endswith(".sock") else "tcp"
    merged = merge_kernel_queues(_inst(name), (_listener(kernel, kind, 34, 33),))
    (sock,) = merged.sockets
    assert (sock.queue, sock.max_queue, sock.source) == (34, 33, "kernel")
    assert (merged.listen_queue, merged.listen_queue_max) == (34, 33)


def test_the_exact_address_wins_over_a_wildcard_and_other_ports_never_match() -> None:
    listeners = (_listener("0.0.0.0:3031", queue=1), _listener("127.0.0.1:3031", queue=7),
                 _listener("127.0.0.1:3032", queue=9))
    (sock,) = merge_kernel_queues(_inst("127.0.0.1:3031"), listeners).sockets
    assert sock.queue == 7
    (other,) = merge_kernel_queues(_inst("127.0.0.1:4000"), listeners).sockets
    assert other.source == "stats"
    (unix,) = merge_kernel_queues(_inst("@app"), (_listener("@apple@", "unix", 5),)).sockets
    assert unix.source == "stats"


def test_tagged_listeners_belong_to_their_instance_whatever_the_pids() -> None:
    """gather_local_facts tags each uWSGI listener with its instance's stats address: a
    container's master (stats pid 1) gets its listener held by host pid 4242, and host pid 1's
    listeners are never taken for it."""
    mine = _listener("/run/app.sock", "unix", 3, 64, pids=(4242,), instance="127.0.0.1:9002")
    init = _listener("/run/app.sock", "unix", 50, 50, pids=(1,), instance="127.0.0.1:9999")
    merged = merge_kernel_queues(_inst("/run/app.sock", master=1), (init, mine))
    (sock,) = merged.sockets
    assert (sock.queue, sock.max_queue) == (3, 64)
    assert any("another pid namespace" in w and "4242" in w for w in merged.warnings)


def test_a_poll_dumps_the_listeners_once(stack, monkeypatch) -> None:
    """The master is confirmed from the same sock_diag dump the queues come from: a second
    dump of every listener per poll was a third of the poll thread's kernel reads."""
    from stackmon import collect, trust
    from stackmon.sources import uwsgi_stats

    calls: list[str] = []
    real = kernel.listening_sockets

    def counted():
        calls.append("dump")
        return real()

    monkeypatch.setattr(kernel, "listening_sockets", counted)
    monkeypatch.setattr(trust, "listening_sockets", counted)
    raw = json.dumps(stack.stats()).encode()
    inst = uwsgi_stats.parse_stats(raw, stack.stats_address, time.time(), Thresholds())
    assert isinstance(inst, UwsgiInstance)
    facts = collect.gather_local_facts([inst], None)
    assert calls == ["dump"]
    assert facts.roles and "uwsgi-master" in facts.roles.values(), facts.errors


def test_a_confirmed_master_is_reused_only_while_nothing_changed(stack, monkeypatch) -> None:
    """The {doc pid: host pid} mapping is confirmed from the kernel (the master's fds) and
    reused for CONFIRM_REUSE_S while the listener, the master's start and the pids the
    document names are the same; a document naming another worker pid is confirmed afresh,
    and a pid that is not the master's child gets no mapping."""
    from dataclasses import replace as dc_replace

    from stackmon import collect
    from stackmon.sources import uwsgi_stats

    monkeypatch.setattr(collect, "_CONFIRMED", {})
    listings: list[int] = []
    real = kernel.socket_inodes

    def counted(pid: int) -> frozenset[int]:
        listings.append(pid)
        return real(pid)

    monkeypatch.setattr(kernel, "socket_inodes", counted)
    doc = json.dumps(stack.stats()).encode()
    inst = uwsgi_stats.parse_stats(doc, stack.stats_address, time.time(), Thresholds())
    assert isinstance(inst, UwsgiInstance)
    raw = kernel.listening_sockets()
    assert not isinstance(raw, SourceError)
    first = collect.resolve_instance(inst, raw)
    assert isinstance(first, dict) and first[inst.master_pid] == inst.master_pid
    assert listings, "the first poll confirms from the master's fds"
    listings.clear()
    assert collect.resolve_instance(inst, raw) == first and listings == []
    # A worker pid the kernel never confirmed: confirmed afresh, and left unmapped.
    liar = dc_replace(inst, workers=(dc_replace(inst.workers[0], pid=1), *inst.workers[1:]))
    again = collect.resolve_instance(liar, raw)
    assert listings and isinstance(again, dict) and 1 not in again
    listings.clear()
    monkeypatch.setattr(collect, "CONFIRM_REUSE_S", 0.0)
    assert collect.resolve_instance(inst, raw) == first and listings

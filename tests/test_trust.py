"""A lying stats server must not steer root: attacks by an unprivileged user, on the real stack.

Each test does what a local attacker (`nobody`) could: run a process that calls itself `uwsgi`
(prctl PR_SET_NAME) with a command line naming root's files as its master FIFO, touch file or
ini, and serve a stats document naming whatever pids it likes. stackmon, running as root, must
refuse, say why, and leave every file and process untouched. The genuine paths (kill, reload
on a real uWSGI) are covered in test_actions_kill.py and test_actions_reload.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError, ActionTarget
from stackmon.actions.kill import kill_worker
from stackmon.actions.reload import reload_uwsgi
from stackmon.addresses import parse_stats_address
from stackmon.trust import ConfirmedMaster, Identity, Refusal, confirm_master, signal_checked
from tests.conftest import wait_until

NOBODY = 65534
PYTHON = "/usr/bin/python3"  # the venv's interpreter lives under /root, closed to nobody

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(PYTHON, os.X_OK) or shutil.which("setpriv") is None,
    reason="needs root, setpriv and a system python3 to run processes as nobody",
)

# A process that calls itself uwsgi. Its command line (after the script) is whatever the test
# gives: the "uWSGI options" root would read. Configured through the environment:
#   FAKE_STATS   address to serve a stats document on (127.0.0.1:PORT or a unix path)
#   FAKE_CLAIM   the "pid" the document names (default: this process)
#   FAKE_WORKER  the worker pid the document names; "child" spawns a sleep and names it
#   FAKE_FIFO    a FIFO to hold open for reading; what arrives is appended to FAKE_FIFO.got
FAKE = r'''
import ctypes, json, os, socket, subprocess, sys, threading, time
ctypes.CDLL(None).prctl(15, b"uwsgi", 0, 0, 0)  # PR_SET_NAME: comm is now "uwsgi"
env = os.environ
child = None
worker = env.get("FAKE_WORKER", "")
if worker == "child":
    child = subprocess.Popen(["sleep", "300"])
    worker = str(child.pid)
fifo = env.get("FAKE_FIFO")
if fifo:
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    def drain():
        while True:
            try:
                data = os.read(fd, 64)
            except BlockingIOError:
                data = b""
            if data:
                with open(fifo + ".got", "ab") as out:
                    out.write(data)
            time.sleep(0.05)
    threading.Thread(target=drain, daemon=True).start()
addr = env.get("FAKE_STATS")
srv = None
if addr:
    if addr.startswith("/"):
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(addr)
    else:
        host, port = addr.rsplit(":", 1)
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, int(port)))
    srv.listen(16)
now = time.time()
workers = []
if worker:
    spawn = int(now)
    try:
        ticks = int(open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[19])
        boot = float(open("/proc/stat").read().split("btime ")[1].split()[0])
        spawn = int(boot + ticks / os.sysconf("SC_CLK_TCK"))
    except OSError:
        pass
    workers = [{"id": 1, "pid": int(worker), "status": "busy", "last_spawn": spawn,
                "requests": 1, "cores": []}]
doc = {"version": "2.0.31", "pid": int(env.get("FAKE_CLAIM") or os.getpid()),
       "listen_queue": 0, "listen_queue_errors": 0, "sockets": [], "workers": workers}
print(json.dumps({"pid": os.getpid(), "child": child.pid if child else None}), flush=True)
while srv is not None:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(json.dumps(doc).encode())
time.sleep(300)
'''


class Nobody:
    """Processes started as nobody for one test; each is ended by its own pid at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.script = workdir / "fake_uwsgi.py"
        self.script.write_text(FAKE)
        self.script.chmod(0o644)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *uwsgi_args: str, cwd: Path | None = None,
              **env: str) -> tuple[int, int | None]:
        """(pid, child pid) of a fake uwsgi run as nobody, once it is ready."""
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               PYTHON, str(self.script), *uwsgi_args]
        full_env = {"PATH": "/usr/bin:/bin", **{f"FAKE_{k.upper()}": v for k, v in env.items()}}
        proc = subprocess.Popen(cmd, env=full_env, cwd=cwd or self.workdir,
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"fake uwsgi did not start (exit {proc.poll()})"
        ready = json.loads(line)
        return ready["pid"], ready["child"]

    def stop(self) -> None:
        for proc in self.procs:
            with_children: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                with_children = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
            proc.wait()
            for child in with_children:
                with contextlib.suppress(psutil.Error):
                    child.kill()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A /tmp directory nobody can traverse; `attacker/` in it is nobody's own."""
    path = Path(tempfile.mkdtemp(prefix="stackmon-trust-"))
    path.chmod(0o755)
    mine = path / "attacker"
    mine.mkdir()
    os.chown(mine, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nobody(workdir: Path) -> Iterator[Nobody]:
    n = Nobody(workdir)
    yield n
    n.stop()


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit.log")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def target(address: str) -> ActionTarget:
    return ActionTarget(host="h", address=parse_stats_address(address))


def root_secret(workdir: Path) -> tuple[Path, bytes, float]:
    """A root-owned 0600 file: its bytes and mtime must never change."""
    secret = workdir / "root-secret"
    secret.write_bytes(b"ROOT DATA\n")
    secret.chmod(0o600)
    os.utime(secret, (1_000_000, 1_000_000))
    return secret, secret.read_bytes(), secret.stat().st_mtime


def reload_refused(address: str, mode: str, audit: AuditLog) -> ActionError:
    with pytest.raises(ActionError) as info:
        asyncio.run(reload_uwsgi(target(address), mode, audit=audit))  # type: ignore[arg-type]
    return info.value


# ------------------------------------------------------------------ (a) a fake master


def test_a_stats_server_naming_a_fake_uwsgi_cannot_make_root_write(workdir, nobody, audit):
    """The attack as found: nobody's `uwsgi` names root's file as master FIFO and as touch
    file; a separate stats server names that process as its master."""
    secret, content, mtime = root_secret(workdir)
    created = workdir / "created-by-root"
    fake, _ = nobody.start("--master", "--master-fifo", str(secret),
                           "--touch-chain-reload", str(created))
    assert psutil.Process(fake).name() == "uwsgi"  # the old check would have believed it
    address = f"127.0.0.1:{free_port()}"
    server, _ = nobody.start(stats=address, claim=str(fake))
    for mode in ("graceful", "chain"):
        err = reload_refused(address, mode, audit)
        assert err.kind == "not_worker"
        assert f"pid {fake} (uwsgi)" in err.message and f"is pid {server}" in err.message
    assert secret.read_bytes() == content and secret.stat().st_mtime == mtime
    assert not created.exists()
    assert [e["outcome"] for e in audit.entries()] == ["refused: not_worker"] * 2


def test_a_fake_master_serving_its_own_stats_cannot_name_root_files(workdir, nobody, audit):
    """Now the fake master holds the stats socket itself, so it IS the confirmed master (of
    nobody's own instance): what its command line names is checked against its user."""
    secret, content, mtime = root_secret(workdir)
    address = f"127.0.0.1:{free_port()}"
    nobody.start("--master-fifo", str(secret), stats=address)
    err = reload_refused(address, "graceful", audit)
    assert err.kind == "not_worker"
    assert f"{secret} named by master" in err.message
    assert "is a regular file, not a FIFO" in err.message
    assert secret.read_bytes() == content and secret.stat().st_mtime == mtime

    # A chain reload through a touch file: root's file is not touched, a missing one is not
    # created.
    address2 = f"127.0.0.1:{free_port()}"
    nobody.start("--touch-chain-reload", str(secret), stats=address2)
    err = reload_refused(address2, "chain", audit)
    assert "belongs to uid 0, not to the uWSGI master's user (65534)" in err.message
    assert secret.stat().st_mtime == mtime
    missing = workdir / "attacker" / "nope"
    address3 = f"127.0.0.1:{free_port()}"
    nobody.start("--touch-chain-reload", str(missing), stats=address3)
    err = reload_refused(address3, "chain", audit)
    assert "does not exist" in err.message
    assert not missing.exists()


def test_a_touch_file_of_the_masters_own_user_is_touched(workdir, nobody, audit):
    """The positive case of the touch check: nobody's instance, nobody's file."""
    touch = workdir / "attacker" / "reload.touch"
    touch.write_text("")
    os.chown(touch, NOBODY, NOBODY)
    os.utime(touch, (1_000_000, 1_000_000))
    address = f"127.0.0.1:{free_port()}"
    nobody.start("--touch-chain-reload", str(touch), stats=address)
    result = asyncio.run(reload_uwsgi(target(address), "chain", audit=audit))
    assert result.ok and "touch" in result.data["method"]
    assert touch.stat().st_mtime > 1_000_000 + 1000


# ------------------------------------------------------------------ (b) kill


def test_kill_of_a_fake_masters_child_is_refused(workdir, nobody, audit):
    fake, sleep = nobody.start("--master", worker="child")
    assert sleep is not None
    address = str(workdir / "attacker" / "stats.sock")
    server, _ = nobody.start(stats=address, claim=str(fake), worker=str(sleep))
    with pytest.raises(ActionError) as info:
        asyncio.run(kill_worker(target(address), 1, sleep, "TERM", audit=audit))
    assert info.value.kind == "not_worker"
    assert f"name pid {fake} (uwsgi)" in info.value.message
    assert f"is pid {server}" in info.value.message
    time.sleep(0.3)
    assert psutil.Process(sleep).status() != psutil.STATUS_ZOMBIE  # never signalled
    assert audit.entries()[-1]["outcome"] == "refused: not_worker"


def test_kill_of_a_process_that_is_not_the_holders_child_is_refused(workdir, nobody, audit):
    """The stats server is the confirmed master here (it holds its socket), but the pid it
    names as its worker is someone else's child."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        address = str(workdir / "attacker" / "stats.sock")
        server, _ = nobody.start(stats=address, worker=str(victim.pid))
        with pytest.raises(ActionError) as info:
            asyncio.run(kill_worker(target(address), 1, victim.pid, "KILL", audit=audit))
        assert info.value.kind == "not_worker"
        assert f"not a worker of the uWSGI master {server}" in info.value.message
        assert f"its parent is {os.getpid()}" in info.value.message
        time.sleep(0.2)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


# ------------------------------------------------------------------ (c) a real instance


def test_fake_stats_naming_a_real_instance_cannot_touch_it(fresh_stack, nobody, audit):
    st = fresh_stack(workers=2, threads=1, nginx=False)
    real = st.stats()["workers"][0]
    address = f"127.0.0.1:{free_port()}"
    server, _ = nobody.start(stats=address, claim=str(st.master_pid), worker=str(real["pid"]))
    with pytest.raises(ActionError) as info:
        asyncio.run(kill_worker(target(address), 1, real["pid"], "KILL", audit=audit))
    assert info.value.kind == "not_worker"
    assert f"name pid {st.master_pid} (uwsgi)" in info.value.message
    assert f"is pid {server}" in info.value.message
    before = [w["pid"] for w in st.stats()["workers"]]
    err = reload_refused(address, "graceful", audit)
    assert err.kind == "not_worker"
    time.sleep(0.5)
    assert [w["pid"] for w in st.stats()["workers"]] == before  # not reloaded
    assert real["pid"] in before  # the worker is alive with the same pid


def test_confirm_master_of_a_real_instance(fresh_stack):
    st = fresh_stack(workers=2, threads=1, nginx=False)
    got = confirm_master(parse_stats_address(st.stats_address), st.master_pid)
    assert isinstance(got, ConfirmedMaster), got
    assert (got.pid, got.uid) == (st.master_pid, 0)
    assert got.start_time == psutil.Process(st.master_pid).create_time()
    # A worker is not the master, even though it is a uwsgi process of the same instance.
    worker = st.worker_pids()[0]
    wrong = confirm_master(parse_stats_address(st.stats_address), worker)
    assert isinstance(wrong, Refusal) and wrong.kind == "not_worker"
    assert f"pid {worker} (uwsgi)" in wrong.message and f"is pid {st.master_pid}" in wrong.message
    # Another host's address is not_local, as before.
    remote = confirm_master(parse_stats_address("192.0.2.7:1717"), st.master_pid)
    assert isinstance(remote, Refusal) and remote.kind == "not_local"


def test_confirm_master_by_unix_path_and_abstract_name(workdir):
    path = workdir / "s.sock"
    with socket.socket(socket.AF_UNIX) as by_path, socket.socket(socket.AF_UNIX) as abstract:
        by_path.bind(str(path))
        by_path.listen()
        name = f"stackmon-trust-{os.getpid()}"
        abstract.bind("\0" + name)
        abstract.listen()
        for address in (str(path), f"@{name}"):
            got = confirm_master(parse_stats_address(address), os.getpid())
            assert isinstance(got, ConfirmedMaster), got
        # Through a symlink: the same socket file, so the same listener.
        link = workdir / "link.sock"
        link.symlink_to(path)
        got = confirm_master(parse_stats_address(str(link)), os.getpid())
        assert isinstance(got, ConfirmedMaster), got
    gone = confirm_master(parse_stats_address(str(path)), os.getpid())
    assert isinstance(gone, Refusal) and "listens on" in gone.message


# ------------------------------------------------------------------ (d) the FIFO checks


def _fifo(path: Path, uid: int) -> Path:
    os.mkfifo(path, 0o600)
    os.chown(path, uid, uid)
    return path


def test_fifo_of_another_user_or_not_held_by_the_master_is_refused(workdir, nobody, audit):
    other = _fifo(workdir / "daemon.fifo", 1)  # uid 1 (daemon): not the master's user
    address = f"127.0.0.1:{free_port()}"
    nobody.start("--master-fifo", str(other), stats=address)
    err = reload_refused(address, "graceful", audit)
    assert "belongs to uid 1, not to the uWSGI master's user (65534) or root" in err.message

    # Root's FIFO (another instance's, say) that this master does not hold open.
    roots = _fifo(workdir / "root.fifo", 0)
    reader = os.open(roots, os.O_RDONLY | os.O_NONBLOCK)  # "the real master" reads it
    try:
        address2 = f"127.0.0.1:{free_port()}"
        nobody.start("--master-fifo", str(roots), stats=address2)
        err = reload_refused(address2, "graceful", audit)
        assert "does not have the FIFO" in err.message
        assert os.read(reader, 64) == b""  # nothing was written
    finally:
        os.close(reader)

    # A device named as the FIFO is refused without being opened for writing.
    address3 = f"127.0.0.1:{free_port()}"
    nobody.start("--master-fifo", "/dev/null", stats=address3)
    err = reload_refused(address3, "graceful", audit)
    assert "is a character device, not a FIFO" in err.message


def test_the_masters_own_fifo_is_written(workdir, nobody, audit):
    """The positive case: a FIFO of the master's user that the master holds open."""
    fifo = _fifo(workdir / "attacker" / "master.fifo", NOBODY)
    address = f"127.0.0.1:{free_port()}"
    nobody.start("--master-fifo", str(fifo), stats=address, fifo=str(fifo))
    result = asyncio.run(reload_uwsgi(target(address), "graceful", audit=audit))
    assert result.ok and "FIFO" in result.data["method"]
    got = Path(str(fifo) + ".got")
    wait_until(lambda: got.exists() and got.read_bytes() == b"r", timeout=5)


# ------------------------------------------------------------------ (e) hostile ini files


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("kind", ["dev-zero", "100MB", "root-only", "fifo"])
def test_hostile_ini_is_refused_quickly_with_bounded_memory(workdir, nobody, audit, kind):
    if kind == "dev-zero":
        ini, why = "/dev/zero", "is a character device, not a regular file"
    elif kind == "100MB":
        big = workdir / "attacker" / "big.ini"
        with big.open("wb") as fh:
            fh.write(b"[uwsgi]\n")
            fh.truncate(100 * 1024 * 1024)
        big.chmod(0o644)
        ini, why = str(big), "over the 1048576-byte limit"
    elif kind == "root-only":
        secret = workdir / "root.ini"
        secret.write_text("[uwsgi]\nmaster-fifo = /tmp/x\n")
        secret.chmod(0o600)
        ini, why = str(secret), "not readable by uid 65534"
    else:
        fifo = workdir / "attacker" / "hang.ini"
        os.mkfifo(fifo, 0o666)
        ini, why = str(fifo), "is a FIFO, not a regular file"
    address = f"127.0.0.1:{free_port()}"
    nobody.start("--ini", ini, stats=address)
    before = _maxrss_mb()
    started = time.monotonic()
    err = reload_refused(address, "graceful", audit)
    took = time.monotonic() - started
    assert took < 2.0, took
    assert _maxrss_mb() - before < 50
    assert err.kind == "permission" and why in err.message, err.message
    assert ini in err.message


# ------------------------------------------------------------------ the last check


def test_signal_checked_refuses_a_changed_parent_or_start_time():
    child = subprocess.Popen(["sleep", "60"])
    try:
        proc = psutil.Process(child.pid)
        right = Identity(proc.create_time(), os.getpid())
        wrong_parent = signal_checked(child.pid, Identity(right.start_time, 1), 9)
        assert isinstance(wrong_parent, Refusal) and wrong_parent.kind == "stale"
        assert "no longer a child of 1" in wrong_parent.message
        reused = signal_checked(child.pid, Identity(right.start_time - 5, os.getpid()), 9)
        assert isinstance(reused, Refusal) and "another process" in reused.message
        assert child.poll() is None  # neither refusal sent anything
        assert signal_checked(child.pid, right, 15) == "sent"
        child.wait(5)
        assert child.returncode == -15
        assert signal_checked(child.pid, right, 15) == "gone"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()



@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_a_master_in_another_pid_namespace_is_refused_not_mapped(workdir, audit):
    """Its stats name pid 1 (its own namespace's view): never taken as this host's pid 1."""
    address = f"127.0.0.1:{free_port()}"
    script = workdir / "fake_uwsgi.py"
    script.write_text(FAKE)
    proc = subprocess.Popen(["unshare", "--pid", "--fork", PYTHON, str(script)],
                            env={"PATH": "/usr/bin:/bin", "FAKE_STATS": address},
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["pid"] == 1
        got = confirm_master(parse_stats_address(address), 1)
        assert isinstance(got, Refusal) and got.kind == "not_local", got
        assert "another pid namespace" in got.message and "1 inside it" in got.message
        err = reload_refused(address, "graceful", audit)
        assert err.kind == "not_local"
    finally:
        inner = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait()
        for child in inner:
            with contextlib.suppress(psutil.Error):
                child.kill()

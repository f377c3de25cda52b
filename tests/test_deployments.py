"""stackmon on the deployments production runs, against real uWSGI (issue 11).

Each mode is started here as it is run for real: cheaper mode with the busyness algorithm, an
emperor with two vassals that each have stats, uWSGI in its own pid namespace (`unshare --pid
--fork --mount-proc`), `socket = @name` with a filled queue, stats-http polled both ways,
stats-minified with a quote in a socket path, and stackmon run as a user who cannot read
uWSGI's /proc/PID/fd. Each test compares what stackmon says with the stats document and with
`ss` at the same moment. Recorded public stats documents from other projects' tests
(tests/fixtures/uwsgi/ORIGINS.md) must parse with their worker count.

Every process is started here and stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError, ActionTarget
from stackmon.actions.kill import kill_worker
from stackmon.addresses import parse_stats_address
from stackmon.collect import poll_vassals, stats_address
from stackmon.config import targets_from_args
from stackmon.hosts.once import poll_once
from stackmon.model import HostSnapshot, SourceError, Thresholds, UwsgiInstance
from stackmon.render_text import render_host
from stackmon.sources import procfs
from stackmon.sources.uwsgi_stats import fetch_stats, parse_stats
from tests.conftest import uwsgi_packet, wait_until
from tests.test_agent import start_agent  # noqa: F401  (a fixture)
from tests.test_uwsgi_stats import APP_SOURCE, UwsgiProcess, free_port, raw_doc, require_uwsgi

FIXTURES = Path(__file__).parent / "fixtures" / "uwsgi"
TH = Thresholds(slow=10.0, critical=60.0)
STACKMON = str(Path(sys.prefix) / "bin" / "stackmon")

pytestmark = pytest.mark.stack


# ------------------------------------------------------------------ helpers


@pytest.fixture
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short, world-traversable directory (unix socket paths are limited to 108 bytes)."""
    path = Path(tmp_path_factory.mktemp("dep", numbered=True))
    short = Path("/tmp") / f"smd-{os.getpid()}-{path.name}"
    short.mkdir(mode=0o755)
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def started() -> Iterator[Callable[[UwsgiProcess], UwsgiProcess]]:
    """Start UwsgiProcess objects; every one is stopped (by its pid) at the end."""
    procs: list[UwsgiProcess] = []

    def start(proc: UwsgiProcess) -> UwsgiProcess:
        procs.append(proc)
        proc.start()
        return proc

    yield start
    for proc in procs:
        proc.stop()


def doc_of(address: str) -> dict[str, Any]:
    return raw_doc(address)


def snapshot_cli(*addresses: str, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None) -> tuple[dict[str, Any], int, str]:
    """`stackmon snapshot --json` in a subprocess, as a user runs it."""
    argv = [*(prefix or []), STACKMON, "snapshot", "--json", "--rate-window", "0"]
    for a in addresses:
        argv += ["--uwsgi", a]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout, out.stderr
    return json.loads(out.stdout), out.returncode, out.stderr


def ss_listeners(flags: str) -> dict[str, tuple[int, int]]:
    """`ss -l<flags>n`: local address -> (Recv-Q, Send-Q), i.e. queue and backlog."""
    out = subprocess.run(["ss", f"-Hl{flags}n"], capture_output=True, text=True, check=True)
    found: dict[str, tuple[int, int]] = {}
    for line in out.stdout.splitlines():
        cols = line.split()
        if flags == "x":  # Netid State Recv-Q Send-Q Local Port Peer Port
            found[cols[4]] = (int(cols[2]), int(cols[3]))
        else:  # State Recv-Q Send-Q Local Peer
            found[cols[3]] = (int(cols[1]), int(cols[2]))
    return found


def host_poll(*addresses: str) -> HostSnapshot:
    targets = targets_from_args(list(addresses), None, {"timeout": "3s"})
    return asyncio.run(poll_once(targets, rate_window=0)).hosts[0]


def configure(binary: str, workdir: Path, name: str, stats: str, **options: Any) -> UwsgiProcess:
    proc = UwsgiProcess.configure(binary, workdir, name, stats, workers=options.pop("workers", 1),
                                  extra=options)
    proc.options["logto"] = str(workdir / f"{name}.log")
    return proc


# ------------------------------------------------------------------ recorded documents


@pytest.mark.parametrize(("name", "workers", "cheap"), [
    ("uwsgi_exporter-sample.json", 2, 0),
    ("telegraf-basic.json", 1, 0),
    ("fullerite-no-ids.json", 8, 1),
    ("idle.json", 2, 0),
    ("busy.json", 2, 0),
])
def test_recorded_public_documents_parse_with_their_worker_count(name: str, workers: int,
                                                                 cheap: int) -> None:
    raw = (FIXTURES / name).read_bytes()
    inst = parse_stats(raw, "127.0.0.1:1717", 1_800_000_000.0, TH)
    assert isinstance(inst, UwsgiInstance), inst
    assert len(inst.workers) == workers == len(json.loads(raw)["workers"])
    assert [w.id for w in inst.workers] == list(range(1, workers + 1))
    assert inst.cheap_workers == cheap
    assert inst.kind == "instance"
    text = "\n".join(render_host(HostSnapshot(name="h", taken_at=0, reachable=True,
                                              uwsgi=(inst,))))
    rows = [line for line in text.splitlines() if line.lstrip().startswith("worker ")]
    assert len(rows) == workers - cheap
    if cheap:
        assert f"{cheap} cheap (not spawned): worker 4" in text


def test_recorded_emperor_document_is_an_emperor_not_an_instance() -> None:
    raw = (FIXTURES / "emperor-two-vassals.json").read_bytes()
    doc = json.loads(raw)
    inst = parse_stats(raw, "/run/emperor.stats", 1_800_000_000.0, TH)
    assert isinstance(inst, UwsgiInstance), inst
    assert inst.kind == "emperor" and inst.workers == ()
    assert [(v.name, v.pid) for v in inst.vassals] == [(v["id"], v["pid"])
                                                       for v in doc["vassals"]]
    assert all(v.ready and v.monitor == doc["emperor"][0] for v in inst.vassals)
    assert inst.warnings == ()  # no "no workers in the document"
    text = "\n".join(render_host(HostSnapshot(name="h", taken_at=0, reachable=True,
                                              uwsgi=(inst,))))
    assert "emperor" in text and "busy 0/0" not in text
    assert "vassal app2.ini" in text and "vassal app1.ini" in text


def test_stats_option_spellings_become_pollable_addresses() -> None:
    assert stats_address(":1717", False, "/srv") == ("127.0.0.1:1717", "")
    assert stats_address("0.0.0.0:1717", True, "/srv") == ("http://127.0.0.1:1717", "")
    assert stats_address("run/app.stats", False, "/srv") == ("/srv/run/app.stats", "")
    assert stats_address("@app", False, "/srv") == ("@app", "")
    addr, note = stats_address("/run/app.stats", True, "/srv")
    assert addr == "" and "TCP only" in note


# ------------------------------------------------------------------ cheaper mode


def test_cheaper_mode_lists_every_worker_by_position(workdir: Path, started: Any) -> None:
    binary = require_uwsgi()
    stats = str(workdir / "cheap.stats")
    proc = started(configure(binary, workdir, "cheap", stats, workers=4, cheaper=1,
                             **{"cheaper-initial": 1, "cheaper-algo": "busyness"}))

    def ready() -> dict[str, Any]:  # {}: not yet
        doc = doc_of(stats)
        live = [w for w in doc["workers"] if w["pid"] and w["accepting"]]
        return doc if len(doc["workers"]) == 4 and len(live) == 1 else {}

    doc = wait_until(ready, timeout=20, message=proc.log_tail)
    # What uWSGI really sends: the workers not spawned share id 0.
    assert [w["status"] for w in doc["workers"]].count("cheap") == 3
    assert {w["id"] for w in doc["workers"] if w["status"] == "cheap"} == {0}

    host = host_poll(stats)
    (inst,) = host.uwsgi
    assert [w.id for w in inst.workers] == [1, 2, 3, 4]
    assert [w.pid for w in inst.workers] == [w["pid"] for w in doc["workers"]]
    assert [w.cheap for w in inst.workers] == [w["status"] == "cheap" for w in doc["workers"]]
    assert inst.cheap_workers == 3 and inst.busy_workers == 0
    text = "\n".join(render_host(host))
    assert "busy 0/4 (3 cheap)" in text
    assert "3 cheap (not spawned): workers 2-4" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("  worker ")]) == 1

    snap, code, _ = snapshot_cli(stats)
    workers = snap["hosts"][0]["uwsgi"][0]["workers"]
    assert [w["id"] for w in workers] == [1, 2, 3, 4]
    assert [w["cheap"] for w in workers] == [False, True, True, True]
    assert code == 0
    # The queue is the kernel's, as ss says.
    sock = next(s for s in snap["hosts"][0]["uwsgi"][0]["sockets"]
                if s["name"] == proc.options["socket"])
    assert sock["source"] == "kernel"
    assert (sock["queue"], sock["max_queue"]) == ss_listeners("x")[proc.options["socket"]]


def test_kill_of_a_cheap_worker_says_it_has_no_process(workdir: Path, started: Any,
                                                       tmp_path: Path) -> None:
    binary = require_uwsgi()
    stats = str(workdir / "cheapk.stats")
    proc = started(configure(binary, workdir, "cheapk", stats, workers=3, cheaper=1,
                             **{"cheaper-initial": 1, "cheaper-algo": "busyness"}))
    wait_until(lambda: len([w for w in doc_of(stats)["workers"] if w["pid"]]) == 1
               and len(doc_of(stats)["workers"]) == 3, timeout=20, message=proc.log_tail)
    target = ActionTarget(host="h1", address=parse_stats_address(stats), timeout=3.0)
    audit = AuditLog(tmp_path / "audit.log")
    with pytest.raises(ActionError) as cheap:
        asyncio.run(kill_worker(target, 3, 0, audit=audit))
    assert cheap.value.kind == "gone"
    assert "worker 3 has no process (cheap: not spawned)" in cheap.value.message
    assert "already exited" not in cheap.value.message
    with pytest.raises(ActionError) as zero:
        asyncio.run(kill_worker(target, 0, 0, audit=audit))
    assert zero.value.kind == "not_found"
    assert len([w for w in doc_of(stats)["workers"] if w["pid"]]) == 1  # nothing was touched


# ------------------------------------------------------------------ emperor


@contextlib.contextmanager
def emperor(binary: str, workdir: Path, vassals: int) -> Iterator[tuple[str, list[str]]]:
    """An emperor over `vassals` vassals, each with its own stats server (unix sockets)."""
    vdir = workdir / "vassals"
    vdir.mkdir()
    (workdir / "app.py").write_text(APP_SOURCE)
    stats = []
    for n in range(1, vassals + 1):
        stats.append(str(workdir / f"v{n}.stats"))
        # The first vassal names its stats relative to its cwd (the vassals directory).
        where = f"../v{n}.stats" if n == 1 else f"{workdir}/v{n}.stats"
        (vdir / f"app{n}.ini").write_text(
            "[uwsgi]\nmaster = true\nworkers = 2\n"
            f"socket = {workdir}/v{n}.sock\nstats = {where}\n"
            f"wsgi-file = {workdir}/app.py\nlogto = {workdir}/v{n}.log\n")
    emp_stats = str(workdir / "emperor.stats")
    log = (workdir / "emperor.log").open("wb")
    popen = subprocess.Popen([binary, "--emperor", str(vdir), "--emperor-stats", emp_stats],
                             stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                             start_new_session=True)
    try:
        yield emp_stats, stats
    finally:
        popen.send_signal(signal.SIGINT)
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)  # its own session: only what it started
            popen.wait(timeout=5)
        log.close()


def test_emperor_is_one_tab_with_an_instance_per_vassal(workdir: Path) -> None:
    binary = require_uwsgi()
    with emperor(binary, workdir, 2) as (emp_stats, vassal_stats):
        def ready() -> dict[str, Any]:  # {}: not yet
            doc = doc_of(emp_stats)
            up = [v for v in doc.get("vassals", []) if v["pid"] and v["ready"]]
            if len(up) < 2:
                return {}
            for s in vassal_stats:
                if len([w for w in doc_of(s)["workers"] if w["accepting"]]) < 2:
                    return {}
            return doc

        doc = wait_until(ready, timeout=30,
                         message=lambda: (workdir / "emperor.log").read_text(errors="replace"))
        host = host_poll(emp_stats)
        inst, *vassal_instances = host.uwsgi
        assert inst.kind == "emperor" and inst.workers == ()
        # The host shows one instance per vassal, polled at the stats address found in its
        # own config, numbered after the configured ones (what actions name).
        assert sorted(v.index for v in vassal_instances) == [1, 2]
        assert {v.master_pid for v in vassal_instances} == {v.pid for v in inst.vassals}
        assert all(len(v.workers) == 2 for v in vassal_instances)
        by_name = {v.name: v for v in inst.vassals}
        assert {(v["id"], v["pid"]) for v in doc["vassals"]} == \
            {(v.name, v.pid) for v in inst.vassals}
        for n in (1, 2):
            v = by_name[f"app{n}.ini"]
            assert os.path.normpath(v.stats) == str(workdir / f"v{n}.stats"), v
            assert v.config == str(workdir / "vassals" / f"app{n}.ini")
            assert procfs.parent_pid(v.pid) == inst.master_pid
        # Each vassal polled as its own instance, at the address found in its config.
        polled = asyncio.run(poll_vassals(inst, TH, timeout=3.0))
        assert all(isinstance(p, UwsgiInstance) for p in polled), polled
        masters = {p.master_pid: p for p in polled if isinstance(p, UwsgiInstance)}
        assert set(masters) == {v.pid for v in inst.vassals}
        assert all(len(p.workers) == 2 and p.kind == "instance" for p in masters.values())

        text = "\n".join(render_host(host))
        assert "uWSGI emperor" in text and "busy 0/0" not in text
        snap, code, _ = snapshot_cli(emp_stats)
        u, *vs = snap["hosts"][0]["uwsgi"]
        assert u["kind"] == "emperor" and u["workers"] == []
        assert [v["kind"] for v in vs] == ["instance", "instance"]
        assert sorted(os.path.normpath(v["stats"]) for v in u["vassals"]) == \
            sorted(vassal_stats)
        assert code == 0


# ------------------------------------------------------------------ pid namespaces


def _unshare_ok() -> bool:
    return shutil.which("unshare") is not None and os.geteuid() == 0


@pytest.mark.skipif(not _unshare_ok(), reason="needs unshare and root")
def test_uwsgi_in_its_own_pid_namespace_is_mapped_never_misattributed(workdir: Path) -> None:
    binary = require_uwsgi()
    port = free_port()
    name = f"smd-ns-{os.getpid()}"
    (workdir / "app.py").write_text(APP_SOURCE)
    ini = workdir / "ns.ini"
    ini.write_text("[uwsgi]\nmaster = true\nworkers = 2\ndie-on-term = true\n"
                   f"socket = {workdir}/ns.sock\nsocket = @{name}\n"
                   f"stats = 127.0.0.1:{port}\nwsgi-file = {workdir}/app.py\n"
                   f"logto = {workdir}/ns.log\n")
    popen = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                              binary, "--ini", str(ini)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stats = f"127.0.0.1:{port}"
    try:
        def ready() -> dict[str, Any]:  # {}: not yet
            d = doc_of(stats)
            up = all(w["pid"] and w["accepting"] for w in d["workers"])
            return d if up else {}

        doc = wait_until(ready, timeout=20, message=lambda: (workdir / "ns.log").read_text(
            errors="replace") if (workdir / "ns.log").exists() else "no log")
        assert doc["pid"] == 1  # the namespace's init
        snap, code, err = snapshot_cli(stats)
        listeners = ss_listeners("x")
        host = snap["hosts"][0]
        (u,) = host["uwsgi"]
        assert [w["pid"] for w in u["workers"]] == [w["pid"] for w in doc["workers"]]
        assert any("another pid namespace" in w for w in u["warnings"]), u["warnings"]
        rows = [p for p in host["fds"]["processes"] if p["role"].startswith("uwsgi")]
        assert len(rows) == 3, host["fds"]
        doc_pids = {doc["pid"], *(w["pid"] for w in doc["workers"])}
        for row in rows:
            ns = procfs.ns_pids(row["pid"])
            assert ns is not None and len(ns) == 2 and ns[-1] in doc_pids, (row, ns)
            assert row["pid"] not in doc_pids or ns[0] != ns[-1]
        master_here = next(r["pid"] for r in rows if r["role"] == "uwsgi-master")
        assert procfs.parent_pid(master_here) == popen.pid
        # Queues: the kernel's, attributed through the host pid, equal to ss.
        for s in u["sockets"]:
            key = f"{s['name']}@" if s["name"].startswith("@") else s["name"]
            assert s["source"] == "kernel", s
            assert (s["queue"], s["max_queue"]) == listeners[key]
        assert all(master_here in li["pids"] for li in host["listeners"]
                   if li["owner"] == "uwsgi")
        assert not any("/proc/1/" in e["message"] for e in host["errors"]), host["errors"]
        assert code == 0, err
    finally:
        popen.send_signal(signal.SIGTERM)  # --kill-child takes the namespace down with it
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=5)


# ------------------------------------------------------------------ abstract sockets


def test_abstract_socket_with_a_filled_queue_shows_the_kernels_figures(
        workdir: Path, started: Any) -> None:
    binary = require_uwsgi()
    name = f"smd-abs-{os.getpid()}"
    stats = str(workdir / "abs.stats")
    proc = configure(binary, workdir, "abs", stats, workers=1, listen=8, socket=f"@{name}")
    proc.options.pop("chmod-socket", None)
    started(proc).wait_ready()
    clients: list[socket.socket] = []
    try:
        hung = socket.socket(socket.AF_UNIX)
        hung.connect(f"\0{name}\0")
        hung.sendall(uwsgi_packet({"REQUEST_METHOD": "GET", "PATH_INFO": "/hang/abs",
                                   "REQUEST_URI": "/hang/abs", "SERVER_PROTOCOL": "HTTP/1.0",
                                   "SERVER_NAME": "t", "SERVER_PORT": "80"}))
        clients.append(hung)
        wait_until(lambda: doc_of(stats)["workers"][0]["status"] == "busy", timeout=10)
        for _ in range(12):
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError, OSError):
                c.connect(f"\0{name}\0")
            clients.append(c)
        host = host_poll(stats)
        kernel = ss_listeners("x")[f"@{name}@"]
        (inst,) = host.uwsgi
        sock = next(s for s in inst.sockets if s.name == f"@{name}")
        assert sock.source == "kernel"
        assert (sock.queue, sock.max_queue) == kernel
        assert kernel[0] > 0 and kernel[1] == 8
        assert (inst.listen_queue, inst.listen_queue_max) == kernel
    finally:
        for c in clients:
            c.close()
        proc.release_hangs()


# ------------------------------------------------------------------ stats-http vs plain


def test_stats_http_polled_as_plain_and_plain_polled_as_http_say_which_to_use(
        workdir: Path, started: Any) -> None:
    binary = require_uwsgi()
    http_port, plain_port = free_port(), free_port()
    http_srv = started(configure(binary, workdir, "sh", f"127.0.0.1:{http_port}",
                                 **{"stats-http": True}))
    plain = started(configure(binary, workdir, "sp", f"127.0.0.1:{plain_port}"))
    plain.wait_ready()
    wait_until(lambda: raw_doc(f"http://127.0.0.1:{http_port}"), timeout=20,
               message=http_srv.log_tail)

    t0 = time.monotonic()
    got = asyncio.run(fetch_stats(parse_stats_address(f"127.0.0.1:{http_port}"), timeout=2.0))
    took = time.monotonic() - t0
    assert isinstance(got, SourceError)
    assert f"speaks HTTP (stats-http = true): use http://127.0.0.1:{http_port}" in got.message
    assert took < 2.0
    ok = asyncio.run(fetch_stats(parse_stats_address(f"http://127.0.0.1:{http_port}")))
    assert isinstance(ok, bytes)

    wrong = asyncio.run(fetch_stats(parse_stats_address(f"http://127.0.0.1:{plain_port}")))
    assert isinstance(wrong, SourceError)
    assert "plain stats server" in wrong.message and "without http://" in wrong.message


# ------------------------------------------------------------------ stats-minified


def test_minified_document_with_a_quote_in_a_socket_path_is_repaired(
        workdir: Path, started: Any) -> None:
    binary = require_uwsgi()
    stats = str(workdir / "min.stats")
    odd = str(workdir / 'a"b.sock')
    proc = configure(binary, workdir, "min", stats, **{"stats-minified": True})
    proc.options["socket"] = odd
    started(proc)

    def accepting() -> bytes:  # raw_doc cannot read this document: that is the point
        got = asyncio.run(fetch_stats(parse_stats_address(stats)))
        return got if isinstance(got, bytes) and b'"accepting":1' in got else b""

    raw = wait_until(accepting, timeout=20, message=proc.log_tail)
    assert raw.count(b"\n") <= 1 and f'"name":"{odd}"'.encode() in raw  # one line, unescaped
    with pytest.raises(ValueError):
        json.loads(raw)
    host = host_poll(stats)
    (inst,) = host.uwsgi
    assert any("stats-minified" in w for w in inst.warnings), inst.warnings
    sock = next(s for s in inst.sockets if s.name == odd)
    assert sock.source == "kernel"
    assert (sock.queue, sock.max_queue) == ss_listeners("x")[odd]
    assert host.reachable


# ------------------------------------------------------------------ a non-root user


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv")
def test_a_user_who_cannot_read_uwsgis_fds_gets_an_error_entry_not_exit_3(
        workdir: Path, started: Any, tmp_path: Path) -> None:
    binary = require_uwsgi()
    port = free_port()
    proc = started(configure(binary, workdir, "root", f"127.0.0.1:{port}", workers=2))
    proc.wait_ready()
    xdg = Path("/tmp") / f"smd-xdg-{os.getpid()}"
    xdg.mkdir(mode=0o777, exist_ok=True)
    os.chmod(xdg, 0o777)
    env = {**os.environ, "HOME": str(xdg)}
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        env[name] = str(xdg / name.lower())
    try:
        snap, code, err = snapshot_cli(
            f"127.0.0.1:{port}", env=env,
            prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
    finally:
        shutil.rmtree(xdg, ignore_errors=True)
    host = snap["hosts"][0]
    assert code in (0, 1), (code, err, host["errors"])
    assert host["reachable"]
    (u,) = host["uwsgi"]
    assert len(u["workers"]) == 2  # the rest is still shown
    fd_errors = [e for e in host["errors"] if "/proc/" in e["message"] and "fd" in e["message"]]
    assert fd_errors, host["errors"]
    assert all("root" in e["message"] for e in fd_errors)
    # Nothing attributed to processes this user could not confirm.
    assert not [p for p in host["fds"]["processes"] if p["role"].startswith("uwsgi")]


def test_a_document_naming_an_unrelated_process_as_a_worker_attributes_nothing_to_it(
        workdir: Path) -> None:
    """A stats server held by this test process (so its pid is the confirmed master) that
    names pid 1 and an orphan it started (not its child any more) as its workers: only the
    master gets an fd row."""
    out = subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    orphan = int(out.stdout)
    assert procfs.parent_pid(orphan) != os.getpid()
    path = str(workdir / "liar.stats")
    doc = json.dumps({"version": "2.0.31", "pid": os.getpid(), "sockets": [],
                      "workers": [{"id": 1, "pid": 1, "status": "idle", "cores": []},
                                  {"id": 2, "pid": orphan, "status": "idle",
                                   "cores": []}]}).encode()
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    stop = False

    def serve() -> None:
        server.settimeout(0.1)
        while not stop:
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                with conn:
                    conn.sendall(doc)

    import threading

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        host = host_poll(path)
    finally:
        stop = True
        thread.join(timeout=2)
        server.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)  # started above
    roles = {p.pid: p.role for p in host.fds.processes}
    assert roles.get(os.getpid()) == "uwsgi-master"
    assert 1 not in roles and orphan not in roles
    assert len(host.uwsgi[0].workers) == 2  # the document is still shown as it is


def test_an_abstract_stats_address_is_confirmed_and_acted_on(workdir: Path, started: Any,
                                                              tmp_path: Path) -> None:
    """`stats = @name`: uWSGI binds "\\0name\\0" (the kernel lists @name@), the stats client
    dials that, and the kernel-confirmed master behind it is the one a kill checks."""
    binary = require_uwsgi()
    name = f"smd-stats-{os.getpid()}"
    proc = configure(binary, workdir, "absstats", f"@{name}", workers=2)
    started(proc).wait_ready()
    target = ActionTarget(host="h", address=parse_stats_address(f"@{name}"))
    inst = asyncio.run(fetch_stats(target.address, 2.0))
    assert not isinstance(inst, SourceError), inst
    doc = json.loads(inst)
    worker = doc["workers"][0]
    result = asyncio.run(kill_worker(target, 1, worker["pid"], "KILL",
                                     audit=AuditLog(tmp_path / "audit.log"),
                                     expect_spawn=worker["last_spawn"]))
    assert result.ok, result.message
    assert result.data["new_pid"] not in (None, worker["pid"])


def test_an_emperors_vassal_is_acted_on_through_the_agent(workdir: Path, start_agent) -> None:  # noqa: F811
    """Through an agent, a vassal is the instance its snapshot numbers (after the configured
    ones): a kill naming it reaches that vassal's worker, checked like any other."""
    import types

    binary = require_uwsgi()
    with emperor(binary, workdir, 1) as (emp_stats, vassal_stats):
        wait_until(lambda: len([w for w in doc_of(vassal_stats[0]).get("workers", [])
                                if w["accepting"]]) == 2, timeout=30)
        agent = start_agent(types.SimpleNamespace(stats_address=emp_stats,
                                                  nginx_status_url=None))
        snap = agent.get("/v1/snapshot").json()
        (vassal,) = [u for u in snap["uwsgi"] if u["kind"] == "instance"]
        worker = vassal["workers"][0]
        resp = agent.post(f"/v1/workers/{vassal['index']}/{worker['id']}/kill",
                          {"signal": "KILL", "expect_pid": worker["pid"],
                           "expect_spawn": worker["last_spawn"]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["data"]["new_pid"] not in (None, worker["pid"])

"""Killing a stuck worker on the real stack, and every way a kill must be refused."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time

import psutil
import pytest

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError, ActionTarget
from stackmon.actions.kill import kill_worker
from stackmon.addresses import parse_stats_address
from tests.conftest import in_flight


def target_of(stack, read_only: bool = False) -> ActionTarget:
    return ActionTarget(host="local", address=parse_stats_address(stack.stats_address),
                        read_only=read_only)


def hung_worker(stack, uri: str) -> dict:
    for w in stack.stats()["workers"]:
        for c in w["cores"]:
            if any(v == f"REQUEST_URI={uri}" for v in c.get("vars", [])):
                return w
    raise AssertionError(f"{uri} not in flight")


@pytest.fixture
def audit(tmp_path) -> AuditLog:
    return AuditLog(tmp_path / "audit.log")


def test_kill_hung_worker_respawns_with_new_pid_and_request_gone(fresh_stack, hang, audit):
    st = fresh_stack(workers=2, threads=1, nginx=False)
    hang(st, "/hang/stuck-report", n=1, via="unix")
    w = hung_worker(st, "/hang/stuck-report")
    result = asyncio.run(kill_worker(target_of(st), w["id"], w["pid"], "TERM",
                                     expect_spawn=w["last_spawn"], audit=audit, actor="tester"))
    assert result.ok, result.message
    assert result.data["new_pid"] not in (None, 0, w["pid"])
    assert result.data["respawn_count"] == w["respawn_count"] + 1
    assert not psutil.pid_exists(w["pid"]) or psutil.Process(w["pid"]).status() == "zombie"
    assert not [v for v in in_flight(st.stats()) if v.get("REQUEST_URI") == "/hang/stuck-report"]
    outcomes = [(e["action"], e["outcome"], e["user"]) for e in audit.entries()]
    assert outcomes == [("kill TERM", "started", "tester"), ("kill TERM", "ok", "tester")]
    assert audit.entries()[0]["request"]["uri"] == "/hang/stuck-report"


def test_kill_with_a_stale_pid_is_refused_and_changes_nothing(fresh_stack, hang, audit):
    st = fresh_stack(workers=2, threads=1, nginx=False)
    hang(st, "/hang/keep", n=1, via="unix")
    w = hung_worker(st, "/hang/keep")
    with pytest.raises(ActionError) as info:
        asyncio.run(kill_worker(target_of(st), w["id"], w["pid"] + 100000, audit=audit))
    assert info.value.kind == "stale" and info.value.http_status == 409
    assert hung_worker(st, "/hang/keep")["pid"] == w["pid"]  # still running its request
    assert audit.entries()[-1]["outcome"] == "refused: stale"


def test_read_only_refuses_before_reading_anything(fresh_stack, audit):
    st = fresh_stack(workers=1, threads=1, nginx=False)
    pid = st.stats()["workers"][0]["pid"]
    with pytest.raises(ActionError) as info:
        asyncio.run(kill_worker(target_of(st, read_only=True), 1, pid, audit=audit))
    assert info.value.kind == "read_only"
    assert st.stats()["workers"][0]["pid"] == pid
    assert audit.entries()[-1]["outcome"] == "refused: read_only"


def _serve_forged_stats(path: str, doc: dict, stop: threading.Event) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    srv.settimeout(0.2)

    def loop() -> None:
        with srv:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.sendall(json.dumps(doc).encode())

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def test_a_pid_that_is_not_a_worker_of_the_master_is_never_signalled(tmp_path, audit):
    """A stats server (broken or hostile) that names an unrelated process as a worker.

    The server runs in this test process, so this process holds the stats socket and is
    confirmed as the "master"; the victim is orphaned (its shell exits), so it is not this
    process's child and must not be signalled."""
    out = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], check=True,
                         capture_output=True, text=True)
    victim = psutil.Process(int(out.stdout))
    assert victim.ppid() != os.getpid()
    me = os.getpid()
    stop = threading.Event()
    path = str(tmp_path / "forged.sock")
    doc = {"version": "2.0.31", "pid": me, "workers": [
        {"id": 1, "pid": victim.pid, "status": "busy", "last_spawn": int(victim.create_time()),
         "cores": []}]}
    _serve_forged_stats(path, doc, stop)
    try:
        target = ActionTarget(host="forged", address=parse_stats_address(path))
        with pytest.raises(ActionError) as info:
            asyncio.run(kill_worker(target, 1, victim.pid, "KILL", audit=audit))
        assert info.value.kind == "not_worker"
        assert f"not a worker of the uWSGI master {me}" in info.value.message
        time.sleep(0.2)
        assert victim.is_running() and victim.status() != psutil.STATUS_ZOMBIE  # not signalled
    finally:
        stop.set()
        victim.kill()


def test_stats_naming_the_master_from_another_address_are_refused(fresh_stack, tmp_path, audit):
    """A forged stats server naming a real instance's master and worker: the master does not
    hold the forged address's listener, so nothing is done to the real worker."""
    st = fresh_stack(workers=1, threads=1, nginx=False)
    real = st.stats()["workers"][0]
    stop = threading.Event()
    path = str(tmp_path / "forged.sock")
    doc = {"version": "2.0.31", "pid": st.master_pid, "workers": [
        {"id": 1, "pid": real["pid"], "status": "busy", "last_spawn": real["last_spawn"],
         "cores": []}]}
    _serve_forged_stats(path, doc, stop)
    try:
        target = ActionTarget(host="forged", address=parse_stats_address(path))
        with pytest.raises(ActionError) as info:
            asyncio.run(kill_worker(target, 1, real["pid"], "KILL", audit=audit))
        assert info.value.kind == "not_worker"
        assert f"is pid {os.getpid()}" in info.value.message
        time.sleep(0.3)
        assert st.stats()["workers"][0]["pid"] == real["pid"]
    finally:
        stop.set()

"""The real-stack launcher, the demo app and the traffic generator.

Everything here runs real uWSGI and nginx processes (except the app and address unit tests):
the rest of the suite trusts these fixtures, so they are checked against what the processes
actually do (stats JSON, HTTP through nginx, pids in /proc), not against the launcher's word.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest

from stackmon.demo import app as demo_app
from stackmon.demo.launcher import Stack, StackError, http_get, read_stats, somaxconn
from stackmon.demo.traffic import TrafficThread, check_loopback, run_traffic

from .conftest import busy_workers, in_flight, require_nginx, wait_until


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Processes still running (identity-checked) and not zombies."""
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            continue
    return out


def _stack_procs(stack: Stack) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in stack.pids()]


# ------------------------------------------------------------------ the session stack


def test_stats_reports_configured_workers_and_sockets(stack: Stack) -> None:
    doc = stack.stats()
    assert doc["pid"] == stack.master_pid
    workers = doc["workers"]
    assert len(workers) == 4
    assert all(w["pid"] > 0 and w["accepting"] == 1 for w in workers)
    assert all(len(w["cores"]) == 2 for w in workers)
    assert {w["pid"] for w in workers} == set(stack.worker_pids())
    sockets = {s["name"]: s for s in doc["sockets"]}
    assert set(sockets) == {str(stack.uwsgi_socket_path), stack.uwsgi_tcp_address}
    # Only the TCP socket reports its backlog (docs/reference.md §1: unix sockets always show 0).
    assert sockets[stack.uwsgi_tcp_address]["max_queue"] == 100
    assert stack.stats_http_address is None
    assert stat.S_ISFIFO(stack.fifo_path.stat().st_mode)
    assert stat.S_IMODE(stack.uwsgi_socket_path.stat().st_mode) == 0o666


def test_nginx_proxies_through_the_unix_socket(stack: Stack) -> None:
    assert stack.has_nginx and stack.nginx_base_url
    for path in ("/", "/fast"):
        assert http_get(stack.nginx_base_url + path) == (200, b"fast\n")
    assert http_get(stack.nginx_base_url + "/healthz") == (200, b"ok\n")
    status, body = http_get(stack.nginx_base_url + "/slow?s=0.1")
    assert status == 200 and body.startswith(b"slept 0.1")
    assert http_get(stack.nginx_base_url + "/nope")[0] == 404
    assert f"uwsgi_pass unix:{stack.uwsgi_socket_path};" in stack.nginx_conf_path.read_text()


def test_error_route_counts_an_exception(stack: Stack) -> None:
    before = sum(w["exceptions"] for w in stack.stats()["workers"])
    # uWSGI closes the connection without a response when the app raises before
    # start_response, so nginx answers 502 (not 500): what users see for app crashes.
    assert stack.nginx_base_url is not None
    assert http_get(stack.nginx_base_url + "/error")[0] == 502
    wait_until(
        lambda: sum(w["exceptions"] for w in stack.stats()["workers"]) == before + 1,
        message="the exception to be counted",
    )


def test_nginx_status_answers(stack: Stack) -> None:
    assert stack.nginx_status_url == f"{stack.nginx_base_url}/nginx_status"
    status, body = http_get(stack.nginx_status_url)
    assert status == 200
    text = body.decode()
    assert text.startswith("Active connections:")
    assert "server accepts handled requests" in text and "Reading:" in text


def test_hanging_requests_make_workers_busy(stack: Stack, hang) -> None:
    # The session stack is shared: a request another test sent may still be finishing (a
    # fresh-clone CI run found worker 3 busy here), so start from an idle stack.
    wait_until(lambda: busy_workers(stack.stats()) == [], timeout=15,
               message=lambda: f"an idle session stack (busy: {busy_workers(stack.stats())})")
    held = hang(stack, "/hang/report?id=42", n=3)
    doc = stack.stats()
    stuck = held.matching()
    assert len(stuck) == 3
    # Through nginx, the headers arrive as HTTP_* vars, secrets included (the parser's job is
    # to redact them: the raw document has them).
    assert all(v["HTTP_COOKIE"].startswith("sessionid=demo-not-a-secret") for v in stuck)
    assert all(v["HTTP_AUTHORIZATION"] == "Bearer demo-not-a-token" for v in stuck)
    assert all(v["PATH_INFO"] == "/hang/report" and v["QUERY_STRING"] == "id=42" for v in stuck)
    assert 2 <= len(busy_workers(doc)) <= 3  # 3 cores on 2 or 3 of the 4 workers
    starts = [
        c["req_info"]["request_start"]
        for w in doc["workers"]
        for c in w["cores"]
        if c["in_request"]
    ]
    assert all(abs(s - time.time()) < 30 for s in starts)
    held.close()
    assert busy_workers(stack.stats()) == []
    # Nothing was killed to free them: same workers, no respawns.
    assert {w["respawn_count"] for w in stack.stats()["workers"]} == {1}


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_hang_straight_to_uwsgi(stack: Stack, hang, via: str) -> None:
    held = hang(stack, "/hang/export.csv", n=2, via=via)
    assert [v["REQUEST_URI"] for v in held.matching()] == ["/hang/export.csv"] * 2
    assert held.matching()[0]["HTTP_AUTHORIZATION"] == "Bearer demo-not-a-token"


# ------------------------------------------------------------------ fresh stacks


def test_stop_leaves_none_of_the_started_pids(fresh_stack, hang) -> None:
    t0 = time.monotonic()
    s = fresh_stack(workers=3, threads=2, mercy=3)
    started_in = time.monotonic() - t0
    procs = _stack_procs(s)
    # uWSGI master + 3 workers, nginx master + 2 workers
    assert len(procs) == 1 + 3 + 1 + 2
    assert s.master_pid in s.pids() and s.nginx_master_pid in s.pids()
    hang(s, "/hang/x", n=2)  # stop must not wait for stuck requests
    t0 = time.monotonic()
    s.stop()
    stopped_in = time.monotonic() - t0
    assert _alive(procs) == []
    assert not s.running
    s.stop()  # idempotent
    print(f"start {started_in:.2f}s stop {stopped_in:.2f}s")
    assert stopped_in < 8


def test_context_manager_stops(uwsgi_bin: str, stack_workdir: Path) -> None:
    with Stack.start(stack_workdir, workers=1, threads=1, nginx=False, uwsgi_bin=uwsgi_bin) as s:
        procs = _stack_procs(s)
        assert len(procs) == 2
        assert s.base_url == f"http://{s.uwsgi_http_address}"  # http-socket without nginx
        assert http_get(s.base_url + "/fast") == (200, b"fast\n")
    assert _alive(procs) == []


def test_stop_cleans_up_after_a_killed_master(fresh_stack) -> None:
    s = fresh_stack(workers=2)
    procs = _stack_procs(s)
    os.kill(s.master_pid, signal.SIGKILL)
    s.stop()
    assert _alive(procs) == []


def test_stats_http_and_no_nginx(fresh_stack) -> None:
    s = fresh_stack(workers=2, threads=1, nginx=False, stats_http=True)
    assert s.stats_http_address == f"http://{s.stats_address}"
    assert s.nginx_base_url is None and s.nginx_status_url is None and s.nginx_master_pid is None
    doc = s.stats()
    assert len(doc["workers"]) == 2
    # In stats-http mode a plain reader (sends nothing) gets nothing useful.
    with pytest.raises((OSError, ValueError)):
        read_stats(s.stats_address, http=False, timeout=1.0)


def test_listen_harakiri_and_extra_options_reach_uwsgi(fresh_stack) -> None:
    s = fresh_stack(
        workers=1,
        threads=1,
        listen=16,
        harakiri=30,
        nginx=False,
        extra_uwsgi={"max-requests": 1000, "env": ["A=1", "B=2"]},
    )
    ini = s.ini_path.read_text()
    assert "listen = 16" in ini and "harakiri = 30" in ini and "max-requests = 1000" in ini
    assert "env = A=1\nenv = B=2" in ini
    assert (
        next(x for x in s.stats()["sockets"] if x["name"] == s.uwsgi_tcp_address)["max_queue"] == 16
    )
    cmdline = psutil.Process(s.master_pid).cmdline()
    assert str(s.ini_path) in cmdline  # config discovery reads it from /proc/PID/cmdline


def test_tcp_listen_queue_is_visible_in_stats(fresh_stack, hang) -> None:
    s = fresh_stack(workers=1, threads=1, listen=10, nginx=False)
    hang(s, "/hang/q", n=6, via="tcp", wait=False)
    tcp = s.uwsgi_tcp_address

    def queued() -> int:
        return next(x["queue"] for x in s.stats()["sockets"] if x["name"] == tcp)

    # 1 running, 5 waiting in the backlog; the master samples about once a second.
    wait_until(lambda: queued() >= 5, timeout=5, message="the TCP queue to show 5")
    assert len(in_flight(s.stats())) == 1


# ------------------------------------------------------------------ startup failures


def test_unknown_uwsgi_option_fails_with_the_log(fresh_stack) -> None:
    t0 = time.monotonic()
    with pytest.raises(StackError) as info:
        fresh_stack(workers=1, nginx=False, extra_uwsgi={"no-such-option": 1})
    message = str(info.value)
    assert "uWSGI exited with code 1" in message
    assert "unknown config directive: no-such-option" in message  # the log tail
    assert time.monotonic() - t0 < 5


def _our_children() -> set[psutil.Process]:
    return set(psutil.Process().children(recursive=True))


def test_taken_stats_port_fails_with_the_log(fresh_stack) -> None:
    before = _our_children()  # the session stack may be running: not ours to judge
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError) as info:
            fresh_stack(workers=2, nginx=False, stats_port=port)
    message = str(info.value)
    assert "Address already in use" in message and "uwsgi.log" in message
    assert _alive(list(_our_children() - before)) == []


def test_taken_nginx_port_fails_with_the_nginx_log(fresh_stack) -> None:
    before = _our_children()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError) as info:
            fresh_stack(workers=1, nginx_port=port)
    message = str(info.value)
    assert "nginx exited" in message
    assert f"bind() to 127.0.0.1:{port} failed (98: Address already in use)" in message
    assert _alive(list(_our_children() - before)) == []


def test_listen_above_somaxconn_is_refused_up_front(uwsgi_bin: str, stack_workdir: Path) -> None:
    limit = somaxconn()
    if limit is None:
        pytest.skip("no /proc/sys/net/core/somaxconn")
    with pytest.raises(StackError, match="somaxconn"):
        Stack.start(stack_workdir, listen=limit + 1, nginx=False, uwsgi_bin=uwsgi_bin)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's nginx workers switch to nobody")
def test_untraversable_workdir_is_refused_with_the_reason(
    uwsgi_bin: str, stack_workdir: Path
) -> None:
    nginx_bin = require_nginx()
    closed = stack_workdir / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(StackError, match="not traversable by others"):
        Stack.start(closed / "w", uwsgi_bin=uwsgi_bin, nginx_bin=nginx_bin)


def test_too_deep_workdir_is_refused(uwsgi_bin: str, tmp_path: Path) -> None:
    with pytest.raises(StackError, match="too deep for a unix socket"):
        Stack.start(tmp_path / ("d" * 120), nginx=False, uwsgi_bin=uwsgi_bin)


# ------------------------------------------------------------------ traffic


def test_traffic_reaches_the_stack_and_stops_promptly(fresh_stack) -> None:
    s = fresh_stack(workers=2, threads=2, listen=16, mercy=1)
    traffic = TrafficThread(
        s.base_url,
        rate=20.0,
        hang_in_flight=1,
        hang_seconds=(30, 30),
        burst_every=(60.0, 60.0),
        first_burst=0.5,
        capacity=s.capacity,
        listen=16,
        burst_seconds=1.0,
        seed=7,
    )
    with traffic:
        # The stuck request shows up with its realistic URI and secret headers.
        stuck = wait_until(
            lambda: [
                v for v in in_flight(s.stats()) if v.get("PATH_INFO", "").startswith("/hang/")
            ],
            timeout=10,
            message="a stuck demo request",
        )
        assert stuck[0]["HTTP_COOKIE"].startswith("sessionid=demo-not-a-secret")
        assert stuck[0]["HTTP_X_HANG_SECONDS"] == "30"
        wait_until(
            lambda: traffic.stats.bursts == 1 and traffic.stats.statuses[200] > 20,
            timeout=10,
            message=lambda: f"burst and steady traffic ({traffic.stats})",
        )
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3
    assert traffic.error is None
    assert traffic.stats.statuses[500] + traffic.stats.statuses[404] >= 0
    assert traffic.stats.hangs_started == 1


def test_burst_fills_the_listen_queue(fresh_stack) -> None:
    """With a burst larger than capacity + backlog, the unix socket's queue overflows:
    nginx answers 502 at once (docs/reference.md §4), and the TCP-free unix queue is what filled."""
    s = fresh_stack(workers=1, threads=2, listen=8, mercy=1)

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_traffic(
                s.base_url,
                stop_event=stop,
                rate=1.0,
                hang_in_flight=0,
                burst_every=(60, 60),
                first_burst=0.0,
                capacity=s.capacity,
                listen=8,
                burst_seconds=1.5,
                seed=1,
            )
        )
        await asyncio.sleep(4.0)
        stop.set()
        return await task

    stats = asyncio.run(go())
    assert stats.bursts == 1
    assert stats.statuses[502] >= 1  # overflowed the 8-deep backlog
    assert stats.statuses[200] >= s.capacity + 8 - 2  # the rest were queued, then served


def test_traffic_refuses_non_loopback() -> None:
    assert check_loopback("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert check_loopback("http://[::1]:80") == "http://[::1]:80"
    assert check_loopback("http://localhost:1") == "http://localhost:1"
    for url in ("http://10.0.0.1/", "http://example.com/", "ftp://127.0.0.1/"):
        with pytest.raises(ValueError):
            check_loopback(url)


# ------------------------------------------------------------------ the app (no processes)


def _call(path: str, query: str = "", **extra: str) -> tuple[str, bytes]:
    seen: dict[str, str] = {}

    def start_response(status: str, headers: list, exc_info=None) -> None:
        seen["status"] = status

    environ = {
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_METHOD": "GET",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        **extra,
    }
    body = b"".join(demo_app.application(environ, start_response))
    return seen["status"], body


def test_app_routes() -> None:
    assert _call("/") == ("200 OK", b"fast\n")
    assert _call("/fast") == ("200 OK", b"fast\n")
    assert _call("/healthz") == ("200 OK", b"ok\n")
    assert _call("/slow", "s=0.01")[1].startswith(b"slept 0.01")
    assert _call("/hang/export.csv", "s=0.05")[1].startswith(b"hung 0.")
    assert _call("/hang", HTTP_X_HANG_SECONDS="0.05")[1].startswith(b"hung 0.")
    assert _call("/nope")[0].startswith("404")
    with pytest.raises(RuntimeError):
        _call("/error")


def test_app_caps_and_ignores_junk_durations() -> None:
    assert demo_app._seconds({"QUERY_STRING": "s=99999"}, 1.0, demo_app.SLOW_CAP) == 120.0
    assert demo_app._seconds({"QUERY_STRING": "s=nan"}, 1.0, 10.0) == 1.0
    assert demo_app._seconds({"QUERY_STRING": "s=-3"}, 1.0, 10.0) == 1.0
    assert demo_app._seconds({"QUERY_STRING": "s=abc"}, 2.0, 10.0) == 2.0


def test_app_hang_returns_when_released(tmp_path: Path, monkeypatch) -> None:
    release = tmp_path / "release"
    release.write_text("0\n")
    monkeypatch.setenv("STACKMON_RELEASE_FILE", str(release))
    import threading

    timer = threading.Timer(0.3, lambda: release.write_text("1\n"))
    timer.start()
    t0 = time.monotonic()
    assert _call("/hang/x", "s=30")[0] == "200 OK"
    assert time.monotonic() - t0 < 3
    timer.join()


# ------------------------------------------------------------------ robustness


def test_lost_port_race_is_retried(fresh_stack, monkeypatch) -> None:
    """Another process can take a port between free_port() and uWSGI's bind: the launcher
    picks new ports and tries again instead of failing the test run."""
    from stackmon.demo import launcher

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    real = launcher.free_port
    handed: list[int] = []

    def racy() -> int:
        port = busy.getsockname()[1] if not handed else real()
        handed.append(port)
        return port

    monkeypatch.setattr(launcher, "free_port", racy)
    try:
        s = fresh_stack(workers=1, threads=1, nginx=False)
    finally:
        busy.close()
    assert s.stats_address != f"127.0.0.1:{handed[0]}"
    assert len(s.stats()["workers"]) == 1


def test_orphaned_nginx_worker_is_found_by_stop(fresh_stack) -> None:
    """Kill an nginx worker, let the master respawn it, then SIGKILL the master: the new
    worker is reparented to init and keeps serving. stop() must still find and end it."""
    s = fresh_stack(workers=1, threads=1)
    master = psutil.Process(s.nginx_master_pid)
    first_workers = master.children()
    first_workers[0].kill()
    respawned = wait_until(
        lambda: [p for p in master.children() if p not in first_workers], message="a respawn"
    )
    master.kill()
    wait_until(lambda: respawned[0].ppid() != master.pid, message="the orphan to be reparented")
    assert respawned[0].is_running()
    s.stop()
    assert _alive(respawned + first_workers) == []


def test_workdir_left_by_a_killed_stack_can_be_reused(fresh_stack) -> None:
    first = fresh_stack(workers=1, threads=1)
    workdir = first.workdir
    procs = _stack_procs(first)
    for proc in procs:  # no vacuum: socket, fifo, pidfiles stay behind
        proc.kill()
    first.stop()
    assert _alive(procs) == []
    assert first.uwsgi_socket_path.exists()
    second = fresh_stack(workers=1, threads=1, workdir=workdir)
    assert http_get(second.nginx_base_url + "/fast") == (200, b"fast\n")
    second.send_fifo(b"\n")  # the FIFO is the new master's


def test_bad_explicit_binary_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="not an executable"):
        Stack.start(tmp_path, uwsgi_bin="/nonexistent/uwsgi")


def test_without_nginx_binary_uwsgi_runs_alone(
    uwsgi_bin: str, stack_workdir: Path, monkeypatch
) -> None:
    monkeypatch.setenv("STACKMON_NGINX", "/nonexistent/nginx")
    with Stack.start(stack_workdir, workers=1, threads=1, uwsgi_bin=uwsgi_bin) as s:
        assert not s.has_nginx and s.nginx_skipped_reason
        assert s.base_url == f"http://{s.uwsgi_http_address}"
        assert http_get(s.base_url + "/healthz") == (200, b"ok\n")


def test_session_stack_is_idle_and_unchanged_between_tests(stack: Stack) -> None:
    """Runs after the hang tests in file order: their stuck requests were released."""
    doc = stack.stats()
    assert in_flight(doc) == []
    assert {w["respawn_count"] for w in doc["workers"]} == {1}

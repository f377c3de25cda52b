"""Requests stuck together (stackmon.stuck): grouped by the innermost application frame of
their stacks when known, else by endpoint; one line per group of 2+ in `stackmon snapshot`;
and three real workers stuck in the demo app's `_hang`, traced with py-spy, as one group."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from stackmon.actions.stack import Frame, StackResult, ThreadStack
from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings
from stackmon.demo.launcher import Stack
from stackmon.hosts.local import LocalHost
from stackmon.model import Core, HostSnapshot, Level, Request, UwsgiInstance, Worker
from stackmon.render_text import render_host
from stackmon.stuck import app_frame, group_stuck, is_app_file

STDLIB = Frame("wait", "/usr/lib/python3.11/threading.py", 320)
SITE = Frame("execute", "/srv/venv/lib/python3.11/site-packages/psycopg2/extras.py", 146)
UWSGI = Frame("postfork", "/usr/lib/python3/dist-packages/uwsgidecorators.py", 10)


def app(function: str, file: str = "/srv/app/db.py", line: int = 42) -> Frame:
    return Frame(function, file, line)


def req(core: int, uri: str, running_s: float, level: Level = "critical",
        method: str = "GET", started_at: float = 900.0) -> Request:
    return Request(core=core, method=method, uri=uri, remote_addr="10.0.0.1", host="h",
                   started_at=started_at, running_s=running_s, level=level)


def worker(wid: int, *requests: Request, pid: int | None = None) -> Worker:
    return Worker(id=wid, pid=pid or 1000 + wid, status="busy", accepting=True, requests=1,
                  exceptions=0, harakiri_count=0, respawn_count=0, avg_rt_ms=0.0, rss=0,
                  vsz=0, last_spawn=0.0, running_time_s=0.0, tx=0,
                  cores=tuple(Core(r.core, 1, True, r) for r in requests))


def host(*workers: Worker) -> HostSnapshot:
    inst = UwsgiInstance(address="/run/app.stats", version="2.0.31", master_pid=999,
                         listen_queue=0, listen_queue_max=100, sockets=(), workers=workers)
    return HostSnapshot(name="web-1", taken_at=1000.0, reachable=True, uwsgi=(inst,))


def stack_of(w: Worker, *frames_by_core: tuple[int, tuple[Frame, ...]],
             taken_at: float = 1000.0, marked_core: int | None = None,
             pid: int | None = None) -> StackResult:
    threads = tuple(ThreadStack(name=f"uWSGIWorker{w.id}Core{core}", thread_id=core,
                                os_thread_id=None, active=True, owns_gil=False, frames=frames,
                                core=core, marked=core == marked_core)
                    for core, frames in frames_by_core)
    return StackResult(host="web-1", instance=0, address="/run/app.stats", worker_id=w.id,
                       pid=pid or w.pid, taken_at=taken_at, took_s=0.02, nonblocking=True,
                       with_locals=False, threads=threads)


def test_application_frames_skip_libraries_and_uwsgi() -> None:
    assert not is_app_file("/usr/lib/python3.11/threading.py")
    assert not is_app_file("/opt/python/lib/python3.12/socket.py")
    assert not is_app_file("/usr/local/lib64/python3.9/selectors.py")
    assert not is_app_file("/srv/venv/lib/python3.11/site-packages/sqlalchemy/pool.py")
    assert not is_app_file("/usr/lib/python3/dist-packages/uwsgidecorators.py")
    assert not is_app_file("/srv/app/uwsgidecorators.py")
    assert not is_app_file("<frozen importlib._bootstrap>")
    assert is_app_file("/srv/app/db.py")
    assert is_app_file("/home/deploy/lib/report.py")  # a lib/ that is not python's
    assert app_frame([STDLIB, SITE, app("acquire_lock"), app("report")]) == app("acquire_lock")
    assert app_frame([STDLIB, UWSGI]) is None


def test_workers_in_one_function_are_one_group_with_their_endpoint() -> None:
    ws = [worker(i, req(0, f"/report/{i}7?x=1", 10.0 + i)) for i in range(1, 4)]
    other = worker(4, req(0, "/health", 30.0))
    stacks = [stack_of(w, (0, (STDLIB, SITE, app("acquire_lock"), app("report"))),
                       marked_core=0) for w in ws]
    stacks.append(stack_of(other, (0, (app("check", "/srv/app/health.py", 3),)),
                           marked_core=0))
    groups = group_stuck(host(*ws, other), stacks)
    assert [g.text() for g in groups] == [
        "3 workers in db.acquire_lock (GET /report/:id), oldest 13 s",
        "1 worker in health.check (GET /health), oldest 30 s"]
    first = groups[0]
    assert [r.worker_id for r in first.requests] == [3, 2, 1]  # oldest first
    assert first.where == "/srv/app/db.py:42"
    assert group_stuck(host(*ws, other), stacks, min_count=2) == (first,)


def test_one_function_serving_several_endpoints_lists_them() -> None:
    ws = [worker(1, req(0, "/report/1", 50.0)), worker(2, req(0, "/report/2", 40.0)),
          worker(3, req(0, "/order", 20.0, method="POST"))]
    stacks = [stack_of(w, (0, (app("acquire_lock"),))) for w in ws]
    (g,) = group_stuck(host(*ws), stacks)
    assert g.endpoints == (("GET /report/:id", 2), ("POST /order", 1))
    assert g.text() == ("3 workers in db.acquire_lock (GET /report/:id ×2, POST /order ×1), "
                        "oldest 50 s")


def test_without_stacks_requests_group_by_endpoint_and_ok_ones_are_left_out() -> None:
    ws = [worker(1, req(0, "/users/123/orders", 61.0), req(1, "/users/9/orders", 12.0,
                                                           level="slow")),
          worker(2, req(0, "/users/55/orders", 15.0, level="slow"),
                 req(1, "/users/1/orders", 2.0, level="ok")),
          worker(3, req(0, "/search", 20.0, method="POST", level="slow"))]
    groups = group_stuck(host(*ws))
    assert [g.text() for g in groups] == [
        "3 requests on 2 workers on GET /users/:id/orders, oldest 61 s",
        "1 worker on POST /search, oldest 20 s"]
    assert all(g.frame is None for g in groups)


def test_a_stack_counts_only_for_its_process_its_request_and_its_thread() -> None:
    """A stack of another pid, or taken before the request started, is not this request's;
    with two requests the frame is the one of the thread named for the request's core."""
    w1 = worker(1, req(0, "/a", 30.0))
    w2 = worker(2, req(0, "/a", 25.0))
    w3 = worker(3, req(0, "/b", 20.0), req(1, "/c", 19.0))
    stacks = [
        stack_of(w1, (0, (app("acquire_lock"),)), pid=4242),        # another process
        stack_of(w2, (0, (app("acquire_lock"),)), taken_at=800.0),  # an earlier request
        stack_of(w3, (0, (app("acquire_lock"),)), (1, (app("render", "/srv/app/views.py"),))),
    ]
    texts = [g.text() for g in group_stuck(host(w1, w2, w3), stacks)]
    assert texts == ["2 workers on GET /a, oldest 30 s",
                     "1 worker in db.acquire_lock (GET /b), oldest 20 s",
                     "1 worker in views.render (GET /c), oldest 19 s"]


def test_snapshot_text_shows_groups_of_two_or_more() -> None:
    ws = [worker(i, req(0, f"/report/{i}", 40.0 + i)) for i in range(1, 4)]
    lone = worker(4, req(0, "/other", 70.0))
    lines = render_host(host(*ws, lone))
    stuck = [line for line in lines if "stuck together" in line]
    assert stuck == ["  stuck together: 3 workers on GET /report/:id, oldest 43 s"]
    assert not any("stuck together" in line for line in render_host(host(ws[0], lone)))


def test_three_real_workers_stuck_in_one_function(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any],
        wait_until: Callable[..., Any]) -> None:
    """Three workers of a real stack hang in the demo app's `_hang` (GET /hang/<id>): their
    stacks, taken by py-spy through the host, group them as one line naming the function."""
    st = fresh_stack(workers=3, threads=1, nginx=False)
    for i in range(3):
        hang(st, f"/hang/{1000 + i}", via="tcp")
    cfg = HostConfig(name="h", uwsgi=(parse_stats_address(st.stats_address),))
    lh = LocalHost(cfg, Settings(slow=0.5, critical=60))

    async def poll_and_trace() -> tuple[HostSnapshot, list[StackResult]]:
        try:
            snap = await lh.poll()
            stacks = [await lh.trace(0, w.id, w.pid) for w in snap.uwsgi[0].workers]
            return snap, stacks
        finally:
            await lh.aclose()

    def grouped() -> str | None:
        snap, stacks = asyncio.run(poll_and_trace())
        groups = group_stuck(snap, stacks)
        # py-spy samples a moment: the worker may be in _hang's helper reading the release
        # file; the next dump finds it sleeping in _hang.
        return groups[0].text() if len(groups) == 1 else None

    text = wait_until(grouped, timeout=30, interval=0.2)
    assert text.startswith("3 workers in app._hang (GET /hang/:id), oldest ")

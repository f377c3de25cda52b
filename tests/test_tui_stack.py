"""Issue 13 in the TUI: why is it stuck.

- `t` on a worker shows its Python stack in the detail (marked thread first, the innermost
  application frame highlighted), refreshable, with a refusal shown in the section;
- the kill confirmation captures the stack first (`s` toggles) into the kill's audit record,
  and says where SIGUSR2's output goes;
- each request's nearest deadline in the worker list, all of them with their sources in the
  detail; a client already gone (past nginx's or the LB's timeout) said so;
- "stuck together": one line for 2+ stuck requests sharing an endpoint or a frame.

Constructed snapshots (from a recording of the demo) for the screens, one live stack for `t`,
the kill with capture and deadlines read from a running uWSGI with harakiri = 30.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from typing import Any

import pytest
from textual.app import App, ComposeResult

from stackmon.actions.audit import AuditLog
from stackmon.actions.stack import Frame, InFlight, Local, StackResult, ThreadStack
from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.model import Deadline, HostSnapshot, Request, Thresholds, Worker
from tests.tui_support import app_for, event, feed, recorded, screen_text, summary, wait_for
from tui.app import StackmonApp
from tui.screens.confirm import KillConfirm
from tui.screens.stack import StackScreen
from tui.screens.worker_detail import WorkerDetailScreen
from widgets.stack_view import StackView, left_cut, render_stack
from widgets.worker_list import WorkerList, deadline_text, live_deadlines

os.environ["TZ"] = "UTC"  # the stack's and the detail's wall-clock times
time.tzset()

NGINX_CONF = "/etc/nginx/sites-enabled/app:41"
INI = "/srv/app/uwsgi.ini:12"


def _deadlines(age: float) -> tuple[Deadline, ...]:
    """harakiri 65 s (ini), nginx 60 s (a server block), the LB's 350 s (hosts file), as
    stackmon.deadlines computes them for a request `age` seconds old."""
    out = (Deadline("nginx_read_timeout", 60 - age, 60, NGINX_CONF),
           Deadline("harakiri", 65 - age, 65, INI),
           Deadline("lb_idle_timeout", 350 - age, 350, "settings"))
    return tuple(sorted(out, key=lambda d: d.after_s))


def with_deadlines(host: HostSnapshot, now: float) -> HostSnapshot:
    """The recording with every request's deadlines, as an annotated poll has them."""
    insts = []
    for inst in host.uwsgi:
        workers = []
        for w in inst.workers:
            cores = []
            for c in w.cores:
                r = c.request
                if r is not None:
                    age = now - r.started_at if r.started_at is not None else r.running_s or 0
                    r = replace(r, deadlines=_deadlines(age))
                cores.append(replace(c, request=r))
            workers.append(replace(w, cores=tuple(cores)))
        insts.append(replace(inst, workers=tuple(workers)))
    return replace(host, uwsgi=tuple(insts))


def stuck(host: HostSnapshot) -> list[tuple[Worker, Request]]:
    return [(w, r) for w in host.uwsgi[0].workers for r in w.requests_in_flight
            if r.level == "critical"]


def stack_of(worker: Worker, request: Request, taken_at: float, *,
             function: str = "wait_for_ledger_lock") -> StackResult:
    """A stack as py-spy gives it for a worker blocked in the application's `function`."""
    core = request.core
    marked = ThreadStack(
        name=f"uWSGIWorker{worker.id}Core{core}", thread_id=1, os_thread_id=worker.pid,
        active=True, owns_gil=False, core=core, marked=True,
        request=InFlight(request.method, request.uri, request.running_s),
        frames=(Frame("acquire", "/usr/lib/python3.11/threading.py", 320,
                      (Local("timeout", "-1"),)),
                Frame(function, "/srv/app/ledger/locks.py", 42,
                      (Local("ledger_id", "42"), Local("api_token", "<redacted>"))),
                Frame("report", "/srv/app/views.py", 88, (Local("request", "<Request>"),)),
                Frame("__call__", "/srv/venv/lib/python3.11/site-packages/flask/app.py",
                      1498)))
    idle = ThreadStack(name=f"uWSGIWorker{worker.id}Core{core + 1}", thread_id=2,
                       os_thread_id=worker.pid + 1, active=False, owns_gil=False,
                       core=core + 1, frames=())
    return StackResult(
        host="web-1", instance=0, address="127.0.0.1:9002", worker_id=worker.id,
        pid=worker.pid, taken_at=taken_at, took_s=0.018, nonblocking=True, with_locals=True,
        threads=(marked, idle),
        marked_reason=f"thread uWSGIWorker{worker.id}Core{core} serves the oldest request")


# ------------------------------------------------------------------ the stack, rendered


def test_render_stack_marks_the_thread_and_highlights_the_app_frame() -> None:
    host = recorded()
    worker, request = stuck(host)[0]
    result = stack_of(worker, request, host.taken_at)
    text = render_stack(result, 100, now=host.taken_at + 4)
    lines = text.plain.splitlines()
    assert lines[0].startswith(f"pid {worker.pid} · 2 threads · ")
    assert ", 4 s ago · py-spy 18 ms · locals (redacted)" in lines[0]
    marked = next(i for i, ln in enumerate(lines) if ln.startswith("▶ uWSGIWorker"))
    here = [ln for ln in lines if ln.lstrip().startswith("»")]
    # the innermost frame of the app's own code, not threading.acquire (stdlib) under it
    assert len(here) == 1 and "wait_for_ledger_lock" in here[0]
    assert "/srv/app/ledger/locks.py:42" in here[0]
    assert lines.index(here[0]) > marked
    assert "api_token = <redacted>" in text.plain
    # the idle core is one summary line, not a thread block
    assert "1 other uWSGI core thread waiting for a request" in text.plain
    highlighted = [s for s in text.spans if "reverse" in str(s.style)]
    assert any(text.plain[s.start:s.end].startswith("wait_for_ledger_lock")
               for s in highlighted)


def test_paths_are_cut_from_the_left_to_fit() -> None:
    cut = left_cut("/very/long/path/to/the/app/ledger/locks.py:42", 20)
    assert len(cut) == 20 and cut.startswith("…") and cut.endswith("locks.py:42")
    result = stack_of(*stuck(recorded())[0], 0.0)
    frames = [ln for ln in render_stack(result, 44).plain.splitlines() if ".py:" in ln]
    assert len(frames) == 4
    for line in frames:  # a frame line fits, its file and line kept
        assert len(line) <= 44 and re.search(r"\.py:\d+$", line.rstrip()), line


# ------------------------------------------------------------------ deadlines


def test_deadline_words_by_width_and_live_age() -> None:
    soon = Deadline("nginx_read_timeout", 2.0, 60, NGINX_CONF)
    gone = Deadline("nginx_read_timeout", -5.0, 60, NGINX_CONF)
    assert deadline_text(soon, 44) == "504 in 2s"
    assert deadline_text(soon, 80) == "nginx 504 in 2 s"
    assert deadline_text(gone, 44) == "504 SENT"
    assert deadline_text(gone, 80) == "client has a 504"
    assert deadline_text(gone, 140) == "past nginx's 60 s: the client already has a 504"
    r = Request(0, "GET", "/", "", "", 100.0, 58.0, "critical", deadlines=(soon,))
    # counted from the age now (62 s), not from the poll that said 2 s left
    (live,) = live_deadlines(r, 62)
    assert live.after_s == -2 and live.past


async def _main(host: HostSnapshot, size: tuple[int, int], now: float) -> str:
    app = app_for(host, now=now)
    async with app.run_test(size=size) as pilot:
        feed(app, host)
        await pilot.pause()
        return screen_text(app)


def two_ages(host: HostSnapshot) -> tuple[HostSnapshot, float]:
    """The recording's two CRIT requests (worker 4, cores 0 and 1) 58 s and 63 s old at the
    returned `now`, with their deadlines: nginx's 504 comes in 2 s for one, and already came
    3 s ago for the other (its client is gone)."""
    inst = host.uwsgi[0]
    (_, first), _second = stuck(host)[:2]
    assert first.started_at is not None
    now = first.started_at + 58.4
    workers = []
    for w in inst.workers:
        cores = []
        for c in w.cores:
            r = c.request
            if r is not None and r.level == "critical" and c.id == 1:
                r = replace(r, started_at=first.started_at - 5, running_s=None)
            cores.append(replace(c, request=r))
        workers.append(replace(w, cores=tuple(cores)))
    return with_deadlines(replace(host, uwsgi=(replace(inst, workers=tuple(workers)),)),
                          now), now


@pytest.mark.parametrize("size", [(80, 24), (120, 36), (200, 50)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
async def test_worker_list_shows_the_nearest_deadline(size: tuple[int, int]) -> None:
    """One CRIT request 58 s old (nginx's 504 in 2 s), one past nginx's 60 s: its client is
    gone, said at every size in the words that fit; nothing wider than the terminal."""
    host, now = two_ages(recorded())
    text = await _main(host, size, now)
    width = size[0]
    soon, gone = {80: ("58s 504 in 2s", "63s 504 SENT"),
                  120: ("58s · nginx 504 in 2 s", "63s · client has a 504"),
                  200: ("58s · nginx 504 in 2 s",
                        "63s · past nginx's 60 s: the client already has a 504")}[width]
    assert soon in text and gone in text
    for line in text.splitlines():
        assert len(line) <= width
    # The core column lines up below whatever deadline sentence precedes it (at 200 columns
    # the full sentence pushed `c1` and the URI of its row out of line).
    rows = [ln for ln in text.splitlines() if soon in ln or gone in ln]
    assert len(rows) == 2
    if width >= 120:  # narrower lists leave the core column out
        assert rows[0].index(" c0 ") == rows[1].index(" c1 "), rows


async def test_detail_lists_every_deadline_with_its_source() -> None:
    base = recorded()
    (_, r1) = stuck(base)[0]
    assert r1.started_at is not None
    now = r1.started_at + 63
    host = with_deadlines(base, now)
    app = app_for(host, now=now)
    async with app.run_test(size=(160, 40)) as pilot:
        feed(app, host)
        await pilot.pause()
        app.push_screen(WorkerDetailScreen(0, host.name, stuck(host)[0][0], "", now))
        await pilot.pause()
        text = screen_text(app)
    assert "past nginx's 60 s: the client already has a 504" in text
    assert f"nginx uwsgi_read_timeout 60 s · {NGINX_CONF}" in text
    assert "harakiri in 2 s" in text and INI in text
    assert "LB 504 in 287 s" in text
    assert "LB idle timeout 350 s · lb_idle_timeout (hosts file; 60 s by default)" in text
    assert "The client is gone: nginx gave it a 504 3 s ago" in text


# ------------------------------------------------------------------ t: the stack


def _closed_port_app(host: HostSnapshot, now: float) -> StackmonApp:
    """An app whose host's stats address refuses connections: a real refusal to trace."""
    cfg = HostConfig(name=host.name, uwsgi=(parse_stats_address("127.0.0.1:1"),))
    return StackmonApp(Targets(hosts=(cfg,), settings=Settings(slow=5.0, critical=20.0)),
                       poll=False, clock=lambda: now)


async def test_t_opens_the_detail_and_a_refusal_is_a_message_not_a_crash() -> None:
    host = recorded()
    now = host.taken_at + 3
    app = _closed_port_app(host, now)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.press("t")
        await pilot.pause()
        assert isinstance(app.screen, WorkerDetailScreen)
        view = app.screen.query_one(StackView)
        assert await wait_for(pilot, lambda: view.message.startswith("Stack not read"))
        assert "Stack not read:" in screen_text(app)
        assert view.result is None
        await pilot.press("t")  # again: still a message, still no crash
        assert await wait_for(pilot, lambda: view.message.startswith("Stack not read"))
        assert app.is_running and isinstance(app.screen, WorkerDetailScreen)


async def test_stack_shown_in_the_detail_and_locals_key() -> None:
    host = recorded()
    now = host.taken_at + 3
    worker, request = stuck(host)[0]
    app = app_for(host, now=now)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        screen = WorkerDetailScreen(0, host.name, worker, "", now,
                                    tracer=app._tracer(app.active_pane(), ""))
        app.push_screen(screen)
        await pilot.pause()
        assert "t reads it now" in screen_text(app)
        screen.show_stack(stack_of(worker, request, host.taken_at))
        await pilot.pause()
        text = screen_text(app)
        assert "▶ uWSGIWorker" in text and "» wait_for_ledger_lock" in text
        assert not screen.with_locals
        await pilot.press("l")
        await pilot.pause()
        assert screen.with_locals
        # a respawned worker: the stack shown says it is the old pid's
        screen.set_worker(replace(worker, pid=worker.pid + 1000), now + 1)
        await pilot.pause()
        assert "this stack is of pid" in screen_text(app)


async def test_replay_like_host_without_stats_has_no_stack_key() -> None:
    host = recorded()
    cfg = HostConfig(name=host.name)  # a recording: no stats address, no agent
    app = StackmonApp(Targets(hosts=(cfg,), settings=Settings()), poll=False,
                      clock=lambda: host.taken_at + 3)
    async with app.run_test(size=(200, 40)) as pilot:
        feed(app, host)
        await pilot.pause()
        assert app.check_action("trace_worker", ()) is False
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, WorkerDetailScreen)
        assert not app.screen.query(StackView)


# ------------------------------------------------------------------ the kill


async def test_kill_confirm_offers_the_capture_and_names_the_usr2_log() -> None:
    base = recorded()
    logs = summary(base.taken_at, events=(
        event(base.taken_at - 5, "harakiri", "HARAKIRI ON WORKER 3 (pid: 4303, try: 1)", 3,
              4303),))
    host = replace(base, logs=logs)
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.press("K")
        await pilot.pause()
        assert isinstance(app.screen, KillConfirm)
        text = screen_text(app)
        assert "[x] capture its Python stack first" in text
        assert "SIGUSR2: the worker writes its request and a backtrace to the uWSGI log" in text
        assert "HARAKIRI ON WORKER 3" in text
        await pilot.press("s")
        await pilot.pause()
        assert "[ ] capture its Python stack first" in screen_text(app)
        assert app.screen.capture is False
        await pilot.press("escape")


async def test_a_capture_from_the_list_opens_the_stack_screen() -> None:
    from tui.screens.stack import StackCaptured

    host = recorded()
    worker, request = stuck(host)[0]
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        result = stack_of(worker, request, host.taken_at)
        app.post_message(StackCaptured(0, "", worker.id, result, "SIGTERM sent"))
        await pilot.pause()
        assert isinstance(app.screen, StackScreen)
        text = screen_text(app)
        assert "stack captured before the kill" in text and "wait_for_ledger_lock" in text
        # the stuck-together line learnt the frame (one worker only: no group yet)
        assert app.active_pane().stacks[(0, worker.id)] is result


async def test_a_capture_whose_kill_was_refused_does_not_say_it_was_killed() -> None:
    """The kill is refused when the request it was for ended during the capture: the stack
    screen said "captured before the kill" and that the audit record kept it."""
    from tui.screens.stack import StackCaptured

    host = recorded()
    worker, request = stuck(host)[0]
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        app.post_message(StackCaptured(0, "", worker.id, stack_of(worker, request,
                                                                   host.taken_at),
                                       "kill refused: the request the kill was for ended",
                                       killed=False))
        await pilot.pause()
        text = screen_text(app)
        assert "stack captured; the kill was not done" in text and "before the kill" not in text
        assert "Nothing was killed" in text and "audit record" not in text
        assert "wait_for_ledger_lock" in text


async def test_the_stack_screens_capture_age_moves_on() -> None:
    """It read "0 s ago" for as long as the screen was open (a review kept it 12 s)."""
    host = recorded()
    worker, request = stuck(host)[0]
    clock = [host.taken_at]
    app = app_for(host)
    app.clock = lambda: clock[0]
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        result = stack_of(worker, request, host.taken_at)
        app.push_screen(StackScreen("web-1", result, "killed", clock[0]))
        await pilot.pause()
        clock[0] += 12.0
        await pilot.pause(1.3)
        text = screen_text(app)
        assert "12 s ago" in text or "12s ago" in text, text


async def test_the_stack_screen_head_keeps_a_figure_with_its_unit_at_every_narrow_width(
        ) -> None:
    """From a fresh clone at 80x24 the head read "... in 0.2" / "s" (Textual wrapped it at the
    space); the head is drawn by UnitsKept now. Widths 60-100 put the line's break at every
    word of this outcome, "0.2" / "s" among them."""
    host = recorded()
    worker, request = stuck(host)[0]
    outcome = ("worker 2: pid 3188 killed with TERM, respawned as pid 3226 (respawn #1) in "
               "0.2 s")
    for width in range(60, 101):
        app = app_for(host)
        async with app.run_test(size=(width, 24)) as pilot:
            feed(app, host)
            await pilot.pause()
            app.push_screen(StackScreen("web-1", stack_of(worker, request, host.taken_at),
                                        outcome, host.taken_at))
            await pilot.pause()
            rows = screen_text(app).splitlines()
            assert any("0.2 s" in row for row in rows), (width, screen_text(app))


# ------------------------------------------------------------------ stuck together


async def test_stuck_together_line_by_endpoint_then_by_frame() -> None:
    base = recorded()
    host = three_stuck(base)
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        text = screen_text(app)
        assert "Stuck together: 3 workers on GET /report/:id, oldest" in text
        # stacks read this session name the frame they share
        pane = app.active_pane()
        for w, r in stuck(host):
            if w.id in (1, 2, 3):
                pane.remember_stack(stack_of(w, r, host.taken_at))
        await pilot.pause()
        text = screen_text(app)
        assert "Stuck together: 3 workers in locks.wait_for_ledger_lock (GET /report/:id)" \
            in text
    app = app_for(base)  # two requests on two endpoints: no line
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, base)
        await pilot.pause()
        assert "Stuck together" not in screen_text(app)


def three_stuck(host: HostSnapshot) -> HostSnapshot:
    """Workers 1-3 each stuck on GET /report/<n> (core 0), like worker 4's oldest request;
    worker 4 itself on another endpoint."""
    inst = host.uwsgi[0]
    _, model = stuck(host)[0]
    workers = []
    for w in inst.workers:
        if w.id in (1, 2, 3):
            c0 = w.cores[0]
            c0 = replace(c0, in_request=True, request=replace(
                model, core=c0.id, method="GET", uri=f"/report/{w.id * 7}"))
            w = replace(w, status="busy", cores=(c0, *(replace(c, request=None, in_request=False)
                                                       for c in w.cores[1:])))
        workers.append(w)
    return replace(host, uwsgi=(replace(inst, workers=tuple(workers)), *host.uwsgi[1:]))


# ------------------------------------------------------------------ SVG snapshots


@pytest.mark.parametrize("size", [(80, 24), (120, 36)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_detail_with_a_stack(snap_compare: Any, size: tuple[int, int]) -> None:
    base = recorded()
    (w1, r1) = stuck(base)[0]
    assert r1.started_at is not None
    now = r1.started_at + 58.4
    host = with_deadlines(base, now)
    worker = next(w for w, _ in stuck(host) if w.id == w1.id)
    app = app_for(host, now=now)

    async def run_before(pilot: Any) -> None:
        feed(app, host)
        await pilot.pause()
        screen = WorkerDetailScreen(0, host.name, worker, "", now,
                                    tracer=app._tracer(app.active_pane(), ""))
        app.push_screen(screen)
        await pilot.pause()
        result = stack_of(worker, r1, now - 2)
        if size[1] < 30:  # as after t: scrolled to the stack
            screen.show_stack(result)
        else:  # the requests and their deadlines above the stack
            screen.query_one(StackView).show_stack(result, now=now)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


class ListApp(App[None]):
    """The worker list alone, at the width it gets in the main view: the snapshot does not
    move when another engineer's side panel or Footer changes."""

    def __init__(self, host: HostSnapshot, now: float) -> None:
        super().__init__()
        self.host, self.now = host, now

    def compose(self) -> ComposeResult:
        yield WorkerList(thresholds=Thresholds(5.0, 20.0))

    def on_mount(self) -> None:
        workers = self.query_one(WorkerList)
        workers.set_workers(self.host.uwsgi[0].workers, self.now)
        workers.focus()


# 44 and 143 columns: the list's width at 80x24 and at 200x50 (the side panel takes the rest)
@pytest.mark.parametrize("size", [(44, 8), (143, 8)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_list_with_deadlines(snap_compare: Any, size: tuple[int, int]) -> None:
    host, now = two_ages(recorded())
    assert snap_compare(ListApp(host, now), terminal_size=size)


# ------------------------------------------------------------------ a real stack


async def test_live_stack_kill_with_capture_and_deadlines(fresh_stack: Any, hang: Any,
                                                          tmp_path: Any) -> None:
    """A request hung through nginx in the demo app's `_hang`, on an instance with harakiri =
    30: its deadlines on screen; `t` reads its stack, naming `_hang` in the marked thread; the
    kill with the capture on leaves an audit record whose "started" entry has the stack."""
    st = fresh_stack(workers=2, threads=1, harakiri=30,
                     extra_nginx=["uwsgi_read_timeout 20s;"])
    hang(st, "/hang/stack-tui", n=1, via="nginx")
    host = HostConfig(name="live", uwsgi=(parse_stats_address(st.stats_address),),
                      nginx=st.nginx_status_url)
    audit = AuditLog(tmp_path / "audit.log")
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.3, slow=1.0)),
                      audit=audit)
    async with app.run_test(size=(160, 40)) as pilot:
        assert await wait_for(pilot, lambda: "/hang/stack-tui" in screen_text(app), 15)
        assert await wait_for(pilot, lambda: "harakiri in" in screen_text(app)
                              or "nginx 504 in" in screen_text(app), 5)
        await pilot.press("slash", *"stack-tui", "enter")
        await pilot.pause(0.2)
        victim = app.active_pane().selected_worker()
        assert victim is not None and victim.requests_in_flight
        await pilot.press("t")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, WorkerDetailScreen)
        view = screen.query_one(StackView)
        assert await wait_for(pilot, lambda: view.result is not None or
                              view.message.startswith("Stack not read"), 15), view.message
        assert view.result is not None, view.message
        marked = view.result.marked
        assert marked is not None and any(f.function == "_hang" for f in marked.frames)
        text = screen_text(app)
        assert "_hang" in text and "▶ uWSGIWorker" in text
        assert "harakiri in" in text and "uWSGI harakiri 30 s" in text
        assert "nginx uwsgi_read_timeout 20 s" in text
        await pilot.press("K")
        await pilot.pause()
        assert isinstance(app.screen, KillConfirm) and app.screen.capture
        await pilot.press("t")

        def started() -> list[dict[str, Any]]:
            return [e for e in audit.entries() if e.get("outcome") == "started"]

        assert await wait_for(pilot, lambda: started() and len(audit.entries()) >= 2, 15)
        entry = started()[0]
        stack = entry.get("stack")
        assert isinstance(stack, dict) and stack.get("pid") == victim.pid
        frames = [f for t in stack["threads"] if t["marked"] for f in t["frames"]]
        assert any(f.startswith("_hang (") for f in frames)
        # the detail shows the captured stack, said to be the kill's
        assert await wait_for(pilot, lambda: "Captured before the kill" in screen_text(app), 5)

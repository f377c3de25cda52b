"""Three findings of a new-user review of the live demo, around a kill:

1. a kill while the uWSGI master is hung (STALE): the confirmation promised "The master
   respawns the worker with a new pid" and said nothing about the data being stale, and after
   Enter nothing showed until "Kill refused" (4 s: the stack capture, on by default, read the
   stats once with the whole timeout, then the kill read them again). Now the confirmation says
   the kill will be refused unless the master answers (stackmon confirms the pid with the live
   stats first), the capture starts off there, and a progress notification shows at once;
2. the stack kept after a kill showed a literal `\\x0a` between its two notes ("Captured before
   the kill (...)." and "The worker was respawned ..."): they were joined with a newline and
   then escaped as one untrusted line;
3. a core thread py-spy reports idle (not on a CPU: blocked in a sleep, a lock, a read) while
   the stats say it serves a request read "(idle)  serving GET ... for 15 s"; now
   "(waiting: not on CPU)", in the TUI and in `stackmon stack`.

Constructed snapshots (a recording of the demo) for the dialog; one live stack whose master
the test SIGSTOPs itself (and SIGCONTs) for the refusal's timing and progress.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult

from stackmon.actions.audit import AuditLog
from stackmon.actions.stack import Frame, InFlight, StackResult, ThreadStack
from stackmon.actions.stack import render_stack as render_cli
from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.model import HostSnapshot
from tests.tui_support import app_for, feed, recorded, screen_text, wait_for
from tui.app import StackmonApp
from tui.screens.confirm import KillConfirm
from widgets.stack_view import StackView, render_stack

OLD_PROMISE = "The master respawns the worker with a new pid"


def _notes(app: App[Any]) -> str:
    return "\n".join(f"{n.title}: {n.message}" for n in app._notifications)


def _flat(text: str) -> str:
    """The dialog's text on one line (its sentences wrap where the width says): what lies
    between its borders (█), row by row."""
    rows = [ln.split("█")[1] for ln in text.splitlines() if ln.count("█") >= 2]
    return " ".join(" ".join(rows).split())


async def _confirm_text(host: HostSnapshot) -> tuple[str, bool]:
    """K on the recorded host's selected worker: the dialog's text and whether the capture
    starts on."""
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.press("K")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, KillConfirm)
        text, capture = screen_text(app), screen.capture
        await pilot.press("escape")
    return text, capture


# ------------------------------------------------------------------ 1. the confirmation


async def test_stale_confirmation_says_the_kill_will_be_refused_unless_the_master_answers(
        ) -> None:
    base = recorded()
    host = replace(base, uwsgi=(replace(base.uwsgi[0], stale_s=12.0),))
    text, capture = await _confirm_text(host)
    flat = _flat(text)
    assert "STALE 12s" in flat
    assert "the uWSGI master has not answered for 12s" in flat
    assert "last good data" in flat
    assert re.search(r"The kill first confirms pid \d+ with the live stats: refused, nothing "
                     r"done, unless the uWSGI master answers within 2 s;", flat), flat
    assert OLD_PROMISE not in flat
    # the capture would read the stats with the whole timeout too: off, and why
    assert capture is False
    assert "[ ] capture its Python stack first" in flat
    assert "(off: needs the master)" in flat


async def test_fresh_confirmation_keeps_its_promise_and_the_capture() -> None:
    text, capture = await _confirm_text(recorded())
    assert OLD_PROMISE in _flat(text) and "STALE" not in text
    assert capture is True


async def test_a_host_that_did_not_answer_is_named_as_such() -> None:
    """The whole host's data carried (it did not answer at all): the host, not the master."""
    base = recorded()
    host = replace(base, stale_s=30.0)
    flat = _flat((await _confirm_text(host))[0])
    assert "STALE 30s" in flat and "this host has not answered for 30s" in flat
    assert OLD_PROMISE not in flat


async def test_kill_of_a_hung_master_shows_progress_at_once_and_waits_one_timeout(
        fresh_stack: Any, hang: Any, tmp_path: Path) -> None:
    """A real master, SIGSTOPped: the dialog says STALE; Enter shows "confirming the pid with
    the master" at once; the refusal comes after one stats timeout (not two: the capture is off
    on stale data), replacing the progress notification; the audit log has the refusal."""
    timeout = 1.5
    st = fresh_stack(workers=2, threads=1)  # nginx answers: the host is partial, as the demo
    hang(st, "/hang/stale-kill", n=1)
    host = HostConfig(name="live", uwsgi=(parse_stats_address(st.stats_address),),
                      nginx=st.nginx_status_url)
    audit = AuditLog(tmp_path / "audit.log")
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.3, slow=1.0,
                                                               timeout=timeout)),
                      audit=audit)
    master = st.master_pid
    async with app.run_test(size=(120, 36)) as pilot:
        assert await wait_for(pilot, lambda: "/hang/stale-kill" in screen_text(app), 15)
        await pilot.press("slash", *"stale-kill", "enter")
        await pilot.pause(0.2)
        victim = app.active_pane().selected_worker()
        assert victim is not None and victim.requests_in_flight
        os.kill(master, signal.SIGSTOP)
        try:
            assert await wait_for(pilot, lambda: "STALE" in screen_text(app), 10)
            await pilot.press("K")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, KillConfirm)
            flat = _flat(screen_text(app))
            assert "STALE" in flat and "refused, nothing done, unless" in flat
            assert screen.capture is False
            await pilot.press("enter")
            started = time.monotonic()
            await pilot.pause(0.1)
            progress = _notes(app)
            assert (f"Worker {victim.id} pid {victim.pid}: confirming the pid with the master "
                    f"(up to {timeout:g} s)") in progress, progress
            assert await wait_for(pilot, lambda: "Kill refused" in _notes(app), 3 * timeout)
            took = time.monotonic() - started
        finally:
            os.kill(master, signal.SIGCONT)
        notes = _notes(app)
        assert "no answer within" in notes or "could not connect within" in notes, notes
        assert "confirming the pid" not in notes  # the outcome replaced the progress
        # one stats read (timeout), not the capture's and then the kill's (2 x timeout)
        assert took < timeout + 0.8, took
    outcomes = [e.get("outcome") for e in audit.entries()]
    assert outcomes == ["refused: gone"], outcomes


# ------------------------------------------------------------------ 2. the kept stack's notes


def _stack(active: bool, request: InFlight | None) -> StackResult:
    thread = ThreadStack(name="uWSGIWorker2Core1", thread_id=1, os_thread_id=4302,
                         active=active, owns_gil=False, core=1, marked=True, request=request,
                         frames=(Frame("_hang", "/srv/app/app.py", 70),))
    return StackResult(host="demo", instance=0, address="127.0.0.1:9002", worker_id=2,
                       pid=4302, taken_at=1_700_000_000.0, took_s=0.02, nonblocking=True,
                       with_locals=False, threads=(thread,),
                       marked_reason="marked: core 1 serves the oldest request")


class _ViewApp(App[None]):
    def compose(self) -> ComposeResult:
        yield StackView(id="stack")


async def test_the_kept_stacks_two_notes_are_two_lines_not_an_escaped_newline() -> None:
    app = _ViewApp()
    async with app.run_test(size=(120, 20)) as pilot:
        view = app.query_one(StackView)
        view.show_stack(_stack(False, None), note="Captured before the kill (worker 2: pid "
                                                  "4302 killed with TERM in 0.3 s).")
        view.set_note("The worker was respawned (now pid 4999): this stack is of pid 4302.")
        await pilot.pause()
        text = screen_text(app)
        assert "\\x0a" not in text, text
        lines = text.splitlines()
        first = next(i for i, ln in enumerate(lines) if "Captured before the kill" in ln)
        assert "The worker was respawned (now pid 4999)" in lines[first + 1], text


def test_a_newline_inside_one_note_is_still_escaped() -> None:
    """Untrusted text (an outcome quoting a server) keeps its control characters visible."""
    text = render_stack(_stack(False, None), 100, note=["from a server:\nforged line"]).plain
    assert "from a server:\\x0aforged line" in text
    two = render_stack(_stack(False, None), 100, note=["one", "two"]).plain.splitlines()
    assert two[1:3] == ["one", "two"]


# ------------------------------------------------------------------ 3. idle vs serving


def test_a_thread_serving_a_request_off_cpu_is_waiting_not_idle() -> None:
    serving = InFlight("GET", "/hang/export.csv", 15.0)
    tui = render_stack(_stack(False, serving), 120).plain
    assert "uWSGIWorker2Core1 (waiting: not on CPU)  serving GET /hang/export.csv for 15 s" \
        in tui, tui
    assert "(idle)" not in tui
    cli = render_cli(_stack(False, serving))
    assert "uWSGIWorker2Core1 (waiting: not on CPU)  serving GET /hang/export.csv" in cli, cli
    # on a CPU it is active; with no request, py-spy's idle is the truth
    assert "(active)  serving" in render_stack(_stack(True, serving), 120).plain
    assert "uWSGIWorker2Core1 (idle)" in render_stack(_stack(False, None), 120).plain
    assert "uWSGIWorker2Core1 (idle)" in render_cli(_stack(False, None))


async def test_a_forked_workers_main_thread_gets_its_own_thread_and_state(
        fresh_stack: Any, hang: Any) -> None:
    """py-spy names a uWSGI worker's main thread (core 0) with the master's thread id (from
    before fork) and calls it active whatever it does: core 0 sleeping in the demo's `_hang`
    read "(active)". The trace gives it the worker's own main thread and its /proc state."""
    from stackmon.hosts import open_host

    st = fresh_stack(workers=1, threads=2, nginx=False)
    hang(st, "/hang/main-thread", n=1)
    host = open_host(HostConfig(name="s", uwsgi=(parse_stats_address(st.stats_address),)),
                     Settings())
    snap = await host.poll()
    (worker,) = [w for w in snap.uwsgi[0].workers if w.requests_in_flight]
    states = []
    for _ in range(3):  # _hang sleeps 0.2 s at a time: on a CPU for a moment now and then
        result = await host.trace(0, worker.id, worker.pid, expect_spawn=worker.last_spawn)
        marked = result.marked
        assert marked is not None and any(f.function == "_hang" for f in marked.frames)
        ids = {t.os_thread_id for t in result.threads}
        assert st.master_pid not in ids and worker.pid in ids, (ids, st.master_pid)
        states.append(marked.state)
    assert "waiting: not on CPU" in states, states


def test_the_main_thread_is_left_alone_when_the_threads_do_not_say_which_it_is() -> None:
    from stackmon.actions.stack import forked_main_thread

    def thread(os_id: int) -> ThreadStack:
        return ThreadStack(name="t", thread_id=os_id, os_thread_id=os_id, active=True,
                           owns_gil=False, frames=())

    two_strays = [thread(1), thread(2)]
    assert forked_main_thread(two_strays, os.getpid(), {os.getpid()}) == two_strays
    all_found = [thread(os.getpid())]
    assert forked_main_thread(all_found, os.getpid(), {os.getpid()}) == all_found
    # one stray, one free thread (this test's own main thread, on a CPU now): they are one
    (fixed,) = forked_main_thread([thread(1)], os.getpid(), {os.getpid()})
    assert fixed.os_thread_id == os.getpid() and fixed.active


def test_the_thread_line_keeps_the_requests_age_at_80_columns() -> None:
    """"(waiting: not on CPU)" is longer than "(idle)": a long URI is cut, not the age."""
    uri = "/hang/api/v1/orders?page=7&sort=created&customer=12345"
    lines = render_stack(_stack(False, InFlight("GET", uri, 19.0)), 76).plain.splitlines()
    (head,) = [ln for ln in lines if "uWSGIWorker2Core1" in ln]
    assert head.endswith("… for 19 s") and len(head) <= 76, head
    assert "(waiting: not on CPU)  serving GET /hang/api/v" in head

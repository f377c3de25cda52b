"""Pilot tests for the 3 a.m. screen (issue 12): the worst worker one key away, rows that keep
their place, states that cannot be missed, and keys that act or say why."""

from __future__ import annotations

from dataclasses import replace

from stackmon.actions.reload_progress import ReloadProgress, WorkerReload
from stackmon.model import Core, HostSnapshot, Request, Worker
from tests.tui_support import app_for, feed, recorded, screen_text, unreachable
from tui.screens.confirm import KillConfirm
from tui.screens.reload_view import render_progress, serving
from tui.screens.worker_detail import WorkerDetailScreen
from widgets.host_header import HostHeader
from widgets.text_lines import TextLines
from widgets.worker_list import WorkerList


def _request(host: HostSnapshot, core: int, uri: str, age: float) -> Request:
    return Request(core=core, method="GET", uri=uri, remote_addr="10.0.0.9", host="h",
                   started_at=host.taken_at - age, running_s=age, level="ok")


def _with_requests(host: HostSnapshot, requests: dict[int, list[tuple[str, float]]]
                   ) -> HostSnapshot:
    """The recorded host with each worker (by id) running exactly these (uri, age)."""
    inst = host.uwsgi[0]
    workers = []
    for w in inst.workers:
        mine = requests.get(w.id, [])
        cores = tuple(Core(id=i, requests=1, in_request=True,
                           request=_request(host, i, uri, age)) for i, (uri, age) in
                      enumerate(mine))
        workers.append(replace(w, status="busy" if mine else "idle", cores=cores))
    return replace(host, uwsgi=(replace(inst, workers=tuple(workers)),))


def _notes(app) -> str:
    """Every notification's text (toasts wrap: the screen text splits them)."""
    return "\n".join(n.message for n in app._notifications)


def _header_row(app) -> str:
    """The host header's row as on screen (under the tab bar when there is one)."""
    return screen_text(app).splitlines()[app.query_one(HostHeader).region.y]


def _burst_poll(app, base: HostSnapshot, slow: bool) -> None:
    """A poll where worker 4 is stuck on /hang and, when `slow`, worker 2 runs a request
    just past --slow (the demo's bursts)."""
    reqs = {2: [("/slow?s=5", 5.5)]} if slow else {}
    app.show_snapshot(0, replace(_with_requests(base, {**reqs, 4: [("/hang", 60.0)]}),
                                 taken_at=base.taken_at))


def _line_of(app, worker_id: int) -> int:
    """The screen line of a worker's row."""
    for y, line in enumerate(screen_text(app).splitlines()):
        if f"#{worker_id} " in line and "pid" in line:
            return y
    raise AssertionError(f"worker {worker_id} not on screen")


async def test_cursor_starts_on_the_worst_and_w_goes_to_the_next_worst():
    base = recorded()
    host = _with_requests(base, {1: [("/a", 1.0)], 2: [("/slowish", 8.0)],
                                 3: [("/oldest", 90.0)], 4: [("/stuck", 40.0)]})
    app = app_for(host)  # slow 5 s, critical 20 s
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        workers = app.query_one(WorkerList)
        assert workers.cursor_worker_id == 3  # critical, and the oldest
        await pilot.press("w")
        assert workers.cursor_worker_id == 4  # the next worst (critical, younger)
        await pilot.press("w")
        assert workers.cursor_worker_id == 2  # slow
        await pilot.press("w")
        assert workers.cursor_worker_id == 3 and workers.following_worst
        # Following: when worker 4's request becomes the oldest, the cursor goes with it.
        later = _with_requests(base, {3: [("/new", 1.0)], 4: [("/stuck", 95.0)]})
        app.show_snapshot(0, later)
        await pilot.pause()
        assert workers.cursor_worker_id == 4
        # A key press of the user's own stops the following.
        await pilot.press("home")
        app.show_snapshot(0, host)
        await pilot.pause()
        assert workers.cursor_worker_id == 1 and not workers.following_worst


async def test_w_without_a_slow_request_says_so():
    host = _with_requests(recorded(), {1: [("/a", 1.0)]})
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.press("w")
        await pilot.pause()
        assert "No request past the slow threshold (5s)" in _notes(app)


async def test_the_worst_workers_row_keeps_its_line_across_30_polls():
    """Short requests come and go on the workers above it; its line must not move."""
    base = recorded()
    app = app_for(base)
    async with app.run_test(size=(120, 36)) as pilot:
        lines = set()
        for i in range(30):
            short = {w: [(f"/fast/{i}", 0.2)] * (((i + w) % 2) * w) for w in (1, 2, 3)}
            poll = _with_requests(base, {**short, 4: [("/hang/report", 60.0 + i)]})
            app.show_snapshot(0, replace(poll, taken_at=base.taken_at))
            await pilot.pause()
            lines.add(_line_of(app, 4))
            assert app.query_one(WorkerList).cursor_worker_id == 4
        assert len(lines) == 1, lines


async def test_a_request_that_crosses_slow_briefly_moves_the_rows_below_once(monkeypatch):
    """The demo's bursts: /slow?s=5 crosses --slow (5 s) for a second and ends. Worker 4's row
    goes down one line when worker 2's request gets its line, and stays there while worker 2
    keeps the line (blank) for HOLD_S; then it comes back, once."""
    clock = [1000.0]
    monkeypatch.setattr("widgets.worker_list.monotonic", lambda: clock[0])
    base = recorded()
    app = app_for(base)
    async with app.run_test(size=(120, 36)) as pilot:
        def poll(slow: bool) -> None:
            _burst_poll(app, base, slow)

        poll(False)
        await pilot.pause()
        before = _line_of(app, 4)
        poll(True)
        await pilot.pause()
        assert _line_of(app, 4) == before + 1 and "/slow?s=5" in screen_text(app)
        for _ in range(5):  # the request ended; polls within the hold
            clock[0] += 1.5
            poll(False)
            await pilot.pause()
            assert _line_of(app, 4) == before + 1 and "/slow?s=5" not in screen_text(app)
        clock[0] += WorkerList.HOLD_S
        poll(False)  # nothing shown changed, but the hold is over
        await pilot.pause()
        assert _line_of(app, 4) == before


async def test_footer_at_80x24_keeps_the_triage_keys():
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.pause()
        footer = screen_text(app).splitlines()[-1]
        for key in ("⏎ Detail", "w Worst", "K Kill", "R Reload", "p Pause", "? Help", "q Quit"):
            assert key in footer, (key, footer)
        assert "Worker actions" not in footer


async def test_paused_is_on_screen_while_true():
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.pause()
        assert "PAUSED" not in _header_row(app)
        await pilot.press("p")
        await pilot.pause()
        assert " PAUSED " in _header_row(app)  # the host's header line
        await pilot.press("p")
        await pilot.pause()
        assert "PAUSED" not in _header_row(app)


async def test_read_only_badge_and_K_says_why():
    host = recorded()
    app = app_for(host, read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.pause()
        text = screen_text(app)
        assert " READ-ONLY " in _header_row(app)
        assert "K Kill" not in text.splitlines()[-1]
        await pilot.press("K")
        await pilot.pause()
        assert "Read-only (--read-only)" in _notes(app)
        assert not isinstance(app.screen, KillConfirm)


async def test_K_on_an_unreachable_host_says_it_is_unreachable():
    dead = unreachable("web-3", recorded().taken_at)
    app = app_for(dead)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, dead)
        await pilot.pause()
        await pilot.press("K")
        await pilot.pause()
        notes = _notes(app)
        assert "web-3 is unreachable: no answer within 2 s" in notes
        assert "No worker selected" not in notes


async def test_K_in_the_detail_screen_asks_to_kill_that_worker():
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.press("home", "j", "enter")
        await pilot.pause()
        assert isinstance(app.screen, WorkerDetailScreen)
        assert "K Kill" in screen_text(app).splitlines()[-1]
        await pilot.press("K")
        await pilot.pause()
        assert isinstance(app.screen, KillConfirm)
        worker2 = host.uwsgi[0].workers[1]
        assert f"pid {worker2.pid}" in screen_text(app) or str(worker2.pid) in screen_text(app)


async def test_no_color_makes_crit_the_most_visible(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        wl = app.query_one(WorkerList)
        crit = wl.get_component_rich_style("worker-list--critical-label")
        slow = wl.get_component_rich_style("worker-list--slow-label")
        assert crit.reverse and crit.bold and not slow.reverse
        # Reverse video in the foreground's own (brightest) shade, not dark red turned grey.
        assert crit.color is not None and crit.bgcolor is not None
        fg = crit.color.get_truecolor()
        bg = crit.bgcolor.get_truecolor()
        assert sum(fg) > 3 * 180 and sum(bg) < 3 * 80
        assert "✖ CRIT" in screen_text(app)


async def test_cheap_workers_are_one_line_and_busy_counts_the_rows():
    base = recorded()
    inst = base.uwsgi[0]
    cheap = [replace(w, pid=0, status="cheap", cores=()) for w in inst.workers[2:]]
    host = replace(base, uwsgi=(replace(inst, workers=(*inst.workers[:2], *cheap)),))
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        text = screen_text(app)
        assert "2 cheap (not spawned" in text
        assert "#3 " not in text and "#4 " not in text
        busy = sum(1 for w in inst.workers[:2] if w.busy)
        assert f"busy {busy}/2 +2 cheap" in text


async def test_a_stale_instance_keeps_its_workers_and_says_stale():
    base = recorded()
    host = replace(base, uwsgi=(replace(base.uwsgi[0], stale_s=12.0),))
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.pause()
        text = screen_text(app)
        assert " STALE 12s " in _header_row(app)
        assert "/hang/report" in text and "#4 " in text


async def test_the_cursor_and_the_reading_name_the_same_worker_when_ages_tie():
    """Two CRIT requests of the same whole-second age: the one that started first is the
    worst, for the cursor as for the reading (the cursor sat on #3, the lower id, while the
    reading named worker 4)."""
    base = _with_requests(recorded(), {3: [("/hang/b", 30.2)], 4: [("/hang/a", 30.7)]})
    inst = base.uwsgi[0]
    workers = tuple(replace(w, cores=tuple(
        replace(c, request=replace(c.request, level="critical")) if c.request else c
        for c in w.cores)) for w in inst.workers)
    host = replace(base, uwsgi=(replace(inst, workers=workers),))
    app = app_for(host, now=host.taken_at + 0.1)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        text = screen_text(app)
        assert sum(" 30s " in line and "CRIT" in line for line in text.splitlines()) == 2
        assert "oldest 30 s: worker 4 GET /hang/a" in text.replace("\n", " ")
        assert app.query_one(WorkerList).cursor_worker_id == 4


async def test_stale_rows_keep_the_ages_of_the_last_good_sample():
    """Polls go on while the stats stay silent: the rows keep the ages of the last good
    sample, marked "≥", and the title says how old they are; they do not age into CRIT."""
    base = recorded()
    app = app_for(base, now=base.taken_at + 30)
    async with app.run_test(size=(120, 36)) as pilot:
        rows = []
        for later in (12.0, 20.0):
            # stale_s 2 s short of taken_at's distance (a poll's start is a timeout before its
            # snapshot): the ages come from the data's own clock, not from taken_at - stale_s
            host = replace(base, taken_at=base.taken_at + later,
                           uwsgi=(replace(base.uwsgi[0], stale_s=later - 2.0),))
            feed(app, host)
            await pilot.pause()
            text = screen_text(app)
            rows.append([line for line in text.splitlines() if "/hang/report" in line])
            assert f"as of {int(later) - 2}s ago" in text
        assert rows[0] == rows[1] and rows[0], rows
        assert "≥64s" in rows[0][0]


def test_reload_view_says_no_worker_serving_and_what_mercy_will_cut():
    stuck = recorded().uwsgi[0].workers[3].requests_in_flight[0]
    p = ReloadProgress("graceful", 15.0, 12.0, (
        WorkerReload(1, 101, 0, "exited"), WorkerReload(2, 102, 0, "exited"),
        WorkerReload(3, 103, 103, "draining", request=stuck, countdown=3.0)),
        stats_available=True, done=False, message="graceful reload: 0/3 workers replaced")
    assert serving(p) == 0
    from rich.console import Console

    console = Console(width=140, record=True, color_system=None)
    console.print(render_progress("web-1", "web-1/127.0.0.1:9002", p, none_for=9.0,
                                  queue=(31, 100, 20)))
    text = console.export_text()
    assert "NO WORKER SERVING for 9 s" in text
    assert "exited, no respawn until the last exits" in text
    assert "exited, respawning" not in text
    assert "listen queue 31/100 growing" in text
    assert f"cut in 3 s if still running: worker 3 GET {stuck.uri}" in text
    replaced = replace(p, workers=(WorkerReload(1, 101, 201, "replaced"), *p.workers[1:]))
    assert serving(replaced) == 1
    console = Console(width=140, record=True, color_system=None)
    console.print(render_progress("web-1", "i", replaced))
    assert "NO WORKER SERVING" not in console.export_text()


def test_never_respawned_workers_show_no_respawn():
    from widgets.worker_list import respawns

    w = Worker(id=1, pid=10, status="idle", accepting=True, requests=0, exceptions=0,
               harakiri_count=0, respawn_count=1, avg_rt_ms=0, rss=0, vsz=0, last_spawn=0,
               running_time_s=0, tx=0)
    assert respawns(w) == 0 and respawns(replace(w, respawn_count=3)) == 2


async def test_without_colour_the_reading_and_the_tab_badge_are_reverse_video(monkeypatch):
    """NO_COLOR turned the red reading into grey 237 on 234: the line that says what is wrong
    was the least visible one. Without colour it is reverse video, as CRIT is everywhere."""
    monkeypatch.setenv("NO_COLOR", "1")
    host = recorded()  # two requests past the critical age
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.pause()
        reading = app.query_one("#reading", TextLines).content
        assert reading.plain.startswith("✖ ") and "critical age" in reading.plain
        assert any("reverse" in str(span.style) for span in reading.spans)
        tab = app._tabs.get_tab("host-0").label
        assert "CRIT" in tab.plain
        assert any(span.style.reverse for span in tab.spans if hasattr(span.style, "reverse"))


async def test_the_objects_built_at_startup_leave_the_cyclic_gc():
    """gc.freeze() after the first paint: the full collections that scanned Textual's and the
    widgets' ~80,000 long-lived objects every ~40 s (43 ms each) scan only newer objects."""
    import gc

    gc.unfreeze()
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.pause()
        assert gc.get_freeze_count() > 10_000


async def test_keys_with_nothing_to_switch_to_say_why():
    """A new user pressed `w` on the only stuck worker, `i` on a one-instance host and `]` with
    one host: nothing happened and nothing said why."""
    host = _with_requests(recorded(), {4: [("/stuck", 40.0)]})
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        assert app.query_one(WorkerList).cursor_worker_id == 4
        for key in ("w", "i", "right_square_bracket"):
            await pilot.press(key)
        await pilot.pause()
        notes = _notes(app)
        assert "Worker 4 is the only one past the slow threshold" in notes
        assert "one uWSGI instance" in notes
        assert "One host here" in notes
        assert app.query_one(WorkerList).cursor_worker_id == 4


async def test_one_host_has_no_tab_bar_until_a_second_tab_opens():
    """The header names the host and its state; a bar with one tab repeated it and took two
    rows from the workers. The overview (`o`) is a second tab: the bar comes back."""
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.pause()
        rows = screen_text(app).splitlines()
        assert rows[0].startswith(host.name) and "CRIT" in rows[0]  # the header, first row
        await pilot.press("o")
        await pilot.pause()
        rows = screen_text(app).splitlines()
        assert "Fleet" in rows[0] and host.name in rows[0]  # both tabs on the bar
        assert "1 host " in screen_text(app) and "1 hosts" not in screen_text(app)


async def test_held_request_lines_say_ended_and_the_stuck_row_stays_on_tall_screens():
    """A new user read the held (blank) lines as a drawing glitch, and the stuck-together
    line coming and going with each burst moved every worker row."""
    base = recorded()
    app = app_for(base)
    async with app.run_test(size=(120, 36)) as pilot:
        def poll(slow: bool) -> None:
            _burst_poll(app, base, slow)

        poll(True)
        await pilot.pause()
        stuck = app.query_one("#stuck", TextLines)
        before = _line_of(app, 4)
        poll(False)
        await pilot.pause()
        assert "⋯ no longer in flight" in screen_text(app) and _line_of(app, 4) == before
        assert stuck.display and not stuck.content.plain  # shown, empty: its row stays

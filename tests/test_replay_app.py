"""The replay TUI (Pilot) on a recording built from the recorded demo host."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from stackmon.config import Settings
from stackmon.logs.host import LogSummary
from stackmon.logs.uwsgi_events import Event
from stackmon.model import Core, HostSnapshot
from stackmon.record.replay import Timeline
from stackmon.record.store import Recorder, Recording
from tests.tui_support import recorded, screen_text
from tui.replay_app import ReplayApp
from tui.screens.worker_detail import WorkerDetailScreen

T0 = 1_800_000_000.0
STUCK = "/hang/report?id=42"


def make_polls() -> list[HostSnapshot]:
    """30 polls a second apart: worker 4's stuck report request is in flight from poll 10 to
    poll 19 (harakiri at 20); before and after worker 4 is idle."""
    base = recorded("demo-hangs.json", "web-1")
    inst = base.uwsgi[0]
    idle = tuple(replace(c, in_request=False, request=None) for c in inst.workers[3].cores)
    harakiri = Event(at=T0 + 20.2, source="uwsgi", kind="harakiri", worker=4, pid=4242,
                     uri=STUCK, text="*** HARAKIRI ON WORKER 4 (pid: 4242, try: 1) ***")
    out = []
    for i in range(30):
        w4 = inst.workers[3]
        if not 10 <= i < 20:
            w4 = replace(w4, cores=idle, status="idle")
        else:
            cores: list[Core] = []
            for c in w4.cores:
                if c.request is not None and c.request.uri == STUCK:
                    c = replace(c, request=replace(c.request, running_s=float(i - 10),
                                                   started_at=T0 + 10, level="ok"))
                cores.append(c)
            w4 = replace(w4, cores=tuple(cores))
        workers = (*inst.workers[:3], w4)
        logs = LogSummary(taken_at=T0 + i, window_s=60, http=None, upstream_errors=(),
                          events=(harakiri,) if i >= 21 else ())
        out.append(replace(base, taken_at=T0 + i, uwsgi=(replace(inst, workers=workers),),
                           logs=logs))
    return out


def make_recording(tmp_path: Path) -> Path:
    rec = Recorder(tmp_path / "r.db")
    for snap in make_polls():
        rec.write(snap)
    rec.close()
    return tmp_path / "r.db"


def app_on(path: Path) -> ReplayApp:
    recording = Recording.open(path)
    return ReplayApp(recording, Timeline.load(recording), Settings(slow=5, critical=20))


async def test_replay_steps_to_the_stuck_request_and_jumps(tmp_path: Path) -> None:
    app = app_on(make_recording(tmp_path))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "REPLAY" in text and "poll 1/30" in text
        assert STUCK not in text
        for _ in range(16):  # the stuck request is past --slow (5 s) from poll 15
            await pilot.press("full_stop")
        await pilot.pause()
        assert app.timeline.now == T0 + 16
        assert STUCK in screen_text(app)
        for _ in range(7):  # back before it was sent
            await pilot.press("comma")
        await pilot.pause()
        assert app.timeline.now == T0 + 9
        assert STUCK not in screen_text(app)
        # the next event: the harakiri, shown on the first poll taken after it
        await pilot.press("n")
        await pilot.pause()
        assert app.timeline.now == T0 + 21
        assert "harakiri" in screen_text(app)
        # the request is gone from the workers (the harakiri event may still name it)
        shown = app.active_pane().on_screen
        assert shown is not None
        assert not [r for u in shown.uwsgi for w in u.workers for r in w.requests_in_flight
                    if r.uri == STUCK]


async def test_replay_is_read_only_and_plays(tmp_path: Path) -> None:
    app = app_on(make_recording(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.read_only
        assert app.check_action("kill_worker", ()) is False
        assert app.check_action("doctor", ()) is False
        await pilot.press("K")
        await pilot.pause()
        assert len(app.screen_stack) == 1  # no confirmation: nothing to kill in the past
        for _ in range(4):
            await pilot.press("plus")
        assert app.timeline.speed == 16.0
        await pilot.press("space")
        await pilot.pause(1.0)
        assert app.timeline.now > T0 + 5  # 16x: a second plays 16 s
        await pilot.press("space")
        assert not app.timeline.playing


async def test_jump_to_a_time_and_worker_detail_as_recorded(tmp_path: Path) -> None:
    app = app_on(make_recording(tmp_path))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        await pilot.press("t")
        await pilot.pause()
        for ch in "+15s":
            await pilot.press(ch)
        await pilot.press("enter")
        await pilot.pause()
        assert app.timeline.now == T0 + 15
        pane = app.active_pane()
        worker = pane.find_worker(4)
        assert worker is not None and any(r.uri == STUCK for r in worker.requests_in_flight)
        app.push_screen(WorkerDetailScreen(0, "web-1", worker, "", app.clock()))
        await pilot.pause()
        detail = screen_text(app)
        assert STUCK in detail
        assert "HTTP_COOKIE" in detail and "<redacted>" in detail  # the variables as recorded


async def test_stepping_back_restarts_the_minute_of_history(tmp_path: Path) -> None:
    """The side panel's History is built poll by poll: after a step back in time it held the
    later polls followed by the earlier one. Now it starts again from the poll shown."""
    app = app_on(make_recording(tmp_path))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        for _ in range(12):
            await pilot.press("full_stop")
        await pilot.pause()
        pane = app.active_pane()
        assert len(pane._busy_hist) == 13 and pane._busy_hist[-1] == 4  # worker 4 busy
        for _ in range(5):
            await pilot.press("comma")
        await pilot.pause()
        assert app.timeline.now == T0 + 7
        assert list(pane._busy_hist) == [3]  # only the poll shown (worker 4 idle then)

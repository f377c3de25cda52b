"""The kill confirmation shows what a kill would hit now, and only the target's log lines.

A new-user review of the live demo: K on worker 3 listed two requests (`/slow?s=1.8`,
`/slow?s=2.1`); 8 s later the dialog still showed them, and `t` killed two others (`/slow?s=5`
twice, per the audit log). While paused, K opened on the frozen screen's data (a request long
finished) and did not say so. And under the SIGUSR2 note it showed uWSGI lines about other
workers (`worker 4 ... NO MERCY` under a kill of worker 3) as if about the target.

Now the app feeds every poll of the host to the open dialog (the latest, also while the
main screen is paused, which the dialog says); a confirm after the requests changed lists
the new ones, says so, kills nothing and waits for the key again; a respawned or gone worker
cannot be confirmed; the log lines are matched on the events' worker/pid fields.

Recorded snapshots of the demo for the dialog's text (the kill itself replaced by a recorder:
their pids are not this machine's); one real uWSGI whose request is swapped under the open
dialog, and the second key really kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from stackmon.actions.audit import AuditLog
from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.model import Core, HostSnapshot, Worker
from tests.tui_support import app_for, event, feed, recorded, screen_text, summary, wait_for
from tui.app import StackmonApp
from tui.screens.confirm import KillConfirm, about_worker

TARGET = 4  # the worker under the cursor in the recording (its two requests hang)


def _flat(app: StackmonApp) -> str:
    """The dialog's text on one line: what lies between its borders (█), row by row."""
    rows = [ln.split("█")[1] for ln in screen_text(app).splitlines() if ln.count("█") >= 2]
    return " ".join(" ".join(rows).split())


def _worker(host: HostSnapshot, wid: int = TARGET) -> Worker:
    return next(w for w in host.uwsgi[0].workers if w.id == wid)


def _with(host: HostSnapshot, worker: Worker, later: float = 2.0) -> HostSnapshot:
    """`host` polled `later` s on, with `worker` replacing the one with its id."""
    inst = host.uwsgi[0]
    workers = tuple(worker if w.id == worker.id else w for w in inst.workers)
    return replace(host, taken_at=host.taken_at + later,
                   uwsgi=(replace(inst, workers=workers), *host.uwsgi[1:]))


def _new_requests(host: HostSnapshot, uri: str = "/slow?s=5") -> HostSnapshot:
    """The next poll: the target's requests ended and each core serves a new one (the core's
    request count moved on, a new start time)."""
    w = _worker(host)
    cores = tuple(replace(c, requests=c.requests + 1, request=replace(
        c.request, uri=uri, started_at=host.taken_at + 1.0)) if c.request else c
        for c in w.cores)
    return _with(host, replace(w, cores=cores))


def _with_arrival(host: HostSnapshot) -> HostSnapshot:
    """The next poll: the target's requests go on, and a short GET /fast arrived on core 2."""
    w = _worker(host)
    first = next(c.request for c in w.cores if c.request is not None) if any(
        c.request for c in w.cores) else _worker(recorded()).cores[0].request
    assert first is not None
    fast = replace(first, core=2, uri="/fast", started_at=host.taken_at + 1.9, running_s=0.1)
    cores = (*w.cores, Core(id=2, requests=7, in_request=True, request=fast))
    return _with(host, replace(w, status="busy", cores=cores))


def _idle(host: HostSnapshot) -> HostSnapshot:
    """The recording with the target worker idle (no request in flight)."""
    w = _worker(host)
    cores = tuple(replace(c, in_request=False, request=None) for c in w.cores)
    return _with(host, replace(w, status="idle", cores=cores), later=0.0)


async def _fed(pilot: Any, app: StackmonApp, host: HostSnapshot) -> None:
    """A poll of `host` reaches the app, and the app has drawn it."""
    feed(app, host)
    await pilot.pause()


async def _pressed(pilot: Any, *keys: str) -> None:
    """Keys pressed, and the app has drawn what they did."""
    await pilot.press(*keys)
    await pilot.pause()


def _kills(app: StackmonApp) -> list[tuple[Any, ...]]:
    """Record the kills the app starts instead of sending signals to the recording's pids."""
    started: list[tuple[Any, ...]] = []

    async def kill(*args: Any, **kwargs: Any) -> None:
        started.append(args)

    app._kill = kill  # type: ignore[method-assign]
    return started


@contextlib.asynccontextmanager
async def _dialog_open(host: HostSnapshot, size: tuple[int, int] = (120, 36)
                       ) -> AsyncIterator[tuple[Any, StackmonApp, list[tuple[Any, ...]]]]:
    """The app on `host` with K pressed: the kill dialog open, kills recorded (_kills)."""
    app = app_for(host)
    kills = _kills(app)
    async with app.run_test(size=size) as pilot:
        await _fed(pilot, app, host)
        await _pressed(pilot, "K")
        yield pilot, app, kills


async def test_a_poll_updates_the_open_dialog_and_a_confirm_after_a_change_asks_again() -> None:
    host = recorded()
    async with _dialog_open(host) as (pilot, app, kills):
        assert isinstance(app.screen, KillConfirm)
        flat = _flat(app)
        assert "/hang/report?id=42" in flat and "CHANGED" not in flat
        feed(app, _new_requests(host))  # the listed requests ended, two others run
        await pilot.pause()
        flat = _flat(app)
        assert "/hang/report?id=42" not in flat.split("requests served")[1].split("CHANGED")[0]
        assert re.search(r"core 0 running 2s GET /slow\?s=5 from \S+", flat), flat
        assert ("The requests changed since you opened this (listed ones ended: core 0 GET "
                "/hang/report?id=42, core 1 GET /hang/search?q=invoices+2024; now: core 0 GET "
                "/slow?s=5, core 1 GET /slow?s=5). Confirming asks again.") in flat, flat
        await _pressed(pilot, "t")
        assert isinstance(app.screen, KillConfirm) and kills == []
        flat = _flat(app)
        assert "Nothing was killed: press the key again to kill the ones listed now" in flat
        await _pressed(pilot, "t")  # the same requests still: this one kills
        assert not isinstance(app.screen, KillConfirm)
        assert len(kills) == 1 and kills[0][2].pid == _worker(host).pid


async def test_an_unchanged_list_kills_at_the_first_key_and_ages_move_on() -> None:
    host = recorded()
    async with _dialog_open(host) as (pilot, app, kills):
        assert "running 67s" in _flat(app)
        app.clock = lambda: host.taken_at + 13.0  # 10 s later, the same requests
        await _fed(pilot, app, _with(host, _worker(host), later=10.0))
        flat = _flat(app)
        assert "running 77s" in flat and "CHANGED" not in flat
        await _pressed(pilot, "k")
        assert len(kills) == 1 and kills[0][3].signal == "KILL"


async def test_a_respawned_worker_cannot_be_confirmed() -> None:
    host = recorded()
    app = app_for(host)
    kills = _kills(app)
    old = _worker(host)
    async with app.run_test(size=(120, 36)) as pilot:
        await _fed(pilot, app, host)
        await _pressed(pilot, "K")
        await _fed(pilot, app, _with(host, replace(old, pid=old.pid + 97, cores=())))
        flat = _flat(app)
        assert (f"GONE pid {old.pid} is gone: worker {TARGET} was respawned as pid "
                f"{old.pid + 97}. Nothing to kill") in flat, flat
        assert "SIGKILL now" not in flat and "Esc close: nothing to kill" in flat
        assert "The master respawns" not in flat and "capture its Python stack" not in flat
        for key in ("t", "enter", "k", "u"):
            await pilot.press(key)
        await pilot.pause()
        assert isinstance(app.screen, KillConfirm) and kills == []
        await pilot.press("escape")


async def test_paused_the_dialog_uses_the_latest_poll_and_says_so() -> None:
    host = recorded()
    app = app_for(host)
    _kills(app)
    async with app.run_test(size=(120, 36)) as pilot:
        await _fed(pilot, app, host)
        await pilot.press("p")
        feed(app, _new_requests(host))  # polling goes on; the screen stays frozen
        await pilot.pause()
        assert "/hang/report?id=42" in screen_text(app)  # the frozen main screen
        await _pressed(pilot, "K")
        assert isinstance(app.screen, KillConfirm)
        flat = _flat(app)
        assert "The main screen is PAUSED; this dialog shows live data" in flat, flat
        assert "/slow?s=5" in flat and "/hang/report" not in flat
        assert "CHANGED" not in flat  # what it opened on is what it lists


async def test_paused_on_a_worker_respawned_since_the_dialog_says_gone_at_once() -> None:
    host = recorded()
    app = app_for(host)
    old = _worker(host)
    async with app.run_test(size=(120, 36)) as pilot:
        await _fed(pilot, app, host)
        await pilot.press("p")
        feed(app, _with(host, replace(old, pid=0, status="idle", cores=())))
        await _pressed(pilot, "K")
        flat = _flat(app)
        assert f"GONE pid {old.pid} is gone (worker {TARGET} is waiting for its respawn)" \
            in flat, flat
        assert "The master respawns" not in flat and "SIGKILL now" not in flat


async def test_a_master_gone_stale_under_the_open_dialog_keeps_the_stale_refusal() -> None:
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        await _fed(pilot, app, host)
        await _pressed(pilot, "K")
        assert "STALE" not in _flat(app)
        stale = _with(host, _worker(host))
        await _fed(pilot, app, replace(stale, uwsgi=(replace(stale.uwsgi[0], stale_s=6.0),)))
        flat = _flat(app)
        assert "STALE 6s" in flat and "refused, nothing done, unless the uWSGI master" in flat


async def test_only_log_lines_about_the_target_are_shown() -> None:
    base = recorded()
    at, pid = base.taken_at, _worker(base).pid
    others = (
        event(at - 2, "no_mercy", "[0] worker 3 (pid: 15702) is taking too much time to die"
              "...NO MERCY !!!", 3, 15702),
        event(at - 3, "respawn", "Respawned uWSGI worker 2 (new pid: 6600)", 2, 6600),
        event(at - 4, "reload", "...gracefully killing workers..."),
    )
    host = replace(base, logs=summary(at, events=others))
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        await _fed(pilot, app, host)
        await _pressed(pilot, "K")
        flat = _flat(app)
        assert "NO MERCY" not in flat and "Respawned" not in flat and "killing" not in flat
        assert f"no recent uWSGI log line about worker {TARGET}" in flat, flat
        # a poll brings lines about the target: by its pid, and by its id
        ours = (event(at + 1, "usr2", f"SIGUSR2: --- uWSGI worker {TARGET} (pid: {pid}) is "
                      "managing request /hang/report?id=42 since x ---", TARGET, pid),
                event(at - 60, "respawn", f"Respawned uWSGI worker {TARGET} (new pid: {pid})",
                      TARGET, pid))
        polled = _with(host, _worker(host))
        await _fed(pilot, app, replace(polled, logs=summary(at + 2, events=ours + others)))
        flat = _flat(app)
        assert f"2s ago SIGUSR2: --- uWSGI worker {TARGET} (pid: {pid})" in flat, flat
        assert f"Respawned uWSGI worker {TARGET}" in flat
        assert "NO MERCY" not in flat and "no recent uWSGI log line" not in flat


def test_on_a_host_with_two_instances_only_the_pid_names_the_worker() -> None:
    """The events do not say which instance wrote them: worker 3 of the other one is not
    this worker 3."""
    w = _worker(recorded())
    same_id = event(w.last_spawn + 5, "chain", "chain next victim is worker 4", TARGET)
    same_pid = event(0.0, "usr2", "SIGUSR2 ...", TARGET, w.pid)
    assert about_worker((same_id, same_pid), w) == [same_id, same_pid]
    assert about_worker((same_id, same_pid), w, by_id=False) == [same_pid]


def test_lines_about_an_earlier_process_in_the_same_slot_are_not_shown() -> None:
    """A review: under a kill of worker 2 (pid 30915) the dialog showed `worker 2 (pid:
    30182) ... NO MERCY` and `chain next victim is worker 2`, both about the process before
    it. A line naming another pid is not this one's; a line without a pid counts only from
    this process's spawn on."""
    w = _worker(recorded())
    earlier_pid = event(w.last_spawn + 5, "no_mercy", "worker 4 (pid: 9) NO MERCY", TARGET, 9)
    before_spawn = event(w.last_spawn - 30, "chain", "chain next victim is worker 4", TARGET)
    after_spawn = event(w.last_spawn + 2, "chain", "chain next victim is worker 4", TARGET)
    assert about_worker((earlier_pid, before_spawn, after_spawn), w) == [after_spawn]


# ------------------------------------------------------------------ real uWSGI


async def test_a_real_request_swapped_under_the_dialog_asks_again_then_kills(
        fresh_stack: Any, hang: Any, tmp_path: Path) -> None:
    """One worker, one thread: the listed request ends and another starts on the same worker
    while the dialog is open. The first `t` kills nothing (the audit log is empty, same pid);
    the second kills the request now listed and the master respawns the worker."""
    st = fresh_stack(workers=1, threads=1, nginx=False)
    first = hang(st, "/hang/listed-first", n=1, via="unix")
    host = HostConfig(name="swap", uwsgi=(parse_stats_address(st.stats_address),))
    audit = AuditLog(tmp_path / "audit.log")
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.3)), audit=audit)
    async with app.run_test(size=(120, 36)) as pilot:
        assert await wait_for(pilot, lambda: "/hang/listed-first" in screen_text(app), 15)
        victim = app.active_pane().selected_worker()
        assert victim is not None and victim.requests_in_flight
        await _pressed(pilot, "K")
        assert isinstance(app.screen, KillConfirm)
        await asyncio.to_thread(first.close)  # the listed request ends...
        await asyncio.to_thread(hang, st, "/hang/started-later", 1, via="unix")  # ...another
        assert await wait_for(pilot, lambda: "/hang/started-later" in _flat(app), 10)
        flat = _flat(app)
        assert ("The requests changed since you opened this (listed ones ended: core 0 GET "
                "/hang/listed-first; now: core 0 GET /hang/started-later)") in flat, flat
        await pilot.press("t")
        await pilot.pause(0.8)  # a kill would have written "started" by now
        assert isinstance(app.screen, KillConfirm)
        assert audit.entries() == []
        assert "press the key again" in _flat(app)
        await pilot.press("t")

        def respawned() -> bool:
            now = app.active_pane().find_worker(victim.id)
            return now is not None and now.pid not in (0, victim.pid)

        assert await wait_for(pilot, respawned, timeout=10)
        assert await wait_for(pilot, lambda: [e["outcome"] for e in audit.entries()]
                              == ["started", "ok"], timeout=10)
        assert audit.entries()[0]["target_pid"] == victim.pid


async def test_a_request_that_only_arrived_is_shown_and_does_not_hold_the_kill() -> None:
    """The listed stuck requests still run and a short one arrived on a third core: the
    dialog says so (the kill aborts it too) and the first key kills. Asking again for every
    arrival kept a kill from going through on a worker whose other thread serves."""
    host = recorded()
    async with _dialog_open(host) as (pilot, app, kills):
        await _fed(pilot, app, _with_arrival(host))
        flat = _flat(app)
        assert "CHANGED" not in flat
        assert "Arrived since you opened this: core 2 GET /fast; the kill aborts them too." \
            in flat, flat
        await _pressed(pilot, "t")
        assert not isinstance(app.screen, KillConfirm) and len(kills) == 1
        # The kill carries what it is for: the two stuck requests listed, not the arrival
        # (the kill itself is refused if one of those ended by then).
        listed = _worker(host).requests_by_key()
        assert sorted(kills[0][3].expect_requests) == sorted(listed) and len(listed) == 2


async def test_an_idle_worker_that_starts_serving_asks_again() -> None:
    host = _idle(recorded())
    app = app_for(host)
    kills = _kills(app)
    async with app.run_test(size=(120, 36)) as pilot:
        await _fed(pilot, app, host)
        await _pressed(pilot, "end", "K")  # worker 4, the last, idle now
        assert f"Kill worker {TARGET} " in _flat(app)
        await pilot.pause()
        await _fed(pilot, app, _with_arrival(host))
        assert "CHANGED" in _flat(app)
        await _pressed(pilot, "t")
        assert isinstance(app.screen, KillConfirm) and kills == []


def test_on_stale_data_the_ages_are_those_of_the_last_sample_and_no_deadline_is_said():
    """The master stopped answering 15 s ago: the dialog said "running 38s · nginx 504 in
    21 s" of a request the stats had caught at 21 s, and "running 18s" of a 5 s /slow. Now
    the ages are the sample's, read "at least", with no deadline predicted."""
    from tui.screens.confirm import _requests_text

    host = recorded()
    w = _worker(host)
    r = w.requests_in_flight[0]
    assert r.started_at is not None
    sampled_age = int(host.taken_at - r.started_at)
    live = _requests_text(w, host.taken_at + 15).plain
    stale = _requests_text(w, host.taken_at + 15, stale_s=15.0).plain
    assert f"running {sampled_age + 15}s" in live
    assert f"running ≥{sampled_age}s" in stale and f"{sampled_age + 15}s" not in stale
    assert "504" not in stale and "harakiri" not in stale


async def test_after_asking_again_an_arrival_keeps_the_reason_on_screen() -> None:
    """A review: once the first key had asked again, an arrival's NEW line replaced the
    "press the key again" line; both stay, and the next key kills."""
    host = recorded()
    async with _dialog_open(host) as (pilot, app, kills):
        swapped = _new_requests(host)
        await _fed(pilot, app, swapped)
        await _pressed(pilot, "t")  # asks again
        await _fed(pilot, app, _with_arrival(swapped))
        flat = _flat(app)
        assert "press the key again" in flat and "Arrived since you opened this" in flat, flat
        await _pressed(pilot, "t")
        assert not isinstance(app.screen, KillConfirm) and len(kills) == 1


async def test_at_80x24_paused_and_changed_the_sigusr2_part_fits_instead_of_being_cut(
        ) -> None:
    """At 80x24 with the PAUSED and CHANGED lines the SIGUSR2 paragraph ran past the box's
    bottom ("…to the uWSGI" and the rest gone); now it is whole where the screen is short: the
    keys spelt out in the box give way (the line over the main screen's Footer lists them),
    else it takes one line. A request's age sits beside its core, never split from "running"
    at the line's end. The main screen's Footer (`⏎ Detail`, where Enter sends SIGTERM) is
    covered by the dialog's keys."""
    for size, short in (((80, 24), True), ((120, 36), False)):
        host = recorded()
        app = app_for(host)
        async with app.run_test(size=size) as pilot:
            await _fed(pilot, app, host)
            await _pressed(pilot, "p")
            await _pressed(pilot, "K")
            await _fed(pilot, app, _new_requests(host))
            rows = [ln.split("█")[1] for ln in screen_text(app).splitlines()
                    if ln.count("█") >= 2]
            text = "\n".join(rows)
            assert "PAUSED" in text and "CHANGED" in text
            # the SIGUSR2 part whole: its paragraph to the end, or its one-line form
            assert ("not here." in text or
                    any("SIGUSR2's output: in the uWSGI log (e: events)." in r for r in rows))
            if not short:
                assert "SIGUSR2: the worker writes" in text and "Esc  cancel" in text, text
            assert re.search(r"core 0  running 2s  GET /slow\?s=5", text), text
            # the keys, whatever the box keeps: the line over the main screen's Footer
            bottom = screen_text(app).splitlines()[-1]
            assert "t/⏎ SIGTERM" in bottom and "Esc cancel" in bottom and "Detail" not in bottom


async def test_a_request_that_ends_between_the_last_poll_and_the_key_is_not_killed(
        fresh_stack: Any, hang: Any, tmp_path: Path) -> None:
    """Polls 30 s apart: the dialog still shows the request when it has already ended. The
    kill's own stats read finds it gone: nothing is killed, and the notification names the
    request the kill was for (it named only its core)."""
    from tests.conftest import in_flight

    st = fresh_stack(workers=1, threads=1, nginx=False)
    held = hang(st, "/hang/gone-before-the-key", n=1, via="unix")
    host = HostConfig(name="late", uwsgi=(parse_stats_address(st.stats_address),))
    audit = AuditLog(tmp_path / "audit.log")
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=30)), audit=audit)
    async with app.run_test(size=(120, 36)) as pilot:
        def serving() -> bool:
            w = app.active_pane().selected_worker()
            return w is not None and bool(w.requests_in_flight)

        assert await wait_for(pilot, serving, 15)
        victim = app.active_pane().selected_worker()
        assert victim is not None
        await _pressed(pilot, "K")
        assert "/hang/gone-before-the-key" in _flat(app)
        await asyncio.to_thread(held.close)
        assert not in_flight(st.stats())
        await pilot.press("t")
        assert await wait_for(pilot, lambda: any(
            "Nothing killed" in (n.title or "") for n in app._notifications), 15), \
            [(n.title, n.message) for n in app._notifications]
        (note,) = [n for n in app._notifications if "Nothing killed" in (n.title or "")]
        assert note.message.startswith("GET /hang/gone-before-the-key: the request the kill "
                                       "was for ended since you looked"), note.message
        assert st.stats()["workers"][0]["pid"] == victim.pid
        assert [e["outcome"] for e in audit.entries()] == ["refused: ended"]


async def test_when_the_listed_requests_ended_and_none_runs_the_dialog_says_the_worker_is_idle(
        ) -> None:
    """It said "press the key again to kill the ones listed now" over "no request in flight":
    the next key kills an idle worker, and the dialog must say that is what it would do."""
    host = recorded()
    async with _dialog_open(host) as (pilot, app, kills):
        await _fed(pilot, app, _idle(host))
        await _pressed(pilot, "t")
        flat = _flat(app)
        assert kills == [] and "no request in flight" in flat
        assert ("Nothing was killed: nothing is in flight now: Esc closes, the key again kills "
                "the idle worker.") in flat, flat
        assert "kill the ones listed now" not in flat


async def test_the_stuck_requests_come_first_tagged_as_in_the_list() -> None:
    """A 1 s /slow on core 0 was listed above the 36 s request the kill was for, both alike
    (review, NO_COLOR): the stuck ones first, CRIT/SLOW tagged, the client never cut from
    its "from"."""
    host = recorded()
    w = _worker(host)
    first = next(c.request for c in w.cores if c.request is not None)
    assert first is not None and first.level == "critical"
    young = replace(first, core=0, uri="/slow?s=1.6", started_at=host.taken_at + 2.0,
                    running_s=1.0, level="ok")
    cores = tuple(replace(c, request=young) if c.id == 0 else c for c in w.cores)
    host = _with(host, replace(w, cores=cores), later=0.0)
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        await _fed(pilot, app, host)
        await _pressed(pilot, "K")
        flat = _flat(app)
        crit = flat.index("CRIT core 1")
        assert crit < flat.index("core 0 running 1s GET /slow?s=1.6"), flat
        rows = [ln.split("█")[1] for ln in screen_text(app).splitlines() if ln.count("█") >= 2]
        assert not any(row.rstrip().endswith(" from") for row in rows), rows

"""The reload flow a new user met on the live demo: a chain reload followed to its end, a
follow that stops saying so, the confirmation and the progress table at 80x24.

The follow tests run a real uWSGI (fresh_stack) with requests stuck in every worker (hang):
a chain reload then takes workers x mercy, each worker cut at its own mercy in turn.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import replace

import pytest
from rich.console import Console

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionTarget
from stackmon.actions.reload import reload_uwsgi
from stackmon.actions.reload_progress import (
    ReloadFacts,
    ReloadProgress,
    WorkerReload,
    follow_deadline,
    follow_reload,
    stopped_progress,
)
from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.logs.host import LogSummary
from tests.tui_support import (
    app_for,
    event,
    feed,
    recorded,
    screen_text,
    summary,
    wait_for,
)
from tui.app import StackmonApp
from tui.screens.confirm import KillConfirm, ReloadChoice, ReloadConfirm
from tui.screens.reload_view import ReloadScreen, render_progress


def target_of(stack) -> ActionTarget:
    return ActionTarget(host="local", address=parse_stats_address(stack.stats_address))


def test_a_chain_reload_with_every_worker_stuck_is_followed_to_its_end(fresh_stack, hang,
                                                                        tmp_path):
    """3 workers, each holding a request that never ends, mercy 2 s: the chain cuts them one
    after the other, ~3 x 2 s. A follow that stopped after mercy + margin (the bug: 2 + 3 s
    here) returned with a worker still "KILL SOON"; it must see every worker replaced."""
    mercy, margin = 2, 3
    st = fresh_stack(workers=3, threads=1, mercy=mercy, nginx=False)
    hang(st, "/hang/chain-stuck", n=3, via="unix")
    before = {w["id"]: w["pid"] for w in st.stats()["workers"]}
    audit = AuditLog(tmp_path / "audit.log")
    target = target_of(st)
    seen: list[ReloadProgress] = []

    async def go() -> ReloadProgress:
        result = await reload_uwsgi(target, "chain", audit=audit, actor="t")
        return await follow_reload(target, result, seen.append, audit=audit, interval=0.2,
                                   margin=margin)

    started = time.monotonic()
    final = asyncio.run(go())
    took = time.monotonic() - started
    assert final.done and not final.stopped, final.message
    assert took > mercy + margin  # longer than the old deadline: it was really needed
    assert all(w.state == "replaced" and w.pid not in before.values() for w in final.workers)
    order = sorted(final.workers, key=lambda w: w.replaced_after or 0)
    assert [w.id for w in order] == [1, 2, 3]
    # each worker was cut at its own mercy, in turn: the last one well after one mercy
    assert (order[-1].replaced_after or 0) >= 3 * mercy - 0.5
    assert seen[-1] == final
    assert [e["outcome"] for e in audit.entries()] == ["started", "sent", "ok"]


def test_a_follow_that_stops_early_says_so(fresh_stack, hang, tmp_path):
    """Margin below zero: following stops before the reload ends. The last progress must say
    it stopped, how far it got and where to look, with no countdown left running."""
    st = fresh_stack(workers=2, threads=1, mercy=3, nginx=False)
    hang(st, "/hang/early-stop", n=2, via="unix")
    audit = AuditLog(tmp_path / "audit.log")
    target = target_of(st)
    seen: list[ReloadProgress] = []

    async def go() -> ReloadProgress:
        result = await reload_uwsgi(target, "chain", audit=audit, actor="t")
        return await follow_reload(target, result, seen.append, audit=audit, interval=0.2,
                                   margin=-(follow_deadline("chain", 3, 2, 0) - 1))

    final = asyncio.run(go())
    assert final.stopped and not final.done
    assert final.message.startswith("stopped following after 1 s")
    assert f"{final.replaced} of 2 workers replaced; check" in final.message
    assert all(w.countdown is None and w.state != "killing" for w in final.workers)
    assert seen[-1] is final  # the screen is told, not left on the previous countdown
    last = audit.entries()[-1]
    assert last["outcome"] == "timed out" and "stopped following" in last["message"]


def test_follow_deadline_fits_the_mode():
    assert follow_deadline("graceful", 15, 4, 30) == 45
    assert follow_deadline("chain", 15, 4, 30) >= 4 * 15 + 30


# --- the screens, from the recorded demo (4 workers x 2 threads, worker 4 stuck 64 s) -------

SIZES = [(80, 24), (120, 36), (200, 50)]
FACTS = ReloadFacts(15.0, "/etc/uwsgi/app.ini:12", chain_ok=True)
BIG_PIDS = (2189712, 2765412)  # 7 digits: pid_max allows 4194304


def _hangs():
    return recorded("demo-hangs.json", host_name="web-1")


def _chain_midway() -> ReloadProgress:
    """The review's moment: a chain reload, worker 1 replaced, worker 3's mercy nearly out."""
    stuck = _hangs().uwsgi[0].workers[3].requests_in_flight[0]
    old, new = BIG_PIDS
    return ReloadProgress(
        "chain", 15.0, 45.0,
        (WorkerReload(1, old, new, "replaced", replaced_after=15.3),
         WorkerReload(2, old + 1, 0, "exited"),
         WorkerReload(3, old + 2, old + 2, "killing", request=stuck, countdown=2.0),
         WorkerReload(4, old + 3, old + 3, "waiting", request=stuck)),
        stats_available=True, done=False,
        message="chain reload: 1/4 workers replaced; 1 finishing a request, mercy runs out "
                "in 2 s")


async def _open_view(app: StackmonApp, pilot, progress: ReloadProgress, **kwargs) -> ReloadScreen:
    hangs = _hangs()
    feed(app, hangs)
    await pilot.pause()
    screen = ReloadScreen("web-1", "web-1/127.0.0.1:9002", progress, host_index=0,
                          address=hangs.uwsgi[0].address, **kwargs)
    await app.push_screen(screen)
    screen.set_host(hangs)
    await pilot.pause()
    return screen


async def _open_confirm(app: StackmonApp, pilot, **kwargs) -> ReloadConfirm:
    hangs = _hangs()
    feed(app, hangs)
    await pilot.pause()
    kwargs.setdefault("facts", FACTS)
    screen = ReloadConfirm("web-1", hangs.uwsgi[0], app.clock(), kwargs.pop("asked", "graceful"),
                           **kwargs)
    await app.push_screen(screen)
    await pilot.pause()
    await pilot.pause()
    return screen


async def test_the_progress_table_fits_80_columns_with_every_pid_whole():
    app = app_for(_hangs())
    async with app.run_test(size=(80, 24)) as pilot:
        await _open_view(app, pilot, _chain_midway())
        text = screen_text(app)
    old, new = BIG_PIDS
    assert f"{old} → {new}" in text  # the review saw `21897 → 276…`
    for header in ("state", "pid", "finishing", "mercy left"):
        assert header in text
    row = next(line for line in text.splitlines() if "KILL SOON" in line)
    assert str(old + 2) in row and row.rstrip().endswith("2s")  # the countdown, not cut
    table = text.split("mercy left")[1].split("chain reload:")[0]
    assert "…" not in re.sub(r"GET /hang/\S*…  64s", "", table)  # only a URI may be shortened
    assert "64s" in row  # its age too: the URI gives way, not what follows it


async def test_the_view_says_when_following_stopped_and_drops_the_countdowns():
    app = app_for(_hangs())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_view(app, pilot, _chain_midway())
        screen.set_progress(stopped_progress(_chain_midway(), "the limit"))
        await pilot.pause()
        text = screen_text(app)
    assert "STOPPED FOLLOWING" in text and "followed for 45 s" in text
    assert "1 of 4 workers replaced; check" in text.replace("\n", " ").replace("  ", " ")
    assert "KILL SOON" not in text and "mercy runs out" not in text and "2s" not in text
    assert "NO WORKER SERVING" not in text and "serving when last seen 2/4" in text


async def test_the_view_says_when_no_progress_comes_any_more():
    """The follow died without a final word: after STALE_AFTER s the view says so instead of
    holding a countdown."""
    now = [1000.0]
    app = app_for(_hangs())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_view(app, pilot, _chain_midway(), clock=lambda: now[0])
        assert "NO PROGRESS" not in screen_text(app)
        now[0] += 7
        await pilot.pause(1.3)  # the view's once-a-second check
        text = screen_text(app)
        assert "NO PROGRESS FOR 7 s" in text and "KILL SOON" in text  # state kept, bar gone
        assert "█" not in text.split("KILL SOON")[1].splitlines()[0]
        screen.set_progress(_chain_midway())  # news again: back to the countdown
        await pilot.pause()
        assert "NO PROGRESS" not in screen_text(app)


async def test_the_reload_confirm_keeps_every_key_on_screen_at_80x24():
    app = app_for(_hangs())
    async with app.run_test(size=(80, 24)) as pilot:
        await _open_confirm(app, pilot)
        text = screen_text(app)
    for key in ("c/Enter", "chain", " g ", "graceful", "Esc", "cancel"):
        assert key in text, key
    assert "worker-reload-mercy 15 s" in text
    assert "more (0 CUT)" in text  # 8 requests: the list is shortened, not the keys


async def test_the_kill_confirm_keeps_every_key_on_screen_at_80x24():
    hangs = _hangs()
    app = app_for(hangs)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, hangs)
        await pilot.pause()
        events = tuple(replace(e, text=f"uwsgi event {i} " + "x" * 90)
                       for i, e in enumerate(_events(hangs)))
        worker = hangs.uwsgi[0].workers[3]  # 8 threads, all stuck: 8 request lines
        worker = replace(worker, cores=tuple(replace(worker.cores[0], id=i) for i in range(8)))
        await app.push_screen(KillConfirm("web-1", hangs.uwsgi[0].address, worker, app.clock(),
                                          capture=True, uwsgi_log="/var/log/uwsgi/app.log",
                                          events=events))
        await pilot.pause()
        text = screen_text(app)
    for key in ("t/Enter", "SIGKILL now", " u ", "Esc", "cancel", "capture its Python stack"):
        assert key in text, key
    assert "+" in text and "more" in text  # the request list gave way


def _events(hangs):
    return tuple(event(hangs.taken_at - i, "respawn", f"respawned worker {i}")
                 for i in range(1, 4))


async def test_the_reload_confirm_names_the_cut_requests_and_warns_of_no_worker_serving():
    app = app_for(_hangs())
    results: list[ReloadChoice | None] = []
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await _open_confirm(app, pilot)
        text = screen_text(app)
        assert "NO WORKER SERVING for up to 15 s" in text
        cut = [line for line in text.splitlines() if " CUT " in line]
        assert cut and all("worker 4" in line and "CRIT" in line for line in cut)
        assert any("young  worker 1" in line for line in text.splitlines())
        assert "Enter is chain here" in text and screen.default == "chain"
        screen.dismiss = results.append  # type: ignore[method-assign,assignment]
        await pilot.press("enter")
        await pilot.pause()
    assert results == [ReloadChoice("chain")]


async def test_enter_stays_graceful_where_chain_is_not_known_to_work():
    app = app_for(_hangs())
    results: list[ReloadChoice | None] = []
    async with app.run_test(size=(120, 36)) as pilot:
        for facts in (None, replace(FACTS, chain_ok=False)):
            screen = await _open_confirm(app, pilot, facts=facts)
            assert screen.default == "graceful"
            text = screen_text(app)
            assert "g/Enter" in text and "NO WORKER SERVING" in text
            screen.dismiss = results.append  # type: ignore[method-assign,assignment]
            await pilot.press("enter")
            app.pop_screen()
            await pilot.pause()
    assert results == [ReloadChoice("graceful")] * 2


async def test_enter_waits_for_the_facts_that_decide_it():
    app = app_for(_hangs())
    results: list[ReloadChoice | None] = []
    gate = threading.Event()

    def lookup() -> ReloadFacts:
        gate.wait(5)
        return FACTS

    async with app.run_test(size=(120, 36)) as pilot:
        screen = await _open_confirm(app, pilot, facts=None, lookup=lookup)
        assert "reading the instance's config" in screen_text(app)
        screen.dismiss = results.append  # type: ignore[method-assign,assignment]
        await pilot.press("enter")
        await pilot.pause()
        assert results == []  # not graceful by default before the facts are in
        gate.set()
        await wait_for(pilot, lambda: results)
    assert results == [ReloadChoice("chain")]


# --- what mercy cuts: said only where a clock runs, counted only after ------------------------

def _review_chain_at_18s() -> ReloadProgress:
    """The review's moment: a chain reload at 18 s, worker 3's turn with a /slow of 0.6 s
    (1 s old, mercy 14 s left), worker 4 waiting its turn with the stuck request."""
    stuck = _hangs().uwsgi[0].workers[3].requests_in_flight[0]
    short = replace(stuck, uri="/slow?s=0.6", running_s=1.0)
    return ReloadProgress(
        "chain", 15.0, 18.0,
        (WorkerReload(1, 101, 201, "replaced", replaced_after=1.0),
         WorkerReload(2, 102, 202, "replaced", replaced_after=17.0),
         WorkerReload(3, 103, 103, "draining", request=short, countdown=14.0),
         WorkerReload(4, 104, 104, "waiting", request=stuck)),
        stats_available=True, done=False,
        message="chain reload: 2/4 workers replaced; 1 finishing a request, mercy runs out "
                "in 14 s")


def _text(p: ReloadProgress, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(render_progress("web-1", "web-1/127.0.0.1:9002", p, width=width))
    return " ".join(console.export_text().split())  # wrapped lines joined


@pytest.mark.parametrize("width", [80, 120, 200])
def test_a_cut_is_said_only_for_the_worker_whose_mercy_runs_and_only_if_still_running(width):
    text = _text(_review_chain_at_18s(), width)
    assert "cut in 14 s if still running: worker 3 GET /slow?s=0.6 1s" in text
    assert "cut at mercy" not in text  # the review's prediction
    assert "worker 4" not in text  # waiting its turn: its clock has not started
    assert ("waiting its turn" if width >= 100 else "waits its turn") in text


def test_a_request_past_a_run_out_mercy_is_cut_now_if_still_running():
    p = _review_chain_at_18s()
    late = replace(p, workers=(*p.workers[:2], replace(p.workers[2], state="killing",
                                                       countdown=-0.4), p.workers[3]))
    assert "mercy ran out: cut now if still running: worker 3" in _text(late, 120)


@pytest.mark.parametrize("width", [80, 120, 200])
def test_a_graceful_reload_asks_every_worker_to_stop_from_the_first_poll(width):
    """The review at 1 s: `1  waits its turn` in a graceful reload."""
    stuck = _hangs().uwsgi[0].workers[3].requests_in_flight[0]
    p = ReloadProgress("graceful", 15.0, 1.0,
                       (WorkerReload(1, 101, 101, "stopping"),
                        WorkerReload(2, 102, 102, "waiting"),  # as an older tracker said
                        WorkerReload(3, 103, 103, "draining", request=stuck, countdown=14.0)),
                       stats_available=True, done=False, message="graceful reload: 0/3")
    text = _text(p, width)
    assert "turn" not in text
    assert text.count("asked to stop") == 2


def test_the_done_summary_says_how_many_requests_were_cut_and_whose():
    p = ReloadProgress(
        "chain", 15.0, 34.7,
        (WorkerReload(1, 101, 201, "replaced", replaced_after=1.0),
         WorkerReload(2, 102, 202, "replaced", replaced_after=17.0),
         WorkerReload(3, 103, 203, "replaced", replaced_after=19.1),
         WorkerReload(4, 104, 204, "replaced", replaced_after=34.7, cut=1)),
        stats_available=True, done=True,
        message="chain reload done: 4 workers replaced in 34.7 s; 1 request was in flight "
                "when its worker's mercy ran out (worker 4)")
    assert "1 request was in flight when its worker's mercy ran out (worker 4)" in _text(p, 80)
    console = Console(width=80, record=True, color_system=None)
    console.print(render_progress("web-1", "i", p, width=80))
    lines = console.export_text().splitlines()
    assert [line.split()[0] for line in lines if "cut at mercy" in line] == ["4"]
    assert "104 → 204  after 34.7 s  1 cut at mercy" in lines[-3]  # "1 request" from 100
    assert "104 → 204 after 34.7 s 1 request cut at mercy" in _text(p, 120)


async def test_the_view_names_the_no_mercy_kills_the_uwsgi_log_shows():
    """uWSGI's own word on a cut: a NO MERCY line for one of this reload's old pids (not for
    another pid, not from before the reload) is named in the view."""
    hangs = _hangs()
    old = BIG_PIDS[0] + 2  # worker 3's pid in _chain_midway
    at = hangs.taken_at
    logged = replace(hangs, logs=summary(at, events=(
        event(at - 1, "no_mercy", "NO MERCY", 3, old),
        event(at - 1, "no_mercy", "NO MERCY", 2, 55555),  # not one of this reload's pids
        event(at - 300, "no_mercy", "NO MERCY", 4, old + 1))))  # before the reload began
    app = app_for(hangs)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await _open_view(app, pilot, _chain_midway())
        assert "NO MERCY" not in screen_text(app)
        screen.set_host(logged)
        await pilot.pause()
        text = screen_text(app)
    assert f"uWSGI logged NO MERCY for worker 3 (pid {old})" in text
    assert "55555" not in text and "worker 4 (pid" not in text


# --- every request a draining worker holds; how long no worker served ------------------------

def _two_requests_draining() -> ReloadProgress:
    """The review's chain reload at 40 s: worker 4 (2 threads) finishing two /hang/export.csv,
    42 s and 40 s old, its mercy 13 s from running out."""
    first, second = _hangs().uwsgi[0].workers[3].requests_in_flight
    older = replace(first, uri="/hang/export.csv", running_s=42.0)
    newer = replace(second, uri="/hang/export.csv", running_s=40.0)
    return ReloadProgress(
        "chain", 15.0, 40.0,
        (WorkerReload(1, 5848, 6577, "replaced", replaced_after=1.2),
         WorkerReload(2, 5849, 6578, "replaced", replaced_after=2.5),
         WorkerReload(3, 5850, 6579, "replaced", replaced_after=24.1),
         WorkerReload(4, 5851, 5851, "draining", request=older, requests=(older, newer),
                      countdown=13.0)),
        stats_available=True, done=False,
        message="chain reload: 3/4 workers replaced; 1 finishing 2 requests, mercy runs out "
                "in 13 s")


def _lines(p: ReloadProgress, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(render_progress("web-1", "web-1/127.0.0.1:9002", p, width=width))
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 120, 200])
def test_every_request_a_draining_worker_holds_is_shown_and_counted(width):
    """The review: worker 4 showed one GET /hang/export.csv, and mercy then cut two."""
    p = _two_requests_draining()
    assert ("cut in 13 s if still running: worker 4: 2 requests: GET /hang/export.csv 42s, "
            "GET /hang/export.csv 40s") in _text(p, width)
    lines = _lines(p, width)
    at = next(i for i, line in enumerate(lines) if line.startswith("4 "))
    if width >= 100:  # a line each
        assert "GET /hang/export.csv  42s" in lines[at] and "13s" in lines[at]
        assert lines[at + 1].split() == ["GET", "/hang/export.csv", "40s"]
    else:  # the oldest, and how many more
        assert "GET /hang/export.csv  42s +1 more" in lines[at]
        assert "40s" not in lines[at + 1]


def test_at_80_columns_the_count_of_more_requests_outlasts_the_uri():
    """A long URI in a narrow column gives way; "+1 more" and the age do not."""
    p = _two_requests_draining()
    long = replace(p.workers[3].requests[0], uri="/hang/export.csv?" + "x" * 80)
    w4 = replace(p.workers[3], request=long, requests=(long, p.workers[3].requests[1]),
                 state="exited")
    narrow = replace(p, workers=(*p.workers[:3], replace(w4, state="draining")))
    row = next(line for line in _lines(narrow, 80) if line.startswith("4 "))
    assert "GET /hang/export.csv?x" in row and "…  42s +1 more" in row and "13s" in row


def test_the_done_line_says_how_long_no_worker_was_serving_as_the_banner_counted():
    """Graceful, fed through the tracker: the banner counts from the first sample with no
    worker serving (even in a view opened later), the done line says the whole stretch, 2 to
15 s, and both requests cut."""
    from stackmon.actions.reload_progress import ReloadTracker
    from tests.test_actions_reload import _inst, _two_cores, _worker

    t = ReloadTracker({1: 101, 2: 102}, "graceful", mercy=15, started_at=1000.0)
    t.update(_inst(_worker(1, 0), _two_cores(2, 102, 30.0, 31.0)), 1002.0)
    live = t.update(_inst(_worker(1, 0), _two_cores(2, 102, 36.0, 37.0)), 1008.0)
    assert "NO WORKER SERVING for 6 s" in _text(live, 80)  # as the tracker counted
    screen = ReloadScreen("web-1", "i", live)  # a view that saw only this progress
    assert "NO WORKER SERVING for 6 s" in _text_of(screen, 80)
    t.update(_inst(_worker(1, 0), _two_cores(2, 102, 42.5, 43.5)), 1014.5)  # mercy's end
    done = t.update(_inst(_worker(1, 201), _worker(2, 202)), 1015.0)  # NO MERCY, respawned
    last = " ".join(" ".join(_lines(done, 80)[-2:]).split())
    assert "no worker was serving for 13.0 s;" in last
    assert last.endswith("2 requests were in flight when their worker's mercy ran out "
                         "(worker 2)")
    assert "NO WORKER SERVING" not in _text(done, 80)


def _text_of(screen: ReloadScreen, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(screen._view())
    return " ".join(console.export_text().split())


# --- SVG snapshots: read the diff before --snapshot-update --------------------------------

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_reload_confirm(snap_compare, size):
    app = app_for(_hangs())

    async def run_before(pilot):
        await _open_confirm(app, pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_chain_reload_view(snap_compare, size):
    app = app_for(_hangs())

    async def run_before(pilot):
        await _open_view(app, pilot, _chain_midway())

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_a_worker_draining_two_requests(snap_compare, size):
    app = app_for(_hangs())

    async def run_before(pilot):
        await _open_view(app, pilot, _two_requests_draining())

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def _graceful_stuck(hangs) -> ReloadProgress:
    """The new-user review's frame: graceful, 3 workers exited, worker 4 holding the instance
    until its mercy, 12 s with no worker serving."""
    stuck = hangs.uwsgi[0].workers[3].requests_in_flight[0]
    return ReloadProgress(
        "graceful", 15.0, 12.0,
        (*(WorkerReload(i, 5847 + i, 0, "exited") for i in (1, 2, 3)),
         WorkerReload(4, 5851, 5851, "draining", request=stuck, countdown=3.0)),
        stats_available=True, done=False,
        message="graceful reload: 0/4 workers replaced; 1 finishing a request, mercy runs "
                "out in 3 s", none_serving_since=0.0, started_at=hangs.taken_at - 12.0)


def _totals(at: float, s502: int, queue_full: int, cut: int) -> LogSummary:
    upstream = "unix:/tmp/sm-demo2/uwsgi.sock"
    return LogSummary(taken_at=at, window_s=60.0, http=None, upstream_errors=(), events=(),
                      status_totals=(("2xx", 900), ("502", s502), ("504", 0)),
                      upstream_totals=(("queue_full", upstream, queue_full),
                                       ("closed_mid_request", upstream, cut)))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_reload_view_with_a_full_unix_queue_counts_the_502s(snap_compare, size):
    """What clients get while no worker serves: "queue full: nginx answers 502 at once" and
    the 502s nginx's logs show since the reload began (never "nginx gets no answer")."""
    hangs = _hangs()
    app = app_for(hangs)

    async def run_before(pilot):
        feed(app, hangs)
        await pilot.pause()
        before = replace(hangs, logs=_totals(hangs.taken_at - 12.5, 100, 60, 0))
        screen = ReloadScreen("web-1", "web-1/127.0.0.1:9002", _graceful_stuck(hangs),
                              host_index=0, address=hangs.uwsgi[0].address, before=before)
        await app.push_screen(screen)
        screen.set_host(replace(hangs, logs=_totals(hangs.taken_at, 147, 105, 2)))
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_snapshot_stopped_reload_view(snap_compare):
    app = app_for(_hangs())

    async def run_before(pilot):
        await _open_view(app, pilot, stopped_progress(_chain_midway(), "the limit"))

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


# --- the whole flow on the real stack --------------------------------------------------------

async def test_C_then_Enter_follows_a_stuck_chain_reload_to_its_end(fresh_stack, hang,
                                                                    tmp_path):
    """What the review did, on a real uWSGI: every worker stuck, C, Enter. The view must
    reach "chain reload done", never stop on a countdown."""
    st = fresh_stack(workers=3, threads=1, mercy=2, nginx=False)
    hang(st, "/hang/tui-chain", n=3, via="unix")
    host = HostConfig(name="r", uwsgi=(parse_stats_address(st.stats_address),))
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.5)),
                      audit=AuditLog(tmp_path / "audit.log"))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "/hang/tui-chain" in screen_text(app), timeout=10)
        await pilot.press("C")
        assert await wait_for(pilot, lambda: "worker-reload-mercy 2 s" in screen_text(app))
        text = screen_text(app)
        assert "c/Enter" in text and "Esc" in text
        await pilot.press("enter")
        assert await wait_for(pilot, lambda: isinstance(app.screen, ReloadScreen))
        done = await wait_for(pilot, lambda: "chain reload done" in screen_text(app),
                              timeout=40)
        assert done, screen_text(app)
        assert "STOPPED" not in screen_text(app)

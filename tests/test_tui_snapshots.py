"""SVG snapshots of every screen, from recorded real documents with a frozen clock.

Update only after reading the diff report: `pytest tests/test_tui_snapshots.py
--snapshot-update`. The recorded hosts come from `stackmon snapshot --json` on the demo stack.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import pytest

from tests.tui_support import (
    EVENTS,
    app_for,
    feed,
    growing,
    recorded,
    unreachable,
)

os.environ["TZ"] = "UTC"  # the detail screen shows wall-clock start times
time.tzset()

SIZES = [(80, 24), (120, 36), (200, 50)]


def _hosts():
    hangs = recorded("demo-hangs.json", host_name="web-1")
    burst = recorded("demo-burst.json", host_name="web-2")
    dead = unreachable("web-3", hangs.taken_at)
    return hangs, burst, dead


# The 5xx/s history in front of the recording: a burst, a pause, a bigger burst.
SHAPE = [0.0] * 20 + [0.1, 0.3, 0.35, 0.35, 0.35, 0.5, 0.7, 0.9, 0.95, 1.0]


# Each screen: the keys that reach it from the main view (web-1 selected), at every size.
SCREENS = {
    "main_view": (),
    "queue_filling": ("right_square_bracket",),
    "unreachable_host": ("left_square_bracket",),
    "worker_detail": ("end", "enter"),
}


def _snap(snap_compare, keys: tuple[str, ...], size: tuple[int, int], *,
          read_only: bool = False, stale: bool = False) -> bool:
    hosts = _hosts()
    if stale:  # web-1's stats stopped answering 12 s ago: its last good workers stay, as
        # they were then (the poll 12 s after the recording)
        inst = hosts[0].uwsgi[0]
        hosts = (replace(hosts[0], taken_at=hosts[0].taken_at + 12.0,
                         uwsgi=(replace(inst, stale_s=12.0),)), *hosts[1:])
    app = app_for(*hosts, read_only=read_only)

    async def run_before(pilot):
        feed(app, *hosts)
        await pilot.press(*keys)
        await pilot.pause()

    return snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", SCREENS)
def test_screen(snap_compare, screen, size):
    assert _snap(snap_compare, SCREENS[screen], size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help(snap_compare, size):
    assert _snap(snap_compare, ("question_mark",), size)


# States that must show at 80x24, where space is shortest: PAUSED after p, READ-ONLY (K then
# says why in a notification), an instance whose stats stopped answering (STALE 12s), and
# NO_COLOR (CRIT in reverse video, the most visible state).
VARIANTS: dict[str, dict[str, Any]] = {
    "paused": dict(keys=("p",)),
    "read_only": dict(keys=("K",), read_only=True),
    "stale": dict(keys=(), stale=True),
    "no_color": dict(keys=()),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_main_view_states(snap_compare, variant, monkeypatch):
    if variant == "no_color":
        monkeypatch.setenv("NO_COLOR", "1")
    spec = dict(VARIANTS[variant])
    keys = spec.pop("keys")
    assert _snap(snap_compare, keys, (80, 24), **spec)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_reload_no_worker_serving(snap_compare, size):
    """A graceful reload held by one stuck request: three workers exited, none serving."""
    assert _reload_snap(snap_compare, size)


@pytest.mark.parametrize("screen", ["worker_detail", "help", "reload"])
def test_screens_without_colour(snap_compare, screen, monkeypatch):
    """NO_COLOR on the detail, help and reload screens at 80x24: CRIT, the draining
    countdown and the key hints must read without colour there too."""
    monkeypatch.setenv("NO_COLOR", "1")
    if screen == "reload":
        assert _reload_snap(snap_compare, (80, 24))
    else:
        keys = SCREENS["worker_detail"] if screen == "worker_detail" else ("question_mark",)
        assert _snap(snap_compare, keys, (80, 24))


def _reload_snap(snap_compare, size: tuple[int, int]) -> bool:
    from stackmon.actions.reload_progress import ReloadProgress, WorkerReload
    from tui.screens.reload_view import ReloadScreen

    hangs = recorded("demo-hangs.json", host_name="web-1")
    stuck = hangs.uwsgi[0].workers[3].requests_in_flight[0]
    progress = ReloadProgress(
        "graceful", 15.0, 12.0,
        (WorkerReload(1, 101, 0, "exited"), WorkerReload(2, 102, 0, "exited"),
         WorkerReload(3, 103, 0, "exited"),
         WorkerReload(4, 104, 104, "draining", request=stuck, countdown=3.5)),
        stats_available=True, done=False,
        message="graceful reload: 0/4 workers replaced; 1 finishing a request, mercy runs "
                "out in 4 s")
    app = app_for(hangs)

    async def run_before(pilot):
        feed(app, hangs)
        screen = ReloadScreen("web-1", "web-1/127.0.0.1:9002", replace(progress, elapsed=2.0),
                              host_index=0, address=hangs.uwsgi[0].address)
        await app.push_screen(screen)
        screen.set_progress(progress)
        screen.set_host(hangs)
        await pilot.pause()

    return bool(snap_compare(app, terminal_size=size, run_before=run_before))


def _clients_snap(snap_compare, keys: tuple[str, ...], size: tuple[int, int]) -> bool:
    """The demo recorded while its unix-socket queue overflowed (`stackmon snapshot --json
    --health .../healthz`): 502s by cause, no timing in its log format, the LB probe; events
    constructed (the demo's log had none in that minute)."""
    polls = growing(recorded("demo-502s.json", host_name="web-1"), SHAPE)
    last = polls[-1]
    assert last.logs is not None
    polls[-1] = replace(last, logs=replace(last.logs, events=tuple(
        replace(e, at=last.taken_at - 1000 + e.at) for e in EVENTS)))
    app = app_for(polls[-1])

    async def run_before(pilot):
        for poll in polls:
            app.show_snapshot(0, poll)
        await pilot.press(*keys)
        await pilot.pause()

    return snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_clients_502s(snap_compare, size):
    assert _clients_snap(snap_compare, (), size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_events(snap_compare, size):
    assert _clients_snap(snap_compare, ("e",), size)

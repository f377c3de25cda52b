"""SVG snapshots of every screen, from recorded real documents with a frozen clock.

Update only after reading the diff report: `pytest tests/test_tui_snapshots.py
--snapshot-update`. The recorded hosts come from `stackmon snapshot --json` on the demo stack.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

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

SIZES = [(80, 24), (160, 48), (200, 60)]


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


def _snap(snap_compare, keys: tuple[str, ...], size: tuple[int, int]) -> bool:
    hosts = _hosts()
    app = app_for(*hosts)

    async def run_before(pilot):
        feed(app, *hosts)
        await pilot.press(*keys)
        await pilot.pause()

    return snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", SCREENS)
def test_screen(snap_compare, screen, size):
    assert _snap(snap_compare, SCREENS[screen], size)


def test_help(snap_compare):
    assert _snap(snap_compare, ("question_mark",), (100, 30))


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

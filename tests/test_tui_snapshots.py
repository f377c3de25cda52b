"""SVG snapshots of every screen, from recorded real documents with a frozen clock.

Update only after reading the diff report: `pytest tests/test_tui_snapshots.py
--snapshot-update`. The recorded hosts come from `stackmon snapshot --json` on the demo stack.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.tui_support import app_for, feed, recorded, unreachable

os.environ["TZ"] = "UTC"  # the detail screen shows wall-clock start times
time.tzset()

SIZES = [(80, 24), (160, 48), (200, 60)]


def _hosts():
    hangs = recorded("demo-hangs.json", host_name="web-1")
    burst = recorded("demo-burst.json", host_name="web-2")
    dead = unreachable("web-3", hangs.taken_at)
    return hangs, burst, dead


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

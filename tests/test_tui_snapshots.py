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


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_view(snap_compare, size):
    hosts = _hosts()
    app = app_for(*hosts)

    async def run_before(pilot):
        feed(app, *hosts)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_queue_filling(snap_compare, size):
    hosts = _hosts()
    app = app_for(*hosts)

    async def run_before(pilot):
        feed(app, *hosts)
        await pilot.press("right_square_bracket")
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_unreachable_host(snap_compare, size):
    hosts = _hosts()
    app = app_for(*hosts)

    async def run_before(pilot):
        feed(app, *hosts)
        await pilot.press("left_square_bracket")
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_worker_detail(snap_compare, size):
    hosts = _hosts()
    app = app_for(*hosts)

    async def run_before(pilot):
        feed(app, *hosts)
        await pilot.press("end", "enter")
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_help(snap_compare):
    hosts = _hosts()
    app = app_for(*hosts)

    async def run_before(pilot):
        feed(app, *hosts)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)

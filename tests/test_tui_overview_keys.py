"""Every key on the fleet overview acts or says why not (issue 12).

The overview shows no host, so a key of one host's view (K, w, s, t, l, i, C) says there what
to do instead, naming the selected host; e and d act on the selected host (its events, its
doctor); read-only, a mutating key (K, C, R) says that first, whatever else stands in its way;
the status line shows READ-ONLY and PAUSED as a host's header does; Esc clears a filter, then
goes back to the host tab the overview was reached from.

Pilot tests on constructed snapshots (tests.tui_support); SVG snapshots of the overview in
read-only mode (update only after reading the diff: `--snapshot-update`).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from tests.tui_support import (
    check,
    feed,
    fleet_app,
    fleet_snapshots,
    healthy,
    recorded,
    screen_text,
    unreachable,
    wait_for,
)
from tui.actions import ACTIONS, host_only
from tui.app import StackmonApp
from tui.screens.doctor import DoctorScreen
from tui.screens.events import EventsScreen
from tui.screens.fleet import PANE_ID
from tui.screens.worker_detail import WorkerDetailScreen

READ_ONLY = "Read-only (--read-only): stackmon does not kill or reload here."


def five() -> list:
    """api-003 unreachable is the worst (the cursor starts there); web-001 critical."""
    base = recorded("demo-hangs.json")
    ok = healthy(base, "x")
    return [
        replace(ok, name="api-000", group="api"),
        replace(base, name="web-001", group="web"),
        replace(ok, name="batch-002", group="batch"),
        replace(unreachable("api-003", base.taken_at), group="api"),
        replace(ok, name="web-004", group="web", health=check(
            ok=False, failures_in_row=1, last_error="HTTP 502", checked_at=base.taken_at)),
    ]


def notes(app: StackmonApp) -> list[str]:
    return [n.message for n in app._notifications]


def status(app: StackmonApp) -> str:
    """The overview's status line (its first row)."""
    assert app.overview is not None
    return app.overview._status_shown.plain if app.overview._status_shown else ""


async def press(pilot, app: StackmonApp, key: str) -> str:
    """Press `key`; the notification it brought (the test fails if none)."""
    before = len(notes(app))
    await pilot.press(key)
    await pilot.pause()
    after = notes(app)
    assert len(after) == before + 1, f"{key!r}: no notification"
    return after[-1]


def test_every_key_of_one_host_has_an_overview_hint():
    """The registry: each action inert on the overview has something to say there, with the
    selected host in it (a hint without {host} would not name what Enter opens)."""
    hinted = [s for s in ACTIONS if s.overview_hint]
    assert {s.name for s in hinted} == host_only()
    assert {"kill_worker", "cycle_sort", "worst", "trace_worker", "next_instance",
            "reload"} <= host_only()
    assert "events" not in host_only() and "doctor" not in host_only()
    assert all("{host}" in (s.overview_hint or "") for s in hinted)
    assert {k for s in hinted for k in s.keys.split(",")} >= {"K", "s", "w", "t", "l", "i",
                                                              "C"}


async def test_host_keys_on_the_overview_say_what_to_do_naming_the_selected_host():
    snaps = five()
    app = fleet_app(snaps)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        assert app._tabs.active == PANE_ID
        said = {key: await press(pilot, app, key) for key in ("K", "s", "w", "t", "l", "i",
                                                               "C")}
        assert said["K"] == "On the overview: Enter opens api-003, then K on a worker."
        assert "s sorts a host's workers: Enter opens api-003, then s." in said["s"]
        for key in ("w", "t", "l", "i", "C"):
            assert f"Enter opens api-003, then {key}" in said[key], said[key]
        # Nothing opened, nothing moved; the Footer lists none of them.
        assert len(app.screen_stack) == 1 and app._tabs.active == PANE_ID
        assert "Kill" not in screen_text(app) and "Sort" not in screen_text(app)
        # The hint follows the cursor.
        await pilot.press("down")
        assert "Enter opens api-000, then K" in await press(pilot, app, "K")
        # On a host's tab the same keys are the host's again (K asks to kill there).
        await pilot.press("enter")
        await pilot.pause()
        assert app._tabs.active == "host-0"
        await pilot.press("s")
        await pilot.pause()
        assert notes(app)[-1].startswith("Workers sorted by")


async def test_read_only_refusal_comes_first_on_the_overview():
    """R on a host in no group said 'is in no group' in read-only mode; K and C said nothing.
    Now each says the read-only reason, as on a host's tab."""
    snaps = [replace(s, group=None) for s in five()]
    app = fleet_app(snaps, read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        for key in ("R", "K", "C"):
            assert await press(pilot, app, key) == READ_ONLY, key
        assert len(app.screen_stack) == 1
        assert not any("no group" in n for n in notes(app))


async def test_a_host_read_only_in_the_hosts_file_says_so_on_the_overview():
    snaps = five()
    configs = tuple(HostConfig(name=h.name, group=None, read_only=h.name == "web-001",
                               uwsgi=(parse_stats_address("127.0.0.1:9002"),)) for h in snaps)
    app = StackmonApp(Targets(hosts=configs, settings=Settings()), poll=False,
                      clock=lambda: snaps[0].taken_at + 3)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        assert app.overview is not None and app.overview.table.cursor_index == 1  # web-001
        want = ("Read-only (read_only = true for web-001 in the hosts file): stackmon does "
                "not kill or reload here.")
        assert await press(pilot, app, "R") == want
        assert await press(pilot, app, "K") == want
        await pilot.press("down")  # api-003: not read-only, in no group
        assert "api-003 is in no group" in await press(pilot, app, "R")
        assert await press(pilot, app, "K") == \
            "On the overview: Enter opens api-003, then K on a worker."


async def test_e_and_d_on_the_overview_open_the_selected_hosts_events_and_doctor():
    snaps = five()
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        await pilot.press("down", "down")  # web-001
        index = app.overview.table.cursor_index if app.overview else None
        assert index is not None
        name = app.targets.hosts[index].name
        await pilot.press("e")
        await pilot.pause()
        events = app.screen
        assert isinstance(events, EventsScreen) and events.host_index == index
        assert f"Events {name}" in screen_text(app)
        # A poll of that host reaches the screen even when the host has no tab.
        app.show_snapshot(index, snaps[index])
        await pilot.press("escape")
        await pilot.pause()
        assert app._tabs.active == PANE_ID and len(app.screen_stack) == 1
        await pilot.press("d")
        await pilot.pause()
        doctor = app.screen
        assert isinstance(doctor, DoctorScreen) and doctor.host_index == index
        assert await wait_for(pilot, lambda: doctor.report is not None, timeout=15)
        await pilot.press("escape")
        await pilot.pause()
        assert app._tabs.active == PANE_ID


async def test_events_opened_from_the_overview_follow_a_host_without_a_tab():
    snaps = five()
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        await pilot.press("down")  # api-000: ok, no tab
        assert 0 not in app.panes
        await pilot.press("e")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, EventsScreen) and screen.host_index == 0
        seen: list[object] = []
        screen.set_logs = seen.append  # type: ignore[method-assign,assignment]
        app.show_snapshot(0, snaps[0])
        assert seen == [snaps[0].logs]


async def test_status_line_shows_read_only_and_paused():
    snaps = five()
    app = fleet_app(snaps, read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        first = screen_text(app).splitlines()
        row = next(ln for ln in first if "5 hosts" in ln)
        assert row.lstrip().startswith("READ-ONLY")
        await pilot.press("p")
        await pilot.pause()
        assert status(app).split()[:3] == ["PAUSED", "READ-ONLY", "5"]
        assert "PAUSED" in screen_text(app)
        await pilot.press("p")
        await pilot.pause()
        assert "PAUSED" not in status(app) and "READ-ONLY" in status(app)
    app = fleet_app(snaps)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        assert "READ-ONLY" not in screen_text(app)
        await pilot.press("p")
        await pilot.pause()
        assert status(app).startswith(" PAUSED ")


async def test_escape_clears_the_filter_then_goes_back_to_the_host_tab():
    snaps = five()
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        # Started on the overview: no host tab it came from; Esc says so.
        assert "No host tab to go back to" in await press(pilot, app, "escape")
        await pilot.press("down", "enter")  # api-000 in a tab
        await pilot.pause()
        assert app._tabs.active == "host-0"
        await pilot.press("o")
        await pilot.pause()
        assert app._tabs.active == PANE_ID
        await pilot.press("slash", *"web", "enter")
        await pilot.pause()
        assert app.overview is not None and app.overview.table.filter_text == "web"
        await pilot.press("escape")  # the filter first
        await pilot.pause()
        assert app._tabs.active == PANE_ID and app.overview.table.filter_text == ""
        await pilot.press("escape")  # then back
        await pilot.pause()
        assert app._tabs.active == "host-0"
        # A host's tab switched to with ] counts too.
        await pilot.press("o", "right_square_bracket", "right_square_bracket", "o")
        await pilot.pause()
        assert app._tabs.active == PANE_ID
        await pilot.press("escape")
        await pilot.pause()
        assert app._tabs.active == "host-1"


async def test_escape_from_the_overview_added_by_o_with_few_hosts():
    base = recorded("demo-hangs.json")
    snaps = [replace(base, name="web-1"), healthy(base, "web-2")]
    app = fleet_app(snaps)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        await pilot.press("right_square_bracket", "o")
        await pilot.pause()
        assert app._tabs.active == PANE_ID
        await pilot.press("escape")
        await pilot.pause()
        assert app._tabs.active == "host-1"


async def test_l_on_a_host_opens_the_workers_stack_with_locals():
    """l was bound only in the detail: on the host's view it did nothing. It reads the
    stack with locals now (here refused by a closed port: a message, not a crash)."""
    host = recorded()
    cfg = HostConfig(name=host.name, uwsgi=(parse_stats_address("127.0.0.1:1"),))
    app = StackmonApp(Targets(hosts=(cfg,), settings=Settings(slow=5.0, critical=20.0)),
                      poll=False, clock=lambda: host.taken_at + 3)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.press("l")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, WorkerDetailScreen) and screen.with_locals
        assert await wait_for(pilot, lambda: "Stack not read" in screen_text(app))


# ------------------------------------------------------------------------- snapshots

@pytest.mark.parametrize("size", [(80, 24), (120, 36)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_overview_read_only_snapshot(snap_compare, size):
    snaps = fleet_snapshots(60)
    app = fleet_app(snaps, read_only=True)

    async def run_before(pilot):
        feed(app, *snaps)
        await pilot.pause()
        await pilot.press("K")  # the read-only refusal, on screen
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


async def test_status_line_counts_read_without_colour(monkeypatch):
    """NO_COLOR: '✖ 2 critical' was red made dark grey (237 on 234); now bold reverse, as the
    tab badges are, and the flags keep their reverse video."""
    monkeypatch.setenv("NO_COLOR", "1")
    snaps = five()
    app = fleet_app(snaps, read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        assert app.no_color and app.overview is not None
        text = app.overview._status_shown
        assert text is not None
        styles = {text.plain[span.start:span.end]: str(span.style) for span in text.spans}
        assert styles["✖ 2 critical"] == "bold reverse"
        assert styles["▲ 1 warn"] == "bold underline"
        assert styles[" READ-ONLY "] == "bold reverse"

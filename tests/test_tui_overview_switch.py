"""Switching between the fleet overview and a host's tab (bench/bench_overview.py times it).

What made it slow, each checked here where it could come back: the Footer rebuilt all its
keys on every focus change (widgets.keys_footer updates them in place), and the overview
redrew every line it shows because focus changes its styles (widgets.fleet_table keeps the
lines drawn focused and unfocused). The Footer must still list the keys of the view shown,
and a host whose line changed while the overview was hidden must show its new line.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.text import Text
from textual.widgets._footer import FooterKey

from stackmon.health import assess
from stackmon.model import HostSnapshot
from tests.tui_support import fleet_app, fleet_snapshots, screen_text
from tui.app import StackmonApp
from widgets.fleet_table import FleetTable, fleet_row
from widgets.keys_footer import KeysFooter

SIZE = (200, 50)


def footer_keys(app: StackmonApp) -> list[str]:
    footer = app.screen.query_one(KeysFooter)
    return [k.description for k in footer.children if isinstance(k, FooterKey) and k.display]


def table(app: StackmonApp) -> FleetTable:
    assert app.overview is not None
    return app.overview.table


def busier(snap: HostSnapshot) -> HostSnapshot:
    """The same host with its first idle worker busy: only its busy/total figure changes."""
    inst = snap.uwsgi[0]
    i = next(n for n, w in enumerate(inst.workers) if w.status != "busy")
    workers = list(inst.workers)
    workers[i] = replace(workers[i], status="busy")
    return replace(snap, uwsgi=(replace(inst, workers=tuple(workers)), *snap.uwsgi[1:]))


async def test_the_footer_lists_each_views_keys_and_keeps_its_key_widgets():
    snaps = fleet_snapshots(40)
    app = fleet_app(snaps)
    async with app.run_test(size=SIZE) as pilot:
        for i, s in enumerate(snaps):
            app.show_snapshot(i, s)
        await pilot.pause()
        overview = footer_keys(app)
        assert "Open host" in overview and "Roll group" in overview
        assert "Detail" not in overview and "Kill" not in overview

        await pilot.press("enter")
        await pilot.pause()
        host = footer_keys(app)
        assert app._tabs.active != "fleet"
        assert "Detail" in host and "Kill" in host and "Worst" in host
        assert "Open host" not in host and "Roll group" not in host

        footer = app.screen.query_one(KeysFooter)
        widgets = {id(k) for k in footer.children}
        for _ in range(2):
            await pilot.press("o")
            await pilot.pause()
            assert footer_keys(app) == overview
            await pilot.press("enter")
            await pilot.pause()
            assert footer_keys(app) == host
        # Updated in place: no key widget was replaced (Textual's Footer rebuilt them all).
        assert {id(k) for k in footer.children} == widgets

        await pilot.press("o", "slash")  # the filter box: only its own keys
        await pilot.pause()
        assert footer_keys(app)[0] == "Filter" and "Open host" not in footer_keys(app)


async def test_the_overview_is_not_redrawn_by_a_switch_but_shows_what_changed_meanwhile():
    snaps = fleet_snapshots(40)
    app = fleet_app(snaps)
    async with app.run_test(size=SIZE) as pilot:
        for i, s in enumerate(snaps):
            app.show_snapshot(i, s)
        await pilot.pause()
        fleet = table(app)
        drawn: list[object] = []
        line_text = fleet._line_text

        def counted(line: Any, width: int, cursor: bool) -> Text:
            drawn.append(line)
            return line_text(line, width, cursor)

        fleet._line_text = counted  # type: ignore[method-assign]

        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("o")
        await pilot.pause()
        assert fleet.has_focus
        assert drawn == []  # every line shown was drawn before, in these same styles

        # A host on screen changes while its line is hidden behind a host's tab.
        index = fleet.visible_hosts()[-1]
        before = fleet_row(snaps[index], assess(snaps[index])).workers
        changed = busier(snaps[index])
        after = fleet_row(changed, assess(changed)).workers
        assert after != before
        await pilot.press("enter")
        await pilot.pause()
        app.show_snapshot(index, changed)
        await pilot.pause()
        await pilot.press("o")
        await pilot.pause()
        line = next(ln for ln in screen_text(app).splitlines() if f" {snaps[index].name} " in ln)
        assert f" {after} " in line and f" {before} " not in line
        assert len(drawn) == 1  # that line only

"""The Footer lists the triage keys at every width, then as many others as fit: never one cut
off at its end (at 80 columns K, R and q once were), never a key left out beside empty columns
(at 120 a review found s, /, e and t missing beside 45 empty ones)."""

from __future__ import annotations

import pytest

from tests.tui_support import app_for, feed, recorded, screen_text
from tui.actions import ACTIONS, footer_cells, footer_fit

WIDTHS = (60, 66, 72, 80, 84, 88, 96, 104, 110, 116, 120, 126, 132, 150, 200)
TRIAGE = ("w Worst", "K Kill", "R Reload", "p Pause", "? Help", "q Quit")


def _footer_row(app) -> str:
    return screen_text(app).splitlines()[-1]


@pytest.mark.parametrize("hosts", [1, 3])
async def test_the_footer_shows_what_it_lists_and_fills_the_width(hosts):
    snaps = [recorded(host_name=f"web-{i + 1}") for i in range(hosts)]
    app = app_for(*snaps)
    async with app.run_test(size=(200, 30)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        every = [spec for spec in ACTIONS if spec.footer and not spec.tabs
                 and spec.name != "rolling_reload"]
        for width in WIDTHS:
            await pilot.resize_terminal(width, 30)
            await pilot.pause()
            row = _footer_row(app)
            for key in TRIAGE if width >= 80 else ("K Kill", "q Quit"):
                assert key in row, (width, row)
            listed = footer_fit(False, width, hosts == 1, app._FLEET_ONLY)
            for spec in every:
                label = f"{spec.key_display or spec.keys} {spec.description}"
                assert (label in row) == (spec.id in listed), (width, label, row)
            extras = [spec for spec in every if not spec.narrow]
            chosen = [spec for spec in extras if spec.id in listed]
            assert chosen == extras[:len(chosen)], (width, row)  # in the registry's order
            # The next one would not have fitted: the row has less room than it needs.
            free = width - len(row.rstrip().replace("▏^p palette", "").rstrip()) - 13
            if len(chosen) < len(extras):
                assert footer_cells(extras[len(chosen)]) > free, (width, row)
        assert "t Stack" in _footer_row(app) or width < 120
    assert hosts == 1 or "] Next host" in row or width < 132


def test_at_120_columns_every_key_but_the_longest_tail_is_listed():
    listed = footer_fit(False, 120, True, frozenset({"rolling_reload"}))
    names = {spec.name for spec in ACTIONS if spec.id in listed}
    assert {"trace_worker", "cycle_sort", "filter", "events"} <= names
    narrow = footer_fit(False, 80, True, frozenset({"rolling_reload"}))
    assert {spec.name for spec in ACTIONS if spec.id in narrow} == {
        spec.name for spec in ACTIONS if spec.narrow and spec.footer} - {"rolling_reload"}

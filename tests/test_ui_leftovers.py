"""Four findings of a review on the live demo, each pinned by a test that failed before its fix:

- the reload view's Back said "(the reload goes on)" after the reload was over;
- a number was parted from its unit at the end of a line ("mercy runs out in 6" / "s"; "up to
  60" / "s in all"), the progress line took two lines at 80 columns, and the confirmation's
  banner read "15 s :";
- with a single host, the Footer and the help listed `]`/`[` (nothing to switch to);
- at 200 columns the worker list kept a 50-cell deadline column beside "nginx 504 in 22 s"
  while a long URI was cut.

The screens come from the recorded demo (tests/fixtures/snapshots), like test_reload_view's.
"""

from __future__ import annotations

import re
from dataclasses import replace
from itertools import pairwise
from typing import Any

import pytest
from rich.text import Text
from textual.app import App, ComposeResult

from stackmon.actions.reload_progress import ReloadProgress
from stackmon.model import HostSnapshot, Thresholds
from tests.test_reload_view import (
    FACTS,
    SIZES,
    _chain_midway,
    _hangs,
    _open_confirm,
    _open_view,
)
from tests.test_tui_stack import two_ages
from tests.tui_support import app_for, feed, recorded, screen_text
from tui.screens.confirm import ReloadConfirm
from tui.screens.help import HelpScreen
from tui.screens.reload_view import ReloadScreen
from widgets.unit_wrap import wrap_keeping_units
from widgets.worker_list import REQUEST_SPAN, WorkerList


def _footer(app: App[Any]) -> str:
    return screen_text(app).splitlines()[-1]


def _notes(app: App[Any]) -> str:
    return "\n".join(n.message for n in app._notifications)


# --- 1. Back, once the reload is over -------------------------------------------------------

def _done() -> ReloadProgress:
    p = _chain_midway()
    return replace(p, workers=tuple(replace(w, state="replaced", countdown=None, request=None)
                                    for w in p.workers),
                   done=True, message="chain reload done: 4 workers replaced in 47.0 s")


async def test_back_says_the_reload_goes_on_only_while_it_does():
    app = app_for(_hangs())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_view(app, pilot, _chain_midway())
        assert "esc Back (the reload goes on)" in _footer(app)
        screen.set_progress(_done())
        await pilot.pause()
        footer = _footer(app)
        assert "esc Back " in footer and "goes on" not in footer, footer
        await pilot.press("escape")  # the key still goes back
        await pilot.pause()
        assert not isinstance(app.screen, ReloadScreen)


async def test_a_view_opened_on_a_finished_reload_never_says_it_goes_on():
    app = app_for(_hangs())
    async with app.run_test(size=(120, 36)) as pilot:
        await _open_view(app, pilot, _done())
        assert "goes on" not in screen_text(app)
        await pilot.press("q")
        await pilot.pause()
        assert not isinstance(app.screen, ReloadScreen)


# --- 2. numbers stay with their unit; the progress line fits 80 columns ---------------------

def _parted(rows: list[str]) -> list[tuple[str, str]]:
    """Consecutive rows where one ends with a number and the next starts with its unit."""
    return [(a, b) for a, b in pairwise(rows)
            if re.search(r"\d$", a.rstrip()) and re.match(r"(s|ms)\b", b.strip())]


def _dialog_rows(text: str) -> list[str]:
    """The confirmation's rows, inside its thick border (█ ... █)."""
    return [row.split("█")[1] for row in text.splitlines() if row.count("█") >= 2]


def test_wrapping_never_parts_a_number_from_its_unit():
    line = Text("chain reload: 1/4 workers replaced; 1 finishing a request, mercy runs out in "
                "6 s; each busy one gets 15 s in its turn (up to 60 s in all): 250 ms")
    for width in range(12, 100):
        rows = wrap_keeping_units(line, width).plain.splitlines()
        assert not _parted(rows), (width, rows)
        assert all(len(row) <= width for row in rows), (width, rows)
        assert " ".join(rows) == line.plain


async def test_the_progress_line_fits_one_row_at_80_columns():
    """The review's line, "... mercy runs out in 6" / "s": one row at 80 columns, the words
    the tracker's sentence uses where it fits."""
    for size, expected in (((80, 24), "chain reload: 1/4 replaced; 1 finishing, mercy ends in "
                                      "2 s"),
                           ((120, 36), "chain reload: 1/4 workers replaced; 1 finishing a "
                                       "request, mercy runs out in 2 s")):
        app = app_for(_hangs())
        async with app.run_test(size=size) as pilot:
            await _open_view(app, pilot, _chain_midway())
            rows = screen_text(app).splitlines()
        assert any(row.strip() == expected for row in rows), (size, rows)
        assert not _parted(rows)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_reload_confirm_keeps_numbers_with_their_units(size):
    app = app_for(_hangs())
    async with app.run_test(size=size) as pilot:
        await _open_confirm(app, pilot)
        text = screen_text(app)
    rows = _dialog_rows(text)
    assert not _parted(rows), rows  # at 120x36: "(up to 60" / "s in all)"
    joined = " ".join(row.strip() for row in rows)
    assert "NO WORKER SERVING for up to 15 s: all 4 stop" in joined
    assert " s :" not in joined


async def test_the_reload_confirm_cuts_a_long_uri_instead_of_wrapping_it():
    """Seen on the live demo at 80x24: "CUT worker 1 pid 13098 29s CRIT GET" / "/hang/api/
    v1/orders?page=7&sort=created", two rows per request where the list counts one."""
    hangs = _hangs()
    inst = hangs.uwsgi[0]
    uri = "/hang/api/v1/orders?page=7&sort=created&customer=acme"
    workers = tuple(replace(w, cores=tuple(
        replace(c, request=replace(c.request, uri=uri)) if c.request is not None else c
        for c in w.cores)) for w in inst.workers)
    long = replace(hangs, uwsgi=(replace(inst, workers=workers),))
    app = app_for(long)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, long)
        await pilot.pause()
        await app.push_screen(ReloadConfirm("web-1", long.uwsgi[0], app.clock(), "graceful",
                                            facts=FACTS))
        await pilot.pause()
        await pilot.pause()
        rows = _dialog_rows(screen_text(app))
    listed = [row for row in rows if re.match(r"\s+(CUT|ok)\s+worker", row)]
    assert len(listed) >= 2 and all(row.rstrip().endswith("…") for row in listed), rows
    assert not any(row.strip().startswith("/hang/api") for row in rows), rows
    assert any("Esc" in row for row in rows)


# --- 3. `]` and `[` only where there is a tab to switch to ----------------------------------

def _help_text(app: App[Any]) -> str:
    assert isinstance(app.screen, HelpScreen)
    return screen_text(app)


async def test_one_host_lists_no_tab_keys_but_they_still_say_why():
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(200, 50)) as pilot:  # a full Footer (FOOTER_FULL_WIDTH)
        feed(app, host)
        await pilot.pause()
        footer = _footer(app)
        assert "Next host" not in footer and "] " not in footer, footer
        assert "q Quit" in footer
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert "One host here" in _notes(app)
        await pilot.press("question_mark")
        await pilot.pause()
        help_text = _help_text(app)
        assert "next host" not in help_text and "previous host" not in help_text
        assert "Leave stackmon" in help_text  # the rest of the keys are there
        await pilot.press("escape")
        await pilot.press("o")  # the overview: now there is a tab to switch to
        await pilot.pause()
        assert "] Next host" in _footer(app)
        await pilot.press("question_mark")
        await pilot.pause()
        assert "next host" in _help_text(app)


async def test_two_hosts_list_the_tab_keys():
    first = recorded()
    second = replace(first, name="web-2")
    app = app_for(first, second)
    async with app.run_test(size=(200, 50)) as pilot:
        feed(app, first, second)
        await pilot.pause()
        assert "] Next host" in _footer(app)
        await pilot.press("question_mark")
        await pilot.pause()
        text = _help_text(app)
        assert "Switch to the next host" in text and "Switch to the previous host" in text


# --- 4. the deadline column as wide as what it shows ----------------------------------------

LONG_URI = "/api/v2/reports/export?customer=acme&year=2024&fmt=csv"  # 54 cells


def _long_uri(host: HostSnapshot) -> HostSnapshot:
    """two_ages' host with a long URI on the younger stuck request (core 0 of worker 4)."""
    inst = host.uwsgi[0]
    workers = []
    for w in inst.workers:
        cores = tuple(replace(c, request=replace(c.request, uri=LONG_URI))
                      if c.request is not None and c.request.level == "critical" and c.id == 0
                      else c for c in w.cores)
        workers.append(replace(w, cores=cores))
    return replace(host, uwsgi=(replace(inst, workers=tuple(workers)),))


def _without_core1(host: HostSnapshot) -> HostSnapshot:
    """The older stuck request (core 1, past nginx's 60 s) gone."""
    inst = host.uwsgi[0]
    workers = []
    for w in inst.workers:
        cores = tuple(replace(c, request=None, in_request=False)
                      if c.request is not None and c.request.level == "critical" and c.id == 1
                      else c for c in w.cores)
        workers.append(replace(w, cores=cores))
    return replace(host, uwsgi=(replace(inst, workers=tuple(workers)),))


class ListApp(App[None]):
    """The worker list alone, 143 cells wide: its width in the main view at 200x50."""

    def __init__(self, host: HostSnapshot, now: float) -> None:
        super().__init__()
        self.host, self.now = host, now

    def compose(self) -> ComposeResult:
        yield WorkerList(thresholds=Thresholds(5.0, 20.0))

    def on_mount(self) -> None:
        self.show(self.host, self.now)
        self.query_one(WorkerList).focus()

    def show(self, host: HostSnapshot, now: float) -> None:
        self.query_one(WorkerList).set_workers(host.uwsgi[0].workers, now)


def _row(app: App[Any], needle: str) -> str:
    return next(row for row in screen_text(app).splitlines() if needle in row)


async def test_the_uri_gets_what_the_deadline_column_does_not_use(monkeypatch):
    """Both deadlines short ("nginx 504 in 22 s"): the long URI is shown whole, two blanks
    between the deadline and the core. The older request passing nginx's 60 s widens the
    column at once; once it is gone, the column narrows only after HOLD_S (a column moving
    back and forth moves every request line's URI)."""
    clock = [1000.0]
    monkeypatch.setattr("widgets.worker_list.monotonic", lambda: clock[0])
    host, now = two_ages(recorded())
    host = _long_uri(host)
    app = ListApp(host, now - 20)  # ages 38 s and 43 s: 504 in 22 s and in 17 s
    async with app.run_test(size=(143, 8)) as pilot:
        await pilot.pause()
        row = _row(app, "c0 ")
        assert LONG_URI in row, row  # was cut after 26 cells
        assert "· nginx 504 in 22 s  c0 " in row, row
        narrow_at = row.index(" c0 ")

        app.show(host, now)  # 58 s and 63 s: the second one's client is gone
        await pilot.pause()
        gone = _row(app, "the client already has a 504")
        # Its URI whole: the Host column gave way (it was cut to "invoices+2…" beside it).
        assert "/hang/search?q=invoices+2024 " in gone and "from 127.0.0.1" in gone, gone
        wide_at = gone.index(" c1 ")
        assert _row(app, "nginx 504 in 2 s").index(" c0 ") == wide_at > narrow_at

        alone = _without_core1(host)
        for _ in range(4):  # the gone request ended; polls within the hold
            clock[0] += 2
            app.show(alone, now)
            await pilot.pause()
            assert _row(app, " c0 ").index(" c0 ") == wide_at
        clock[0] += WorkerList.HOLD_S
        app.show(alone, now)  # nothing shown changed, but the hold is over
        await pilot.pause()
        row = _row(app, " c0 ")
        assert row.index(" c0 ") < wide_at and LONG_URI in row, row


async def test_short_uris_keep_the_client_near_the_worker_rows(monkeypatch):
    """At 200x50 (a list 143 cells wide) with short URIs and short deadlines, the client
    column ends near REQUEST_SPAN: it ran to the list's edge (a 50-cell deadline column was counted
    whatever the deadlines said), 60 cells right of the worker rows. A long URI widens the
    lines to show it whole, and the columns come back once it has been gone for HOLD_S."""
    clock = [1000.0]
    monkeypatch.setattr("widgets.worker_list.monotonic", lambda: clock[0])
    host, now = two_ages(recorded())
    app = ListApp(host, now - 20)  # "nginx 504 in 22 s" and "in 17 s", short URIs
    async with app.run_test(size=(143, 8)) as pilot:
        await pilot.pause()
        short_end = len(_row(app, "c0 ").rstrip())
        # The widest URI (28 cells) needs 3 cells over REQUEST_SPAN, and gets just those: two
        # blanks before the host column. (The lines ran to the list's edge, column 143.)
        assert "/hang/search?q=invoices+2024  127.0.0.1:" in _row(app, "c1 ")
        assert short_end == REQUEST_SPAN + 3, _row(app, "c0 ")
        assert "from " in _row(app, "c0 ")
        app.show(_long_uri(host), now - 20)
        await pilot.pause()
        row = _row(app, "c0 ")
        assert LONG_URI in row and len(row.rstrip()) > short_end, row
        assert len(_row(app, "c1 ").rstrip()) == len(row.rstrip())  # the columns line up
        clock[0] += WorkerList.HOLD_S
        app.show(host, now - 20)
        await pilot.pause()
        assert len(_row(app, "c0 ").rstrip()) == short_end


async def test_stale_requests_read_at_least_and_predict_no_deadline():
    """Stale data (the stats stopped answering): a request's age is the one it had at the last
    good sample, read "at least", and no deadline is predicted from it (a review saw a 0.9 s
    request, long ended, shown CRIT with "nginx 504 in 35 s")."""
    host, now = two_ages(recorded())
    app = ListApp(host, now - 20)
    async with app.run_test(size=(143, 8)) as pilot:
        await pilot.pause()
        assert "38s · nginx 504 in 22 s" in _row(app, "c0 ")
        worker_list = app.query_one(WorkerList)
        worker_list.set_workers(host.uwsgi[0].workers, now - 20, stale=True)
        await pilot.pause()
        row = _row(app, "c0 ")
        assert "≥38s " in row and "504" not in row and "/hang/report" in row, row
        worker_list.set_workers(host.uwsgi[0].workers, now - 19)  # it answers again
        await pilot.pause()
        assert "39s · nginx 504 in 21 s" in _row(app, "c0 ")


def test_snapshot_list_with_a_long_uri_and_short_deadlines(snap_compare: Any) -> None:
    host, now = two_ages(recorded())
    assert snap_compare(ListApp(_long_uri(host), now - 20), terminal_size=(143, 8))

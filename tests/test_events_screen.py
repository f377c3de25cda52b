"""The events screen shows what the header reports and what stackmon itself did.

A new-user review of the live demo: during a burst of 502s from a full unix listen queue the
header said `502 ×32 … listen queue full … (×25)` while `e` said "0 event(s) / No event in the
window" (uWSGI cannot log a unix socket's full queue; only nginx's error log has it); and
stackmon's own kill was gone from `e` 74 s after it was made. Constructed snapshots (Pilot)
and one real stack whose unix-socket queue is filled until nginx answers 502. The history's
sparklines: a whole minute in the side panel, and never a figure cut.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from rich.style import Style

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.demo.launcher import Stack
from stackmon.logs.host import LogSummary, SourceStatus
from tests.test_tui_clients import _burst, quiet_host
from tests.tui_support import (
    QUEUE_FULL,
    app_for,
    errors_burst,
    event,
    http,
    screen_text,
    summary,
    upstream_error,
    wait_for,
)
from tui.app import StackmonApp
from tui.screens.events import ACTIONS_KEPT, EventMemory, EventsScreen, render_events
from widgets._fmt import fmt_count, fmt_rate
from widgets.history import history_lines


def clock(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S")


def rows_of(text: str, kind: str) -> list[str]:
    return [line for line in text.splitlines() if f" {kind} " in line]


# ------------------------------------------------------------------ queue-full episodes


async def test_a_queue_full_burst_is_an_event_with_its_time_socket_and_count() -> None:
    host = quiet_host()
    polls = errors_burst(host, [0, 10, 15, 0, 0])  # 25 failures at polls 2 and 3
    app = app_for(polls[-1])
    async with app.run_test(size=(140, 36)) as pilot:
        for poll in polls:
            app.show_snapshot(0, poll)
        await pilot.pause()
        header = screen_text(app)
        assert "uWSGI listen queue full on" in header and "(×25)" in header
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, EventsScreen)
        text = screen_text(app)
        assert "No event" not in text and "1 event(s)" in text, text
        [row] = rows_of(text, "queue_full")
        start = polls[0].taken_at - 1  # errors_burst's first_at: its window's start
        for part in (clock(start), "nginx", QUEUE_FULL, "×25", "uWSGI listen queue full"):
            assert part in row, (part, row)


def test_two_bursts_of_one_socket_are_two_episodes_counted_by_the_totals() -> None:
    """The window's one tally per cause and upstream is split where the failures paused
    longer than EPISODE_GAP_S; each counted exactly by the running totals."""
    memory = EventMemory()
    t0 = 10_000.0

    def poll(at: float, count: int, first: float, last: float, total: int) -> LogSummary:
        logs = summary(at, (upstream_error(count, first_at=first, last_at=last),))
        return replace(logs, upstream_totals=(("queue_full", QUEUE_FULL, total),))

    memory.observe(summary(t0, ()))  # a quiet first poll
    memory.observe(poll(t0 + 2, 20, t0 + 1, t0 + 2, 20))  # burst 1: 20 in 2 s
    memory.observe(poll(t0 + 3, 25, t0 + 1, t0 + 3, 25))
    memory.observe(poll(t0 + 30, 25, t0 + 1, t0 + 3, 25))  # quiet
    memory.observe(poll(t0 + 39, 25, t0 + 1, t0 + 3, 25))
    memory.observe(poll(t0 + 40, 32, t0 + 1, t0 + 40, 32))  # burst 2: 7 more
    last = poll(t0 + 70, 7, t0 + 40, t0 + 40, 32)  # burst 1 left the window
    memory.observe(last)
    shown = memory.episodes(last.taken_at, last.window_s)
    assert [(e.start, e.end, e.count) for e in shown] == [(t0 + 39, t0 + 40, 7)]
    earlier = memory.episodes(t0 + 40, 60.0)
    assert [(e.start, e.end, e.count) for e in earlier] == [(t0 + 39, t0 + 40, 7),
                                                             (t0 + 1, t0 + 3, 25)]
    _title, table = render_events("web-1", last, memory=memory)
    assert table.row_count == 1  # type: ignore[union-attr]


def test_the_empty_screen_does_not_say_nothing_happened_while_clients_got_502s() -> None:
    status = {"2xx": 560, "3xx": 0, "4xx": 3, "5xx": 37, "499": 0, "502": 37, "503": 0,
              "504": 0}
    followed = (SourceStatus("nginx_error", "/var/log/nginx/error.log", None, None, 0, 0, 0,
                             ()),)
    logs = summary(1000.0, (), http_summary=http(status=status), sources=followed)
    _title, body = render_events("web-1", logs, memory=EventMemory())
    said = body.plain  # type: ignore[union-attr]
    assert "No event in the" not in said
    assert "502 ×37" in said and "error log names no upstream failure" in said
    unfollowed = summary(1000.0, (), http_summary=http(status=status))
    assert "not followed" in render_events("web-1", unfollowed)[1].plain  # type: ignore[union-attr]
    quiet = summary(1000.0, (), http_summary=http(status={"2xx": 600}))
    assert render_events("web-1", quiet)[1].plain.startswith(  # type: ignore[union-attr]
        "No event in the last 60 s")


# ------------------------------------------------------------------ stackmon's own actions


async def test_stackmons_own_kill_stays_on_the_events_screen_past_the_window() -> None:
    host = quiet_host()
    t = host.taken_at
    kill = event(t, "killed", "SIGTERM to worker 2 (pid 4302) by root from the TUI", 2, 4302,
                 "/hang/x", source="stackmon")
    harakiri = event(t - 1, "harakiri", "HARAKIRI ON WORKER 3 (pid: 4303, try: 1)", 3, 4303)
    app = app_for(host)
    async with app.run_test(size=(140, 36)) as pilot:
        app.show_snapshot(0, replace(host, logs=summary(t, events=(kill, harakiri))))
        for dt in (1, 30, 74):  # the logs' window is 60 s: the core's events age out
            app.show_snapshot(0, replace(host, taken_at=t + dt, logs=summary(t + dt)))
        await pilot.pause()
        await pilot.press("e")
        await pilot.pause()
        text = screen_text(app)
        assert "stackmon's actions: this session" in text
        [row] = rows_of(text, "killed")
        assert clock(t) in row and "SIGTERM to worker 2" in row
        assert not rows_of(text, "harakiri")  # the log's events keep their window


def test_actions_kept_are_the_newest_and_each_once() -> None:
    memory = EventMemory()
    kills = [event(1000.0 + i, "killed", f"SIGKILL to pid {i}", source="stackmon")
             for i in range(ACTIONS_KEPT + 10)]
    for i in range(len(kills)):  # each poll's summary has the newest 3 again, newest first
        memory.observe(summary(1000.0 + i, events=tuple(reversed(kills[max(0, i - 2):i + 1]))))
    kept = memory.actions()
    assert len(kept) == ACTIONS_KEPT
    assert kept[0] is kills[-1] and kept[-1] is kills[10]
    last = summary(2000.0, events=(kills[-1],))
    _title, table = render_events("web-1", last, memory=memory)
    assert table.row_count == ACTIONS_KEPT  # type: ignore[union-attr]


# ------------------------------------------------------------------ the real stack


async def test_live_queue_full_burst_shows_on_the_events_screen(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any]) -> None:
    stack = fresh_stack(workers=1, threads=1, listen=2)
    host = HostConfig(name="live", uwsgi=(parse_stats_address(stack.stats_address),),
                      nginx=stack.nginx_status_url)
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.3)))
    async with app.run_test(size=(120, 36)) as pilot:
        assert await wait_for(pilot, lambda: "Clients · last 60 s" in screen_text(app),
                              timeout=10), screen_text(app)
        await pilot.press("e")
        assert await wait_for(pilot, lambda: isinstance(app.screen, EventsScreen))
        held = hang(stack, "/hang/events-502", n=1, via="unix")
        results = await asyncio.to_thread(_burst, stack, 30)
        await asyncio.to_thread(held.close)
        truth = results.count(502)
        assert truth >= 10, results
        upstream = f"unix:{stack.uwsgi_socket_path}"

        def shown() -> bool:
            rows = rows_of(screen_text(app), "queue_full")
            return len(rows) == 1 and f"×{truth} uWSGI listen queue full" in rows[0]

        assert await wait_for(pilot, shown, timeout=10), screen_text(app)
        [row] = rows_of(screen_text(app), "queue_full")
        assert " nginx " in row and "1 event(s)" in screen_text(app)
        # the socket's path is long: the text column folds it, but all of it is there
        assert upstream in "".join(screen_text(app).split())


# ------------------------------------------------------------------ history


def _lines(queue: Sequence[int], busy: Sequence[int], rps: Sequence[float | None],
           width: int) -> list[str]:
    return [t.plain for t in history_lines(queue, busy, rps, width, lambda name: Style())]


def test_history_never_cuts_a_figure() -> None:
    """The review saw `req/s  ▃▇▃…▄▅    5.0  max 9.` at 200x50: the max of the samples
    drawn ("9.5") was wider than the history's max the room was reserved for ("10")."""
    rps = [10.0] * 3 + [9.5] * 57
    for width in (35, 56):
        line = _lines([0] * 60, [1] * 60, rps, width)[2]
        assert len(line) <= width and line.endswith("9.5  max 10"), (width, line)
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(0, 90)
        queue = [rng.choice((0, 1, 9, 10, 99, 100, 12345, 2_500_000)) for _ in range(n)]
        rates: list[float | None] = [rng.choice((None, 0.0, 9.5, 9.96, 10.0, 99.4, 150.0))
                                     for _ in range(n)]
        width = rng.randint(14, 90)
        lines = _lines(queue, queue, rates, width)
        figures: list[tuple[list[str], list[float]]] = [
            ([fmt_count(v) for v in queue], [float(v) for v in queue]),
            ([fmt_count(v) for v in queue], [float(v) for v in queue]),
            (["?" if v is None else fmt_rate(v) for v in rates],
             [v for v in rates if v is not None])]
        for line, (shown, known) in zip(lines, figures, strict=True):
            assert len(line) <= width, (width, line)
            if shown:
                assert f" {shown[-1]}" in line, (width, line)
            if "max" in line:
                fmt = fmt_rate if line.startswith("req/s") else (lambda v: fmt_count(int(v)))
                top = "?" if not known else fmt(max(known))
                assert line.endswith(f"max {top}"), (width, line)


@pytest.mark.parametrize("width", [35, 56])  # the side panel at 80 and at 200 columns
def test_history_in_the_side_panel_covers_the_minute(width: int) -> None:
    """60 polls in a panel with fewer cells: each cell the largest of a few seconds, so the
    burst of the minute's first seconds is still drawn (it fell off the left before)."""
    queue = [33, 33] + [0] * 58
    line = _lines(queue, [1] * 60, [1.0] * 60, width)[0]
    spark = line[len("queue  "):line.index("     0")]
    assert spark.strip() and spark.strip()[0] == "█", line
    assert line.endswith("max 33")


def test_empty_columns_and_below_120_the_source_give_their_room_to_the_text() -> None:
    """At 80x24 the text column had 17 cells (a health_fail took 16 rows, review): columns
    of nothing but "-" go, and below 120 columns the source does (the kind names it)."""
    from tests.tui_support import event, summary
    from tui.screens.events import render_events

    logs = summary(1000.0, events=(event(990.0, "queue_full", "×20 uWSGI listen queue full",
                                         source="nginx"),))
    _, narrow = render_events("web-1", logs, width=80)
    _, wide = render_events("web-1", logs, width=160)
    assert [c.header for c in narrow.columns] == ["time", "kind", "text"]  # type: ignore[union-attr]
    assert [c.header for c in wide.columns] == ["time", "source", "kind", "text"]  # type: ignore[union-attr]
    killed = summary(1000.0, events=(event(995.0, "killed", "SIGTERM", 2, 4302, "GET /x",
                                           source="stackmon"),))
    _, both = render_events("web-1", killed, width=80)
    assert [c.header for c in both.columns] == ["time", "kind", "worker", "pid", "uri", "text"]  # type: ignore[union-attr]

"""The reusable widgets, each mounted alone in a small app at 80x24 with model values built
here (ages from a fixed NOW): what they render, how they react to keys, what they post, and
that untrusted text stays text."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace

import pytest
from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import App, ComposeResult
from textual.message import Message
from textual.widget import Widget
from textual.widgets import TabbedContent, TabPane

from stackmon.health import assess
from stackmon.model import (
    Core,
    FdReport,
    HostSnapshot,
    KernelCounters,
    Level,
    Listener,
    NginxStatus,
    ProcessFds,
    Request,
    Socket,
    SourceError,
    SystemFds,
    Thresholds,
    UwsgiInstance,
    Worker,
)
from stackmon.render_text import human_bytes
from tests.tui_support import LayoutCounter
from tui.host_pane import relabel_tab
from widgets import (
    Gauge,
    GaugeItem,
    GaugeList,
    History,
    HostHeader,
    NginxPanel,
    WorkerList,
    fd_items,
    gauge_severity,
    listen_queue_items,
)
from widgets.gauge import gauge_layout, gauge_percent
from widgets.history import sparkline
from widgets.side_panel import SideData, SidePanel, side_data
from widgets.worker_list import NOT_CAPTURED

NOW = 1_700_000_000.0
SIZE = (80, 24)


# --------------------------------------------------------------------------- model builders


def req(
    core: int = 0,
    uri: str = "/api/items",
    age: float | None = 1.0,
    level: Level = "slow",  # past the threshold: a line of its own (ok ones are counted)
    method: str = "GET",
    remote: str = "10.0.0.1",
) -> Request:
    started = None if age is None else NOW - age
    return Request(core=core, method=method, uri=uri, remote_addr=remote, host="example.org",
                   started_at=started, running_s=age, level=level)


def worker(
    wid: int,
    *requests: Request,
    pid: int | None = None,
    status: str | None = None,
    served: int | None = None,
    exceptions: int = 0,
    harakiri: int = 0,
) -> Worker:
    cores = tuple(Core(id=r.core, requests=3, in_request=True, request=r) for r in requests)
    return Worker(
        id=wid, pid=1000 + wid if pid is None else pid,
        status=status or ("busy" if requests else "idle"), accepting=True,
        requests=wid * 10 if served is None else served, exceptions=exceptions,
        harakiri_count=harakiri, respawn_count=1, avg_rt_ms=12.5, rss=5_000_000, vsz=0,
        last_spawn=NOW - 100, running_time_s=0.0, tx=0, cores=cores,
    )


def many_workers(n_workers: int = 64, n_cores: int = 8) -> list[Worker]:
    return [
        worker(w, *(req(c, f"/w{w}/c{c}", age=float(w + c)) for c in range(n_cores)))
        for w in range(1, n_workers + 1)
    ]


def instance(workers: Iterable[Worker] = (), sockets: Iterable[Socket] = (),
             queue: int = 0, backlog: int = 100) -> UwsgiInstance:
    return UwsgiInstance(address="127.0.0.1:9002", version="2.0.28", master_pid=4242,
                         listen_queue=queue, listen_queue_max=backlog, sockets=tuple(sockets),
                         workers=tuple(workers))


def host(**kwargs: object) -> HostSnapshot:
    base: dict[str, object] = {"name": "web-1", "taken_at": NOW, "reachable": True}
    base.update(kwargs)
    return HostSnapshot(**base)  # type: ignore[arg-type]


def nginx(dropped: int = 0, rps: float | None = 45.2) -> NginxStatus:
    return NginxStatus(url="http://127.0.0.1/nginx_status", active=291, accepts=1000 + dropped,
                       handled=1000, requests=5000, reading=6, writing=179, waiting=106,
                       sampled_at=NOW, requests_per_s=rps)


# ------------------------------------------------------------------------------ test app


class WidgetApp(App[None]):
    """Mounts the given widgets and records the WorkerList messages that reach the app."""

    def __init__(self, *widgets: Widget) -> None:
        super().__init__()
        self._widgets = widgets
        self.received: list[Message] = []

    def compose(self) -> ComposeResult:
        yield from self._widgets

    def on_worker_list_highlighted(self, message: WorkerList.Highlighted) -> None:
        self.received.append(message)

    def on_worker_list_selected(self, message: WorkerList.Selected) -> None:
        self.received.append(message)


def strip_text(segments: Iterable[Segment]) -> str:
    return "".join(s.text for s in segments)


def visible_lines(wl: WorkerList) -> list[str]:
    return [strip_text(wl.render_line(y)) for y in range(wl.scrollable_content_region.height)]


def segment_with(wl: WorkerList, y: int, text: str) -> Segment:
    for seg in wl.render_line(y):
        if text in seg.text:
            return seg
    raise AssertionError(f"{text!r} not on line {y}: {strip_text(wl.render_line(y))!r}")


def highlighted(app: WidgetApp) -> list[int | None]:
    return [m.worker_id for m in app.received if isinstance(m, WorkerList.Highlighted)]


def selected(app: WidgetApp) -> list[int]:
    return [m.worker_id for m in app.received if isinstance(m, WorkerList.Selected)]


def screen_text(app: App[None]) -> str:
    """The screen as the SVG screenshot has it (spaces are &#160; there)."""
    return app.export_screenshot().replace("&#160;", " ")


def rendered(widget: Widget) -> str:
    return widget.render().plain  # type: ignore[union-attr]


async def mounted_worker_list(workers: list[Worker], *, now: float = NOW,
                              **kwargs: object) -> tuple[WidgetApp, WorkerList]:
    wl = WorkerList(**kwargs)  # type: ignore[arg-type]
    app = WidgetApp(wl)
    wl.set_workers(workers, now)
    return app, wl


# ============================================================================ WorkerList


async def test_worker_list_shows_blocks_of_workers_and_requests() -> None:
    workers = [
        worker(1, req(0, "/fast", 5, "ok"), req(1, "/slow", 15, "slow"),
               req(2, "/stuck", 130, "critical", method="POST")),
        worker(2),
        worker(3, pid=0, status="idle"),
        worker(4, req(0, "", None, method="", remote="")),
    ]
    app, wl = await mounted_worker_list(workers)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        lines = visible_lines(wl)
        # The request younger than the slow threshold is a count in its worker's row, not a
        # line: rows do not move as short requests come and go.
        assert wl.line_count == 7
        assert wl.virtual_size.height == 7
        head = lines[0]
        assert head.startswith("▶ #1")
        # respawn_count counts the first spawn: a worker never respawned has respawned 0 times.
        for part in ("busy", "pid 1001", "1 short", "req 10", "exc 0", "hk 0", "avg", "12ms",
                     f"rss {human_bytes(5_000_000)}"):
            assert part in head, part
        assert "/fast" not in "\n".join(lines)
        assert lines[1].startswith("  ▲ SLOW") and "15s" in lines[1] and "/slow" in lines[1]
        assert "c1" in lines[1] and "GET" in lines[1] and "from 10.0.0.1" in lines[1]
        assert lines[2].startswith("  ✖ CRIT") and "2m10s" in lines[2] and "POST" in lines[2]
        assert lines[3].startswith("  #2") and "idle" in lines[3] and "short" not in lines[3]
        # uWSGI shows a dead worker as idle with pid 0: it must not read as a healthy idle one.
        assert lines[4].startswith("  #3") and "dead" in lines[4] and "pid -" in lines[4]
        assert lines[5].startswith("  #4") and "busy" in lines[5]
        assert NOT_CAPTURED in lines[6]
        assert lines[7].strip() == ""


async def test_worker_list_levels_and_states_look_different() -> None:
    workers = [
        worker(1, req(0, "/ok", 5), req(1, "/slow", 15, "slow"), req(2, "/crit", 90, "critical")),
        worker(2),
        worker(3, pid=0),
    ]
    app, wl = await mounted_worker_list(workers)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        slow = segment_with(wl, 2, "SLOW").style
        crit = segment_with(wl, 3, "CRIT").style
        assert slow is not None and crit is not None
        # The label is readable without colour (reverse, bold) and the two levels differ.
        assert slow.reverse and slow.bold and crit.reverse and crit.bold
        assert slow.color != crit.color
        # The request text takes the level's colour too; an ok request has no such colour.
        crit_uri = segment_with(wl, 3, "/crit").style
        ok_uri = segment_with(wl, 1, "/ok").style
        assert crit_uri is not None and ok_uri is not None
        assert crit_uri.color is not None and ok_uri.color != crit_uri.color
        # busy / idle / dead statuses are styled differently
        busy = segment_with(wl, 0, "busy").style
        idle = segment_with(wl, 4, "idle").style
        dead = segment_with(wl, 5, "dead").style
        assert len({busy, idle, dead}) == 3
        assert dead is not None and dead.italic
        # the cursor line (worker 1) has its own background
        cursor_bg = list(wl.render_line(0))[-1].style
        other_bg = list(wl.render_line(4))[-1].style
        assert cursor_bg is not None and other_bg is not None
        assert cursor_bg.bgcolor != other_bg.bgcolor


async def test_worker_list_shows_markup_and_control_characters_literally() -> None:
    workers = [worker(1, req(0, "/x/[b]y[/b]", 3, method="[red]GET", remote="[i]1.2.3.4[/i]"),
                      req(1, "/a\x1b[2J\nb", 4))]
    app, wl = await mounted_worker_list(workers)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        lines = visible_lines(wl)
        assert "/x/[b]y[/b]" in lines[1]
        assert "[i]1.2.3.4[/i]" in lines[1]
        assert "[red]G…" in lines[1]  # methods are cut to 7 cells
        assert not any(seg.style and seg.style.bold and seg.text == "y"
                       for seg in wl.render_line(1))
        assert "/a\\x1b[2J\\x0ab" in lines[2]
        assert all("\x1b" not in line and "\n" not in line for line in lines)
        assert "/x/[b]y[/b]" in screen_text(app)


async def test_worker_list_cursor_keys_and_messages() -> None:
    app, wl = await mounted_worker_list([worker(i) for i in range(1, 6)])
    async with app.run_test(size=SIZE) as pilot:
        wl.focus()
        await pilot.pause()
        assert wl.cursor_worker_id == 1
        assert highlighted(app) == [1]
        await pilot.press("down")
        assert wl.cursor_worker_id == 2
        await pilot.press("j", "j")
        assert wl.cursor_worker_id == 4
        await pilot.press("k")
        assert wl.cursor_worker_id == 3
        await pilot.press("up", "up", "up")  # stops at the top
        assert wl.cursor_worker_id == 1
        await pilot.press("end")
        assert wl.cursor_worker_id == 5
        await pilot.press("home")
        assert wl.cursor_worker_id == 1
        await pilot.press("enter")
        await pilot.pause()
        assert highlighted(app) == [1, 2, 3, 4, 3, 2, 1, 5, 1]
        assert selected(app) == [1]
        assert visible_lines(wl)[0].startswith("▶ #1")
        assert visible_lines(wl)[1].startswith("  #2")


async def test_worker_list_mouse_click_moves_cursor_and_double_click_selects() -> None:
    app, wl = await mounted_worker_list([worker(1, req(0), req(1)), worker(2), worker(3)])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.click(WorkerList, offset=(10, 4))  # worker 3's header (lines: 1,1,1,2,3)
        await pilot.pause()
        assert wl.cursor_worker_id == 3
        await pilot.click(WorkerList, offset=(10, 1), times=2)  # a request line of worker 1
        await pilot.pause()
        assert wl.cursor_worker_id == 1
        assert selected(app) == [1]


async def test_worker_list_cursor_follows_its_worker_across_updates() -> None:
    app, wl = await mounted_worker_list([worker(i) for i in range(1, 6)])
    async with app.run_test(size=SIZE) as pilot:
        wl.focus()
        await pilot.press("down", "down")
        assert wl.cursor_worker_id == 3
        # Worker 1 disappears and worker 2 gains requests: the lines move, the cursor does not.
        wl.set_workers([worker(2, req(0), req(1)), *(worker(i) for i in range(3, 6))], NOW)
        await pilot.pause()
        assert wl.cursor_worker_id == 3
        assert visible_lines(wl)[3].startswith("▶ #3")
        # Its own worker disappears: the cursor stays at the same place in the list.
        wl.set_workers([worker(2), worker(4), worker(5)], NOW)
        await pilot.pause()
        assert wl.cursor_worker_id == 4  # second in the list, as worker 3 was
        assert highlighted(app)[-1] == 4
        wl.set_workers([], NOW)
        await pilot.pause()
        assert wl.cursor_worker_id is None
        assert highlighted(app)[-1] is None
        assert visible_lines(wl)[0].strip() == "no workers"
        assert wl.line_count == 1


async def test_worker_list_sort_by_age_and_requests() -> None:
    workers = [
        worker(1, req(0, age=5), served=50),
        worker(2, served=900),
        worker(3, req(0, age=100), req(1, age=7), served=10),
        worker(4, req(0, age=50), served=300),
    ]
    # Sorting is about rows, not the worst worker: the cursor must not follow it here.

    def header_ids() -> list[str]:
        return [line[2:5].strip() for line in visible_lines(wl) if line[2:3] == "#"]

    app, wl = await mounted_worker_list(workers)
    async with app.run_test(size=SIZE) as pilot:
        wl.focus()
        await pilot.press("home", "down")  # cursor on worker 2
        await pilot.pause()
        assert header_ids() == ["#1", "#2", "#3", "#4"]
        wl.sort_by("age")
        await pilot.pause()
        assert wl.sort_key == "age"
        assert header_ids() == ["#3", "#4", "#1", "#2"]
        wl.sort_by("requests")
        await pilot.pause()
        assert header_ids() == ["#2", "#4", "#1", "#3"]
        assert wl.cursor_worker_id == 2
        assert visible_lines(wl)[0].startswith("▶ #2")
        wl.sort_by("id")
        await pilot.pause()
        assert header_ids() == ["#1", "#2", "#3", "#4"]
        # The cursor never left worker 2: no Highlighted beyond the initial one (the worst:
        # #3 with the oldest request) and the keys.
        assert highlighted(app) == [3, 1, 2]
        with pytest.raises(ValueError):
            wl.sort_by("pid")  # type: ignore[arg-type]


async def test_worker_list_filter() -> None:
    workers = [
        worker(1, req(0, "/api/Export?x=1", 5)),
        worker(2, req(0, "/health", 1, method="POST", remote="192.168.7.9")),
        worker(3),
        worker(4, pid=0),
    ]
    app, wl = await mounted_worker_list(workers)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()

        def shown() -> list[int]:
            return [key[0] for key, sub in wl._lines if sub == 0]

        wl.set_filter("EXPORT")  # case-insensitive, on the URI
        await pilot.pause()
        assert shown() == [1]
        wl.set_filter("post")  # method
        await pilot.pause()
        assert shown() == [2]
        assert wl.cursor_worker_id == 2
        assert highlighted(app)[-1] == 2
        wl.set_filter("192.168.7")  # client address
        assert shown() == [2]
        wl.set_filter("1003")  # pid
        assert shown() == [3]
        wl.set_filter("idle")  # status as uWSGI reports it
        assert shown() == [3, 4]
        wl.set_filter("dead")  # status as shown (pid 0)
        assert shown() == [4]
        wl.set_filter("4")  # worker id (and pid 1004; worker 4's pid is 0)
        assert shown() == [4]
        assert wl.filter_text == "4"
        wl.set_filter("[b]nothing[/b]")
        await pilot.pause()
        assert shown() == []
        assert wl.cursor_worker_id is None
        assert visible_lines(wl)[0].strip() == "no worker matches [b]nothing[/b]"
        wl.set_filter("")
        await pilot.pause()
        assert shown() == [1, 2, 3, 4]
        assert wl.cursor_worker_id is not None


async def test_worker_list_64_workers_x_8_cores_scrolls() -> None:
    app, wl = await mounted_worker_list(many_workers(64, 8))
    async with app.run_test(size=SIZE) as pilot:
        wl.focus()
        await pilot.pause()
        assert wl.line_count == 64 * 9
        assert wl.virtual_size.height == 64 * 9
        assert wl.show_vertical_scrollbar
        assert wl.max_scroll_y == 64 * 9 - 24
        width = wl.scrollable_content_region.width
        assert width == 79  # 80 minus a 1-cell scrollbar: nothing overflows horizontally
        assert all(len(line) == width for line in visible_lines(wl))

        await pilot.press("pagedown")
        first_page = wl.cursor_worker_id
        assert first_page is not None and first_page > 2
        top = round(wl.scroll_y)
        assert top <= wl._first_line[(first_page, 0)] < top + 24

        await pilot.press("end")
        await pilot.pause()
        assert wl.cursor_worker_id == 64
        assert wl.scroll_y == wl.max_scroll_y
        lines = visible_lines(wl)
        assert any(line.startswith("▶ #64") for line in lines)
        assert "/w64/c7" in lines[-1]

        await pilot.press("pageup")
        assert wl.cursor_worker_id is not None and wl.cursor_worker_id < 64
        await pilot.press("home")
        await pilot.pause()
        assert wl.scroll_y == 0
        assert visible_lines(wl)[0].startswith("▶ #1")

        # The mouse wheel / scrollbar scrolls without moving the cursor.
        wl.scroll_to(y=300, animate=False, immediate=True)
        await pilot.pause()
        assert wl.cursor_worker_id == 1
        assert visible_lines(wl)[0] != ""
        assert not any(line.startswith("▶") for line in visible_lines(wl))


async def test_worker_list_truncates_long_uris_at_80_columns() -> None:
    long_uri = "/search?q=" + "x" * 300
    app, wl = await mounted_worker_list([worker(1, req(0, long_uri, 3, remote="203.0.113.77"))])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        line = visible_lines(wl)[1]
        assert len(line) == 80
        assert "…" in line
        assert line.rstrip().endswith("from 203.0.113.77")
        assert wl.line_count == 2  # no wrapping


async def test_worker_list_wide_characters_keep_lines_exact() -> None:
    app, wl = await mounted_worker_list([worker(1, req(0, "/搜索" * 40, 3, method="ГЕТГЕТГЕТ",
                                                    remote="例え.example"),
                                                status="忙しい状態")])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        for y in (0, 1):
            strip = wl.render_line(y)
            assert strip.cell_length == 80
            assert cell_len(strip_text(strip)) == 80
        assert "…" in strip_text(wl.render_line(1))


async def test_worker_list_narrow_pane_keeps_what_matters() -> None:
    # At 80 columns the app's side panel leaves the list about 48 cells.
    workers = [worker(1, req(0, "/report/export.csv?year=2024&format=long", 187, "critical",
                             method="POST", remote="203.0.113.9"), harakiri=2),
               worker(2, req(0, "/a", 3, "slow"))]
    app, wl = await mounted_worker_list(workers)
    wl.styles.width = 48
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        head, crit, head2, ok = visible_lines(wl)[:4]
        assert all(len(line) == 48 for line in (head, crit, head2, ok))
        for part in ("#1", "busy", "pid 1001", "hk 2", "exc 0"):
            assert part in head, part
        assert "resp" not in head and "…" not in head  # fields dropped whole, not cut
        assert crit.startswith(" ✖ CRIT  3m07s POST /report/export.csv?year=202")
        assert "from" not in crit  # the client address gives way to the URI
        assert "3s GET /a " in ok and ok.endswith("  from 10.0.0.1")  # short URI: room for both


async def test_worker_list_redraws_only_what_changed() -> None:
    workers = [worker(1, req(0, age=5)), worker(2), worker(3, req(0, age=2), req(1, age=3))]
    app, wl = await mounted_worker_list(workers)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        calls: list[tuple[str, tuple[object, ...]]] = []
        real_refresh, real_refresh_lines = wl.refresh, wl.refresh_lines

        def refresh(*args: object, **kwargs: object) -> Widget:
            if not args:  # refresh_lines() refreshes a region: counted below
                calls.append(("refresh", args))
            return real_refresh(*args, **kwargs)  # type: ignore[arg-type]

        def refresh_lines(y_start: int, line_count: int = 1) -> None:
            calls.append(("refresh_lines", (y_start, line_count)))
            real_refresh_lines(y_start, line_count)

        wl.refresh = refresh  # type: ignore[method-assign,assignment]
        wl.refresh_lines = refresh_lines  # type: ignore[method-assign]

        # Equal values, ages within the same second: nothing to do at all.
        wl.set_workers([worker(1, req(0, age=5)), worker(2),
                        worker(3, req(0, age=2), req(1, age=3))], NOW + 0.5)
        assert calls == []
        # A second later only the busy workers' lines are redrawn (lines 0-1 and 3-5), and
        # nothing is laid out again.
        headers_drawn: list[int] = []
        real_header_text = wl._header_text

        def header_text(w: Worker, *args: object) -> object:
            headers_drawn.append(w.id)
            return real_header_text(w, *args)  # type: ignore[arg-type]

        wl._header_text = header_text  # type: ignore[method-assign,assignment]
        wl.set_workers(workers, NOW + 1)
        assert calls == [("refresh_lines", (0, 2)), ("refresh_lines", (3, 3))]
        await pilot.pause()
        assert "6s" in visible_lines(wl)[1]
        assert headers_drawn == []  # only the request lines were drawn again
        calls.clear()
        # An idle worker's counters change: only its line.
        wl.set_workers([workers[0], worker(2, served=21), workers[2]], NOW + 1)
        assert calls == [("refresh_lines", (2, 1))]


async def test_worker_list_keeps_lines_when_only_unshown_fields_change() -> None:
    """Under traffic running_time_s, tx, vsz and the average's decimals change on almost
    every poll; a row is drawn again only when what it shows changes."""
    workers = [worker(1, req(0, age=5)), worker(2)]
    app, wl = await mounted_worker_list(workers)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        before = visible_lines(wl)
        cached = {k: dict(v) for k, v in wl._strips.items()}
        assert len(cached[(1, 0)]) == 2 and len(cached[(2, 0)]) == 1  # header + request line
        drawn: list[int] = []
        refreshed: list[tuple[int, int]] = []
        real_header_text, real_refresh_lines = wl._header_text, wl.refresh_lines

        def header_text(w: Worker, *args: object) -> object:
            drawn.append(w.id)
            return real_header_text(w, *args)  # type: ignore[arg-type]

        def refresh_lines(y_start: int, line_count: int = 1) -> None:
            refreshed.append((y_start, line_count))
            real_refresh_lines(y_start, line_count)

        wl._header_text = header_text  # type: ignore[method-assign,assignment]
        wl.refresh_lines = refresh_lines  # type: ignore[method-assign]
        busy = [replace(w, running_time_s=w.running_time_s + 0.7, tx=w.tx + 4096, vsz=123,
                        avg_rt_ms=12.4)  # shown as 12ms, like 12.5
                for w in workers]
        wl.set_workers(busy, NOW + 0.5)
        await pilot.pause()
        assert visible_lines(wl) == before
        assert drawn == [] and refreshed == []
        for key, lines in cached.items():
            assert all(wl._strips[key].get(line) is strip for line, strip in lines.items())
        assert wl.cursor_worker is not None and wl.cursor_worker.tx == 4096  # newest values
        # What the row shows changes (the average as printed): that row only, header only.
        wl.set_workers([busy[0], replace(busy[1], avg_rt_ms=1500.0)], NOW + 0.5)
        await pilot.pause()
        assert drawn == [2] and refreshed == [(2, 1)]
        assert "avg  1.5s" in visible_lines(wl)[2]
        assert wl._strips[(1, 0)][(1, False)] is cached[(1, 0)][(1, False)]


@pytest.mark.parametrize(
    ("cores", "expected"),
    [
        (8, [(0, 9), (9, 9), (18, 6)]),  # three blocks on screen: each its own region
        (1, [(0, 24)]),  # twelve blocks on screen: one region for the viewport
    ],
)
async def test_worker_list_refreshes_only_visible_lines(
    cores: int, expected: list[tuple[int, int]]
) -> None:
    app, wl = await mounted_worker_list(many_workers(64, cores))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        calls: list[tuple[int, int]] = []
        real_refresh_lines = wl.refresh_lines

        def refresh_lines(y_start: int, line_count: int = 1) -> None:
            calls.append((y_start, line_count))
            real_refresh_lines(y_start, line_count)

        wl.refresh_lines = refresh_lines  # type: ignore[method-assign]
        wl.set_workers(many_workers(64, cores), NOW + 1)  # every age moved on
        assert calls == expected  # nothing for the lines off screen


async def test_worker_list_levels_follow_live_age_with_thresholds() -> None:
    w = [worker(1, req(0, "/grows", age=5, level="ok"))]
    app, wl = await mounted_worker_list(w, thresholds=Thresholds(slow=10, critical=60))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        # Younger than the slow threshold: counted in the row, no line yet.
        assert "1 short" in visible_lines(wl)[0] and visible_lines(wl)[1].strip() == ""
        wl.set_workers(w, NOW + 10)
        await pilot.pause()
        assert visible_lines(wl)[1].startswith("  ▲ SLOW") and "15s" in visible_lines(wl)[1]
        wl.set_workers(w, NOW + 60)
        await pilot.pause()
        assert visible_lines(wl)[1].startswith("  ✖ CRIT") and "65s" in visible_lines(wl)[1]


async def test_worker_list_cursor_setter_and_unfocused_cursor() -> None:
    app, wl = await mounted_worker_list([worker(i) for i in range(1, 4)])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.set_focus(None)
        await pilot.pause()
        assert not wl.has_focus
        blurred = list(wl.render_line(0))[-1].style
        wl.cursor_worker_id = 3
        wl.cursor_worker_id = 99  # not shown: ignored
        await pilot.pause()
        assert wl.cursor_worker_id == 3
        assert highlighted(app) == [1, 3]
        wl.focus()
        await pilot.pause()
        focused = list(wl.render_line(2))[-1].style
        assert blurred is not None and focused is not None
        assert blurred.bgcolor != focused.bgcolor


# ================================================================================= Gauge


@pytest.mark.parametrize(
    ("value", "limit", "severity", "percent"),
    [
        (0, 100, "ok", 0),
        (69, 100, "ok", 69),
        (70, 100, "warn", 70),
        (89, 100, "warn", 89),
        (90, 100, "critical", 90),
        (9, 10, "critical", 90),
        (101, 100, "critical", 101),  # an accept queue can reach backlog + 1
        (29, 100, "ok", 29),  # 0.29 * 100 is 28.999... in floats
        (5, 0, "unknown", None),
    ],
)
def test_gauge_severity_and_percent(value: int, limit: int, severity: str,
                                    percent: int | None) -> None:
    assert gauge_severity(value, limit) == severity
    assert gauge_percent(value, limit) == percent


@pytest.mark.parametrize(
    ("value", "limit", "severity"),
    [(79, 100, "ok"), (80, 100, "warn"), (94, 100, "warn"), (95, 100, "critical"),
     (819, 1024, "ok"), (820, 1024, "warn"), (973, 1024, "critical"), (1, 0, "unknown")],
)
def test_fd_gauges_grade_by_the_health_models_fd_thresholds(value: int, limit: int,
                                                            severity: str) -> None:
    """fds used to turn amber at 70 % here while the tab waited for 80 %: one model now."""
    assert gauge_severity(value, limit, "fd") == severity
    assert [i.kind for i in fd_items(FdReport(SystemFds(1, 10),
                                              (ProcessFds(1, "uwsgi-worker", 1, 10),)))] \
        == ["fd", "fd"]


async def test_gauge_renders_value_limit_percent_and_colours() -> None:
    ok = Gauge("uwsgi workers max", 37, 1024, "pid 4242", id="ok")
    warn = Gauge("queue", 75, 100, id="warn")
    crit = Gauge("queue", 95, 100, "(kernel)", id="crit")
    unknown = Gauge("nginx master", 20, 0, id="unknown")
    app = WidgetApp(ok, warn, crit, unknown)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = rendered(ok)
        assert "37/1024" in text and "  3%" in text and text.endswith("pid 4242")
        assert ok.has_class("-ok") and ok.severity == "ok"
        assert "75/100" in rendered(warn) and "75%" in rendered(warn)
        assert warn.has_class("-warn")
        assert "95/100" in rendered(crit) and "95%" in rendered(crit)
        assert crit.has_class("-critical")
        assert "(kernel)" in rendered(crit)
        # unknown limit: value/?, no percentage, no fill
        assert "20/?" in rendered(unknown) and "%" not in rendered(unknown)
        assert "█" not in rendered(unknown) and "░" in rendered(unknown)
        assert unknown.has_class("-unknown")
        # the bar fills in proportion
        assert rendered(crit).count("█") > rendered(warn).count("█") > rendered(ok).count("█")
        assert rendered(ok).count("█") == 1  # 3%: small but visible

        def pct_style(g: Gauge, pct: str) -> Style:
            span = next(s for s in g.render().spans
                        if g.render().plain[s.start:s.end] == pct)
            assert isinstance(span.style, Style)
            return span.style

        crit_style, warn_style, ok_style = (pct_style(crit, " 95%"), pct_style(warn, " 75%"),
                                            pct_style(ok, "  3%"))
        assert len({crit_style.color, warn_style.color, ok_style.color}) == 3
        assert crit_style.reverse and crit_style.bold  # readable without colour
        assert warn_style.bold and not warn_style.reverse

        # an update that crosses a threshold switches the class
        ok.set_value(1000, 1024)
        await pilot.pause()
        assert ok.has_class("-critical") and not ok.has_class("-ok")
        assert "1000/1024" in rendered(ok) and "97%" in rendered(ok)
        assert rendered(ok).endswith("pid 4242")  # the note is kept


async def test_gauge_markup_in_label_and_note_is_literal() -> None:
    g = Gauge("[b]/run/x.sock[/b]", 1, 10, "[red]n[/red]")
    app = WidgetApp(g)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "[b]/run/x.sock[/b]" in rendered(g) and "[red]n[/red]" in rendered(g)
        assert "[b]/run/x.sock[/b]" in screen_text(app)


async def test_gauge_list_reuses_gauges_by_key() -> None:
    items = [GaugeItem("a", "uwsgi :3031", 5, 100), GaugeItem("b", "nginx :80", 1, 511)]
    gl = GaugeList(items, empty_text="no listeners")
    app = WidgetApp(gl)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        first = gl.gauges
        assert list(first) == ["a", "b"]
        assert [g.value for g in gl.query(Gauge)] == [5, 1]

        gl.set_items([GaugeItem("a", "uwsgi :3031", 80, 100), GaugeItem("b", "nginx :80", 2, 511)])
        await pilot.pause()
        assert gl.gauges == first  # same widgets, updated in place
        assert list(gl.query(Gauge)) == list(first.values())
        assert first["a"].has_class("-warn") and "80/100" in rendered(first["a"])

        # a new key in the middle is mounted in place; a gone key is removed
        gl.set_items([GaugeItem("a", "uwsgi :3031", 80, 100), GaugeItem("c", "x", 3, 10),
                      GaugeItem("b", "nginx :80", 2, 511)])
        await pilot.pause()
        assert [g.value for g in gl.query(Gauge)] == [80, 3, 2]
        assert gl.gauges["a"] is first["a"] and gl.gauges["b"] is first["b"]
        gl.set_items([GaugeItem("c", "x", 3, 10), GaugeItem("d", "new", 7, 10)])
        await pilot.pause()
        assert [g.value for g in gl.query(Gauge)] == [3, 7]
        gl.set_items([GaugeItem("d", "new", 7, 10), GaugeItem("c", "x", 3, 10)])  # reordered
        await pilot.pause()
        assert [g.value for g in gl.query(Gauge)] == [7, 3]
        assert list(gl.gauges) == ["d", "c"]

        gl.set_items([])
        await pilot.pause()
        assert list(gl.query(Gauge)) == []
        assert "no listeners" in screen_text(app)
        with pytest.raises(ValueError):
            gl.set_items([GaugeItem("a", "x", 1, 2), GaugeItem("a", "y", 1, 2)])


async def test_gauge_list_items_set_before_mount() -> None:
    gl = GaugeList()
    gl.set_items([GaugeItem("a", "one", 1, 10), GaugeItem("b", "two", 2, 10)])
    app = WidgetApp(gl)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert [g.value for g in gl.query(Gauge)] == [1, 2]


async def test_gauge_list_aligns_bars() -> None:
    gl = GaugeList([GaugeItem("a", "short", 5, 100, "(kernel)"),
                    GaugeItem("b", "a much longer label", 1, 511, "somaxconn 4096")])
    app = WidgetApp(gl)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        a, b = (rendered(g) for g in gl.query(Gauge))
        assert a.index("█") == b.index("█")
        assert a.index("%") == b.index("%")


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (80, (20, 26, 11, True)),  # label, bar, numbers, note
        (60, (20, 6, 11, True)),
        (52, (20, 14, 11, False)),  # no room for the note: a longer bar instead
        (41, (19, 4, 11, False)),  # the label is cut before the bar goes
        (29, (12, 0, 11, False)),  # then the bar goes; the numbers always stay
        (200, (20, 40, 11, True)),
    ],
)
def test_gauge_layout(width: int, expected: tuple[int, int, int, bool]) -> None:
    assert gauge_layout(width, label_width=20, note_width=14, numbers_len=6) == expected


async def test_gauge_in_a_narrow_panel() -> None:
    gl = GaugeList([GaugeItem("a", "uwsgi /run/app.sock", 93, 100, "(kernel)"),
                    GaugeItem("b", "nginx 0.0.0.0:80", 2, 511, "somaxconn 4096")])
    gl.styles.width = 29
    app = WidgetApp(gl)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        a, b = (rendered(g) for g in gl.query(Gauge))
        assert a == "uwsgi /run/…      93/100  93%"
        assert b == "nginx 0.0.0…       2/511   0%"


def test_listen_queue_items() -> None:
    h = host(
        uwsgi=(instance(sockets=[Socket("/run/app.sock", "uwsgi", 97, 100, source="kernel"),
                                 Socket("127.0.0.1:3031", "uwsgi", 3, 4096)]),),
        listeners=(Listener("0.0.0.0:80", "tcp", "nginx", 2, 511),
                   Listener("/run/app.sock", "unix", "uwsgi", 97, 100),
                   Listener("10.1.2.3:9002", "tcp", "uwsgi", 0, 100)),
        kernel=KernelCounters(somaxconn=4096, listen_overflows=0, listen_drops=0),
    )
    h = replace(h, uwsgi=(replace(h.uwsgi[0], address="10.1.2.3:9002"),))
    items = listen_queue_items(h)
    assert [(i.label, i.value, i.limit, i.note) for i in items] == [
        ("uwsgi app.sock", 97, 100, "(kernel)"),
        ("uwsgi :3031", 3, 4096, "somaxconn 4096"),
        ("nginx :80", 2, 511, ""),
        ("stats 10.1.2.3:9002", 0, 100, ""),  # the stats server's own listener, named so
    ]
    assert len({i.key for i in items}) == 4


def test_fd_items() -> None:
    fds = FdReport(
        system=SystemFds(open=3000, max=9223372036854775807),
        processes=(ProcessFds(10, "uwsgi-worker", 37, 1024), ProcessFds(11, "uwsgi-worker", 900,
                                                                         1024),
                   ProcessFds(9, "uwsgi-master", 12, 1024), ProcessFds(20, "nginx-master", 8, 0)),
    )
    assert [(i.label, i.value, i.limit, i.note) for i in fd_items(fds)] == [
        ("uwsgi master", 12, 1024, "pid 9"),
        ("uwsgi workers", 900, 1024, "max: pid 11"),
        ("nginx master", 8, 0, "pid 20"),
        ("system file-nr", 3000, 9223372036854775807, "file-max"),
    ]


# ============================================================================ NginxPanel


async def test_nginx_panel_states() -> None:
    panel = NginxPanel()
    app = WidgetApp(panel)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert rendered(panel) == "nginx: not configured"

        panel.set_status(nginx(dropped=0, rps=None))
        await pilot.pause()
        text = rendered(panel)
        for part in ("active 291", "reading 6", "writing 179", "waiting 106", "dropped 0",
                     "req/s ?"):
            assert part in text, part
        assert not panel.has_class("-dropped")

        panel.set_status(nginx(dropped=5, rps=45.2))
        await pilot.pause()
        text = rendered(panel)
        assert "dropped 5" in text and "req/s 45" in text
        assert panel.has_class("-dropped")
        span = next(s for s in panel.render().spans
                    if "dropped 5" in text[s.start:s.end])
        assert isinstance(span.style, Style) and span.style.reverse

        panel.set_status(nginx(dropped=5), "HTTP 502 from [b]stub_status[/b]")
        await pilot.pause()
        assert panel.size.height == 2
        assert rendered(panel).splitlines()[1].endswith("HTTP 502 from [b]stub_status[/b]")
        assert panel.has_class("-error")

        panel.set_status(None, "connection refused")
        await pilot.pause()
        assert rendered(panel) == "nginx: connection refused"
        assert panel.size.height == 1


async def test_nginx_panel_flows_figures_in_a_narrow_panel() -> None:
    panel = NginxPanel(nginx(dropped=12, rps=1234.0), "connect() to 127.0.0.1:80 failed: "
                                                      "connection refused")
    panel.styles.width = 29
    app = WidgetApp(panel)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = rendered(panel)
        figure_lines = text.split("\nlast poll failed")[0].splitlines()
        assert all(len(line) <= 29 for line in figure_lines)
        for part in ("active 291", "reading 6", "writing 179", "waiting 106", "dropped 12",
                     "req/s 1234"):
            assert any(part in line for line in figure_lines), part  # never split
        # the error wraps, and the panel grows so that all of it is on screen
        assert panel.size.height > len(figure_lines) + 1
        assert "connection refused" in screen_text(app)


# =============================================================================== History


def test_sparkline() -> None:
    assert sparkline([0, 1, 4, 8, None], 8) == " ▁▄█·"
    assert sparkline([0, 0], 0) == "  "
    assert sparkline([1], 1000) == "▁"  # any non-zero value shows


async def test_history_push_and_window() -> None:
    h = History(max_samples=10)
    app = WidgetApp(h)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert [line.split()[0] for line in rendered(h).splitlines()] == ["queue", "busy",
                                                                          "req/s"]
        for i in range(15):
            h.push(queue=i, busy=i % 3, rps=None if i < 14 else 7.5)
        await pilot.pause()
        queue, busy, rps = h.series()
        assert queue == list(range(5, 15)) and len(busy) == 10 and rps[-1] == 7.5
        lines = rendered(h).splitlines()
        assert lines[0].rstrip().endswith("14  max 14")
        assert "█" in lines[0]
        assert lines[1].rstrip().endswith("max 2")
        assert "·" in lines[2] and lines[2].rstrip().endswith("7.5  max 7.5")
        assert all(len(line) <= 80 for line in lines)
        calls: list[object] = []
        real_refresh = h.refresh
        h.refresh = lambda *a, **k: calls.append(a) or real_refresh(*a, **k)  # type: ignore
        h.set_series(queue, busy, rps)  # the same history again: nothing to draw
        assert calls == []
        h.set_series(list(range(100)), [1] * 100, [2.0] * 100)
        assert calls and h.series()[0] == list(range(90, 100))
        h.clear()
        await pilot.pause()
        assert "?" in rendered(h).splitlines()[0]


async def test_history_in_a_narrow_panel_keeps_the_trend() -> None:
    h = History()
    h.styles.width = 29
    app = WidgetApp(h)
    async with app.run_test(size=SIZE) as pilot:
        for i in range(30):
            h.push(queue=i, busy=1, rps=2.0)
        await pilot.pause()
        queue_line = rendered(h).splitlines()[0]
        assert len(queue_line) == 29 and "max" not in queue_line
        assert queue_line.endswith("█     29")


# ========================================================================== HostHeader


def _slow_host(*levels: Level, **kwargs: object) -> HostSnapshot:
    reqs = [req(i, age=1, level=level) for i, level in enumerate(levels)]
    return host(uwsgi=(instance([worker(1, *reqs), worker(2)]),), **kwargs)


@pytest.mark.parametrize(
    ("snapshot", "label", "severity"),
    [
        (host(), "ok", "ok"),
        (_slow_host("ok"), "ok", "ok"),
        (host(reachable=False, errors=(SourceError("uwsgi 127.0.0.1:9002",
                                                   "connection refused"),)),
         "UNREACHABLE connection refused", "critical"),
        (host(reachable=False), "UNREACHABLE no answer", "critical"),
        (host(reachable=False, stale_s=130.0, errors=(SourceError("agent", "timeout"),)),
         "UNREACHABLE timeout (data 2m10s old)", "critical"),
        (_slow_host("slow", "slow"), "SLOW 2", "warn"),
        (_slow_host("slow", "critical"), "CRIT 1", "critical"),
        (host(uwsgi=(instance(sockets=[Socket("s", "uwsgi", 92, 100)]),)), "QUEUE 92%",
         "critical"),
        # the health model's 70 %: the old badge warned at 50 % while the gauge stayed green
        (host(uwsgi=(instance(sockets=[Socket("s", "uwsgi", 70, 100)]),)), "QUEUE 70%", "warn"),
        (host(uwsgi=(instance(sockets=[Socket("s", "uwsgi", 69, 100)]),)), "ok", "ok"),
        (host(uwsgi=(instance(sockets=[Socket("s", "uwsgi", 50, 100)]),)), "ok", "ok"),
        (host(listeners=(Listener(":80", "tcp", "nginx", 460, 511),)), "QUEUE 90%", "critical"),
        (host(errors=(SourceError("nginx http://127.0.0.1/nginx_status", "refused"),)),
         "PARTIAL: nginx down", "warn"),
        # worst wins: a critical request beats a warn-level queue and partial errors
        (host(uwsgi=(instance([worker(1, req(0, level="critical"))],
                              sockets=[Socket("s", "uwsgi", 75, 100)]),),
              errors=(SourceError("nginx x", "refused"),)), "CRIT 1", "critical"),
        (_slow_host("slow", errors=(SourceError("nginx x", "e"),)), "SLOW 1", "warn"),
        (host(stale_s=12.0), "STALE 12s", "unknown"),
        (_slow_host("slow", stale_s=12.0), "STALE 12s SLOW 1", "warn"),
    ],
)
async def test_host_header_badge_is_the_health_models(snapshot: HostSnapshot, label: str,
                                                      severity: str) -> None:
    """The header shows assess()'s label and severity, and its gauges agree with it."""
    state = assess(snapshot)
    assert (state.label, state.severity) == (label, severity)
    header = HostHeader()
    app = WidgetApp(header)
    async with app.run_test(size=SIZE) as pilot:
        header.set_snapshot(snapshot, None)
        await pilot.pause()
        assert f" {label} " in rendered(header) or label.startswith("UNREACHABLE")
        assert header.severity == severity and header.has_class(f"-{severity}")
    queue_sevs = [gauge_severity(i.value, i.limit, i.kind) for i in listen_queue_items(snapshot)]
    if any(r.kind == "queue" for r in state.reasons):
        assert max(queue_sevs, key=["ok", "unknown", "warn", "critical"].index) == next(
            r.severity for r in state.reasons if r.kind == "queue")
    else:
        assert set(queue_sevs) <= {"ok", "unknown"}


async def test_host_header_renders_one_line() -> None:
    h = host(name="web-[b]1[/b]", uwsgi=(instance([worker(1, req(0, level="slow")), worker(2),
                                                   worker(3)]),))
    header = HostHeader()
    app = WidgetApp(header)
    async with app.run_test(size=SIZE) as pilot:
        header.set_snapshot(h, 12.34)
        await pilot.pause()
        text = rendered(header)
        assert text.startswith("web-[b]1[/b]")
        for part in (" SLOW 1 ", "uWSGI 2.0.28", "master 4242", "busy 1/3", "req/s 12"):
            assert part in text, part
        assert header.has_class("-warn") and header.severity == "warn"
        assert header.size.height == 1
        assert "web-[b]1[/b]" in screen_text(app)
        header.set_snapshot(host(reachable=False, errors=(SourceError("agent", "timeout"),)),
                            None)
        await pilot.pause()
        assert " UNREACHABLE timeout " in rendered(header)
        assert "req/s ?" in rendered(header)
        assert header.has_class("-critical") and not header.has_class("-warn")


def test_listen_queue_items_with_reuseport_listeners_have_unique_keys() -> None:
    """nginx `listen ... reuseport`: one address, one listener per worker (seen for real)."""
    h = host(listeners=(Listener("127.0.0.1:80", "tcp", "nginx", 0, 511, inode=11),
                        Listener("127.0.0.1:80", "tcp", "nginx", 3, 511, inode=12)),
             uwsgi=(instance(sockets=[Socket("app.sock", "uwsgi", 0, 100),
                                      Socket("app.sock", "uwsgi", 1, 100)]),))
    items = listen_queue_items(h)
    assert len({i.key for i in items}) == len(items) == 4
    assert [i.value for i in items] == [0, 1, 0, 3]


# ============================================================================ SidePanel

SIDE_HOST = host(
    uwsgi=(instance(sockets=[Socket("/run/app.sock", "uwsgi", 93, 100, source="kernel")],
                    queue=93),),
    listeners=(Listener("0.0.0.0:80", "tcp", "nginx", 2, 511),),
    fds=FdReport(SystemFds(3104, 9223372036854775807),
                 (ProcessFds(4300, "uwsgi-worker", 37, 1024),
                  ProcessFds(4242, "uwsgi-master", 18, 1024))),
    kernel=KernelCounters(4096, 0, 0),
)


def side_for(snap: HostSnapshot, *, queue: int = 93, nginx_status: NginxStatus | None = None,
             history: tuple[list[int], list[int], list[float | None]] = ([], [], [])
             ) -> SideData:
    return side_data(queues=listen_queue_items(replace(snap, uwsgi=(replace(
        snap.uwsgi[0], sockets=(replace(snap.uwsgi[0].sockets[0], queue=queue),)),))),
        somaxconn=4096, fds=fd_items(snap.fds), nginx=nginx_status, history=history)


def side_lines(side: SidePanel) -> list[str]:
    return [strip_text(side.render_line(y)).rstrip()
            for y in range(side.scrollable_content_region.height)]


async def test_side_panel_shows_every_section_as_the_widgets_did() -> None:
    side = SidePanel()
    app = WidgetApp(side)
    async with app.run_test(size=(60, 40)) as pilot:
        side.show(side_for(SIDE_HOST, nginx_status=nginx(dropped=3),
                           history=([1, 5, 93], [2, 3, 4], [None, 40.0, 41.5])))
        await pilot.pause()
        lines = side_lines(side)
        assert lines[0] == "Listen queues · somaxconn 4096"
        queue = next(line for line in lines if line.startswith("uwsgi app.sock"))
        assert "93/100" in queue and "93%" in queue and "(kernel)" in queue
        assert any(line.startswith("nginx :80") and "2/511" in line for line in lines)
        fd_title = lines.index("File descriptors")
        assert lines[fd_title - 1] == ""  # a blank line between sections
        assert lines[fd_title + 1].startswith("uwsgi master") and "18/1024" in lines[
            fd_title + 1]
        assert any(line.startswith("system file-nr") and "3104/9.2E" in line
                   for line in lines)
        assert "Clients" in lines and "no log found" in lines
        assert "LB health check: no health URL" in lines
        assert "nginx" in lines and "dropped 3" in screen_text(app)
        history = lines.index("History · uWSGI")
        assert lines[history + 1].startswith("queue") and lines[history + 1].endswith(
            "93  max 93")
        assert lines[history + 3].startswith("req/s")
        assert lines[history + 3].endswith("42  max 42")  # 41.5 as History shows it
        # the bars line up, as in a GaugeList
        gauges = [line for line in lines if "/" in line and "%" in line]
        assert len({min(line.find(c) % 999 for c in "█░") for line in gauges[:2]}) == 1
        # the styles are the widgets' own component classes: a critical queue is reversed
        seg = next(s for s in side.render_line(1) if "93%" in s.text)
        assert seg.style is not None and seg.style.reverse and seg.style.bold


async def test_side_panel_redraws_only_changed_lines_without_a_layout() -> None:
    side = SidePanel()
    app = WidgetApp(side)
    async with app.run_test(size=(44, 40)) as pilot:
        side.show(side_for(SIDE_HOST, nginx_status=nginx()))
        await pilot.pause()
        before = [side.render_line(y) for y in range(side.line_count)]
        count = side.line_count
        layouts = LayoutCounter(app)
        refreshed: list[tuple[int, int]] = []
        original = side.refresh_lines

        def spy(y: int, n: int = 1) -> None:
            refreshed.append((y, n))
            original(y, n)

        side.refresh_lines = spy  # type: ignore[method-assign,assignment]
        side.show(side_for(SIDE_HOST, queue=7, nginx_status=nginx()))  # one figure moved
        await pilot.pause()
        assert refreshed == [(1, 1)]  # the queue's line, nothing else
        after = [side.render_line(y) for y in range(side.line_count)]
        assert "7/100" in strip_text(after[1])
        assert all(a is b for y, (a, b) in enumerate(zip(before, after, strict=True))
                   if y != 1)  # the other lines' strips are kept, not rendered again
        assert side.line_count == count and layouts.count == 0
        # the same data again: nothing at all
        side.show(side_for(SIDE_HOST, queue=7, nginx_status=nginx()))
        await pilot.pause()
        assert refreshed == [(1, 1)]


async def test_side_panel_taller_than_the_screen_scrolls_to_its_last_line() -> None:
    side = SidePanel()
    app = WidgetApp(side)
    async with app.run_test(size=(44, 12)) as pilot:
        side.show(side_for(SIDE_HOST))
        await pilot.pause()
        layouts = LayoutCounter(app)
        # nginx comes: more lines, the scrollbar stays, no layout of the screen
        side.show(side_for(SIDE_HOST, nginx_status=nginx(), history=([1], [1], [1.0])))
        await pilot.pause()
        assert side.virtual_size.height == side.line_count > 12
        assert layouts.count == 0
        side.scroll_end(animate=False, immediate=True)
        await pilot.pause()
        assert side_lines(side)[-1].startswith("req/s")


async def test_side_panel_shows_untrusted_text_literally() -> None:
    side = SidePanel()
    app = WidgetApp(side)
    async with app.run_test(size=(44, 24)) as pilot:
        side.show(side_data(queues=[GaugeItem("k", "[b]x[/b]\x1b[31m", 1, 10)],
                            nginx_error="[red]refused[/red]\nsecond line"))
        await pilot.pause()
        text = "\n".join(side_lines(side))
        assert "[b]x[/b]" in text and "\x1b" not in text
        assert "[red]refused[/red]" in text and "no listener" not in text
        assert side.section_text("fds") == "no process seen"


async def test_relabel_tab_repaints_without_a_layout_when_the_width_is_the_same() -> None:
    class Tabs(App[None]):
        def compose(self) -> ComposeResult:
            with TabbedContent():
                yield TabPane("web-1", id="host-0")

    app = Tabs()
    async with app.run_test(size=(60, 10)) as pilot:
        tab = app.query_one(TabbedContent).get_tab("host-0")
        relabel_tab(tab, Text("✖ web-1 502 0.5/s"))
        await pilot.pause()
        layouts = LayoutCounter(app)
        relabel_tab(tab, Text("✖ web-1 502 0.6/s"))  # the rate moved: same width
        await pilot.pause()
        assert layouts.count == 0
        assert tab.label.plain == "✖ web-1 502 0.6/s" and "502 0.6/s" in screen_text(app)
        # Narrower: the tab keeps its width (padded) for a while, still without a layout...
        relabel_tab(tab, Text("✖ web-1 502 12/s"), now=time.monotonic() + 5, hold_s=10)
        await pilot.pause()
        assert layouts.count == 0 and "502 12/s" in screen_text(app)
        assert tab.label.cell_length == len("✖ web-1 502 0.6/s")
        # ...and narrows once nothing needed that width for hold_s: the tabs are laid out.
        relabel_tab(tab, Text("✖ web-1 CRIT"), now=time.monotonic() + 20, hold_s=10)
        await pilot.pause()
        assert layouts.count >= 1 and "CRIT" in screen_text(app)
        assert tab.label.plain == "✖ web-1 CRIT"

"""TextLines (widgets/text_lines.py): the header, reading and notice lines, drawn line by line.

What it exists for, each checked here: a poll that changes one line repaints that line only and
lays nothing out; a text that needs fewer lines keeps its height for `hold_s` (rows below do not
move), grows at once, and hides when empty only after the hold; text is shown literally.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import Static

from tests.tui_support import LayoutCounter, screen_text
from widgets.text_lines import TextLines


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(App[None]):
    CSS = "#under { height: 1; } #fixed { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }"

    def __init__(self, lines: TextLines) -> None:
        super().__init__()
        self.lines = lines

    def compose(self) -> ComposeResult:
        yield self.lines
        yield Static("UNDER", id="under")


def row_of(app: App[None], needle: str) -> int:
    return next(i for i, line in enumerate(screen_text(app).splitlines()) if needle in line)


async def test_a_changed_line_is_repainted_alone_without_a_layout() -> None:
    lines = TextLines("alpha 1\nbeta 1\ngamma 1")
    app = Lines(lines)
    async with app.run_test(size=(40, 8)) as pilot:
        await pilot.pause()
        layouts = LayoutCounter(app)
        painted: list[int] = []
        original = lines.render_line

        def counted(y: int):
            painted.append(y)
            return original(y)

        lines.render_line = counted  # type: ignore[method-assign]
        lines.show("alpha 1\nbeta 2\ngamma 1")
        await pilot.pause()
        assert "beta 2" in screen_text(app) and layouts.count == 0
        # Lines 0 and 2 come from their cached Strips, line 1 is drawn anew.
        assert lines._strips.keys() >= {0, 2} and 1 in painted
        painted.clear()
        lines.show("alpha 1\nbeta 2\ngamma 1")  # the same text: nothing at all
        await pilot.pause()
        assert painted == [] and layouts.count == 0


async def test_height_grows_at_once_and_shrinks_only_after_the_hold() -> None:
    clock = Clock()
    lines = TextLines("one", hold_s=10.0, clock=clock)
    app = Lines(lines)
    async with app.run_test(size=(40, 8)) as pilot:
        await pilot.pause()
        assert row_of(app, "UNDER") == 1
        lines.show("one\ntwo")
        await pilot.pause()
        assert row_of(app, "UNDER") == 2  # grows now: nothing is hidden
        clock.now += 3
        lines.show("only one")
        await pilot.pause()
        assert row_of(app, "UNDER") == 2 and "only one" in screen_text(app)  # held
        clock.now += 6
        lines.show("still one")
        await pilot.pause()
        assert row_of(app, "UNDER") == 2
        clock.now += 2  # 11 s since two lines were last needed
        lines.show("now one")
        await pilot.pause()
        assert row_of(app, "UNDER") == 1


async def test_hide_empty_hides_after_the_hold_and_shows_at_once() -> None:
    clock = Clock()
    lines = TextLines(hide_empty=True, hold_s=5.0, clock=clock)
    app = Lines(lines)
    async with app.run_test(size=(40, 8)) as pilot:
        await pilot.pause()
        assert not lines.display and row_of(app, "UNDER") == 0
        lines.show(Text("✖ 502 ×3", style="bold red"))
        await pilot.pause()
        assert lines.display and row_of(app, "UNDER") == 1
        lines.show("")
        await pilot.pause()
        assert lines.display and row_of(app, "UNDER") == 1  # blank, but the rows stay put
        clock.now += 3
        lines.show("")  # still empty: the next poll, within the hold
        await pilot.pause()
        assert lines.display and row_of(app, "UNDER") == 1
        clock.now += 3
        lines.show("")  # still empty, and the hold is over: an unchanged text hides too
        await pilot.pause()
        assert not lines.display and row_of(app, "UNDER") == 0


async def test_long_lines_wrap_or_are_cut_with_an_ellipsis() -> None:
    wrapped = TextLines("GET /a/very/long/uri/that/does/not/fit on one line at all")
    app = Lines(wrapped)
    async with app.run_test(size=(30, 8)) as pilot:
        await pilot.pause()
        rows = screen_text(app).splitlines()
        assert rows[0].rstrip() == "GET" and rows[1].startswith("/a/very/long/uri/that/does/not")
        assert rows[2].startswith("/fit on one line") and row_of(app, "UNDER") == 3
    fixed = TextLines("GET /a/very/long/uri/that/does/not/fit on one line", id="fixed")
    app = Lines(fixed)
    async with app.run_test(size=(30, 8)) as pilot:
        await pilot.pause()
        rows = screen_text(app).splitlines()
        assert rows[0] == "GET /a/very/long/uri/that/doe…" and rows[1].startswith("UNDER")


async def test_text_is_literal_and_styled_from_css_and_its_spans() -> None:
    lines = TextLines(Text("[b]x[/b] \x1b[31m", end=""))
    app = Lines(lines)
    async with app.run_test(size=(40, 8)) as pilot:
        await pilot.pause()
        assert screen_text(app).splitlines()[0].startswith("[b]x[/b]")
        lines.styles.background = "red"
        lines.show(Text("plain", style="bold"))
        await pilot.pause()
        strip = lines.render_line(0)
        assert strip.text.startswith("plain")
        first = next(iter(strip))
        assert first.style is not None and first.style.bold and first.style.bgcolor is not None


async def test_a_fixed_height_that_hides_lines_ends_its_last_row_with_an_ellipsis() -> None:
    lines = TextLines("first line of three\nsecond line\nthird line", id="fixed")
    app = Lines(lines)
    async with app.run_test(size=(30, 8)) as pilot:
        await pilot.pause()
        assert screen_text(app).splitlines()[0].rstrip().endswith("…")  # one row, 3 lines
        lines.show("only one line")
        await pilot.pause()
        assert screen_text(app).splitlines()[0].rstrip() == "only one line"


def test_the_reading_cuts_socket_paths_not_uris() -> None:
    from widgets.host_header import short_paths

    text = ("502 ×31 in 33 s: uWSGI listen queue full on unix:/tmp/stackmon-demo-3bs_oeeg/"
            "uwsgi.sock (×29); 2 request(s) past the critical age; oldest 24 s: worker 3 GET "
            "/hang/api/v1/orders?page=7")
    short = short_paths(text)
    assert "unix:…/uwsgi.sock (×29)" in short and "GET /hang/api/v1/orders?page=7" in short
    assert short_paths("queue /run/app.sock at 33/32") == "queue /run/app.sock at 33/32"

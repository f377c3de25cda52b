"""A figure and its unit stay on one line wherever text is wrapped (widgets.unit_wrap): at 80
columns the reading said "oldest 21" / "s: worker 3", the notice "within 2" / "s"."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult

from tests.tui_support import screen_text
from widgets.text_lines import TextLines
from widgets.unit_wrap import break_offsets, wrap_keeping_units, wrap_line

READING = "2 request(s) past the critical age; oldest 21 s: worker 3 GET /hang/x"


def test_a_number_and_its_unit_are_never_split():
    for width in range(12, len(READING) + 1):
        lines = [t.plain for t in wrap_line(Text(READING), width)]
        assert all(len(line) <= width for line in lines), (width, lines)
        assert " ".join(lines) == READING
        assert not any(line.endswith(" 21") or line.startswith("s:") for line in lines), lines
    assert wrap_keeping_units(Text("no answer within 2 s"), 18).plain == "no answer within\n2 s"


def test_a_word_wider_than_the_line_is_folded_and_the_next_words_follow_it():
    line = "GET /a/very/long/uri/that/does/not/fit on one line"
    assert [t.plain for t in wrap_line(Text(line), 12, fold=True)] == [
        "GET", "/a/very/long", "/uri/that/do", "es/not/fit", "on one line"]
    assert break_offsets("日本語の長い単語", 5, fold=True) == [2, 4, 6]  # 2 cells each
    kept = wrap_line(Text("x " + "y" * 20), 8)  # no fold: the caller cuts it
    assert [t.plain for t in kept] == ["x", "y" * 20]


def test_styles_follow_the_text_they_were_on():
    text = Text("oldest ")
    text.append("21 s", style="bold")
    text.append(": worker 3")
    first, second = wrap_line(text, 14)
    assert (first.plain, second.plain) == ("oldest 21 s:", "worker 3")
    assert [first.plain[span.start:span.end] for span in first.spans
            if span.style == "bold"] == ["21 s"]


class _Lines(App[None]):
    def compose(self) -> ComposeResult:
        yield TextLines(READING)


async def test_text_lines_wrap_keeping_units() -> None:
    app = _Lines()
    async with app.run_test(size=(46, 6)) as pilot:
        await pilot.pause()
        rows = [row.rstrip() for row in screen_text(app).splitlines()[:2]]
        assert rows == ["2 request(s) past the critical age; oldest",
                        "21 s: worker 3 GET /hang/x"], rows


def test_units_kept_wraps_at_the_width_it_is_drawn_at():
    """The stack screen's head after a kill said "... (respawn #1) in 0.2" / "s" at 80x24."""
    from rich.console import Console

    from widgets.unit_wrap import UnitsKept

    message = ("worker 2: pid 3188 killed with TERM, respawned as pid 3226 (respawn #1) in "
               "0.2 s")
    for width in range(60, 80):
        console = Console(width=width, record=True, color_system=None)
        console.print(UnitsKept(Text(message)))
        lines = [line.rstrip() for line in console.export_text().splitlines()]
        assert not any(line.endswith(" 0.2") for line in lines), (width, lines)
        assert " ".join(lines) == message


def test_a_no_break_space_keeps_a_label_with_its_figure() -> None:
    """"respawns" / "0" at the end of the kill dialog's line at 80 columns: joined by NBSP they
    move together (Python's \\s matches NBSP, so it had been a break like any space)."""
    from widgets.unit_wrap import NBSP

    line = f"uWSGI 127.0.0.1:40665   status{NBSP}busy   requests{NBSP}served{NBSP}0   " \
           f"respawns{NBSP}0"
    for width in range(20, len(line)):
        rows = wrap_keeping_units(Text(line), width).plain.split("\n")
        assert all(not row.endswith("respawns") and not row.endswith("requests")
                   and not row.endswith("status") for row in rows), (width, rows)
        assert any(f"respawns{NBSP}0" in row for row in rows)

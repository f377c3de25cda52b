"""Lines drawn from (text, style) pieces are the lines the rich Text path drew, segment for
segment.

WorkerList and line_strip (TextLines, SidePanel) used to build a rich Text per line and render
it (60-90 us a line); they now build segments directly (widgets.text_lines.pieces_strip and
line_strip's fast path). Nothing on screen may change, so this file keeps the Text path as the
reference: `TextWorkerList` is the WorkerList's rendering as it was (copied from the widget
before the change), `text_line_strip` line_strip as it was. Both paths draw the same workers
(long URIs, wide characters, control characters, dead, cursor, deadlines, held lines, cheap
workers) at several widths, focused or not, with and without NO_COLOR, and every Strip must be
equal: the same text in the same segments with the same styles.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Span, Text
from textual.app import App, ComposeResult
from textual.strip import Strip

from stackmon.model import Core, Deadline, Request, Worker
from stackmon.render_text import human_age
from tests.test_widgets import NOW, req, worker
from widgets import worker_list as wl_module
from widgets._fmt import ellipsize, plain
from widgets.text_lines import Piece, line_strip, pieces_strip
from widgets.worker_list import (
    CURSOR_MARK,
    DEADLINE_FULL_WIDTH,
    DEADLINE_MEDIUM,
    DEADLINE_SHORT,
    FROM,
    HOST_COLUMN_MIN_SPAN,
    HOST_WIDTH,
    LEVEL_LABELS,
    MIN_URI_WIDTH,
    NARROW_WIDTH,
    NO_MARK,
    NOT_CAPTURED,
    WorkerList,
    _Header,
    _RequestLine,
    _short_field,
    client_gone,
    deadline_text,
)

# ------------------------------------------------------------------ the Text path (reference)


def text_line_strip(line: Text | None, width: int, base: Style, console: Console,
                    overflow: str = "ellipsis") -> Strip:
    """line_strip before the change."""
    if line is None:
        return Strip([Segment(" " * width, base)], width)
    text = line.copy()
    text.end = ""
    text.truncate(width, overflow=overflow, pad=True)  # type: ignore[arg-type]
    return Strip(text.render(console, end=""), width).apply_style(base)


def text_pieces_strip(pieces: list[Piece], width: int, line_style: Style,
                      overlays: tuple[Style, ...] = (), rstrip: bool = False) -> Strip:
    """What pieces_strip's docstring says it gives, through a rich Text."""
    text = Text(no_wrap=True, end="")
    for piece, style in pieces:
        text.append(piece, style)
    if rstrip:
        text.rstrip()
    for overlay in overlays:
        text.stylize(overlay)
    text.style = line_style
    text.truncate(width, overflow="ellipsis", pad=True)
    return Strip(text.render(Console(), end=""), width)


class TextWorkerList(WorkerList):
    """The WorkerList's rendering through rich Text, as it was before pieces_strip."""

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if width != self._strip_width:
            self._strips.clear()
            self._strip_width = width
        line_no = round(self.scroll_y) + y
        if line_no >= len(self._lines):
            content_lines = max(1, len(self._lines))
            if line_no == 0 and not self._lines:
                return self._text_strip(self._old_empty_text(), width, False)
            if self._cheap and line_no == content_lines:
                return self._text_strip(self._old_cheap_text(), width, False)
            return Strip.blank(width, self._line_style(False))
        wid, sub = self._lines[line_no]
        if sub > len(self._blocks[wid].requests):
            # The one deliberate change: this was Text("      ⋯ ended", muted) whose own style
            # _text_strip replaced, a segment without any style, which crashed the app under
            # NO_COLOR (test_held_line_under_no_color below).
            held = "      ⋯ no longer in flight"
            return self._text_strip(Text(no_wrap=True, end="").append(held,
                                                                       self._style("muted")),
                                    width, False)
        is_cursor = sub == 0 and wid == self._cursor
        cache = self._strips.setdefault(wid, {})
        strip = cache.get((sub, is_cursor))
        if strip is None:
            block = self._blocks[wid]
            if sub == 0:
                text = self._old_header_text(block.header, is_cursor, width)
            else:
                text = self._old_request_text(block.requests[sub - 1], width)
            strip = cache[(sub, is_cursor)] = self._text_strip(text, width, is_cursor)
        return strip

    def _text_strip(self, text: Text, width: int, is_cursor: bool) -> Strip:
        if is_cursor:
            text.stylize(self._line_style(True))
        text.style = self._line_style(is_cursor)
        text.truncate(width, overflow="ellipsis", pad=True)
        return Strip(text.render(self.app.console, end=""), width)

    def _old_cheap_text(self) -> Text:
        text = Text(no_wrap=True, end="")
        text.append(f"  {self._cheap} cheap", self._style("idle"))
        text.append(" (not spawned: cheaper mode starts them under load)", self._style("muted"))
        return text

    def _old_empty_text(self) -> Text:
        text = Text(no_wrap=True, end="")
        if self._cheap and not self._blocks:
            text.append("  no spawned worker", self._style("muted"))
        elif self._blocks and self._filter:
            text.append("  no worker matches ", self._style("muted"))
            text.append(plain(self._filter), self._style("muted"))
        else:
            text.append("  no workers", self._style("muted"))
        return text

    def _old_header_text(self, w: _Header, is_cursor: bool, width: int) -> Text:
        label = self._style("label")
        alert = self._style("alert")
        status = plain(w.status)
        if w.pid == 0:
            state = "dead"
            status = "dead" if status == "idle" else status
        elif w.busy:
            state = "busy"
        else:
            state = "idle"
        status_style = self._style(state)
        if state == "busy" and w.level != "ok":
            status_style = status_style + self._style(w.level)
        status = ellipsize(status, 6)
        no_style = Style()
        fields: list[tuple[float, str, str, Style]] = [
            (0, "", CURSOR_MARK if is_cursor else NO_MARK, no_style),
            (0, "", f"#{w.id:<3} ", self._style("id")),
            (0, "", status + " " * (7 - cell_len(status)), status_style),
            (0, "pid ", f"{w.pid:<7} " if w.pid else "-       ",
             no_style if w.pid else status_style),
            (1.5, "", _short_field(w.short, width), self._style("busy")),
            (4, "req ", f"{w.requests:<6} ", no_style),
            (2, "exc ", f"{w.exceptions:<3} ", alert if w.exceptions else no_style),
            (1, "hk ", f"{w.harakiri_count:<2} ", alert if w.harakiri_count else no_style),
            (6, "resp ", f"{w.respawns:<2} ", no_style),
            (3, "avg ", f"{w.avg:>5} ", no_style),
            (5, "rss ", w.rss, no_style),
        ]
        total = sum(len(caption) + cell_len(value) for _, caption, value, _ in fields)
        while total > width and fields[-1][0] > 0:
            drop = max(range(len(fields)), key=lambda i: fields[i][0])
            _, caption, value, _ = fields.pop(drop)
            total -= len(caption) + cell_len(value)
        text = Text(no_wrap=True, end="")
        for _, caption, value, style in fields:
            if caption:
                text.append(caption, label)
            text.append(value, style)
        text.rstrip()
        if w.pid == 0:
            text.stylize(self._style("dead"))
        return text

    def _old_deadline_text(self, text: Text, d: Deadline, width: int) -> None:
        narrow = width < NARROW_WIDTH
        words = deadline_text(d, width)
        if client_gone(d):
            style = self._style("critical-label")
        elif d.past:
            style = self._style("critical")
        else:
            style = self._style("slow") if d.after_s < 5 else self._style("label")
        if not narrow:
            text.append("· ", self._style("label"))
        text.append(words, style)
        column = (DEADLINE_SHORT if narrow else
                  self._deadline_held[0] if width >= DEADLINE_FULL_WIDTH else DEADLINE_MEDIUM)
        text.append(" " * max(1, column - cell_len(words) + 1))

    def _old_request_text(self, r: _RequestLine, width: int) -> Text:
        narrow = width < NARROW_WIDTH
        wide = r.deadline is not None and width >= DEADLINE_FULL_WIDTH
        span = min(width, self._span(wide))  # the layout policy is the widget's own
        line_style = self._style(r.level) if r.level != "ok" else Style()
        text = Text(no_wrap=True, end="")
        text.append(" " if narrow else "  ")
        if r.level == "ok":
            text.append(LEVEL_LABELS["ok"])
        else:
            text.append(LEVEL_LABELS[r.level], self._style(f"{r.level}-label"))
        text.append(f" {human_age(r.age):>6} ", line_style + Style(bold=True))
        if r.deadline is not None:
            self._old_deadline_text(text, r.deadline, width)
        if not narrow:
            core = f"c{r.core}" if r.core >= 0 else "c?"
            text.append(f"{core:<3} ", self._style("label"))
        captured = bool(r.method or r.uri)
        method = ellipsize(plain(r.method), 7)
        method_width = (cell_len(method) + 1 if narrow else 8) if captured else 0
        remote = ellipsize(plain(r.remote_addr), 24)
        host = ellipsize(plain(r.host), HOST_WIDTH) if span >= HOST_COLUMN_MIN_SPAN else ""
        host = host + " " * (HOST_WIDTH - cell_len(host)) if host else ""
        host_width = HOST_WIDTH + 2 if host else 0
        tail_width = len(FROM) + cell_len(remote) if remote else 0
        room = span - text.cell_len
        uri_room = room - tail_width - host_width - method_width
        uri_len = cell_len(plain(r.uri)) if captured else len(NOT_CAPTURED)
        if uri_room < uri_len and host:  # the layout policy is the widget's (mirrored)
            uri_room += host_width
            host_width, host = 0, ""
        if uri_room < min(uri_len, MIN_URI_WIDTH):
            tail_width = host_width = 0
            remote = host = ""
        what_width = room - tail_width - host_width - method_width
        if captured:
            text.append(method + " " * (method_width - cell_len(method)), line_style)
            what = ellipsize(plain(r.uri), what_width)
            text.append(what, line_style)
        else:
            what = ellipsize(NOT_CAPTURED, what_width)
            text.append(what, self._style("muted"))
        if remote or host:
            text.append(" " * max(0, what_width - cell_len(what)))
        if host:
            text.append("  ")
            text.append(host, self._style("label"))
        if remote:
            text.append(FROM, self._style("label"))
            text.append(remote, line_style)
        return text


# ------------------------------------------------------------------------------ the workers


def _with(r: Request, **changes: object) -> Request:
    return replace(r, **changes)  # type: ignore[arg-type]


def _deadline(name: str, after: float, limit: float = 60.0) -> Deadline:
    return Deadline(name, after, limit, "nginx.conf:40")  # type: ignore[arg-type]


LONG_URI = "/api/v1/orders/" + "x" * 150 + "?page=7&sort=created"
WIDE_URI = "/検索/商品?q=日本語のとても長いクエリ文字列" * 3 + "/🙂👍🏽/e\u0301"
CONTROL_URI = "/a\x1b[31mred\x07\r\n\tb\x7f\x9b/" + "\u200d" * 3 + "z"

WORKERS: list[Worker] = [
    worker(1, req(0, LONG_URI, 31, "critical", method="PROPPATCH-LONG",
                  remote="2001:db8::1234:5678:9abc:def0:1"),
           _with(req(1, WIDE_URI, 12, "slow"), host="検索.例え.jp",
                 deadlines=(_deadline("nginx_read_timeout", 3.2),)),
           _with(req(2, CONTROL_URI, 25, "critical", method="G\x1bET", remote="10.\r0.0.9"),
                 host="evil\x1b]0;title\x07.example",
                 deadlines=(_deadline("nginx_read_timeout", -5.0),
                            _deadline("harakiri", 40.0, 90.0)))),
    worker(2, exceptions=3, harakiri=1, status="busy\x1b[2J"),
    worker(3, pid=0, status="idle", served=0),
    worker(4, req(0, "", None, method="", remote=""), exceptions=2, harakiri=1),
    replace(worker(5, _with(req(0, "/slow?s=5", 70, "critical"),
                            deadlines=(_deadline("harakiri", -3.0),),
                            host="h" * 40)), status="sig9-very-long-status"),
    replace(worker(6, _with(req(0, "/lb", 8, "slow"),
                            deadlines=(_deadline("lb_idle_timeout", -1.0),))),
            avg_rt_ms=123456.0, rss=0),
    replace(worker(7, req(0, "/short", 1, "ok"), req(1, "/short2", 2, "ok")),
            cores=(Core(0, 1, True, None), Core(1, 2, True, req(1, "/q", 2, "ok")))),
    worker(0, pid=0, status="cheap"),  # not spawned (cheaper mode): the summary line
]

WIDTHS = [1, 2, 20, 40, 63, 64, 69, 70, 80, 111, 120, 129, 130, 143, 200]


class OneList(App[None]):
    """One list and nothing else; focused only when asked (no automatic focus)."""

    AUTO_FOCUS = None
    CSS = "WorkerList { height: 30; }"

    def __init__(self, wl: WorkerList) -> None:
        super().__init__()
        self.wl = wl

    def compose(self) -> ComposeResult:
        yield self.wl


def _all_strips(wl: WorkerList) -> list[Strip]:
    wl._strips.clear()
    return [wl.render_line(y) for y in range(wl.line_count + 2)]


async def _draw(cls: type[WorkerList], width: int, focus: bool) -> list[list[Strip]]:
    """Every line of the list, at each step of a little story."""
    wl = cls()
    app = OneList(wl)
    drawn: list[list[Strip]] = []
    async with app.run_test(size=(width, 40)) as pilot:
        wl.set_workers(WORKERS, NOW)
        if focus:
            wl.focus()
        await pilot.pause()
        assert wl.line_count > 5
        drawn.append(_all_strips(wl))
        # Requests end: held lines ("⋯ no longer in flight"), the cursor on the dead worker.
        wl.set_workers([replace(w, cores=()) if w.id == 1 else w for w in WORKERS], NOW + 1)
        wl.cursor_worker_id = 3
        await pilot.pause()
        drawn.append(_all_strips(wl))
        wl.set_filter("nothing\x1b[0m matches this 検索")  # no worker matches
        await pilot.pause()
        drawn.append(_all_strips(wl))
        wl.set_filter("")
        wl.set_workers([WORKERS[-1]], NOW + 2)  # only cheap workers
        await pilot.pause()
        drawn.append(_all_strips(wl))
    return drawn


def _assert_same(new: list[Strip], old: list[Strip]) -> None:
    assert len(new) == len(old)
    for y, (a, b) in enumerate(zip(new, old, strict=True)):
        assert list(a) == list(b), f"line {y}:\n{list(a)}\n!=\n{list(b)}"
        assert a.cell_length == b.cell_length


async def _compare(width: int, focus: bool) -> None:
    new = await _draw(WorkerList, width, focus)
    old = await _draw(TextWorkerList, width, focus)
    assert len(new) == len(old) == 4
    for step_new, step_old in zip(new, old, strict=True):
        _assert_same(step_new, step_old)


@pytest.mark.parametrize("width", WIDTHS)
async def test_worker_lines_equal_the_text_path(width: int) -> None:
    await _compare(width, focus=width % 2 == 0)


@pytest.mark.parametrize("width", [40, 80, 143, 200])
async def test_worker_lines_equal_the_text_path_no_color(
        width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    await _compare(width, focus=True)


def test_reference_is_not_vacuous() -> None:
    """The comparison sees a difference in style alone (the Text path is not compared with
    itself, and styles are part of what is compared)."""
    pieces: list[Piece] = [("  ", None), ("▲ SLOW", Style(color="yellow", reverse=True))]
    good = pieces_strip(pieces, 20, Style(bgcolor="black"))
    assert list(good) == list(text_pieces_strip(pieces, 20, Style(bgcolor="black")))
    bad = text_pieces_strip(pieces, 20, Style(bgcolor="blue"))
    assert [s.text for s in good] == [s.text for s in bad] and list(good) != list(bad)


# ---------------------------------------------------------------------- randomised pieces

STYLES: list[Style | None] = [
    None, Style(), Style(bold=True), Style(color="red"), Style(color="yellow", reverse=True),
    Style(italic=True, bgcolor="blue"), Style(bold=False, color="#808080"),
    Style(meta={"k": 1}),
]
CHUNKS = ["", " ", "  ", "ab", "abc def", "中文", "e\u0301", "🙂", "👍🏽", "\u200d", "…",
          "x" * 30, "\r", "a\x07b", "\x0b\x0c", "tail   ", "\t", "   "]


def _random_pieces(rng: random.Random) -> list[Piece]:
    return [(rng.choice(CHUNKS), rng.choice(STYLES)) for _ in range(rng.randint(0, 9))]


def test_pieces_strip_equals_the_text_path_randomised() -> None:
    rng = random.Random(1234)
    overlay_choices: list[tuple[Style, ...]] = [
        (), (Style(italic=True),), (Style(bgcolor="green"),),
        (Style(italic=True, color="grey50"), Style(bgcolor="green", bold=True)), (Style(),)]
    for _ in range(4000):
        pieces = _random_pieces(rng)
        width = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 40])
        line_style = rng.choice([Style(), Style(bgcolor="black", color="white"),
                                 Style(bgcolor="#303030")])
        overlays = rng.choice(overlay_choices)
        rstrip = rng.random() < 0.5
        cache: dict[Style, Style] = {}
        new = pieces_strip(pieces, width, line_style, overlays, rstrip=rstrip, cache=cache)
        old = text_pieces_strip(pieces, width, line_style, overlays, rstrip)
        assert list(new) == list(old), (pieces, width, line_style, overlays, rstrip)
        assert new.cell_length == old.cell_length


def _random_text(rng: random.Random) -> Text:
    """Lines as the widgets build them (appends, a style of their own, a span over the whole
    line before or after the others) and some they do not (overlapping spans)."""
    text = Text(end="")
    for piece, style in _random_pieces(rng):
        text.append(piece, style)
    if rng.random() < 0.3:
        own: list[str | Style] = ["", "dim", "bold red", Style(underline=True)]
        text.style = rng.choice(own)
    size = len(text)
    roll = rng.random()
    if roll < 0.2:
        under: list[str | Style] = ["dim", Style(color="green")]
        text.stylize_before(rng.choice(under))
    elif roll < 0.35:
        text.stylize(Style(bgcolor="red"))
    elif roll < 0.45 and size > 2:
        text.spans.append(Span(1, size - 1, "italic"))  # overlaps the others
    elif roll < 0.5 and size > 2:
        text.spans.insert(0, Span(size - 1, size, "bold"))  # out of order
    return text


def test_line_strip_equals_the_text_path_randomised() -> None:
    rng = random.Random(99)
    console = Console()
    for _ in range(4000):
        line = _random_text(rng)
        before = (line.plain, list(line.spans), line.style)
        width = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 40, 80])
        base = rng.choice([Style(), Style(bgcolor="black", color="white"), Style(bold=True)])
        overflow = rng.choice(["ellipsis", "crop"])
        new = line_strip(line, width, base, console, overflow)  # type: ignore[arg-type]
        old = text_line_strip(line, width, base, console, overflow)
        assert list(new) == list(old), (line.plain, line.spans, line.style, width, base)
        assert new.cell_length == old.cell_length
        assert (line.plain, list(line.spans), line.style) == before  # the line is not changed
    assert list(line_strip(None, 7, Style(bold=True), console)) == \
        list(text_line_strip(None, 7, Style(bold=True), console))


def test_worker_list_module_has_no_text_path_left() -> None:
    """The widget draws through pieces only (the reference above is the one Text path)."""
    assert not hasattr(wl_module, "Text")


async def test_held_line_under_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request line held after its request ended ("⋯ no longer in flight") is drawn muted
    over the line style; it had no style at all, and Textual's Monochrome filter (NO_COLOR) raised
    AttributeError on it: the app crashed when a slow request ended."""
    monkeypatch.setenv("NO_COLOR", "1")
    wl = WorkerList()
    app = OneList(wl)
    async with app.run_test(size=(80, 24)) as pilot:
        wl.set_workers([worker(1, req(0, "/slow", 12))], NOW)
        await pilot.pause()
        wl.set_workers([worker(1)], NOW + 1)  # the request ended: its line is held
        await pilot.pause()
        ended = wl.render_line(1)
        assert ended.text.startswith("      ⋯ no longer in flight")
        assert all(segment.style is not None for segment in ended)
        assert wl.render_line(1).text == ended.text
        screen = app.export_screenshot()
        assert "flight" in screen  # a frame was drawn with it (the crash was in the frame)

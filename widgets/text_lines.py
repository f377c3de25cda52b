"""TextLines: a few lines of text (a header, the reading, a notice) drawn line by line.

Why not a Static: on the live demo at 120x36 (bench/bench_tui_cpu.py, and a timer around each
widget's render), a Static re-rendered its whole content through Textual's Visual pipeline on
every refresh (0.4-0.6 ms for the one-line host header, every poll), and a text that wrapped to
one more or one fewer line laid out the whole screen (about 20 ms, then a second frame). Here
each line is one Strip, kept until that line's text changes; a new text refreshes only the lines
that differ; the screen is laid out again only when the number of lines changes.

`hold_s`: a text that needs fewer lines keeps its height for that long before it shrinks (and an
empty one stays shown, blank, when `hide_empty`). The reading went from two lines to one and
back every few seconds under the demo's traffic, and every row below it moved with it: rows that
keep their place are what the on-call engineer reads, and each move cost a relayout.

Styling comes from CSS as for a Static: the widget's colour, background and text style under
each line's own spans; `text-wrap: nowrap` shows each line cut at the width (`text-overflow:
ellipsis` with a `…`), otherwise long lines wrap at word boundaries. Text is plain text, never
markup: callers pass rich Text or str and nothing in it is interpreted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from rich.cells import cell_len, set_cell_size
from rich.console import Console, OverflowMethod
from rich.control import STRIP_CONTROL_CODES, strip_control_codes
from rich.segment import Segment
from rich.style import Style
from rich.text import Span, Text
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.widget import Widget

from widgets.unit_wrap import wrap_line


def _plain_text(content: Text | str) -> Text:
    """`content` as a Text whose own style is a span (Text equality and Text.render on a line
    without spans both ignore Text.style)."""
    text = Text(content, end="") if isinstance(content, str) else content.copy()
    text.end = ""
    if text.style:
        text.stylize_before(text.style)
        text.style = ""
    return text


class TextLines(Widget):
    """Lines of text through the line API; `show(text)` on every poll is cheap when little
    changed. `content` is the text shown (what a test or a paste reads)."""

    DEFAULT_CSS = "TextLines { height: auto; }"

    def __init__(self, content: Text | str = "", *, hold_s: float = 0.0,
                 hide_empty: bool = False, clock: Callable[[], float] = time.monotonic,
                 name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._content = _plain_text(content)
        self._hold_s = hold_s
        self._hide_empty = hide_empty
        self._clock = clock
        self._width = -1  # the width self._lines were wrapped for (-1: not yet)
        self._lines: list[Text] = []
        self._strips: dict[int, Strip] = {}
        self._base: Style | None = None
        self._reserved = 1 if self._content.plain else 0  # the rows the last layout gave it
        self._needed_at = 0.0  # when the text last needed all of it
        if hide_empty and not self._content.plain:
            self.display = False

    @property
    def content(self) -> Text:
        return self._content

    @property
    def hide_empty(self) -> bool:
        return self._hide_empty

    @hide_empty.setter
    def hide_empty(self, hide: bool) -> None:
        """Whether an empty text hides the widget (after the hold); False shows it at once and
        keeps it shown, empty or not: a row that never comes and goes moves nothing."""
        if hide == self._hide_empty:
            return
        self._hide_empty = hide
        if not hide:
            self.display = True
            self._reserved = max(self._reserved, 1)

    def render(self) -> Text:
        """The whole text (Textual draws through render_line; this is for tests and pastes)."""
        return self._content.copy()

    def show(self, content: Text | str) -> None:
        """Show `content`: nothing happens when it is what is shown, only the lines that
        differ are redrawn, and the screen is laid out only when the height must change."""
        text = _plain_text(content)
        if text == self._content:
            if self._width >= 0 and self._reserved > self._rows(len(self._lines)):
                self._resize_for(len(self._lines))  # a shrink held back may be due now
            return
        self._content = text
        if self._width < 0 or not self.is_mounted:
            # Not drawn yet: the width (so the line count) is known at the next layout.
            self._reserved = 1 if text.plain else 0
            self._needed_at = self._clock()
            self._set_display(bool(text.plain))
            self.refresh(layout=True)
            return
        old, self._lines = self._lines, self._wrap(text, self._width)
        changed = [y for y in range(max(len(old), len(self._lines)))
                   if y >= len(old) or y >= len(self._lines) or old[y] != self._lines[y]]
        if len(old) != len(self._lines) and self.size.height > 0:
            changed.append(self.size.height - 1)  # the last row may gain or lose its "…"
        for y in changed:
            self._strips.pop(y, None)
        if self._resize_for(len(self._lines)):
            return
        width = self.size.width
        for y in changed:
            self.refresh(Region(0, y, width, 1))

    # --- height -----------------------------------------------------------------------------

    def _auto_height(self) -> bool:
        height = self.styles.height
        return height is None or height.is_auto

    def _resize_for(self, count: int) -> bool:
        """Give the text the rows its `count` lines need, if that must change now (True: the
        widget is laid out and repainted whole). A fixed-height widget only ever needs to be
        shown or hidden (`hide_empty`)."""
        auto = self._auto_height()
        needed = self._rows(count)
        now = self._clock()
        if needed >= self._reserved:
            self._needed_at = now
        if needed == self._reserved or (needed < self._reserved
                                         and now - self._needed_at < self._hold_s):
            return False
        self._reserved = needed
        shown = self.display
        self._set_display(needed > 0)
        if auto:
            self.refresh(layout=True)
            return True
        return self.display != shown

    def _rows(self, count: int) -> int:
        """The rows `count` lines need: all of them with an auto height, else whether any."""
        return count if self._auto_height() else min(count, 1)

    def _set_display(self, shown: bool) -> None:
        if self._hide_empty and self.display != shown:
            self.display = shown

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        if width != self._width:
            self._rewrap(width)
            self._reserved = len(self._lines)
            self._needed_at = self._clock()
        return max(self._reserved, len(self._lines), 1)

    # --- drawing ----------------------------------------------------------------------------

    def _rewrap(self, width: int) -> None:
        self._width = width
        self._lines = self._wrap(self._content, width)
        self._strips.clear()

    def _wrap(self, text: Text, width: int) -> list[Text]:
        if not text.plain:
            return []
        lines = text.split("\n", allow_blank=True)
        if self.styles.text_wrap == "nowrap" or width <= 0:
            return list(lines)
        out: list[Text] = []
        for line in lines:
            if line.cell_len <= width:  # most lines: no split, no divide
                out.append(line)
                continue
            # Broken between words, a figure kept with its unit (widgets.unit_wrap); a word
            # wider than the line (a long URI) is folded.
            out.extend(wrap_line(line, width, fold=True))
        return out

    def notify_style_update(self) -> None:
        """Classes or theme changed: every cached Strip carries old colours."""
        super().notify_style_update()
        self._base = None
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if width != self._width:
            count = len(self._lines)
            self._rewrap(width)
            if len(self._lines) != count and self._auto_height():
                self.call_after_refresh(self.refresh, layout=True)
        strip = self._strips.get(y)
        if strip is None:
            strip = self._strips[y] = self._line_strip(y, width)
        return strip

    def _line_strip(self, y: int, width: int) -> Strip:
        base = self._base
        if base is None:
            base = self._base = self.rich_style
        overflow: OverflowMethod = "ellipsis" if self.styles.text_overflow == "ellipsis" \
            else "crop"
        line = self._lines[y] if y < len(self._lines) else None
        if line is not None and not self._auto_height() and y == self.size.height - 1 \
                and len(self._lines) > self.size.height and width > 1:
            # More lines than rows: the last row says so (the reading's critical part was
            # once cut off at 80 columns with nothing to show it).
            line = line.copy()
            line.truncate(width - 1, overflow="crop")
            line.append("…")
        return line_strip(line, width, base, self.app.console, overflow)


# A piece of a line: its text (plain already: widgets._fmt.plain) and its style, None for the
# line's own. Lines built from pieces skip rich.text.Text: Text.append / truncate / render cost
# 40-80 us a line here (Text.render sorts span events and combines a style stack for every
# segment), and a poll redraws a dozen lines or more.
Piece = tuple[str, Style | None]
_Run = tuple[int, int, Style]
_NULL = Style.null()
# What rich's strip_control_codes removes (Text.append, Text.plain): a search finds them
# ten times faster than str.translate with its table takes to copy a line without them.
_STRIPPED = re.compile("[" + "".join(chr(c) for c in STRIP_CONTROL_CODES) + "]")


def line_strip(line: Text | None, width: int, base: Style, console: Console,
               overflow: OverflowMethod = "ellipsis") -> Strip:
    """One line of a line-API widget: `line` cut or padded to `width`, over the widget's own
    style `base` (as a Static draws it); None: a blank line in that style.

    Segment for segment what `_text_strip` makes (copy, truncate with pad, render, apply
    `base`): a line that fits and whose spans are laid out simply (one after the other, with
    spans over the whole line before or after them, as appends and `_plain_text` make them)
    is turned into segments here; any other goes through rich's Text."""
    if line is None:
        return Strip([Segment(" " * width, base)], width)
    plain = line.plain
    length = cell_len(plain)
    if length > width or _STRIPPED.search(plain):
        return _text_strip(line, width, base, console, overflow)
    padded = plain + " " * (width - length) if length < width else plain
    spans = line.spans
    if not spans:  # Text.render ignores Text.style when there are no spans
        return Strip([Segment(padded, base or None)], width)
    layers = _layers(spans, len(plain))
    if layers is None:
        return _text_strip(line, width, base, console, overflow)
    under, runs, over = layers
    get_style = console.get_style
    own = get_style(line.style, default=_NULL)
    prefix = own
    for span in under:
        prefix = prefix + get_style(span.style, default=_NULL)
    return Strip(_segments(
        padded, [(start, end, get_style(style, default=_NULL)) for start, end, style in runs],
        prefix, [get_style(span.style, default=_NULL) for span in over], own,
        len(plain) if under or over else -1, base or None, {}), width)


def _text_strip(line: Text, width: int, base: Style, console: Console,
                overflow: OverflowMethod) -> Strip:
    """The line through rich's Text: what line_strip gives, for any line."""
    text = line.copy()
    text.end = ""
    text.truncate(width, overflow=overflow, pad=True)
    return Strip(text.render(console, end=""), width).apply_style(base)


def _layers(spans: list[Span], size: int) -> tuple[list[Span], list[Span], list[Span]] | None:
    """`spans` as (spans over the whole text first, spans one after the other, spans over the
    whole text last), or None when they are not laid out that way (overlapping, out of
    order). Text.render combines the styles of the spans over a character in list order: for
    this layout, the under ones, the one run, the over ones."""
    count = len(spans)
    first = 0
    while first < count and spans[first].start == 0 and spans[first].end == size:
        first += 1
    last = count
    while last > first and spans[last - 1].start == 0 and spans[last - 1].end == size:
        last -= 1
    pos = 0
    for index in range(first, last):
        start, end, _ = spans[index]
        if start < pos or end < start or end > size:
            return None
        pos = end
    return spans[:first], spans[first:last], spans[last:]


def _segments(plain: str, runs: list[_Run], prefix: Style, over: list[Style], outer: Style,
              cover_end: int, base: Style | None, cache: dict[Style, Style]) -> list[Segment]:
    """The segments Text.render gives for `plain` with `runs` (spans one after the other) and
    spans over [0, cover_end) (-1: none): a run's style is prefix + its own + `over`, the
    rest before cover_end prefix + `over`, the rest after it `outer`; each then put over
    `base` as Strip.apply_style does (None: not). `cache` holds a run style's result for these
    same prefix, over and base (the caller may keep it across lines)."""
    inner = prefix
    for style in over:
        inner = inner + style
    if base is not None:
        inner, outer = base + inner, base + outer
    segments: list[Segment] = []
    append = segments.append
    pos = 0
    for start, end, style in runs:
        if start > pos:
            append(Segment(plain[pos:start], inner))
        if end > start:
            combined = cache.get(style)
            if combined is None:
                combined = prefix + style
                for layer in over:
                    combined = combined + layer
                if base is not None:
                    combined = base + combined
                cache[style] = combined
            append(Segment(plain[start:end], combined))
        pos = end
    size = len(plain)
    if pos < size:
        if pos < cover_end < size:
            append(Segment(plain[pos:cover_end], inner))
            append(Segment(plain[cover_end:], outer))
        else:
            append(Segment(plain[pos:], inner if pos < cover_end else outer))
    return segments


def pieces_strip(pieces: list[Piece], width: int, line_style: Style,
                 overlays: tuple[Style, ...] = (), *, rstrip: bool = False,
                 cache: dict[Style, Style] | None = None) -> Strip:
    """The Strip of a line made of `pieces`, segment for segment what this gives (the worker
    list's way, see tests/test_line_render.py):

        text = Text(no_wrap=True, end="")
        for piece, style in pieces: text.append(piece, style)
        if rstrip: text.rstrip()
        for overlay in overlays: text.stylize(overlay)
        text.style = line_style
        text.truncate(width, overflow="ellipsis", pad=True)
        Strip(text.render(console, end=""), width)

    `cache`: run styles combined with `line_style` and `overlays`, for callers that draw many
    lines with the same ones (drop it when they change)."""
    plain, runs = _collect(pieces, False)
    if _STRIPPED.search(plain):  # what Text.append does, piece by piece
        plain, runs = _collect(pieces, True)
    size = len(plain)
    if rstrip:
        stripped = plain.rstrip()
        if len(stripped) < size:
            plain = stripped
            size = len(plain)
            runs = _trim(runs, size)
    over = [overlay for overlay in overlays if overlay] if size else []
    cover_end = size if over else -1
    length = cell_len(plain)
    if length > width:
        cut = set_cell_size(plain, width - 1) + "…"
        if cut != plain:
            cut = strip_control_codes(cut)
            if len(cut) < len(plain):
                runs = _trim(runs, len(cut))
                cover_end = min(cover_end, len(cut))
            plain = cut
    elif length < width:
        plain += " " * (width - length)
    if not runs and not over:
        return Strip([Segment(plain)], width)
    return Strip(_segments(plain, runs, line_style, over, line_style, cover_end, None,
                           {} if cache is None else cache), width)


def _collect(pieces: list[Piece], strip: bool) -> tuple[str, list[_Run]]:
    """The pieces' text and styled runs as Text.append makes them: a piece that is empty
    adds nothing, one that control codes are stripped from (`strip`) adds its run even when
    nothing is left of it (zero cells, but where segments are cut)."""
    texts: list[str] = []
    runs: list[_Run] = []
    size = 0
    for piece, style in pieces:
        if piece:
            if strip:
                piece = strip_control_codes(piece)
            if style:
                runs.append((size, size + len(piece), style))
            texts.append(piece)
            size += len(piece)
    return "".join(texts), runs


def _trim(runs: list[_Run], size: int) -> list[_Run]:
    """Text._trim_spans: runs past `size` dropped, the one across it cut there."""
    return [run if run[1] < size else (run[0], min(size, run[1]), run[2])
            for run in runs if run[0] < size]

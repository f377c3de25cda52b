"""SidePanel: a host's side column (listen queues, fds, clients, nginx, history) as ONE widget.

Why one line-API widget and not a column of gauges, titles and panels: Textual re-renders every
widget that refreshes, composes every widget in the bounding box of the changed regions, and a
panel that changes height makes the whole screen lay out again. The side column was ~18 widgets
and cost more CPU than everything else on the screen. Here each poll rebuilds only the sections
whose data changed, compares the new lines with the lines on screen, and refreshes only the
lines that differ; each line's Strip is kept until its text changes. The screen is laid out
again only when the number of lines changes (a new gauge, a wrapped error), never for new
figures.

The lines are the ones the standalone widgets draw (gauge.gauge_lines, nginx_panel.nginx_text,
clients_panel.ClientsText, history.history_text) with the same component classes, so a theme
or the NO_COLOR rules style both alike. Text from outside is plain text, never markup.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import ClassVar, NamedTuple

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from stackmon.logs.host import LogSummary
from stackmon.model import NginxStatus
from stackmon.sources.lb_probe import HealthCheck
from widgets._fmt import SEVERITY_RANK, fmt_count, fmt_rate
from widgets._styles import StyleGetter, StyleMemo
from widgets.clients_panel import (
    CLIENTS_CLASSES,
    CLIENTS_STYLES,
    ClientsShown,
    ClientsText,
    clients_shown,
    clients_trouble,
)
from widgets.gauge import (
    GAUGE_CLASSES,
    GAUGE_STYLES,
    GaugeItem,
    gauge_lines,
    gauge_percent,
    gauge_severity,
)
from widgets.history import HISTORY_CLASSES, HISTORY_STYLES, history_lines
from widgets.nginx_panel import (
    NGINX_CLASSES,
    NGINX_RATE_NOTE,
    NGINX_STYLES,
    NginxShown,
    nginx_shown,
    nginx_text,
)
from widgets.text_lines import line_strip

SECTIONS = ("queues", "fds", "clients", "nginx", "history")
# When the column is too short for every section whole, the sections with nothing wrong become
# one line each, in this order, until the rest fits (the gauges last: their one line still
# says how full the fullest is).
COMPACT_ORDER = ("history", "nginx", "clients", "fds", "queues")
SHORT_NAMES = {"queues": "queues", "fds": "fds", "clients": "clients", "nginx": "nginx",
               "history": "history"}
MIN_CUT = 2  # a section in trouble cut short keeps its title and at least one line
MORE_LINES = 2  # the most the line naming what is below may take
HOLD_S = 10.0  # the panel's scrollable height shrinks only after this long
_UNSET = object()  # a section not built yet (its key can be None)


class SideData(NamedTuple):
    """Everything the side column shows for one poll (comparable: equal data, no work)."""

    queues: tuple[GaugeItem, ...] = ()
    somaxconn: int = 0
    fds: tuple[GaugeItem, ...] = ()
    clients: ClientsShown = (None, None, (), None)
    clients_window_s: float | None = None
    nginx: NginxShown = (None, None)
    history: tuple[tuple[int, ...], tuple[int, ...], tuple[float | None, ...]] = ((), (), ())


Series = tuple[Sequence[int], Sequence[int], Sequence[float | None]]


def side_data(*, queues: Sequence[GaugeItem] = (), somaxconn: int = 0,
              fds: Sequence[GaugeItem] = (), logs: LogSummary | None = None,
              health: HealthCheck | None = None,
              causes: Mapping[str, Sequence[float]] | None = None,
              nginx: NginxStatus | None = None, nginx_error: str | None = None,
              history: Series = ((), (), ())) -> SideData:
    """SideData from the model's objects (the host pane's one call per poll). `nginx` None
    and no error: nginx is not monitored on this host."""
    return SideData(
        queues=tuple(queues), somaxconn=somaxconn, fds=tuple(fds),
        clients=clients_shown(logs, health, causes),
        clients_window_s=logs.window_s if logs is not None else None,
        nginx=nginx_shown(nginx, nginx_error),
        history=(tuple(history[0]), tuple(history[1]), tuple(history[2])),
    )


def _key(name: str, data: SideData) -> object:
    """What a section's lines depend on (besides the width and the styles)."""
    if name == "queues":
        return (data.queues, data.somaxconn)
    if name == "fds":
        return data.fds
    if name == "clients":
        return (data.clients, data.clients_window_s)
    if name == "nginx":
        return data.nginx
    return data.history


class SidePanel(StyleMemo, ScrollView):
    """The side column: five titled sections, one Strip per line, refreshed line by line.

    `show(SideData)` on every poll. `section_text(name)` is a section's text before wrapping
    (what a test or a paste wants); `lines` the plain lines as laid out at the current size.

    When the column is too short for every section whole (80x24 had five sections hidden
    below one scrollbar glyph), it still shows every section at once: the ones with nothing
    wrong shrink to one line each (`File descriptors ok, max 0%`), a section in trouble (5xx,
    a failing health check, a queue or fd count near its limit, nginx dropping connections)
    stays whole or, if even that is too tall, keeps its first lines; the last line then says
    what is not shown whole (`▼ Tab ↓: clients +6, fds, nginx, history`: the lines
    of a section cut short first) and the
    full sections follow below it, for scrolling.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "side-panel--title",
        "side-panel--empty",
        "side-panel--more",
        *GAUGE_CLASSES,
        *NGINX_CLASSES,
        *CLIENTS_CLASSES,
        *HISTORY_CLASSES,
    }
    """
    | Class | What |
    | :- | :- |
    | `side-panel--title` | the section titles (Listen queues, File descriptors, ...) |
    | `side-panel--empty` | "no listener seen", "no process seen" |
    | `side-panel--more` | the line naming what is not shown whole, below the fold |
    | `gauge--*`, `nginx-panel--*`, `clients-panel--*`, `history--*` | as in those widgets |
    """

    DEFAULT_CSS = f"""
    SidePanel {{
        height: 1fr;
        overflow-x: hidden;
        overflow-y: auto;
        & > .side-panel--title {{ text-style: bold; color: $text-muted; }}
        & > .side-panel--empty {{ color: $text-muted; text-style: italic; }}
        & > .side-panel--more {{ text-style: bold reverse; }}
        {GAUGE_STYLES}
        {NGINX_STYLES}
        {CLIENTS_STYLES}
        {HISTORY_STYLES}
    }}
    """

    def __init__(self, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._data = SideData()
        self._width = 0  # the width the lines below were laid out for (0: not yet)
        self._height = 0  # ... and the height they were fitted to (0: not fitted)
        self._keys: dict[str, object] = {}
        self._texts: dict[str, list[Text]] = {}  # each section's body lines before wrapping
        self._section_lines: dict[str, list[Text]] = {}  # title + body, wrapped
        self._compact: dict[str, Text] = {}  # each section in one line
        self._trouble: dict[str, bool] = {}
        self._lines: list[Text] = []
        self._fitted: dict[str, int | None] = {}  # lines shown of each section (None: whole)
        self._strips: dict[int, Strip] = {}
        self._base: Style | None = None
        self._count = 0  # the scrollable height in lines (>= the lines shown, see HOLD_S)
        self._count_needed_at = 0.0
        self._frame_at: tuple[int, int] | None = None  # (width, top line) while drawing a frame

    # --- data in ----------------------------------------------------------------------------

    def show(self, data: SideData) -> None:
        """Show this poll: only the lines that differ from what is on screen are redrawn."""
        if data == self._data and self._width:
            return
        self._data = data
        width, height = self._content_size()
        if width > 0:
            self._layout(width, height, repaint=True)

    @property
    def data(self) -> SideData:
        return self._data

    @property
    def lines(self) -> list[str]:
        """The plain lines as laid out (titles and blank separators included)."""
        return [line.plain for line in self._lines]

    @property
    def line_count(self) -> int:
        return len(self._lines)

    @property
    def fitted(self) -> dict[str, int | None]:
        """Per section, how many of its lines the first screen shows: None whole, 1 its
        one-line summary (or title and nothing), else its first lines. Empty: all whole."""
        return dict(self._fitted)

    def section_text(self, name: str) -> str:
        """A section's body before wrapping, as last laid out ("" before the first)."""
        if name not in SECTIONS:
            raise ValueError(f"no section {name!r} (one of {', '.join(SECTIONS)})")
        body = self._texts.get(name)
        return "\n".join(line.plain for line in body) if body is not None else ""

    # --- laying out -------------------------------------------------------------------------

    def _content_size(self) -> tuple[int, int]:
        if not self.is_mounted:
            return 0, 0
        region = self.scrollable_content_region
        return region.width, region.height

    def _layout(self, width: int, height: int, *, repaint: bool,
                in_render: bool = False) -> None:
        """Rebuild the sections whose data changed, at `width`; fit them to `height`; refresh
        the changed lines (`repaint`), and ask for a layout only when the number of lines
        changed. `in_render`: called while a frame is drawn, the scrollbar is told after it
        (told during it, the frame drew its thumb where it had been: a stale glyph)."""
        if width != self._width:
            self._width = width
            self._keys.clear()
            self._strips.clear()
            self._count_needed_at = float("-inf")  # a new width: the new height at once
        self._height = height
        data = self._data
        for name in SECTIONS:
            key = _key(name, data)
            if self._keys.get(name, _UNSET) != key:
                self._keys[name] = key
                self._section(name, data, width)
        lines = self._arrange(height)
        old, self._lines = self._lines, lines
        # Identity first: lines of sections that did not change are the same objects, and
        # comparing their Texts was a quarter of this function's time (py-spy on the demo).
        changed = [y for y in range(max(len(old), len(lines)))
                   if y >= len(old) or y >= len(lines)
                   or (old[y] is not lines[y] and old[y] != lines[y])]
        for y in changed:
            self._strips.pop(y, None)
        if in_render:
            self.call_after_refresh(self._hold_line_count, len(lines))
        else:
            self._hold_line_count(len(lines))
        if repaint:
            for first, count in _runs(changed):
                self.refresh_lines(first, count)

    def _arrange(self, height: int) -> list[Text]:
        """Every section whole when they fit in `height` (blank lines between); else the
        first screen fitted (fit_sections), a line naming what it does not show whole, and
        those sections whole below it."""
        full = self._section_lines
        sizes = {name: len(full[name]) for name in SECTIONS}
        fitted = fit_sections(sizes, self._trouble, height)
        self._fitted = fitted
        lines: list[Text] = []
        if not fitted:
            for name in SECTIONS:
                if lines:
                    lines.append(Text())
                lines.extend(full[name])
            return lines
        more = _more_text(fitted, sizes)
        if cell_len(more) > self._width and height > MORE_LINES + 1:
            # Two lines for it (at 35 columns one cut the section names off): the first
            # screen is fitted again with a line less.
            fitted = self._fitted = fit_sections(sizes, self._trouble, height,
                                                 more_lines=MORE_LINES)
            more = _more_text(fitted, sizes)
        for name in SECTIONS:
            shown = fitted[name]
            if shown is None:
                lines.extend(full[name])
            elif shown == 1:
                lines.append(self._compact[name])
            else:
                lines.extend(full[name][:shown])
        style = self._full_style("side-panel--more")
        rows = list(Text(more, style, end="").wrap(self.app.console, self._width,
                                                    overflow="fold"))
        if len(rows) > MORE_LINES:
            rows = rows[:MORE_LINES]
            rows[-1].truncate(max(0, self._width - 1))
            rows[-1].append("…")
        for row in rows:
            row.stylize_before(style)
            row.style = ""
            lines.append(row)
        for name in SECTIONS:
            if fitted[name] is not None:
                lines.append(Text())
                lines.extend(full[name])
        return lines

    def _hold_line_count(self, count: int) -> None:
        """More lines scroll at once; fewer only once no poll needed the old count for
        HOLD_S (blank lines meanwhile): a list of causes or endpoints that grew and shrank by
        a line each poll updated the scrollbar, or laid the screen out, every time."""
        now = time.monotonic()
        if count >= self._count:
            self._count_needed_at = now
        if count > self._count or (count < self._count
                                   and now - self._count_needed_at >= HOLD_S):
            self._count = count
            self._set_line_count(count)

    def _set_line_count(self, count: int) -> None:
        """The scrollable height. `virtual_size` is a layout reactive: setting it lays out the
        whole screen, though this widget's own size never depends on it (1fr high, the
        column's width). So only the scrollbar is updated, which asks for a layout itself
        when it has to appear or go."""
        size = Size(0, count)
        if not self.is_mounted:
            self.virtual_size = size
            return
        self.set_reactive(ScrollView.virtual_size, size)
        self._scroll_update(size)

    def _section(self, name: str, data: SideData, width: int) -> None:
        """A section's lines (its title, its body wrapped), its one-line form and whether it
        is in trouble."""
        title, body = self._build(name, data, width)
        self._texts[name] = body
        lines = [Text(title, self._full_style("side-panel--title"), end="")]
        console = self.app.console
        for line in _split_lines(body):
            # Text.wrap splits and divides every line: only the too long ones need it.
            if line.cell_len <= width:
                lines.append(line)
            else:
                lines.extend(line.wrap(console, width, overflow="fold"))
        compact = self._summary(name, title, data, width)
        for line in (*lines, compact):
            # A line's own style as a span: Text equality (what changed) and Text.render
            # (a line without spans) both ignore Text.style.
            if line.style:
                line.stylize_before(line.style)
                line.style = ""
        self._section_lines[name] = lines
        self._compact[name] = compact
        self._trouble[name] = _in_trouble(name, data)

    def _build(self, name: str, data: SideData, width: int) -> tuple[str, list[Text]]:
        """A section's title and body lines (built as lines: a Text joined only to be split
        again cost a third of the panel's time per poll)."""
        get = self.component_style
        if name == "queues":
            title = "Listen queues"
            if data.somaxconn:
                title += f" · somaxconn {data.somaxconn}"
            return title, self._gauges(data.queues, "no listener seen", width)
        if name == "fds":
            return "File descriptors", self._gauges(data.fds, "no process seen", width)
        if name == "clients":
            title = "Clients"
            if data.clients_window_s is not None:
                title += f" · last {data.clients_window_s:.0f} s"
            return title, ClientsText(get).lines(data.clients, width)
        if name == "nginx":
            lines = [nginx_text(data.nginx, width, get)]
            if data.nginx[0] is not None:
                lines.append(Text(NGINX_RATE_NOTE, get("nginx-panel--muted"), end=""))
            return "nginx", lines
        queue, busy, rps = data.history
        # All three are uWSGI's, per poll: its listen queue, busy workers, finished req/s
        # (the header's figure), not the access log's average or stub_status's count.
        return "History · uWSGI", history_lines(queue, busy, rps, width, get)

    def _summary(self, name: str, title: str, data: SideData, width: int) -> Text:
        """The section in one line of at most `width` cells: the title (without its details)
        and what says whether anything is wrong."""
        title_style = self._full_style("side-panel--title")
        # Without its details (somaxconn, the window), but History keeps whose it is.
        head = title if name == "history" else title.split(" · ")[0]
        if name in ("queues", "fds"):
            items = data.queues if name == "queues" else data.fds
            return _gauge_summary(head, items, width, title_style, self.component_style)
        parts: list[tuple[str, Style | str]]
        get = self.component_style
        if name == "clients":
            parts = ClientsText(get).summary(data.clients)
        elif name == "nginx":
            parts = _nginx_summary(data.nginx, get)
        else:
            parts = _history_summary(data.history, get)
        return _fit_line([(head + " ", title_style), *parts], width)

    def _gauges(self, items: Sequence[GaugeItem], empty: str, width: int) -> list[Text]:
        if not items:
            return [Text(empty, self._full_style("side-panel--empty"), end="")]
        return list(gauge_lines(items, width, self.component_style))

    def _full_style(self, name: str) -> Style:
        """A component's whole style: a partial one drops a colour with alpha ($text-muted
        came out white), and the titles are muted text as the Statics they were."""
        return self.get_component_rich_style(name)

    # --- drawing ----------------------------------------------------------------------------

    def notify_style_update(self) -> None:
        """Theme or classes changed: every line carries old colours; lay out again."""
        super().notify_style_update()
        self._base = None
        self._keys.clear()
        self._strips.clear()
        if self._width:
            self._layout(self._width, self._height, repaint=False)
            self.refresh()

    def render_lines(self, crop: Region) -> list[Strip]:
        """The width and the top line once for all the lines of a frame (as WorkerList):
        the region and scroll offset were a tenth of this widget's drawing, asked per line.
        A new size (a resize, a scrollbar that came or went) lays the lines out again first:
        the fit depends on the height too."""
        region = self.scrollable_content_region
        width, height = region.width, region.height
        if width > 0 and (width != self._width or height != self._height):
            count = len(self._lines)
            self._layout(width, height, repaint=False, in_render=True)
            if len(self._lines) != count:
                self.call_after_refresh(self.refresh)
        self._frame_at = (width, round(self.scroll_y))
        try:
            return super().render_lines(crop)
        finally:
            self._frame_at = None

    def render_line(self, y: int) -> Strip:
        frame_at = self._frame_at
        width, top = frame_at if frame_at is not None else \
            (self.scrollable_content_region.width, round(self.scroll_y))
        line_no = top + y
        strip = self._strips.get(line_no)
        if strip is None:
            strip = self._strips[line_no] = self._line_strip(line_no, width)
        return strip

    def _line_strip(self, line_no: int, width: int) -> Strip:
        base = self._base
        if base is None:
            base = self._base = self.rich_style
        line = self._lines[line_no] if line_no < len(self._lines) else None
        return line_strip(line, width, base, self.app.console)


def fit_sections(sizes: Mapping[str, int], trouble: Mapping[str, bool],
                 height: int, *, more_lines: int = 1) -> dict[str, int | None]:
    """How many lines of each section the first `height` lines show: {} when every section
    fits whole with a blank line between; else per section None (whole), 1 (its one-line
    form) or a count of its first lines, leaving `more_lines` for what is not shown whole.

    Sections with nothing wrong shrink first (COMPACT_ORDER); a section in trouble is cut
    only when the others are one line each, the lowest first, to its title and first lines;
    then anything that fits whole again is given back, from the top."""
    names = [n for n in SECTIONS if n in sizes]
    if height <= 0 or sum(sizes.values()) + len(names) - 1 <= height:
        return {}
    shown: dict[str, int | None] = dict.fromkeys(names)
    budget = height - more_lines

    def used() -> int:
        return sum(sizes[n] if v is None else v for n, v in shown.items())

    for name in COMPACT_ORDER:
        if name in shown and not trouble.get(name) and used() > budget:
            shown[name] = 1
    for name in reversed(names):
        over = used() - budget
        if over <= 0:
            break
        if shown[name] is None and sizes[name] > MIN_CUT:
            shown[name] = max(MIN_CUT, sizes[name] - over)
    for name in reversed(names):  # a tiny column: every section one line
        if used() <= budget:
            break
        shown[name] = 1
    for name in names:  # what fits whole again, from the top
        v = shown[name]
        if v is not None and used() - v + sizes[name] <= budget:
            shown[name] = None
    for name in names:  # a cut section takes what room is left
        v = shown[name]
        if v is not None and v > 1:
            shown[name] = min(sizes[name], v + budget - used())
            if shown[name] == sizes[name]:
                shown[name] = None
    if all(v is None for v in shown.values()):
        return {}
    return shown


def _more_text(fitted: Mapping[str, int | None], sizes: Mapping[str, int]) -> str:
    """`▼ Tab ↓: clients +4 lines; queues, fds, nginx, history`: the sections cut short
    first (lines of them are nowhere on screen), then those shown as one line (in full
    below)."""
    cut: list[str] = []
    compact: list[str] = []
    for name in SECTIONS:
        shown = fitted.get(name)
        if shown == 1:
            compact.append(SHORT_NAMES[name])
        elif shown is not None:
            hidden = sizes[name] - shown
            cut.append(f"{SHORT_NAMES[name]} +{hidden} line{'s' if hidden > 1 else ''}")
    parts = [", ".join(cut)] if cut else []
    if compact:
        parts.append(", ".join(compact))
    return "▼ Tab ↓: " + "; ".join(parts)


def _in_trouble(name: str, data: SideData) -> bool:
    """Whether a section shows something wrong (it then keeps its lines when others shrink)."""
    if name in ("queues", "fds"):
        items = data.queues if name == "queues" else data.fds
        return any(gauge_severity(i.value, i.limit, i.kind) in ("warn", "critical")
                   for i in items)
    if name == "clients":
        return clients_trouble(data.clients)
    if name == "nginx":
        figures, error = data.nginx
        return bool(error) or (figures is not None and figures[4] > 0)
    return False


def _fit_line(parts: Sequence[tuple[str, Style | str]], width: int) -> Text:
    """Styled parts on one line, cut with an ellipsis at `width` cells."""
    text = Text(end="", no_wrap=True)
    for words, style in parts:
        text.append(words, style)
    if text.cell_len > width:
        text.truncate(max(0, width - 1))
        text.append("…")
    return text


def _gauge_summary(head: str, items: Sequence[GaugeItem], width: int, title_style: Style,
                   get: StyleGetter) -> Text:
    """`Listen queues ok, max uwsgi.sock 3/32 9%`: the fullest gauge, with as much of it as
    fits (its label, then its figures, then its percentage alone)."""
    if not items:
        return _fit_line([(head + ": ", title_style), ("none seen", get("side-panel--empty"))],
                         width)

    def rank(i: GaugeItem) -> tuple[int, int]:
        pct = gauge_percent(i.value, i.limit)
        return (SEVERITY_RANK[gauge_severity(i.value, i.limit, i.kind)],
                -1 if pct is None else pct)

    worst = max(items, key=rank)
    severity = gauge_severity(worst.value, worst.limit, worst.kind)
    pct = gauge_percent(worst.value, worst.limit)
    word = {"ok": "ok", "warn": "WARN", "critical": "CRIT"}.get(severity, "?")
    figures = f"{fmt_count(worst.value)}/{fmt_count(worst.limit) if worst.limit else '?'}"
    percent = f"{pct}%" if pct is not None else "?"
    head_parts: list[tuple[str, Style | str]] = [(head + " ", title_style),
                                                 (word, get(f"gauge--{severity}")),
                                                 (", max ", get("gauge--label"))]
    for tail in (f"{worst.label} {figures} {percent}", f"{figures} {percent}", percent):
        line = _fit_line([*head_parts, (tail, get(f"gauge--{severity}"))], width)
        if not line.plain.endswith("…"):
            return line
    return line


def _nginx_summary(shown: NginxShown, get: StyleGetter) -> list[tuple[str, Style | str]]:
    label = get("nginx-panel--label")
    figures, error = shown
    if figures is None:
        return [(error or "not configured", get("nginx-panel--error" if error else
                                                "nginx-panel--muted"))]
    active, _reading, _writing, _waiting, dropped, rate = figures
    # The rate and the one alarm first: at 35 columns the line's end is cut.
    out: list[tuple[str, Style | str]] = [
        ("req/s ", label), (rate, ""), ("  dropped ", label),
        (fmt_count(dropped), get("nginx-panel--dropped") if dropped else ""),
        ("  active ", label), (fmt_count(active), "")]
    if error:
        out.append(("  last poll failed", get("nginx-panel--error")))
    return out


def _history_summary(history: tuple[tuple[int, ...], tuple[int, ...], tuple[float | None, ...]],
                     get: StyleGetter) -> list[tuple[str, Style | str]]:
    label = get("history--label")
    queue, busy, rps = history
    known = [r for r in rps if r is not None]
    return [("max queue ", label), (fmt_count(max(queue, default=0)), ""),
            ("  busy ", label), (fmt_count(max(busy, default=0)), ""),
            ("  req/s ", label), (fmt_rate(max(known)) if known else "?", "")]


def _split_lines(body: list[Text]) -> list[Text]:
    """The body's lines, each split at its own newlines (an error message may have some)."""
    out: list[Text] = []
    for line in body:
        if "\n" in line.plain:
            out.extend(line.split("\n", allow_blank=True))
        else:
            out.append(line)
    return out


def _runs(ys: list[int]) -> list[tuple[int, int]]:
    """Sorted line numbers as (first, count) runs of consecutive lines."""
    runs: list[tuple[int, int]] = []
    for y in ys:
        if runs and runs[-1][0] + runs[-1][1] == y:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((y, 1))
    return runs

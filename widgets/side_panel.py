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

from rich.style import Style
from rich.text import Text
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from stackmon.logs.host import LogSummary
from stackmon.model import NginxStatus
from stackmon.sources.lb_probe import HealthCheck
from widgets._styles import StyleMemo
from widgets.clients_panel import (
    CLIENTS_CLASSES,
    CLIENTS_STYLES,
    ClientsShown,
    ClientsText,
    clients_shown,
)
from widgets.gauge import GAUGE_CLASSES, GAUGE_STYLES, GaugeItem, gauge_lines
from widgets.history import HISTORY_CLASSES, HISTORY_STYLES, history_lines
from widgets.nginx_panel import (
    NGINX_CLASSES,
    NGINX_STYLES,
    NginxShown,
    nginx_shown,
    nginx_text,
)
from widgets.text_lines import line_strip

SECTIONS = ("queues", "fds", "clients", "nginx", "history")
HOLD_S = 10.0  # the panel's scrollable height shrinks only after this long
_UNSET = object()  # a section not built yet (its key can be None)


class SideData(NamedTuple):
    """Everything the side column shows for one poll (comparable: equal data, no work)."""

    queues: tuple[GaugeItem, ...] = ()
    somaxconn: int = 0
    fds: tuple[GaugeItem, ...] = ()
    clients: ClientsShown = (None, None, ())
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
    (what a test or a paste wants); `lines` the plain lines as laid out at the current width.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "side-panel--title",
        "side-panel--empty",
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
    | `gauge--*`, `nginx-panel--*`, `clients-panel--*`, `history--*` | as in those widgets |
    """

    DEFAULT_CSS = f"""
    SidePanel {{
        height: 1fr;
        overflow-x: hidden;
        overflow-y: auto;
        & > .side-panel--title {{ text-style: bold; color: $text-muted; }}
        & > .side-panel--empty {{ color: $text-muted; text-style: italic; }}
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
        self._keys: dict[str, object] = {}
        self._texts: dict[str, list[Text]] = {}  # each section's body lines before wrapping
        self._section_lines: dict[str, list[Text]] = {}
        self._lines: list[Text] = []
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
        width = self._content_width()
        if width > 0:
            self._layout(width, repaint=True)

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

    def section_text(self, name: str) -> str:
        """A section's body before wrapping, as last laid out ("" before the first)."""
        if name not in SECTIONS:
            raise ValueError(f"no section {name!r} (one of {', '.join(SECTIONS)})")
        body = self._texts.get(name)
        return "\n".join(line.plain for line in body) if body is not None else ""

    # --- laying out -------------------------------------------------------------------------

    def _content_width(self) -> int:
        return self.scrollable_content_region.width if self.is_mounted else 0

    def _layout(self, width: int, *, repaint: bool) -> None:
        """Rebuild the sections whose data changed, at `width`; refresh the changed lines
        (`repaint`), and ask for a layout only when the number of lines changed."""
        if width != self._width:
            self._width = width
            self._keys.clear()
            self._strips.clear()
            self._count_needed_at = float("-inf")  # a new width: the new height at once
        data = self._data
        lines: list[Text] = []
        for name in SECTIONS:
            key = _key(name, data)
            if self._keys.get(name, _UNSET) != key:
                self._keys[name] = key
                self._section_lines[name] = self._section(name, data, width)
            lines.extend(self._section_lines[name])
        old, self._lines = self._lines, lines
        changed = [y for y in range(max(len(old), len(lines)))
                   if y >= len(old) or y >= len(lines) or old[y] != lines[y]]
        for y in changed:
            self._strips.pop(y, None)
        self._hold_line_count(len(lines))
        if repaint:
            for first, count in _runs(changed):
                self.refresh_lines(first, count)

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

    def _section(self, name: str, data: SideData, width: int) -> list[Text]:
        """A section's lines: a blank line (but before the first), its title, its body."""
        title, body = self._build(name, data, width)
        self._texts[name] = body
        lines = [] if name == SECTIONS[0] else [Text()]
        lines.append(Text(title, self._full_style("side-panel--title"), end=""))
        console = self.app.console
        for line in _split_lines(body):
            # Text.wrap splits and divides every line: only the too long ones need it.
            if line.cell_len <= width:
                lines.append(line)
            else:
                lines.extend(line.wrap(console, width, overflow="fold"))
        for line in lines:
            # A line's own style as a span: Text equality (what changed) and Text.render
            # (a line without spans) both ignore Text.style.
            if line.style:
                line.stylize_before(line.style)
                line.style = ""
        return lines

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
            return "nginx", [nginx_text(data.nginx, width, get)]
        queue, busy, rps = data.history
        return "History", history_lines(queue, busy, rps, width, get)

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
            self._layout(self._width, repaint=False)
            self.refresh()

    def render_lines(self, crop: Region) -> list[Strip]:
        """The width and the top line once for all the lines of a frame (as WorkerList):
        the region and scroll offset were a tenth of this widget's drawing, asked per line."""
        self._frame_at = (self.scrollable_content_region.width, round(self.scroll_y))
        try:
            return super().render_lines(crop)
        finally:
            self._frame_at = None

    def render_line(self, y: int) -> Strip:
        frame_at = self._frame_at
        width, top = frame_at if frame_at is not None else \
            (self.scrollable_content_region.width, round(self.scroll_y))
        if width != self._width and width > 0:
            # A resize or a scrollbar that came or went: the whole widget is being repainted.
            count = len(self._lines)
            self._layout(width, repaint=False)
            if len(self._lines) != count:
                self.call_after_refresh(self.refresh)
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

"""FleetTable: one line per host, worst first, in sections by group, for hundreds of hosts.

Why a line-API widget: the fleet overview is the first thing on screen with 500 hosts, each
polled every second. A DataTable re-renders and re-measures its rows on every update; here a
host's line is a Strip cached per host, dropped only when what it shows changed, and only the
lines on screen are rendered. A poll that shows nothing new (the common case) costs one tuple
comparison; a poll that changes a host's figures refreshes that one line; only a change of
severity (the sort key) or of the filter recomputes which host sits on which line.

What a row shows comes from `fleet_row()`, a pure function of the host's snapshot and its
`stackmon.health` assessment, as strings: two polls that would draw the same line compare
equal. Request ages are whole seconds from the snapshot (the poll itself moves them).

Order: sections by group (`group = "api"` in the hosts file), the section with the worst host
first, then hosts-file order; inside a section, worst severity first, then hosts-file order
(stable: a host does not move while its severity stays). Sections get a header line only when
some host has a group. The header of the columns is a line of its own that never scrolls.

Untrusted text (host and group names, reasons that quote error messages or URIs) is appended to
`rich.text.Text` as plain strings with control characters made visible, never as markup.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size, Spacing
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from stackmon.health import (
    SEVERITY_RANK,
    HostState,
    Severity,
    fd_severity,
    queue_severity,
    queues,
    worst,
)
from stackmon.model import HostSnapshot
from stackmon.units import human_age
from widgets._fmt import ellipsize, plain
from widgets._styles import LineStyles

ICONS: dict[Severity, str] = {"ok": "●", "warn": "▲", "critical": "✖", "unknown": "…"}
NO_GROUP = "(no group)"
STATE_WIDTH = 14
NAME_MIN, NAME_MAX = 8, 24
CURSOR_MARK = "▶"


class FleetRow(NamedTuple):
    """One host's line as displayed: strings and the severity of each figure. (A NamedTuple:
    500 are built per second, and equality is what decides whether anything is redrawn.)"""

    severity: Severity
    label: str  # the state badge: "CRIT 2", "QUEUE 93%", "ok", "connecting…"
    reasons: str  # every reason's sentence, worst first
    workers: str  # busy/total: "5/8"
    oldest: str  # the oldest request in flight: "75s", "-"
    oldest_sev: Severity
    queue: str  # the fullest listen queue: "93%"
    queue_sev: Severity
    fds: str  # the fullest fd table (process or system): "12%"
    fds_sev: Severity
    errors: str  # 5xx/s from the access log: "2.0/s", "0", "-"
    errors_sev: Severity
    health: str  # the LB health check: "ok", "FAIL 2", "OUT", "-"
    health_sev: Severity


CONNECTING = FleetRow("unknown", "connecting…", "", "-", "-", "ok", "-", "ok", "-", "ok", "-",
                      "ok", "-", "ok")


def _oldest(snap: HostSnapshot) -> tuple[str, Severity]:
    age: float | None = None
    level = "ok"
    for inst in snap.uwsgi:
        for w in inst.workers:
            for r in w.requests_in_flight:
                if r.running_s is not None and (age is None or r.running_s > age):
                    age, level = r.running_s, r.level
    if age is None:
        return "-", "ok"
    sev: Severity = {"critical": "critical", "slow": "warn"}.get(level, "ok")  # type: ignore[assignment]
    return human_age(age), sev


def _queue(snap: HostSnapshot) -> tuple[str, Severity]:
    best: tuple[int, int, int] | None = None
    for _name, depth, backlog in queues(snap):
        if backlog > 0:
            pct = depth * 100 // backlog
            if best is None or pct > best[0]:
                best = (pct, depth, backlog)
    if best is None:
        return "-", "ok"
    return f"{best[0]}%", queue_severity(best[1], best[2])


def _fds(snap: HostSnapshot) -> tuple[str, Severity]:
    fills = [(p.open, p.limit) for p in snap.fds.processes if p.limit > 0]
    system = snap.fds.system
    if system is not None and system.max > 0:
        fills.append((system.open, system.max))
    if not fills:
        return "-", "ok"
    used, limit = max(fills, key=lambda f: f[0] / f[1])
    return f"{used * 100 // limit}%", fd_severity(used, limit)


def _errors(snap: HostSnapshot, state: HostState) -> tuple[str, Severity]:
    http = snap.logs.http if snap.logs is not None else None
    if http is None:
        return "-", "ok"
    total = http.status.get("5xx", 0) or sum(http.status.get(c, 0) for c in ("502", "503",
                                                                               "504"))
    if not total:
        return "0", "ok"
    rate = total / max(min(http.covered_s, http.window_s), 1.0)
    sev = worst(r.severity for r in state.reasons if r.kind == "http")
    return (f"{rate:.1f}/s" if rate >= 0.1 else f"×{total}"), sev if sev != "ok" else "warn"


def _health(snap: HostSnapshot, state: HostState) -> tuple[str, Severity]:
    check = snap.health
    if check is None:
        return "-", "ok"
    sev = worst(r.severity for r in state.reasons if r.kind == "health")
    if check.ok is None:
        return "…", "unknown"
    if check.out_of_service:
        return "OUT", "critical"
    if not check.ok:
        return f"FAIL {check.failures_in_row}", sev
    return ("slow" if sev != "ok" else "ok"), sev


def fleet_row(snap: HostSnapshot | None, state: HostState | None) -> FleetRow:
    """A host's row from its latest snapshot and its assessment (None: not polled yet)."""
    if snap is None or state is None:
        return CONNECTING
    reasons = "; ".join(r.text for r in state.reasons)
    if not snap.reachable:
        return FleetRow(state.severity, state.label, reasons, "-", "-", "ok", "-", "ok", "-",
                        "ok", "-", "ok", "-", "ok")
    workers = [w for u in snap.uwsgi for w in u.workers if not w.cheap]
    busy = sum(1 for w in workers if w.busy)
    oldest, oldest_sev = _oldest(snap)
    queue, queue_sev = _queue(snap)
    fds, fds_sev = _fds(snap)
    errors, errors_sev = _errors(snap, state)
    health, health_sev = _health(snap, state)
    return FleetRow(state.severity, state.label, reasons,
                    f"{busy}/{len(workers)}" if snap.uwsgi else "-", oldest, oldest_sev,
                    queue, queue_sev, fds, fds_sev, errors, errors_sev, health, health_sev)


def short_badge(label: str) -> str:
    """The state label cut to what fits its column ("CRIT 2", "QUEUE 93%", "UNREACHABLE");
    the whole of it is in the reasons at the end of the line."""
    words = label.split()
    if not words:
        return ""
    if words[0] in ("UNREACHABLE", "PARTIAL:"):
        return words[0].rstrip(":")
    return " ".join(words[:2])


@dataclass(frozen=True, slots=True)
class Columns:
    """Where each field goes at one width (the header line and every row share it)."""

    name: int
    activity: int  # 0: no reload anywhere, the column is not shown

    # (title, width, right-aligned) of the figures between the name and the reasons.
    FIGURES: ClassVar[tuple[tuple[str, int, bool], ...]] = (
        ("busy", 7, True), ("oldest", 6, True), ("queue", 5, True), ("fds", 4, True),
        ("5xx/s", 6, True), ("health", 6, False))


class _Line(NamedTuple):
    kind: str  # "host" or "section"
    key: int | str  # host index, or the section's group name


class FleetTable(LineStyles, ScrollView, can_focus=True):
    """Every host of the fleet, one line each (see the module docstring).

    Build it with the hosts' (name, group) in hosts-file order; feed it `set_row(index, row)`
    on every poll and `set_activity(index, text, severity)` for a reload in progress. Keys:
    up/down/j/k, home/end, pageup/pagedown, enter (posts `Selected` with the host's index).
    """

    ALLOW_SELECT = False
    # The NO_COLOR rules below name App:nocolor, outside this widget.
    SCOPED_CSS = False

    STYLE_PREFIX = "fleet-table--"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor_up", "Previous host", show=False, id="fleet-table.up"),
        Binding("down,j", "cursor_down", "Next host", show=False, id="fleet-table.down"),
        Binding("home", "cursor_first", "First host", show=False, id="fleet-table.first"),
        Binding("end", "cursor_last", "Last host", show=False, id="fleet-table.last"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="fleet-table.page-up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="fleet-table.page-down"),
        Binding("enter", "select_cursor", "Open host", id="fleet-table.select"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "fleet-table--cursor", "fleet-table--header", "fleet-table--section",
        "fleet-table--ok", "fleet-table--warn", "fleet-table--critical",
        "fleet-table--unknown", "fleet-table--muted", "fleet-table--name",
    }

    DEFAULT_CSS = """
    FleetTable {
        height: 1fr;
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
        background: $surface;
        color: $foreground;
    }
    FleetTable > .fleet-table--cursor {
        background: $block-cursor-blurred-background;
        color: $block-cursor-blurred-foreground;
        text-style: $block-cursor-blurred-text-style;
    }
    FleetTable:focus { background-tint: $foreground 5%; }
    FleetTable:focus > .fleet-table--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: $block-cursor-text-style;
    }
    FleetTable > .fleet-table--header { color: $text-muted; text-style: bold; background: $panel; }
    FleetTable > .fleet-table--section { color: $text-accent; text-style: bold; }
    FleetTable > .fleet-table--name { text-style: bold; }
    FleetTable > .fleet-table--ok { color: $text-success; }
    FleetTable > .fleet-table--warn { color: $text-warning; text-style: bold; }
    FleetTable > .fleet-table--critical { color: $text-error; text-style: bold; }
    FleetTable > .fleet-table--unknown { color: $text-muted; }
    FleetTable > .fleet-table--muted { color: $text-muted; }
    App:nocolor FleetTable > .fleet-table--critical {
        color: $foreground; text-style: bold reverse;
    }
    App:nocolor FleetTable > .fleet-table--warn {
        color: $foreground; text-style: bold underline;
    }
    """

    class Selected(Message):
        """Enter (or a double click) on a host's line."""

        def __init__(self, table: FleetTable, index: int) -> None:
            super().__init__()
            self.table = table
            self.index = index

        @property
        def control(self) -> FleetTable:
            return self.table

    def __init__(self, hosts: Sequence[tuple[str, str | None]], *, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._names = [plain(n) for n, _ in hosts]
        self._groups = [g for _, g in hosts]
        self._sectioned = any(g is not None for g in self._groups)
        self._name_width = max(NAME_MIN, min(NAME_MAX, max(
            (cell_len(n) for n in self._names), default=NAME_MIN)))
        self._rows: list[FleetRow] = [CONNECTING] * len(hosts)
        self._activity: dict[int, tuple[str, Severity]] = {}
        self._haystacks = [self._haystack(i) for i in range(len(hosts))]
        self._filter = ""
        self._lines: list[_Line] = []
        self._line_of: dict[int, int] = {}  # host index -> its line
        self._host_lines: list[int] = []  # the lines that are hosts, ascending
        self._cursor: int | None = None
        # Until the user moves it, the cursor stays on the top line: the worst host.
        self._follow_top = True
        self._strips: dict[tuple[int | str, bool], Strip] = {}
        # The Strips drawn in each set of styles seen last (focused and not: see
        # notify_style_update); _strips is the set in use, None: not known yet.
        self._strip_sets: dict[tuple[Style, ...], dict[tuple[int | str, bool], Strip]] = {}
        self._strips_style: tuple[Style, ...] | None = None
        self._strip_width = -1
        self._styles: dict[str, Style] = {}
        self._relayout_due = False
        self._relayout()

    # ------------------------------------------------------------------------------ data in

    @property
    def host_count(self) -> int:
        return len(self._rows)

    @property
    def cursor_index(self) -> int | None:
        """The host under the cursor (its index in the hosts file), None when none shows."""
        return self._cursor

    @property
    def filter_text(self) -> str:
        return self._filter

    def row(self, index: int) -> FleetRow:
        return self._rows[index]

    def visible_hosts(self) -> list[int]:
        """The hosts on their lines, top to bottom (filter applied)."""
        return [int(ln.key) for ln in self._lines if ln.kind == "host"]

    def lines_text(self) -> list[str]:
        """Every line as plain text (sections and hosts), for tests and tools."""
        width = max(self._strip_width, 80)
        return [self._line_text(ln, width, False).plain for ln in self._lines]

    def set_row(self, index: int, row: FleetRow) -> None:
        """A host's new row; nothing happens when it shows what the old one showed."""
        old = self._rows[index]
        if old == row:
            return
        self._rows[index] = row
        self._haystacks[index] = self._haystack(index)
        self._drop(index)
        if old.severity != row.severity or (self._filter and self._matches(index) !=
                                            (index in self._line_of)):
            self._schedule_relayout()
        else:
            self._refresh_host(index)

    def set_activity(self, index: int, text: str | None, severity: Severity = "ok") -> None:
        """What is being done to a host (a reload in progress, a rolling reload's step), or
        None when nothing is; shown in its own column while any host has one."""
        had_any = bool(self._activity)
        new = (plain(text), severity) if text else None
        if self._activity.get(index) == new:
            return
        if new is None:
            self._activity.pop(index, None)
        else:
            self._activity[index] = new
        self._drop(index)
        if bool(self._activity) != had_any:  # the column appears or goes: every line changes
            self._clear_strips()
            self.refresh()
        else:
            self._refresh_host(index)

    def set_filter(self, text: str) -> None:
        """Only hosts where `text` (case-insensitive) occurs in the name, the group, the state
        or a reason; empty text shows every host."""
        text = text.strip().lower()
        if text != self._filter:
            self._filter = text
            self._relayout(follow_cursor=True)

    def move_to(self, index: int) -> None:
        """Put the cursor on a host (when it shows) and scroll to it."""
        if index in self._line_of:
            self._move_cursor(index)

    # ------------------------------------------------------------------------------- layout

    def _haystack(self, i: int) -> str:
        row = self._rows[i]
        return "\n".join((self._names[i], self._groups[i] or "", row.label, row.reasons)).lower()

    def _matches(self, i: int) -> bool:
        return not self._filter or self._filter in self._haystacks[i]

    def _order(self) -> list[_Line]:
        """Sections (worst first, then hosts-file order), hosts worst first inside each."""
        rank = SEVERITY_RANK
        rows = self._rows
        sections: dict[str | None, list[int]] = {}
        for i, group in enumerate(self._groups):
            if self._matches(i):
                sections.setdefault(group, []).append(i)
        for members in sections.values():
            members.sort(key=lambda i: (-rank[rows[i].severity], i))
        # members[0] is a section's worst host; ties go to hosts-file order.
        ordered = sorted(sections.items(),
                         key=lambda kv: (-rank[rows[kv[1][0]].severity], min(kv[1])))
        lines: list[_Line] = []
        for group, members in ordered:
            if self._sectioned:
                lines.append(_Line("section", group if group is not None else NO_GROUP))
            lines.extend(_Line("host", i) for i in members)
        return lines

    def _schedule_relayout(self) -> None:
        """Coalesced: a burst of polls that change severities costs one sort."""
        if not self._relayout_due:
            self._relayout_due = True
            self.call_later(self._relayout)

    def _relayout(self, follow_cursor: bool = False) -> None:
        self._relayout_due = False
        lines = self._order()
        self._lines = lines
        self._line_of = {int(ln.key): y for y, ln in enumerate(lines) if ln.kind == "host"}
        self._host_lines = sorted(self._line_of.values())
        # Section headers count their hosts by severity: redrawn with every new order.
        for strips in self._all_strips():
            for key in [k for k in strips if isinstance(k[0], str)]:
                del strips[key]
        self.virtual_size = Size(0, len(lines) + 1)
        if self._follow_top or self._cursor not in self._line_of:
            top = self._first_host()
            follow_cursor = follow_cursor or top != self._cursor
            self._cursor = top
        if follow_cursor and self.is_mounted:
            self.call_after_refresh(self._scroll_to_cursor)
        self.refresh()

    def _first_host(self) -> int | None:
        return int(self._lines[self._host_lines[0]].key) if self._host_lines else None

    def _drop(self, index: int) -> None:
        for strips in self._all_strips():
            strips.pop((index, False), None)
            strips.pop((index, True), None)

    def _refresh_host(self, index: int) -> None:
        y = self._line_of.get(index)
        if y is not None:
            self.refresh_lines(y + 1)  # +1: the column header is virtual line 0

    # ------------------------------------------------------------------------------- cursor

    def _move_cursor(self, index: int | None, scroll: bool = True) -> None:
        """A move asked for by the user: the cursor stops following the top line."""
        self._follow_top = False
        old, self._cursor = self._cursor, index
        for i in (old, index):
            if i is not None:
                self._refresh_host(i)
        if scroll:
            self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        y = self._line_of.get(self._cursor) if self._cursor is not None else None
        if y is None:
            return
        # A section header just above its first host comes into view with it.
        top = y - 1 if y > 0 and self._lines[y - 1].kind == "section" else y
        self.scroll_to_region(Region(0, top + 1, 1, y - top + 1), animate=False, force=True,
                              x_axis=False, immediate=True, spacing=Spacing(1, 0, 0, 0))

    def _step(self, delta: int) -> None:
        if not self._host_lines:
            return
        y = self._line_of.get(self._cursor) if self._cursor is not None else None
        pos = bisect_left(self._host_lines, y) if y is not None else 0
        pos = max(0, min(len(self._host_lines) - 1, pos + delta))
        self._move_cursor(int(self._lines[self._host_lines[pos]].key))

    def action_cursor_up(self) -> None:
        self._step(-1)

    def action_cursor_down(self) -> None:
        self._step(1)

    def action_cursor_first(self) -> None:
        self._step(-len(self._host_lines))

    def action_cursor_last(self) -> None:
        self._step(len(self._host_lines))

    def action_page(self, direction: int) -> None:
        self._step(direction * max(1, self.scrollable_content_region.height - 2))

    def action_select_cursor(self) -> None:
        if self._cursor is not None:
            self.post_message(self.Selected(self, self._cursor))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y == 0:
            return
        y = offset.y - 1 + round(self.scroll_y)
        if 0 <= y < len(self._lines) and self._lines[y].kind == "host":
            index = int(self._lines[y].key)
            self._move_cursor(index, scroll=False)
            if event.chain >= 2:
                self.post_message(self.Selected(self, index))

    # ---------------------------------------------------------------------------- rendering

    def columns(self, width: int) -> Columns:
        activity = 0
        if self._activity:
            activity = max(10, min(22, max(cell_len(t) for t, _ in self._activity.values())))
        return Columns(name=min(self._name_width, max(NAME_MIN, width // 5)), activity=activity)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if width != self._strip_width:
            self._clear_strips()
            self._strip_width = width
        if self._strips_style is None:
            self._use_strips_of_style()
        if y == 0:
            return self._strip(self._header_text(width), width, "header")
        line_no = round(self.scroll_y) + y - 1
        if line_no >= len(self._lines):
            if line_no == 0:
                return self._strip(self._empty_text(), width, None)
            return Strip.blank(width, self._line_style(False))
        line = self._lines[line_no]
        cursor = line.kind == "host" and line.key == self._cursor
        key = (line.key, cursor)
        strip = self._strips.get(key)
        if strip is None:
            text = self._line_text(line, width, cursor)
            strip = self._strips[key] = self._strip(text, width, "cursor" if cursor else None)
        return strip

    # ------------------------------------------------------------------ strips across styles

    def notify_style_update(self) -> None:
        """Styles changed: the Strips drawn so far are kept with the styles they were drawn in
        (see _use_strips_of_style), not dropped. Focus is what changes them most: the table
        is focused and unfocused each time the overview's tab is shown and left, and
        redrawing every line shown was a third of what showing it cost."""
        self._strips = {}  # until the next render knows the new styles
        self._strips_style = None
        super().notify_style_update()  # LineStyles: component styles to be looked up again

    def _use_strips_of_style(self) -> None:
        """The Strips drawn in the styles now in force (every component style and the line's
        own: what a Strip's look depends on besides its text and width), if any were; the
        set drawn in the previous styles is kept too (back to focused, back to unfocused)."""
        key = (*(self._style(name.removeprefix(self.STYLE_PREFIX))
                 for name in sorted(self.COMPONENT_CLASSES)),
               self._line_style(False), self._line_style(True))
        strips = self._strip_sets.pop(key, None)
        if strips is None:
            strips = {}
        while len(self._strip_sets) >= 2:  # keep the last two sets of styles
            del self._strip_sets[next(iter(self._strip_sets))]
        self._strip_sets[key] = self._strips = strips
        self._strips_style = key

    def _all_strips(self) -> list[dict[tuple[int | str, bool], Strip]]:
        """Every cached set of Strips: a host's changed line is dropped from each."""
        return [*self._strip_sets.values(), self._strips]

    def _clear_strips(self) -> None:
        for strips in self._all_strips():
            strips.clear()

    def _strip(self, text: Text, width: int, over: str | None) -> Strip:
        base = self._line_style(over == "cursor")
        if over == "header":
            base = base + self._style("header")
        if over is not None:
            text.stylize(base)
        text.style = base
        text.truncate(width, overflow="ellipsis", pad=True)
        return Strip(text.render(self.app.console, end=""), width)

    def _line_text(self, line: _Line, width: int, cursor: bool) -> Text:
        if line.kind == "section":
            return self._section_text(str(line.key))
        return self._host_text(int(line.key), width, cursor)

    def _header_text(self, width: int) -> Text:
        cols = self.columns(width)
        text = Text(no_wrap=True, end="")
        text.append(f"  {'state':<{STATE_WIDTH}} {'host':<{cols.name}}")
        for title, w, right in Columns.FIGURES:
            text.append(" " + (f"{title:>{w}}" if right else f"{title:<{w}}"))
        if cols.activity:
            text.append(f" {'reload':<{cols.activity}}")
        text.append(" why")
        return text

    def _host_text(self, i: int, width: int, cursor: bool) -> Text:
        row = self._rows[i]
        cols = self.columns(width)
        text = Text(no_wrap=True, end="")
        text.append(CURSOR_MARK if cursor else " ")
        text.append(" ")
        state = ellipsize(f"{ICONS[row.severity]} {plain(short_badge(row.label))}",
                          STATE_WIDTH)
        text.append(f"{state:<{STATE_WIDTH}}", self._style(row.severity))
        text.append(" ")
        name = ellipsize(self._names[i], cols.name)
        text.append(f"{name:<{cols.name}}", self._style("name"))
        figures = ((row.workers, "ok"), (row.oldest, row.oldest_sev), (row.queue, row.queue_sev),
                   (row.fds, row.fds_sev), (row.errors, row.errors_sev),
                   (row.health, row.health_sev))
        for (value, sev), (_, w, right) in zip(figures, Columns.FIGURES, strict=True):
            value = ellipsize(value, w)
            text.append(" ")
            text.append(f"{value:>{w}}" if right else f"{value:<{w}}",
                        self._style(sev) if sev != "ok" else self._style("muted")
                        if value == "-" else Style())
        if cols.activity:
            act, sev = self._activity.get(i, ("", "ok"))
            act = ellipsize(act, cols.activity)
            text.append(" ")
            text.append(f"{act:<{cols.activity}}", self._style(sev) if sev != "ok" else Style())
        text.append(" ")
        text.append(plain(row.reasons), self._style("muted"))
        return text

    def _section_text(self, group: str) -> Text:
        members = [i for i, g in enumerate(self._groups)
                   if (g if g is not None else NO_GROUP) == group]
        counts: dict[Severity, int] = {}
        for i in members:
            sev = self._rows[i].severity
            counts[sev] = counts.get(sev, 0) + 1
        text = Text(no_wrap=True, end="")
        text.append(f"▼ {plain(group)}", self._style("section"))
        text.append(f"  {len(members)} host{'s' if len(members) != 1 else ''}",
                    self._style("muted"))
        for sev in ("critical", "warn", "unknown", "ok"):
            n = counts.get(sev, 0)
            if n:
                text.append("  ")
                text.append(f"{ICONS[sev]} {n} {sev}", self._style(sev))
        return text

    def _empty_text(self) -> Text:
        text = Text(no_wrap=True, end="")
        if self._filter:
            text.append("  no host matches ", self._style("muted"))
            text.append(plain(self._filter), self._style("muted"))
        else:
            text.append("  no hosts", self._style("muted"))
        return text

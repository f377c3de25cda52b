"""Gauge and GaugeList: "how full is it, against which limit" for listen queues and fds.

A listen queue at 97/100 and an fd count at 1019/1024 are the two numbers that explain most
502/504 storms, so a gauge shows the value, the limit and the percentage as text (readable
without colour and in a paste), a bar for the eye, and a severity (ok / warn / critical /
unknown) as colour and as a CSS class (`-ok`, `-warn`, `-critical`, `-unknown`) the app can
style. The severity is the health model's (stackmon.health: queue or fd thresholds, by the
gauge's `kind`), so a gauge is never red while the tab says ok. A limit of 0 means "unknown":
the gauge says `value/?` instead of inventing a fill.

`GaugeList` shows a changing sequence of `GaugeItem`s and reuses one `Gauge` per item key, so a
poll that only moved numbers repaints a few lines and mounts nothing. `listen_queue_items()` and
`fd_items()` turn a `HostSnapshot` into items the way stackmon presents them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal, NamedTuple

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Static

from stackmon.health import fd_severity, queue_severity
from stackmon.model import FdReport, HostSnapshot, ProcessFds
from widgets._fmt import Severity, ellipsize, fmt_count, plain
from widgets._styles import StyleGetter, StyleMemo

GaugeKind = Literal["queue", "fd"]
MAX_LABEL_WIDTH = 28
MIN_LABEL_WIDTH = 14  # "uwsgi workers", "system file-nr" whole at 80 columns
NUMBERS_WIDTH = 11  # "value/limit", right-aligned: 12345/65536
PCT_WIDTH = 4  # " 93%"
MAX_NOTE_WIDTH = 16
MAX_BAR_WIDTH = 40
MIN_BAR_WIDTH = 4
BAR_FULL = "█"
BAR_EMPTY = "░"


def gauge_severity(value: int, limit: int, kind: GaugeKind = "queue") -> Severity:
    """Severity of value/limit by the health model's thresholds for this kind of gauge (a
    listen queue against its backlog, or open fds against their limit)."""
    if kind == "fd":
        return fd_severity(value, limit)
    return queue_severity(value, limit)


def gauge_percent(value: int, limit: int) -> int | None:
    """Whole percent, rounded down (never shows 90% for 89.6%); None when the limit is unknown."""
    if limit <= 0:
        return None
    return value * 100 // limit


# label, value, limit, note, label width, note width
_GaugeState = tuple[str, int, int, str, int | None, int | None]


GAUGE_CLASSES = frozenset({
    "gauge--label",
    "gauge--ok",
    "gauge--warn",
    "gauge--critical",
    "gauge--unknown",
    "gauge--empty",
    "gauge--note",
})
# The component rules, nested in a widget's DEFAULT_CSS (Gauge's, and the side panel's, which
# draws the same lines).
GAUGE_STYLES = """
        & > .gauge--label { color: $foreground; }
        & > .gauge--ok { color: $text-success; }
        & > .gauge--warn { color: $text-warning; text-style: bold; }
        & > .gauge--critical { color: $text-error; text-style: bold reverse; }
        & > .gauge--unknown { color: $text-muted; }
        & > .gauge--empty { color: $text-muted; }
        & > .gauge--note { color: $text-muted; }
"""


class Gauge(StyleMemo, Widget):
    """One line: `label  ████░░░░  value/limit  pct%  note`, coloured by severity."""

    COMPONENT_CLASSES: ClassVar[set[str]] = set(GAUGE_CLASSES)
    """
    | Class | What |
    | :- | :- |
    | `gauge--label` | the label |
    | `gauge--ok` / `--warn` / `--critical` / `--unknown` | numbers (the bar takes the colour) |
    | `gauge--empty` | the unfilled part of the bar |
    | `gauge--note` | the note after the numbers |
    """

    DEFAULT_CSS = f"""
    Gauge {{
        height: 1;
        width: 1fr;
        {GAUGE_STYLES}
    }}
    """

    def __init__(
        self,
        label: str,
        value: int = 0,
        limit: int = 0,
        note: str = "",
        *,
        kind: GaugeKind = "queue",
        label_width: int | None = None,
        note_width: int | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        """`limit` 0: unknown. `kind`: whose thresholds grade it (stackmon.health).
        `label_width` and `note_width`: cells reserved for the label and the note, so that
        the bars of several gauges line up (GaugeList sets them); None: the gauge's own."""
        super().__init__(name=name, id=id, classes=classes)
        self._kind: GaugeKind = kind
        self._state: _GaugeState = (label, value, limit, note, label_width, note_width)
        self._severity: Severity = gauge_severity(value, limit, kind)
        self.add_class(f"-{self._severity}")

    @property
    def value(self) -> int:
        return self._state[1]

    @property
    def limit(self) -> int:
        return self._state[2]

    @property
    def severity(self) -> Severity:
        return self._severity

    @property
    def percent(self) -> int | None:
        return gauge_percent(self.value, self.limit)

    def set_value(
        self,
        value: int,
        limit: int,
        *,
        note: str | None = None,
        label: str | None = None,
        label_width: int | None = None,
        note_width: int | None = None,
    ) -> None:
        """New figures (None keeps the current note / label / widths); repaints only when
        something changed."""
        old_label, _, _, old_note, old_lw, old_nw = self._state
        state: _GaugeState = (
            old_label if label is None else label,
            value,
            limit,
            old_note if note is None else note,
            old_lw if label_width is None else label_width,
            old_nw if note_width is None else note_width,
        )
        if state == self._state:
            return
        self._state = state
        severity = gauge_severity(value, limit, self._kind)
        if severity != self._severity:
            self.remove_class(f"-{self._severity}")
            self.add_class(f"-{severity}")
            self._severity = severity
        self.refresh()

    def render(self) -> Text:
        return gauge_text(self._state, self._severity, self.content_region.width,
                          self.component_style)


def gauge_text(state: _GaugeState, severity: Severity, width: int, get: StyleGetter) -> Text:
    """One gauge line in `width` cells (Gauge's, and a line of the side panel)."""
    label, value, limit, note, label_width, note_width = state
    sev_style = get(f"gauge--{severity}")
    label = plain(label)
    note = plain(note)
    pct = gauge_percent(value, limit)
    numbers = f"{fmt_count(value)}/{fmt_count(limit) if limit > 0 else '?'}"
    pct_text = f"{pct:>3}%" if pct is not None else "   ?"
    label_w, bar_w, numbers_w, show_note = gauge_layout(
        width,
        cell_len(label) if label_width is None else label_width,
        cell_len(note) if note_width is None else note_width,
        len(numbers),
    )

    text = Text(no_wrap=True, end="")
    text.append(ellipsize(label, label_w).ljust(label_w), get("gauge--label"))
    text.append(" ")
    if bar_w:
        filled = 0
        if pct is not None and value > 0:
            filled = max(1, min(bar_w, round(bar_w * value / limit)))
        text.append(BAR_FULL * filled, Style(color=sev_style.color))
        text.append(BAR_EMPTY * (bar_w - filled), get("gauge--empty"))
        text.append(" ")
    text.append(numbers.rjust(numbers_w), sev_style if severity != "ok" else "")
    text.append(" ")
    text.append(pct_text, sev_style)
    if note and show_note:
        text.append("  ")
        text.append(note, get("gauge--note"))
    text.truncate(width, overflow="ellipsis")
    return text


def gauge_layout(
    width: int, label_width: int, note_width: int, numbers_len: int
) -> tuple[int, int, int, bool]:
    """How a gauge line spends `width` cells: (label, bar, numbers, show the note?).

    Gauges of one list get the same label/note widths, so this gives them the same bar and
    their bars line up. When space is short, the note goes first, then the label is cut (not
    below MIN_LABEL_WIDTH), then the bar; the numbers always stay.
    """
    numbers_w = max(NUMBERS_WIDTH, numbers_len)
    right = 1 + numbers_w + 1 + PCT_WIDTH  # " value/limit pct%"
    note_w = 2 + note_width if note_width else 0
    bar = width - label_width - 1 - right - note_w
    if bar >= MIN_BAR_WIDTH:
        return label_width, min(bar, MAX_BAR_WIDTH), numbers_w, True
    bar += note_w
    if bar >= MIN_BAR_WIDTH:
        return label_width, min(bar, MAX_BAR_WIDTH), numbers_w, False
    label_w = max(min(label_width, MIN_LABEL_WIDTH), width - 1 - right - MIN_BAR_WIDTH)
    bar = width - label_w - 1 - right
    if bar >= MIN_BAR_WIDTH:
        return label_w, bar, numbers_w, False
    return max(0, min(label_width, width - right)), 0, numbers_w, False


class GaugeItem(NamedTuple):
    """One gauge in a GaugeList; `key` identifies it across updates (never shown)."""

    key: str
    label: str
    value: int
    limit: int
    note: str = ""
    kind: GaugeKind = "queue"


def _label_width(items: Sequence[GaugeItem]) -> int:
    return min(MAX_LABEL_WIDTH, max((cell_len(plain(i.label)) for i in items), default=0))


def _note_width(items: Sequence[GaugeItem]) -> int:
    return min(MAX_NOTE_WIDTH, max((cell_len(plain(i.note)) for i in items), default=0))


def _widths(items: Sequence[GaugeItem]) -> tuple[int, int]:
    """Label and note widths shared by a list's gauges, so that their bars line up."""
    return _label_width(items), _note_width(items)


def gauge_lines(items: Sequence[GaugeItem], width: int, get: StyleGetter) -> list[Text]:
    """The lines a GaugeList of these items shows, bars aligned (the side panel's gauges)."""
    label_w, note_w = _widths(items)
    return [gauge_text((i.label, i.value, i.limit, i.note, label_w, note_w),
                       gauge_severity(i.value, i.limit, i.kind), width, get) for i in items]


class GaugeList(Widget):
    """A vertical group of gauges, one per item, aligned on a common label width.

    `set_items()` on every poll: gauges are matched by key and updated in place; widgets are
    mounted or removed only when the set of keys changes. With no items, `empty_text` shows.
    """

    DEFAULT_CSS = """
    GaugeList {
        height: auto;
        layout: vertical;
        & > .gauge-list--empty {
            color: $text-muted;
            text-style: italic;
        }
    }
    """

    def __init__(
        self,
        items: Sequence[GaugeItem] = (),
        *,
        empty_text: str = "",
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._items: tuple[GaugeItem, ...] = ()
        self._gauges: dict[str, Gauge] = {}
        self._empty = Static(Text(empty_text), classes="gauge-list--empty", markup=False)
        self._pending = tuple(items)
        self._composed = False

    @property
    def gauges(self) -> dict[str, Gauge]:
        """The gauge for each key, in display order (read-only view for the app and tests)."""
        return dict(self._gauges)

    def compose(self) -> ComposeResult:
        items = self._pending
        self._check_keys(items)
        widths = _widths(items)
        for item in items:
            gauge = self._gauges[item.key] = self._new_gauge(item, widths)
            yield gauge
        self._items = items
        self._empty.display = not items
        self._composed = True
        yield self._empty

    @staticmethod
    def _check_keys(items: Sequence[GaugeItem]) -> None:
        if len({item.key for item in items}) != len(items):
            raise ValueError("GaugeList item keys must be unique")

    def _new_gauge(self, item: GaugeItem, widths: tuple[int, int]) -> Gauge:
        return Gauge(item.label, item.value, item.limit, item.note, kind=item.kind,
                     label_width=widths[0], note_width=widths[1])

    @staticmethod
    def _update(gauge: Gauge, item: GaugeItem, widths: tuple[int, int]) -> None:
        gauge.set_value(item.value, item.limit, note=item.note, label=item.label,
                        label_width=widths[0], note_width=widths[1])

    def set_items(self, items: Sequence[GaugeItem]) -> None:
        """Show these items, in this order. Item keys must be unique."""
        items = tuple(items)
        if not self._composed:
            self._check_keys(items)
            self._pending = items
            return
        if items == self._items:
            return
        self._check_keys(items)
        keys = [item.key for item in items]
        self._items = items
        widths = _widths(items)
        self._empty.display = not items

        old = self._gauges
        if keys == list(old):  # the usual case: same gauges, new figures
            for item in items:
                self._update(old[item.key], item, widths)
            return

        key_set = set(keys)
        kept = [key for key in old if key in key_set]
        if kept != [key for key in keys if key in old]:
            # Reordered: rare (the sources keep a stable order), so start over.
            kept = []
        for key, gauge in old.items():
            if key not in kept:
                gauge.remove()
        gauges: dict[str, Gauge] = {}
        kept_set = set(kept)
        next_kept = 0  # index in `kept` of the next kept gauge in display order
        prev: Gauge | None = None
        for item in items:
            if item.key in kept_set:
                gauge = old[item.key]
                self._update(gauge, item, widths)
                next_kept += 1
            else:
                gauge = self._new_gauge(item, widths)
                if prev is not None:
                    self.mount(gauge, after=prev)
                elif next_kept < len(kept):
                    self.mount(gauge, before=old[kept[next_kept]])
                else:
                    self.mount(gauge, before=self._empty)
            gauges[item.key] = gauge
            prev = gauge
        self._gauges = gauges


# --------------------------------------------------------------------- items from a snapshot

_ROLE_LABELS = {
    "uwsgi-master": "uwsgi master",
    "uwsgi-worker": "uwsgi workers",
    "nginx-master": "nginx master",
    "nginx-worker": "nginx workers",
}


def short_address(address: str) -> str:
    """What fits a gauge label: a unix socket's file name, a loopback or wildcard TCP
    listener's port (`:8080`); other addresses whole."""
    if address.startswith(("/", ".")) or "/" in address:
        return address.rstrip("/").rsplit("/", 1)[-1] or address
    host, sep, port = address.rpartition(":")
    if sep and host in ("127.0.0.1", "0.0.0.0", "[::]", "[::1]", "*", ""):
        return f":{port}"
    return address


def listen_queue_items(host: HostSnapshot) -> list[GaugeItem]:
    """Accept queues against their backlog: every uWSGI socket (the kernel's figures for unix
    sockets, noted "(kernel)"), then the kernel's listeners not already shown (nginx's own).
    A backlog equal to net.core.somaxconn is noted: listen() asked for more and was capped."""
    items: list[GaugeItem] = []
    somaxconn = host.kernel.somaxconn
    shown: set[str] = set()
    for index, instance in enumerate(host.uwsgi):
        prefix = "uwsgi" if len(host.uwsgi) == 1 else f"uwsgi[{index}]"
        for position, sock in enumerate(instance.sockets):
            notes = []
            if sock.source == "kernel":
                notes.append("(kernel)")
            if somaxconn and sock.max_queue == somaxconn:
                notes.append(f"somaxconn {somaxconn}")
            items.append(GaugeItem(f"uwsgi:{index}:{position}:{sock.name}",
                                   f"{prefix} {short_address(sock.name)}",
                                   sock.queue, sock.max_queue, " ".join(notes)))
            shown.add(sock.name)
    stats = {u.address for u in host.uwsgi}
    for listener in host.listeners:
        if listener.owner == "uwsgi" and listener.address in shown:
            continue
        owner = listener.owner or "other"
        if listener.owner == "uwsgi" and listener.address in stats:
            owner = "stats"  # the stats server's own socket
        note = f"somaxconn {somaxconn}" if somaxconn and listener.backlog == somaxconn else ""
        # reuseport gives several listeners one address: the inode tells them apart.
        items.append(GaugeItem(f"listen:{listener.kind}:{listener.address}:{listener.inode}",
                               f"{owner} {short_address(listener.address)}", listener.queue,
                               listener.backlog, note))
    return items


def _fd_ratio(p: ProcessFds) -> float:
    return p.open / p.limit if p.limit > 0 else 0.0


def fd_items(fds: FdReport) -> list[GaugeItem]:
    """Open fds against the soft limit, one gauge per process role (the fullest process of the
    role, e.g. "uwsgi workers max 37/1024 pid 4242"), then the system's file-nr/file-max."""
    items: list[GaugeItem] = []
    by_role: dict[str, list[ProcessFds]] = {}
    for p in fds.processes:
        by_role.setdefault(p.role, []).append(p)
    order = [r for r in _ROLE_LABELS if r in by_role] + sorted(
        r for r in by_role if r not in _ROLE_LABELS
    )
    for role in order:
        procs = by_role[role]
        worst = max(procs, key=lambda p: (_fd_ratio(p), p.open))
        label = _ROLE_LABELS.get(role, role)
        # Several processes: the fullest one's figures (the note says which, room allowing).
        note = f"max: pid {worst.pid}" if len(procs) > 1 else f"pid {worst.pid}"
        items.append(GaugeItem(f"fd:{role}", label, worst.open, worst.limit, note, kind="fd"))
    if fds.system is not None:
        items.append(GaugeItem("fd:system", "system file-nr", fds.system.open, fds.system.max,
                               "file-max", kind="fd"))
    return items

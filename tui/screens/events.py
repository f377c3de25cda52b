"""The events screen: what happened on a host, newest first, from its logs and stackmon itself.

uWSGI's log says which worker was killed by harakiri on which URI, which died, which respawned,
when a reload started and which stragglers got NO MERCY; stackmon's own kills and reloads are
events too. Each row is one event with its time, source, kind, worker, pid, URI and the log's
own words, so "what happened to worker 3 at 14:02?" is answered without a shell on the host.
`/` filters (any field, case-insensitive); the screen follows the host live while it is open.
Every field comes from a log: rich Text only, never markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from stackmon.logs.host import LogSummary
from stackmon.logs.uwsgi_events import Event
from stackmon.redact import visible

KIND_STYLE = {"harakiri": "bold red", "no_mercy": "bold red", "worker_died": "bold red",
              "queue_full": "bold red", "killed": "bold yellow", "respawn": "green",
              "reload": "cyan", "chain_reload": "cyan"}
COLUMNS = ("time", "source", "kind", "worker", "pid", "uri", "text")


def _clock(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(epoch).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a broken log or agent document
        return "?"


def event_fields(e: Event) -> tuple[str, ...]:
    """The row of one event as plain strings, control characters made visible."""
    return (_clock(e.at), visible(e.source), visible(e.kind),
            "-" if e.worker is None else str(e.worker), "-" if e.pid is None else str(e.pid),
            visible(e.uri) if e.uri else "-", visible(e.text))


def matching(events: Sequence[Event], needle: str) -> list[Event]:
    """Events with `needle` in any field (case-insensitive); all when it is empty."""
    needle = needle.strip().lower()
    if not needle:
        return list(events)
    return [e for e in events if any(needle in f.lower() for f in event_fields(e))]


def render_events(host: str, logs: LogSummary | None,
                  needle: str = "") -> tuple[Text, Table | Text]:
    """(title line, body) for a host's events (pure: the screen and its tests use it)."""
    title = Text.assemble(("Events ", "bold"), (visible(host), "bold"))
    if logs is None:
        return title, Text("No log source for this host: events come from uWSGI's log and "
                           "from stackmon's own actions.", style="italic")
    shown = matching(logs.events, needle)
    title.append(f"  last {logs.window_s:.0f} s, newest first  ", "dim")
    title.append(f"{len(shown)}" + (f" of {len(logs.events)}" if needle.strip() else ""))
    title.append(" event(s)", "dim")
    if needle.strip():
        title.append("  filter: ", "dim")
        title.append(visible(needle), "bold")
    if not shown:
        why = "No event matches the filter." if logs.events else (
            "No event in the window: no harakiri, no worker died or respawned, no reload.")
        return title, Text(why, style="italic")
    table = Table(box=None, expand=True, pad_edge=False, padding=(0, 1), show_edge=False,
                  header_style="bold")
    for name in COLUMNS:
        if name == "uri":
            table.add_column(name, ratio=1, overflow="fold", min_width=8)
        elif name == "text":
            table.add_column(name, ratio=2, overflow="fold", min_width=12)
        else:
            table.add_column(name, no_wrap=True)
    for e in shown:
        cells = [Text(f) for f in event_fields(e)]
        cells[2].stylize(KIND_STYLE.get(e.kind, ""))
        table.add_row(*cells)
    return title, table


class EventFilter(Input):
    """The events filter; Escape clears and closes it."""

    BINDINGS = [Binding("escape", "close", "Close filter", show=False)]

    def action_close(self) -> None:
        self.value = ""
        self.display = False
        self.screen.query_one("#events-scroll").focus()


class EventsScreen(Screen[None]):
    DEFAULT_CSS = """
    EventsScreen #events-title { height: auto; padding: 0 1; background: $boost; }
    EventsScreen #events-scroll { padding: 0 1; }
    EventsScreen #events-filter { dock: bottom; height: 3; }
    """
    BINDINGS = [
        Binding("escape,q", "close", "Back"),
        Binding("slash", "filter", "Filter", key_display="/"),
    ]

    def __init__(self, host_index: int, host_name: str, logs: LogSummary | None) -> None:
        super().__init__()
        self.host_index = host_index
        self.host_name = host_name
        self.logs = logs
        self.needle = ""

    def compose(self) -> ComposeResult:
        title, body = render_events(self.host_name, self.logs)
        yield Static(title, id="events-title", markup=False)
        with VerticalScroll(id="events-scroll"):
            yield Static(body, id="events", markup=False)
        yield EventFilter(placeholder="filter events (Esc clears)", id="events-filter")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(EventFilter).display = False
        self.query_one("#events-scroll").focus()

    def set_logs(self, logs: LogSummary | None) -> None:
        """The host's newest log summary (the screen follows the host while open)."""
        if logs is self.logs:
            return
        self.logs = logs
        self._redraw()

    def _redraw(self) -> None:
        if not self.is_mounted:
            return
        title, body = render_events(self.host_name, self.logs, self.needle)
        self.query_one("#events-title", Static).update(title)
        self.query_one("#events", Static).update(body)

    def action_filter(self) -> None:
        box = self.query_one(EventFilter)
        box.display = True
        box.focus()

    @on(Input.Changed, "#events-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.needle = event.value
        self._redraw()

    @on(Input.Submitted, "#events-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#events-scroll").focus()

    def action_close(self) -> None:
        self.dismiss(None)

"""A worker's detail: its counters and every variable of each request in flight.

The variables come redacted from the source; they are still untrusted, so every cell is a
rich Text built from plain strings, never markup. The screen follows the worker live: the app
hands it each new snapshot of the worker while it is open, and says so when the worker's pid
changes (respawned) or the worker disappears.
"""

from __future__ import annotations

from datetime import datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from stackmon.model import Worker
from stackmon.redact import visible
from stackmon.render_text import human_age, human_bytes
from widgets.worker_list import UNKNOWN, respawns

LEVEL_STYLE = {"ok": "", "slow": "bold black on yellow", "critical": "bold white on red"}
LEVEL_LABEL = {"ok": "", "slow": " SLOW ", "critical": " CRIT "}


def _when(epoch: float | None) -> str:
    if not epoch:
        return "?"
    try:
        return datetime.fromtimestamp(epoch).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a broken stats document's timestamp
        return "?"


def render_worker_detail(host: str, worker: Worker | None, worker_id: int, now: float,
                         first_pid: int) -> Group:
    """The whole detail as one renderable (pure: used by the screen and its tests)."""
    title = Text.assemble(("Host ", "dim"), (visible(host), "bold"), ("  worker ", "dim"),
                          (str(worker_id), "bold"))
    if worker is None:
        return Group(title, Text("\nThis worker is no longer in the stats.", style="bold red"))
    head = Table.grid(padding=(0, 2))
    for _ in range(4):
        head.add_column()
    rows = (
        ("pid", str(worker.pid), "status", worker.status),
        ("requests", str(worker.requests), "exceptions", str(worker.exceptions)),
        ("respawns", str(respawns(worker)), "harakiri", str(worker.harakiri_count)),
        ("avg rt", f"{worker.avg_rt_ms:.0f} ms", "rss",
         human_bytes(worker.rss) if worker.rss else UNKNOWN),
        ("spawned", _when(worker.last_spawn), "accepting", "yes" if worker.accepting else "no"),
    )
    for row in rows:  # Text cells: a str cell would be parsed as markup (status is open-ended)
        head.add_row(*(Text(visible(cell)) for cell in row))
    parts: list[RenderableType] = [title, head]
    if first_pid and worker.pid != first_pid:
        parts.append(Text(f"\nRespawned: pid {first_pid} -> {worker.pid}", style="bold green"))
    in_flight = worker.requests_in_flight
    if not in_flight:
        parts.append(Text("\nNo request in flight.", style="dim"))
    for r in in_flight:
        running = r.running_s if r.started_at is None else max(0.0, now - r.started_at)
        line = Text.assemble(("\ncore ", "dim"), (str(r.core), "bold"), "  ",
                             (r.method or "?", "bold"), " ", r.uri or "(not captured)")
        line.append(f"  running {human_age(running)}  started {_when(r.started_at)} ")
        if r.level != "ok":
            line.append(LEVEL_LABEL[r.level], LEVEL_STYLE[r.level])
        parts.append(line)
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False,
                      expand=True)
        table.add_column("variable", no_wrap=True, ratio=1)
        table.add_column("value", overflow="fold", ratio=3)
        for key, value in r.vars:
            table.add_row(Text(key), Text(value))
        if not r.vars:
            table.add_row(Text("(none captured)", style="dim"), Text(""))
        parts.append(table)
    return Group(*parts)


class WorkerDetailScreen(Screen[None]):
    DEFAULT_CSS = """
    WorkerDetailScreen > VerticalScroll { padding: 0 1; }
    """
    BINDINGS = [Binding("escape,q", "close", "Back")]

    def __init__(self, host_index: int, host_name: str, worker: Worker, address: str,
                 now: float, nth: int = 0, read_only: bool = False) -> None:
        super().__init__()
        self.host_index = host_index
        self.host_name = host_name
        self.address = address  # the worker's instance: worker ids repeat across instances
        self.worker_id = worker.id
        self.worker_nth = nth  # ... and within one (the nth worker with this id, WorkerKey)
        self.first_pid = worker.pid
        self.worker: Worker | None = worker
        self._now = now
        # K kills this worker; read-only keeps the key (it says why) out of the Footer.
        self._bindings.bind("K", "kill", "Kill", show=not read_only, key_display="K")

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="detail")
        yield Footer()

    def set_worker(self, worker: Worker | None, now: float) -> None:
        if worker == self.worker and int(now) == int(self._now):
            return
        self.worker, self._now = worker, now
        self._refresh()

    def _refresh(self) -> None:
        self.query_one("#detail", Static).update(
            render_worker_detail(self.host_name, self.worker, self.worker_id, self._now,
                                 self.first_pid))

    def action_close(self) -> None:
        self.dismiss(None)

    def action_kill(self) -> None:
        """K here kills the worker this screen shows (as it is now: the app asks, names the
        pid, and refuses a worker without a process)."""
        from tui.app import StackmonApp

        app = self.app
        if self.worker is None:
            self.notify("This worker is no longer in the stats: nothing to kill.",
                        severity="warning")
        elif isinstance(app, StackmonApp):
            app.confirm_kill(app.panes[self.host_index], self.worker, self.address)

    def on_mount(self) -> None:
        self._refresh()

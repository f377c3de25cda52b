"""The reload, draining worker by worker, against its mercy timeout.

Fed ReloadProgress values (from stackmon.actions.reload_progress) by the app's worker that
follows the reload; this screen only renders them. Each worker shows replaced (old pid -> new),
draining (the request it is finishing and its age, with a countdown bar), about to be killed,
exited (waiting for respawn) or waiting its turn (chain); then the outcome and how long it took.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from stackmon.actions.reload_progress import ReloadProgress, WorkerReload
from stackmon.redact import visible
from stackmon.render_text import human_age

STATE_STYLE = {
    "replaced": ("replaced", "bold green"),
    "draining": ("draining", "bold yellow"),
    "killing": ("KILL SOON", "bold white on red"),
    "exited": ("exited, respawning", "cyan"),
    "waiting": ("waiting its turn", "dim"),
    "gone": ("not in stats", "dim"),
}


def _bar(countdown: float | None, mercy: float, width: int = 20) -> Text:
    if countdown is None or mercy <= 0:
        return Text("")
    left = max(0.0, min(mercy, countdown))
    filled = round(width * left / mercy)
    style = "red" if left <= 3 else "yellow"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"),
                         f" {left:4.0f}s")


def _row(w: WorkerReload, mercy: float) -> tuple[Text, Text, Text, Text, Text]:
    label, style = STATE_STYLE.get(w.state, (w.state, ""))
    pids = Text(f"{w.old_pid} → {w.pid}" if w.state == "replaced" else str(w.pid or w.old_pid))
    what = Text()
    if w.request is not None:
        what.append(w.request.method or "?", "bold")
        what.append(" ")
        what.append(w.request.uri or "(not captured)")
        what.append(f"  {human_age(w.request.running_s)}", "bold")
    elif w.replaced_after is not None:
        what.append(f"after {w.replaced_after:.1f} s", "dim")
    return Text(str(w.id)), Text(label, style=style), pids, what, _bar(w.countdown, mercy)


def render_progress(host: str, instance: str, p: ReloadProgress) -> Table:
    """The whole view as one renderable (pure: the screen and tests use it)."""
    table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    table.add_column("worker", no_wrap=True, width=6)
    table.add_column("state", no_wrap=True, width=18)
    table.add_column("pid", no_wrap=True, width=15)
    table.add_column("finishing", ratio=1, overflow="ellipsis", no_wrap=True)
    table.add_column("mercy left", no_wrap=True, width=26)
    for w in p.workers:
        table.add_row(*_row(w, p.mercy))
    title = Text.assemble((f"{p.mode.capitalize()} reload ", "bold"), "of ",
                          (visible(instance), "bold"), " on ", (visible(host), "bold"),
                          f"   elapsed {p.elapsed:.0f} s   worker-reload-mercy {p.mercy:g} s")
    status_style = "bold green" if p.done else ("bold yellow" if p.stats_available else
                                                "bold cyan")
    table.title = title
    table.caption = Text(visible(p.message), style=status_style)
    return table


class ReloadScreen(Screen[None]):
    DEFAULT_CSS = """
    ReloadScreen > VerticalScroll { padding: 0 1; }
    """
    BINDINGS = [Binding("escape,q", "close", "Back (the reload goes on)")]

    def __init__(self, host: str, instance: str, start: ReloadProgress) -> None:
        super().__init__()
        self.host, self.instance, self.progress = host, instance, start

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(render_progress(self.host, self.instance, self.progress), id="reload")
        yield Footer()

    def set_progress(self, progress: ReloadProgress) -> None:
        self.progress = progress
        if self.is_mounted:
            self.query_one("#reload", Static).update(
                render_progress(self.host, self.instance, progress))

    def action_close(self) -> None:
        self.dismiss(None)

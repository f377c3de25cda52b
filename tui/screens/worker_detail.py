"""A worker's detail: its counters, each request in flight against its deadlines, the worker's
Python stack on demand, and every variable of each request.

The variables come redacted from the source; they are still untrusted, so every cell is a
rich Text built from plain strings, never markup. The screen follows the worker live: the app
hands it each new snapshot of the worker while it is open, and says so when the worker's pid
changes (respawned) or the worker disappears.

Deadlines: every one a request runs into (harakiri, nginx's read timeout, the LB's idle
timeout), counted down from the request's live age, with where it is set (file:line). A request
past nginx's or the LB's timeout is one whose client already has a 504: said in words, since
it changes what the user does (killing that worker loses nothing a client waits for).

The stack (`t`, again to refresh; `l` with locals, redacted by the core): read through the
app's Host (a `Tracer` the app hands in) in a Textual worker, so py-spy never blocks the UI;
a refusal or a py-spy error is a message in the section, never a crash. The stack sits between
the requests and their variables: the question it answers is about the request above it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker as Job
from textual.worker import WorkerState

from stackmon.actions.base import ActionError
from stackmon.actions.stack import StackResult
from stackmon.deadlines import describe
from stackmon.model import Deadline, Request, Worker
from stackmon.redact import visible
from stackmon.render_text import human_age, human_bytes
from widgets.stack_view import StackView
from widgets.worker_list import UNKNOWN, client_gone, live_deadlines, respawns

# Reads worker `w`'s stack now (with locals or not), through the app's Host for this instance.
Tracer = Callable[[Worker, bool], Awaitable[StackResult]]

LEVEL_STYLE = {"ok": "", "slow": "bold black on yellow", "critical": "bold white on red"}
LEVEL_LABEL = {"ok": "", "slow": " SLOW ", "critical": " CRIT "}


def _when(epoch: float | None) -> str:
    if not epoch:
        return "?"
    try:
        return datetime.fromtimestamp(epoch).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a broken stats document's timestamp
        return "?"


def _age(r: Request, now: float) -> float | None:
    return r.running_s if r.started_at is None else max(0.0, now - r.started_at)


def _whole(age: float | None) -> int | None:
    """Deadlines count from the age as shown (whole seconds), like the worker list's."""
    return None if age is None else int(age)


_SETTING = {"harakiri": "uWSGI harakiri", "nginx_read_timeout": "nginx uwsgi_read_timeout",
            "lb_idle_timeout": "LB idle timeout"}


def _source(d: Deadline) -> str:
    if d.source == "settings":
        # Not "hosts file": without one (the demo) the 60 s is stackmon's default (AWS's);
        # the setting is where to change it either way.
        return "lb_idle_timeout (hosts file; 60 s by default)"
    if d.source == "default":
        return "nginx's default" if d.name == "nginx_read_timeout" else "default"
    return visible(d.source)


def deadlines_table(r: Request, now: float) -> RenderableType | None:
    """Every deadline of a request, soonest first, with its setting and where it is set."""
    deadlines = live_deadlines(r, _whole(_age(r, now)))
    if not deadlines:
        return None
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)  # "deadlines"
    table.add_column(no_wrap=True)  # "nginx 504 in 2 s"
    # "nginx uwsgi_read_timeout 60 s · /etc/nginx/sites-enabled/app:40": folds at 80 columns
    table.add_column(overflow="fold")
    for i, d in enumerate(deadlines):
        style = "bold reverse" if client_gone(d) else ("bold" if d.past else "")
        table.add_row(Text("  deadlines" if i == 0 else "", style="dim"),
                      Text(describe(d), style=style),
                      Text(f"{_SETTING[d.name]} {d.limit_s:g} s · {_source(d)}", style="dim"))
    return table


def _gone_note(r: Request, now: float) -> Text | None:
    gone = [d for d in live_deadlines(r, _whole(_age(r, now))) if client_gone(d)]
    if not gone:
        return None
    first = max(gone, key=lambda d: d.after_s)  # the first one the client hit
    who = "nginx" if first.name == "nginx_read_timeout" else "the load balancer"
    return Text(f"  The client is gone: {who} gave it a 504 {-first.after_s:.0f} s ago. The "
                "worker still works for nobody; killing it loses nothing a client waits for.",
                style="italic")


def render_worker_head(host: str, worker: Worker | None, worker_id: int, now: float,
                       first_pid: int, paused: bool = False) -> Group:
    """Title, counters and each request in flight with its deadlines (pure); `paused`: all
    of it as of the moment the screen was paused, and the title says so."""
    title = Text.assemble(("Host ", "dim"), (visible(host), "bold"), ("  worker ", "dim"),
                          (str(worker_id), "bold"))
    if paused:
        title.append("  ")
        title.append(" PAUSED ", "bold reverse")
        title.append(" as of when p was pressed; polling goes on (p resumes)", "dim")
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
        running = _age(r, now)
        line = Text.assemble(("\ncore ", "dim"), (str(r.core), "bold"), "  ",
                             (r.method or "?", "bold"), " ", r.uri or "(not captured)")
        line.append(f"  running {human_age(running)}  started {_when(r.started_at)} ")
        if r.level != "ok":
            line.append(LEVEL_LABEL[r.level], LEVEL_STYLE[r.level])
        parts.append(line)
        table = deadlines_table(r, now)
        if table is not None:
            parts.append(table)
        note = _gone_note(r, now)
        if note is not None:
            parts.append(note)
    return Group(*parts)


def render_worker_vars(worker: Worker | None) -> Group:
    """Every variable of each request in flight, secrets already redacted (pure)."""
    parts: list[RenderableType] = []
    for r in worker.requests_in_flight if worker is not None else ():
        parts.append(Text.assemble(("\nVariables of core ", "bold"), (str(r.core), "bold"),
                                   ("  ", ""), (r.method or "?", "dim"), " ",
                                   (r.uri or "(not captured)", "dim")))
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


def render_worker_detail(host: str, worker: Worker | None, worker_id: int, now: float,
                         first_pid: int) -> Group:
    """The whole detail but the stack, as one renderable (pure: for tests and text dumps)."""
    return Group(render_worker_head(host, worker, worker_id, now, first_pid),
                 render_worker_vars(worker))


STACK_HINT = "t reads it now (py-spy; the worker is not paused), l with locals."


class WorkerDetailScreen(Screen[None]):
    DEFAULT_CSS = """
    WorkerDetailScreen > VerticalScroll { padding: 0 1; }
    WorkerDetailScreen #stack-title { margin-top: 1; text-style: bold; }
    """
    BINDINGS = [Binding("escape,q", "close", "Back")]

    def __init__(self, host_index: int, host_name: str, worker: Worker, address: str,
                 now: float, nth: int = 0, read_only: bool = False,
                 tracer: Tracer | None = None) -> None:
        super().__init__()
        self.host_index = host_index
        self.host_name = host_name
        self.address = address  # the worker's instance: worker ids repeat across instances
        self.worker_id = worker.id
        self.worker_nth = nth  # ... and within one (the nth worker with this id, WorkerKey)
        self.first_pid = worker.pid
        self.worker: Worker | None = worker
        self._now = now
        self.paused = False  # the main screen is: figures and ages stay as they were
        self._tracer = tracer
        self.with_locals = False
        # K kills this worker; read-only keeps the key (it says why) out of the Footer.
        self._bindings.bind("K", "kill", "Kill", show=not read_only, key_display="K")
        if tracer is not None:  # reading a stack changes nothing: allowed in read-only too
            self._bindings.bind("t", "trace", "Stack", key_display="t")
            self._bindings.bind("l", "toggle_locals", "Locals", key_display="l")

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="detail")
            if self._tracer is not None:
                yield Static(Text("Python stack"), id="stack-title")
                yield StackView(STACK_HINT, id="stack")
            yield Static(id="vars")
        yield Footer()

    def set_worker(self, worker: Worker | None, now: float, paused: bool = False) -> None:
        """The worker as the main screen shows it, at `now`; paused: the frozen worker at
        the moment of the pause (its counters froze and its ages ticked on, seen)."""
        if worker == self.worker and int(now) == int(self._now) and paused == self.paused:
            return
        self.worker, self._now, self.paused = worker, now, paused
        self._refresh()

    def _refresh(self) -> None:
        self.query_one("#detail", Static).update(
            render_worker_head(self.host_name, self.worker, self.worker_id, self._now,
                               self.first_pid, self.paused))
        self.query_one("#vars", Static).update(render_worker_vars(self.worker))
        self._stack_note()

    # --- the stack ---------------------------------------------------------------------

    @property
    def stack_view(self) -> StackView | None:
        found = self.query(StackView)
        return found.first() if found else None

    def _stack_note(self) -> None:
        view = self.stack_view
        if view is None or view.result is None:
            return
        pid, w = view.result.pid, self.worker
        if w is None:
            note = f"This worker is no longer in the stats; this is pid {pid}'s last stack."
        elif w.pid != pid:
            note = (f"The worker was respawned (now pid {w.pid}): this stack is of pid {pid}, "
                    "which is gone. t reads the new one.")
        else:
            note = ""
        view.set_note(note, self._now)

    def show_stack(self, result: StackResult, note: str = "") -> None:
        """A stack read elsewhere (the kill's capture) shown in the section."""
        view = self.stack_view
        if view is not None:
            view.show_stack(result, note=note, now=self._now)
            self._scroll_to_stack()

    def _scroll_to_stack(self) -> None:
        for title in self.query("#stack-title"):
            title.scroll_visible(top=True, animate=False)

    def action_trace(self) -> None:
        """t: read the stack now (again: refresh)."""
        view, tracer, w = self.stack_view, self._tracer, self.worker
        if view is None or tracer is None:
            return
        if w is None:
            view.show_error("this worker is no longer in the stats.")
            return
        if not w.spawned:
            why = "cheap: not spawned" if w.cheap else "dead, waiting for its respawn"
            view.show_error(f"worker {w.id} has no process ({why}).")
            return
        what = " with locals (redacted)" if self.with_locals else ""
        view.show_loading(f"Reading the stack of pid {w.pid}{what} with py-spy…")
        self._scroll_to_stack()
        self.run_worker(tracer(w, self.with_locals), name="trace", group="trace",
                        exclusive=True, exit_on_error=False)

    def action_toggle_locals(self) -> None:
        """l: locals on or off, and read the stack again with the new setting."""
        self.with_locals = not self.with_locals
        self.notify("Stack locals on (secrets redacted)." if self.with_locals
                    else "Stack locals off.", timeout=2)
        self.action_trace()

    def on_worker_state_changed(self, event: Job.StateChanged) -> None:
        job = event.worker
        view = self.stack_view
        if job.group != "trace" or view is None:
            return
        if event.state == WorkerState.SUCCESS and isinstance(job.result, StackResult):
            view.show_stack(job.result, now=self._now)
            self._stack_note()
        elif event.state == WorkerState.ERROR:
            error = job.error
            if isinstance(error, ActionError):
                view.show_error(error.message)
            else:  # whatever else went wrong says what, in the section: never a crash
                view.show_error(f"{type(error).__name__}: {error}" if error is not None
                                else "the trace failed")

    # --- other keys ----------------------------------------------------------------------

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

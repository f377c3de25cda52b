"""Confirmations for actions that change the stack: they name exactly what will be hit.

A kill names the host, worker id, pid and every request in flight with its age and nearest
deadline, and offers only the signals that make sense (REFERENCE.md section 2): SIGTERM aborts
the request (SIGKILL after a short grace), SIGKILL at once, or SIGUSR2 first so the worker logs
what it is doing. A reload lists the requests it will wait for. Escape always cancels; nothing
happens without a key.

Killing a stuck worker ends the outage and destroys the evidence, so the kill offers to capture
the worker's Python stack first (`s` toggles it; on by default where it can work): the kill's
own audit record then carries it (Host.kill(stack=...)). SIGUSR2's output goes to the uWSGI
log, never to stackmon: the dialog says which log, and shows the latest uWSGI events stackmon
read from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from stackmon.deadlines import nearest
from stackmon.logs.uwsgi_events import Event
from stackmon.model import UwsgiInstance, Worker
from stackmon.redact import visible
from stackmon.render_text import human_age
from widgets.worker_list import client_gone, deadline_text, live_deadlines, respawns

USR2_EVENTS = 3  # latest uWSGI events shown under the SIGUSR2 key


@dataclass(frozen=True, slots=True)
class KillChoice:
    signal: str  # "TERM" | "KILL"
    usr2_first: bool = False
    capture: bool = False  # read the worker's stack first, into the kill's audit record


@dataclass(frozen=True, slots=True)
class ReloadChoice:
    mode: str  # "graceful" | "chain"


_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: 90%; max-width: 100; height: auto; max-height: 90%;
    border: thick $error; background: $surface; padding: 0 1;
}}
{name} .title {{ text-style: bold; }}
{name} .keys {{ margin-top: 1; }}
"""


def _requests_text(worker: Worker, now: float) -> Text:
    text = Text()
    requests = worker.requests_in_flight
    if not requests:
        text.append("  no request in flight\n", "dim")
    for r in requests:
        age = r.running_s if r.started_at is None else max(0.0, now - r.started_at)
        text.append(f"  core {r.core}  ")
        text.append(r.method or "?", "bold")
        text.append(" ")
        text.append(r.uri or "(request details not captured)")
        text.append(f"  from {r.remote_addr or '?'}  running ")
        text.append(human_age(age), "bold")
        d = nearest(live_deadlines(r, age))
        if d is not None:
            text.append(" · ")
            text.append(deadline_text(d, 200), "bold reverse" if client_gone(d) else "")
        text.append("\n")
    return text


def usr2_text(log_path: str | None, events: Sequence[Event]) -> Text:
    """Where SIGUSR2's output goes (the uWSGI log), and the latest uWSGI events read from it."""
    text = Text("SIGUSR2: the worker writes its request and a backtrace to the uWSGI log",
                style="dim")
    if log_path:
        text.append(" (")
        text.append(visible(log_path))
        text.append(")")
    else:
        text.append(" (not found from uWSGI's config: see the doctor, d)")
    text.append(", not here.")
    latest = [e for e in events if e.source == "uwsgi"][:USR2_EVENTS]
    for e in latest:
        text.append("\n  ")
        text.append(visible(e.text), "dim")
    return text


def _keys(*pairs: tuple[str, str]) -> Text:
    text = Text()
    for key, label in pairs:
        text.append(f" {key} ", "bold reverse")
        text.append(f" {label}   ")
    return text


class KillConfirm(ModalScreen[KillChoice | None]):
    DEFAULT_CSS = _CSS.format(name="KillConfirm")
    BINDINGS = [
        Binding("t,enter", "choose('TERM')", "SIGTERM", show=False),
        Binding("k", "choose('KILL')", "SIGKILL", show=False),
        Binding("u", "choose('USR2')", "SIGUSR2 then SIGTERM", show=False),
        Binding("s", "toggle_capture", "Capture stack", show=False),
        Binding("escape,n,q", "cancel", "Cancel", show=False),
    ]

    def __init__(self, host: str, instance: str, worker: Worker, now: float, *,
                 capture: bool | None = None, uwsgi_log: str | None = None,
                 events: Sequence[Event] = ()) -> None:
        """`capture`: whether "capture the stack first" starts on (None: not offered);
        `uwsgi_log` and `events`: where SIGUSR2's output goes, and what was read from it."""
        super().__init__()
        # Host name and address come from configuration: shown literally, like request data.
        self.host, self.instance = visible(host), visible(instance)
        self.worker, self.now = worker, now
        self.offer_capture = capture is not None
        self.capture = bool(capture)
        self.uwsgi_log = uwsgi_log
        self.events = tuple(events)

    def compose(self) -> ComposeResult:
        w = self.worker
        title = Text.assemble("Kill worker ", (str(w.id), "bold"), " (pid ", (str(w.pid), "bold"),
                              ") of ", (self.host, "bold"), "?")
        sub = Text(f"uWSGI {self.instance}   status {w.status}   requests served {w.requests}   "
                   f"respawns {respawns(w)}", style="dim")
        with Vertical():
            yield Static(title, classes="title")
            yield Static(sub)
            yield Static(_requests_text(w, self.now))
            yield Static(Text("The master respawns the worker with a new pid; the request(s) "
                              "above are aborted (the client gets a 502).", style="italic"))
            if self.offer_capture:
                yield Static(self._capture_text(), id="capture", classes="keys")
            yield Static(_keys(("t/Enter", "SIGTERM (KILL after 3 s)"), ("k", "SIGKILL now"),
                               ("u", "SIGUSR2 to log it, then SIGTERM"), ("Esc", "cancel")),
                         classes="keys")
            yield Static(usr2_text(self.uwsgi_log, self.events), id="usr2")

    def _capture_text(self) -> Text:
        text = _keys(("s", "[x] capture its Python stack first" if self.capture
                      else "[ ] capture its Python stack first"))
        text.append("(kept in the kill's audit record)" if self.capture
                    else "(off: the kill destroys where it was stuck)", "dim")
        return text

    def action_toggle_capture(self) -> None:
        if self.offer_capture:
            self.capture = not self.capture
            self.query_one("#capture", Static).update(self._capture_text())

    def action_choose(self, how: str) -> None:
        if how == "USR2":
            self.dismiss(KillChoice("TERM", usr2_first=True, capture=self.capture))
        else:
            self.dismiss(KillChoice(how, capture=self.capture))

    def action_cancel(self) -> None:
        self.dismiss(None)


class ReloadConfirm(ModalScreen[ReloadChoice | None]):
    DEFAULT_CSS = _CSS.format(name="ReloadConfirm")
    BINDINGS = [
        Binding("g", "choose('graceful')", "Graceful", show=False),
        Binding("enter", "choose_default", "Default", show=False),
        Binding("c", "choose('chain')", "Chain", show=False),
        Binding("escape,n,q", "cancel", "Cancel", show=False),
    ]

    def __init__(self, host: str, inst: UwsgiInstance, now: float, default: str) -> None:
        super().__init__()
        self.host, self.inst, self.now, self.default = visible(host), inst, now, default

    def compose(self) -> ComposeResult:
        inst = self.inst
        busy = [w for w in inst.workers if w.requests_in_flight]
        title = Text.assemble("Reload uWSGI ", (visible(inst.address), "bold"), " on ",
                              (self.host, "bold"), "?")
        body = Text(f"master {inst.master_pid}, {len(inst.workers)} workers, {len(busy)} busy\n",
                    style="dim")
        for w in busy:
            body.append(f"worker {w.id} (pid {w.pid}) will finish:\n")
            body.append_text(_requests_text(w, self.now))
        if busy:
            body.append("Busy workers get worker-reload-mercy to finish, then SIGKILL; new "
                        "requests wait in the listen queue meanwhile.", "italic")
        keys = [("g", "graceful (all at once)"), ("c", "chain (one worker at a time)"),
                ("Esc", "cancel")]
        keys.sort(key=lambda k: k[0] != self.default[0])
        with Vertical():
            yield Static(title, classes="title")
            yield Static(body)
            yield Static(_keys(*[(f"{k}/Enter" if k == self.default[0] else k, label)
                                 for k, label in keys]), classes="keys")

    def action_choose(self, mode: str) -> None:
        self.dismiss(ReloadChoice(mode))

    def action_choose_default(self) -> None:
        self.dismiss(ReloadChoice(self.default))

    def action_cancel(self) -> None:
        self.dismiss(None)

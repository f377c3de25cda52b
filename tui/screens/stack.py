"""The stack a kill captured, shown after the kill from the worker list.

Why a screen: the user asked to capture the stack because the kill destroys it; once the worker
is gone this is the only place (with the kill's audit record) that says where it was stuck.
From the worker detail the stack shows in the detail's own section instead. The message that
carries a capture into the UI is here too: pollers and action workers only post messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from stackmon.actions.stack import StackResult
from stackmon.redact import visible
from widgets.stack_view import StackView
from widgets.unit_wrap import UnitsKept


class StackCaptured(Message):
    """A stack read just before a kill (`result`), and how the kill went (`outcome`; `killed`
    False when it was refused or not done: the request it was for may have ended meanwhile)."""

    def __init__(self, host_index: int, address: str, worker_id: int, result: StackResult,
                 outcome: str, killed: bool = True) -> None:
        super().__init__()
        self.killed = killed
        self.host_index = host_index
        self.address = address
        self.worker_id = worker_id
        self.result = result
        self.outcome = outcome


class StackScreen(Screen[None]):
    DEFAULT_CSS = """
    StackScreen > VerticalScroll { padding: 0 1; }
    StackScreen #stack-head { margin-bottom: 1; }
    """
    BINDINGS = [Binding("escape,q", "close", "Back")]

    def __init__(self, host: str, result: StackResult, outcome: str, now: float,
                 killed: bool = True) -> None:
        super().__init__()
        self.host, self.result, self.outcome, self.now = host, result, outcome, now
        self.killed = killed

    def compose(self) -> ComposeResult:
        r = self.result
        head = Text.assemble(("Host ", "dim"), (visible(self.host), "bold"),
                             ("  worker ", "dim"), (str(r.worker_id), "bold"),
                             ("  stack captured before the kill" if self.killed else
                              "  stack captured; the kill was not done", "bold"), "\n")
        head.append(visible(self.outcome))
        head.append("\nThe kill's audit record carries where each thread was (no locals)."
                    if self.killed else "\nNothing was killed: this is where it was just now.",
                    "dim")
        with VerticalScroll():
            yield Static(UnitsKept(head), id="stack-head")  # "in 0.2 s" was split
            yield StackView(id="stack")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(StackView).show_stack(self.result, now=self.now)
        # The capture's age moves on (it read "0 s ago" for as long as the screen was open).
        self.set_interval(1.0, self._tick)

    def _tick(self) -> None:
        clock: Callable[[], float] = getattr(self.app, "clock", time.time)
        self.query_one(StackView).set_note("", clock())

    def action_close(self) -> None:
        self.dismiss(None)

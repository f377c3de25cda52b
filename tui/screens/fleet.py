"""The fleet overview: every host on one screen, worst first, and a rolling reload's progress.

With tens or hundreds of hosts the first question in an incident is "which hosts are sick?",
and a tab bar of 100 names cannot answer it. The overview is the app's first tab: one line per
host (widgets.fleet_table), its state and reasons from the health model, busy/total workers,
the oldest request, the fullest queue and fd table, 5xx/s, the LB health check and any reload
in progress; a status line counts the hosts by severity. `/` filters, Enter opens the host in a
tab of its own, and `R` here is the rolling reload of the selected host's group (the app runs
it; this pane shows its progress per host and how it ended).

The pane does no I/O: the app hands it snapshots (already assessed) and roll steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Input, Static, TabbedContent, TabPane

from stackmon.actions.reload_progress import ReloadProgress
from stackmon.actions.rolling import RollResult, RollStep
from stackmon.config import HostConfig
from stackmon.health import HostState, Severity
from stackmon.model import HostSnapshot
from stackmon.redact import visible
from widgets.fleet_table import ICONS, FleetTable, fleet_row

PANE_ID = "fleet"
SEVERITY_ORDER: tuple[Severity, ...] = ("critical", "warn", "unknown", "ok")
STYLE: dict[Severity, str] = {"ok": "green", "warn": "bold yellow", "critical": "bold red",
                              "unknown": "dim"}


class StatusLine(Widget):
    """The overview's status: redrawn in place while its height stays (Static.update asks for
    a layout of the whole screen every time: ~half of what a filter keystroke cost)."""

    DEFAULT_CSS = "StatusLine { height: auto; }"

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._text = Text()

    def show(self, text: Text) -> None:
        layout = text.plain.count("\n") != self._text.plain.count("\n")
        self._text = text
        self.refresh(layout=layout)

    def render(self) -> Text:
        return self._text


class FleetFilter(Input):
    """The host filter; Escape clears and closes it, Enter goes back to the hosts."""

    BINDINGS = [Binding("escape", "close", "Close filter", show=False)]

    def action_close(self) -> None:
        self.value = ""
        self.display = False
        if isinstance(self.parent, FleetPane):
            self.parent.table.focus()


def roll_cell(step: RollStep) -> tuple[str, Severity]:
    """A roll step as the overview's reload column shows it: "2/3 draining 1/4"."""
    where = f"{step.position}/{step.total}"
    if step.phase == "draining" and step.reload is not None:
        progress = step.reload
        return f"{where} drain {progress.replaced}/{len(progress.workers)}", "warn"
    if step.phase == "done":
        return f"{where} ✓ done", "ok"
    if step.phase == "failed":
        return f"{where} ✖ FAILED", "critical"
    return f"{where} {step.phase}", "warn"


class FleetPane(TabPane):
    """The overview tab (see the module docstring)."""

    DEFAULT_CSS = """
    FleetPane { padding: 0; }
    FleetPane #fleet-status { height: auto; max-height: 3; padding: 0 1; background: $boost; }
    FleetPane #fleet-filter { dock: bottom; height: 3; }
    """
    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", show=False)]

    def __init__(self, hosts: Sequence[HostConfig]) -> None:
        super().__init__("Fleet", id=PANE_ID)
        self.hosts = tuple(hosts)
        self.table = FleetTable([(h.name, h.group) for h in hosts], id="fleet-table")
        self._severity: list[Severity | None] = [None] * len(hosts)
        self._counts: dict[Severity, int] = {}
        self._roll_line: Text | None = None
        self._status_shown: Text | None = None

    def compose(self) -> ComposeResult:
        yield StatusLine(id="fleet-status")
        yield self.table
        yield FleetFilter(placeholder="filter hosts: name, group, state, reason (Esc clears)",
                          id="fleet-filter")

    def on_mount(self) -> None:
        self.query_one(FleetFilter).display = False
        self._show_status()

    # --- data in ----------------------------------------------------------------------------

    def set_host(self, index: int, snap: HostSnapshot | None, state: HostState | None) -> None:
        """A host's latest poll and its assessment; its line is redrawn only if it changed."""
        self.table.set_row(index, fleet_row(snap, state))
        severity = state.severity if state is not None else None
        if severity != self._severity[index]:
            old = self._severity[index]
            self._severity[index] = severity
            if old is not None:
                self._counts[old] -= 1
            if severity is not None:
                self._counts[severity] = self._counts.get(severity, 0) + 1
            self._show_status()

    def counts(self) -> dict[Severity, int]:
        return {s: n for s, n in self._counts.items() if n}

    def tab_title(self) -> Text:
        """`≡ Fleet 500  ✖ 3`: the overview's tab shows how many hosts are critical."""
        text = Text.assemble(("≡ ", "bold"), "Fleet")
        critical = self._counts.get("critical", 0)
        if critical:
            text.append(f" {ICONS['critical']} {critical}", STYLE["critical"])
        return text

    def _show_status(self) -> None:
        text = Text(no_wrap=True, end="")
        n = len(self.hosts)
        text.append(f"{n} host{'' if n == 1 else 's'}", "bold")
        polled = sum(self._counts.values())
        for sev in SEVERITY_ORDER:
            n = self._counts.get(sev, 0)
            if n:
                text.append("  ")
                text.append(f"{ICONS[sev]} {n} {sev}", STYLE[sev])
        if polled < len(self.hosts):
            text.append(f"  {len(self.hosts) - polled} connecting…", "dim")
        if self.table.filter_text:
            text.append("  filter: ", "dim")
            text.append(visible(self.table.filter_text))
        if self._roll_line is not None:
            text.append("\n")
            text.append_text(self._roll_line)
        if text != self._status_shown:
            self._status_shown = text
            if self.is_mounted:
                self.query_one(StatusLine).show(text)
                self._retitle()

    def _retitle(self) -> None:
        try:
            tabs = self.query_ancestor(TabbedContent)
        except Exception:  # not in a TabbedContent (a test mounting the pane alone)
            return
        tab = tabs.get_tab(PANE_ID)
        title = self.tab_title()
        if tab.label != title:
            tab.label = title

    # --- filter -----------------------------------------------------------------------------

    def open_filter(self) -> None:
        box = self.query_one(FleetFilter)
        box.display = True
        box.focus()

    @on(Input.Changed, "#fleet-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.table.set_filter(event.value)
        self._show_status()

    @on(Input.Submitted, "#fleet-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one(FleetFilter)
        if box.value or box.display:
            box.action_close()
        self.table.set_filter("")
        self._show_status()

    # --- reloads in progress ----------------------------------------------------------------

    def reload_progress(self, index: int, progress: ReloadProgress, final: bool) -> None:
        """A single-host reload (R on a host's tab) shows in the reload column until done."""
        if final:
            self.table.set_activity(index, None)
        else:
            self.table.set_activity(index, f"reload {progress.replaced}/"
                                           f"{len(progress.workers)}", "warn")

    def roll_started(self, group: str, members: Sequence[int]) -> None:
        for n, index in enumerate(members, 1):
            self.table.set_activity(index, f"{n}/{len(members)} queued", "unknown")
        self._roll_line = Text.assemble(("Rolling reload ", "bold"), (visible(group), "bold"),
                                        f": {len(members)} hosts, one at a time")
        self._show_status()

    def roll_step(self, index: int, step: RollStep) -> None:
        cell, severity = roll_cell(step)
        self.table.set_activity(index, cell, severity)
        style = "bold red" if step.phase == "failed" else ""
        self._roll_line = Text.assemble(("Rolling reload ", "bold"),
                                        f"[{step.position}/{step.total}] ",
                                        (visible(step.message), style))
        self._show_status()

    def roll_finished(self, members: Sequence[int], result: RollResult | None,
                      error: str | None = None) -> None:
        """How the roll ended, kept on the status line; hosts never started say so."""
        names = {self.hosts[i].name: i for i in members}
        if result is not None:
            for name in result.not_started:
                if name in names:
                    self.table.set_activity(names[name], "not started", "unknown")
            ok = result.ok
            message = result.message
        else:
            ok = False
            message = f"rolling reload failed: {error}"
            for index in members:
                self.table.set_activity(index, None)
        self._roll_line = Text(visible(message), style="bold green" if ok else "bold red")
        self._show_status()

    def clear_roll(self, members: Sequence[int]) -> None:
        for index in members:
            self.table.set_activity(index, None)


class RollConfirm(ModalScreen[bool]):
    """Asks before a rolling reload: names the group and every host, in the order of the roll.
    `y` or Enter starts it; Escape or `n` cancels."""

    DEFAULT_CSS = """
    RollConfirm { align: center middle; }
    RollConfirm > Vertical {
        width: 90%; max-width: 100; height: auto; max-height: 90%;
        border: thick $error; background: $surface; padding: 0 1;
    }
    RollConfirm .title { text-style: bold; }
    RollConfirm VerticalScroll { height: auto; max-height: 20; }
    RollConfirm .keys { margin-top: 1; }
    """
    BINDINGS = [
        Binding("y,enter", "start", "Start", show=False),
        Binding("escape,n,q", "cancel", "Cancel", show=False),
    ]

    def __init__(self, group: str, hosts: Sequence[HostConfig], mode: str = "graceful",
                 settle_timeout: float = 60.0) -> None:
        super().__init__()
        self.group = group
        self.hosts = tuple(hosts)
        self.mode = mode
        self.settle_timeout = settle_timeout

    def compose(self) -> ComposeResult:
        title = Text.assemble(f"Rolling {self.mode} reload of group ",
                              (visible(self.group), "bold"), f": {len(self.hosts)} hosts, "
                              "one at a time, in this order")
        plan = Text()
        for n, h in enumerate(self.hosts, 1):
            plan.append(f"{n:>3}. ")
            plan.append(visible(h.name), "bold")
            plan.append(f"  {visible(h.health)}" if h.health else "  (no health URL)", "dim")
            plan.append("\n")
        what = Text(f"Each host: a {self.mode} reload of every uWSGI instance, every worker "
                    "replaced, then its health check passing and its queues back to normal "
                    f"(within {self.settle_timeout:g} s) before the next. The roll stops at the "
                    "first host that fails.", style="dim")
        keys = Text()
        for key, label in (("y", "start"), ("Esc", "cancel")):
            keys.append(f" {key} ", "bold reverse")
            keys.append(f" {label}   ")
        with Vertical():
            yield Static(title, classes="title", markup=False)
            with VerticalScroll():
                yield Static(plan, markup=False)
            yield Static(what, markup=False)
            yield Static(keys, classes="keys", markup=False)

    def action_start(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


class RollProgressed(Message):
    """A step of the rolling reload the app runs, for the overview's line of that host."""

    def __init__(self, host_index: int, step: RollStep) -> None:
        super().__init__()
        self.host_index = host_index
        self.step = step

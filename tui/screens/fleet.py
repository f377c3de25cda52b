"""The fleet overview: every host on one screen, worst first, and a rolling reload's progress.

With tens or hundreds of hosts the first question in an incident is "which hosts are sick?",
and a tab bar of 100 names cannot answer it. The overview is the app's first tab: one line per
host (widgets.fleet_table), its state and reasons from the health model, busy/total workers,
the oldest request, the fullest queue and fd table, 5xx/s, the LB health check and any reload
in progress; a status line counts the hosts by severity, after READ-ONLY and PAUSED when they
hold (states of the screen, as the host header shows them). `/` filters, Esc clears the filter
and then goes back to the host tab the overview was reached from, Enter opens the host in a
tab of its own, and `R` here is the rolling reload of the selected host's group: RollConfirm
shows its hosts in order and the policy, where the operator chooses how many hosts drain
together (max unavailable, as `--max-unavailable` on the command line); the app runs the roll
with that policy; this pane shows its progress per host, the hosts in flight against the max
unavailable, and how it ended.

The pane does no I/O: the app hands it snapshots (already assessed) and roll steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rich.text import Text
from textual import on
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Input, Static, TabbedContent, TabPane

from stackmon.actions.reload_progress import ReloadProgress
from stackmon.actions.rolling import RollPolicy, RollResult, RollStep
from stackmon.config import HostConfig
from stackmon.health import HostState, Severity
from stackmon.model import HostSnapshot
from stackmon.redact import visible
from widgets.fleet_table import ICONS, FleetTable, fleet_row
from widgets.modal_keys import ModalKeys

PANE_ID = "fleet"
SEVERITY_ORDER: tuple[Severity, ...] = ("critical", "warn", "unknown", "ok")
STYLE: dict[Severity, str] = {"ok": "green", "warn": "bold yellow", "critical": "bold red",
                              "unknown": "dim"}
# NO_COLOR: Textual turns red and yellow into dark greys (the status line's "✖ 3 critical" was
# grey 237 on 234, the least visible thing on it): emphasis instead, as the tab badges have.
STYLE_NO_COLOR: dict[Severity, str] = {"ok": "", "warn": "bold underline",
                                       "critical": "bold reverse", "unknown": "dim"}
# PAUSED, READ-ONLY: reversed, so they read without colour too (the host header's flags).
FLAG_STYLE = "bold reverse"


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


class RollLine:
    """The status line of a roll in progress: its group and the max unavailable it runs with,
    the hosts in flight now (reloading, draining or settling, not yet done or failed: what the
    policy bounds, so the operator sees it hold), and the latest step's message."""

    ACTIVE = ("reloading", "draining", "settling")

    def __init__(self, group: str, total: int, max_unavailable: int) -> None:
        self.group = group
        self.total = total
        self.max_unavailable = max_unavailable
        self.in_flight: dict[int, str] = {}  # position -> host name (shown in roll order)
        self.finished = 0
        self.peak = 0  # the most hosts reloading, draining or settling at once so far
        self.last: RollStep | None = None

    def step(self, step: RollStep) -> None:
        if step.phase in self.ACTIVE:
            self.in_flight.setdefault(step.position, step.host)
            self.peak = max(self.peak, len(self.in_flight))
        elif step.phase in ("done", "failed"):
            self.in_flight.pop(step.position, None)
            self.finished += 1
        self.last = step

    def text(self) -> Text:
        text = Text.assemble(("Rolling reload ", "bold"), (visible(self.group), "bold"),
                             f", max unavailable {self.max_unavailable}: ")
        if self.in_flight:
            text.append(f"{len(self.in_flight)} in flight ", "bold")
            text.append(visible(", ".join(name for _, name in sorted(self.in_flight.items()))))
        else:
            text.append("none in flight")
        text.append(f"; {self.finished}/{self.total} finished", "dim")
        if self.last is not None:
            style = "bold red" if self.last.phase == "failed" else ""
            text.append("\n")
            text.append(f"[{self.last.position}/{self.last.total}] ")
            text.append(visible(self.last.message), style)
        return text


class FleetPane(TabPane):
    """The overview tab (see the module docstring)."""

    DEFAULT_CSS = """
    FleetPane { padding: 0; }
    FleetPane #fleet-status { height: auto; max-height: 3; padding: 0 1; background: $boost; }
    FleetPane #fleet-filter { dock: bottom; height: 3; }
    """
    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", show=False)]

    def __init__(self, hosts: Sequence[HostConfig], *, read_only: bool = False) -> None:
        super().__init__("Fleet", id=PANE_ID)
        self.hosts = tuple(hosts)
        self.read_only = read_only
        self.paused = False
        self.table = FleetTable([(h.name, h.group) for h in hosts], id="fleet-table")
        self._severity: list[Severity | None] = [None] * len(hosts)
        self._counts: dict[Severity, int] = {}
        self._roll_line: Text | None = None
        self._roll: RollLine | None = None
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

    def set_paused(self, paused: bool) -> None:
        """The app froze (or thawed) the screen: say so, or the frozen lines read as live."""
        if paused != self.paused:
            self.paused = paused
            self._show_status()

    def flags(self) -> tuple[str, ...]:
        """States of the screen itself, first on the status line (never cut at 80 columns):
        PAUSED (the lines are frozen), READ-ONLY (K, R and C only say why)."""
        return (("PAUSED",) if self.paused else ()) + (("READ-ONLY",) if self.read_only
                                                        else ())

    def counts(self) -> dict[Severity, int]:
        return {s: n for s, n in self._counts.items() if n}

    def _styles(self) -> dict[Severity, str]:
        return STYLE_NO_COLOR if self.is_attached and self.app.no_color else STYLE

    def tab_title(self) -> Text:
        """`≡ Fleet 500  ✖ 3`: the overview's tab shows how many hosts are critical."""
        text = Text.assemble(("≡ ", "bold"), "Fleet")
        critical = self._counts.get("critical", 0)
        if critical:
            text.append(f" {ICONS['critical']} {critical}", self._styles()["critical"])
        return text

    def _show_status(self) -> None:
        text = Text(no_wrap=True, end="")
        n = len(self.hosts)
        for flag in self.flags():
            text.append(f" {flag} ", FLAG_STYLE)
            text.append(" ")
        text.append(f"{n} host{'' if n == 1 else 's'}", "bold")
        polled = sum(self._counts.values())
        styles = self._styles()
        for sev in SEVERITY_ORDER:
            n = self._counts.get(sev, 0)
            if n:
                text.append("  ")
                text.append(f"{ICONS[sev]} {n} {sev}", styles[sev])
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
        """Esc clears the filter; with none, the key goes on to the app (back to the host tab
        the overview was reached from)."""
        box = self.query_one(FleetFilter)
        if not (box.value or box.display or self.table.filter_text):
            raise SkipAction()
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

    def roll_started(self, group: str, members: Sequence[int], max_unavailable: int = 1) -> None:
        """A roll begins: its hosts queued in order, and the policy it runs with on the status
        line (where its progress will be)."""
        for n, index in enumerate(members, 1):
            self.table.set_activity(index, f"{n}/{len(members)} queued", "unknown")
        self._roll = RollLine(group, len(members), max_unavailable)
        self._roll_line = self._roll.text()
        self._show_status()

    def roll_step(self, index: int, step: RollStep) -> None:
        cell, severity = roll_cell(step)
        self.table.set_activity(index, cell, severity)
        if self._roll is None:  # a step without roll_started (not from the app): still shown
            self._roll = RollLine("", step.total, 1)
        self._roll.step(step)
        self._roll_line = self._roll.text()
        self._show_status()

    def roll_finished(self, members: Sequence[int], result: RollResult | None,
                      error: str | None = None) -> None:
        """How the roll ended, kept on the status line with the policy it ran with and how
        many hosts it actually had reloading at once; hosts never started say so."""
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
        style = "bold green" if ok else "bold red"
        roll = self._roll
        if roll is None:
            text = Text(visible(message), style=style)
        else:  # the policy first: a long reason wraps and the status shows three lines
            text = Text.assemble(("Rolling reload ", "bold"), (visible(roll.group), "bold"),
                                 f", max unavailable {roll.max_unavailable}: ",
                                 (visible(message.removeprefix("rolling reload ")), style))
            if roll.peak:
                text.append(f" (at most {roll.peak} reloading at once)", "dim")
        self._roll, self._roll_line = None, text
        self._show_status()

    def clear_roll(self, members: Sequence[int]) -> None:
        for index in members:
            self.table.set_activity(index, None)


def max_unavailable_limit(hosts: int) -> int:
    """The most hosts of a group that may drain together: all but one, so a host of the group
    is always serving (a group of one host: that host, alone)."""
    return max(1, hosts - 1)


def max_unavailable_refusal(asked: int, hosts: int) -> str | None:
    """Why `asked` cannot be the max unavailable of a roll of `hosts` hosts (None: it can).
    Short enough for one line of the dialog at 80 columns."""
    if asked < 1:
        return f"Max unavailable {asked} refused: at least 1 host reloads at a time"
    limit = max_unavailable_limit(hosts)
    if asked <= limit:
        return None
    if hosts == 1:
        return f"Max unavailable {asked} refused: the group has 1 host, it reloads alone"
    return f"Max unavailable {asked} refused: at most {limit} of {hosts}, one host keeps serving"


class RollConfirm(ModalScreen[RollPolicy | None]):
    """Asks before a rolling reload: the group, every host in the order of the roll, and the
    policy it will run with. `+`/`-` or a digit choose how many hosts drain together (max
    unavailable, 1 to hosts - 1: the group is never down as a whole; a refusal says why in the
    dialog), `y` or Enter starts the roll with that policy (the dismiss value), Escape or `n`
    cancels (None). Every key is on screen at 80x24: the keys line is docked at the dialog's
    bottom and the host list scrolls in what is left."""

    DEFAULT_CSS = """
    RollConfirm { align: center middle; }
    RollConfirm > Vertical {
        width: 90%; max-width: 100; height: auto; max-height: 90%;
        border: thick $error; background: $surface; padding: 0 1;
    }
    RollConfirm .title { text-style: bold; }
    RollConfirm #plan { height: auto; max-height: 20; }
    RollConfirm #policy { margin-top: 1; }
    RollConfirm #refused { text-style: bold reverse; }
    RollConfirm #bottom { dock: bottom; height: auto; }
    RollConfirm .keys { margin-top: 1; }
    """
    BINDINGS = [
        Binding("y,enter", "start", "Start", show=False),
        Binding("escape,n,q", "cancel", "Cancel", show=False),
        Binding("plus,equals_sign", "step(1)", "More at once", show=False),
        Binding("minus", "step(-1)", "Fewer at once", show=False),
        *(Binding(str(d), f"set({d})", f"{d} at once", show=False) for d in range(10)),
    ]
    MIN_PLAN = 3  # host lines shown however short the screen (the rest scroll)

    def __init__(self, group: str, hosts: Sequence[HostConfig],
                 policy: RollPolicy | None = None) -> None:
        super().__init__()
        self.group = group
        self.hosts = tuple(hosts)
        self.policy = policy or RollPolicy()
        self.max_unavailable = min(self.policy.max_unavailable,
                                   max_unavailable_limit(len(self.hosts)))
        self.refused: str | None = None
        self._scrolls = False  # the host list is longer than the room it has (↑ ↓ scroll it)

    @property
    def chosen(self) -> RollPolicy:
        """The policy the roll runs with if started now."""
        return replace(self.policy, max_unavailable=self.max_unavailable)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self._title(), classes="title", id="title", markup=False)
            with Vertical(id="bottom"):  # docked: on screen however long the list is
                yield Static(self._keys(), classes="keys", id="keys", markup=False)
            with VerticalScroll(id="plan"):
                yield Static(self._plan(), id="plan-text", markup=False)
            yield Static(self._policy(), id="policy", markup=False)
            yield Static("", id="refused", markup=False)
            yield Static(self._per_host(), id="per-host", markup=False)
        yield ModalKeys((("y/⏎", "start the roll"), ("+/-/0-9", "hosts at once"),
                         ("Esc", "cancel")))

    def on_mount(self) -> None:
        self.query_one("#refused").display = False

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit)

    def _fit(self) -> None:
        """The host list gets what the dialog (90% of the screen) has left after the other
        parts, so the policy and the keys are never pushed out of view."""
        plan = self.query_one("#plan", VerticalScroll)
        dialog = plan.parent
        assert isinstance(dialog, Widget)
        others = sum(w.outer_size.height + w.styles.margin.top + w.styles.margin.bottom
                     for w in dialog.children if w is not plan and w.display)
        room = max(self.MIN_PLAN, (self.size.height - 1) * 9 // 10 - 2 - others)  # ModalKeys
        if plan.styles.max_height != room:
            plan.styles.max_height = room
        scrolls = room < len(self.hosts)
        if scrolls != self._scrolls:
            self._scrolls = scrolls
            self.query_one("#keys", Static).update(self._keys())

    # --- text ---------------------------------------------------------------------------------

    def _title(self) -> Text:
        k = self.max_unavailable
        pace = "one at a time" if k == 1 else f"{k} at a time"
        return Text.assemble("Rolling reload of group ",
                             (visible(self.group), "bold"),
                             f": {len(self.hosts)} hosts, {pace}, in this order")

    def _plan(self) -> Text:
        plan = Text(no_wrap=True, overflow="ellipsis", end="")
        k = self.max_unavailable
        for n, h in enumerate(self.hosts, 1):
            if n > 1:
                plan.append("\n")
            plan.append(f"{n:>3}. ")
            plan.append(visible(h.name), "bold")
            plan.append(f"  {visible(h.health)}" if h.health else "  (no health URL)", "dim")
            if k > 1 and n <= k:
                plan.append("  starts at once")
        return plan

    def _policy(self) -> Text:
        n, k = len(self.hosts), self.max_unavailable
        text = Text.assemble(("Max unavailable", "bold"), " ", (f" {k} ", "bold reverse"),
                             f" of {n} host{'' if n == 1 else 's'}: ")
        if n == 1:
            text.append("the only host reloads alone, the group is down meanwhile")
        elif k == 1:
            text.append(f"one drains at a time, {n - 1} keep{'s' if n == 2 else ''} serving")
        else:
            text.append(f"{k} drain together, {n - k} keep{'s' if n - k == 1 else ''} serving")
        return text

    def _per_host(self) -> Text:
        p = self.policy
        where = "every uWSGI instance" if p.instance is None else f"instance {p.instance}"
        return Text(f"Each host: {p.mode} reload of {where}, every worker replaced, then "
                    f"settled within {p.settle_timeout:g} s: its health check passing (a "
                    "probe after the drain), its queues normal. Stops at the first host that "
                    f"fails, answers nothing for {p.unreachable_timeout:g} s or that the load "
                    "balancer would take out; hosts in flight finish, none starts after.",
                    style="dim")

    def _keys(self) -> Text:
        limit = max_unavailable_limit(len(self.hosts))
        digits = "1-9" if limit >= 9 else f"1-{limit}" if limit > 1 else "1"
        pairs = [("y", "start"), ("Esc", "cancel"), (f"+ - {digits}", "max unavailable")]
        if self._scrolls:
            pairs.append(("↑ ↓", "hosts"))
        keys = Text()
        for key, label in pairs:
            keys.append(f" {key} ", "bold reverse")
            keys.append(f" {label}   ")
        return keys

    def _redraw(self) -> None:
        self.query_one("#title", Static).update(self._title())
        self.query_one("#plan-text", Static).update(self._plan())
        self.query_one("#policy", Static).update(self._policy())
        refused = self.query_one("#refused", Static)
        refused.update(Text(self.refused or ""))
        refused.display = self.refused is not None
        self.call_after_refresh(self._fit)

    # --- keys ---------------------------------------------------------------------------------

    def action_step(self, delta: int) -> None:
        self.action_set(self.max_unavailable + delta)

    def action_set(self, asked: int) -> None:
        """Take `asked` as the max unavailable, or say in the dialog why not (and keep the
        value it had)."""
        self.refused = max_unavailable_refusal(asked, len(self.hosts))
        if self.refused is None:
            self.max_unavailable = asked
        else:
            self.app.bell()
        self._redraw()

    def action_start(self) -> None:
        self.dismiss(self.chosen)

    def action_cancel(self) -> None:
        self.dismiss(None)


class RollProgressed(Message):
    """A step of the rolling reload the app runs, for the overview's line of that host."""

    def __init__(self, host_index: int, step: RollStep) -> None:
        super().__init__()
        self.host_index = host_index
        self.step = step

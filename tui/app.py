"""The stackmon Textual app: one tab per host, fed by one polling task per host.

Data flows one way. Each host has an async worker that polls (stackmon.collect, off the UI
where it costs CPU) and only posts HostPolled; the app routes the snapshot to that host's pane,
which keeps it and re-renders only when it is the visible tab. Tab titles carry each host's
worst state, so the sick host shows from any tab.

A fleet (FLEET_MIN_HOSTS hosts or more) starts on the overview (tui.screens.fleet): one line per
host, worst first. A tab bar of 100 names answers nothing, so only the overview, hosts in alarm
(critical; at most MAX_ALARM_TABS) and hosts the user opened (Enter on the overview, or the
command palette, which finds any host by name) take a tab; a host pane is built only then. With
fewer hosts every host keeps its tab as before and `o` adds the overview.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import signal
import time
from collections.abc import Callable, Iterable

from rich.text import Text
from textual import events, on
from textual.app import App, ComposeResult, SystemCommand
from textual.notifications import Notification, Notify
from textual.screen import Screen
from textual.widgets import ContentSwitcher, TabbedContent
from textual.worker import Worker as TaskWorker
from textual.worker import WorkerState

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError
from stackmon.actions.reload_progress import ReloadProgress
from stackmon.actions.rolling import RollPolicy, RollResult, RollStep, rolling_reload
from stackmon.actions.stack import StackResult, capture_for_kill
from stackmon.config import HostConfig, Targets
from stackmon.health import HostState, Severity, assess
from stackmon.hosts import Host, open_host
from stackmon.model import HostSnapshot, Worker
from stackmon.poller import Fleet
from stackmon.redact import visible
from tui import partial_frames
from tui.actions import ACTIONS, bindings, footer_fit, host_only, overview_hint, shown
from tui.commands import HostCommands
from tui.host_pane import HOLD_S, HostPane, relabel_tab
from tui.messages import ActionFinished, DoctorDone, HostPolled, ReloadProgressed
from tui.screens.confirm import (
    KillChoice,
    KillConfirm,
    ReloadChoice,
    ReloadConfirm,
    kill_progress_text,
    kill_staleness,
    live_worker,
)
from tui.screens.doctor import DoctorScreen
from tui.screens.events import EventsScreen
from tui.screens.fleet import PANE_ID, FleetPane, RollConfirm, RollProgressed
from tui.screens.help import HelpScreen
from tui.screens.reload_view import ReloadScreen
from tui.screens.stack import StackCaptured, StackScreen
from tui.screens.worker_detail import Tracer, WorkerDetailScreen
from widgets.blank import mark_blank
from widgets.fleet_table import FleetTable
from widgets.keys_footer import KeysFooter
from widgets.worker_list import WorkerList

BADGE_STYLE: dict[Severity, str] = {"ok": "green", "warn": "bold yellow",
                                    "critical": "bold red", "unknown": "dim"}
# NO_COLOR: red and yellow became dark greys (a CRIT tab badge was grey 237 on 233).
BADGE_STYLE_NO_COLOR: dict[Severity, str] = {"ok": "", "warn": "bold underline",
                                             "critical": "bold reverse", "unknown": "dim"}
BADGE_ICON: dict[Severity, str] = {"ok": "●", "warn": "▲", "critical": "✖", "unknown": "…"}

# How long a kill waits for its stack capture before it kills without it (the kill ends an
# outage; py-spy itself may take up to stackmon.actions.stack.DUMP_TIMEOUT).
CAPTURE_TIMEOUT = 3.0
# The longest a kill's progress notification stays (it is removed when the outcome comes):
# capture, confirm, SIGTERM's grace, SIGKILL, the respawn wait, with room to spare.
KILL_TOAST_S = 30.0

# From this many hosts on, the overview is the first tab and only some hosts take a tab.
FLEET_MIN_HOSTS = 4
# Hosts that take a tab of their own because they are critical (a fleet-wide outage must not
# build 500 host panes); the overview lists every one of them anyway.
MAX_ALARM_TABS = 8

# Allocations between two collections of the youngest objects (Python's default: 700).
GC_YOUNG = 10_000

# Signals that end the TUI the way `q` does (exit status 128 + n, as a shell reports it).
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def tab_label(name: str, state: tuple[str, Severity] | None, *, no_color: bool = False) -> Text:
    """A tab title: the host name and a badge of its worst state, (label, severity) from the
    health model (a glyph and words, so it reads without colour: `✖ web-1 502 2.0/s`). The
    name is configuration text: a Text (never markup) with its control characters made
    visible, as request data is; so is the label (it can quote an error message)."""
    name = visible(name)
    if state is None:
        return Text.assemble((f"{BADGE_ICON['unknown']} ", BADGE_STYLE["unknown"]), name,
                             (" connecting", "dim"))
    label, severity = state
    style = (BADGE_STYLE_NO_COLOR if no_color else BADGE_STYLE)[severity]
    text = Text.assemble((f"{BADGE_ICON[severity]} ", style), name)
    if severity != "ok":
        text.append(f" {visible(short_badge(label))}", style)
    return text


def short_badge(label: str) -> str:
    """The state label cut to what fits a tab: "CRIT 2", "QUEUE 93%", "502 2.0/s", "LB OUT",
    "UNREACHABLE"; the reason is on the tab's own page."""
    words = label.split()
    if not words:
        return ""
    if words[0] in ("UNREACHABLE", "PARTIAL:"):
        return words[0].rstrip(":")
    return " ".join(words[:2])


class StackmonApp(App[int]):
    """stackmon's TUI. `clock` is injectable so snapshot tests can freeze ages."""

    TITLE = "stackmon"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = True
    COMMANDS = App.COMMANDS | {HostCommands}
    # An alarm tab goes this long after its host stopped being critical (a flapping host must
    # not build and tear down a pane every poll); tests set it to 0.
    ALARM_LINGER_S = 30.0

    def __init__(self, targets: Targets, *, poll: bool = True,
                 clock: Callable[[], float] = time.time, audit: AuditLog | None = None) -> None:
        super().__init__()
        # No animations: over SSH at 3 a.m. a tab underline gliding for 0.3 s is ~18 frames
        # of repaint each time a badge changes width (measured: the single most expensive
        # widget on the demo), and nothing a user needs.
        self.animation_level = "none"
        self.audit = audit if audit is not None else AuditLog.default()
        self.targets = targets
        self.read_only = targets.settings.read_only
        self.clock = clock
        self._poll = poll
        self._states: dict[int, tuple[str, Severity] | None] = {}
        self._reload_views: set[str] = set()
        self._before_reload: dict[str, HostSnapshot | None] = {}  # its view counts 502s from it
        self.fleet_mode = len(targets.hosts) >= FLEET_MIN_HOSTS
        self.panes: dict[int, HostPane] = {}
        self.overview: FleetPane | None = None
        self._latest: dict[int, HostSnapshot] = {}
        self._unpolled_hosts: dict[int, Host] = {}  # see _host
        self._assessed: dict[int, HostState] = {}
        self._opened: set[int] = set()  # hosts the user opened (they keep their tab)
        self._alarm: dict[int, float | None] = {}  # alarm tab -> when it calmed (monotonic)
        self._dismissed: set[int] = set()  # alarm tabs the user closed while still critical
        self._pane_lock = asyncio.Lock()  # tabs are added and removed one at a time
        self._tabbed: TabbedContent | None = None
        self._roll_members: list[int] | None = None
        self._last_host: int | None = None  # the host tab shown last (see _back_to)
        self.paused = False
        self._paused_at = 0.0  # the clock when p was pressed (ages on a paused screen)
        self._footer_shape: frozenset[str] | None = None  # the actions the Footer lists
        for b in bindings(self.read_only):
            self.bind(b.key, b.action, description=b.description, show=b.show,
                      key_display=b.key_display)

    # --- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        if self.fleet_mode:
            self.overview = FleetPane(self.targets.hosts, read_only=self.read_only)
        else:
            self.panes = {i: self._new_pane(i) for i in range(len(self.targets.hosts))}
        with TabbedContent(id="hosts"):
            if self.overview is not None:
                yield self.overview
            yield from self.panes.values()
        yield KeysFooter()

    def _new_pane(self, index: int) -> HostPane:
        return HostPane(index, self.targets.hosts[index], self.targets.settings, self.clock,
                        id=f"host-{index}")

    def on_load(self) -> None:
        partial_frames.install()  # a frame renders only what its changed lines cross
        self._catch_exit_signals()

    def on_mount(self) -> None:
        tabs = self._tabs
        for container in (self.screen, tabs, tabs.query_one(ContentSwitcher)):
            mark_blank(container)  # covered by their children: widgets.blank says why
        for i in self.panes:
            tabs.get_tab(f"host-{i}").label = tab_label(self.targets.hosts[i].name, None)
        self._show_tab_bar()
        if self._poll:
            # One task per host (stackmon.poller): deadlines and backoff keep a dead host from
            # delaying the others; each snapshot arrives here as a message.
            def polled(i: int, snap: HostSnapshot) -> None:
                self.post_message(HostPolled(i, snap))

            self.fleet = Fleet(self.targets, polled)
            self.run_worker(self.fleet.run(), group="poll", name="pollers",
                            exit_on_error=False)
        self._focus_workers()
        self.call_after_refresh(self._freeze_startup_objects)

    @staticmethod
    def _freeze_startup_objects() -> None:
        """Everything built to start (Textual, the widgets, the config: ~80,000 objects) lives
        as long as the app: kept out of the cyclic GC's full collections, which scanned them
        all every ~40 s (43 ms each on the demo, 1 ms/s: as much as the rest of a poll's
        drawing). Objects made later are collected as usual, the youngest after GC_YOUNG
        allocations instead of 700: a frame's Strips and a poll's objects then die before a
        collection looks at them, instead of being promoted until a full collection (20-40
        ms with 500 hosts here) fell due every second or so, on whatever key was pressed
        (bench/bench_overview.py: 15-20 of them in a run, 0-1 with this)."""
        gc.freeze()
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])

    # --- signals ----------------------------------------------------------------------------

    def _catch_exit_signals(self) -> None:
        """SIGTERM (kill, systemd, a supervisor) and SIGHUP (a lost SSH session) would end the
        process at once, leaving the terminal in the alternate screen with mouse tracking on:
        every later keystroke and click arrives as garbage. As event-loop handlers they become
        App.exit(), and Textual's driver restores the terminal on the way out. run_app puts
        back whatever handlers were there before (the demo's, which then stop its stack)."""
        loop = asyncio.get_running_loop()
        for sig in EXIT_SIGNALS:
            try:
                loop.add_signal_handler(sig, self._exit_on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                continue

    def _exit_on_signal(self, sig: int) -> None:
        self.exit(128 + sig)

    # --- polling (stackmon.poller; pollers only post messages) -----------------------------

    @on(HostPolled)
    def _host_polled(self, message: HostPolled) -> None:
        if self.is_running and not self._exit:  # a poll may land while the app closes
            self.show_snapshot(message.index, message.snapshot)

    def show_snapshot(self, index: int, snap: HostSnapshot) -> None:
        """Route a snapshot to its pane, badge and overview line; public so tests can feed
        recorded data. A host without a tab costs its assessment and its overview line."""
        self._latest[index] = snap
        assessed = self._assessed[index] = assess(snap)
        pane = self.panes.get(index)
        if pane is not None:
            pane.set_snapshot(snap, visible=not self.paused and self._active_index() == index,
                              state=assessed)
        state = (assessed.label, assessed.severity)
        before = self._states.get(index)
        if before != state:
            self._states[index] = state
            if pane is not None:
                # "connecting" is not a width worth keeping: the first badge takes its own.
                relabel_tab(self._tabs.get_tab(f"host-{index}"), tab_label(
                    self.targets.hosts[index].name, state, no_color=self.no_color),
                    hold_s=HOLD_S if before is not None else 0.0)
        if self.overview is not None and not self.paused:
            self.overview.set_host(index, snap, assessed)
        if self.fleet_mode:
            self._alarm_tab(index, assessed.critical)
        screen = self.screen
        if isinstance(screen, EventsScreen) and screen.host_index == index:
            screen.set_logs(snap.logs)  # opened from the overview, the host may have no tab
        if pane is None:
            return
        if isinstance(screen, ReloadScreen) and screen.host_index == index:
            screen.set_host(snap)
        if isinstance(screen, WorkerDetailScreen) and screen.host_index == index:
            self._feed_detail(screen, pane)
        if isinstance(screen, KillConfirm) and screen.host_index == index:
            self._feed_kill_confirm(screen, snap)

    def _feed_detail(self, screen: WorkerDetailScreen, pane: HostPane) -> None:
        """The detail shows what the main screen shows: the frozen worker at the moment of
        the pause while paused, the latest now otherwise."""
        now = self._paused_at if self.paused else self.clock()
        screen.set_worker(pane.find_worker(screen.worker_id, screen.address,
                                           nth=screen.worker_nth), now, paused=self.paused)

    # --- helpers ----------------------------------------------------------------------------

    _MAIN_ONLY = frozenset({"open_worker", "cycle_sort", "filter", "next_host", "prev_host",
                            "next_instance", "kill_worker", "reload", "doctor", "events",
                            "worst", "trace_worker"})

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Actions on the host view are hidden (and inert) while a detail or help screen is
        on top, so the Footer only lists keys that do something there (a screen that offers
        one, like the detail's K, binds it itself). Read-only keeps the mutating keys, out of
        the Footer, so that they can say why they do nothing."""
        fleet = self._fleet_check(action)
        if fleet is not None:
            return fleet
        if action == "trace_worker":
            try:
                if not self._traceable(self.active_pane()):
                    return False
            except LookupError:  # no host shown
                return False
        return not (action in self._MAIN_ONLY and len(self.screen_stack) > 1)

    # Keys of one host's view: inert on the overview, whose own keys reuse some (R there is
    # the rolling reload), where their hint says what to do instead (tui.actions); and the
    # overview's own keys, inert elsewhere and under a screen.
    _HOST_ONLY = host_only()
    _FLEET_ONLY = frozenset({"rolling_reload", "overview_hint", "leave_overview"})
    _TAB_KEYS = frozenset({"rolling_reload", "overview", "close_tab", "overview_hint",
                           "leave_overview"})

    def _fleet_check(self, action: str) -> bool | None:
        """check_action's answer for the overview and its keys; None: not decided here."""
        if action in self._TAB_KEYS and len(self.screen_stack) > 1:
            return False
        if action in self._FLEET_ONLY:
            return self._on_overview()
        if action in self._HOST_ONLY and self._on_overview():
            return False
        return None

    @property
    def _tabs(self) -> TabbedContent:
        if self._tabbed is None:
            self._tabbed = self.screen_stack[0].query_one(TabbedContent)
        return self._tabbed

    def _on_overview(self) -> bool:
        return self.overview is not None and self._tabs.active == PANE_ID

    def _active_index(self) -> int | None:
        """The host whose tab is shown; None on the overview."""
        active = self._tabs.active
        if active == PANE_ID:
            return None
        return int(active.split("-")[1]) if active else min(self.panes, default=0)

    def active_pane(self) -> HostPane:
        """The host tab shown (the overview has no host: host actions are inert there)."""
        index = self._active_index()
        if index is None or index not in self.panes:
            raise LookupError("the overview is shown, not a host")
        return self.panes[index]

    def _active_host_pane(self) -> HostPane | None:
        index = self._active_index()
        return self.panes.get(index) if index is not None else None

    def host_state(self, index: int) -> tuple[str, Severity] | None:
        """A host's (label, severity) from its latest poll (None before it), for the palette."""
        return self._states.get(index)

    def _focus_workers(self) -> None:
        pane = self._active_host_pane()
        if pane is not None:
            pane.focus_workers()
        elif self.overview is not None:
            self.overview.table.focus()

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width < 110, "-narrow")
        self.set_class(event.size.width >= 180, "-wide")
        self.set_class(event.size.height >= 34, "-tall")
        self.set_class(event.size.height >= 46, "-taller")
        # Textual restyles only the screens on top for an App class: a terminal shrunk from
        # 200 to 80 columns under the stack screen left the main screen's side panel 56 wide
        # and the worker list 24 when it came back.
        for screen in self.screen_stack[:-1]:
            screen.update_node_styles(animate=False)
        self._footer_for(event.size.width)

    def _footer_for(self, width: int) -> None:
        """At 80 columns the Footer was cut after `d`: K, R and q were off screen. It lists
        the registry's `narrow` keys, then the others that fit (tui.actions.footer_fit); the
        keys left out still work and the help lists them."""
        fit = footer_fit(self.read_only, width, len(self._tab_ids()) < 2, self._FLEET_ONLY)
        if fit == self._footer_shape:
            return
        self._footer_shape = fit
        fleet = self._FLEET_ONLY  # the overview's keys: listed there, as before
        registry = {(key, spec.id): spec.id in fit or (spec.name in fleet and shown(
                        spec, self.read_only, narrow=True))
                    for spec in ACTIONS for key in spec.keys.split(",")}
        keymap = self._bindings.key_to_bindings
        for key, keyed in keymap.items():
            keymap[key] = [dataclasses.replace(b, show=registry[key, b.action])
                           if (key, b.action) in registry else b for b in keyed]
        self.refresh_bindings()

    @on(WorkerList.Selected)
    def _worker_selected(self, event: WorkerList.Selected) -> None:
        self.action_open_worker()

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = self._active_host_pane()
        if pane is not None:
            self._last_host = pane.index  # where Esc on the overview goes back to
        if pane is not None and not self.paused:
            pane.show_latest()
        # The focus moves with the tab, and with it Textual refreshes the Footer's keys (the
        # overview's and a host's differ); another refresh_bindings() here rebuilt it twice.
        self._focus_workers()

    # --- actions (declared in tui.actions) --------------------------------------------------

    def action_help(self) -> None:
        s = self.targets.settings
        self.push_screen(HelpScreen(self.read_only, (s.slow, s.critical),
                                    one_tab=len(self._tab_ids()) < 2))

    def action_open_worker(self, trace: bool = False, with_locals: bool = False) -> None:
        pane = self.active_pane()
        worker = pane.selected_worker()
        if worker is None:
            self.notify(pane.why_no_worker() or "No worker selected.", severity="warning")
            return
        inst = pane.current_instance()
        key = pane.selected_key()
        address = inst.address if inst else ""
        screen = WorkerDetailScreen(pane.index, pane.host.name, worker, address,
                                    self.clock(), nth=key[1] if key else 0,
                                    read_only=self.read_only or pane.host.read_only,
                                    tracer=self._tracer(pane, address))
        self.push_screen(screen)
        if trace:
            screen.with_locals = with_locals
            screen.call_after_refresh(screen.action_trace)

    def action_trace_worker(self, with_locals: bool = False) -> None:
        """t: the worker's detail, its stack being read (issue 13); l: with its locals."""
        self.action_open_worker(trace=True, with_locals=with_locals)

    def _traceable(self, pane: HostPane) -> bool:
        """A host with uWSGI stats (or an agent) has workers to trace; a recording does not."""
        return self._host(pane.index).traceable

    def _tracer(self, pane: HostPane, address: str) -> Tracer | None:
        """How the detail screen reads a worker's stack: through the poller's Host, for the
        instance at `address` as it is on screen; each stack also feeds the pane's "stuck
        together" line."""
        if not self._traceable(pane):
            return None

        async def trace(worker: Worker, with_locals: bool) -> StackResult:
            inst = pane.instance_at(address or None)
            if inst is None:
                raise ActionError("gone", "no uWSGI data for this instance now")
            result = await self._host(pane.index).trace(
                inst.index, worker.id, worker.pid, with_locals=with_locals,
                expect_spawn=worker.last_spawn)
            pane.remember_stack(result)
            return result

        return trace

    def action_cycle_sort(self) -> None:
        key = self.active_pane().cycle_sort()
        self.notify(f"Workers sorted by {key}.", timeout=2)

    def action_filter(self) -> None:
        if self._on_overview() and self.overview is not None:
            self.overview.open_filter()
            return
        self.active_pane().open_filter()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._paused_at = self.clock()
        self.sub_title = "PAUSED" if self.paused else ""
        # The Footer says what p does now (it said "p Pause" on a paused screen, review).
        keymap = self._bindings.key_to_bindings
        keymap["p"] = [dataclasses.replace(b, description="Resume" if self.paused else "Pause")
                       if b.action == "toggle_pause" else b for b in keymap.get("p", [])]
        self.refresh_bindings()
        for pane in self.panes.values():
            pane.set_paused(self.paused)
        if self.overview is not None:
            self.overview.set_paused(self.paused)
        if not self.paused:
            active = self._active_host_pane()
            if active is not None:
                active.show_latest()
            if self.overview is not None:
                for index, snap in self._latest.items():
                    self.overview.set_host(index, snap, self._assessed[index])
        screen = self.screen
        if isinstance(screen, WorkerDetailScreen) and screen.host_index in self.panes:
            self._feed_detail(screen, self.panes[screen.host_index])
        self.notify("Paused: the screen is frozen, polling goes on (p resumes)." if self.paused
                    else "Resumed: showing the latest poll.", timeout=3)

    def action_worst(self) -> None:
        pane = self.active_pane()
        before = pane.selected_key()
        target = pane.jump_worst()
        if target is not None and target == before and pane.worst_count() == 1:
            # It did act (the cursor follows it now), but nothing moved: say so.
            self.notify(f"Worker {target[0]} is the only one past the slow threshold; the "
                        "cursor stays on it and follows it.", timeout=3)
        if target is None:
            why = pane.why_no_worker()
            s = self.targets.settings
            self.notify(why or f"No request past the slow threshold ({s.slow:g}s) on this "
                        "instance.", timeout=3)

    def _show_tab_bar(self) -> None:
        """No tab bar for a single tab: the header under it already names the host and its
        state, the two rows go to the workers (at 80x24 that is two more workers), and the
        bar's five widgets were repainted with every frame for nothing."""
        self.set_class(len(self._tab_ids()) < 2, "-one-tab")
        self._footer_for(self.size.width)  # `]`/`[` listed only with a tab to switch to

    def _tab_ids(self) -> list[str]:
        """The tabs in their order: the overview, then hosts in hosts-file order."""
        return ([PANE_ID] if self.overview is not None else []) + [
            f"host-{i}" for i in sorted(self.panes)]

    def _switch(self, step: int) -> None:
        ids = self._tab_ids()
        if len(ids) < 2:
            self.notify("One host here: `]` and `[` switch between hosts of a hosts file.",
                        timeout=3)
            return
        active = self._tabs.active
        at = ids.index(active) if active in ids else 0
        self._tabs.active = ids[(at + step) % len(ids)]

    def action_next_host(self) -> None:
        self._switch(1)

    def action_prev_host(self) -> None:
        self._switch(-1)

    def action_next_instance(self) -> None:
        if not self.active_pane().next_instance():
            self.notify("This host has one uWSGI instance: `i` switches between several.",
                        timeout=3)

    def _subject(self) -> int | None:
        """The host a key of one host acts on: the tab shown, or on the overview its selected
        host (e and d need no tab of their own: they open a screen for that host)."""
        if self._on_overview():
            return self.overview.table.cursor_index if self.overview is not None else None
        return self.active_pane().index

    def action_events(self) -> None:
        index = self._subject()
        if index is None:
            self.notify("No host selected.", severity="warning")
            return
        snap = self._latest.get(index)
        pane = self.panes.get(index)  # its memory: failure episodes, actions of the session
        self.push_screen(EventsScreen(index, self.targets.hosts[index].name,
                                      snap.logs if snap is not None else None,
                                      pane.event_memory if pane is not None else None))

    def action_doctor(self) -> None:
        index = self._subject()
        if index is None:
            self.notify("No host selected.", severity="warning")
            return
        self.push_screen(DoctorScreen(index, self.targets.hosts[index].name))
        snap = self._latest.get(index)
        self.run_worker(lambda: self._diagnose(index, snap), thread=True,
                        group="doctor", exit_on_error=False)

    def _diagnose(self, index: int, snapshot: HostSnapshot | None) -> None:
        """In a thread: the doctor reads files and takes a second sample (about a second)."""
        from stackmon.doctor.api import diagnose_host

        report = diagnose_host(self.targets.hosts[index], self.targets.settings, snapshot)
        self.post_message(DoctorDone(index, report))

    @on(DoctorDone)
    def _doctor_done(self, message: DoctorDone) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, DoctorScreen) and screen.host_index == message.host_index:
                screen.set_report(message.report)  # type: ignore[arg-type]

    # --- actions that change the stack (confirm -> worker -> message) ------------------------

    def _actionable(self, pane: HostPane) -> bool:
        why = self._read_only_reason(pane.host)
        if why is not None:
            self.notify(why, severity="warning", markup=False)
            return False
        return True

    def _read_only_reason(self, host: HostConfig | None) -> str | None:
        """Why nothing is killed or reloaded on `host` (None: it may be). Said before any
        other reason a mutating key has, on a host's tab and on the overview alike."""
        if not (self.read_only or (host is not None and host.read_only)):
            return None
        where = "--read-only" if self.read_only or host is None else \
            f"read_only = true for {visible(host.name)} in the hosts file"
        return f"Read-only ({where}): stackmon does not kill or reload here."

    def action_kill_worker(self) -> None:
        pane = self.active_pane()
        self.confirm_kill(pane, pane.selected_worker())

    def confirm_kill(self, pane: HostPane, worker: Worker | None,
                     address: str | None = None) -> None:
        """Ask, then kill `worker` of the instance at `address` (default: the one shown).
        Every way this can not happen says why, in a notification."""
        if not self._actionable(pane):
            return
        if worker is None:
            self.notify(pane.why_no_worker() or "No worker selected.", severity="warning",
                        markup=False)
            return
        if not worker.spawned:
            what = "cheap (not spawned)" if worker.cheap else "dead, waiting for its respawn"
            self.notify(f"Worker {worker.id} has no process to kill: {what}.",
                        severity="warning")
            return
        inst = pane.instance_at(address)
        if inst is None:
            self.notify("No uWSGI data for this host yet.", severity="warning")
            return
        index, instance, address = pane.index, inst.index, inst.address
        host = self._host(index)
        timeout = host.settings.timeout
        # The dialog shows the latest poll, not the frozen screen (polling goes on while
        # paused): the worker as it is now when it is still the same process.
        snap = pane.latest or pane.on_screen
        live_inst = next((u for u in snap.uwsgi if u.address == address), None) if snap \
            else None
        live = live_worker(live_inst, worker.id)
        if live is not None and live.pid == worker.pid:
            worker = live
        stale_s, who = kill_staleness(live_inst or inst, snap)

        def chosen(choice: KillChoice | None) -> None:
            if choice is not None:
                # At once: confirming the pid takes up to a stats timeout (a hung master: all
                # of it), the capture and the signals seconds more; never a silent wait.
                toast = Notification(
                    kill_progress_text(worker, choice, timeout, CAPTURE_TIMEOUT),
                    f"Killing worker {worker.id}", "information", KILL_TOAST_S, markup=False)
                self.post_message(Notify(toast))
                self.run_worker(self._kill(index, instance, worker, choice, address, toast),
                                group="actions", exit_on_error=False)

        logs = pane.latest.logs if pane.latest is not None else None
        uwsgi_log = next((s.path for s in (logs.sources if logs else ()) if s.kind == "uwsgi"
                          and s.path and s.label in (None, str(instance))), None)
        # Capturing is on by default where py-spy can run: here, or on an agent's host.
        capture = host.captures_stacks
        dialog = KillConfirm(pane.host.name, address, worker, self.clock(),
                             capture=capture, uwsgi_log=uwsgi_log,
                             events=logs.events if logs else (), stale_s=stale_s,
                             stale_who=who, timeout=timeout, host_index=index,
                             paused=self.paused, by_id=len(pane.host.uwsgi) == 1)
        self.push_screen(dialog, chosen)
        if snap is not None:  # a respawned or gone worker: it says so at once
            self._feed_kill_confirm(dialog, snap)

    def _feed_kill_confirm(self, dialog: KillConfirm, snap: HostSnapshot) -> None:
        """A poll of its host to an open kill confirmation: it lists what a kill would hit
        now (a snapshot dialog killed two requests it never showed)."""
        inst = next((u for u in snap.uwsgi if u.address == dialog.address), None)
        stale_s, who = kill_staleness(inst, snap)
        dialog.set_live(live_worker(inst, dialog.target.id), self.clock(),
                        instance_seen=inst is not None, stale_s=stale_s, stale_who=who,
                        events=snap.logs.events if snap.logs else (), paused=self.paused)

    async def _kill(self, index: int, instance: int, worker: Worker,
                    choice: KillChoice, address: str = "",
                    toast: Notification | None = None) -> None:
        try:
            await self._kill_steps(index, instance, worker, choice, address)
        finally:  # the outcome's notification replaces the progress one
            if toast is not None and toast in self._notifications:
                self._unnotify(toast)

    async def _kill_steps(self, index: int, instance: int, worker: Worker,
                          choice: KillChoice, address: str) -> None:
        host = self._host(index)
        stack: StackResult | None = None
        summary: dict[str, object] | None = None
        captured = ""
        if choice.capture:  # before the kill destroys it; never a reason not to kill
            try:
                async with asyncio.timeout(CAPTURE_TIMEOUT):
                    stack, captured = await capture_for_kill(
                        host, instance, worker.id, worker.pid, expect_spawn=worker.last_spawn)
            except TimeoutError:
                captured = f"stack not captured: no dump within {CAPTURE_TIMEOUT:g} s"
            summary = stack.summary() if stack is not None else {"not_captured": captured}
        try:
            result = await host.kill(
                instance, worker.id, worker.pid, choice.signal, expect_spawn=worker.last_spawn,
                usr2_first=choice.usr2_first, audit=self.audit, stack=summary,
                expect_requests=choice.expect_requests)
        except ActionError as exc:
            if exc.kind == "ended":  # what the user confirmed the kill for, by name
                self.post_message(ActionFinished("Nothing killed: the request ended",
                                                 f"{choice.meant}: {exc.message}", ok=False))
            else:
                self.post_message(ActionFinished("Kill refused", exc.message, ok=False))
            outcome, killed = f"kill refused: {exc.message}", False
        except OSError as exc:
            self.post_message(ActionFinished("Kill not done", f"audit log: {exc}", ok=False))
            outcome, killed = f"kill not done: audit log: {exc}", False
        else:
            text = result.message + (f"; {captured}" if captured else "")
            if choice.usr2_first:
                text += "; SIGUSR2's output is in the uWSGI log (e: events)"
            self.post_message(ActionFinished("Worker killed", text, ok=result.ok))
            outcome, killed = result.message, True
        if stack is not None:
            self.post_message(StackCaptured(index, address, worker.id, stack, outcome, killed))
        self._poll_now(index)

    @on(StackCaptured)
    def _stack_captured(self, message: StackCaptured) -> None:
        """A kill's capture: the pane's "stuck together" line learns it; the detail showing
        that worker shows it, else (from the list) a screen does: the kill destroyed it."""
        result = message.result
        try:
            pane = self.panes[message.host_index]
        except LookupError:  # its tab was closed meanwhile
            return
        pane.remember_stack(result)
        screen = self.screen
        if (isinstance(screen, WorkerDetailScreen) and screen.host_index == message.host_index
                and screen.worker_id == message.worker_id):
            screen.show_stack(result, note=f"Captured before the kill ({message.outcome})."
                              if message.killed else f"Captured; {message.outcome}.")
        elif len(self.screen_stack) == 1:
            self.push_screen(StackScreen(pane.host.name, result, message.outcome,
                                         self.clock(), killed=message.killed))

    def action_reload(self, mode: str = "graceful") -> None:
        pane = self.active_pane()
        inst = pane.current_instance()
        if inst is None:
            self.notify("No uWSGI data for this host yet.", severity="warning")
            return
        if not self._actionable(pane):
            return
        index, instance = pane.index, inst.index

        def chosen(choice: ReloadChoice | None) -> None:
            if choice is not None:
                self.run_worker(self._reload(index, instance, inst.address, choice.mode,
                                             inst.master_pid),
                                group="actions", exit_on_error=False)

        host = self._host(index)  # the mercy and whether it can chain, read in a thread
        self.push_screen(ReloadConfirm(pane.host.name, inst, self.clock(), mode,
                                       lookup=lambda: host.reload_facts(instance, inst)),
                         chosen)

    async def _reload(self, index: int, instance_index: int, address: str, mode: str,
                      master_pid: int) -> None:
        host = self._host(index)
        before = self._latest.get(index)
        try:
            result = await host.reload(instance_index, mode, audit=self.audit,
                                       expect_master=master_pid)
        except ActionError as exc:
            self.post_message(ActionFinished("Reload refused", exc.message, ok=False))
            return
        except OSError as exc:
            self.post_message(ActionFinished("Reload not done", f"audit log: {exc}", ok=False))
            return
        instance = f"{host.name}/{address}"
        self._before_reload[instance] = before

        def progressed(p: ReloadProgress) -> None:
            self.post_message(ReloadProgressed(index, instance, p))

        try:
            progress = await host.follow(instance_index, result, progressed, audit=self.audit)
        except (ActionError, OSError) as exc:
            # The reload was sent; only following it failed. Say so, and close the view's slot.
            self._reload_views.discard(instance)
            self.post_message(ActionFinished("Reload sent, progress lost", str(exc), ok=False))
            return
        self.post_message(ReloadProgressed(index, instance, progress, final=True))
        self.post_message(ActionFinished("Reload finished" if progress.done else "Reload slow",
                                         progress.message, ok=progress.done))

    def _host(self, index: int) -> Host:
        """The host as its poller holds it: actions go through the same Host as the polls,
        so what they do (a kill, a reload) shows among that host's events."""
        fleet = getattr(self, "fleet", None)
        if fleet is not None:
            return fleet.pollers[index].collector
        # No pollers (tests feeding snapshots, a replay): one Host per host, kept (the Footer
        # asks what a host can do on every refresh).
        if index not in self._unpolled_hosts:
            self._unpolled_hosts[index] = open_host(self.targets.hosts[index],
                                                    self.targets.settings)
        return self._unpolled_hosts[index]

    def _poll_now(self, index: int) -> None:
        """After an action the next poll should show its effect, not wait an interval."""
        fleet = getattr(self, "fleet", None)
        if fleet is not None:
            fleet.poll_now(index)

    @on(ReloadProgressed)
    def _reload_progressed(self, message: ReloadProgressed) -> None:
        progress = message.progress
        assert isinstance(progress, ReloadProgress)
        if self.overview is not None:
            self.overview.reload_progress(message.host_index, progress, message.final)
        screen = self.screen
        if isinstance(screen, ReloadScreen) and screen.instance == message.instance:
            screen.set_progress(progress)
        elif message.instance not in self._reload_views:
            # The first sample opens the view; closing it leaves the reload running.
            self._reload_views.add(message.instance)
            host = self.targets.hosts[message.host_index].name
            address = message.instance.removeprefix(f"{host}/")
            self.push_screen(ReloadScreen(host, message.instance, progress,
                                          host_index=message.host_index, address=address,
                                          before=self._before_reload.pop(message.instance, None)))
        if message.final:
            self._reload_views.discard(message.instance)

    @on(ActionFinished)
    def _action_finished(self, message: ActionFinished) -> None:
        # The text can quote a server's error, a URI or a host name: never markup, never raw.
        self.notify(visible(message.text), title=visible(message.title), markup=False,
                    severity="information" if message.ok else "error", timeout=8)

    # --- the fleet: the overview, tabs for hosts in alarm or opened, the rolling reload -----

    def open_host(self, index: int) -> None:
        """Show a host in its tab, building the tab when it has none (Enter on the overview,
        the palette); the host keeps its tab until closed (ctrl+w)."""
        self.call_later(self._open_host, index)

    async def _open_host(self, index: int) -> None:
        self._opened.add(index)
        self._dismissed.discard(index)
        pane = await self._ensure_pane(index)
        self._tabs.active = pane.id or ""
        self._focus_workers()  # now, not after a frame drawn with the focus still on the overview

    async def _ensure_pane(self, index: int) -> HostPane:
        """The host's pane, mounted in hosts-file order after the overview, and given the
        host's latest poll (its history starts there)."""
        async with self._pane_lock:
            pane = self.panes.get(index)
            if pane is not None:
                return pane
            pane = self._new_pane(index)
            later = [i for i in sorted(self.panes) if i > index]
            await self._tabs.add_pane(pane, before=f"host-{later[0]}" if later else None)
            self.panes[index] = pane
            self._show_tab_bar()
            self._tabs.get_tab(pane).label = tab_label(self.targets.hosts[index].name,
                                                       self._states.get(index),
                                                       no_color=self.no_color)
            pane.set_paused(self.paused)
            snap = self._latest.get(index)
            if snap is not None:
                pane.set_snapshot(snap, visible=False)
            return pane

    async def _drop_pane(self, index: int) -> None:
        async with self._pane_lock:
            pane = self.panes.pop(index, None)
            if pane is None:
                return
            if self._tabs.active == pane.id and self.overview is not None:
                self._tabs.active = PANE_ID
            await self._tabs.remove_pane(pane.id or "")
            self._show_tab_bar()

    def _alarm_tab(self, index: int, critical: bool) -> None:
        """A critical host takes a tab (up to MAX_ALARM_TABS); the tab goes ALARM_LINGER_S
        after the host calmed down, unless the user opened it or is looking at it."""
        if critical:
            if index in self._alarm:
                self._alarm[index] = None
            elif (index not in self.panes and index not in self._dismissed
                  and len(self._alarm) < MAX_ALARM_TABS):
                self._alarm[index] = None
                self.call_later(self._ensure_pane, index)
            return
        self._dismissed.discard(index)
        if index not in self._alarm:
            return
        calm = self._alarm[index]
        now = time.monotonic()
        if calm is None:
            self._alarm[index] = calm = now
        if now - calm >= self.ALARM_LINGER_S and index not in self._opened \
                and self._active_index() != index:
            del self._alarm[index]
            self.call_later(self._drop_pane, index)

    @on(FleetTable.Selected)
    def _fleet_selected(self, event: FleetTable.Selected) -> None:
        self.open_host(event.index)

    async def action_overview(self) -> None:
        """Show the overview; with a few hosts (no overview yet) it is added as first tab."""
        if self.overview is None:
            self.overview = FleetPane(self.targets.hosts, read_only=self.read_only)
            self.overview.set_paused(self.paused)
            first = f"host-{min(self.panes)}" if self.panes else None
            await self._tabs.add_pane(self.overview, before=first)
            self._show_tab_bar()
            for index, snap in self._latest.items():
                self.overview.set_host(index, snap, self._assessed[index])
        self._tabs.active = PANE_ID
        self._focus_workers()  # now: a frame drawn before would redraw the overview unfocused

    def _back_to(self) -> int | None:
        """The host tab the overview was reached from, if it is still open."""
        back = self._last_host
        return back if back is not None and back in self.panes else None

    def action_leave_overview(self) -> None:
        """Esc on the overview (a filter, if any, was cleared first by the overview): back
        to the host tab it came from, or why not."""
        back = self._back_to()
        if back is None:
            self.notify("No host tab to go back to: Enter opens the selected host.",
                        timeout=3)
            return
        self._tabs.active = f"host-{back}"

    def action_overview_hint(self, keys: str) -> None:
        """A key of one host's view pressed on the overview: what to do instead, naming the
        selected host; read-only, a mutating key says that first (as on a host's tab)."""
        spec = overview_hint(keys)
        index = self.overview.table.cursor_index if self.overview is not None else None
        host = self.targets.hosts[index] if index is not None else None
        why = self._read_only_reason(host) if spec.mutating else None
        if why is None:
            name = visible(host.name) if host is not None else "a host"
            why = (spec.overview_hint or "").format(host=name)
        self.notify(why, severity="warning" if spec.mutating else "information",
                    timeout=5, markup=False)

    async def action_close_tab(self) -> None:
        index = self._active_index()
        if index is None or not self.fleet_mode:
            self.notify("Only a host's tab opened from the overview closes (with "
                        f"{FLEET_MIN_HOSTS - 1} hosts or fewer every host keeps its tab).",
                        timeout=4)
            return
        self._opened.discard(index)
        self._alarm.pop(index, None)
        state = self._states.get(index)
        if state is not None and state[1] == "critical":
            self._dismissed.add(index)  # not reopened while it stays critical
        await self._drop_pane(index)

    def action_rolling_reload(self) -> None:
        """R on the overview: a rolling reload of the selected host's group, after a
        confirmation that names the group and every host in order and where the operator
        chooses how many hosts drain together (max unavailable)."""
        overview = self.overview
        index = overview.table.cursor_index if overview is not None else None
        if overview is None or index is None:
            self.notify("No host selected.", severity="warning")
            return
        host = self.targets.hosts[index]
        why = self._read_only_reason(host)  # first: it holds whatever the group
        if why is not None:
            self.notify(why, severity="warning", markup=False)
            return
        if host.group is None:
            self.notify(f"{visible(host.name)} is in no group: a rolling reload reloads a "
                        'group (group = "NAME" in the hosts file).', severity="warning",
                        markup=False)
            return
        members = [i for i, h in enumerate(self.targets.hosts) if h.group == host.group]
        hosts = [self.targets.hosts[i] for i in members]
        locked = [h.name for h in hosts if h.read_only]
        if locked:
            self.notify(f"Read-only (read_only = true for {visible(', '.join(locked))} in "
                        f"the hosts file): stackmon does not reload group "
                        f"{visible(host.group)}.", severity="warning", markup=False)
            return
        if self._roll_members is not None:
            self.notify("A rolling reload is already running (its progress is on the "
                        "overview).", severity="warning")
            return
        group = host.group

        def chosen(policy: RollPolicy | None) -> None:
            """The policy chosen in the confirmation (its max unavailable), or None."""
            if policy is not None and self._roll_members is None:
                self._roll_members = members
                overview.roll_started(group, members, policy.max_unavailable)
                self.run_worker(self._roll(group, members, policy), group="roll",
                                name=f"rolling reload {group}", exit_on_error=False)

        self.push_screen(RollConfirm(group, hosts, RollPolicy()), chosen)

    async def _roll(self, group: str, members: list[int], policy: RollPolicy) -> RollResult:
        """The roll through the pollers' own Host objects (what it does shows among each
        host's events); hosts opened only for it are closed after."""
        own = getattr(self, "fleet", None) is None
        hosts = [self._host(i) for i in members]

        def stepped(step: RollStep) -> None:
            self.post_message(RollProgressed(members[step.position - 1], step))
            if step.phase in ("done", "failed"):
                self._poll_now(members[step.position - 1])

        try:
            return await rolling_reload(hosts, audit=self.audit, policy=policy, group=group,
                                        on_step=stepped)
        finally:
            if own:
                await asyncio.gather(*(h.aclose() for h in hosts), return_exceptions=True)

    @on(RollProgressed)
    def _roll_progressed(self, message: RollProgressed) -> None:
        if self.overview is not None:
            self.overview.roll_step(message.host_index, message.step)

    @on(TaskWorker.StateChanged)
    def _roll_ended(self, event: TaskWorker.StateChanged) -> None:
        """The roll's outcome (or why it could not run: a refusal, an audit log that cannot
        be written, a bug) on the overview and in a notification."""
        worker = event.worker
        if worker.group != "roll" or event.state not in (
                WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        members, self._roll_members = self._roll_members or [], None
        result = worker.result if event.state == WorkerState.SUCCESS else None
        if isinstance(result, RollResult):
            error = None
            ok, text = result.ok, result.message
        else:
            exc = worker.error
            error = exc.message if isinstance(exc, ActionError) else (
                str(exc) or type(exc).__name__ if exc is not None else "cancelled")
            ok, text = False, f"rolling reload failed: {error}"
        if self.overview is not None:
            self.overview.roll_finished(members, result if isinstance(result, RollResult)
                                        else None, error)
        self.notify(visible(text), title="Rolling reload", markup=False,
                    severity="information" if ok else "error", timeout=10)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette lists the same registry as the keys (plus Textual's own commands)."""
        yield from super().get_system_commands(screen)
        for spec in ACTIONS:
            if (self.read_only and spec.mutating) or spec.id == "quit" or not spec.listed:
                continue
            yield SystemCommand(spec.description, spec.help,
                                lambda a=spec.id: self.run_action(a))


def run_app(targets: Targets) -> int:
    """Run the TUI; its exit status (0, or 128 + n after SIGTERM/SIGHUP)."""
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNALS}
    app = StackmonApp(targets)
    try:
        result = app.run()
    finally:
        # Closing the loop reset them to SIG_DFL; a caller (the demo) may rely on its own.
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    return result if isinstance(result, int) else 0

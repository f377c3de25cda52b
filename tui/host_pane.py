"""One host's tab. It owns its subtree: the app hands it snapshots, nothing else reaches in.

The pane keeps the latest snapshot and its own history on every poll (cheap), but re-renders
its widgets only while it is the visible tab and the app is not paused: a hidden host costs
nothing but the poll.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice
from weakref import WeakKeyDictionary

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.widgets import Input, Static, Tab, TabPane

from stackmon.actions.stack import StackResult
from stackmon.config import HostConfig, Settings
from stackmon.health import HostState, assess
from stackmon.model import HostSnapshot, UwsgiInstance, Worker
from stackmon.redact import visible
from stackmon.render_text import human_age
from stackmon.stuck import group_stuck
from tui.screens.events import KIND_STYLE, EventMemory, event_fields, shown_events
from widgets.blank import BlankHorizontal, BlankVertical
from widgets.clients_panel import CauseHistory
from widgets.gauge import fd_items, listen_queue_items
from widgets.host_header import HostHeader, host_reading
from widgets.side_panel import SidePanel, side_data
from widgets.text_lines import TextLines
from widgets.worker_list import WorkerKey, WorkerList

SORTS = ("id", "age", "requests")
HISTORY = 60
HOLD_S = 10.0  # a shorter reading/stuck/events text shrinks its lines after this long


class FilterInput(Input):
    """The worker filter; Escape clears and closes it."""

    BINDINGS = [Binding("escape", "close", "Close filter", show=False)]

    def action_close(self) -> None:
        self.value = ""
        self.display = False
        self.app.set_focus(self.parent.query_one(WorkerList) if self.parent else None)


_TAB_WIDTH_NEEDED: WeakKeyDictionary[Tab, float] = WeakKeyDictionary()


def relabel_tab(tab: Tab, label: Text, *, now: float | None = None,
                hold_s: float = HOLD_S) -> None:
    """A host tab's new title. `Tab.label =` lays out the whole screen (the tab's width may
    change), the most expensive thing a poll can do; a badge whose rate moved ("502 0.5/s",
    then "0.6/s") keeps its width, and then repainting the tab is enough. A narrower title
    keeps the tab's width (padded) for `hold_s` after the width was last needed, as the
    reading does: a badge flapping between "CRIT 1" and "502 0.4/s" moved every tab after
    it and laid out the screen each time."""
    now = time.monotonic() if now is None else now
    content = Content.from_text(label)
    if not tab.is_mounted:
        tab.label = content
        _TAB_WIDTH_NEEDED[tab] = now
        return
    width = tab.label.cell_length
    if content.cell_length >= width:
        _TAB_WIDTH_NEEDED[tab] = now
    elif now - _TAB_WIDTH_NEEDED.get(tab, now) < hold_s:
        content = content.pad_right(width - content.cell_length)
    if content.cell_length == width:
        if content != tab.label:
            tab._label = content  # what Tab.label returns (its setter would lay out)
            Static.update(tab, content, layout=False)
    else:
        _TAB_WIDTH_NEEDED[tab] = now
        tab.label = content


def uwsgi_rate(prev: HostSnapshot | None, snap: HostSnapshot) -> float | None:
    """Requests per second served by uWSGI between two snapshots (finished requests)."""
    if prev is None or not prev.reachable or not snap.reachable or prev.stale_s is not None:
        return None
    dt = snap.taken_at - prev.taken_at
    before = {u.address: sum(w.requests for w in u.workers) for u in prev.uwsgi}
    done = 0
    for u in snap.uwsgi:
        if u.address not in before:
            return None
        delta = sum(w.requests for w in u.workers) - before[u.address]
        if delta < 0:  # a full reload restarts the counters
            return None
        done += delta
    return done / dt if dt > 0 else None


RECENT_EVENTS = 8
MAX_STACKS = 256  # stacks kept per host (one per worker; the newest wins)


def stuck_line(snap: HostSnapshot, stacks: Iterable[StackResult]) -> Text:
    """"Stuck together: 3 workers in db.acquire_lock (GET /report/:id), oldest 48 s": the
    biggest group of 2+ stuck requests sharing an innermost application frame (from stacks
    read this session) or an endpoint (stackmon.stuck); empty when there is none."""
    groups = group_stuck(snap, stacks, min_count=2)
    text = Text(end="")
    if not groups:
        return text
    text.append("Stuck together: ", "bold")
    text.append(visible(groups[0].text()), "bold yellow")
    if len(groups) > 1:
        more = len(groups) - 1
        text.append(f"  (+{more} more group{'s' if more > 1 else ''}: "
                    f"{visible(groups[1].text())})", "dim")
    return text


def recent_events(snap: HostSnapshot, memory: EventMemory | None = None) -> Text:
    """The newest events under the workers, on a tall terminal (the `e` screen has them all):
    what just happened to which worker, where the lower half of the screen was empty. The
    same rows as the events screen (upstream failure episodes, stackmon's actions)."""
    text = Text("Recent events", style="bold", end="")
    logs = snap.logs
    if logs is None:
        text.append("  no log source: harakiri, deaths, respawns and reloads come from "
                    "uWSGI's log", "dim")
        return text
    rows = shown_events(logs, memory)
    if not rows:
        text.append(f"  none in the last {logs.window_s:.0f} s (e: events screen)", "dim")
        return text
    text.append(f"  newest first, {len(rows)} (e: all)", "dim")
    for e in rows[:RECENT_EVENTS]:
        clock, _source, kind, worker, pid, uri, words = event_fields(e)
        text.append(f"\n{clock} ", "dim")
        text.append(f"{kind:<12} ", KIND_STYLE.get(e.kind, "bold"))
        if worker != "-":
            text.append(f"worker {worker} ")
        if pid != "-":
            text.append(f"pid {pid} ", "dim")
        if uri != "-":
            text.append(f"{uri} ")
        text.append(words, "dim")
    return text


class HostPane(TabPane):
    DEFAULT_CSS = """
    HostPane { padding: 0; }
    HostPane #stuck { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """
    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", show=False)]
    BLANK = True  # its children cover it (widgets.blank says why this matters)

    def __init__(self, index: int, host: HostConfig, settings: Settings,
                 clock: Callable[[], float], *, id: str) -> None:
        # A host name is configuration text: never markup, control characters made visible.
        super().__init__(Content(visible(host.name)), id=id)
        self.index = index
        self.host = host
        self.settings = settings
        self.clock = clock
        self.latest: HostSnapshot | None = None
        self._shown: HostSnapshot | None = None
        self._state: tuple[HostSnapshot, HostState] | None = None  # the latest's assess()
        self._previous: HostSnapshot | None = None
        self._rps: float | None = None
        # The instance shown, by its address: a failed poll of another instance shortens the
        # snapshot's tuple, and positions would then point at a different instance.
        self._instance_address: str | None = None
        self._sort = 0
        self._paused = False
        self._queue_hist: deque[int] = deque(maxlen=HISTORY)
        self._busy_hist: deque[int] = deque(maxlen=HISTORY)
        self._rps_hist: deque[float | None] = deque(maxlen=HISTORY)
        self._causes = CauseHistory(HISTORY)
        self.event_memory = EventMemory()  # what the events screen keeps beyond one poll
        # Stacks read this session ((instance index, worker id) -> the newest), for the
        # "stuck together" line: stackmon.stuck uses one only for its own pid and request.
        self.stacks: dict[tuple[int, int], StackResult] = {}

    def compose(self) -> ComposeResult:
        yield HostHeader(id="header")
        # The reading, the stuck group and the recent events keep their height HOLD_S after
        # they need less (widgets.text_lines): the worker rows below them stay in place.
        yield TextLines(id="reading", hold_s=HOLD_S, hide_empty=True)
        yield TextLines(id="stuck", hold_s=HOLD_S, hide_empty=True)
        with BlankHorizontal(id="body"):
            with BlankVertical(id="main"):
                yield TextLines(Text("connecting…", style="dim"), id="instance-title")
                yield TextLines(id="notice", hide_empty=True)
                yield WorkerList(thresholds=self.settings.thresholds, id="workers")
                yield FilterInput(placeholder="filter workers (Esc clears)", id="filter")
                yield TextLines(id="recent", hold_s=HOLD_S)
            # The gauges first: a few lines each, and at 80x24 somaxconn and every queue and
            # fd figure must be on screen without scrolling; the clients' figures follow.
            # One line-API widget: a poll redraws only the lines whose figures changed.
            yield SidePanel(id="side")

    def on_mount(self) -> None:
        self.query_one("#filter", FilterInput).display = False
        self._show_flags(None)

    # --- data in ----------------------------------------------------------------------------

    def set_snapshot(self, snap: HostSnapshot, visible: bool,
                     state: HostState | None = None) -> None:
        """Keep the poll (and its history); draw it only when this tab is on screen. `state`:
        the poll's assess() when the caller has it (it is not cheap: every rule, each poll)."""
        self._state = (snap, state) if state is not None else None
        if self.latest is not None and snap.taken_at < self.latest.taken_at:
            self._restart_history()  # a replay stepped back: the minute starts again there
        self.event_memory.observe(snap.logs)
        self._rps = uwsgi_rate(self.latest, snap) if snap.reachable else None
        self._previous, self.latest = self.latest, snap
        if snap.reachable and snap.stale_s is None:
            queue = max((u.listen_queue for u in snap.uwsgi), default=0)
            self._queue_hist.append(queue)
            self._busy_hist.append(sum(u.busy_workers for u in snap.uwsgi))
            # uWSGI's own rate only: the history is titled "History · uWSGI", and nginx's
            # stub_status rate (its polls included) stood in for it across reloads.
            self._rps_hist.append(self._rps)
            self._causes.push(snap.logs)
        if visible:
            self.show_latest()

    def _restart_history(self) -> None:
        """Forget the minute of history: it was built from later polls (a replay stepped
        back in time, and the sparklines kept appending the earlier polls after the later)."""
        self.latest = self._previous = None
        for series in (self._queue_hist, self._busy_hist, self._rps_hist):
            series.clear()
        self._causes = CauseHistory(HISTORY)
        self.event_memory.reset()

    def set_paused(self, paused: bool) -> None:
        self._paused = paused
        self._show_flags(self._shown if paused else self.latest)

    def _show_flags(self, snap: HostSnapshot | None) -> None:
        """PAUSED, READ-ONLY and STALE in the header for as long as they are true."""
        flags: list[str] = []
        if self._paused:
            flags.append("PAUSED")
        if self.settings.read_only or self.host.read_only:
            flags.append("READ-ONLY")
        inst = self._current_instance(snap) if snap is not None else None
        if inst is not None and inst.stale_s is not None:
            flags.append(f"STALE {human_age(inst.stale_s)}")
        if self.is_mounted:
            self.query_one(HostHeader).set_flags(tuple(flags))

    def show_latest(self) -> None:
        snap = self.latest
        if snap is None or snap is self._shown or not self.is_mounted:
            return
        self._draw(snap)

    def _draw(self, snap: HostSnapshot) -> None:
        self._shown = snap
        now = self.clock()
        known = self._state
        state = known[1] if known is not None and known[0] is snap else assess(snap)
        self.query_one(HostHeader).set_snapshot(snap, self._rps, state)
        self._show_flags(snap)
        self.query_one("#reading", TextLines).show(host_reading(state,
                                                                no_color=self.app.no_color))
        self._draw_stuck(snap)
        inst = self._current_instance(snap)
        workers = self.query_one(WorkerList)
        self.query_one("#instance-title", TextLines).show(self._instance_title(snap, inst))
        self.query_one("#notice", TextLines).show(self._notice(snap))
        stale_s = _stale_s(snap, inst)
        if stale_s is None:
            workers.set_workers(inst.workers if inst else (), now)
        else:  # ages as of the last good sample: whether those requests still run is unknown
            measured = inst.ages_measured_at() if inst else None
            as_of = measured if measured is not None else snap.taken_at - stale_s
            workers.set_workers(inst.workers if inst else (), as_of, stale=True)
        self._draw_side(snap)
        self.query_one("#recent", TextLines).show(recent_events(snap, self.event_memory))

    def _draw_stuck(self, snap: HostSnapshot) -> None:
        text = stuck_line(snap, self.stacks.values()) if snap.reachable else Text()
        stuck = self.query_one("#stuck", TextLines)
        # On a tall screen its row is always there: coming and going with each burst, it
        # moved every worker row (a new user counted four moves of the worst row in 110 s).
        stuck.hide_empty = not self.app.has_class("-tall")
        stuck.show(text)

    def remember_stack(self, result: StackResult) -> None:
        """A stack read of one of this host's workers (`t`, a kill's capture): it names where
        the stuck requests are from now on."""
        self.stacks.pop((result.instance, result.worker_id), None)
        self.stacks[(result.instance, result.worker_id)] = result
        while len(self.stacks) > MAX_STACKS:
            self.stacks.pop(next(iter(self.stacks)))
        if self._shown is not None and self.is_mounted:
            self._draw_stuck(self._shown)

    def _draw_side(self, snap: HostSnapshot) -> None:
        nginx_error = next((e.message for e in snap.errors if e.source.startswith("nginx")),
                           None)
        if not snap.reachable and self.host.nginx:
            nginx_error = "no data: host unreachable"
        elif not (self.host.nginx or snap.nginx):
            nginx_error = None  # not monitored here: "nginx: not configured"
        self.query_one(SidePanel).show(side_data(
            queues=listen_queue_items(snap), somaxconn=snap.kernel.somaxconn or 0,
            fds=fd_items(snap.fds), logs=snap.logs, health=snap.health,
            causes=self._causes.series(), nginx=snap.nginx, nginx_error=nginx_error,
            history=(self._queue_hist, self._busy_hist, self._rps_hist)))

    def _current_instance(self, snap: HostSnapshot) -> UwsgiInstance | None:
        if not snap.uwsgi:
            return None
        for inst in snap.uwsgi:
            if inst.address == self._instance_address:
                return inst
        self._instance_address = snap.uwsgi[0].address
        return snap.uwsgi[0]

    def _position(self, snap: HostSnapshot) -> int:
        return next((i for i, u in enumerate(snap.uwsgi) if u.address == self._instance_address),
                    0)

    @staticmethod
    def _notice(snap: HostSnapshot) -> Text:
        """Every failed source in full, wrapped: the reason is what the user acts on."""
        if not snap.errors:
            return Text()
        text = Text()
        if not snap.reachable:
            text.append(" UNREACHABLE ", "bold white on red")
            if snap.stale_s is not None:
                text.append(f"  showing the last good data, {snap.stale_s:.0f}s old", "bold")
            else:
                text.append("  no data received yet", "bold")
        else:
            text.append(" PARTIAL ", "bold black on yellow")
            if any(u.stale_s is not None for u in snap.uwsgi):
                # It said "the rest is current" under a STALE header (a review found both).
                text.append("  some sources failed; uWSGI shows its last good data", "bold")
            else:
                text.append("  some sources failed; the rest is current", "bold")
        for e in snap.errors:
            text.append("\n • ")
            text.append(visible(e.source), "bold")
            text.append(f": {visible(e.message)}")
        return text

    def _instance_title(self, snap: HostSnapshot, inst: UwsgiInstance | None) -> Text:
        text = Text()
        if inst is None:
            if not snap.reachable:
                text.append("no worker data", "dim")
            elif self.host.uwsgi:
                text.append("uWSGI: no data ", "bold yellow")
                text.append(visible("; ".join(e.message for e in snap.errors
                                              if e.source.startswith("uwsgi"))))
            else:
                text.append("no uWSGI stats configured for this host", "dim")
            return text
        text.append("uWSGI ", "bold")
        workers = self.query_one(WorkerList)
        if workers.filter_text:
            # First after the label: workers are hidden, and at 80 columns the end of this
            # line is cut (the review found "filter: …" with the text itself cut off).
            text.append("filter: ", "dim")
            text.append(visible(workers.filter_text), "bold reverse")
            text.append("  ")
        stale_s = _stale_s(snap, inst)
        if stale_s is not None:  # first too: at 80 columns the line's end is cut
            text.append(f"as of {human_age(stale_s)} ago", "bold reverse")
            text.append("  ")
        text.append(visible(inst.address))
        if len(snap.uwsgi) > 1:
            text.append(f"  [{self._position(snap) + 1}/{len(snap.uwsgi)}, i: next]", "dim")
        text.append(f"  sort: {SORTS[self._sort]}", "dim")
        for warning in inst.warnings:
            text.append(f"  ! {visible(warning)}", "yellow")
        return text

    # --- commands from the app ---------------------------------------------------------------

    @property
    def on_screen(self) -> HostSnapshot | None:
        """What the user is looking at: the frozen snapshot while paused, else the latest."""
        return self._shown if self._paused and self._shown is not None else self.latest

    def current_instance(self) -> UwsgiInstance | None:
        """The instance on screen (actions name what the user saw, even while paused)."""
        snap = self.on_screen
        return self._current_instance(snap) if snap else None

    def instance_at(self, address: str | None) -> UwsgiInstance | None:
        """The instance at `address` in what is on screen (None: the one shown)."""
        if address is None:
            return self.current_instance()
        snap = self.on_screen
        return next((u for u in snap.uwsgi if u.address == address), None) if snap else None

    def why_no_worker(self) -> str | None:
        """Why there is no worker under the cursor, in words (None: there is one)."""
        snap = self.on_screen
        name = visible(self.host.name)
        if snap is None:
            return f"{name}: no data yet (connecting)."
        if not snap.reachable:
            why = snap.errors[0].message if snap.errors else "no answer"
            return f"{name} is unreachable: {visible(why)}. No worker to act on."
        inst = self._current_instance(snap)
        if inst is None:
            return f"{name}: no uWSGI stats, so no worker to act on."
        workers = self.query_one(WorkerList)
        if not inst.workers or workers.cheap_count == len(inst.workers):
            return f"{name}: this instance has no spawned worker."
        if workers.filter_text and workers.cursor_key is None:
            return "No worker matches the filter (Esc clears it)."
        return None if workers.cursor_key is not None else "No worker selected."

    def worst_count(self) -> int:
        """How many workers have a request past a threshold."""
        return len(self.query_one(WorkerList).worst_keys())

    def jump_worst(self) -> WorkerKey | None:
        """The cursor to the worst worker, then the next worst (WorkerList.jump_worst)."""
        return self.query_one(WorkerList).jump_worst()

    def find_worker(self, worker_id: int, address: str | None = None,
                    latest: bool = False, nth: int = 0) -> Worker | None:
        """A worker of the shown instance (or of the instance at `address`); `latest`: from
        the newest snapshot even while paused (a detail screen follows live data). Ids can
        repeat: `nth` picks the nth worker with that id in the document's order (WorkerKey)."""
        snap = self.latest if latest else self.on_screen
        if snap is None:
            return None
        inst = next((u for u in snap.uwsgi if u.address == address), None) if address \
            else self._current_instance(snap)
        if inst is None:
            return None
        same_id = (w for w in inst.workers if w.id == worker_id)
        return next(islice(same_id, nth, None), None)

    def selected_key(self) -> WorkerKey | None:
        """The worker under the cursor as (id, nth with that id): ids alone can repeat."""
        return self.query_one(WorkerList).cursor_key

    def selected_worker(self) -> Worker | None:
        key = self.selected_key()
        return None if key is None else self.find_worker(key[0], nth=key[1])

    def focus_workers(self) -> None:
        self.query_one(WorkerList).focus()

    def cycle_sort(self) -> str:
        self._sort = (self._sort + 1) % len(SORTS)
        self.query_one(WorkerList).sort_by(SORTS[self._sort])  # type: ignore[arg-type]
        self._redraw_title()
        return SORTS[self._sort]

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", FilterInput)
        if box.value or self.query_one(WorkerList).filter_text:
            box.action_close()

    def open_filter(self) -> None:
        box = self.query_one("#filter", FilterInput)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_one(WorkerList).set_filter(event.value)
        self._redraw_title()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.focus_workers()

    def next_instance(self) -> bool:
        """Show the next uWSGI instance; False when there is no other one."""
        snap = self.on_screen
        if not snap or len(snap.uwsgi) < 2:
            return False
        nxt = (self._position(snap) + 1) % len(snap.uwsgi)
        self._instance_address = snap.uwsgi[nxt].address
        self._draw(snap)
        return True

    def _redraw_title(self) -> None:
        if self.latest is not None:
            self.query_one("#instance-title", TextLines).show(
                self._instance_title(self.latest, self._current_instance(self.latest)))


def _stale_s(snap: HostSnapshot, inst: UwsgiInstance | None) -> float | None:
    """How old the shown workers are: the instance's stats stopped answering (its last good
    sample stands in), or the whole host's data is the last good one (an agent unreachable)."""
    if inst is not None and inst.stale_s is not None:
        return inst.stale_s
    return snap.stale_s

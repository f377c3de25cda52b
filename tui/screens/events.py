"""The events screen: what happened on a host, newest first, from its logs and stackmon itself.

uWSGI's log says which worker was killed by harakiri on which URI, which died, which respawned,
when a reload started and which stragglers got NO MERCY; stackmon's own kills and reloads are
events too. Each row is one event with its time, source, kind, worker, pid, URI and the log's
own words, so "what happened to worker 3 at 14:02?" is answered without a shell on the host.
`/` filters (any field, case-insensitive); the screen follows the host live while it is open.
Every field comes from a log: rich Text only, never markup.

Two more kinds of rows come from the host pane's `EventMemory`, fed every poll:

- upstream failures from nginx's error log (source `nginx`, kind the cause: `queue_full`,
  `refused`, `read_timeout`, ...), one row per episode (failures of one cause at one upstream
  no more than EPISODE_GAP_S apart) with its start, upstream and count: the header's "502 ×32:
  uWSGI listen queue full on unix:/run/app.sock (×25)" was otherwise nowhere on this screen
  (uWSGI cannot log a unix socket's full queue; only nginx sees it). Shown while the episode's
  last failure is in the logs' window, as the header counts them. The poll's summary keeps
  one tally per cause and upstream for the whole window; the memory splits it into episodes
  from the running totals between polls (the first summary's tally is one episode);
- stackmon's own kills and reloads, kept for the whole session (the last ACTIONS_KEPT),
  whereas the logs' events age out of the window after 60 s: the on-call engineer asks "did
  I already kill it, when did I reload?" for as long as the incident lasts, which is often
  more than 15 minutes; actions are a handful per incident, so the bound only guards against
  a script, and the audit log keeps every one for good.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from stackmon.health import CAUSE_WORDS
from stackmon.logs.host import LogSummary
from stackmon.logs.nginx_errors import arrivals
from stackmon.logs.uwsgi_events import Event
from stackmon.redact import visible

KIND_STYLE = {"harakiri": "bold red", "no_mercy": "bold red", "worker_died": "bold red",
              "queue_full": "bold red", "killed": "bold yellow", "respawn": "green",
              "reload": "cyan", "chain_reload": "cyan", "refused": "bold red",
              "no_live_upstreams": "bold red", "closed_mid_request": "red",
              "connect_timeout": "red", "read_timeout": "yellow", "other": "yellow"}
COLUMNS = ("time", "source", "kind", "worker", "pid", "uri", "text")
ACTIONS_KEPT = 50
EPISODE_GAP_S = 10.0
MAX_EPISODES = 100


# ------------------------------------------------------------------ what a host pane keeps

@dataclass
class Episode:
    """Failures of one cause at one upstream, none more than EPISODE_GAP_S after the last."""

    cause: str
    upstream: str
    start: float
    end: float
    count: int

    def as_event(self, now: float) -> Event:
        """Its row: the time it started; the count first in the text (at 80 columns the
        upstream's path folds over lines), then the cause, the upstream, and its end."""
        until = "going on" if now - self.end < EPISODE_GAP_S else f"until {_clock(self.end)}"
        text = (f"×{self.count} {CAUSE_WORDS.get(self.cause, self.cause)} on {self.upstream}, "
                f"{until}")
        return Event(at=self.start, source="nginx", kind=self.cause, worker=None, pid=None,
                     uri=None, text=text)


class EventMemory:
    """What one host's events screen shows besides the newest poll's events: episodes of
    upstream failures and stackmon's own actions (see the module docstring). Fed every poll by
    the host pane, whether or not the screen is open; cheap when nothing happened."""

    def __init__(self, max_actions: int = ACTIONS_KEPT) -> None:
        self._actions: dict[tuple[object, ...], Event] = {}
        self._max_actions = max_actions
        self._episodes: deque[Episode] = deque(maxlen=MAX_EPISODES)
        self._open: dict[tuple[str, str], Episode] = {}
        self._last: LogSummary | None = None

    def observe(self, logs: LogSummary | None) -> None:
        """One poll's log summary (the same one twice, stale data carried, adds nothing)."""
        if logs is None or logs is self._last:
            return
        for e in reversed(logs.events):  # oldest first: the dict keeps the newest last
            if e.source == "stackmon":
                self._actions.setdefault((e.at, e.kind, e.worker, e.pid, e.text), e)
        while len(self._actions) > self._max_actions:
            del self._actions[min(self._actions, key=lambda k: self._actions[k].at)]
        self._count_failures(self._last, logs)
        self._last = logs
        floor = logs.taken_at - logs.window_s - EPISODE_GAP_S
        for key in [k for k, ep in self._open.items() if ep.end < floor]:
            del self._open[key]  # over: the next failure there starts another episode anyway

    def reset(self) -> None:
        """Forget everything (a replay stepped back in time)."""
        self._actions.clear()
        self._episodes.clear()
        self._open.clear()
        self._last = None

    def actions(self) -> list[Event]:
        """stackmon's own actions seen this session, newest first."""
        return sorted(self._actions.values(), key=lambda e: -e.at)

    def episodes(self, now: float, window_s: float) -> list[Episode]:
        """Episodes whose last failure is within the window ending at `now`, newest first."""
        floor = now - window_s
        return sorted((ep for ep in self._episodes if ep.end >= floor), key=lambda ep: -ep.start)

    def _count_failures(self, prev: LogSummary | None, cur: LogSummary) -> None:
        before = {(e.cause, e.upstream): e for e in prev.upstream_errors} if prev else {}
        totals_before = _totals(prev) if prev else {}
        totals = _totals(cur)
        for e in cur.upstream_errors:
            key = (e.cause, e.upstream)
            old = before.get(key)
            n = arrivals(old, e, totals_before.get(key), totals.get(key))
            if n <= 0:
                continue
            episode = self._open.get(key)
            if episode is not None and e.last_at - episode.end <= EPISODE_GAP_S:
                episode.end = max(episode.end, e.last_at)
                episode.count += n
                continue
            # New failures since the previous poll: those of a tally the previous summary did
            # not have start at its first_at; else after the previous poll (times are whole
            # seconds) and after the failures it had.
            start = e.first_at if prev is None or old is None else min(
                e.last_at, max(old.last_at, float(int(prev.taken_at))))
            episode = Episode(e.cause, e.upstream, start, e.last_at, n)
            self._open[key] = episode
            self._episodes.append(episode)


def _totals(logs: LogSummary) -> dict[tuple[str, str], int]:
    return {(c, u): n for c, u, n in logs.upstream_totals}


def shown_events(logs: LogSummary, memory: EventMemory | None) -> list[Event]:
    """Every row of the screen, newest first: the poll's events, the episodes of upstream
    failures in its window and stackmon's actions of the session (each once)."""
    rows = list(logs.events)
    if memory is not None:
        seen = {(e.at, e.kind, e.worker, e.pid, e.text) for e in rows if e.source == "stackmon"}
        rows.extend(e for e in memory.actions()
                    if (e.at, e.kind, e.worker, e.pid, e.text) not in seen)
        episodes = memory.episodes(logs.taken_at, logs.window_s)
    else:  # a host without a pane (opened from the overview): the window's tallies as such
        episodes = [Episode(e.cause, e.upstream, e.first_at, e.last_at, e.count)
                    for e in logs.upstream_errors]
    rows.extend(ep.as_event(logs.taken_at) for ep in episodes)
    rows.sort(key=lambda e: -e.at)
    return rows


# ------------------------------------------------------------------------------ the screen


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


def _nothing_happened(logs: LogSummary) -> str:
    """The empty screen's sentence: never "nothing" while the clients got 5xx."""
    quiet = (f"No event in the last {logs.window_s:.0f} s: no harakiri, no worker died or "
             "respawned, no reload, no upstream failure in nginx's error log.")
    http = logs.http
    bad = {c: http.status.get(c, 0) for c in ("502", "503", "504")} if http else {}
    got = ", ".join(f"{c} ×{n}" for c, n in bad.items() if n)
    if not got:
        return quiet
    error_log = [s for s in logs.sources if s.kind == "nginx_error"]
    if not error_log:
        cause = "nginx's error log is not followed, so their cause is unknown"
    elif all(s.error for s in error_log):
        cause = f"nginx's error log could not be read ({error_log[0].error})"
    else:
        cause = ("nginx's error log names no upstream failure in the window (its level may "
                 "hide them, or the application answered them itself)")
    return (f"No uWSGI event in the last {logs.window_s:.0f} s, but the clients got {got} "
            f"(nginx's access log): {cause}.")


def matching(events: Sequence[Event], needle: str) -> list[Event]:
    """Events with `needle` in any field (case-insensitive); all when it is empty."""
    needle = needle.strip().lower()
    if not needle:
        return list(events)
    return [e for e in events if any(needle in f.lower() for f in event_fields(e))]


NARROW = 120  # below, the kind column folds at 12 cells: the text keeps a readable width


def render_events(host: str, logs: LogSummary | None, needle: str = "",
                  memory: EventMemory | None = None,
                  width: int | None = None) -> tuple[Text, Table | Text]:
    """(title line, body) for a host's events (pure: the screen and its tests use it);
    `width`: the screen's, when known."""
    narrow = width is not None and width < NARROW
    title = Text.assemble(("Events ", "bold"), (visible(host), "bold"))
    if logs is None:
        return title, Text("No log source for this host: events come from uWSGI's log and "
                           "from stackmon's own actions.", style="italic")
    rows = shown_events(logs, memory)
    shown = matching(rows, needle)
    title.append(f"  newest first; logs: last {logs.window_s:.0f} s", "dim")
    if memory is not None:
        title.append(", stackmon's actions: this session", "dim")
    title.append("  ")
    title.append(f"{len(shown)}" + (f" of {len(rows)}" if needle.strip() else ""))
    title.append(" event(s)", "dim")
    if needle.strip():
        title.append("  filter: ", "dim")
        title.append(visible(needle), "bold")
    if not shown:
        why = "No event matches the filter." if rows else _nothing_happened(logs)
        return title, Text(why, style="italic")
    table = Table(box=None, expand=True, pad_edge=False, padding=(0, 1), show_edge=False,
                  header_style="bold")
    # Columns of nothing but "-" give their room to the text too, and below NARROW so does
    # the source (the kind names it: queue_full, harakiri, killed): at 80x24 the text had 17
    # cells, a health_fail took 16 rows (review).
    cells = [event_fields(e) for e in shown]
    keep = [i for i, name in enumerate(COLUMNS)
            if not (name in ("worker", "pid", "uri") and all(c[i] == "-" for c in cells))
            and not (name == "source" and narrow)]
    for name in (COLUMNS[i] for i in keep):
        if name == "uri":
            table.add_column(name, ratio=1, overflow="fold", min_width=8)
        elif name == "text":
            table.add_column(name, ratio=2, overflow="fold", min_width=12)
        elif name == "kind":  # a cause's name is long (closed_mid_request): narrow, it folds
            table.add_column(name, overflow="fold", max_width=12 if narrow else None)
        else:
            table.add_column(name, no_wrap=True)
    kind_at = COLUMNS.index("kind")
    for e, fields in zip(shown, cells, strict=True):
        row = [Text(fields[i]) for i in keep]
        row[keep.index(kind_at)].stylize(KIND_STYLE.get(e.kind, ""))
        table.add_row(*row)
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

    def __init__(self, host_index: int, host_name: str, logs: LogSummary | None,
                 memory: EventMemory | None = None) -> None:
        """`memory`: the host pane's, for upstream failure episodes and stackmon's actions
        of the session (without it: the poll's events only)."""
        super().__init__()
        self.host_index = host_index
        self.host_name = host_name
        self.logs = logs
        self.memory = memory
        self.needle = ""

    def compose(self) -> ComposeResult:
        title, body = render_events(self.host_name, self.logs, memory=self.memory,
                                    width=self.app.size.width)
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
        title, body = render_events(self.host_name, self.logs, self.needle, self.memory,
                                    self.size.width)
        self.query_one("#events-title", Static).update(title)
        self.query_one("#events", Static).update(body)

    def on_resize(self) -> None:
        self._redraw()  # the kind column's width depends on the screen's

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

"""WorkerList: every worker of one uWSGI instance, and what each one is running right now.

Why a line-API widget: the question at 3 a.m. is "which worker is stuck on which request, and
for how long", so each worker is a block (a header line, then one line per request in flight)
and the whole instance (64 workers x 8 cores is 576 lines) must scroll like one list with one
cursor. One `ScrollView` that renders only the visible lines, from Strips cached per worker,
costs about what a DataTable costs; a container of 64 widgets re-laid out every second does not.

How updates stay cheap: `set_workers()` is called once per poll with frozen `Worker` values. A
worker's block is rebuilt only when its value changed or when the age of one of its requests
crossed a whole second; then only the lines that DISPLAY differently (compared as shown: a
`_Header`, a `_RequestLine`) lose their cached Strips and are refreshed. Under traffic some
field of every busy worker (running_time_s, tx) changes on each poll, and comparing whole
`Worker` values drew every row again every second. When nothing shown changed the call returns
without touching the screen. The layout (which line belongs
to which worker) is rebuilt only when the order, the filter or a block's height changed.

Rows keep their place: a request gets a line of its own only once it is past the slow threshold
(its level is not "ok"); younger ones are counted in their worker's row (`2 short`). Short
requests come and go several times a second under normal traffic, and a line per request made
every worker below jump up and down (a row changed line in 39 % of frames on the demo), which
is exactly what makes the stuck worker hard to follow. Cheap workers (cheaper mode, not
spawned) are one summary line at the end, not rows.

The cursor starts on the worst worker (the oldest request past a threshold) and follows it
until the user moves it; `jump_worst()` goes to the worst, then the next worst.

Untrusted text (method, URI, remote address, status) goes into a line as plain strings with
control characters made visible (widgets._fmt.plain), as (text, style) pieces that
widgets.text_lines.pieces_strip turns into segments; nothing is ever parsed as markup.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from time import monotonic
from typing import ClassVar, Literal, NamedTuple

from rich.cells import cell_len
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from stackmon.deadlines import describe, nearest
from stackmon.model import LEVELS, Deadline, Level, Request, Thresholds, Worker
from stackmon.render_text import human_age, human_bytes
from widgets._fmt import ellipsize, fmt_ms, plain
from widgets._styles import LineStyles
from widgets.text_lines import Piece, pieces_strip

SortKey = Literal["id", "age", "requests"]
# A worker's identity in the list: (id, how many workers before it in the list share that id).
WorkerKey = tuple[int, int]
SORT_KEYS: tuple[SortKey, ...] = ("id", "age", "requests")

NOT_CAPTURED = "(request details not captured)"
# A glyph and a word: the labels read without colour (NO_COLOR, a paste into a ticket).
LEVEL_LABELS: dict[Level, str] = {"ok": "      ", "slow": "▲ SLOW", "critical": "✖ CRIT"}
CURSOR_MARK = "▶ "
NO_MARK = "  "
FROM = "  from "
NARROW_WIDTH = 64  # below this, request lines drop the core column and the indent
MIN_URI_WIDTH = 20
MAX_REFRESH_REGIONS = 8
# Request lines are laid out in at least this many cells (and more only for URIs that need
# it, see WorkerList._fit_columns), so that on a wide terminal the client column sits near the
# end of the worker rows instead of 60 columns to their right.
REQUEST_SPAN = 112
# Cells before the deadline column of a full-width request line: indent, label, age, and after
# it the core column (`  ✖ CRIT    31s ` ... `c0  `).
_LEAD_CELLS = 2 + 6 + 8
_CORE_CELLS = 4
_METHOD_CELLS = 8
REMOTE_WIDTH = 24
HOST_COLUMN_MIN_SPAN = 110  # from this width on, request lines also show the Host header
HOST_WIDTH = 20
SHORT_WORDS_WIDTH = 70  # narrower lists count short requests as `+2`, not `2 short`
_BOLD = Style(bold=True)


class _RequestLine(NamedTuple):
    """One request line as displayed: the age is whole seconds, so that two polls within the
    same second compare equal and nothing is redrawn. (A NamedTuple: 512 of them are built
    per poll when every core is busy.)"""

    core: int  # -1: the worker is busy but reported no cores
    method: str
    uri: str
    remote_addr: str
    age: int | None
    level: Level
    host: str = ""
    deadline: Deadline | None = None  # the nearest one, live (see live_deadlines)
    at_least: bool = False  # stale data: the age it had at the last good sample, shown "≥"


class _Header(NamedTuple):
    """A worker's row as displayed: every figure as the row shows it (the average and the rss
    rounded as printed, respawns as counted), and nothing else. Under traffic some field of a
    worker changes on almost every poll (running_time_s, tx, the average in its decimals), but
    its row is drawn again only when this changes; `_header_text` draws from it alone, so the
    row cannot show anything it does not compare."""

    id: int
    pid: int
    status: str
    busy: bool
    requests: int
    exceptions: int
    harakiri_count: int
    respawns: int
    avg: str  # fmt_ms(avg_rt_ms)
    rss: str  # human_bytes(rss), UNKNOWN when uWSGI did not report it
    level: Level  # worst level of the worker's request lines
    short: int  # requests too young for a line of their own


@dataclass(frozen=True, slots=True)
class _Block:
    """What one worker shows. Equal headers render identical rows, equal request lines
    identical lines."""

    worker: Worker
    header: _Header
    ages: tuple[int | None, ...]  # whole-second ages: with `worker`, all the block depends on
    requests: tuple[_RequestLine, ...]
    level: Level  # worst level of its requests
    max_age: int  # longest running request in whole seconds, -1 when none
    haystack: str  # lower-cased text the filter searches
    short: int = 0  # requests in flight too young for a line of their own (a count instead)
    deadline_cells: int = 0  # its widest deadline in full words (describe), 0: none
    tail_cells: int = 0  # its widest method + URI + host + client, as a wide list lays them out
    oldest_start: float = 0.0  # when its oldest request started (epoch s): ties of max_age

    @property
    def height(self) -> int:
        return 1 + len(self.requests)


def is_cheap(w: Worker) -> bool:
    """A worker cheaper mode has not spawned: listed by uWSGI, no process behind it."""
    return bool(getattr(w, "cheap", False)) or (w.status == "cheap" and w.pid == 0)


def _worst(a: Level, b: Level) -> Level:
    return a if LEVELS.index(a) >= LEVELS.index(b) else b


def _age(r: Request, now: float) -> float | None:
    if r.started_at is not None:
        return max(0.0, now - r.started_at)
    return r.running_s


def live_deadlines(r: Request, age: float | None) -> tuple[Deadline, ...]:
    """The request's deadlines measured from its age now, not from the poll: ages keep
    growing between polls and "nginx 504 in 2 s" must count down with them. Every deadline
    is its limit minus the age (stackmon.deadlines.deadlines_for); whole seconds in the list,
    so that a line changes once a second like its age."""
    if age is None or not r.deadlines:
        return r.deadlines
    return tuple(sorted((Deadline(d.name, d.limit_s - age, d.limit_s, d.source)
                         for d in r.deadlines), key=lambda d: d.after_s))


CLIENT_FACING = ("nginx_read_timeout", "lb_idle_timeout")
_SHORT_WHAT = {"harakiri": "hk", "nginx_read_timeout": "504", "lb_idle_timeout": "LB"}
DEADLINE_SHORT = 11  # cells of the deadline column below NARROW_WIDTH
DEADLINE_MEDIUM = 18  # ... below DEADLINE_FULL_WIDTH
DEADLINE_FULL_WIDTH = 130  # from this width on, a past deadline is said in full
# ... in a column at most this wide ("past nginx's 60 s: the client already has a 504" is 48):
# at 200 columns the sentence pushed the core and URI columns of its row out of line. The
# column is as wide as the widest deadline the list shows (WorkerList._deadline_column): a
# fixed 50 cells left 30 of them blank beside "nginx 504 in 38 s" while a long URI was cut.
DEADLINE_LONG = 50


def client_gone(d: Deadline) -> bool:
    """Past nginx's read timeout or the LB's idle timeout: the client already has a 504 and
    the worker works for nobody (killing it loses nothing a client waits for)."""
    return d.past and d.name in CLIENT_FACING


def deadline_text(d: Deadline, width: int) -> str:
    """The nearest deadline in the words that fit a list of `width` cells: `504 in 2s` /
    `504 SENT` (narrow), `nginx 504 in 2 s` / `client has a 504`, and from
    DEADLINE_FULL_WIDTH on the core's whole sentence (stackmon.deadlines.describe)."""
    if width < NARROW_WIDTH:
        if d.past:
            # Not "CLIENT GONE": the client is there, it got nginx's (or the LB's) 504.
            return "504 SENT" if client_gone(d) else "hk overdue"
        left = "<1s" if d.after_s < 1 else f"{int(d.after_s)}s"
        return f"{_SHORT_WHAT[d.name]} in {left}"
    if width >= DEADLINE_FULL_WIDTH or not d.past:
        return describe(d)
    return "client has a 504" if client_gone(d) else "past harakiri"


def _ages(worker: Worker, now: float) -> tuple[int | None, ...]:
    """The whole-second age of each request of the worker: the only thing that changes from
    one poll to the next when the worker itself did not."""
    out: list[int | None] = []
    for core in worker.cores:
        r = core.request
        if r is not None:
            age = _age(r, now)
            out.append(None if age is None else int(age))
    return tuple(out)


def _request_lines(
    worker: Worker, now: float, thresholds: Thresholds | None, stale: bool = False
) -> tuple[list[_RequestLine], int]:
    """The lines a worker's requests get (those past the slow threshold), and how many are
    too young for one (counted in the worker's row so that rows do not move). `stale`: `now`
    is the last good sample's time; the requests may have ended since, so no deadline is
    predicted for them and their ages read "at least"."""
    lines: list[_RequestLine] = []
    short = 0
    for core in worker.cores:
        r = core.request
        if r is None:
            if core.in_request:
                short += 1  # in_request with empty vars: the stats copy raced the request.
            continue
        age_f = _age(r, now)
        level = r.level
        if thresholds is not None:
            # Ages keep growing between polls; the level must follow them.
            level = _worst(level, thresholds.level(age_f))
        if level == "ok":
            short += 1
            continue
        age = int(age_f) if age_f is not None else None
        deadline = None if stale else nearest(live_deadlines(r, age))
        lines.append(_RequestLine(r.core, r.method, r.uri, r.remote_addr, age, level, r.host,
                                  deadline, stale))
    if not lines and not short and worker.status == "busy" and worker.pid:
        # Busy but no per-core detail (stats-no-cores, or a race): still one in flight.
        short = 1
    return lines, short


def _make_block(
    worker: Worker, ages: tuple[int | None, ...], now: float, thresholds: Thresholds | None,
    stale: bool = False,
) -> _Block:
    requests, short = _request_lines(worker, now, thresholds, stale)
    level: Level = "ok"
    max_age = -1
    parts = [str(worker.id), str(worker.pid), worker.status]
    if worker.pid == 0:
        parts.append("dead")  # what the list shows for it
    for line in requests:
        level = _worst(level, line.level)
        if line.age is not None:
            max_age = max(max_age, line.age)
    for r in worker.requests_in_flight:  # the filter finds short requests too
        parts += (r.method, r.uri, r.remote_addr)
    header = _Header(worker.id, worker.pid, worker.status, worker.busy, worker.requests,
                     worker.exceptions, worker.harakiri_count, respawns(worker),
                     fmt_ms(worker.avg_rt_ms), human_bytes(worker.rss) if worker.rss else UNKNOWN,
                     level, short)
    cells = max((cell_len(describe(line.deadline)) for line in requests
                 if line.deadline is not None), default=0)
    tail = max((_tail_cells(line) for line in requests), default=0)
    # Ties in whole seconds go to the request that started first, as in the header's reading
    # (health: the oldest critical request): the cursor sat on #3 while it named worker 4.
    oldest = min((now - a for r in worker.requests_in_flight
                  if (a := _age(r, now)) is not None), default=now)
    return _Block(worker, header, ages, tuple(requests), level, max_age,
                  "\x00".join(parts).lower(), short, cells, tail, oldest)


def _tail_cells(line: _RequestLine) -> int:
    """What a request line needs after its core column to show its URI whole with the host
    and client columns after it (a wide list; see WorkerList._request_text)."""
    if not (line.method or line.uri):
        return len(NOT_CAPTURED) + HOST_WIDTH + 2 + len(FROM) + REMOTE_WIDTH
    remote = min(cell_len(plain(line.remote_addr)), REMOTE_WIDTH)
    return (_METHOD_CELLS + cell_len(plain(line.uri)) + HOST_WIDTH + 2
            + (len(FROM) + remote if remote else 0))


def _stale_lines(old: _Block, new: _Block) -> set[int]:
    """The lines of a worker's block (0: its row, n: its n-th request line) that display
    differently: only these are drawn again."""
    stale = {0} if old.header != new.header else set()
    a, b = old.requests, new.requests
    stale.update(i + 1 for i in range(max(len(a), len(b)))
                 if i >= len(a) or i >= len(b) or a[i] != b[i])
    return stale


def _short_field(short: int, width: int) -> str:
    """The count of requests too young for a line: `2 short`, or `+2` in a narrow list; blank
    (of the same width) when none, so that the columns after it never move."""
    if width >= SHORT_WORDS_WIDTH:
        return f"{short:>2} short " if short else " " * 9
    return f"+{short:<2} " if short else " " * 4


UNKNOWN = "?"  # a figure the stats did not give (rss 0: uWSGI without memory-report)


def _hold(held: tuple[int, float], widest: int, now: float,
          hold_s: float) -> tuple[tuple[int, float], bool]:
    """A column width that grows at once and shrinks only after `hold_s` without the need:
    the new (width, since) and whether the width changed."""
    width, since = held
    if widest >= width or now - since >= hold_s:
        return (widest, now), widest != width
    return held, False


def respawns(w: Worker) -> int:
    """Times the worker was respawned: uWSGI's respawn_count counts the first spawn too, so a
    worker never respawned says 1."""
    return max(0, w.respawn_count - 1)


class WorkerList(LineStyles, ScrollView, can_focus=True):
    """All workers of one uWSGI instance as blocks of lines, with a cursor on a worker.

    Feed it with `set_workers(workers, now)` on every poll; it redraws only what changed.
    Ids repeat (REFERENCE.md section 1: id 0 for every cheaper-mode worker not yet spawned; a
    lying stats server can give a busy worker the id of an idle one), so a row is keyed by
    `WorkerKey` (id, how many workers before it in the list have that id): two workers sharing
    an id are two rows, in their order in the document, and none hides the other. The cursor
    follows its worker across updates, sorts and filters. Give it focus
    (`worker_list.focus()`) for the keys to work: up/down/j/k, home/end, pageup/pagedown, and
    enter (posts `Selected`).
    """

    # Textual's generic text selection would copy ScrollView's placeholder render, not these
    # lines; the app's worker detail screen is where a URI is shown whole and copied.
    ALLOW_SELECT = False
    STYLE_PREFIX = "worker-list--"
    # A block keeps lines it no longer needs this long (_held_height); tests set it to 0.
    HOLD_S: ClassVar[float] = 10.0

    BINDINGS: ClassVar[list[BindingType]] = [
        # ids let the app rebind them with App.set_keymap({"worker-list.select": "o"}).
        Binding("up,k", "cursor_up", "Previous worker", show=False, id="worker-list.up"),
        Binding("down,j", "cursor_down", "Next worker", show=False, id="worker-list.down"),
        Binding("home", "cursor_first", "First worker", show=False, id="worker-list.first"),
        Binding("end", "cursor_last", "Last worker", show=False, id="worker-list.last"),
        Binding("pageup", "cursor_page_up", "Page up", show=False, id="worker-list.page-up"),
        Binding("pagedown", "cursor_page_down", "Page down", show=False,
                id="worker-list.page-down"),
        Binding("enter", "select_cursor", "Detail", id="worker-list.select"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "worker-list--cursor",
        "worker-list--label",
        "worker-list--id",
        "worker-list--busy",
        "worker-list--idle",
        "worker-list--dead",
        "worker-list--slow",
        "worker-list--critical",
        "worker-list--slow-label",
        "worker-list--critical-label",
        "worker-list--muted",
        "worker-list--alert",
    }
    """
    | Class | What |
    | :- | :- |
    | `worker-list--cursor` | the header line of the worker under the cursor |
    | `worker-list--label` | field names (pid, req, ...) |
    | `worker-list--id` | the worker id |
    | `worker-list--busy` / `--idle` / `--dead` | the status of a worker (dead: pid 0) |
    | `worker-list--slow` / `--critical` | a request line past the thresholds |
    | `worker-list--slow-label` / `--critical-label` | the SLOW / CRIT label |
    | `worker-list--muted` | "(request details not captured)", empty list message |
    | `worker-list--alert` | non-zero exceptions / harakiri counts |
    """

    DEFAULT_CSS = """
    WorkerList {
        height: 1fr;
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
        background: $surface;
        color: $foreground;

        & > .worker-list--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus {
            background-tint: $foreground 5%;
            & > .worker-list--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
        }
        & > .worker-list--label { color: $text-muted; }
        & > .worker-list--id { text-style: bold; }
        & > .worker-list--busy { color: $text-primary; text-style: bold; }
        & > .worker-list--idle { color: $text-muted; }
        & > .worker-list--dead { color: $text-disabled; text-style: italic; }
        & > .worker-list--slow { color: $text-warning; }
        & > .worker-list--critical { color: $text-error; text-style: bold; }
        & > .worker-list--slow-label { color: $warning; text-style: bold reverse; }
        & > .worker-list--critical-label { color: $error; text-style: bold reverse; }
        & > .worker-list--muted { color: $text-muted; text-style: italic; }
        & > .worker-list--alert { color: $text-error; text-style: bold; }
    }
    """

    class Highlighted(Message):
        """The cursor moved to another worker (`worker_id` None: the list is empty).

        Posted for key presses, clicks, and when an update, sort or filter moved the cursor
        because its worker disappeared. A newer one replaces an older one still queued.
        `key`: the worker's WorkerKey (ids may repeat).
        """

        def __init__(self, worker_list: WorkerList, worker_id: int | None,
                     key: WorkerKey | None = None) -> None:
            super().__init__()
            self.worker_list = worker_list
            self.worker_id = worker_id
            self.key = key

        @property
        def control(self) -> WorkerList:
            return self.worker_list

        def can_replace(self, message: Message) -> bool:
            return (
                isinstance(message, WorkerList.Highlighted)
                and message.worker_list is self.worker_list
            )

    class Selected(Message):
        """Enter (or a double click) on a worker: the app opens its detail / actions."""

        def __init__(self, worker_list: WorkerList, worker_id: int,
                     key: WorkerKey | None = None) -> None:
            super().__init__()
            self.worker_list = worker_list
            self.worker_id = worker_id
            self.key = key

        @property
        def control(self) -> WorkerList:
            return self.worker_list

    def __init__(
        self,
        *,
        thresholds: Thresholds | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        disabled: bool = False,
    ) -> None:
        """`thresholds`: when given, a request's level is re-derived from its live age (the
        age keeps growing between polls); otherwise the level computed by the source is used.
        """
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._thresholds = thresholds
        self._stale = False  # showing the last good sample of an instance that stopped answering
        self._blocks: dict[WorkerKey, _Block] = {}
        self._sort: SortKey = "id"
        self._filter = ""
        # Workers are keyed by WorkerKey, never by id alone (ids repeat).
        # Layout: visible workers in display order, where each block starts, y -> (key, sub).
        self._order: list[WorkerKey] = []
        self._heights: list[int] = []
        # Each worker's block height as laid out, and when it last needed it (see HOLD_S).
        self._held: dict[WorkerKey, tuple[int, float]] = {}
        self._starts: list[int] = []
        self._first_line: dict[WorkerKey, int] = {}
        self._lines: list[tuple[WorkerKey, int]] = []
        self._cursor: WorkerKey | None = None
        # Rendered lines: worker key -> (sub line, is cursor) -> Strip, all of one width.
        self._strips: dict[WorkerKey, dict[tuple[int, bool], Strip]] = {}
        # Piece styles over a line style (and overlays), as pieces_strip combines them.
        self._combined: dict[tuple[Style, ...], dict[Style, Style]] = {}
        self._strip_width = -1
        self._frame_at: tuple[int, int] | None = None  # (width, top line) in render_lines
        self._styles: dict[str, Style] = {}
        self._cheap = 0  # workers cheaper mode has not spawned: one summary line, no rows
        # The cursor follows the worst worker until the user moves it (jump_worst resumes).
        self._follow_worst = True
        # The full-width deadline column, in cells, and when it last needed them (HOLD_S).
        self._deadline_held: tuple[int, float] = (0, 0.0)
        # ... and the same for what the widest request needs after its core column.
        self._tail_held: tuple[int, float] = (0, 0.0)

    # ----------------------------------------------------------------------------- public API

    @property
    def cursor_worker_id(self) -> int | None:
        """The id of the worker under the cursor, None when no worker is shown."""
        return None if self._cursor is None else self._cursor[0]

    @cursor_worker_id.setter
    def cursor_worker_id(self, worker_id: int | None) -> None:
        """Move the cursor to the first worker with this id (ignored when it is not shown)."""
        if worker_id is not None:
            self.cursor_key = (worker_id, 0)

    @property
    def cursor_key(self) -> WorkerKey | None:
        """The WorkerKey of the worker under the cursor, None when no worker is shown."""
        return self._cursor

    @cursor_key.setter
    def cursor_key(self, key: WorkerKey | None) -> None:
        """Move the cursor to a worker (ignored when that worker is not shown); it then stays
        there rather than following the worst worker."""
        if key in self._first_line:
            self._follow_worst = False
            self._move_cursor(key)

    @property
    def cursor_worker(self) -> Worker | None:
        """The worker under the cursor, as last given to set_workers."""
        block = self._blocks.get(self._cursor) if self._cursor is not None else None
        return None if block is None else block.worker

    @property
    def sort_key(self) -> SortKey:
        return self._sort

    @property
    def filter_text(self) -> str:
        return self._filter

    @property
    def line_count(self) -> int:
        """Lines of content (worker headers + request lines; 1 for the "no workers" line),
        plus the cheap workers' summary line."""
        return max(1, len(self._lines)) + (1 if self._cheap else 0)

    @property
    def cheap_count(self) -> int:
        """Workers not spawned by cheaper mode (shown as one summary line)."""
        return self._cheap

    @property
    def following_worst(self) -> bool:
        """Whether the cursor follows the worst worker (until the user moves it)."""
        return self._follow_worst

    def worst_keys(self) -> list[WorkerKey]:
        """Shown workers with a request past a threshold, worst first: critical before slow,
        then the oldest request first."""
        blocks = self._blocks
        bad = [k for k in self._order if blocks[k].level != "ok"]
        bad.sort(key=lambda k: (-LEVELS.index(blocks[k].level), -blocks[k].max_age,
                                blocks[k].oldest_start, k))
        return bad

    def jump_worst(self) -> WorkerKey | None:
        """Move to the worst worker; from there, to the next worst (and round). On the worst
        the cursor follows it across polls; anywhere else it stays put. None: no worker has a
        request past a threshold (the cursor does not move)."""
        worst = self.worst_keys()
        if not worst:
            return None
        index = worst.index(self._cursor) if self._cursor in worst else -1
        if index >= 0 and not self._follow_worst and index == 0:
            index = -1  # on the worst but not following: this key means "follow it"
        target = worst[(index + 1) % len(worst)]
        self._follow_worst = target == worst[0]
        self._move_cursor(target)
        return target

    def _follow(self) -> None:
        if self._follow_worst:
            worst = self.worst_keys()
            if worst and worst[0] != self._cursor:
                self._move_cursor(worst[0], scroll=self.is_mounted)

    def set_workers(self, workers: Sequence[Worker], now: float, stale: bool = False) -> None:
        """Show these workers; `now` (epoch seconds) is what request ages are measured from.
        `stale`: the data is the last good sample and `now` its time (see _request_lines).

        Cheap when little changed: a worker's lines are redrawn only when what they show
        changed (a counter of its row, a request's age-second), not when some field it does
        not show did; nothing at all happens when nothing shown changed.
        """
        if stale != self._stale:
            self._stale = stale
            self._blocks = {}  # every request line reads differently
            self._strips.clear()
            self.refresh()
        old = self._blocks
        new: dict[WorkerKey, _Block] = {}
        changed: list[WorkerKey] = []
        refilter = False  # a filter is on and what it searches changed
        strips = self._strips
        seen: dict[int, int] = {}
        cheap = 0
        for worker in workers:
            if is_cheap(worker):
                cheap += 1
                continue
            nth = seen.get(worker.id, 0)
            seen[worker.id] = nth + 1
            key = (worker.id, nth)
            ages = _ages(worker, now)
            previous = old.get(key)
            if previous is not None and previous.ages == ages and previous.worker == worker:
                new[key] = previous
                continue
            block = new[key] = _make_block(worker, ages, now, self._thresholds, stale)
            if previous is None:
                changed.append(key)
                continue
            redraw = _stale_lines(previous, block)
            if redraw:
                changed.append(key)
                cached = strips.get(key)
                if cached is not None:
                    for line in [k for k in cached if k[0] in redraw]:
                        del cached[line]
            elif self._filter and block.haystack != previous.haystack:
                refilter = True
        removed = [wid for wid in old if wid not in new]
        # Always the newest values (cursor_worker), even when nothing shown changed.
        self._blocks = new
        self._fit_columns()
        if cheap != self._cheap:
            self._cheap = cheap
            self.virtual_size = Size(0, self.line_count)
            self.refresh()
        if not changed and not removed and not refilter and not self._hold_due():
            return
        for wid in removed:
            strips.pop(wid, None)
            self._held.pop(wid, None)
        self._relayout(changed)
        self._follow()

    def sort_by(self, key: SortKey) -> None:
        """Order workers by id, by their longest running request ("age", longest first), or by
        requests served ("requests", most first). The cursor stays on its worker."""
        if key not in SORT_KEYS:
            raise ValueError(f"sort key must be one of {SORT_KEYS}, not {key!r}")
        if key != self._sort:
            if "requests" in (key, self._sort):
                self._strips.clear()  # the req column is kept only while it is the order
                self.refresh()
            self._sort = key
            self._relayout(None, follow_cursor=True)
            self._follow()

    def set_filter(self, text: str) -> None:
        """Show only workers where `text` (case-insensitive) occurs in a URI, method, client
        address, status, pid or worker id. Empty text shows all workers."""
        text = text.strip().lower()
        if text != self._filter:
            self._filter = text
            self._relayout(None, follow_cursor=True)
            self._follow()

    # ------------------------------------------------------------------------------- layout

    def _visible_order(self) -> list[WorkerKey]:
        blocks = self._blocks
        ids = list(blocks)
        if self._filter:
            needle = self._filter
            ids = [wid for wid in ids if needle in blocks[wid].haystack]
        if self._sort == "age":
            ids.sort(key=lambda k: (-blocks[k].max_age, k))
        elif self._sort == "requests":
            ids.sort(key=lambda k: (-blocks[k].worker.requests, k))
        else:
            ids.sort()
        return ids

    def _relayout(self, changed: list[WorkerKey] | None, follow_cursor: bool = False) -> None:
        """Recompute which worker sits on which line; refresh as little as possible.

        `changed`: workers whose content changed (None: only order/filter changed).
        `follow_cursor`: scroll so that the cursor stays in view (sort, filter).
        """
        cursor_was_visible = self._cursor_visible()
        old_index = self._order.index(self._cursor) if self._cursor in self._first_line else 0
        order = self._visible_order()
        blocks = self._blocks
        now = monotonic()
        heights = [self._held_height(wid, blocks[wid].height, now) for wid in order]
        if order == self._order and heights == self._heights:
            # Same layout: redraw only the visible lines of the workers that changed; when
            # many changed, as one region (each refresh has a cost of its own).
            top = round(self.scroll_y)
            bottom = top + self.scrollable_content_region.height
            ranges: list[tuple[int, int]] = []
            held = dict(zip(order, heights, strict=True))
            for wid in changed or ():
                start = self._first_line.get(wid)
                if start is not None and start < bottom and start + held[wid] > top:
                    ranges.append((max(start, top), min(start + held[wid], bottom)))
            if len(ranges) > MAX_REFRESH_REGIONS:
                ranges = [(min(r[0] for r in ranges), max(r[1] for r in ranges))]
            for first, last in ranges:
                self.refresh_lines(first, last - first)
            return
        self._order = order
        self._heights = heights
        starts: list[int] = []
        lines: list[tuple[WorkerKey, int]] = []
        for wid, height in zip(order, heights, strict=True):
            starts.append(len(lines))
            lines.extend((wid, sub) for sub in range(height))
        self._starts = starts
        self._lines = lines
        self._first_line = dict(zip(order, starts, strict=True))
        self.virtual_size = Size(0, self.line_count)
        if self._cursor not in self._first_line:
            target = order[min(old_index, len(order) - 1)] if order else None
            self._move_cursor(target, scroll=False)
        if (follow_cursor or cursor_was_visible) and self.is_mounted:
            self.call_after_refresh(self._scroll_to_cursor)
        self.refresh()

    def _held_height(self, wid: WorkerKey, height: int, now: float) -> int:
        """The lines a worker's block takes: more at once, fewer only once it has not needed
        the old height for HOLD_S (its request lines stay, blank). A request that crosses
        --slow for a second and ends (the demo's /slow?s=5 bursts) moved every row below it
        down and back up within a second; now at most down, and back HOLD_S later."""
        held = self._held.get(wid)
        if held is None or height >= held[0] or now - held[1] >= self.HOLD_S:
            self._held[wid] = (height, now)
            return height
        return held[0]

    def _fit_columns(self) -> None:
        """The full-width deadline column as wide as the list's widest deadline, and request
        lines as long as the widest URI needs (from REQUEST_SPAN to the list's width), so that
        a long URI is shown whole while short ones keep the client column near the worker rows.
        Each widens at once and narrows only once the width has not been needed for HOLD_S (a
        countdown from 10 s to 9 s, or a long request that comes and goes, would otherwise
        move the columns of every request line)."""
        blocks = self._blocks.values()
        # One cell more than the widest: two blanks before the core column, as elsewhere.
        deadline = min(DEADLINE_LONG,
                       1 + max((b.deadline_cells for b in blocks), default=0))
        tail = max((b.tail_cells for b in blocks), default=0)
        now = monotonic()
        changed = False
        self._deadline_held, moved = _hold(self._deadline_held, deadline, now, self.HOLD_S)
        changed |= moved
        self._tail_held, moved = _hold(self._tail_held, tail, now, self.HOLD_S)
        changed |= moved
        if changed and self._strip_width >= DEADLINE_FULL_WIDTH:
            self._strips.clear()  # every request line moves its columns
            self.refresh()

    def _hold_due(self) -> bool:
        """Some block is taller than its worker needs and its hold is over."""
        now = monotonic()
        blocks = self._blocks
        return any(wid in blocks and blocks[wid].height < h and now - t >= self.HOLD_S
                   for wid, (h, t) in self._held.items())

    def _cursor_visible(self) -> bool:
        start = self._first_line.get(self._cursor) if self._cursor is not None else None
        if start is None or not self.is_mounted:
            return False
        top = round(self.scroll_y)
        return top <= start < top + self.scrollable_content_region.height

    # ------------------------------------------------------------------------------- cursor

    def _move_cursor(self, worker_id: WorkerKey | None, scroll: bool = True) -> None:
        old = self._cursor
        if worker_id == old:
            if scroll:
                self._scroll_to_cursor()
            return
        self._cursor = worker_id
        for wid in (old, worker_id):
            start = self._first_line.get(wid) if wid is not None else None
            if start is not None:
                self.refresh_lines(start)
        if scroll:
            self._scroll_to_cursor()
        self.post_message(self.Highlighted(self, None if worker_id is None else worker_id[0],
                                           worker_id))

    def _scroll_to_cursor(self) -> None:
        if self._cursor is None or self._cursor not in self._first_line:
            return
        start = self._first_line[self._cursor]
        height = self._blocks[self._cursor].height
        view = max(1, self.scrollable_content_region.height)
        # The whole block when it fits, else at least its header.
        region = Region(0, start, 1, max(1, min(height, view)))
        self.scroll_to_region(region, animate=False, force=True, x_axis=False, immediate=True)

    def _cursor_index(self) -> int:
        return self._order.index(self._cursor) if self._cursor in self._first_line else -1

    def _move_index(self, index: int) -> None:
        """A move asked for by the user: the cursor stops following the worst worker."""
        self._follow_worst = False
        if self._order:
            self._move_cursor(self._order[max(0, min(index, len(self._order) - 1))])

    def _worker_at_line(self, y: int) -> WorkerKey | None:
        if not self._starts or y < 0 or y >= len(self._lines):
            return None
        return self._order[bisect_right(self._starts, y) - 1]

    def action_cursor_up(self) -> None:
        self._move_index(max(0, self._cursor_index() - 1))

    def action_cursor_down(self) -> None:
        self._move_index(self._cursor_index() + 1)

    def action_cursor_first(self) -> None:
        self._move_index(0)

    def action_cursor_last(self) -> None:
        self._move_index(len(self._order) - 1)

    def _page(self, direction: int) -> None:
        if not self._order:
            return
        if self._cursor not in self._first_line:
            self._move_index(0)
            return
        view = max(1, self.scrollable_content_region.height)
        target = self._first_line[self._cursor] + direction * view
        target = max(0, min(target, len(self._lines) - 1))
        worker_id = self._worker_at_line(target)
        if worker_id == self._cursor:  # one block taller than the page: go to the neighbour
            self._move_index(self._cursor_index() + direction)
        else:
            self._follow_worst = False
            self._move_cursor(worker_id)

    def action_cursor_page_up(self) -> None:
        self._page(-1)

    def action_cursor_page_down(self) -> None:
        self._page(+1)

    def action_select_cursor(self) -> None:
        if self._cursor is not None:
            self.post_message(self.Selected(self, self._cursor[0], self._cursor))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        worker_id = self._worker_at_line(offset.y + round(self.scroll_y))
        if worker_id is None:
            return
        self._follow_worst = False
        self._move_cursor(worker_id, scroll=False)
        if event.chain >= 2:
            self.post_message(self.Selected(self, worker_id[0], worker_id))

    # ---------------------------------------------------------------------------- rendering
    # Lines are lists of (text, style) pieces turned into Strips by pieces_strip, segment for
    # segment what appending them to a rich Text and rendering it gave (tests/
    # test_line_render.py keeps that path as the reference): the Text path cost 60-90 us a
    # line, and every request line is drawn again each second (its age).

    def render_lines(self, crop: Region) -> list[Strip]:
        """The width and the top line, once for all the lines of a frame: the region and
        the scroll offset took a third of render_line's own time, asked for on every line."""
        self._frame_at = (self.scrollable_content_region.width, round(self.scroll_y))
        try:
            return super().render_lines(crop)
        finally:
            self._frame_at = None

    def render_line(self, y: int) -> Strip:
        frame_at = self._frame_at
        width, top = frame_at if frame_at is not None else \
            (self.scrollable_content_region.width, round(self.scroll_y))
        if width != self._strip_width:
            self._strips.clear()
            self._strip_width = width
        line_no = top + y
        if line_no >= len(self._lines):
            content_lines = max(1, len(self._lines))
            if line_no == 0 and not self._lines:
                return self._to_strip(self._empty_text(), width, False)
            if self._cheap and line_no == content_lines:
                return self._to_strip(self._cheap_text(), width, False)
            return Strip.blank(width, self._line_style(False))
        wid, sub = self._lines[line_no]
        if sub > len(self._blocks[wid].requests):  # a held line (HOLD_S): its request ended
            # Said, not blank: empty rows between workers looked like a drawing glitch. Muted
            # over the line style: it was a rich Text's own style, which the line style then
            # replaced, so its segment had no style at all, and with NO_COLOR Textual's
            # Monochrome filter raised AttributeError on it (the app crashed). Not "ended":
            # a killed or cut request read as if it had completed (review).
            held = "      ⋯ no longer in flight"
            return self._to_strip([(held, self._style("muted"))], width, False)
        is_cursor = sub == 0 and wid == self._cursor
        cache = self._strips.setdefault(wid, {})
        strip = cache.get((sub, is_cursor))
        if strip is None:
            block = self._blocks[wid]
            if sub == 0:
                pieces, overlays = self._header_text(block.header, is_cursor, width)
                strip = self._to_strip(pieces, width, is_cursor, overlays, rstrip=True)
            else:
                strip = self._to_strip(self._request_text(block.requests[sub - 1], width),
                                       width, False)
            cache[(sub, is_cursor)] = strip
        return strip

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._combined.clear()

    def _to_strip(self, pieces: list[Piece], width: int, is_cursor: bool,
                  overlays: tuple[Style, ...] = (), rstrip: bool = False) -> Strip:
        """The line cut or padded to `width` over the line style; the cursor line like
        DataTable's row cursor: one bar over the whole line, on top of field colours."""
        line_style = self._line_style(is_cursor)
        if is_cursor:
            overlays = (*overlays, line_style)
        key = (line_style, *overlays)
        cache = self._combined.get(key)
        if cache is None:
            cache = self._combined[key] = {}
        return pieces_strip(pieces, width, line_style, overlays, rstrip=rstrip, cache=cache)

    def _cheap_text(self) -> list[Piece]:
        return [(f"  {self._cheap} cheap", self._style("idle")),
                (" (not spawned: cheaper mode starts them under load)", self._style("muted"))]

    def _empty_text(self) -> list[Piece]:
        muted = self._style("muted")
        if self._cheap and not self._blocks:
            return [("  no spawned worker", muted)]
        if self._blocks and self._filter:
            return [("  no worker matches ", muted), (plain(self._filter), muted)]
        return [("  no workers", muted)]

    def _header_text(self, w: _Header, is_cursor: bool,
                     width: int) -> tuple[list[Piece], tuple[Style, ...]]:
        """The worker's row, from what `_Header` holds and nothing else (see _Header): its
        pieces (the blanks at its end are dropped) and the style over the whole row (dead)."""
        label = self._style("label")
        alert = self._style("alert")
        status = plain(w.status)
        if w.pid == 0:
            state = "dead"
            # uWSGI shows a dead worker waiting for respawn as "idle" with pid 0.
            status = "dead" if status == "idle" else status
        elif w.busy:
            state = "busy"
        else:
            state = "idle"
        status_style = self._style(state)
        if state == "busy" and w.level != "ok":
            status_style = status_style + self._style(w.level)
        status = ellipsize(status, 6)
        no_style = Style()
        # (drop rank, caption, value, value style): when the line is narrower than the fields,
        # the highest ranks go first, so that a narrow pane still shows what matters.
        fields: list[tuple[float, str, str, Style]] = [
            (0, "", CURSOR_MARK if is_cursor else NO_MARK, no_style),
            (0, "", f"#{w.id:<3} ", self._style("id")),
            (0, "", status + " " * (7 - cell_len(status)), status_style),
            (0, "pid ", f"{w.pid:<7} " if w.pid else "-       ",
             no_style if w.pid else status_style),
            # Requests younger than the slow threshold: a count, so rows do not move.
            (1.5, "", _short_field(w.short, width), self._style("busy")),
            # Sorted by requests served: the column that explains the order stays (at 80
            # columns it was dropped first, and the order looked random).
            (0.5 if self._sort == "requests" else 4, "req ", f"{w.requests:<6} ", no_style),
            (2, "exc ", f"{w.exceptions:<3} ", alert if w.exceptions else no_style),
            (1, "hk ", f"{w.harakiri_count:<2} ", alert if w.harakiri_count else no_style),
            (6, "resp ", f"{w.respawns:<2} ", no_style),
            (3, "avg ", f"{w.avg:>5} ", no_style),
            (5, "rss ", w.rss, no_style),
        ]
        total = sum(len(caption) + cell_len(value) for _, caption, value, _ in fields)
        while total > width and fields[-1][0] > 0:
            drop = max(range(len(fields)), key=lambda i: fields[i][0])
            _, caption, value, _ = fields.pop(drop)
            total -= len(caption) + cell_len(value)
        pieces: list[Piece] = []
        for _, caption, value, style in fields:
            if caption:
                pieces.append((caption, label))
            pieces.append((value, style))
        return pieces, ((self._style("dead"),) if w.pid == 0 else ())

    def _deadline_text(self, pieces: list[Piece], d: Deadline, width: int) -> None:
        """`· nginx 504 in 2 s` in a column of its own; a client already gone (past nginx's
        or the LB's timeout) in the critical label's style: it changes what the user does."""
        narrow = width < NARROW_WIDTH
        words = deadline_text(d, width)
        if client_gone(d):
            style = self._style("critical-label")
        elif d.past:
            style = self._style("critical")
        else:
            style = self._style("slow") if d.after_s < 5 else self._style("label")
        if not narrow:
            pieces.append(("· ", self._style("label")))
        pieces.append((words, style))
        column = (DEADLINE_SHORT if narrow else
                  self._deadline_held[0] if width >= DEADLINE_FULL_WIDTH else DEADLINE_MEDIUM)
        pieces.append((" " * max(1, column - cell_len(words) + 1), None))

    def _span(self, wide: bool) -> int:
        """The cells a request line is laid out in (before the list's width caps it): the
        REQUEST_SPAN, whose deadline column is DEADLINE_MEDIUM, plus what a full-width
        deadline column needs beyond that; and on a wide list, more if the widest URI needs it.
        (It added DEADLINE_LONG: at 200 columns a `nginx 504 in 36 s` line put its client at
        column 143, 60 cells right of its worker's row, while its URI was short.)"""
        if not wide:
            return REQUEST_SPAN
        column = self._deadline_held[0]
        fitted = _LEAD_CELLS + 2 + column + 1 + _CORE_CELLS + self._tail_held[0]
        return max(REQUEST_SPAN + max(0, column - DEADLINE_MEDIUM), fitted)

    def _request_text(self, r: _RequestLine, width: int) -> list[Piece]:
        """`  ✖ CRIT    31s c0  GET     /hang/report?id=42        host  from 10.0.0.7`, laid
        out in at most REQUEST_SPAN cells so that columns line up with the worker rows."""
        narrow = width < NARROW_WIDTH
        wide = r.deadline is not None and width >= DEADLINE_FULL_WIDTH
        span = min(width, self._span(wide))
        line_style = self._style(r.level) if r.level != "ok" else Style()
        pieces: list[Piece] = [(" " if narrow else "  ", None)]
        if r.level == "ok":
            pieces.append((LEVEL_LABELS["ok"], None))
        else:
            pieces.append((LEVEL_LABELS[r.level], self._style(f"{r.level}-label")))
        age = human_age(r.age)
        pieces.append((f" {'≥' + age if r.at_least else age:>6} ", line_style + _BOLD))
        if r.deadline is not None:
            self._deadline_text(pieces, r.deadline, width)
        if not narrow:  # the core matters less than the URI when space is short
            core = f"c{r.core}" if r.core >= 0 else "c?"
            pieces.append((f"{core:<3} ", self._style("label")))
        captured = bool(r.method or r.uri)
        method = ellipsize(plain(r.method), 7)
        method_width = (cell_len(method) + 1 if narrow else _METHOD_CELLS) if captured else 0
        remote = ellipsize(plain(r.remote_addr), REMOTE_WIDTH)
        host = ellipsize(plain(r.host), HOST_WIDTH) if span >= HOST_COLUMN_MIN_SPAN else ""
        host = host + " " * (HOST_WIDTH - cell_len(host)) if host else ""
        host_width = HOST_WIDTH + 2 if host else 0
        tail_width = len(FROM) + cell_len(remote) if remote else 0
        room = span - cell_len("".join(piece for piece, _ in pieces))
        uri_room = room - tail_width - host_width - method_width
        uri_len = cell_len(plain(r.uri)) if captured else len(NOT_CAPTURED)
        # The URI says what is stuck: the Host header gives way before it is cut (at 200x50,
        # past nginx's 60 s, the long deadline cut "/hang/search?q=invoices+20…" beside a
        # Host column), then the client address before it is cut below MIN_URI_WIDTH.
        if uri_room < uri_len and host:
            uri_room += host_width
            host_width, host = 0, ""
        if uri_room < min(uri_len, MIN_URI_WIDTH):
            tail_width = host_width = 0
            remote = host = ""
        what_width = room - tail_width - host_width - method_width
        if captured:
            pieces.append((method + " " * (method_width - cell_len(method)), line_style))
            what = ellipsize(plain(r.uri), what_width)
            pieces.append((what, line_style))
        else:
            what = ellipsize(NOT_CAPTURED, what_width)
            pieces.append((what, self._style("muted")))
        if remote or host:
            # Host and client line up in columns at the end of the span.
            pieces.append((" " * max(0, what_width - cell_len(what)), None))
        if host:
            pieces.append(("  ", None))
            pieces.append((host, self._style("label")))
        if remote:
            pieces.append((FROM, self._style("label")))
            pieces.append((remote, line_style))
        return pieces

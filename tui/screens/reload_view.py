"""The reload, draining worker by worker, against its mercy timeout.

Fed ReloadProgress values (from stackmon.actions.reload_progress) by the app's worker that
follows the reload; this screen only renders them. Each worker shows replaced (old pid -> new),
draining (the requests it is finishing and their ages, with a countdown bar: from 100 columns
one line per request, narrower the oldest and "+1 more", the URI giving way, never the count;
a worker with 2 threads holds 2 and its mercy cuts both), about to be killed,
exited, asked to stop (idle, exiting) or waiting its turn (chain); then the outcome, how long
it took and how many requests were in flight when their worker's mercy ran out.

Above the table, what the clients get, from the stats, the kernel and nginx's logs: how many
workers serve new requests right now, "NO WORKER SERVING for 12 s" when none does (a graceful
reload respawns nothing until the last old worker has exited: one stuck request keeps the whole
instance from serving until mercy), the listen queue and whether it is growing; under it what a
request sent now gets, from the queue (docs/reference.md §4): "queue full: nginx answers 502 at
once" on a unix socket (connect() fails with EAGAIN), on TCP the connect timeout then 504, below
the limit "new requests wait in the listen queue (N)"; and, when the host's logs are read, the
502s and 504s nginx's access log shows since the reload began (AnswerTally, with the error
log's causes), said again in the done line. A review watched "nginx gets no answer" for 16 s
while nginx answered 2 to 6 502s a second. Then the requests mercy cuts if they still run when
it runs out ("worker 4: 2 requests: GET /a 42s, GET /b 40s", every one). Only a worker whose
mercy clock runs has such a line: in a chain reload that is the worker whose turn it is (the
others' clocks start at their turn), and a request of 1 s may well end before: the line says
"cut in 14 s if still running", never "cut at mercy in 14 s". How long no worker has served
is the tracker's figure (ReloadProgress.none_serving_since), so that the done line's "no worker
was serving for 12.4 s" and the banner count the same samples.

It never shows a countdown nobody updates: when following stops before the end (a `stopped`
progress) the view says so, with how far it got, and drops the countdowns; when no progress
arrives for STALE_AFTER seconds (the follow died without a word) it says that too. At 80
columns the table keeps every pid whole: shorter labels and a shorter bar, the request column
(the least needed: the "cut in N s if still running" lines above name it) shrinks first.
Lines above and under the table are wrapped here, at the width the view is drawn at, never
between a number and its unit ("in 6 s" did wrap as "in 6" / "s"), and the progress line is
said shorter where the tracker's whole sentence does not fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from stackmon.actions.reload_progress import (
    AnswerTally,
    ClientAnswers,
    ReloadProgress,
    WorkerReload,
    answers_said,
    serving_count,
)
from stackmon.model import HostSnapshot, Request
from stackmon.redact import visible
from stackmon.render_text import human_age
from widgets.unit_wrap import wrap_keeping_units

STATE_STYLE = {
    "replaced": ("replaced", "bold green"),
    "draining": ("draining", "bold yellow"),
    "killing": ("KILL SOON", "bold white on red"),
    "exited": ("exited", "cyan"),
    "stopping": ("asked to stop", "cyan"),
    "waiting": ("waiting its turn", "dim"),
    "gone": ("not in stats", "dim"),
}


STALE_AFTER = 5.0  # seconds without a progress before the view says following went quiet
WIDE = 100  # from this width on: full state labels, a 20-cell countdown bar, and a line for
# each request a worker is finishing (up to REQUEST_LINES; narrower: the oldest and "+N more")
REQUEST_LINES = 4
NARROW = 64  # below it: the countdown in seconds only, no bar


def _bar(countdown: float | None, mercy: float, width: int = 20) -> Text:
    if countdown is None or mercy <= 0:
        return Text("")
    if width <= 0:
        return Text(f"{max(0.0, min(mercy, countdown)):.0f}s",
                    style="red" if countdown <= 3 else "yellow")
    left = max(0.0, min(mercy, countdown))
    filled = round(width * left / mercy)
    style = "red" if left <= 3 else "yellow"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"),
                         f" {left:4.0f}s")


# What an exited worker waits for: graceful respawns all workers once the last has exited
# (uWSGI re-forks them together), chain respawns each one at once.
EXITED_NOTE = {"graceful": "no respawn until the last exits", "chain": "respawning"}
EXITED_SHORT = {"graceful": "waits for the last", "chain": "respawning"}
STATE_SHORT = {"waiting": "waits its turn"}


def serving(p: ReloadProgress) -> int:
    """Workers that take new requests now (the tracker's own count: serving_count)."""
    return serving_count(p.mode, p.workers)


def _request_line(r: Request, width: int | None, more: int = 0) -> Text:
    """`GET /uri  42s +1 more` in at most `width` cells (None: whole): the URI gives way, so
    that the method, the age and how many more requests the worker holds stay in sight."""
    method, uri = visible(r.method or "?"), visible(r.uri or "(not captured)")
    age = f"  {human_age(r.running_s)}"
    tail = f" +{more} more" if more else ""
    if width is not None:
        room = width - cell_len(method) - 1 - cell_len(age) - cell_len(tail)
        if room < cell_len(uri):
            uri = set_cell_size(uri, room - 1) + "…" if room >= 4 else uri
    line = Text.assemble((method, "bold"), " ", uri, (age, "bold"), (tail, "bold yellow"),
                         no_wrap=True, overflow="ellipsis")
    if width is not None:
        line.truncate(width, overflow="ellipsis")
    return line


@dataclass(frozen=True, slots=True)
class RequestsCell:
    """The requests a draining worker is finishing, laid out at its column's width when drawn
    (the table only knows it then): up to `lines` lines, the last saying "+N more" for the
    rest. A plain Text was cut at its end, and "+1 more" with it."""

    requests: tuple[Request, ...]
    lines: int = 1

    def render(self, width: int | None) -> Text:
        shown = self.requests[:max(1, self.lines)]
        more = len(self.requests) - len(shown)
        return Text("\n").join(_request_line(r, width, more if i == len(shown) - 1 else 0)
                               for i, r in enumerate(shown))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.render(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        whole = max((cell_len(line) for line in self.render(None).plain.split("\n")),
                    default=0)
        return Measurement(min(whole, 12), whole)


Row = tuple[Text, Text, Text, Text | RequestsCell, Text]


def _row(w: WorkerReload, mercy: float, mode: str = "graceful", *, wide: bool = True,
         bar: int = 20) -> Row:
    label, style = STATE_STYLE.get(w.state, (w.state, ""))
    if w.state == "waiting" and mode != "chain":  # graceful asks every worker at once
        label, style = STATE_STYLE["stopping"]
    elif not wide:
        label = STATE_SHORT.get(w.state, label)
    if w.state == "exited":
        label = f"exited, {(EXITED_NOTE if wide else EXITED_SHORT).get(mode, 'respawning')}"
    pids = Text(f"{w.old_pid} → {w.pid}" if w.state == "replaced" else str(w.pid or w.old_pid))
    cells = (Text(str(w.id)), Text(label, style=style), pids)
    if w.in_flight:  # draining or waiting: nothing cut yet, nothing replaced
        return (*cells, RequestsCell(w.in_flight, REQUEST_LINES if wide else 1),
                _bar(w.countdown, mercy, bar))
    what = Text()
    if w.replaced_after is not None:
        what.append(f"after {w.replaced_after:.1f} s", "dim")
    if w.cut or w.unsure:
        what.append("  " if what else "")
        noun = ("request " if w.cut == 1 else "requests ") if wide else ""
        said = f"{w.cut} {noun}cut at mercy" if w.cut else "cut at mercy? unknown"
        what.append(said, "bold yellow")
    return (*cells, what, _bar(w.countdown, mercy, bar))


QueueFigures = tuple[int, int, int | None]  # depth, backlog, the previous depth


def socket_kind(name: str) -> str:
    """"unix" or "tcp" from a uWSGI socket's name (`/run/app.sock`, `@abstract`, `app.sock`;
    `127.0.0.1:3031`, `:3031`, `[::1]:3031`): a full queue refuses at once on one, drops
    SYNs on the other."""
    if name.startswith(("/", "@", ".")) or ":" not in name:
        return "unix"
    return "tcp"


def what_clients_get(serving_now: int, queue: QueueFigures | None, kind: str) -> str:
    """What a request sent now gets, from the kernel's queue (docs/reference.md §4): a full
    unix-socket queue makes connect() fail with EAGAIN, and nginx answers 502 at once; a full
    TCP queue drops the SYN, and nginx waits its connect timeout, then 504; below the limit
    (and no worker serving) requests wait in the queue. "" when nothing is to be said: a
    worker serves and the queue has room, or the queue is not known."""
    if queue is None:
        return ""
    depth, backlog, _before = queue
    if backlog > 0 and depth > backlog:  # the kernel's "full": backlog + 1 (33/32)
        if kind == "unix":
            return "queue full: nginx answers 502 at once"
        if kind == "tcp":
            return ("queue full: connections wait for nginx's connect timeout "
                    "(uwsgi_connect_timeout, 60 s by default), then 504")
        return "queue full: nginx answers 502 (unix socket) or 504 after its connect timeout"
    if serving_now == 0:
        return f"new requests wait in the listen queue ({depth})"
    return ""


def clients_text(p: ReloadProgress, none_for: float | None,
                 queue: QueueFigures | None, kind: str = "",
                 answers: ClientAnswers | None = None) -> Text:
    """`serving now 0/4  NO WORKER SERVING for 12 s  listen queue 33/32`, under it what a
    request gets now ("queue full: nginx answers 502 at once") and what nginx's access log
    says clients got since the reload began, then the requests mercy will cut."""
    n = serving(p)
    text = Text()
    text.append("serving when last seen " if p.stopped else "serving now ", "dim")
    text.append(f"{n}/{len(p.workers)}", "bold")
    if p.stopped:
        return text  # no banner, no countdowns: nothing updates them any more
    if not p.done and n == 0:
        if none_for is None and p.none_serving_since is not None:  # the tracker's count
            none_for = p.elapsed - p.none_serving_since
        text.append("  ")
        since = f" for {none_for:.0f} s" if none_for is not None else ""
        text.append(f" NO WORKER SERVING{since} ", "bold reverse red")
    if queue is not None:
        depth, backlog, before = queue
        text.append("  listen queue " if text.plain.endswith(" ") else "   listen queue ",
                    "dim")
        full = backlog > 0 and depth >= backlog
        text.append(f"{depth}/{backlog or '?'}", "bold reverse red" if full else "bold")
        if before is not None and depth > before:
            text.append(" growing", "bold yellow")
    text.append_text(_clients_line(n if not p.done else -1, queue, kind,
                                   None if p.done else answers))
    for w in p.workers:
        if not w.in_flight or w.countdown is None or w.state not in ("draining", "killing"):
            continue  # only a running mercy clock can cut: a worker waiting its turn has none
        text.append("\n")
        text.append(f"{cut_when(w.countdown)}: ", "bold yellow")
        text.append_text(_cut_requests(w.id, w.in_flight))
    return text


def _clients_line(serving_now: int, queue: QueueFigures | None, kind: str,
                  answers: ClientAnswers | None) -> Text:
    """The line under the banner: what a request gets now, and the 502/504 count so far
    (serving_now -1: the reload is done, the queue says nothing about it any more)."""
    said = what_clients_get(serving_now, queue, kind) if serving_now >= 0 else ""
    text = Text()
    if said:
        text.append("\n")
        text.append(said, "bold red" if said.startswith("queue full") else "bold")
    if answers is not None:
        text.append("   " if said else "\n")
        bad = any(n for _k, n in answers.counts)
        text.append(answers_said(answers, done=False), "bold red" if bad else "dim")
    return text


def _cut_requests(wid: int, requests: tuple[Request, ...]) -> Text:
    """`worker 3 GET /slow  1s`, or with more than one `worker 4: 2 requests: GET /a 42s,
    GET /b 40s`: every request its mercy cuts if still running, counted."""
    text = Text(f"worker {wid} ")
    if len(requests) > 1:
        text = Text(f"worker {wid}: {len(requests)} requests: ")
    for i, r in enumerate(requests):
        if i:
            text.append(", ")
        text.append(visible(r.method or "?"), "bold")
        text.append(" ")
        text.append(visible(r.uri or "(not captured)"))
        text.append(f"{' ' if len(requests) > 1 else '  '}{human_age(r.running_s)}", "bold")
    return text


def cut_when(countdown: float) -> str:
    """When mercy cuts a request that is still running: nobody knows whether it will be (a
    request of 1 s may end long before), so the line says on what it depends."""
    if countdown <= 0:
        return "mercy ran out: cut now if still running"
    return f"cut in {countdown:.0f} s if still running"


def no_mercy_text(no_mercy: tuple[tuple[int, int], ...]) -> Text:
    """uWSGI's own word on what mercy killed: the tracker's count of cut requests is what its
    looks saw, this line is what the master did."""
    text = Text()
    if no_mercy:
        text.append("\nuWSGI logged NO MERCY for ", "bold yellow")
        text.append(", ".join(f"worker {wid} (pid {pid})" for wid, pid in no_mercy))
    return text


def render_progress(host: str, instance: str, p: ReloadProgress,
                    none_for: float | None = None, queue: QueueFigures | None = None,
                    width: int = WIDE, quiet_for: float | None = None,
                    no_mercy: tuple[tuple[int, int], ...] = (), kind: str = "",
                    answers: ClientAnswers | None = None) -> Table:
    """The whole view as one renderable (pure: the screen and tests use it), for `width`
    columns. quiet_for: seconds since the last progress arrived, when that is too long.
    no_mercy: (worker, pid) of this reload's old workers the uWSGI log says it killed.
    kind: the queue's socket, "unix" or "tcp" ("" unknown). answers: the 502s and 504s
    nginx's access log shows since the reload began (None: its logs are not read)."""
    wide = width >= WIDE
    bar = 20 if wide else (8 if width >= NARROW else 0)
    rows = [_row(w, p.mercy, p.mode, wide=wide, bar=bar) for w in p.workers]
    if quiet_for is not None:  # countdowns nobody updates: dropped, like a stopped follow
        rows = [(r[0], r[1], r[2], r[3], Text("?", style="dim") if r[4].plain else r[4])
                for r in rows]
    table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    table.add_column("worker" if wide else "#", no_wrap=True)
    table.add_column("state", no_wrap=True)
    # Every pid whole, whatever the width: as wide as the longest "old → new".
    table.add_column("pid", no_wrap=True, min_width=max((r[2].cell_len for r in rows), default=3))
    table.add_column("finishing", ratio=1, overflow="ellipsis", no_wrap=True)
    table.add_column("mercy left" if bar else "mercy", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    elapsed = (f"followed for {p.elapsed:.0f} s" if p.stopped else
               f"elapsed {p.elapsed:.0f} s")
    title = Text.assemble((f"{p.mode.capitalize()} reload ", "bold"), "of ",
                          (visible(instance), "bold"), " on ", (visible(host), "bold"),
                          f"   {elapsed}   worker-reload-mercy {p.mercy:g} s\n")
    title.append_text(clients_text(p, none_for, queue, kind, answers))
    title.append_text(no_mercy_text(no_mercy))
    title.justify = "left"
    table.title = wrap_keeping_units(title, width)
    table.caption = wrap_keeping_units(_status(p, quiet_for, width, answers), width)
    table.caption_justify = "left"
    return table


def short_message(p: ReloadProgress) -> str:
    """The tracker's progress sentence in fewer words, from the same figures: at 80 columns
    "chain reload: 1/4 workers replaced; 1 finishing a request, mercy runs out in 6 s" took
    two lines. (The tracker's own sentence is also the CLI's and the audit log's.)"""
    n = sum(1 for w in p.workers if w.state == "replaced")
    text = f"{p.mode} reload: {n}/{len(p.workers)} replaced"
    draining = [w.countdown or 0.0 for w in p.workers if w.state in ("draining", "killing")]
    if draining:
        text += f"; {len(draining)} finishing, mercy ends in {max(0.0, min(draining)):.0f} s"
    return text


def _status(p: ReloadProgress, quiet_for: float | None, width: int = WIDE,
            answers: ClientAnswers | None = None) -> Text:
    """The line under the table: the tracker's message (shorter where it does not fit), once
    done with what clients got during the reload; when following stopped or went quiet, that
    in reverse video (the figures above are then the last ones seen)."""
    if p.stopped:
        said = visible(p.message).removeprefix("stopped following ")
        return Text.assemble((" STOPPED FOLLOWING ", "bold reverse yellow"), " ",
                             (said, "bold yellow"),
                             ("\nThe figures above are the last seen. Esc: the main view "
                              "shows the workers' pids now; e: the host's events.", "dim"))
    if quiet_for is not None:
        return Text.assemble(
            (f" NO PROGRESS FOR {quiet_for:.0f} s ", "bold reverse yellow"), " ",
            (f"following this reload went quiet; last: {visible(p.message)}", "bold yellow"),
            ("\nThe figures above are the last seen. Esc: the main view shows the workers' "
             "pids now; e: the host's events.", "dim"))
    cut = any(w.cut or w.unsure for w in p.workers)
    style = (("bold yellow" if cut else "bold green") if p.done else
             ("bold yellow" if p.stats_available else "bold cyan"))
    message = visible(p.message)
    if cell_len(message) > width and p.stats_available and not p.done:
        message = short_message(p)
    if p.done and answers is not None:
        message += f"; {answers_said(answers, done=True)}"
        if any(n for _k, n in answers.counts):
            style = "bold yellow"
    return Text(message, style=style)


@dataclass(frozen=True, slots=True)
class _Fitted:
    """The view laid out at the width it is drawn at (a scrollbar takes some of the screen's),
    so that the lines wrapped by wrap_keeping_units are not wrapped again."""

    draw: Callable[[int], Table]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.draw(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(options.max_width, options.max_width)


class ReloadScreen(Screen[None]):
    DEFAULT_CSS = """
    ReloadScreen > VerticalScroll { padding: 0 1; }
    """
    # Back says what it leaves behind: while the reload runs it goes on without the view;
    # once it is done there is nothing left to go on (check_action shows one of the two).
    BINDINGS = [Binding("escape,q", "close('running')", "Back (the reload goes on)"),
                Binding("escape,q", "close('done')", "Back")]

    def __init__(self, host: str, instance: str, start: ReloadProgress,
                 host_index: int = -1, address: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 before: HostSnapshot | None = None) -> None:
        """before: the host's last poll from before the reload (its logs' counters are where
        the count of 502s and 504s during the reload starts)."""
        super().__init__()
        self.host, self.instance, self.progress = host, instance, start
        self.host_index, self.address = host_index, address
        self._none_since: float | None = None  # elapsed when the last serving worker went
        self._queue: QueueFigures | None = None
        self._kind = ""  # the queue's socket: "unix" or "tcp"
        began = start.started_at or time.time() - start.elapsed
        self._answers = AnswerTally(began, before.logs if before is not None else None)
        self._clock = clock
        self._heard = clock()  # when the last progress arrived
        self._quiet = False  # the view says "no progress for N s"
        self._no_mercy: dict[int, int] = {}  # old pid -> worker, from the uWSGI log's events
        self._track(start)

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self._view(), id="reload")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(1.0, self._check_quiet)

    def quiet_for(self) -> float | None:
        """Seconds since the last progress, once that is past STALE_AFTER on a reload that
        is neither done nor stopped (those say their last word themselves)."""
        if self.progress.done or self.progress.stopped:
            return None
        quiet = self._clock() - self._heard
        return quiet if quiet >= STALE_AFTER else None

    def _check_quiet(self) -> None:
        quiet = self.quiet_for() is not None
        if quiet or self._quiet:  # going quiet, each second while quiet, and back
            self._quiet = quiet
            self._redraw()

    def _track(self, progress: ReloadProgress) -> None:
        """When no worker began serving: the tracker's figure (its samples, whether or not
        this view saw them all), else (a progress without it) from the progresses seen."""
        if progress.none_serving_since is not None:
            self._none_since = progress.none_serving_since
        elif serving(progress) or progress.done:
            self._none_since = None
        elif self._none_since is None:
            self._none_since = progress.elapsed

    def _view(self) -> _Fitted:
        p, queue, quiet_for = self.progress, self._queue, self.quiet_for()
        none_for = None if self._none_since is None else p.elapsed - self._none_since
        no_mercy = tuple(sorted((wid, pid) for pid, wid in self._no_mercy.items()))
        kind, answers = self._kind, self._answers.answers()
        return _Fitted(lambda width: render_progress(self.host, self.instance, p, none_for,
                                                     queue, width=width, quiet_for=quiet_for,
                                                     no_mercy=no_mercy, kind=kind,
                                                     answers=answers))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "close":
            return parameters == (("done",) if self.progress.done else ("running",))
        return True

    def set_progress(self, progress: ReloadProgress) -> None:
        was_done, self.progress = self.progress.done, progress
        self._heard = self._clock()
        self._track(progress)
        if progress.done:  # the next read of the logs closes the count
            self._answers.finish(self._answers.started_at + progress.elapsed)
        self._redraw()
        if progress.done != was_done:
            self.refresh_bindings()

    def set_host(self, snap: HostSnapshot) -> None:
        """A poll of the host: the instance's listen queue, from the stats or the kernel
        (which keeps answering while the master re-executes), and the NO MERCY kills of this
        reload's old workers its uWSGI log shows, and what nginx's logs say clients got."""
        self._note_no_mercy(snap)
        self._answers.add(snap.logs)
        depth = backlog = -1
        kind = ""
        for inst in snap.uwsgi:
            if inst.address == self.address:
                for sock in inst.sockets:
                    if sock.queue > depth:
                        depth, backlog, kind = sock.queue, sock.max_queue, socket_kind(sock.name)
        if depth < 0:
            for li in snap.listeners:
                if li.instance == self.address and li.queue > depth:
                    depth, backlog, kind = li.queue, li.backlog, li.kind
        if depth >= 0:
            before = self._queue[0] if self._queue is not None else None
            self._queue, self._kind = (depth, backlog, before), kind
        self._redraw()

    def _note_no_mercy(self, snap: HostSnapshot) -> None:
        """NO MERCY events naming one of this reload's old pids, logged since it began."""
        if snap.logs is None:
            return
        old = {w.old_pid: w.id for w in self.progress.workers if w.old_pid}
        since = snap.taken_at - self.progress.elapsed - 2.0  # the log's times: whole seconds
        found = {e.pid: old[e.pid] for e in snap.logs.events
                 if e.kind == "no_mercy" and e.pid in old and e.at >= since}
        if found.keys() - self._no_mercy.keys():
            self._no_mercy.update(found)
            self._redraw()

    def _redraw(self) -> None:
        if self.is_mounted:
            self.query_one("#reload", Static).update(self._view())

    def action_close(self, _when: str = "running") -> None:
        self.dismiss(None)

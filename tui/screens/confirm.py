"""Confirmations for actions that change the stack: they name exactly what will be hit.

A kill names the host, worker id, pid and every request in flight with its age and nearest
deadline, and offers only the signals that make sense (REFERENCE.md section 2): SIGTERM aborts
the request (SIGKILL after a short grace), SIGKILL at once, or SIGUSR2 first so the worker logs
what it is doing. Escape always cancels; nothing happens without a key.

A reload states the instance's worker-reload-mercy and, per busy worker, whether its request
will be CUT at mercy (stuck past --slow, or already running longer than the mercy: nothing
says it will end in time) or should finish. It warns when a graceful reload leaves NO worker
serving: graceful stops every worker at once and respawns none until the last busy one has
exited, so one stuck request means an outage of up to the mercy. Enter then means chain (one
worker at a time, the others keep serving) when the instance can chain: Enter is what a hurried
user presses, and it should not be the outage. `g` still sends graceful.

Every key is on screen at 80x24: the keys line is docked at the dialog's bottom, the request
list is cut to "+N more" where the screen is short.

Killing a stuck worker ends the outage and destroys the evidence, so the kill offers to capture
the worker's Python stack first (`s` toggles it; on by default where it can work): the kill's
own audit record then carries it (Host.kill(stack=...)). SIGUSR2's output goes to the uWSGI
log, never to stackmon: the dialog says which log, and shows the latest uWSGI events stackmon
read from it about the target worker (by the events' pid/id fields; never another worker's).

The kill's dialog is live (KillConfirm.set_live, fed each poll of its host by the app, the
latest even while the main screen is paused): what it lists is what a kill hits now. Confirming
after a listed request ended (or an idle worker started serving) kills nothing: it lists the
requests now in flight, says what changed and waits for the key again; a request that only
arrived is listed and said, and does not hold the kill (must_ask_again). A respawned or
vanished worker cannot be confirmed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from stackmon.actions.kill import kill_meant_for
from stackmon.actions.reload_progress import ReloadFacts
from stackmon.deadlines import nearest
from stackmon.logs.uwsgi_events import Event
from stackmon.model import HostSnapshot, Request, RequestKey, UwsgiInstance, Worker
from stackmon.redact import visible
from stackmon.render_text import human_age
from widgets.modal_keys import ModalKeys
from widgets.unit_wrap import NBSP, UnitsKept, wrap_keeping_units
from widgets.worker_list import client_gone, deadline_text, live_deadlines, respawns

USR2_EVENTS = 3  # latest uWSGI events shown under the SIGUSR2 key


@dataclass(frozen=True, slots=True)
class KillChoice:
    signal: str  # "TERM" | "KILL"
    usr2_first: bool = False
    capture: bool = False  # read the worker's stack first, into the kill's audit record
    # What the kill is for (kill_meant_for of the listed requests): the kill itself is refused
    # when one has ended by its own stats read, a poll interval and a capture after the key.
    expect_requests: tuple[RequestKey, ...] = ()
    meant: str = ""  # those requests named ("GET /x, GET /y"), for a refusal's message


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
{name} #bottom {{ dock: bottom; height: auto; }}
{name} #requests {{ text-wrap: nowrap; text-overflow: ellipsis; }}
"""
# Rows the dialog needs besides its request lines (border, title, facts, warnings, keys):
# what is left of the screen's 90% is for the list, never less than MIN_LIST.
FIXED_ROWS = 14
MIN_LIST = 2


def list_rows(screen_height: int, fixed: int = FIXED_ROWS) -> int:
    """How many request lines fit (the rest becomes "+N more")."""
    return max(MIN_LIST, (screen_height - 1) * 9 // 10 - fixed)  # -1: ModalKeys


LEVEL_RANK = {"critical": 2, "slow": 1}
LEVEL_TAG = {"critical": (" CRIT ", "bold reverse"), "slow": (" SLOW ", "bold")}


def _age(r: Request, now: float) -> float | None:
    return r.running_s if r.started_at is None else max(0.0, now - r.started_at)


def _requests_text(worker: Worker, now: float, limit: int = 1000,
                   stale_s: float | None = None) -> Text:
    """The worker's requests with their ages and nearest deadlines; on stale data (`stale_s`)
    as of the last good sample, ages read "at least" and no deadline is predicted (whether
    they still run is unknown: the dialog said "running 38s" of a 5 s request the stopped
    master's stats had caught at 3 s)."""
    text = Text()
    # The stuck ones first, tagged as in the list (CRIT in reverse video: it reads without
    # colour too): listed by core, the request the kill was for sat second, looking like a
    # 1 s /slow above it (review, NO_COLOR).
    requests = sorted(worker.requests_in_flight,
                      key=lambda r: (-LEVEL_RANK.get(r.level, 0), -(r.running_s or 0.0)))
    if not requests:
        text.append("  no request in flight\n", "dim")
    for i, r in enumerate(requests):
        if i == limit and len(requests) > limit + 1:
            text.append(f"  +{len(requests) - limit} more\n", "dim")
            break
        # Stale: the age measured with the sample (now - stale_s added the stats' timeout).
        age = r.running_s if stale_s is not None else _age(r, now)
        # The age first, beside its core: at 80 columns a line wraps, and "running" / "67s"
        # came out split at its end.
        tag = LEVEL_TAG.get(r.level)
        text.append("  ")
        if tag is not None:
            text.append(tag[0], tag[1])
            text.append(" ")
        text.append(f"core {r.core}  running ")
        text.append(("≥" if stale_s is not None else "") + human_age(age), "bold")
        text.append("  ")
        text.append(r.method or "?", "bold")
        text.append(" ")
        text.append(r.uri or "(request details not captured)")
        text.append(f"  from{NBSP}{r.remote_addr or '?'}")  # never "from" / "127.0.0.1"
        d = None if stale_s is not None else nearest(live_deadlines(r, age))
        if d is not None:
            text.append(" · ")
            # whole on its line: "nginx 504" / "in 29 s" at 120 columns
            text.append(deadline_text(d, 200).replace(" ", NBSP),
                        "bold reverse" if client_gone(d) else "")
        text.append("\n")
    return text


def about_worker(events: Sequence[Event], worker: Worker, *, by_id: bool = True,
                 limit: int = USR2_EVENTS) -> list[Event]:
    """The latest uWSGI events about `worker`, by the fields the parser filled (never by the
    line's text): its pid, or its id where ids are unambiguous (`by_id`: the host has one
    uWSGI instance; the events do not say which instance wrote them) and only since this
    process was spawned. The dialog showed the
    latest uWSGI lines whatever they were about: `worker 4 ... NO MERCY` under a kill of
    worker 3 read as worker 3's."""
    def ours(e: Event) -> bool:
        if e.source != "uwsgi":
            return False
        if e.pid is not None:
            return e.pid == worker.pid
        # By id, only lines since this process was spawned: an id is a slot, and a review saw
        # the previous process's "NO MERCY" and "chain next victim" under a kill of its
        # successor (spawn times are whole seconds: 1 s of slack).
        return by_id and e.worker == worker.id and e.at >= worker.last_spawn - 1
    return [e for e in events if ours(e)][:limit]


def usr2_text(log_path: str | None, events: Sequence[Event], worker: Worker | None = None,
              now: float | None = None, *, by_id: bool = True) -> Text:
    """Where SIGUSR2's output goes (the uWSGI log), and the latest uWSGI events read from it
    about `worker` (all uWSGI events when None), with their age when `now` is given."""
    text = Text("SIGUSR2: the worker writes its request and a backtrace to the uWSGI log",
                style="dim")
    if log_path:
        text.append(" (")
        text.append(visible(log_path))
        text.append(")")
    else:
        text.append(" (not found from uWSGI's config: see the doctor, d)")
    text.append(", not here.")
    latest = ([e for e in events if e.source == "uwsgi"][:USR2_EVENTS] if worker is None
              else about_worker(events, worker, by_id=by_id))
    for e in latest:
        text.append("\n  ")
        if now is not None:
            text.append(f"{human_age(max(0.0, now - e.at))} ago  ", "dim")
        text.append(visible(e.text), "dim")
    if worker is not None and not latest and (log_path or events):
        text.append(f"\n  no recent uWSGI log line about worker {worker.id}", "dim italic")
    return text


def usr2_short(log_path: str | None) -> Text:
    """usr2_text in one line, for a short screen: where the output goes, and where to read it."""
    where = visible(log_path) if log_path else "in the uWSGI log"
    return Text(f"SIGUSR2's output: {where} (e: events).", style="dim")


def content_width(screen_width: int) -> int:
    """The cells a confirmation's text has (the box: 90% of the screen, at most 100 cells,
    less its border and padding)."""
    return max(10, min(screen_width * 9 // 10, 100) - 4)


def text_rows(text: Text, width: int) -> int:
    """The rows `text` takes drawn at `width` (units kept, as UnitsKept draws it)."""
    return len(wrap_keeping_units(text, width).plain.split("\n"))


def consequence_text(worker: Worker, stale_s: float | None, timeout: float,
                     who: str = "the uWSGI master") -> Text:
    """What Enter will do, true to the data's age. Fresh: the request(s) are aborted and the
    master respawns the worker. Stale (`who` has not answered for `stale_s`): everything above
    is the last good data, and the kill (stackmon.actions.kill) confirms the pid with the
    live stats before any signal, so it is refused, nothing done, unless `who` answers within
    `timeout`; saying "the master respawns it" there promised what a hung master cannot do."""
    if stale_s is None:
        return Text("The master respawns the worker with a new pid; the request(s) above are "
                    "aborted (the client gets a 502).", style="italic")
    text = Text()
    text.append(f" STALE {human_age(stale_s)} ", "bold reverse")
    text.append(f" {who} has not answered for {human_age(stale_s)}; above is its last good "
                "data.\n")
    text.append(f"The kill first confirms pid {worker.pid} with the live stats: refused, "
                f"nothing done, unless {who} answers within {timeout:g} s", "bold")
    text.append("; then the request(s) are aborted (502) and the master respawns the worker.",
                "italic")
    return text


def kill_progress_text(worker: Worker, choice: KillChoice, timeout: float,
                       capture_budget: float) -> str:
    """What the kill is doing, shown at once after Enter: confirming the pid with the master
    (one stats read, up to `timeout`), capturing the stack first (up to `capture_budget`),
    and the signals take seconds; without this line the wait was silent."""
    first = (f"capturing its stack (up to {capture_budget:g} s), then " if choice.capture
             else "")
    signal = "SIGUSR2, then SIGTERM" if choice.usr2_first else f"SIG{choice.signal}"
    return (f"Worker {worker.id} pid {worker.pid}: {first}confirming the pid with the master "
            f"(up to {timeout:g} s), then {signal} and waiting for its respawn…")


def _keys(*pairs: tuple[str, str]) -> Text:
    text = Text()
    for key, label in pairs:
        text.append(f" {key} ", "bold reverse")
        text.append(f" {label}   ")
    return text


def _named(requests: Sequence[Request], most: int = 2) -> str:
    """`core 0 GET /slow?s=5, core 1 GET /x` (URIs cut at 40), "+N" past `most`."""
    out = [f"core {r.core} {visible(r.method or '?')} {visible(r.uri or '?')[:40]}"
           for r in requests[:most]]
    if len(requests) > most:
        out.append(f"+{len(requests) - most}")
    return ", ".join(out) if out else "no request in flight"


def changed_text(listed: dict[RequestKey, Request], now: dict[RequestKey, Request]) -> str:
    """How the requests in flight differ from those the user was shown."""
    ended = [r for k, r in listed.items() if k not in now]
    what = f"listed ones ended: {_named(ended)}" if ended else \
        f"new: {_named([r for k, r in now.items() if k not in listed])}"
    return f"{what}; now: {_named(list(now.values()))}"


def must_ask_again(listed: dict[RequestKey, Request], now: dict[RequestKey, Request]) -> bool:
    """Whether the kill must be confirmed again: a request the user was shown has ended (what
    they meant to stop may be over), or they were shown an idle worker that now serves. A
    request that only arrived does not: on a worker with a thread stuck and another serving,
    each poll catches new short ones, and asking again for them kept the kill from ever
    going through; the kill aborts whatever is in flight at its moment anyway."""
    return bool(listed.keys() - now.keys()) or (not listed and bool(now))


def live_worker(inst: UwsgiInstance | None, worker_id: int) -> Worker | None:
    """The worker with `worker_id` in `inst` (ids are positions: unique in an instance)."""
    return next((w for w in inst.workers if w.id == worker_id), None) if inst else None


def kill_staleness(inst: UwsgiInstance | None,
                   snap: HostSnapshot | None) -> tuple[float | None, str]:
    """How old the data the user decides on is, and whose silence made it so: the
    instance's (a hung master), else the whole host's (it did not answer at all)."""
    if inst is not None and inst.stale_s is not None:
        return inst.stale_s, "the uWSGI master"
    if snap is not None and snap.stale_s is not None:
        return snap.stale_s, "this host"
    return None, "the uWSGI master"


def gone_reason(target: Worker, now: Worker | None) -> str | None:
    """Why `target`'s process can no longer be the one killed (None: it is still there)."""
    if now is None:
        return f"worker {target.id} is no longer in the stats"
    if not now.spawned:
        return f"pid {target.pid} is gone (worker {target.id} is waiting for its respawn)"
    if now.pid != target.pid:
        return f"pid {target.pid} is gone: worker {target.id} was respawned as pid {now.pid}"
    return None


# The dialogs' key lines over the main screen's Footer (widgets/modal_keys.py).
KILL_KEYS = (("t/⏎", "SIGTERM"), ("k", "SIGKILL"), ("u", "SIGUSR2, then SIGTERM"),
             ("s", "capture stack"), ("Esc", "cancel"))


class KillConfirm(ModalScreen[KillChoice | None]):
    """The kill's confirmation, kept live: the app feeds it each poll of its host (set_live),
    the latest even while the main screen is paused, so the list shows what a kill would hit
    now. A snapshot dialog listed two requests, and `t` 8 s later killed two others. Confirming
    after the requests changed asks again instead of killing; a respawned or gone worker
    cannot be confirmed at all."""

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
                 events: Sequence[Event] = (), stale_s: float | None = None,
                 stale_who: str = "the uWSGI master", timeout: float = 2.0,
                 host_index: int = -1, paused: bool = False, by_id: bool = True) -> None:
        """`capture`: whether "capture the stack first" starts on (None: not offered);
        `uwsgi_log` and `events`: where SIGUSR2's output goes, and what was read from it;
        `stale_s`: how long `stale_who` has not answered (None: the data is live), and
        `timeout` how long the kill's own stats read waits for it. `host_index` and the
        instance's address say which polls feed it; `paused`: the main screen is;
        `by_id`: events name the worker by id unambiguously (one instance on the host)."""
        super().__init__()
        # Host name and address come from configuration: shown literally, like request data.
        self.host, self.instance = visible(host), visible(instance)
        self.address, self.host_index = instance, host_index
        self.target = self.worker = worker  # target: the process asked about (its pid)
        self.now = now
        self.stale_s, self.stale_who, self.timeout = stale_s, stale_who, timeout
        self.offer_capture = capture is not None
        # Stale: the capture confirms the pid with the stats too, so it would wait a whole
        # timeout for the master before the kill waits another (4 s for nothing, seen): off
        # unless asked for.
        self.capture = bool(capture) and stale_s is None
        self.uwsgi_log = uwsgi_log
        self.events = tuple(events)
        self.paused, self.by_id = paused, by_id
        self.listed = worker.requests_by_key()  # what the user is deciding on
        self.gone: str | None = None
        self.asked_again: str | None = None  # the change that made a confirm ask again
        self.no_data = False  # the latest poll had nothing from this instance

    def compose(self) -> ComposeResult:
        w = self.target
        title = Text.assemble("Kill worker ", (str(w.id), "bold"), " (pid ", (str(w.pid), "bold"),
                              ") of ", (self.host, "bold"), "?")
        with Vertical():
            yield Static(title, classes="title")
            with Vertical(id="bottom"):  # docked: on screen however long the rest is
                if self.offer_capture:
                    yield self._unless_gone(Static(self._capture_text(), id="capture",
                                                   classes="keys"))
                keys = Static(self._keys_text(), id="keys", classes="keys")
                keys.display = self._fitted()[1]
                yield keys
            yield Static(UnitsKept(self._sub_text()), id="sub")
            live = self._live_text()
            yield Static(live, id="live").set_styles(f"display: {'block' if live else 'none'};")
            yield Static(UnitsKept(self._requests()), id="requests-list")
            yield self._unless_gone(Static(
                consequence_text(w, self.stale_s, self.timeout, self.stale_who),
                id="consequence"))
            yield Static(self._fitted()[0], id="usr2")
        yield ModalKeys(KILL_KEYS)

    def _unless_gone(self, widget: Static) -> Static:
        """Shown while the worker is there: gone (a poll fed before it was mounted), the
        consequence promised what no key can do now."""
        widget.display = self.gone is None
        return widget

    def set_live(self, worker: Worker | None, now: float, *, instance_seen: bool = True,
                 stale_s: float | None = None, stale_who: str = "the uWSGI master",
                 events: Sequence[Event] | None = None, paused: bool | None = None) -> None:
        """One poll of the host: the worker as it is now (None: not in the stats), or
        `instance_seen` False when the poll had nothing from its instance (kept as it was)."""
        self.now = now
        self.no_data = not instance_seen
        if instance_seen:
            self.gone = gone_reason(self.target, worker)
            if self.gone is None and worker is not None:
                self.worker = worker
            self.stale_s, self.stale_who = stale_s, stale_who
        if events is not None:
            self.events = tuple(events)
        if paused is not None:
            self.paused = paused
        self._redraw()

    def _redraw(self) -> None:
        if not self.is_mounted:
            return
        live = self.query_one("#live", Static)
        text = self._live_text()
        live.update(text)
        live.display = bool(text)
        self.query_one("#sub", Static).update(UnitsKept(self._sub_text()))
        self.query_one("#requests-list", Static).update(UnitsKept(self._requests()))
        consequence = self.query_one("#consequence", Static)
        consequence.update(consequence_text(self.target, self.stale_s, self.timeout,
                                            self.stale_who))
        self._unless_gone(consequence)
        for capture in self.query("#capture").results(Static):
            self._unless_gone(capture)
        usr2, with_keys = self._fitted()
        self.query_one("#usr2", Static).update(usr2)
        keys = self.query_one("#keys", Static)
        keys.update(self._keys_text())
        keys.display = with_keys

    def _sub_text(self) -> Text:
        w = self.worker
        # Each label with its figure (NBSP, drawn by UnitsKept): "respawns" / "0" at 80.
        return Text(f"uWSGI {self.instance}   status{NBSP}{w.status}   requests{NBSP}served"
                    f"{NBSP}{w.requests}   respawns{NBSP}{respawns(w)}", style="dim")

    def _requests(self) -> Text:
        if self.gone:
            return Text(f"  nothing to list: pid {self.target.pid} no longer runs", style="dim")
        # A request line wraps to about two rows where the dialog is narrow.
        rows = list_rows(self.app.size.height, 16 + 2 * bool(self._live_text())) // 2
        return _requests_text(self.worker, self.now, rows, self.stale_s)

    def _fitted(self) -> tuple[Text, bool]:
        """The SIGUSR2 part, and whether the keys are spelt out in the dialog too, for the
        rows there are: the full paragraph, else one line (at 80x24 with PAUSED and CHANGED
        shown it was cut at the box's bottom); the keys in the box give way last, the line
        at the screen's bottom (ModalKeys) lists them anyway."""
        full = usr2_text(self.uwsgi_log, self.events, self.target, self.now, by_id=self.by_id)
        short = usr2_short(self.uwsgi_log)
        width = content_width(self.app.size.width)
        for with_keys in (True, False):
            spare = self._spare_rows(width, with_keys)
            for text in (full, short):
                if text_rows(text, width) <= spare:
                    return text, with_keys
        return short, False

    def _spare_rows(self, width: int, with_keys: bool = True) -> int:
        """The rows the dialog has left for the SIGUSR2 part, with everything else drawn
        (the key lines in the box or not)."""
        parts = [Text("title"), self._sub_text(), self._live_text(), self._requests()]
        if not self.gone:
            parts.append(consequence_text(self.target, self.stale_s, self.timeout,
                                          self.stale_who))
        bottom = [self._keys_text()] if with_keys else []
        bottom += [self._capture_text()] if self.offer_capture else []
        used = sum(text_rows(t, width) for t in parts if t.plain) + sum(
            1 + text_rows(t, width) for t in bottom)  # each key line has a blank row above
        # 90% of what the key line (ModalKeys) leaves; 2: the border
        return (self.app.size.height - 1) * 9 // 10 - 2 - used

    def _live_text(self) -> Text:
        """What the user must know before a key: the worker is gone, the requests changed,
        the main screen is paused (this is live), the latest poll missed the instance."""
        text = Text()
        if self.paused:
            text.append("The main screen is PAUSED; this dialog shows live data (each poll).",
                        "bold")
        if self.gone:
            text.append("\n" if text else "")
            text.append(" GONE ", "bold reverse")
            text.append(f" {self.gone}. Nothing to kill: Esc closes (K on the new process).",
                        "bold")
            return text
        if self.no_data:
            text.append("\n" if text else "")
            text.append("The latest poll has nothing from this instance: below is the last "
                        "seen.", "bold")
        now = self.worker.requests_by_key()
        if must_ask_again(self.listed, now):
            text.append("\n" if text else "")
            text.append(" CHANGED ", "bold reverse")
            text.append(" The requests changed since you opened this "
                        f"({changed_text(self.listed, now)}). Confirming asks again.", "bold")
            return text
        if self.asked_again:  # why the last key killed nothing, until the next one
            text.append("\n" if text else "")
            text.append(" CHANGED ", "bold reverse")
            again = ("press the key again to kill the ones listed now" if now else
                     "nothing is in flight now: Esc closes, the key again kills the idle "
                     "worker")
            text.append(f" The requests changed since you opened this ({self.asked_again}). "
                        f"Nothing was killed: {again}.", "bold")
        if now.keys() != self.listed.keys():  # with the above: it hid "press the key again"
            text.append("\n" if text else "")
            text.append(" NEW ", "bold")
            text.append(" Arrived since you opened this: "
                        f"{_named([r for k, r in now.items() if k not in self.listed])}; the "
                        "kill aborts them too.")
        return text

    def _keys_text(self) -> Text:
        if self.gone:
            return _keys(("Esc", "close: nothing to kill"))
        # One line from 100 columns (it wrapped "Esc cancel" alone at every width, review).
        return _keys(("t/Enter", "SIGTERM (KILL after 3 s)"), ("k", "SIGKILL now"),
                     ("u", "SIGUSR2 first"), ("Esc", "cancel"))

    def _capture_text(self) -> Text:
        text = _keys(("s", "[x] capture its Python stack first" if self.capture
                      else "[ ] capture its Python stack first"))
        if self.capture:
            text.append("(kept in the kill's audit record)", "dim")
        elif self.stale_s is not None:
            text.append("(off: needs the master)", "dim")
        else:
            text.append("(off: the kill destroys where it was stuck)", "dim")
        return text

    def action_toggle_capture(self) -> None:
        if self.offer_capture:
            self.capture = not self.capture
            self.query_one("#capture", Static).update(self._capture_text())

    def action_choose(self, how: str) -> None:
        """Kill what is listed, only if none of it has ended (must_ask_again): else list what
        is in flight now, say what changed and wait for the key again."""
        if self.gone:
            self.app.bell()
            return
        now = self.worker.requests_by_key()
        if must_ask_again(self.listed, now):
            self.asked_again = changed_text(self.listed, now)
            self.listed = now
            self._redraw()
            return
        meant = kill_meant_for(self.listed)
        named = ", ".join(f"{self.listed[k].method} {self.listed[k].uri}" for k in meant)
        if how == "USR2":
            self.dismiss(KillChoice("TERM", usr2_first=True, capture=self.capture,
                                    expect_requests=meant, meant=named))
        else:
            self.dismiss(KillChoice(how, capture=self.capture, expect_requests=meant,
                                    meant=named))

    def action_cancel(self) -> None:
        self.dismiss(None)


def will_be_cut(r: Request, age: float | None, mercy: float | None) -> bool:
    """Whether a request in flight is expected to outlive the mercy and be cut: it is stuck
    (past --slow) or already older than the mercy. Nothing tells how long a request will
    still run; these are the ones with no sign they will end in time."""
    return r.level != "ok" or (mercy is not None and (age or 0.0) >= mercy)


def _mercy_text(facts: ReloadFacts | None, pending: bool) -> str:
    if facts is not None:
        return f"worker-reload-mercy {facts.mercy:g} s ({facts.mercy_source})"
    if pending:
        return "worker-reload-mercy: reading the instance's config…"
    return "worker-reload-mercy: not known from here (uWSGI's default is 60 s)"


def request_lines(inst: UwsgiInstance, now: float, mercy: float | None, limit: int) -> Text:
    """One line per busy worker's request, the verdict first (`CUT` / `young`), the URI last
    (cut with … where the dialog is narrow); "+N more" past `limit` lines."""
    lines = [(w, r) for w in inst.workers for r in w.requests_in_flight]
    lines.sort(key=lambda wr: not will_be_cut(wr[1], _age(wr[1], now), mercy))
    text = Text(no_wrap=True, overflow="ellipsis")
    shown = lines if len(lines) <= limit else lines[:max(1, limit - 1)]
    for w, r in shown:
        age = _age(r, now)
        cut = will_be_cut(r, age, mercy)
        # Not "ok": a young request is cut too if still running at mercy, and one that was
        # read "ok" above the done line's "2 requests were cut" (review).
        text.append(" CUT  " if cut else "young ", "bold reverse yellow" if cut else "dim")
        text.append(f" worker {w.id} pid {w.pid}  ")
        text.append(human_age(age), "bold")
        if r.level != "ok":
            text.append(" CRIT" if r.level == "critical" else " SLOW", "bold")
        text.append("  ")
        text.append(visible(r.method or "?"), "bold")
        text.append(" ")
        text.append(visible(r.uri or "(request details not captured)"))
        text.append("\n")
    if len(shown) < len(lines):
        more = lines[len(shown):]
        n_cut = sum(1 for _, r in more if will_be_cut(r, _age(r, now), mercy))
        text.append(f" +{len(more)} more ({n_cut} CUT): the main view lists them\n", "dim")
    text.rstrip()  # no blank row under the list
    return text


@dataclass(frozen=True, slots=True)
class ReloadOutlook:
    """What each mode does to the clients, from the workers now and the mercy."""

    workers: int
    busy: int
    held_by: tuple[int, ...]  # workers whose request will be cut at mercy (graceful waits)
    mercy: float | None

    @property
    def graceful_outage(self) -> bool:
        """Graceful leaves NO worker serving for a while: a request expected to run to the
        mercy holds every worker's respawn until it is cut."""
        return bool(self.held_by)


def outlook(inst: UwsgiInstance, now: float, mercy: float | None) -> ReloadOutlook:
    spawned = [w for w in inst.workers if w.spawned]
    held = tuple(w.id for w in spawned
                 if any(will_be_cut(r, _age(r, now), mercy) for r in w.requests_in_flight))
    return ReloadOutlook(len(spawned), sum(1 for w in spawned if w.requests_in_flight), held,
                         mercy)


def modes_text(o: ReloadOutlook, facts: ReloadFacts | None) -> Text:
    """Graceful's and chain's effect on the clients, in two short paragraphs."""
    mercy = f"{o.mercy:g} s" if o.mercy is not None else "the mercy"
    text = Text()
    text.append("graceful: ", "bold")
    if o.graceful_outage:
        which = ", ".join(str(i) for i in o.held_by[:4]) + ("…" if len(o.held_by) > 4 else "")
        # The colon right after the unit: the banner's closing pad made it "15 s :".
        text.append(f" NO WORKER SERVING for up to {mercy}", "bold reverse red")
        who = f"workers {which} are" if len(o.held_by) > 1 else f"worker {which} is"
        text.append(":")
        text.append(f" all {o.workers} stop at once and none respawns until {who} cut; "
                    "requests wait in the listen queue, and once it is full nginx answers "
                    "502 (504 after its connect timeout on TCP).")
    elif o.busy:
        text.append(f"all {o.workers} replaced at once: none serves until the {o.busy} busy "
                    f"finish (at most {mercy}) and the app has started.")
    else:
        text.append(f"all {o.workers} replaced at once: none serves while the app starts.")
    text.append("\nchain: ", "bold")
    if facts is not None and not facts.chain_ok:
        text.append("not possible here (no master-fifo or touch-chain-reload in its config).")
    elif o.workers >= 2:
        total = f"{o.workers * o.mercy:g} s" if o.mercy is not None else f"{o.workers} mercies"
        text.append(f"one worker at a time, {o.workers - 1} of {o.workers} keep serving; each "
                    f"busy one gets {mercy} in its turn (up to {total} in all).")
    else:
        text.append("one worker: it stops like graceful.")
    return text


def choose_default(asked: str, o: ReloadOutlook, facts: ReloadFacts | None) -> str:
    """What Enter sends: what the user asked (R: graceful, C: chain), except graceful when it
    would leave no worker serving and the instance can chain (known from its config)."""
    if (asked == "graceful" and o.graceful_outage and o.workers >= 2 and facts is not None
            and facts.chain_ok):
        return "chain"
    return asked


class ReloadConfirm(ModalScreen[ReloadChoice | None]):
    DEFAULT_CSS = _CSS.format(name="ReloadConfirm")
    BINDINGS = [
        Binding("g", "choose('graceful')", "Graceful", show=False),
        Binding("enter", "choose_default", "Default", show=False),
        Binding("c", "choose('chain')", "Chain", show=False),
        Binding("escape,n,q", "cancel", "Cancel", show=False),
    ]
    LOOKUP_WAIT = 2.0  # seconds Enter waits for the facts before going on without them

    def __init__(self, host: str, inst: UwsgiInstance, now: float, default: str, *,
                 facts: ReloadFacts | None = None,
                 lookup: Callable[[], ReloadFacts | None] | None = None) -> None:
        """default: the mode asked for (R graceful, C chain). facts: the mercy and whether
        chain is possible; or lookup, a blocking call that reads them (run in a thread)."""
        super().__init__()
        self.host, self.inst, self.now, self.asked = visible(host), inst, now, default
        self.facts, self.lookup = facts, lookup
        self.pending = facts is None and lookup is not None
        self._enter_waits = False
        self._limit: int | None = None  # request lines that fit (None: a first estimate)

    @property
    def default(self) -> str:
        return choose_default(self.asked, self._outlook(), self.facts)

    def _outlook(self) -> ReloadOutlook:
        return outlook(self.inst, self.now, self.facts.mercy if self.facts else None)

    def compose(self) -> ComposeResult:
        title = Text.assemble("Reload uWSGI ", (visible(self.inst.address), "bold"), " on ",
                              (self.host, "bold"), "?")
        with Vertical():
            yield Static(title, classes="title")
            with Vertical(id="bottom"):  # docked: on screen however long the list is
                yield Static(self._keys_text(), id="keys", classes="keys")
            yield Static(UnitsKept(self._facts_text()), id="facts")
            if any(w.requests_in_flight for w in self.inst.workers):
                yield Static(Text("CUT: killed at mercy unless it ends first (it is stuck "
                                  "past --slow, or older than the mercy); young: cut too if "
                                  "still running then", style="dim"),
                             id="cut-head")
            yield Static(self._list_text(), id="requests")
        yield ModalKeys(self._key_pairs(enter="⏎"))

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit)

    def _fit(self) -> None:
        """As many request lines as the dialog has room for (its max-height is 90% of the
        screen), measured from what the other parts take once laid out."""
        dialog = self.query_one("#requests").parent
        assert dialog is not None
        others = sum(w.outer_size.height for w in dialog.children
                     if w.id != "requests")
        room = max(MIN_LIST, (self.size.height - 1) * 9 // 10 - 2 - others)  # -1: ModalKeys
        if room != self._limit:
            self._limit = room
            self.query_one("#requests", Static).update(self._list_text())

    def on_mount(self) -> None:
        if self.pending and self.lookup is not None:
            self.run_worker(self._look_up, thread=True, exit_on_error=False)
            self.set_timer(self.LOOKUP_WAIT, self._stop_waiting)

    def _look_up(self) -> None:
        assert self.lookup is not None
        try:
            facts = self.lookup()
        except Exception:  # the dialog works without them: it says "not known"
            facts = None
        self.app.call_from_thread(self._got_facts, facts)

    def _got_facts(self, facts: ReloadFacts | None) -> None:
        if not self.pending:
            return
        self.facts, self.pending = facts, False
        self._redraw()
        self.call_after_refresh(self._fit)
        if self._enter_waits:
            self.dismiss(ReloadChoice(self.default))

    def _stop_waiting(self) -> None:
        if self.pending:
            self._got_facts(None)

    def _redraw(self) -> None:
        if self.is_mounted:
            self.query_one("#facts", Static).update(UnitsKept(self._facts_text()))
            self.query_one("#requests", Static).update(self._list_text())
            self.query_one("#keys", Static).update(self._keys_text())
            self.query_one(ModalKeys).set_keys(self._key_pairs(enter="⏎"))

    def _facts_text(self) -> Text:
        inst, o = self.inst, self._outlook()
        text = Text(f"master {inst.master_pid}, {o.workers} workers, {o.busy} busy; ",
                    style="dim")
        text.append(_mercy_text(self.facts, self.pending), "bold")
        text.append("\n")
        text.append_text(modes_text(o, self.facts))
        if self.default != self.asked:
            text.append("\nEnter is chain here: graceful would leave no worker serving.",
                        "bold")
        return text

    def _list_text(self) -> Text:
        o = self.inst
        if not any(w.requests_in_flight for w in o.workers):
            return Text("no request in flight", style="dim")
        mercy = self.facts.mercy if self.facts else None
        limit = self._limit if self._limit is not None else list_rows(self.app.size.height)
        return request_lines(o, self.now, mercy, limit)

    def _keys_text(self) -> Text:
        return _keys(*self._key_pairs())

    def _key_pairs(self, enter: str = "Enter") -> list[tuple[str, str]]:
        """The keys, what Enter does first (it follows the default: chain when graceful
        would leave no worker serving)."""
        keys = [("g", "graceful"), ("c", "chain"), ("Esc", "cancel")]
        keys.sort(key=lambda k: k[0] != self.default[0])
        return [(f"{k}/{enter}" if k == self.default[0] else k, label) for k, label in keys]

    def action_choose(self, mode: str) -> None:
        self.dismiss(ReloadChoice(mode))

    def action_choose_default(self) -> None:
        if self.pending:  # the facts decide what Enter means: a moment, at most LOOKUP_WAIT
            self._enter_waits = True
            return
        self.dismiss(ReloadChoice(self.default))

    def action_cancel(self) -> None:
        self.dismiss(None)

"""Following a reload worker by worker, from successive stats samples.

uWSGI has no "reloading" flag in its stats (docs/reference.md §2): what a reload looks like
from outside is workers changing pid. Graceful (`r`): idle workers exit at once (pid 0), busy
ones keep their pid and request until they finish or worker-reload-mercy runs out ("NO MERCY"
SIGKILL), then all come back with new pids; the master re-execs, so the stats server may vanish
for a moment. Chain (`c`): one worker at a time, in id order, each replaced before the next.

ReloadTracker turns that into per-worker states with a countdown against the mercy, so the
screen can say which request the reload is waiting for and when its mercy runs out. A worker's
mercy clock starts when it is asked to stop (graceful: all at once; chain: at its turn), and a
request is cut only if it still runs then: no one can say so before, only count it after.

A chain turn begins when uWSGI's does (core/master_checks.c, uwsgi_master_check_chain): once the
previous worker's new process is *accepting* (its app loaded), not when its new pid appears. An
app that takes 20 s to import would otherwise start the next worker's countdown 20 s before
uWSGI asks that worker to stop, and predict cuts that never come.

How long to follow depends on the mode: a graceful reload is over within one mercy (every busy
worker gets the same one), a chain reload gives each worker its own mercy in turn, so it can
take workers x mercy (4 workers, mercy 15 s: a minute). Following a chain reload only for one
mercy left the screen frozen on a countdown that had long run out while the reload went on.
When following does stop before the end, the last progress says so (`stopped`, its message
"stopped following after N s: K of M workers replaced; check ..."), countdowns cleared: a
countdown nobody updates any more is a lie.

A worker with several threads (or cores) can be finishing several requests, and its mercy cuts
all that still run: each WorkerReload carries every one (`requests`, oldest first), not only
the oldest, so that nobody learns of the second request from nginx's 502 only.

How long no worker served (none of the new ones up, no old one still taking requests: see
serving_count) is the tracker's figure too: the view says "NO WORKER SERVING for 12 s" while it
lasts, and the done line "no worker was serving for 12.4 s" after, from the same samples.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from stackmon.actions.audit import AuditLog, current_actor
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.actions.kill import confirmed_master
from stackmon.actions.reload import plan_for
from stackmon.model import Request, SourceError, Thresholds, UwsgiInstance, Worker
from stackmon.sources.uwsgi_stats import poll_stats

if TYPE_CHECKING:  # the model imports the logs; only annotations here
    from stackmon.logs.host import LogSummary

WorkerState = Literal["replaced", "draining", "killing", "exited", "stopping", "waiting", "gone"]
KILL_SOON = 3.0  # seconds before mercy runs out when a draining worker counts as "killing"
TURN_SLACK = 2.0  # per chain turn, past its mercy: the master's once-a-second check, a respawn
MARGIN = 30.0  # past the mode's own worst case, before following gives up
# How close to its mercy's end a worker must have been last seen busy for its requests to count
# as cut when it then went (at least this, or the gap between two looks if longer).
CUT_LOOK = 1.0


@dataclass(frozen=True, slots=True)
class WorkerReload:
    id: int
    old_pid: int
    pid: int
    state: WorkerState
    request: Request | None = None  # what a draining worker is finishing: the oldest
    # Every request it is finishing, oldest first (a worker with 2 threads can hold 2, and its
    # mercy cuts both). Empty where only `request` was given: see in_flight.
    requests: tuple[Request, ...] = ()
    countdown: float | None = None  # seconds until mercy runs out (draining/killing)
    replaced_after: float | None = None  # seconds from the reload's start
    # Requests in flight when its mercy ran out (seen busy at the last look before, then gone):
    # what the reload cut. unsure: it went after its mercy, busy when last seen, but that look
    # was too long before the end to tell whether its requests were still running.
    cut: int = 0
    unsure: bool = False

    @property
    def in_flight(self) -> tuple[Request, ...]:
        """Every request this worker is finishing, oldest first (`request` alone when that
        is all a producer gave)."""
        if self.requests:
            return self.requests
        return () if self.request is None else (self.request,)


@dataclass(frozen=True, slots=True)
class ReloadProgress:
    mode: str
    mercy: float
    elapsed: float
    workers: tuple[WorkerReload, ...]
    stats_available: bool
    done: bool
    message: str
    # Following stopped before every worker was replaced (its deadline, or it failed): the
    # figures are the last ones seen, and nothing will update them any more.
    stopped: bool = False
    # When (seconds into the reload) the current stretch with no worker serving began (None:
    # some worker serves), and how long no worker served in all, this stretch included.
    none_serving_since: float | None = None
    none_serving_s: float = 0.0
    # When the reload was sent, epoch seconds on the host's clock (0.0: not known): where a
    # count of what nginx answered during it begins (AnswerTally).
    started_at: float = 0.0

    @property
    def replaced(self) -> int:
        return sum(1 for w in self.workers if w.state == "replaced")

    @property
    def cut(self) -> int:
        """Requests the reload cut so far: in flight when their worker's mercy ran out."""
        return sum(w.cut for w in self.workers)


@dataclass(frozen=True, slots=True)
class ReloadFacts:
    """What the confirmation needs to say before a reload: the mercy each busy request gets
    (and where it is set), and whether a chain reload can be sent at all."""

    mercy: float
    mercy_source: str  # "file:line" or "uWSGI default"
    chain_ok: bool  # a master FIFO or a touch-chain-reload file


def reload_facts(target: ActionTarget, inst: UwsgiInstance) -> ReloadFacts | None:
    """The instance's reload facts from its own configuration, read as reload_uwsgi reads it
    (the master confirmed by the kernel first); None when they cannot be read (a master not
    confirmed, no rights). Blocking (/proc and the ini files): call it from a thread. Hosts
    offer it as Host.reload_facts (an agent's host: None, its agent reads them on reload)."""
    try:
        confirmed_master(inst, target)
        plan = plan_for(inst)
    except (ActionError, OSError):
        return None
    return ReloadFacts(plan.mercy, plan.mercy_source,
                       chain_ok=plan.fifo is not None or plan.touch_chain is not None)


def follow_deadline(mode: str, mercy: float, workers: int, margin: float = MARGIN) -> float:
    """Seconds after the reload's start to stop following it: the longest the mode can take,
    plus `margin`. Graceful: every busy worker shares one mercy. Chain: one worker at a time,
    each with its own mercy (and a respawn) before the next begins."""
    if mode == "chain":
        return max(1, workers) * (mercy + TURN_SLACK) + margin
    return mercy + margin


def stopped_progress(p: ReloadProgress, why: str = "") -> ReloadProgress:
    """`p` marked as the last word: following ended before the reload did. Countdowns and
    "killing" soon are dropped (nobody will update them); the message says how far it got
    and where to look instead."""
    if p.done:
        return p
    workers = tuple(replace(w, countdown=None,
                            state="draining" if w.state == "killing" else w.state)
                    for w in p.workers)
    reason = f" ({why})" if why else ""
    none = f"; {none_serving_said(p.none_serving_s)}" if p.none_serving_s else ""
    message = (f"stopped following after {p.elapsed:.0f} s{reason}: {p.replaced} of "
               f"{len(p.workers)} workers replaced{none}; check the workers' pids (stackmon "
               "snapshot) and the uWSGI log for the rest of the reload")
    return replace(p, workers=workers, message=message, stopped=True,
                   none_serving_since=None)


def serving_count(mode: str, workers: tuple[WorkerReload, ...] | list[WorkerReload]) -> int:
    """Workers that take new requests now: the new ones (replaced, with a pid), and in a chain
    reload the old ones still waiting their turn. A draining worker finishes its requests and
    takes no other; an exited one has no process."""
    return sum(1 for w in workers
               if (w.state == "replaced" and w.pid) or (mode == "chain" and w.state == "waiting"))


def none_serving_said(seconds: float) -> str:
    """ "no worker was serving for 12.4 s": the whole outage the samples saw, in one clause
    (tenths, as the reload's own "replaced in 16.7 s": whole seconds said "for 17 s" there)."""
    return f"no worker was serving for {seconds:.1f} s"


# What nginx answers while a reload keeps uWSGI from accepting, by the error log's cause
# (stackmon.logs.nginx_errors): the status the client gets, and how the view names it.
CAUSE_STATUS = {"queue_full": ("502", "queue full"), "refused": ("502", "refused"),
                "closed_mid_request": ("502", "cut mid-request"),
                "no_live_upstreams": ("502", "no live upstreams"),
                "connect_timeout": ("504", "connect timeout"),
                "read_timeout": ("504", "read timeout")}
ANSWER_KEYS = ("502", "504")


@dataclass(frozen=True, slots=True)
class ClientAnswers:
    """502s and 504s nginx's access log shows since a reload began (the whole host's, as its
    log is), with the error log's causes of them. whole: counted from a read before the reload
    began, with no reset of the log's counters in between (False: at least this many). final:
    a read after the reload's end is counted, nothing more is added."""

    counts: tuple[tuple[str, int], ...]
    causes: tuple[tuple[str, int], ...] = ()
    whole: bool = True
    final: bool = False

    def count(self, status: str) -> int:
        return dict(self.counts).get(status, 0)


class AnswerTally:
    """Counts what nginx answered during one reload from the host's successive log summaries
    (LogSummary: monotonic totals since stackmon began following the logs), differenced from
    the last summary read before the reload was sent (`before`).

    The view counted nothing: it said "nginx gets no answer" for 16 s in which nginx's access
    log had 2 to 6 502s a second (a full unix-socket queue: connect() fails with EAGAIN, nginx
    answers 502 at once). Lines are read once a poll, so 502s logged between the `before` read
    and the reload's start (up to one poll interval) are counted too; a read after the end
    closes the count (`finish`)."""

    def __init__(self, started_at: float, before: LogSummary | None = None) -> None:
        self.started_at = started_at
        self._prev: dict[str, int] | None = None
        self._got: dict[str, int] = {}
        self._whole = True
        self._ended_at: float | None = None
        self._final = False
        if before is not None:
            self.add(before)

    def finish(self, ended_at: float) -> None:
        """The reload ended at `ended_at` (the host's clock): the first read at or after it is
        the last counted."""
        if self._ended_at is None:
            self._ended_at = ended_at

    def add(self, logs: LogSummary | None) -> None:
        """One poll's summary. A summary without access-log totals (no access log followed,
        or not read this time) adds nothing; counters that went down (the logs were opened
        anew, and a new follow counts its backfill again) make the count a lower bound."""
        if self._final or logs is None or not logs.status_totals:
            return
        now = _totals_of(logs)
        if self._prev is None:
            self._whole = logs.taken_at <= self.started_at
        elif any(n < self._prev.get(k, 0) for k, n in now.items()):
            self._whole = False
        else:
            for key, n in now.items():
                if n > self._prev.get(key, 0):
                    self._got[key] = self._got.get(key, 0) + n - self._prev.get(key, 0)
        self._prev = now
        if self._ended_at is not None and logs.taken_at >= self._ended_at:
            self._final = True

    def answers(self) -> ClientAnswers | None:
        """The count so far; None when no summary with access-log totals came."""
        if self._prev is None:
            return None
        counts = tuple((k, self._got.get(k, 0)) for k in ANSWER_KEYS)
        causes = tuple((c, self._got[c]) for c in CAUSE_STATUS if self._got.get(c))
        return ClientAnswers(counts, causes, whole=self._whole, final=self._final)


def _totals_of(logs: LogSummary) -> dict[str, int]:
    """The access log's 502 and 504 totals and the error log's by cause (every upstream), in
    one map: causes and statuses have different names."""
    totals = {k: n for k, n in logs.status_totals if k in ANSWER_KEYS}
    for cause, _upstream, n in logs.upstream_totals:
        if cause in CAUSE_STATUS:
            totals[cause] = totals.get(cause, 0) + n
    return totals


def answers_said(a: ClientAnswers, done: bool) -> str:
    """ "clients got 502 ×47 (queue full ×45, cut mid-request ×2) since the reload began":
    what nginx's access log says (a status with none left out), the error log's causes beside
    each status; "clients got no 502 or 504" when there were none."""
    when = "during it" if done else "since the reload began"
    if done and not a.final:
        when += ", so far"
    if not any(n for _k, n in a.counts):
        partial = "" if a.whole else " (partly counted: the logs' count began late or reset)"
        return f"clients got no 502 or 504 {when}{partial}"
    least = "" if a.whole else "at least "
    parts = []
    for status, n in a.counts:
        if not n:  # "504 ×0" beside 47 502s is noise
            continue
        why = ", ".join(f"{CAUSE_STATUS[c][1]} ×{m}" for c, m in a.causes
                        if CAUSE_STATUS[c][0] == status)
        parts.append(f"{status} ×{n}" + (f" ({why})" if why else ""))
    return f"clients got {least}{', '.join(parts)} {when}"


@dataclass(frozen=True, slots=True)
class _Look:
    """An old worker as last seen, still with its old pid."""

    at: float
    requests: int  # in flight then
    deadline: float | None  # when its mercy runs out (None: its clock had not started)
    gap: float  # seconds since the look before: how far apart the looks are


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


class ReloadTracker:
    """Feed it each new sample with `update(instance_or_None, now)`; it keeps the timeline.

    A worker's mercy clock starts when it is asked to stop: every worker at once in a graceful
    reload, each one when its turn comes in a chain (the previous one replaced). Only a worker
    whose clock runs gets a countdown. A request is cut only if it still runs when that clock
    runs out, which nobody can know before: what the tracker counts, afterwards, is the
    requests seen in flight at a worker's last look near its mercy's end when the worker then
    went (NO MERCY kills it at that moment; a worker whose request ends exits at once, before)."""

    def __init__(self, workers_before: Mapping[int, int], mode: str, mercy: float,
                 started_at: float) -> None:
        """workers_before: worker id -> pid just before the reload was sent."""
        self.mode = mode
        self.mercy = mercy
        self.started_at = started_at
        self.old = dict(workers_before)
        self.old_pids = set(self.old.values()) - {0}
        self.replaced_at: dict[int, float] = {}
        self._turn_started = started_at  # chain: when the current worker's turn began
        # chain: the worker whose new process must accept before the next turn begins
        self.loading: int | None = None
        self.progress_at = started_at  # the last replacement or turn: the reload moves
        self.finished_at: float | None = None
        self._looks: dict[int, _Look] = {}  # old worker id -> its last look with the old pid
        self._went: set[int] = set()  # old pid seen gone
        self._cut: dict[int, int] = {}  # old worker id -> requests in flight at its mercy
        self._unsure: set[int] = set()  # went after its mercy; last look too early to tell
        self._last_sample: float | None = None
        self._seen = False  # a sample with stats came: a None one before tells nothing
        self._none_since: float | None = None  # elapsed when no worker served, this stretch
        self._none_before = 0.0  # seconds no worker served in the stretches that ended

    def _deadline(self, wid: int) -> float | None:
        """When `wid`'s mercy runs out, if its clock has started."""
        if self.mode != "chain":
            return self.started_at + self.mercy
        if self.loading is not None or not self._is_current(wid):
            return None
        return self._turn_started + self.mercy

    def update(self, inst: UwsgiInstance | None, now: float) -> ReloadProgress:
        elapsed = now - self.started_at
        gap = 0.0 if self._last_sample is None else now - self._last_sample
        self._last_sample = now
        if inst is None:
            if self.mode != "chain":  # graceful: the master re-execs once every old worker
                for wid in self._looks.keys() - self._went:  # has exited
                    self._gone(wid, now)
            gone = tuple(self._judged(WorkerReload(
                wid, pid, 0, "replaced" if wid in self.replaced_at else "gone",
                replaced_after=self.replaced_at.get(wid))) for wid, pid in self.old.items())
            since, total = self._serving(gone, elapsed, done=False, known=self._seen)
            return ReloadProgress(
                self.mode, self.mercy, elapsed, gone, stats_available=False, done=False,
                message="the master is re-executing: stats unavailable for a moment",
                none_serving_since=since, none_serving_s=total, started_at=self.started_at)
        self._seen = True
        live = {w.id: w for w in inst.workers}
        for wid, now_w in live.items():
            if (wid in self.old and wid not in self.replaced_at
                    and now_w.pid not in (0, *self.old_pids)):
                self.replaced_at[wid] = elapsed
                self.progress_at = now
                self.loading = wid
        if self.loading is not None and self._ready(live.get(self.loading)):
            self.loading = None
            self._turn_started = self.progress_at = now
        self._look(live, now, gap)
        states = [self._state(wid, old_pid, live.get(wid), now)
                  for wid, old_pid in self.old.items()]
        done = bool(states) and all(s.state == "replaced" for s in states)
        if done and self.finished_at is None:
            self.finished_at = now
        since, total = self._serving(states, elapsed, done)
        return ReloadProgress(self.mode, self.mercy, elapsed, tuple(states), True, done,
                              self._message(states, done, now, total),
                              none_serving_since=since, none_serving_s=total,
                              started_at=self.started_at)

    def _serving(self, states: tuple[WorkerReload, ...] | list[WorkerReload], elapsed: float,
                 done: bool, known: bool = True) -> tuple[float | None, float]:
        """(when the current stretch with no worker serving began, seconds none served in all).
        A stretch runs from the first sample that sees no worker serving to the first that
        sees one again (each end late by up to one interval: the two errors cancel out). A
        sample before any with stats (the one follow_reload takes as it starts) tells nothing:
        `known` False leaves the figures as they are."""
        if known and (done or serving_count(self.mode, states)):
            if self._none_since is not None:
                self._none_before += elapsed - self._none_since
                self._none_since = None
        elif known and self._none_since is None:
            self._none_since = elapsed
        now_for = 0.0 if self._none_since is None else elapsed - self._none_since
        return self._none_since, self._none_before + now_for

    def _ready(self, w: Worker | None) -> bool:
        """Whether uWSGI would go on to the next worker: the new process accepts (serving
        shows it too), or it is gone again (pid 0: uWSGI does not wait for a dead worker)."""
        return w is None or w.pid == 0 or w.accepting or w.busy

    def _look(self, live: Mapping[int, Worker], now: float, gap: float) -> None:
        """Note each old worker still on its old pid (busy or not, its mercy's end), and judge
        those whose old pid is gone now."""
        for wid, old_pid in self.old.items():
            w = live.get(wid)
            if wid in self._went or w is None:  # not in the stats: that tells nothing
                continue
            if old_pid and w.pid == old_pid:
                busy = len(w.requests_in_flight) or int(w.busy)
                self._looks[wid] = _Look(now, busy, self._deadline(wid), gap)
            else:
                self._gone(wid, now)

    def _gone(self, wid: int, now: float) -> None:
        """`wid`'s old pid is seen gone at `now`: were requests cut by its mercy? Only if it was
        busy at its last look, went after its mercy ran out, and that look was near the end
        (a request that ends lets its worker exit at once, before the mercy)."""
        self._went.add(wid)
        look = self._looks.get(wid)
        if look is None or not look.requests or look.deadline is None or now < look.deadline:
            return
        if look.at + max(CUT_LOOK, look.gap) >= look.deadline:
            self._cut[wid] = look.requests
        else:
            self._unsure.add(wid)

    def _judged(self, w: WorkerReload) -> WorkerReload:
        """`w` with what its mercy cut, once its old pid is gone."""
        if w.id not in self._went:
            return w
        return replace(w, cut=self._cut.get(w.id, 0), unsure=w.id in self._unsure)

    def _state(self, wid: int, old_pid: int, w: Worker | None, now: float) -> WorkerReload:
        if wid in self.replaced_at:
            return self._judged(WorkerReload(wid, old_pid, w.pid if w else 0, "replaced",
                                             replaced_after=self.replaced_at[wid]))
        if w is None:
            return self._judged(WorkerReload(wid, old_pid, 0, "gone"))
        if w.pid == 0:
            return self._judged(WorkerReload(wid, old_pid, 0, "exited"))
        deadline = self._deadline(wid)
        requests = _by_age(w) if w.busy else ()
        if deadline is None:  # chain, not its turn yet: no clock, no countdown
            return WorkerReload(wid, old_pid, w.pid, "waiting", request=_first(requests),
                                requests=requests)
        if not w.busy:  # asked to stop, idle: it exits at once
            return WorkerReload(wid, old_pid, w.pid, "stopping")
        left = deadline - now
        return WorkerReload(wid, old_pid, w.pid, "killing" if left <= KILL_SOON else "draining",
                            request=_first(requests), requests=requests, countdown=left)

    def _is_current(self, wid: int) -> bool:
        pending = sorted(w for w in self.old if w not in self.replaced_at)
        return bool(pending) and pending[0] == wid

    def _message(self, states: list[WorkerReload], done: bool, now: float,
                 none_serving: float = 0.0) -> str:
        total = len(states)
        n = sum(1 for s in states if s.state == "replaced")
        if done:
            took = (self.finished_at or now) - self.started_at
            none = f"{none_serving_said(none_serving)}; " if none_serving else ""
            return (f"{self.mode} reload done: {total} workers replaced in {took:.1f} s; "
                    f"{none}{cut_summary(states)}")
        draining = [s for s in states if s.state in ("draining", "killing")]
        text = f"{self.mode} reload: {n}/{total} workers replaced"
        if self.loading is not None and self.mode == "chain" and n < total:
            text += (f"; worker {self.loading}'s new process is loading the app (the next "
                     "worker is asked to stop once it accepts)")
        if draining:
            worst = min(s.countdown or 0 for s in draining)
            held = sum(len(s.in_flight) for s in draining)
            what = ("a request" if held <= len(draining)
                    else f"{held} {_plural(held, 'request', 'requests')}")
            text += (f"; {len(draining)} finishing {what}, mercy runs out in "
                     f"{max(0.0, worst):.0f} s")
        return text


def _by_age(w: Worker) -> tuple[Request, ...]:
    """Every request `w` is finishing, the oldest first (ties: in core order)."""
    return tuple(sorted(w.requests_in_flight, key=lambda r: -(r.running_s or 0)))


def _first(requests: tuple[Request, ...]) -> Request | None:
    return requests[0] if requests else None


def cut_summary(workers: tuple[WorkerReload, ...] | list[WorkerReload]) -> str:
    """What the reload cut, as far as the looks tell: "2 requests were in flight when their
    worker's mercy ran out (workers 3, 4)", or that none was."""
    cut = [w for w in workers if w.cut]
    unsure = [w for w in workers if w.unsure]
    parts: list[str] = []
    if cut:
        n = sum(w.cut for w in cut)
        ids = ", ".join(str(w.id) for w in cut)
        parts.append(f"{n} {_plural(n, 'request was', 'requests were')} in flight when "
                     f"{_plural(n, 'its', 'their')} worker's mercy ran out "
                     f"({_plural(len(cut), 'worker', 'workers')} {ids})")
    if unsure:
        ids = ", ".join(str(w.id) for w in unsure)
        parts.append(f"whether {_plural(len(unsure), 'worker', 'workers')} {ids} "
                     f"{_plural(len(unsure), 'was', 'were')} cut is unknown (last seen busy "
                     "well before the mercy ran out)")
    return "; ".join(parts) or "no request was cut at mercy"


async def follow_reload(target: ActionTarget, result: ActionResult,
                        on_progress: Callable[[ReloadProgress], None] | None = None, *,
                        audit: AuditLog | None = None, actor: str = "",
                        interval: float = 0.5, margin: float = MARGIN,
                        sample: Callable[[], Awaitable[UwsgiInstance | None]] | None = None,
                        ) -> ReloadProgress:
    """Sample the instance until every worker is replaced (or the mode's longest time plus
    margin has passed: follow_deadline), reporting each step; the outcome and its duration go
    to the audit log. Stopping before the end returns (and reports) a `stopped` progress.

    sample: how to get the instance now (None while it cannot be read); by default its stats
    server at target.address (an agent host passes a sampler of the agent's snapshots)."""

    async def from_stats() -> UwsgiInstance | None:
        got = await poll_stats(target.address, Thresholds(), timeout=target.timeout)
        return None if isinstance(got, SourceError) else got

    sample = sample or from_stats
    data = result.data
    tracker = ReloadTracker({int(w["id"]): int(w["pid"]) for w in data["workers"]},
                            data["mode"], float(data["mercy"]), float(data["started_at"]))
    limit = follow_deadline(tracker.mode, tracker.mercy, len(tracker.old), margin)
    deadline = tracker.started_at + limit
    progress = tracker.update(None, time.time())
    while True:
        inst = await sample()
        now = time.time()
        progress = tracker.update(inst, now)
        if on_progress is not None:
            on_progress(progress)
        if tracker.mode == "chain":  # each turn also waits for an app to load: while the
            # chain moves, give the current turn its whole mercy
            deadline = max(deadline, tracker.progress_at + tracker.mercy + TURN_SLACK + margin)
        if progress.done or now > deadline:
            break
        await asyncio.sleep(interval)
    if not progress.done:
        progress = stopped_progress(progress, f"the limit for a {tracker.mode} reload of "
                                              f"{len(tracker.old)} workers is "
                                              f"{deadline - tracker.started_at:.0f} s")
        if on_progress is not None:
            on_progress(progress)
    log = audit if audit is not None else AuditLog.default()
    outcome = "ok" if progress.done else "timed out"
    message = progress.message
    log.record(host=target.host, action=f"reload {tracker.mode}", actor=actor or current_actor(),
               outcome=outcome, message=message, seconds=round(progress.elapsed, 1),
               instance=str(target.address) if target.address else None)
    return progress

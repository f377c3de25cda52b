"""Kill one stuck uWSGI worker, safely, and wait for the master to respawn it.

The order of checks is the point (docs/reference.md §2):
1. read-only callers are refused before anything is read;
2. a fresh stats sample must still show the worker with the pid the user saw (a respawned
   worker has a new pid: killing "worker 3" blindly would abort an innocent request);
3. the master is confirmed by the kernel (stackmon.trust): the process holding the stats
   socket's listener must be the pid the stats name, on this host (a remote master's pid means
   nothing here); nothing the stats or a process's name says is believed on its own;
4. the pid must be a child of that master, of its user (any user under a root master), started
   when the stats say the worker was spawned;
5. SIGTERM aborts the request; if the worker has not died after a short grace it gets SIGKILL.
   Before every signal the target is checked again through a pidfd: same start time, same
   parent (stackmon.trust.signal_checked), so a reused pid or a reparented process is never hit;
6. the respawn is confirmed from the stats: a new pid for the same worker id.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as _signal
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import psutil

from stackmon.actions.audit import AuditLog, current_actor
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.model import (
    Request,
    RequestKey,
    SourceError,
    Thresholds,
    UwsgiInstance,
    Worker,
)
from stackmon.redact import visible
from stackmon.sources.uwsgi_stats import poll_stats
from stackmon.trust import (
    ConfirmedMaster,
    Identity,
    Refusal,
    confirm_master,
    identity,
    process_ids,
    signal_checked,
)
from stackmon.units import human_age

Signal = Literal["TERM", "KILL"]
SIGNALS: dict[str, int] = {"TERM": _signal.SIGTERM, "KILL": _signal.SIGKILL}
TERM_GRACE = 3.0  # seconds a worker gets to die on SIGTERM before SIGKILL
RESPAWN_WAIT = 6.0  # the master respawns in ~150 ms, or sleeps 2 s in a respawn storm
SPAWN_SLACK = 2.0  # last_spawn is whole seconds and written a moment after fork()


async def fetch_instance(target: ActionTarget) -> UwsgiInstance:
    inst = await poll_stats(target.address, Thresholds(), timeout=target.timeout)
    if isinstance(inst, SourceError):
        raise ActionError("gone", f"cannot read uWSGI stats at {target.address}: "
                                  f"{inst.message}; nothing was done")
    return inst


def confirmed_master(inst: UwsgiInstance, target: ActionTarget) -> ConfirmedMaster:
    """The instance's master as the kernel confirms it (stackmon.trust), or a refusal saying
    why: the stats' "pid" is believed only if that process holds the stats listener."""
    got = confirm_master(target.address, inst.master_pid)
    if isinstance(got, Refusal):
        raise ActionError(got.kind, f"{got.message}; nothing was done")
    return got


def no_process_message(worker: Worker, expect_pid: int = 0) -> str:
    """Why a worker without a process cannot be signalled: cheaper mode has not spawned it, or
    it died and the master has not respawned it yet. Worker ids are positions (model.Worker),
    so "worker 3" here is the row the user chose, even when the document says id 0."""
    why = "cheap: not spawned" if worker.cheap else f"{worker.status or 'no status'}: dead, " \
        "waiting for its respawn"
    was = f"; pid {expect_pid} is gone" if expect_pid else ""
    return f"worker {worker.id} has no process ({why}){was}; nothing was done"


def request_summary(w: Worker) -> list[dict[str, Any]]:
    return [{"core": r.core, "method": r.method, "uri": r.uri, "running_s": r.running_s}
            for r in w.requests_in_flight]


def kill_meant_for(requests: Mapping[RequestKey, Request]) -> tuple[RequestKey, ...]:
    """The requests a confirmed kill is for: the stuck ones (past --slow) when there are any,
    else every one the user was shown. The kill is refused when one of them has ended by its
    own stats read (check_requests): the user meant to stop it, and killing then only aborts
    what came after. Short requests beside a stuck one are not held to that: on a worker whose
    other threads serve, they end within the second, and the stack capture before a kill
    alone takes about a second, so a kill that waited for them would never go through."""
    stuck = tuple(k for k, r in requests.items() if r.level != "ok")
    return stuck or tuple(requests)


def check_requests(worker: Worker, expect: Sequence[RequestKey], now: float) -> None:
    """Refuse (kind ended) when a request the kill is for is no longer in flight in the
    sample the kill acts on: the poll the user decided on is up to an interval old, and a
    stack capture takes a second more. A request that arrived since does not refuse it: the
    user was shown arrivals, and the kill aborts whatever is in flight at its moment."""
    live = worker.requests_by_key()
    ended = [k for k in expect if k not in live]
    if not ended:
        return
    said = ", ".join(f"core {core}" + (f", started {human_age(max(0.0, now - start))} ago"
                                        if start else "")
                     for core, _, start in ended[:3])
    what = "the request" if len(expect) == 1 else f"{len(ended)} of the {len(expect)} requests"
    still = ", ".join(visible(f"core {r.core} {r.method} {r.uri}")[:80] for r in live.values())
    raise ActionError("ended", f"{what} the kill was for ended since you looked ({said}); in "
                               f"flight now: {still or 'nothing'}; nothing was done")


def verify_worker(inst: UwsgiInstance, target: ActionTarget, worker_id: int, expect_pid: int,
                  expect_spawn: float | None) -> tuple[Worker, psutil.Process, Identity]:
    """The live worker process, if and only if it is the one the caller saw: a child of the
    confirmed master, of the master's user (or any user under a root master), started when
    the stats say the worker was spawned. The Identity is re-checked before every signal."""
    worker = next((w for w in inst.workers if w.id == worker_id), None)
    if worker is None:
        raise ActionError("not_found", f"{target.address} has no worker {worker_id}")
    if not worker.spawned:
        raise ActionError("gone", no_process_message(worker, expect_pid))
    if worker.pid != expect_pid:
        now = f"pid {worker.pid}" if worker.pid else "no process (respawning)"
        raise ActionError("stale", f"worker {worker_id} is now {now}, not pid {expect_pid}: it "
                                   "was replaced since you looked; nothing was done")
    if expect_spawn is not None and abs(worker.last_spawn - expect_spawn) > SPAWN_SLACK:
        raise ActionError("stale", f"worker {worker_id} was respawned since you looked; "
                                   "nothing was done")
    master = confirmed_master(inst, target)
    ident = identity(expect_pid)
    ids = process_ids(expect_pid)
    if ident is None or ids is None:
        raise ActionError("gone", f"pid {expect_pid} has already exited; nothing was done")
    if ident.ppid != master.pid:
        raise ActionError("not_worker", f"pid {expect_pid} is not a worker of the uWSGI master "
                                        f"{master.pid} (its parent is {ident.ppid}); refusing "
                                        "to signal it")
    if master.uid != 0 and not master.owns(ids[0]):
        raise ActionError("not_worker", f"pid {expect_pid} runs as uid {ids[0]}, not as the "
                                        f"uWSGI master's user ({master.uid}); refusing to "
                                        "signal it")
    if not worker.last_spawn:
        raise ActionError("stale", f"the stats give no spawn time for worker {worker_id}, so "
                                   f"pid {expect_pid} cannot be confirmed as it; nothing was "
                                   "done")
    if abs(ident.start_time - worker.last_spawn) > SPAWN_SLACK:
        raise ActionError("stale", f"pid {expect_pid} started at {ident.start_time:.0f}, not "
                                   f"when worker {worker_id} was spawned "
                                   f"({worker.last_spawn:.0f}): the pid was reused; nothing was "
                                   "done")
    try:
        proc = psutil.Process(expect_pid)
    except psutil.Error:
        raise ActionError("gone", f"pid {expect_pid} has already exited; nothing was done") \
            from None
    if proc.create_time() != ident.start_time:
        raise ActionError("stale", f"pid {expect_pid} was replaced while it was being checked; "
                                   "nothing was done")
    return worker, proc, ident


def _send(pid: int, ident: Identity, sig: int) -> None:
    """Signal the worker if it is still the process checked (same start time, same parent);
    one that has exited meanwhile is fine (it is what we wanted)."""
    got = signal_checked(pid, ident, sig)
    if isinstance(got, Refusal):
        raise ActionError(got.kind, got.message)


async def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.05)
    return False


async def _wait_respawn(target: ActionTarget, worker_id: int, old_pid: int,
                        timeout: float) -> Worker | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.15)
        inst = await poll_stats(target.address, Thresholds(), timeout=target.timeout)
        if isinstance(inst, SourceError):
            continue
        w = next((w for w in inst.workers if w.id == worker_id), None)
        if w is not None and w.pid not in (0, old_pid):
            return w
    return None


async def kill_worker(target: ActionTarget, worker_id: int, expect_pid: int,
                      signal: Signal = "TERM", *, expect_spawn: float | None = None,
                      usr2_first: bool = False, audit: AuditLog | None = None,
                      actor: str = "", grace: float = TERM_GRACE,
                      stack: dict[str, Any] | None = None,
                      expect_requests: Sequence[RequestKey] | None = None) -> ActionResult:
    """Kill worker `worker_id` of `target` if it still is `expect_pid` and (when given) still
    runs every request of `expect_requests` (kill_meant_for); wait for its respawn."""
    audit = audit if audit is not None else AuditLog.default()
    actor = actor or current_actor()
    action = f"kill {signal}" + (" after USR2" if usr2_first else "")
    base: dict[str, Any] = {"host": target.host, "action": action, "actor": actor,
                            "worker_id": worker_id, "target_pid": expect_pid,
                            "instance": str(target.address)}
    try:
        if signal not in SIGNALS:
            raise ActionError("bad_request", f"signal must be TERM or KILL, not {signal!r}")
        if target.read_only:
            raise ActionError("read_only", "read-only mode: actions are disabled")
        inst = await fetch_instance(target)
        worker, proc, ident = verify_worker(inst, target, worker_id, expect_pid, expect_spawn)
        if expect_requests:
            check_requests(worker, expect_requests, time.time())
    except ActionError as exc:
        audit.record(**base, outcome=f"refused: {exc.kind}", message=exc.message)
        raise
    requests = request_summary(worker)
    # Recorded before acting: an action that cannot be audited is not carried out.
    # `stack`: where the worker was stuck, captured just before (kill --stack, the TUI's
    # "capture first"): the kill destroys it, the post-mortem needs it in this very record.
    evidence: dict[str, Any] = {"stack": stack} if stack else {}
    audit.record(**base, outcome="started", request=requests[0] if requests else None,
                 requests=requests, **evidence)
    sent: list[str] = []
    started = time.monotonic()
    try:
        if usr2_first:
            _send(expect_pid, ident, _signal.SIGUSR2)
            sent.append("USR2")
            await asyncio.sleep(0.3)  # let the worker log its request and backtrace
            if expect_requests:  # and look again: 0.3 s is long enough for it to end
                again = await fetch_instance(target)
                now_worker = next((w for w in again.workers if w.id == worker_id), None)
                if now_worker is None or now_worker.pid != expect_pid:
                    raise ActionError("gone", f"worker {worker_id} is no longer pid "
                                              f"{expect_pid} after SIGUSR2; no SIGTERM sent")
                check_requests(now_worker, expect_requests, time.time())
        _send(expect_pid, ident, SIGNALS[signal])
        sent.append(signal)
        gone = await _wait_gone(proc, grace if signal == "TERM" else 2.0)
        if not gone and signal == "TERM":
            _send(expect_pid, ident, _signal.SIGKILL)
            sent.append("KILL")
            await _wait_gone(proc, 2.0)
    except ActionError as exc:
        audit.record(**base, outcome=f"failed: {exc.kind}", message=exc.message, signals=sent)
        raise
    with contextlib.suppress(psutil.Error):
        if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            msg = f"pid {expect_pid} is still alive after {', '.join(sent)}"
            audit.record(**base, outcome="failed", message=msg, signals=sent)
            raise ActionError("failed", msg)
    new = await _wait_respawn(target, worker_id, expect_pid, RESPAWN_WAIT)
    took = time.monotonic() - started
    data: dict[str, Any] = {"old_pid": expect_pid, "signals": sent,
                            # how many confirmed requests were checked in flight (an agent
                            # older than the check leaves it out: the client says so)
                            "requests_checked": len(expect_requests or ()),
                            "requests": requests, "seconds": round(took, 2),
                            "new_pid": new.pid if new else None,
                            "respawn_count": new.respawn_count if new else None}
    if new is None:
        msg = (f"worker {worker_id} (pid {expect_pid}) killed with {'+'.join(sent)}; no respawn "
               f"seen within {RESPAWN_WAIT:g} s")
        audit.record(**base, outcome="killed, no respawn seen", message=msg, **data)
        return ActionResult(ok=False, message=msg, data={"worker_id": worker_id, **data})
    msg = (f"worker {worker_id}: pid {expect_pid} killed with {'+'.join(sent)}, respawned as "
           # uWSGI's respawn_count counts the first spawn too: this is respawn #(count - 1)
           f"pid {new.pid} (respawn #{max(1, new.respawn_count - 1)}) in {took:.1f} s")
    audit.record(**base, outcome="ok", message=msg, **data)
    return ActionResult(ok=True, message=msg, data={"worker_id": worker_id, **data})

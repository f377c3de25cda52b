"""Kill one stuck uWSGI worker, safely, and wait for the master to respawn it.

The order of checks is the point (REFERENCE.md section 2):
1. read-only callers are refused before anything is read;
2. a fresh stats sample must still show the worker with the pid the user saw (a respawned
   worker has a new pid: killing "worker 3" blindly would abort an innocent request);
3. the pid must be a child of the instance's master, and a process of this host (a remote
   master's pid means nothing here), started when the stats say the worker was spawned;
4. SIGTERM aborts the request; if the worker has not died after a short grace it gets SIGKILL
   (re-checked to be the same process first: psutil refuses to signal a reused pid);
5. the respawn is confirmed from the stats: a new pid for the same worker id.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as _signal
import time
from typing import Any, Literal

import psutil

from stackmon.actions.audit import AuditLog, current_actor
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.model import SourceError, Thresholds, UwsgiInstance, Worker
from stackmon.sources.uwsgi_stats import poll_stats

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


def local_master(inst: UwsgiInstance, target: ActionTarget) -> psutil.Process:
    """The instance's master as a process of this host, or a refusal saying why not."""
    try:
        master = psutil.Process(inst.master_pid)
        name = master.name()
    except (psutil.NoSuchProcess, ValueError):
        raise ActionError("not_local", f"the uWSGI master of {target.address} (pid "
                                       f"{inst.master_pid}) is not a process of this host; act "
                                       "through that host's stackmon agent") from None
    except psutil.AccessDenied:
        raise ActionError("permission", f"not allowed to inspect pid {inst.master_pid}; run "
                                        "stackmon as the uWSGI user or root") from None
    if "uwsgi" not in name.lower():
        raise ActionError("not_local", f"pid {inst.master_pid} on this host is {name!r}, not the "
                                       f"uWSGI master of {target.address}; act through that "
                                       "host's stackmon agent")
    return master


def request_summary(w: Worker) -> list[dict[str, Any]]:
    return [{"core": r.core, "method": r.method, "uri": r.uri, "running_s": r.running_s}
            for r in w.requests_in_flight]


def verify_worker(inst: UwsgiInstance, target: ActionTarget, worker_id: int, expect_pid: int,
                  expect_spawn: float | None) -> tuple[Worker, psutil.Process]:
    """The live worker process, if and only if it is the one the caller saw."""
    worker = next((w for w in inst.workers if w.id == worker_id), None)
    if worker is None:
        raise ActionError("not_found", f"{target.address} has no worker {worker_id}")
    if worker.pid != expect_pid:
        now = f"pid {worker.pid}" if worker.pid else "no process (respawning)"
        raise ActionError("stale", f"worker {worker_id} is now {now}, not pid {expect_pid}: it "
                                   "was replaced since you looked; nothing was done")
    if expect_spawn is not None and abs(worker.last_spawn - expect_spawn) > SPAWN_SLACK:
        raise ActionError("stale", f"worker {worker_id} was respawned since you looked; "
                                   "nothing was done")
    master = local_master(inst, target)
    try:
        proc = psutil.Process(expect_pid)
        ppid, started = proc.ppid(), proc.create_time()
    except psutil.NoSuchProcess:
        raise ActionError("gone", f"pid {expect_pid} has already exited; nothing was done") \
            from None
    except psutil.AccessDenied:
        raise ActionError("permission", f"not allowed to inspect pid {expect_pid}") from None
    if ppid != master.pid:
        raise ActionError("not_worker", f"pid {expect_pid} is not a worker of the uWSGI master "
                                        f"{master.pid}; refusing to signal it")
    if worker.last_spawn and abs(started - worker.last_spawn) > SPAWN_SLACK:
        raise ActionError("stale", f"pid {expect_pid} started at {started:.0f}, not when worker "
                                   f"{worker_id} was spawned ({worker.last_spawn:.0f}): the pid "
                                   "was reused; nothing was done")
    return worker, proc


def _send(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)  # psutil checks the pid still names the same process
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        raise ActionError("permission", f"not allowed to signal pid {proc.pid}; run stackmon "
                                        "as the uWSGI user or root") from None


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
                      actor: str = "", grace: float = TERM_GRACE) -> ActionResult:
    """Kill worker `worker_id` of `target` if it still is `expect_pid`; wait for its respawn."""
    audit = audit if audit is not None else AuditLog.default()
    actor = actor or current_actor()
    action = f"kill {signal}" + (" after USR2" if usr2_first else "")
    base = {"host": target.host, "action": action, "actor": actor, "worker_id": worker_id,
            "target_pid": expect_pid, "instance": str(target.address)}
    try:
        if signal not in SIGNALS:
            raise ActionError("bad_request", f"signal must be TERM or KILL, not {signal!r}")
        if target.read_only:
            raise ActionError("read_only", "read-only mode: actions are disabled")
        inst = await fetch_instance(target)
        worker, proc = verify_worker(inst, target, worker_id, expect_pid, expect_spawn)
    except ActionError as exc:
        audit.record(**base, outcome=f"refused: {exc.kind}", message=exc.message)
        raise
    requests = request_summary(worker)
    # Recorded before acting: an action that cannot be audited is not carried out.
    audit.record(**base, outcome="started", request=requests[0] if requests else None,
                 requests=requests)
    sent: list[str] = []
    started = time.monotonic()
    try:
        if usr2_first:
            _send(proc, _signal.SIGUSR2)
            sent.append("USR2")
            await asyncio.sleep(0.3)  # let the worker log its request and backtrace
        _send(proc, SIGNALS[signal])
        sent.append(signal)
        gone = await _wait_gone(proc, grace if signal == "TERM" else 2.0)
        if not gone and signal == "TERM":
            _send(proc, _signal.SIGKILL)
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
                            "requests": requests, "seconds": round(took, 2),
                            "new_pid": new.pid if new else None,
                            "respawn_count": new.respawn_count if new else None}
    if new is None:
        msg = (f"worker {worker_id} (pid {expect_pid}) killed with {'+'.join(sent)}; no respawn "
               f"seen within {RESPAWN_WAIT:g} s")
        audit.record(**base, outcome="killed, no respawn seen", message=msg, **data)
        return ActionResult(ok=False, message=msg, data={"worker_id": worker_id, **data})
    msg = (f"worker {worker_id}: pid {expect_pid} killed with {'+'.join(sent)}, respawned as "
           f"pid {new.pid} (respawn #{new.respawn_count}) in {took:.1f} s")
    audit.record(**base, outcome="ok", message=msg, **data)
    return ActionResult(ok=True, message=msg, data={"worker_id": worker_id, **data})

"""Graceful and chain reloads of one uWSGI instance.

The instance's own configuration decides how: its master FIFO when it has one (found from the
master's command line and ini, REFERENCE.md section 2), else a signal to the master (SIGHUP is
a graceful reload; a chain reload has no signal, so it needs the FIFO or a
touch-chain-reload file). The reload parameters the progress view needs (worker-reload-mercy)
come from the same place, since the stats do not carry them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stackmon.actions.audit import AuditLog, current_actor
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.actions.kill import fetch_instance, local_master
from stackmon.model import SourceError, UwsgiInstance

Mode = Literal["graceful", "chain"]
FIFO_COMMAND = {"graceful": b"r", "chain": b"c"}
DEFAULT_MERCY = 60.0


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """How this instance can be reloaded, read from its own configuration."""

    fifo: str | None
    touch_chain: str | None
    mercy: float
    mercy_source: str  # "file:line" or "uWSGI default"


def plan_for(inst: UwsgiInstance) -> ReloadPlan:
    from stackmon.uwsgi_ini import instance_options, last

    options = instance_options(inst.master_pid)
    if isinstance(options, SourceError):
        raise ActionError("permission", f"cannot read the configuration of uWSGI master "
                                        f"{inst.master_pid}: {options.message}")
    cwd = _cwd(inst)
    fifo = next((o for o in options if o.key == "master-fifo"), None)  # the first is active
    touch = last(options, "touch-chain-reload")
    mercy_opt = last(options, "worker-reload-mercy")
    mercy, source = DEFAULT_MERCY, "uWSGI default"
    if mercy_opt is not None:
        with contextlib.suppress(ValueError):
            mercy, source = float(mercy_opt.value), f"{mercy_opt.file}:{mercy_opt.line}"
    return ReloadPlan(
        fifo=_abs(fifo.value, cwd) if fifo else None,
        touch_chain=_abs(touch.value, cwd) if touch else None,
        mercy=mercy, mercy_source=source,
    )


def _cwd(inst: UwsgiInstance) -> str:
    try:
        return os.readlink(f"/proc/{inst.master_pid}/cwd")
    except OSError:
        return inst.cwd or "/"


def _abs(path: str, cwd: str) -> str:
    return path if os.path.isabs(path) else os.path.join(cwd, path)


def _write_fifo(path: str, command: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except PermissionError:
        raise ActionError("permission", f"no permission to write the master FIFO {path} (mode "
                                        "0600: run stackmon as the uWSGI user or root)") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise ActionError("gone", f"nobody reads the master FIFO {path}: is the master "
                                      "alive?") from None
        raise ActionError("failed", f"cannot open the master FIFO {path}: {exc.strerror}") \
            from None
    try:
        os.write(fd, command)
    except OSError as exc:  # a full pipe (the master is not reading) or a vanished reader
        raise ActionError("failed", f"cannot write to the master FIFO {path}: "
                                    f"{exc.strerror or exc}") from None
    finally:
        os.close(fd)


async def reload_uwsgi(target: ActionTarget, mode: Mode = "graceful", *,
                       audit: AuditLog | None = None, actor: str = "",
                       expect_master: int | None = None) -> ActionResult:
    """Start a reload and return at once; follow it with ReloadTracker on new samples.

    The result's data carries what the progress view needs: the workers before the reload,
    the mercy and where it came from, the method used and the start time.
    """
    audit = audit if audit is not None else AuditLog.default()
    actor = actor or current_actor()
    base = {"host": target.host, "action": f"reload {mode}", "actor": actor,
            "instance": str(target.address)}
    try:
        if mode not in FIFO_COMMAND:
            raise ActionError("bad_request", f"mode must be graceful or chain, not {mode!r}")
        if target.read_only:
            raise ActionError("read_only", "read-only mode: actions are disabled")
        inst = await fetch_instance(target)
        if expect_master is not None and inst.master_pid != expect_master:
            raise ActionError("stale", f"{target.address} now has master pid {inst.master_pid}, "
                                       f"not {expect_master} as when you looked; nothing was "
                                       "done")
        master = local_master(inst, target)
        plan = plan_for(inst)
        if plan.fifo is None and mode == "chain" and plan.touch_chain is None:
            raise ActionError("unsupported", "a chain reload needs a master-fifo (or "
                                             "touch-chain-reload) in the instance's config; "
                                             "this instance has neither")
    except ActionError as exc:
        audit.record(**base, outcome=f"refused: {exc.kind}", message=exc.message)
        raise
    busy = [{"worker_id": w.id, "pid": w.pid, "uri": r.uri, "running_s": r.running_s}
            for w in inst.workers for r in w.requests_in_flight]
    audit.record(**base, outcome="started", target_pid=master.pid, requests=busy)
    started = time.time()
    try:
        if plan.fifo is not None:
            _write_fifo(plan.fifo, FIFO_COMMAND[mode])
            method = f"master FIFO {plan.fifo}"
        elif mode == "chain":
            assert plan.touch_chain is not None
            try:
                Path(plan.touch_chain).touch()
            except OSError as exc:
                raise ActionError("permission", f"cannot touch {plan.touch_chain}: "
                                                f"{exc.strerror or exc}") from None
            method = f"touch {plan.touch_chain}"
        else:
            try:
                master.send_signal(signal.SIGHUP)
            except Exception as exc:  # psutil AccessDenied / NoSuchProcess
                raise ActionError("permission", f"cannot signal the master {master.pid}: "
                                                f"{exc}") from None
            method = f"SIGHUP to master {master.pid}"
    except ActionError as exc:
        audit.record(**base, outcome=f"failed: {exc.kind}", message=exc.message)
        raise
    data: dict[str, Any] = {
        "mode": mode, "method": method, "mercy": plan.mercy, "mercy_source": plan.mercy_source,
        "started_at": started, "master_pid": master.pid,
        "workers": [{"id": w.id, "pid": w.pid} for w in inst.workers], "busy": busy,
    }
    msg = (f"{mode} reload of {target.address} started via {method}; "
           f"worker-reload-mercy {plan.mercy:g} s ({plan.mercy_source})")
    audit.record(**base, outcome="sent", target_pid=master.pid, message=msg, method=method)
    return ActionResult(ok=True, message=msg, data=data)

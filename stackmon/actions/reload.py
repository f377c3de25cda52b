"""Graceful and chain reloads of one uWSGI instance.

The instance's own configuration decides how: its master FIFO when it has one (found from the
master's command line and ini, docs/reference.md §2), else a signal to the master (SIGHUP is
a graceful reload; a chain reload has no signal, so it needs the FIFO or a
touch-chain-reload file). The reload parameters the progress view needs (worker-reload-mercy)
come from the same place, since the stats do not carry them.

Nothing here trusts the stats document or the master's command line on its own: the master is
the one the kernel confirms (stackmon.trust: the holder of the stats listener), and what its
command line names is checked before root acts on it. The FIFO must be a FIFO (checked on an
O_PATH descriptor, so a device is never even opened), owned by the master's user or root and
held open by that master; a touch-chain-reload file must exist, be a regular file and belong
to the master's user (it is never created); SIGHUP goes to the confirmed master only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import time
from dataclasses import dataclass
from typing import Any, Literal

from stackmon.actions.audit import AuditLog, current_actor
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.actions.kill import confirmed_master, fetch_instance
from stackmon.bounded_io import describe_type
from stackmon.model import SourceError, UwsgiInstance
from stackmon.trust import ConfirmedMaster, Refusal, identity, signal_checked

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


def _open_checked(path: str, what: str) -> tuple[int, os.stat_result]:
    """An O_PATH descriptor on `path` and its fstat: nothing is opened for reading or writing
    yet, so naming a device (a watchdog, a tape) has no effect, and every later check and the
    final open (through /proc/self/fd) are on this same inode, whatever the path becomes."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ActionError("unsupported", f"the {what} {path} does not exist; nothing was "
                                         "done") from None
    except OSError as exc:
        raise ActionError("failed", f"cannot open the {what} {path}: "
                                    f"{exc.strerror or exc}; nothing was done") from None
    return fd, os.fstat(fd)


def _held_by(pid: int, st: os.stat_result) -> bool:
    """Whether process `pid` has this file open (its /proc/PID/fd links, followed)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            other = os.stat(f"{fd_dir}/{name}")
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


def _kind(mode: int) -> str:
    return "a regular file" if stat.S_ISREG(mode) else describe_type(mode)


def _check_fifo(path: str, st: os.stat_result, master: ConfirmedMaster) -> None:
    """Refuse (without writing) anything but the master's own FIFO: a FIFO, owned by the
    master's user or root, that the master process has open. The path came from a command
    line its owner wrote, so a FIFO of another instance (root's, say) is refused too."""
    if not stat.S_ISFIFO(st.st_mode):
        raise ActionError("not_worker", f"the master FIFO {path} named by master {master.pid}'s "
                                        f"configuration is {_kind(st.st_mode)}, not a "
                                        "FIFO; refusing to write to it")
    if not (master.owns(st.st_uid) or st.st_uid == 0):
        raise ActionError("not_worker", f"the master FIFO {path} belongs to uid {st.st_uid}, "
                                        f"not to the uWSGI master's user ({master.uid}) or "
                                        "root; refusing to write to it")
    if not _held_by(master.pid, st):
        raise ActionError("not_worker", f"the uWSGI master {master.pid} does not have the FIFO "
                                        f"{path} open: it is not this instance's master FIFO; "
                                        "refusing to write to it")


def _write_fifo(path: str, command: bytes, master: ConfirmedMaster) -> None:
    pfd, st = _open_checked(path, "master FIFO")
    try:
        _check_fifo(path, st, master)
        try:
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError:
            raise ActionError("permission", f"no permission to write the master FIFO {path} "
                                            "(mode 0600: run stackmon as the uWSGI user or "
                                            "root)") from None
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise ActionError("gone", f"nobody reads the master FIFO {path}: is the master "
                                          "alive?") from None
            raise ActionError("failed", f"cannot open the master FIFO {path}: "
                                        f"{exc.strerror}") from None
    finally:
        os.close(pfd)
    try:
        again = os.fstat(fd)
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):  # cannot happen; cheap
            raise ActionError("failed", f"the master FIFO {path} changed while it was opened")
        if os.write(fd, command) != len(command):
            raise ActionError("failed", f"the command was cut writing to the master FIFO {path}")
    except OSError as exc:  # a full pipe (the master is not reading) or a vanished reader
        raise ActionError("failed", f"cannot write to the master FIFO {path}: "
                                    f"{exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _touch(path: str, master: ConfirmedMaster) -> None:
    """Update the mtime of an existing regular file owned by the master's user (uWSGI's
    touch-chain-reload watches it). Never creates one: a file root created where a command
    line said would be root's, somewhere its author chose."""
    pfd, st = _open_checked(path, "touch-chain-reload file")
    try:
        if not stat.S_ISREG(st.st_mode):
            raise ActionError("not_worker", f"the touch-chain-reload file {path} is "
                                            f"{_kind(st.st_mode)}; refusing to touch it")
        if not master.owns(st.st_uid):
            raise ActionError("not_worker", f"the touch-chain-reload file {path} belongs to uid "
                                            f"{st.st_uid}, not to the uWSGI master's user "
                                            f"({master.uid}); refusing to touch it")
        try:
            os.utime(f"/proc/self/fd/{pfd}")  # the inode checked, not the path again
        except OSError as exc:
            raise ActionError("permission", f"cannot touch {path}: {exc.strerror or exc}") \
                from None
    finally:
        os.close(pfd)


def _sighup(master: ConfirmedMaster) -> None:
    """SIGHUP to the confirmed master only, re-checked (same start time) at the moment it is
    sent."""
    now = identity(master.pid)
    if now is None:
        raise ActionError("gone", f"the uWSGI master {master.pid} has exited; nothing was sent")
    if now.start_time != master.start_time:
        raise ActionError("stale", f"pid {master.pid} is no longer the uWSGI master that was "
                                   "confirmed; nothing was sent")
    got = signal_checked(master.pid, now, signal.SIGHUP)
    if got == "gone":
        raise ActionError("gone", f"the uWSGI master {master.pid} has exited; nothing was sent")
    if isinstance(got, Refusal):
        raise ActionError(got.kind, got.message)


async def reload_uwsgi(target: ActionTarget, mode: Mode = "graceful", *,
                       audit: AuditLog | None = None, actor: str = "",
                       expect_master: int | None = None) -> ActionResult:
    """Start a reload and return at once; follow it with ReloadTracker on new samples.

    The result's data carries what the progress view needs: the workers before the reload,
    the mercy and where it came from, the method used and the start time.
    """
    audit = audit if audit is not None else AuditLog.default()
    actor = actor or current_actor()
    base: dict[str, Any] = {"host": target.host, "action": f"reload {mode}", "actor": actor,
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
        master = confirmed_master(inst, target)
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
            _write_fifo(plan.fifo, FIFO_COMMAND[mode], master)
            method = f"master FIFO {plan.fifo}"
        elif mode == "chain":
            assert plan.touch_chain is not None
            _touch(plan.touch_chain, master)
            method = f"touch {plan.touch_chain}"
        else:
            _sighup(master)
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

"""One entry point for actions on any host: local ones act here, agent hosts through the agent.

The TUI calls these and does not care where a host lives. Actions through an agent are also
recorded in the local audit log (the agent keeps its own on its host), so the person at this
terminal has the whole story in one file.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from stackmon.actions.audit import AuditLog, current_actor
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.actions.kill import fetch_instance, kill_worker
from stackmon.actions.reload import reload_uwsgi
from stackmon.actions.reload_progress import ReloadProgress, follow_reload
from stackmon.config import HostConfig, Settings
from stackmon.model import HostSnapshot, UwsgiInstance
from stackmon.redact import clean


def local_target(host: HostConfig, settings: Settings, index: int) -> ActionTarget:
    if not 0 <= index < len(host.uwsgi):
        raise ActionError("not_found", f"host {host.name!r} has no uwsgi instance {index} "
                                       f"(it has {len(host.uwsgi)})")
    return ActionTarget(host=host.name, address=host.uwsgi[index], index=index,
                        read_only=settings.read_only or host.read_only, timeout=settings.timeout)


def _check_writable(host: HostConfig, settings: Settings) -> None:
    if settings.read_only or host.read_only:
        raise ActionError("read_only", "read-only mode: actions are disabled")


async def current_instance(host: HostConfig, settings: Settings, index: int) -> UwsgiInstance:
    """The instance as it is now (for a confirmation): its stats, or its agent's snapshot."""
    if not host.agent:
        return await fetch_instance(local_target(host, settings, index))
    from stackmon.agent.client import fetch_remote_snapshot

    snap = await fetch_remote_snapshot(host, settings)
    inst = next((u for u in snap.uwsgi if u.index == index), None)
    if inst is None:
        raise ActionError("not_found", f"host {host.name!r} shows no uWSGI instance {index} "
                                       f"behind its agent (it shows {len(snap.uwsgi)})")
    return inst


async def kill(host: HostConfig, settings: Settings, index: int, worker_id: int,
               expect_pid: int, signal: str, *, expect_spawn: float | None = None,
               usr2_first: bool = False, audit: AuditLog) -> ActionResult:
    if not host.agent:
        return await kill_worker(local_target(host, settings, index), worker_id, expect_pid,
                                 signal, expect_spawn=expect_spawn,  # type: ignore[arg-type]
                                 usr2_first=usr2_first, audit=audit)
    from stackmon.agent.client import remote_kill

    base: dict[str, Any] = {"host": host.name, "action": f"kill {signal} via agent",
                            "worker_id": worker_id, "target_pid": expect_pid,
                            "agent": clean(host.agent)}
    try:
        _check_writable(host, settings)
    except ActionError as exc:
        audit.record(**base, outcome=f"refused: {exc.kind}", message=exc.message)
        raise
    audit.record(**base, outcome="started")  # before acting: no audit, no action
    try:
        result = await remote_kill(host, index, worker_id, expect_pid, signal,
                                   expect_spawn=expect_spawn, usr2_first=usr2_first,
                                   timeout=settings.timeout, actor=current_actor())
    except ActionError as exc:
        audit.record(**base, outcome=f"refused: {exc.kind}", message=exc.message)
        raise
    audit.record(**base, outcome="ok" if result.ok else "failed", message=result.message)
    return result


async def reload(host: HostConfig, settings: Settings, index: int, mode: str, *,
                 audit: AuditLog, expect_master: int | None = None) -> ActionResult:
    """expect_master: the master pid the user saw (local hosts; refused when it changed)."""
    if not host.agent:
        return await reload_uwsgi(local_target(host, settings, index), mode,  # type: ignore[arg-type]
                                  audit=audit, expect_master=expect_master)
    from stackmon.agent.client import remote_reload

    base: dict[str, Any] = {"host": host.name, "action": f"reload {mode} via agent",
                            "agent": clean(host.agent)}
    try:
        _check_writable(host, settings)
    except ActionError as exc:
        audit.record(**base, outcome=f"refused: {exc.kind}", message=exc.message)
        raise
    audit.record(**base, outcome="started")
    try:
        result = await remote_reload(host, index, mode, timeout=settings.timeout,
                                     actor=current_actor())
    except ActionError as exc:
        audit.record(**base, outcome=f"refused: {exc.kind}", message=exc.message)
        raise
    audit.record(**base, outcome="sent", message=result.message)
    return result


async def follow(host: HostConfig, settings: Settings, index: int, result: ActionResult,
                 on_progress: Callable[[ReloadProgress], None], *,
                 audit: AuditLog) -> ReloadProgress:
    """Follow a reload to its end, from the stats (local) or the agent's snapshots."""
    sample: Callable[[], Awaitable[UwsgiInstance | None]] | None = None
    if host.agent:
        from stackmon.agent.client import fetch_remote_snapshot

        async def sample() -> UwsgiInstance | None:
            try:
                snap: HostSnapshot = await fetch_remote_snapshot(host, settings)
            except ActionError:  # the agent did not answer this time: no sample, go on
                return None
            if not snap.reachable or snap.stale_s is not None:
                return None
            return next((u for u in snap.uwsgi if u.index == index), None)

        target = ActionTarget(host=host.name, address=host.uwsgi[0] if host.uwsgi else None,  # type: ignore[arg-type]
                              index=index, timeout=settings.timeout)
    else:
        target = local_target(host, settings, index)
    return await follow_reload(target, result, on_progress, audit=audit, sample=sample)

"""Actions on a host named by its configuration, for callers that hold no Host (the CLI).

Each call opens the host through the one host interface (stackmon.hosts), acts, and closes
it; where a host is local or behind an agent is the interface's business, not the caller's.
"""

from __future__ import annotations

from collections.abc import Callable

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionResult
from stackmon.actions.reload_progress import ReloadProgress
from stackmon.config import HostConfig, Settings
from stackmon.hosts import open_host
from stackmon.model import UwsgiInstance


async def current_instance(host: HostConfig, settings: Settings, index: int) -> UwsgiInstance:
    """The instance as it is now (for a confirmation): its stats, or its agent's snapshot."""
    h = open_host(host, settings)
    try:
        return await h.current_instance(index)
    finally:
        await h.aclose()


async def kill(host: HostConfig, settings: Settings, index: int, worker_id: int,
               expect_pid: int, signal: str, *, expect_spawn: float | None = None,
               usr2_first: bool = False, audit: AuditLog) -> ActionResult:
    h = open_host(host, settings)
    try:
        return await h.kill(index, worker_id, expect_pid, signal, audit=audit,
                            expect_spawn=expect_spawn, usr2_first=usr2_first)
    finally:
        await h.aclose()


async def reload(host: HostConfig, settings: Settings, index: int, mode: str, *,
                 audit: AuditLog, expect_master: int | None = None) -> ActionResult:
    """expect_master: the master pid the user saw (refused when it changed)."""
    h = open_host(host, settings)
    try:
        return await h.reload(index, mode, audit=audit, expect_master=expect_master)
    finally:
        await h.aclose()


async def follow(host: HostConfig, settings: Settings, index: int, result: ActionResult,
                 on_progress: Callable[[ReloadProgress], None], *,
                 audit: AuditLog) -> ReloadProgress:
    """Follow a reload to its end, from the stats (local) or the agent's snapshots."""
    h = open_host(host, settings)
    try:
        return await h.follow(index, result, on_progress, audit=audit)
    finally:
        await h.aclose()

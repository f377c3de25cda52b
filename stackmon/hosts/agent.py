"""A host behind a stackmon agent: the same interface over HTTP.

Actions through an agent are also recorded in the local audit log (the agent keeps its own on
its host), so the person at this terminal has the whole story in one file; the record is made
before the request is sent (no audit, no action).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stackmon.actions.audit import AuditLog, current_actor
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.actions.reload_progress import ReloadProgress, follow_reload
from stackmon.agent.client import AgentSource, remote_kill, remote_reload, remote_stack
from stackmon.config import HostConfig, Settings
from stackmon.hosts.base import Host
from stackmon.model import HostSnapshot, SourceError, UwsgiInstance
from stackmon.redact import clean

if TYPE_CHECKING:
    from stackmon.actions.stack import StackResult


def stuck_in(stack: dict[str, Any] | None) -> str | None:
    """The marked thread's innermost frame, for the agent's own audit record: the whole stack
    stays in this side's record (an agent caps request bodies at 16 KB; a kill must never be
    refused for the size of its evidence)."""
    for thread in (stack or {}).get("threads", []):
        if thread.get("marked") and thread.get("frames"):
            return str(thread["frames"][0])[:300]
    return None


class AgentHost(Host):
    """Polls GET /v1/snapshot of the host's agent and acts through its POST routes."""

    via = "agent"

    def __init__(self, config: HostConfig, settings: Settings) -> None:
        super().__init__(config, settings)
        self.source = AgentSource(config, settings)

    @property
    def traceable(self) -> bool:
        return True  # the agent answers for its instances (or says why not)

    @property
    def captures_stacks(self) -> bool:
        return True  # py-spy runs on the agent's host, which says if it cannot

    @property
    def config_elsewhere(self) -> str | None:
        return (f"remote host ({self.source.source}): its configuration is read on that host; "
                "run `stackmon doctor` there")

    async def aclose(self) -> None:
        await self.source.aclose()

    async def poll(self) -> HostSnapshot:
        taken_at = time.time()
        doc = await self.source.fetch()
        if isinstance(doc, SourceError):
            return self.unreachable(taken_at, [doc])
        snap = self.source.to_snapshot(doc, time.time())
        if isinstance(snap, SourceError):
            return self.unreachable(taken_at, [snap])
        if snap.reachable and snap.stale_s is None:
            self.last_good = snap
        return snap

    async def _fresh(self) -> HostSnapshot:
        doc = await self.source.fetch()
        if isinstance(doc, SourceError):
            raise ActionError("gone", f"cannot read the host through its agent: {doc.message}")
        snap = self.source.to_snapshot(doc, time.time())
        if isinstance(snap, SourceError):
            raise ActionError("gone", f"cannot read the host through its agent: {snap.message}")
        return snap

    async def current_instance(self, index: int) -> UwsgiInstance:
        snap = await self._fresh()
        inst = next((u for u in snap.uwsgi if u.index == index), None)
        if inst is None:
            raise ActionError("not_found", f"host {self.name!r} shows no uWSGI instance {index} "
                                           f"behind its agent (it shows {len(snap.uwsgi)})")
        return inst

    async def _audited(self, audit: AuditLog, base: dict[str, Any], done: str,
                       send: Callable[[], Any]) -> ActionResult:
        """Refuse read-only, record "started", send, record the outcome."""
        try:
            self.check_writable()
        except ActionError as exc:
            audit.record(**base, outcome=f"refused: {exc.kind}", message=exc.message)
            raise
        audit.record(**base, outcome="started")  # before acting: no audit, no action
        try:
            result: ActionResult = await send()
        except ActionError as exc:
            audit.record(**base, outcome=f"refused: {exc.kind}", message=exc.message)
            raise
        audit.record(**base, outcome=done if result.ok else "failed", message=result.message)
        return result

    async def kill(self, index: int, worker_id: int, expect_pid: int, signal: str, *,
                   audit: AuditLog, expect_spawn: float | None = None,
                   usr2_first: bool = False,
                   stack: dict[str, Any] | None = None) -> ActionResult:
        base: dict[str, Any] = {"host": self.name, "action": f"kill {signal} via agent",
                                "worker_id": worker_id, "target_pid": expect_pid,
                                "agent": clean(self.source.url),
                                **({"stack": stack} if stack else {})}
        return await self._audited(audit, base, "ok", lambda: remote_kill(
            self.config, index, worker_id, expect_pid, signal, expect_spawn=expect_spawn,
            usr2_first=usr2_first, timeout=self.settings.timeout, actor=current_actor(),
            stuck_in=stuck_in(stack)))

    async def reload(self, index: int, mode: str, *, audit: AuditLog,
                     expect_master: int | None = None) -> ActionResult:
        base: dict[str, Any] = {"host": self.name, "action": f"reload {mode} via agent",
                                "agent": clean(self.source.url)}
        return await self._audited(audit, base, "sent", lambda: remote_reload(
            self.config, index, mode, timeout=self.settings.timeout, actor=current_actor()))

    async def trace(self, index: int, worker_id: int, expect_pid: int, *,
                    with_locals: bool = False,
                    expect_spawn: float | None = None) -> StackResult:
        return await remote_stack(self.config, index, worker_id, expect_pid,
                                  with_locals=with_locals, expect_spawn=expect_spawn,
                                  timeout=self.settings.timeout, actor=current_actor())

    async def follow(self, index: int, result: ActionResult,
                     on_progress: Callable[[ReloadProgress], None], *,
                     audit: AuditLog) -> ReloadProgress:
        async def sample() -> UwsgiInstance | None:
            try:
                snap = await self._fresh()
            except ActionError:  # the agent did not answer this time: no sample, go on
                return None
            if not snap.reachable or snap.stale_s is not None:
                return None
            return next((u for u in snap.uwsgi if u.index == index), None)

        target = ActionTarget(host=self.name, address=None,  # type: ignore[arg-type]
                              index=index, timeout=self.settings.timeout)
        return await follow_reload(target, result, on_progress, audit=audit,
                                   sample=sample)

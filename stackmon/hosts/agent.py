"""A host behind a stackmon agent: the same interface over HTTP.

Actions through an agent are also recorded in the local audit log (the agent keeps its own on
its host), so the person at this terminal has the whole story in one file; the record is made
before the request is sent (no audit, no action).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from stackmon.actions.audit import AuditLog, current_actor
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.actions.reload_progress import ReloadProgress, follow_reload
from stackmon.agent.client import (
    AgentSource,
    ReplyError,
    _http_problem,
    _reason,
    decode_json,
    remote_kill,
    remote_reload,
    remote_stack,
)
from stackmon.config import ConfigError, HostConfig, Settings
from stackmon.hosts.base import Host
from stackmon.model import HostSnapshot, RequestKey, SourceError, UwsgiInstance
from stackmon.redact import clean

if TYPE_CHECKING:
    from stackmon.actions.stack import StackResult
    from stackmon.record.history import HistoryLimits, HistoryPage

HISTORY_PATH = "/v1/history"


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

    @property
    def history_source(self) -> str:
        return self.source.source

    async def history_pages(self, since: float | None = None, until: float | None = None, *,
                            limits: HistoryLimits | None = None,
                            ) -> AsyncIterator[HistoryPage]:
        """GET /v1/history page after page (`from` = the previous page's next_from), on the
        poll path's connections with the host's token. Each page is one bounded exchange
        (limits.page_bytes, limits.page_timeout_s) within a deadline for the whole read; the
        answer is checked field by field (stackmon.record.history.decode_page) and the paging
        must move forward, so a broken or hostile agent is one line, never a traceback."""
        from stackmon.record.history import HistoryError, HistoryLimits, PageBudget

        budget = PageBudget(limits or HistoryLimits(), self.source.source)
        asked: float | None = since
        while True:
            content, size = await self._history_page(budget, asked, until)
            try:
                decoded = _decoded(content, self.name, self.config.group)
            except HistoryError as exc:
                raise HistoryError(f"{self.source.source}: refused its history: {exc}") \
                    from None
            page, asked = budget.take(decoded, size, asked, until)
            yield page
            if asked is None:
                return

    async def _history_page(self, budget: Any, start: float | None,
                            until: float | None) -> tuple[bytes, int]:
        """One /v1/history answer's body (status 200), or HistoryError saying why not."""
        from stackmon.record.history import HistoryError

        where = self.source.source
        # repr: exact (a rounded `from` could skip the poll at next_from); "+" (1e+16) would
        # read as a space in a query string.
        query = "&".join(f"{key}={value!r}".replace("+", "%2B")
                         for key, value in (("from", start), ("to", until)) if value is not None)
        try:
            headers, http = self.source.headers(), self.source.http
        except (ConfigError, ValueError) as exc:  # a token file, a URL (both say which)
            raise HistoryError(f"{where}: {exc}") from None
        timeout = budget.page_timeout()
        try:
            async with asyncio.timeout(timeout):
                resp = await http.get(HISTORY_PATH + (f"?{query}" if query else ""), headers,
                                      budget.limits.page_bytes)
        except TimeoutError:
            raise budget.timed_out(timeout) from None
        except ReplyError as exc:
            raise HistoryError(f"{where}: refused its history: {exc}") from None
        except OSError as exc:
            raise HistoryError(f"{where}: cannot connect: {_reason(exc)}") from None
        except (ConfigError, ValueError) as exc:
            raise HistoryError(f"{where}: {exc}") from None
        if resp.status_code != 200:
            raise HistoryError(f"{where}: {_http_problem(resp, resp.content, self.config)}")
        return resp.content, len(resp.content)

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
                   stack: dict[str, Any] | None = None,
                   expect_requests: Sequence[RequestKey] | None = None) -> ActionResult:
        base: dict[str, Any] = {"host": self.name, "action": f"kill {signal} via agent",
                                "worker_id": worker_id, "target_pid": expect_pid,
                                "agent": clean(self.source.url),
                                **({"stack": stack} if stack else {})}
        return await self._audited(audit, base, "ok", lambda: remote_kill(
            self.config, index, worker_id, expect_pid, signal, expect_spawn=expect_spawn,
            usr2_first=usr2_first, timeout=self.settings.timeout, actor=current_actor(),
            stuck_in=stuck_in(stack), expect_requests=expect_requests))

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


def _decoded(content: bytes, name: str, group: str | None) -> Any:
    """decode_json (nesting bounded) then the history contract's checks."""
    from stackmon.record.history import HistoryError, decode_page

    try:
        doc = decode_json(content)
    except ReplyError as exc:
        raise HistoryError(str(exc)) from None
    return decode_page(doc, name, group)

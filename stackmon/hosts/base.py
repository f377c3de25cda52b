"""The Host interface, what both implementations share, and the factory that picks one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError, ActionResult
from stackmon.actions.reload_progress import ReloadFacts, ReloadProgress
from stackmon.config import HostConfig, Settings
from stackmon.model import HostSnapshot, RequestKey, SourceError, UwsgiInstance

if TYPE_CHECKING:  # stackmon.actions.stack imports this module's Host for its own hints
    from stackmon.actions.stack import StackResult
    from stackmon.record.history import History, HistoryLimits, HistoryPage


class Host(ABC):
    """A monitored host: how to poll it and how to act on it.

    Polls never raise: a host that cannot be read gives an unreachable snapshot carrying the
    last good data and its age (`last_good`), so a screen never freezes on an old "fine"
    picture. Actions raise ActionError (refused, with a kind and a sentence) or return an
    ActionResult; every attempt is audited in `audit` before anything is done.
    """

    #: Shown after the host name where the user must know how it is reached ("web-2 (agent)").
    via: str = ""

    @property
    def traceable(self) -> bool:
        """Whether it has uWSGI workers whose Python stacks can be asked for."""
        return False

    @property
    def captures_stacks(self) -> bool:
        """Whether a stack can be captured before a kill without a wasted try: py-spy is here
        (local) or the agent's host decides (agent)."""
        return False

    @property
    def config_elsewhere(self) -> str | None:
        """None when the host's configuration (ini files, nginx.conf) can be read from here,
        as the doctor needs; else a sentence saying where it is read instead."""
        return None

    def __init__(self, config: HostConfig, settings: Settings) -> None:
        self.config = config
        # A host whose group has its own [groups.NAME] settings uses them (config.py).
        self.settings = config.settings if config.settings is not None else settings
        self.last_good: HostSnapshot | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def read_only(self) -> bool:
        return self.settings.read_only or self.config.read_only

    def check_writable(self) -> None:
        if self.read_only:
            raise ActionError("read_only", "read-only mode: actions are disabled")

    # --- polling ------------------------------------------------------------------------------

    @abstractmethod
    async def poll(self) -> HostSnapshot:
        """One snapshot of the host now; never raises (see the class docstring)."""

    async def prime(self) -> None:  # noqa: B027 - a hook: agent hosts need no priming
        """Take the first samples that rates need (nginx's request counter), so that a single
        poll after `prime` can report them (`stackmon snapshot`)."""

    async def aclose(self) -> None:  # noqa: B027 - a hook: local hosts hold nothing
        """Release what the host holds (an agent's connection pool)."""

    def unreachable(self, taken_at: float, errors: list[SourceError]) -> HostSnapshot:
        """Unreachable: the reason now, and the last good data with its age if there is any."""
        if self.last_good is None:
            return HostSnapshot(name=self.name, taken_at=taken_at, reachable=False,
                                errors=tuple(errors), group=self.config.group)
        return replace(self.last_good, taken_at=taken_at, reachable=False,
                       stale_s=max(0.0, taken_at - self.last_good.taken_at),
                       errors=tuple(errors))

    def timed_out(self, taken_at: float, limit: float) -> HostSnapshot:
        """What a poll cut short by the caller's deadline yields."""
        return self.unreachable(taken_at, [SourceError(self.name,
                                                       f"poll gave no answer within {limit:g} s")])

    # --- history ------------------------------------------------------------------------------

    #: A recording file on this machine that holds this host's polls (`stackmon record`,
    #: `stackmon --record FILE`): where a LocalHost reads its history. None: there is none.
    recording: str | None = None

    async def history_pages(self, since: float | None = None, until: float | None = None, *,
                            limits: HistoryLimits | None = None,
                            ) -> AsyncIterator[HistoryPage]:
        """The host's recorded polls in [since, until] (epoch seconds, None: open), oldest
        first, a page at a time, within `limits`; a HistoryError (one line) when there is no
        history to read or its source fails. Pages keep memory at one page for callers that
        store or summarise as they go (stackmon.record.history.save_history)."""
        from stackmon.record.history import HistoryError

        raise HistoryError(f"host {self.name!r} keeps no history")
        yield  # an async generator like the implementations: the error comes on iteration

    async def history(self, since: float | None = None, until: float | None = None, *,
                      limits: HistoryLimits | None = None) -> History:
        """Every page of `history_pages` in one History (HostSnapshots as the live screens
        got them, with the period's events and actions); `truncated` and `next_from` when
        the limits ended the read early. HistoryError, one line, when it cannot be read."""
        from stackmon.record.history import collect

        return await collect(self.name, self.history_source,
                             self.history_pages(since, until, limits=limits))

    @property
    def history_source(self) -> str:
        """Where history_pages reads, for messages."""
        return f"recording {self.recording}" if self.recording else "none"

    # --- actions ------------------------------------------------------------------------------

    @abstractmethod
    async def current_instance(self, index: int) -> UwsgiInstance:
        """Instance `index` as it is now (for a confirmation); ActionError when unreadable."""

    @abstractmethod
    async def kill(self, index: int, worker_id: int, expect_pid: int, signal: str, *,
                   audit: AuditLog, expect_spawn: float | None = None,
                   usr2_first: bool = False,
                   stack: dict[str, Any] | None = None,
                   expect_requests: Sequence[RequestKey] | None = None) -> ActionResult:
        """Kill worker `worker_id` of instance `index` if it still is `expect_pid`; `stack`
        (StackResult.summary() of a capture just before) goes into the kill's audit record.
        `expect_requests` (stackmon.actions.kill.kill_meant_for of what the user confirmed):
        refused, nothing done, when one of them has ended by the kill's own stats read."""

    @abstractmethod
    async def reload(self, index: int, mode: str, *, audit: AuditLog,
                     expect_master: int | None = None) -> ActionResult:
        """Start a graceful or chain reload of instance `index` and return at once."""

    @abstractmethod
    async def trace(self, index: int, worker_id: int, expect_pid: int, *,
                    with_locals: bool = False,
                    expect_spawn: float | None = None) -> StackResult:
        """The Python stack of worker `worker_id` of instance `index`, now, if it still is
        `expect_pid` (the same checks as a kill; stackmon.actions.stack). Reading a stack
        changes nothing, so it is allowed in read-only mode and not audited by itself."""

    @abstractmethod
    async def follow(self, index: int, result: ActionResult,
                     on_progress: Callable[[ReloadProgress], None], *,
                     audit: AuditLog) -> ReloadProgress:
        """Follow a reload started by `reload` to its end, reporting each step."""

    def reload_facts(self, index: int, inst: UwsgiInstance) -> ReloadFacts | None:
        """The mercy and whether a chain reload is possible, for the confirmation (blocking:
        from a thread); None when not known from here (an agent reads them on reload)."""
        return None


def open_host(config: HostConfig, settings: Settings) -> Host:
    """The implementation for `config`: through its agent when it names one, else this
    machine's own sources. The only place that branches on `config.agent`."""
    if config.agent:
        from stackmon.hosts.agent import AgentHost

        return AgentHost(config, settings)
    from stackmon.hosts.local import LocalHost

    return LocalHost(config, settings)

"""The vocabulary of actions: what is acted on, what came of it, why it was refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from stackmon.addresses import StatsAddress

# "ended": a request the kill was confirmed for is no longer in flight (the caller names it).
RefusalKind = Literal["read_only", "stale", "not_worker", "gone", "not_found", "permission",
                      "not_local", "unsupported", "bad_request", "failed", "ended"]


@dataclass(frozen=True, slots=True)
class ActionTarget:
    """One uWSGI instance of one host, as the caller knows it."""

    host: str
    address: StatsAddress
    index: int = 0
    read_only: bool = False
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What happened, in a sentence for the user, plus figures for scripts and the agent."""

    ok: bool
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class ActionError(Exception):
    """An action refused or failed before it changed anything (or, for `failed`, after)."""

    HTTP_STATUS: ClassVar[dict[str, int]] = {
        "read_only": 403, "not_worker": 403, "permission": 403, "stale": 409, "gone": 409,
        "ended": 409,
        "not_found": 404, "not_local": 400, "unsupported": 400, "bad_request": 400,
        "failed": 500,
    }

    def __init__(self, kind: RefusalKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def http_status(self) -> int:
        return self.HTTP_STATUS.get(self.kind, 400)

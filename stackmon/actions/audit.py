"""The audit log: one JSON line per action attempt, refused or not.

At 3 a.m. the question after an outage is "who killed what, when, and did it work". The log
answers it from the TUI, the CLI and the agent alike. Appends are single write() calls of one
line on an O_APPEND descriptor, so concurrent writers (a TUI and an agent) never interleave.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def default_audit_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "stackmon" / "audit.log"


def current_actor() -> str:
    """Who is acting: the login behind sudo when there is one, else the process's user."""
    user = os.environ.get("SUDO_USER")
    try:
        me = getpass.getuser()
    except Exception:  # no passwd entry for this uid: the number still identifies it
        me = str(os.getuid())
    return f"{user} (via sudo as {me})" if user and user != me else me


@dataclass
class AuditLog:
    path: Path

    @classmethod
    def default(cls) -> AuditLog:
        return cls(default_audit_path())

    def record(self, *, host: str, action: str, outcome: str, actor: str | None = None,
               target_pid: int | None = None, worker_id: int | None = None,
               request: dict[str, Any] | None = None, message: str = "",
               **extra: Any) -> dict[str, Any]:
        """Append one entry; returns it. A log that cannot be written raises OSError: an action
        that cannot be audited is not carried out (callers record before acting)."""
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "epoch": round(time.time(), 3),
            "user": actor or current_actor(),
            "host": host,
            "action": action,
            "worker_id": worker_id,
            "target_pid": target_pid,
            "request": request,
            "outcome": outcome,
            "message": message,
        }
        entry.update(extra)
        line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every entry (for tests and `tail`-like views); unreadable lines are skipped."""
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

"""The audit log: one JSON line per action attempt, refused or not.

At 3 a.m. the question after an outage is "who killed what, when, and did it work". The log
answers it from the TUI, the CLI and the agent alike, so it must never lie by omission or by
corruption:

- a record is written whole or not at all. Every write's return is checked (a full disk makes
  write() short); a record that cannot be finished is cut back off the file with ftruncate to
  the size it had before, so no half line is ever left for the next record to be glued onto;
- writers take an exclusive flock around "size, write, maybe truncate", so a TUI and an agent
  appending at the same time never truncate each other's records;
- the "started" record gates an action (callers write it before acting): it is fsync'ed, and
  when it cannot be written AuditWriteError says so and the action is not taken;
- a line cut by an older version (or a crash) is skipped by `entries()`, and the next record
  starts on a new line rather than continuing it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_RECORD_START = '{"time": '


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


def _before_action(outcome: str) -> bool:
    """Whether a record with this outcome is written before anything is done (so a failure to
    write it means nothing was done), as opposed to one reporting an action's result."""
    return outcome == "started" or outcome.startswith("refused")


class AuditWriteError(OSError):
    """The audit log could not take a record; `str()` is the one line to show the user.

    An OSError so that every caller that already treated "cannot write the log" as "do not
    act" keeps doing so; the message says whether an action went ahead.
    """

    def __init__(self, path: Path, reason: str, outcome: str, message: str = "") -> None:
        if _before_action(outcome):
            tail = "no action taken"
        else:
            tail = f"the action went ahead but its outcome ({outcome}"
            tail += f": {message})" if message else ")"
            tail += " is not recorded"
        super().__init__(errno.EIO, f"audit log {path} cannot be written: {reason}; {tail}")
        self.path = path
        self.reason = reason
        self.outcome = outcome

    def __str__(self) -> str:
        return str(self.strerror)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _write_all(fd: int, data: bytes) -> None:
    """write() until every byte is out; a short write is retried, a zero one is ENOSPC."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _ends_with_newline(fd: int, size: int) -> bool:
    if size == 0:
        return True
    try:
        return os.pread(fd, 1, size - 1) == b"\n"
    except OSError:
        return True  # cannot tell: do not add a blank line on a guess


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
        """Append one entry, whole, and return it. A log that cannot take it raises
        AuditWriteError and is left as it was: an action that cannot be audited is not carried
        out (callers record "started" before acting)."""
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
        # A lone surrogate (from a hostile request) becomes a \udXXX escape: still valid JSON.
        self._append(line.encode("utf-8", "backslashreplace"), outcome, message)
        return entry

    def _append(self, data: bytes, outcome: str, message: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
        except OSError as exc:
            raise AuditWriteError(self.path, _reason(exc), outcome, message) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close()
            size = os.fstat(fd).st_size
            if not _ends_with_newline(fd, size):  # a line cut before: do not continue it
                data = b"\n" + data
            try:
                _write_all(fd, data)
                if outcome == "started":  # the record that allows an action: on disk first
                    os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise AuditWriteError(self.path, _reason(exc), outcome, message) from None
        except AuditWriteError:
            raise
        except OSError as exc:  # flock/fstat on a strange file system
            raise AuditWriteError(self.path, _reason(exc), outcome, message) from None
        finally:
            os.close(fd)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry (for tests and `tail`-like views). A line that is not valid JSON (cut
        by a full disk under an older version) is skipped; a record glued onto the end of such
        a line is still found."""
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            entry = _parse_line(line)
            if entry is not None:
                out.append(entry)
        return out


def _parse_line(line: str) -> dict[str, Any] | None:
    start = 0
    while start >= 0:
        try:
            value = json.loads(line[start:])
        except (ValueError, RecursionError):
            start = line.find(_RECORD_START, start + 1)
            continue
        return value if isinstance(value, dict) else None
    return None

"""Requests stuck together: the slow and critical requests of a host grouped by what they share.

Why: twelve stuck workers listed one by one read as twelve problems; "12 workers in
db.acquire_lock (GET /report/:id), oldest 48 s" reads as the one problem it is (a lock, a
dependency, a query), and says where to look before anyone kills anything.

How requests are grouped:
- by the innermost application frame of the thread serving each request, when a stack of its
  worker is known (stackmon.actions.stack.StackResult): frames of the standard library,
  site-packages/dist-packages, uWSGI's own Python helpers and `<frozen ...>` code are skipped,
  since "12 workers in threading.wait" says nothing. A group of one frame lists the endpoints
  it serves (usually one);
- otherwise by endpoint: method and path with ids folded (stackmon.logs.access.fold_path, the
  same folding as the access-log figures, so the two name endpoints alike).
A stack counts for a request only if it is of the same process (pid) and was taken after the
request started (an older stack is of an earlier request). The thread is the one uWSGI named
for the request's core (`uWSGIWorker<N>Core<C>`), else the stack's marked thread when that
serves the same core or the worker has a single request.

Pure functions on frozen values: no I/O (the caller takes the stacks, if it wants them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from stackmon.actions.stack import Frame, StackResult, ThreadStack
from stackmon.logs.access import fold_path
from stackmon.model import HostSnapshot, Request, Worker

__all__ = ["StuckGroup", "StuckRequest", "app_frame", "group_stuck", "is_app_file"]

STUCK_LEVELS = ("slow", "critical")

# Standard library in any prefix (/usr/lib/python3.11/, /opt/py/lib/python3.12/,
# lib64, pypy), installed packages, code without a file.
_LIBRARY = re.compile(r"/lib(?:64)?/(?:python|pypy)\d*(?:\.\d+)?/|/(?:site|dist)-packages/")
_UWSGI_FILES = frozenset({"uwsgi.py", "uwsgidecorators.py", "pyuwsgi.py"})


def is_app_file(file: str) -> bool:
    """Whether a frame's file is the application's own code (see the module docstring)."""
    if not file or file.startswith("<"):
        return False
    if os.path.basename(file) in _UWSGI_FILES:
        return False
    return _LIBRARY.search(file) is None


def app_frame(frames: Iterable[Frame]) -> Frame | None:
    """The innermost frame of the application's own code (frames innermost first)."""
    return next((f for f in frames if is_app_file(f.file)), None)


def frame_label(frame: Frame) -> str:
    """`db.acquire_lock`: the module (file name, or its package for __init__.py) and the
    function, as a reader would search for it."""
    stem = os.path.splitext(os.path.basename(frame.file))[0]
    if stem == "__init__":
        stem = os.path.basename(os.path.dirname(frame.file)) or stem
    return f"{stem}.{frame.function}" if stem else frame.function


@dataclass(frozen=True, slots=True)
class StuckRequest:
    """One slow or critical request, with where its thread is when a stack is known."""

    instance: int
    worker_id: int
    pid: int
    core: int
    endpoint: str  # "GET /report/:id"
    running_s: float | None
    frame: str | None = None  # "db.acquire_lock"
    where: str | None = None  # "/srv/app/db.py:42"


@dataclass(frozen=True, slots=True)
class StuckGroup:
    """Requests stuck in one place: one application frame, or one endpoint when no stack is
    known. `requests` oldest first; `endpoints` (endpoint, count), most requests first."""

    frame: str | None
    endpoints: tuple[tuple[str, int], ...]
    requests: tuple[StuckRequest, ...]

    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def workers(self) -> int:
        return len({(r.instance, r.worker_id) for r in self.requests})

    @property
    def oldest_s(self) -> float | None:
        ages = [r.running_s for r in self.requests if r.running_s is not None]
        return max(ages) if ages else None

    @property
    def where(self) -> str | None:
        """file:line of the oldest request's frame (the lines may differ within a group)."""
        return next((r.where for r in self.requests if r.where), None)

    def text(self) -> str:
        """"12 workers in db.acquire_lock (GET /report/:id), oldest 48 s"."""
        who = _plural(self.count, "worker") if self.workers == self.count else \
            f"{_plural(self.count, 'request')} on {_plural(self.workers, 'worker')}"
        if len(self.endpoints) == 1:
            served = self.endpoints[0][0]
        else:
            served = ", ".join(f"{e} ×{n}" for e, n in self.endpoints[:3])
            if len(self.endpoints) > 3:
                served += f", {len(self.endpoints) - 3} more"
        oldest = f", oldest {int(self.oldest_s)} s" if self.oldest_s is not None else ""
        if self.frame is not None:
            return f"{who} in {self.frame} ({served}){oldest}"
        return f"{who} on {served}{oldest}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _endpoint(r: Request) -> str:
    if not r.method and not r.uri:
        return "(request details not captured)"
    return f"{r.method or '?'} {fold_path(r.uri)}"


def _thread(stack: StackResult, worker: Worker, r: Request) -> ThreadStack | None:
    name = f"uWSGIWorker{worker.id}Core{r.core}"
    named = next((t for t in stack.threads if t.core == r.core and t.name == name), None)
    if named is not None:
        return named
    marked = stack.marked
    if marked is not None and (marked.core == r.core or len(worker.requests_in_flight) == 1):
        return marked
    return None


def _stuck(instance: int, worker: Worker, r: Request,
           stack: StackResult | None) -> StuckRequest:
    frame = None
    if stack is not None and stack.pid == worker.pid and (
            r.started_at is None or stack.taken_at >= r.started_at):
        thread = _thread(stack, worker, r)
        frame = app_frame(thread.frames) if thread is not None else None
    line = "?" if frame is None or frame.line is None else str(frame.line)
    return StuckRequest(instance, worker.id, worker.pid, r.core, _endpoint(r), r.running_s,
                        frame_label(frame) if frame is not None else None,
                        f"{frame.file}:{line}" if frame is not None else None)


def stuck_requests(snapshot: HostSnapshot,
                   stacks: Iterable[StackResult] = ()) -> list[StuckRequest]:
    """Every slow or critical request of the host, with its frame when a stack is known."""
    by_worker = {(s.instance, s.worker_id): s for s in stacks}
    out = []
    for inst in snapshot.uwsgi:
        for w in inst.workers:
            for r in w.requests_in_flight:
                if r.level in STUCK_LEVELS:
                    out.append(_stuck(inst.index, w, r, by_worker.get((inst.index, w.id))))
    return out


def _age(r: StuckRequest) -> float:
    return r.running_s if r.running_s is not None else -1.0


def group_stuck(snapshot: HostSnapshot, stacks: Iterable[StackResult] = (), *,
                min_count: int = 1) -> tuple[StuckGroup, ...]:
    """The host's stuck requests grouped (see the module docstring), biggest group first,
    then the one with the oldest request; groups smaller than `min_count` left out.
    `stacks`: StackResults of its workers (by instance index and worker id), if any."""
    groups: dict[tuple[str, str], list[StuckRequest]] = {}
    for r in stuck_requests(snapshot, stacks):
        key = ("frame", r.frame) if r.frame is not None else ("endpoint", r.endpoint)
        groups.setdefault(key, []).append(r)
    out = []
    for (kind, name), members in groups.items():
        if len(members) < min_count:
            continue
        members.sort(key=_age, reverse=True)
        counts: dict[str, int] = {}
        for m in members:
            counts[m.endpoint] = counts.get(m.endpoint, 0) + 1
        endpoints = tuple(sorted(counts.items(), key=lambda e: -e[1]))
        out.append(StuckGroup(name if kind == "frame" else None, endpoints, tuple(members)))
    out.sort(key=lambda g: (-g.count, -(g.oldest_s or 0.0)))
    return tuple(out)

"""A host's recorded past as HostSnapshots: what `Host.history` returns, wherever it is read.

Two places hold a host's past: an agent started with `--record DIR` serves its recording as
GET /v1/history (AgentHost pages through it), and a recording file on this machine
(`stackmon record`, `stackmon --record FILE`) that a LocalHost was given. Both arrive here as
`HistoryPage`s, so a caller (the replay and report commands, a test) never branches on where
the data came from.

An agent's answer is untrusted input: `decode_page` checks every field before use (a wrong
type is a HistoryError with one line, an unreadable poll is skipped and named in `problems`),
and the caller's `HistoryLimits` bound what is read in all (polls, bytes, pages, time), so a
broken or hostile agent costs bounded memory and time and never a traceback.

`save_history` writes pages into a recording file, one page at a time (memory stays at one page
whatever the period), which is how `stackmon replay --host` and `stackmon report --host` reuse
the screens and the analysis made for recording files.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from stackmon.model import HostSnapshot
from stackmon.record.store import (
    ActionRow,
    EventRow,
    PollRef,
    Recorder,
    Recording,
    RecordingError,
    _opt_int,
    _text,
)
from stackmon.snapshot_json import SCHEMA, host_from_dict

# What one agent page may hold: its own caps are 3,600 polls or 32 MiB of polls, plus the
# period's events and actions (stackmon.agent.server.HISTORY_*). Anything past this is refused.
PAGE_BYTES = 64 * 1024 * 1024
# Problems kept from a whole history (the agent's own, and polls that could not be read).
MAX_PROBLEMS = 20
# Polls read from a local recording per page (bounds memory like an agent's page does).
LOCAL_PAGE = 600


class HistoryError(Exception):
    """The history cannot be had; str() is one line for the user, naming the source."""


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """What one history read may cost. Reaching max_polls, max_bytes or max_pages ends the
    read early with `History.truncated` and a `next_from` to go on from; a page that takes
    longer than page_timeout_s, or a read past deadline_s, is a HistoryError."""

    max_polls: int = 86_400
    max_bytes: int = 512 * 1024 * 1024
    max_pages: int = 1_000
    max_marks: int = 100_000  # events and actions kept
    page_bytes: int = PAGE_BYTES
    page_timeout_s: float = 60.0
    deadline_s: float = 900.0


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Polls of one host, oldest first, with the events and actions of their period."""

    polls: tuple[HostSnapshot, ...]
    events: tuple[EventRow, ...] = ()
    actions: tuple[ActionRow, ...] = ()
    problems: tuple[str, ...] = ()
    # Set on the last page read when the limits ended the read before the period's end.
    next_from: float | None = None


@dataclass
class History:
    """A host's polls in a period (as the live screens got them), oldest first."""

    host: str
    source: str
    polls: list[HostSnapshot] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    actions: list[ActionRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    pages: int = 0
    truncated: bool = False  # the limits ended the read: ask again from next_from
    next_from: float | None = None


async def collect(host: str, source: str, pages: AsyncIterator[HistoryPage]) -> History:
    """Every page in one History (the caller's limits bound how much that is)."""
    out = History(host=host, source=source)
    async for page in pages:
        out.pages += 1
        out.polls.extend(page.polls)
        out.events.extend(page.events)
        out.actions.extend(page.actions)
        _add_problems(out.problems, page.problems)
        if page.next_from is not None:
            out.truncated, out.next_from = True, page.next_from
    return out


def _add_problems(into: list[str], new: Any) -> None:
    for text in new:
        if text not in into and len(into) < MAX_PROBLEMS:
            into.append(text)


# --- an agent's answer ----------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """A JSON number that is a usable time, else None (bool, NaN, inf, text are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class DecodedPage:
    """One /v1/history answer, checked: its polls in time order, and whether it has more."""

    page: HistoryPage
    more: bool
    next_from: float | None


def decode_page(doc: Any, name: str, group: str | None) -> DecodedPage:
    """The answer of GET /v1/history as HostSnapshots named `name` (the hosts file's name, as
    for live polls); HistoryError for an answer that is not the contract's shape. A poll
    that cannot be read is skipped and named in the page's problems."""
    if not isinstance(doc, dict):
        raise HistoryError("the answer is not a history object")
    if doc.get("schema") != SCHEMA:
        raise HistoryError(f"the answer has schema {_text(doc.get('schema'), 20)!r}, this "
                           f"stackmon reads schema {SCHEMA}")
    raw_polls, more = doc.get("polls"), doc.get("truncated", False)
    if not isinstance(raw_polls, list):
        raise HistoryError("the answer's polls are not a list")
    if not isinstance(more, bool):
        raise HistoryError("the answer's truncated is not true or false")
    next_from = _finite(doc.get("next_from"))
    if more and next_from is None:
        raise HistoryError("the answer says there is more but gives no usable next_from")
    problems = [f"agent: {_text(p, 300)}" for p in _list(doc.get("problems"))[:10]]
    polls: list[HostSnapshot] = []
    for i, raw in enumerate(raw_polls):
        snap = _poll(raw, name, group)
        if isinstance(snap, str):
            if len(problems) < MAX_PROBLEMS:
                problems.append(f"poll {i + 1} of a page cannot be read ({snap})")
            continue
        polls.append(snap)
    polls.sort(key=lambda s: s.taken_at)
    page = HistoryPage(polls=tuple(polls), events=tuple(_events(doc.get("events"), name)),
                       actions=tuple(_actions(doc.get("actions"), name)),
                       problems=tuple(problems))
    return DecodedPage(page, more, next_from if more else None)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _poll(raw: Any, name: str, group: str | None) -> HostSnapshot | str:
    """A host object as a HostSnapshot under the local name, or why it cannot be read."""
    if not isinstance(raw, dict):
        return "not an object"
    if _finite(raw.get("taken_at")) is None:
        return "no usable taken_at"
    raw["name"] = name
    if group is not None:
        raw["group"] = group
    try:
        return host_from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError,
            IndexError) as exc:
        return type(exc).__name__


def _events(raw: Any, name: str) -> Iterator[EventRow]:
    for e in _list(raw):
        at = _finite(e.get("at")) if isinstance(e, dict) else None
        if at is None:
            continue
        yield EventRow(host=name, at=at, source=_text(e.get("source"), 40),
                       kind=_text(e.get("kind"), 40), worker=_opt_int(e.get("worker")),
                       pid=_opt_int(e.get("pid")), uri=_text(e.get("uri")) or None,
                       text=_text(e.get("text")))


def _actions(raw: Any, name: str) -> Iterator[ActionRow]:
    for a in _list(raw):
        at = _finite(a.get("at")) if isinstance(a, dict) else None
        if at is None:
            continue
        yield ActionRow(host=name, at=at, action=_text(a.get("action"), 60),
                        outcome=_text(a.get("outcome"), 60), actor=_text(a.get("user"), 200),
                        worker_id=_opt_int(a.get("worker_id")),
                        target_pid=_opt_int(a.get("target_pid")),
                        uri=_text(a.get("uri")) or None, message=_text(a.get("message")))


class PageBudget:
    """What is left of a read's limits, and the paging rules a far side must keep: every
    page that says "more" must bring a poll and move `from` forward, or the read would
    never end. Shared by every reader so that each one stops in the same way."""

    def __init__(self, limits: HistoryLimits, what: str) -> None:
        self.limits = limits
        self.what = what
        self.polls = self.bytes = self.pages = self.marks = 0
        self.started = time.monotonic()
        self.last_taken: float | None = None
        self._at_last = 0  # polls given so far that were taken at last_taken
        self._marks_seen: set[tuple[Any, ...]] = set()

    def page_timeout(self) -> float:
        """This page's deadline: the page's own, within what is left of the whole read."""
        left = self.limits.deadline_s - (time.monotonic() - self.started)
        if left <= 0:
            raise HistoryError(f"{self.what}: no complete history within "
                               f"{self.limits.deadline_s:g} s")
        return min(self.limits.page_timeout_s, left)

    def timed_out(self, timeout: float) -> HistoryError:
        if timeout < self.limits.page_timeout_s:
            return HistoryError(f"{self.what}: no complete history within "
                                f"{self.limits.deadline_s:g} s")
        return HistoryError(f"{self.what}: a page of history took more than {timeout:g} s")

    def take(self, decoded: DecodedPage, size: int, asked_from: float | None,
             until: float | None) -> tuple[HistoryPage, float | None]:
        """The part of `decoded` within the limits, and where the next page starts (None:
        the read is over). The returned page carries next_from when the limits ended it."""
        self.pages += 1
        self.bytes += size
        page = decoded.page
        inside = [s for s in page.polls if (asked_from is None or s.taken_at >= asked_from)
                  and (until is None or s.taken_at <= until)
                  and (self.last_taken is None or s.taken_at >= self.last_taken)]
        problems = list(page.problems)
        if len(inside) < len(page.polls):
            problems.append(f"{len(page.polls) - len(inside)} poll(s) outside the period "
                            "asked for were left out")
        fresh = self._after_overlap(inside)
        room = self.limits.max_polls - self.polls
        cut_at: float | None = None
        if len(fresh) > room:
            cut_at, fresh = fresh[room].taken_at, fresh[:room]
        nxt = self._next(decoded, fresh, asked_from, until)
        if cut_at is None and nxt is not None and (
                self.polls + len(fresh) >= self.limits.max_polls
                or self.bytes >= self.limits.max_bytes or self.pages >= self.limits.max_pages):
            cut_at = nxt
        self.polls += len(fresh)
        if fresh:
            if fresh[-1].taken_at != self.last_taken:
                self.last_taken, self._at_last = fresh[-1].taken_at, 0
            self._at_last += sum(1 for s in fresh if s.taken_at == self.last_taken)
        out = replace(page, polls=tuple(fresh), events=self._new(page.events),
                      actions=self._new(page.actions), problems=tuple(problems),
                      next_from=cut_at)
        return out, (None if cut_at is not None else nxt)

    def _after_overlap(self, polls: list[HostSnapshot]) -> list[HostSnapshot]:
        """Without the polls the previous page already gave: a page starts at the previous
        one's next_from, the time of the first poll it left out, so polls taken at that same
        time (a recorder can store two) come again; the first `_at_last` of them were had."""
        skip = self._at_last if self.last_taken is not None else 0
        out = []
        for snap in polls:
            if skip and snap.taken_at == self.last_taken:
                skip -= 1
                continue
            out.append(snap)
        return out

    def _next(self, decoded: DecodedPage, fresh: list[HostSnapshot], asked_from: float | None,
              until: float | None) -> float | None:
        if not decoded.more:
            return None
        nxt = decoded.next_from
        assert nxt is not None  # decode_page refuses "more" without it
        if not decoded.page.polls:
            raise HistoryError(f"{self.what}: the agent says there is more history but its "
                               "page holds no poll")
        if (asked_from is not None and nxt <= asked_from) or (
                self.last_taken is not None and nxt < self.last_taken) or (
                fresh and nxt < fresh[-1].taken_at):
            raise HistoryError(f"{self.what}: the agent's next_from does not move forward "
                               "(its paging would never end)")
        if until is not None and nxt > until:
            return None
        return nxt

    def _new(self, rows: tuple[Any, ...]) -> tuple[Any, ...]:
        """Rows not given before (a page's period ends where the next one's starts), up to
        max_marks in all."""
        out = []
        for row in rows:
            if row in self._marks_seen or self.marks >= self.limits.max_marks:
                continue
            self._marks_seen.add(row)
            self.marks += 1
            out.append(row)
        return tuple(out)


# --- a recording file on this machine --------------------------------------------------------


async def recording_pages(path: str | os.PathLike[str], name: str, group: str | None,
                          since: float | None, until: float | None,
                          limits: HistoryLimits) -> AsyncIterator[HistoryPage]:
    """`name`'s polls in a recording file, a page at a time (read in a thread)."""
    what = f"recording {os.fspath(path)}"
    try:
        recording = await asyncio.to_thread(Recording.open, path)
    except RecordingError as exc:
        raise HistoryError(str(exc)) from None
    try:
        refs = [r for r in await asyncio.to_thread(recording.polls, since, until)
                if r.host == name]
        budget = PageBudget(limits, what)
        for start in range(0, len(refs), LOCAL_PAGE):
            chunk = refs[start:start + LOCAL_PAGE]
            timeout = budget.page_timeout()
            try:
                async with asyncio.timeout(timeout):
                    decoded = await asyncio.to_thread(
                        _local_page, recording, chunk, name, group,
                        refs[start + LOCAL_PAGE].taken_at if start + LOCAL_PAGE < len(refs)
                        else None)
            except TimeoutError:
                raise budget.timed_out(timeout) from None
            page, nxt = budget.take(decoded, 0, since, until)
            yield page
            if nxt is None:
                return
    finally:
        recording.close()


def _local_page(recording: Recording, refs: list[PollRef], name: str, group: str | None,
                next_from: float | None) -> DecodedPage:
    polls = []
    for ref in refs:
        try:
            snap = recording.snapshot(ref.id)
        except RecordingError as exc:
            recording.problems.append(str(exc))
            continue
        polls.append(replace(snap, name=name, group=group) if group else snap)
    lo, hi = refs[0].taken_at, next_from if next_from is not None else refs[-1].taken_at
    events = tuple(e for e in recording.events(lo, hi) if e.host == name)
    actions = tuple(a for a in recording.actions(lo, hi) if a.host == name)
    page = HistoryPage(polls=tuple(polls), events=events, actions=actions,
                       problems=tuple(recording.problems[:MAX_PROBLEMS]))
    return DecodedPage(page, next_from is not None and bool(polls), next_from)


# --- into a recording file ------------------------------------------------------------------


@dataclass
class Saved:
    """What save_history wrote."""

    polls: int = 0
    pages: int = 0
    problems: list[str] = field(default_factory=list)
    next_from: float | None = None  # the limits ended the read here


async def save_history(pages: AsyncIterator[HistoryPage], path: str | os.PathLike[str],
                       settings: dict[str, Any]) -> Saved:
    """Write every page into a new recording at `path` (a page at a time: memory stays at
    one page). RecordingError when the file cannot be written."""
    recorder = Recorder(path, settings=settings)
    saved = Saved()
    try:
        async for page in pages:
            await asyncio.to_thread(_write_page, recorder, page)
            saved.polls += len(page.polls)
            saved.pages += 1
            _add_problems(saved.problems, page.problems)
            if page.next_from is not None:
                saved.next_from = page.next_from
    finally:
        await asyncio.to_thread(recorder.close)
    return saved


def _write_page(recorder: Recorder, page: HistoryPage) -> None:
    for snap in page.polls:
        recorder.write(snap)
    recorder.write_marks(page.events, page.actions)

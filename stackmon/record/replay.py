"""The replay timeline: which poll of each host is "now", and how "now" moves.

No Textual here: tui/replay_app.py drives a Timeline from keys and a timer and feeds the polls
it names to the same screens the live TUI uses. "Now" is a time, not a poll index, because the
hosts of a recording are polled at their own moments: the state at time t is, for every host,
its latest poll taken at or before t (a host with none yet is not shown yet).

Moves: play/pause (now advances with the wall clock times `speed`), step to the next or the
previous poll of any host, faster/slower, seek to a time, to the next event (the first poll that
can show it: taken at or after it), to the next time a host turned critical (a critical poll
whose previous poll of that host was not; the grade stored with each poll is the health model's,
stackmon.health.assess, as the live screen showed it).
"""

from __future__ import annotations

import bisect
import re
import time
from dataclasses import dataclass

from stackmon.record.store import ActionRow, EventRow, PollRef, Recording

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


class TimeError(ValueError):
    """A time the user typed that cannot be read; the message says what is accepted."""


@dataclass(frozen=True, slots=True)
class Mark:
    """Something that happened at a time: an event from the logs or one of stackmon's
    actions, with the host it happened on and a one-line description."""

    at: float
    host: str
    what: str


class Timeline:
    """Replay position over a recording's polls (see the module docstring)."""

    def __init__(self, refs: list[PollRef], events: list[EventRow] | None = None,
                 actions: list[ActionRow] | None = None) -> None:
        if not refs:
            raise ValueError("the recording holds no poll")
        self.refs = sorted(refs, key=lambda r: (r.taken_at, r.id))
        self.times = [r.taken_at for r in self.refs]
        self.hosts: list[str] = list(dict.fromkeys(r.host for r in self.refs))
        self._by_host: dict[str, list[PollRef]] = {h: [] for h in self.hosts}
        for r in self.refs:
            self._by_host[r.host].append(r)
        self._host_times = {h: [r.taken_at for r in rs] for h, rs in self._by_host.items()}
        marks = [Mark(e.at, e.host, f"{e.kind}: {e.text}") for e in events or []]
        marks += [Mark(a.at, a.host, f"stackmon {a.action} {a.outcome}: {a.message}")
                  for a in actions or []]
        self.marks = sorted(marks, key=lambda m: m.at)
        self.now = self.start
        self.playing = False
        self.speed = 1.0

    @classmethod
    def load(cls, recording: Recording, start: float | None = None,
             end: float | None = None) -> Timeline:
        return cls(recording.polls(start, end), recording.events(start, end),
                   recording.actions(start, end))

    @property
    def start(self) -> float:
        return self.times[0]

    @property
    def end(self) -> float:
        return self.times[-1]

    # --- what is shown --------------------------------------------------------------------

    def frame(self) -> dict[str, PollRef]:
        """Each host's latest poll at or before now (hosts without one are left out)."""
        out = {}
        for host, times in self._host_times.items():
            i = bisect.bisect_right(times, self.now + 1e-9) - 1
            if i >= 0:
                out[host] = self._by_host[host][i]
        return out

    def position(self) -> tuple[int, int]:
        """(polls up to now, polls in all): for "poll 34/120"."""
        return bisect.bisect_right(self.times, self.now + 1e-9), len(self.times)

    def last_mark(self) -> Mark | None:
        """The latest event or action at or before now (shown under the timeline)."""
        i = bisect.bisect_right([m.at for m in self.marks], self.now + 1e-9) - 1
        return self.marks[i] if i >= 0 else None

    # --- moving ---------------------------------------------------------------------------

    def seek(self, when: float) -> None:
        self.now = min(max(when, self.start), self.end)

    def step(self, n: int = 1) -> None:
        """To the next (n > 0) or previous (n < 0) poll time of any host; pauses."""
        self.playing = False
        if n > 0:
            i = bisect.bisect_right(self.times, self.now + 1e-9)
            target = self.times[min(i + n - 1, len(self.times) - 1)]
        else:
            i = bisect.bisect_left(self.times, self.now - 1e-9)
            target = self.times[max(i + n, 0)]
        self.seek(target)

    def toggle_play(self) -> bool:
        if not self.playing and self.now >= self.end:
            self.now = self.start  # playing from the end starts over
        self.playing = not self.playing
        return self.playing

    def faster(self) -> float:
        self.speed = next((s for s in SPEEDS if s > self.speed), SPEEDS[-1])
        return self.speed

    def slower(self) -> float:
        self.speed = next((s for s in reversed(SPEEDS) if s < self.speed), SPEEDS[0])
        return self.speed

    def advance(self, wall_s: float) -> bool:
        """Called by the player's timer: moves now when playing; False once at the end."""
        if not self.playing:
            return False
        self.seek(self.now + wall_s * self.speed)
        if self.now >= self.end:
            self.playing = False
        return True

    def _show_time(self, at: float, host: str | None = None) -> float:
        """The first poll (of `host`, when given) taken at or after `at`: the one that can
        show what happened then."""
        times = self._host_times.get(host, self.times) if host else self.times
        i = bisect.bisect_left(times, at - 1e-9)
        return times[i] if i < len(times) else self.end

    def next_event(self) -> Mark | None:
        """Seek to the first poll that shows the next event or action after now."""
        shown_now = self.now
        for mark in self.marks:
            target = self._show_time(mark.at, mark.host)
            if target > shown_now + 1e-9:
                self.playing = False
                self.seek(target)
                return mark
        return None

    def next_critical(self) -> PollRef | None:
        """Seek to the next poll where a host turned critical (was not, on its poll before)."""
        best: PollRef | None = None
        for refs in self._by_host.values():
            for prev, ref in zip([None, *refs], refs, strict=False):
                if ref.taken_at <= self.now + 1e-9:
                    continue
                if ref.severity == "critical" and (prev is None or prev.severity != "critical"):
                    if best is None or ref.taken_at < best.taken_at:
                        best = ref
                    break
        if best is not None:
            self.playing = False
            self.seek(best.taken_at)
        return best


_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?$")
_RELATIVE = re.compile(r"^([+-])\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_time(text: str, reference: float) -> float:
    """A time as a user types it, for --at, --from, --to and the replay's jump:
    `HH:MM[:SS]` (local time, on the day of `reference`), `YYYY-MM-DD HH:MM[:SS]` or
    `YYYY-MM-DDTHH:MM[:SS]` (local), `+30s` / `-2m` (from `reference`), or epoch seconds."""
    value = text.strip()
    m = _RELATIVE.match(value)
    if m:
        delta = float(m.group(2)) * _UNITS[m.group(3)]
        return reference + (delta if m.group(1) == "+" else -delta)
    m = _CLOCK.match(value)
    if m:
        day = time.localtime(reference)
        seconds = float(m.group(3) or 0)
        return time.mktime((day.tm_year, day.tm_mon, day.tm_mday, int(m.group(1)),
                            int(m.group(2)), int(seconds), 0, 0, -1)) + seconds % 1
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"):
        try:
            return time.mktime(time.strptime(value, fmt))
        except ValueError:
            continue
    try:
        epoch = float(value)
    except ValueError:
        epoch = float("nan")
    if epoch == epoch and 1e8 < epoch < 1e11:
        return epoch
    raise TimeError(f"cannot read the time {text!r}: use HH:MM[:SS], YYYY-MM-DD HH:MM[:SS], "
                    "+30s / -2m, or epoch seconds")


def clock_text(at: float) -> str:
    """A time as the replay and the report show it (local, to the second)."""
    return time.strftime("%H:%M:%S", time.localtime(at))

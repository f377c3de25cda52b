"""The replay timeline (no Textual): frames, steps, play, jumps, typed times."""

from __future__ import annotations

import time

import pytest

from stackmon.record.replay import TimeError, Timeline, parse_time
from stackmon.record.store import ActionRow, EventRow, PollRef

T0 = 1_800_000_000.0


def refs() -> list[PollRef]:
    """Two hosts polled a second apart, b half a second after a; b critical at 5-6, a at 8."""
    out = []
    for i in range(10):
        out.append(PollRef(2 * i + 1, "a", T0 + i, "critical" if i == 8 else "ok", 0, None))
        out.append(PollRef(2 * i + 2, "b", T0 + i + 0.5,
                           "critical" if i in (5, 6) else "warn", 0, None))
    return out


def test_frame_is_each_hosts_latest_poll() -> None:
    t = Timeline(refs())
    assert t.now == T0 and set(t.frame()) == {"a"}
    t.seek(T0 + 3.7)
    f = t.frame()
    assert (f["a"].taken_at, f["b"].taken_at) == (T0 + 3, T0 + 3.5)
    assert t.position() == (8, 20)


def test_steps_go_poll_by_poll_and_stop_at_the_ends() -> None:
    t = Timeline(refs())
    t.step()
    assert t.now == T0 + 0.5
    t.step(3)
    assert t.now == T0 + 2
    t.step(-1)
    assert t.now == T0 + 1.5
    t.step(-100)
    assert t.now == T0
    t.step(100)
    assert t.now == t.end == T0 + 9.5


def test_play_faster_slower() -> None:
    t = Timeline(refs())
    assert t.toggle_play()
    t.advance(1.0)
    assert t.now == T0 + 1
    assert t.faster() == 2.0
    t.advance(1.0)
    assert t.now == T0 + 3
    assert t.slower() == 1.0 and t.slower() == 0.5
    for _ in range(100):
        t.advance(1.0)
    assert t.now == t.end and not t.playing
    t.toggle_play()  # from the end: starts over
    assert t.now == t.start and t.playing
    t.step()
    assert not t.playing  # stepping pauses


def test_next_critical_is_where_a_host_turned_critical() -> None:
    t = Timeline(refs())
    hit = t.next_critical()
    assert hit is not None and (hit.host, t.now) == ("b", T0 + 5.5)
    hit = t.next_critical()  # b stays critical at 6.5: not a new turn; a turns at 8
    assert hit is not None and (hit.host, t.now) == ("a", T0 + 8)
    assert t.next_critical() is None and t.now == T0 + 8


def test_next_event_shows_the_first_poll_that_can_show_it() -> None:
    events = [EventRow("b", T0 + 2.2, "uwsgi", "harakiri", 3, 99, "/x", "HARAKIRI ON WORKER 3")]
    actions = [ActionRow("a", T0 + 6.1, "kill", "ok", "root", 2, 42, "/hang", "killed")]
    t = Timeline(refs(), events, actions)
    mark = t.next_event()
    assert mark is not None and mark.what.startswith("harakiri") and t.now == T0 + 2.5
    assert t.last_mark() == mark
    mark = t.next_event()
    assert mark is not None and "kill" in mark.what and t.now == T0 + 7
    assert t.next_event() is None


def test_parse_time_forms() -> None:
    ref = T0 + 0.25
    day = time.localtime(ref)
    assert parse_time("+30s", ref) == ref + 30
    assert parse_time("-2m", ref) == ref - 120
    hhmm = f"{day.tm_hour:02d}:{day.tm_min:02d}:{day.tm_sec:02d}"
    assert parse_time(hhmm, ref) == T0
    assert parse_time(time.strftime("%Y-%m-%d %H:%M:%S", day), ref) == T0
    assert parse_time(str(T0), ref) == T0
    with pytest.raises(TimeError, match="HH:MM"):
        parse_time("yesterday", ref)
    with pytest.raises(ValueError, match="no poll"):
        Timeline([])

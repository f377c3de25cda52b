"""`stackmon replay FILE [--at TIME] [--from TIME] [--to TIME]`: the TUI on a recording."""

from __future__ import annotations

import argparse
import sys

from stackmon.config import ConfigError, Settings


def configure(name: str, p: argparse.ArgumentParser) -> None:
    p.description = ("The TUI on a recording: play, pause, step, jump to a time, to the next "
                     "event or the next time a host turned critical. Actions are disabled.")
    p.add_argument("file", metavar="FILE", help="a recording (stackmon record, --record)")
    p.add_argument("--at", metavar="TIME",
                   help="start at this time (HH:MM[:SS], YYYY-MM-DD HH:MM:SS, +30s from the "
                        "start, or epoch seconds)")
    p.add_argument("--from", dest="start", metavar="TIME", help="replay from this time")
    p.add_argument("--to", dest="end", metavar="TIME", help="replay up to this time")


def settings_of(meta: dict[str, object]) -> Settings:
    """The thresholds the recording was made with (defaults for what it does not say)."""
    values: dict[str, float] = {}
    for key in ("interval", "slow", "critical", "window"):
        value = meta.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            values[key] = float(value)
    return Settings(**values)  # type: ignore[arg-type]


def open_period(path: str, start: str | None, end: str | None) -> tuple[object, object]:
    """(Recording, Timeline) over [start, end]; ConfigError with one line when there is
    nothing to show. Damage is reported on stderr and what is readable is used."""
    from stackmon.record.replay import TimeError, Timeline, parse_time
    from stackmon.record.store import Recording, RecordingError

    try:
        recording = Recording.open(path)
        every = recording.polls()
    except RecordingError as exc:
        raise ConfigError(str(exc)) from None
    if not every:
        raise ConfigError(f"{path}: the recording holds no readable poll"
                          + (f" ({recording.problems[0]})" if recording.problems else ""))
    first = every[0].taken_at
    try:
        lo = parse_time(start, first) if start else None
        hi = parse_time(end, first) if end else None
    except TimeError as exc:
        raise ConfigError(str(exc)) from None
    refs = [r for r in every if (lo is None or r.taken_at >= lo) and (hi is None or
                                                                      r.taken_at <= hi)]
    if not refs:
        raise ConfigError(f"{path}: no poll between the times given (the recording covers "
                          f"{_span(every[0].taken_at, every[-1].taken_at)})")
    report_damage(recording)
    timeline = Timeline(refs, recording.events(lo, hi), recording.actions(lo, hi))
    return recording, timeline


def _span(a: float, b: float) -> str:
    import time

    fmt = "%Y-%m-%d %H:%M:%S"
    return f"{time.strftime(fmt, time.localtime(a))} to {time.strftime(fmt, time.localtime(b))}"


def report_damage(recording: object) -> None:
    problems = getattr(recording, "problems", [])
    if problems:
        print(f"stackmon: {getattr(recording, 'path', '')} is damaged; showing what can be "
              f"read ({len(problems)} problem(s), first: {problems[0]})", file=sys.stderr)


def run(name: str, args: argparse.Namespace) -> int:
    from stackmon.record.replay import TimeError, Timeline, parse_time
    from stackmon.record.store import Recording

    recording, timeline = open_period(args.file, args.start, args.end)
    assert isinstance(recording, Recording) and isinstance(timeline, Timeline)
    if args.at:
        try:
            timeline.seek(parse_time(args.at, timeline.start))
        except TimeError as exc:
            raise ConfigError(str(exc)) from None
    try:
        from tui.replay_app import run_replay
    except ImportError as exc:
        print(f"stackmon: the terminal UI cannot start ({exc})", file=sys.stderr)
        return 2
    return run_replay(recording, timeline, settings_of(recording.settings))

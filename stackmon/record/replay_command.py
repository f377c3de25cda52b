"""`stackmon replay FILE [--at TIME] [--from TIME] [--to TIME]`: the TUI on a recording.

`stackmon replay --host NAME [--hosts HOSTS.toml] [--save FILE]`: the same on a host's own
history (Host.history: its agent's `--record` recording), fetched into a recording file first
(a temporary one unless --save), so the replay and `stackmon report --host` work on exactly
what they work on for a file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from stackmon.config import ConfigError, HostConfig, Settings

if TYPE_CHECKING:
    from stackmon.record.history import Saved

# A host's history without --from: the last hour (an agent may hold a day or more, and
# fetching all of it is a lot to wait for when the question is usually "what just happened").
DEFAULT_PERIOD = "-1h"


def configure(name: str, p: argparse.ArgumentParser) -> None:
    p.description = ("The TUI on a recording: play, pause, step, jump to a time, to the next "
                     "event or the next time a host turned critical. Actions are disabled.")
    p.add_argument("file", metavar="FILE", nargs="?",
                   help="a recording (stackmon record, --record)")
    add_host_source(p)
    p.add_argument("--at", metavar="TIME",
                   help="start at this time (HH:MM[:SS], YYYY-MM-DD HH:MM:SS, +30s from the "
                        "start, or epoch seconds)")
    p.add_argument("--from", dest="start", metavar="TIME",
                   help=f"replay from this time (with --host: --from=-2h is two hours ago; "
                        f"default {DEFAULT_PERIOD})")
    p.add_argument("--to", dest="end", metavar="TIME", help="replay up to this time")


def add_host_source(p: argparse.ArgumentParser) -> None:
    """--host NAME [--hosts FILE] [--save FILE]: a host's history instead of a FILE."""
    p.add_argument("--host", metavar="NAME",
                   help="instead of FILE: this host's history, from its agent (started with "
                        "--record DIR)")
    p.add_argument("--hosts", metavar="HOSTS.toml",
                   help="with --host: the hosts file naming it (default: "
                        "$XDG_CONFIG_HOME/stackmon/hosts.toml)")
    p.add_argument("--save", metavar="FILE",
                   help="with --host: keep the fetched history in this new recording file")


@contextlib.contextmanager
def recording_of(args: argparse.Namespace, command: str) -> Iterator[tuple[str, bool]]:
    """(path of the recording to read, whether it came from a host) for FILE or --host;
    with --host the history is fetched first and --from/--to are applied there. ConfigError
    with one line for bad usage or a history that cannot be had."""
    if args.host is None:
        if args.hosts or args.save:
            raise ConfigError("--hosts and --save go with --host NAME")
        if not args.file:
            raise ConfigError(f"give a recording FILE or --host NAME (see stackmon {command} "
                              "--help)")
        yield args.file, False
        return
    if args.file:
        raise ConfigError("give either a recording FILE or --host NAME, not both")
    if args.save:
        if os.path.lexists(args.save):
            raise ConfigError(f"--save {args.save}: the file exists (give a new file)")
        try:
            path = fetch_history(args, args.save, command)
        except ConfigError:
            for suffix in ("", "-wal", "-shm"):  # no half-written file left behind
                with contextlib.suppress(OSError):
                    os.unlink(args.save + suffix)
            raise
        yield path, True
        return
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="stackmon-history-")  # 0700
    try:
        yield fetch_history(args, os.path.join(folder, f"{_safe(args.host)}.stackmon.db"),
                            command), True
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100].lstrip(".") or "host"


def fetch_history(args: argparse.Namespace, path: str, command: str) -> str:
    """The history of host --host in [--from, --to] written into a new recording at `path`."""
    import asyncio
    import time
    from pathlib import Path

    from stackmon.config import default_hosts_file, load_hosts_file
    from stackmon.record.replay import TimeError, parse_time

    source = Path(args.hosts).expanduser() if args.hosts else default_hosts_file()
    targets = load_hosts_file(source)
    config = next((h for h in targets.hosts if h.name == args.host), None)
    if config is None:
        names = ", ".join(h.name for h in targets.hosts[:20])
        raise ConfigError(f"no host {args.host!r} in {targets.source} (hosts: {names})")
    now = time.time()
    try:
        since = parse_time(args.start or DEFAULT_PERIOD, now)
        until = parse_time(args.end, now) if args.end else None
    except TimeError as exc:
        raise ConfigError(str(exc)) from None
    saved = asyncio.run(_fetch(config, targets.settings_for(config), path, since, until))
    from stackmon.record.replay import clock_text

    period = f"from {clock_text(since)}" + (f" to {clock_text(until)}" if until else "")
    if not saved.polls:
        first = f" ({saved.problems[0]})" if saved.problems else ""
        raise ConfigError(f"the history of {args.host} holds no poll {period}{first}")
    print(f"stackmon {command}: {saved.polls} poll(s) of {args.host} from "
          f"{clock_text(since)}" + (f" to {clock_text(until)}" if until else "")
          + f" ({saved.pages} page(s))", file=sys.stderr)
    if saved.next_from is not None:
        print(f"stackmon {command}: stopped at the size limit; the rest starts at "
              f"{clock_text(saved.next_from)} (--from {saved.next_from!r})", file=sys.stderr)
    if saved.problems:
        print(f"stackmon {command}: {len(saved.problems)} problem(s) in the history, first: "
              f"{saved.problems[0]}", file=sys.stderr)
    return path


async def _fetch(config: HostConfig, settings: Settings, path: str, since: float,
                 until: float | None) -> Saved:
    from stackmon.hosts import open_host
    from stackmon.record.history import HistoryError, save_history
    from stackmon.record.record_command import settings_meta
    from stackmon.record.store import RecordingError

    host = open_host(config, settings)
    try:
        return await save_history(host.history_pages(since, until), path,
                                  settings_meta(host.settings))
    except (HistoryError, RecordingError) as exc:
        raise ConfigError(str(exc)) from None
    finally:
        await host.aclose()


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
    with recording_of(args, name) as (path, fetched):
        # a fetched history is already the period asked for (--from/--to were the agent's)
        return _replay(args, path, None if fetched else args.start,
                       None if fetched else args.end)


def _replay(args: argparse.Namespace, path: str, start: str | None, end: str | None) -> int:
    from stackmon.record.replay import TimeError, Timeline, parse_time
    from stackmon.record.store import Recording

    recording, timeline = open_period(path, start, end)
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

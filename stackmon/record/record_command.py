"""`stackmon record [HOSTS.toml | targets] --out FILE [--duration D] [--retain D]`.

Polls every host with the same Fleet the TUI uses and stores each poll (stackmon.record.store),
until --duration is over, or Ctrl-C / SIGTERM. Actions taken meanwhile (from any stackmon: the
audit log is shared) are stored with them. Also the hook `stackmon --record FILE` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import Any

from stackmon.config import ConfigError, Settings, Targets, parse_duration


def configure(name: str, p: argparse.ArgumentParser) -> None:
    from stackmon.cli import add_targets

    p.description = ("Record every poll of every host into one file, for `stackmon replay` "
                     "and `stackmon report`.")
    add_targets(p)
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the recording (SQLite; appended to when it exists)")
    p.add_argument("--duration", metavar="D", help="stop after this long (default: Ctrl-C)")
    p.add_argument("--retain", metavar="D",
                   help="keep only this much history in the file (default: everything)")
    p.add_argument("--interval", metavar="D", help="poll interval (default 1s)")
    p.add_argument("--audit-log", metavar="F",
                   help="audit log whose actions to record (default "
                        "$XDG_STATE_HOME/stackmon/audit.log)")


def settings_meta(settings: Settings) -> dict[str, Any]:
    """What a replay needs to grade and show the polls as they were graded live."""
    return {"interval": settings.interval, "slow": settings.slow,
            "critical": settings.critical, "window": settings.window}


def open_recorder(path: str, targets: Targets, retain: str | None,
                  audit_log: str | None = None) -> Any:
    """A ThreadedRecorder on `path` for `targets` (ConfigError with one line if it cannot)."""
    from stackmon.actions.audit import default_audit_path
    from stackmon.record.store import Recorder, RecordingError, ThreadedRecorder

    retain_s = parse_duration(retain, "--retain") if retain else None
    try:
        recorder = Recorder(path, retain_s=retain_s, settings=settings_meta(targets.settings),
                            audit_path=audit_log or default_audit_path())
    except RecordingError as exc:
        raise ConfigError(str(exc)) from None
    return ThreadedRecorder(recorder)


def run(name: str, args: argparse.Namespace) -> int:
    from stackmon.cli import resolve_targets

    targets = resolve_targets(args)
    duration = parse_duration(args.duration, "--duration") if args.duration else None
    threaded = open_recorder(args.out, targets, args.retain, args.audit_log)
    started = time.monotonic()
    hosts = ", ".join(h.name for h in targets.hosts)
    print(f"stackmon record: {len(targets.hosts)} host(s) ({hosts}) into {args.out}"
          + (f" for {args.duration}" if duration else " until Ctrl-C"), file=sys.stderr,
          flush=True)
    try:
        asyncio.run(_record(targets, threaded.submit, duration))
    finally:
        threaded.close()
    polls = threaded.recorder.polls
    took = time.monotonic() - started
    extra = f", {threaded.dropped} dropped (disk too slow)" if threaded.dropped else ""
    print(f"stackmon record: {polls} poll(s) in {took:.0f} s{extra}", file=sys.stderr)
    if threaded.error:
        print(f"stackmon record: {threaded.error}", file=sys.stderr)
        return 1
    return 0


async def _record(targets: Targets, submit: Any, duration: float | None) -> None:
    from stackmon.poller import Fleet

    fleet = Fleet(targets, lambda _i, snap: submit(snap))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(fleet.run())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

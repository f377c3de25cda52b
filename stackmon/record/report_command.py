"""`stackmon report FILE [--from TIME] [--to TIME] --out incident.html [--format html|md]`, or
`stackmon report --host NAME [--hosts HOSTS.toml] ...` on a host's history (its agent's)."""

from __future__ import annotations

import argparse
import os
import sys

from stackmon.config import ConfigError


def configure(name: str, p: argparse.ArgumentParser) -> None:
    p.description = ("An incident report from a recording: a summary, charts (busy workers, "
                     "queues, 5xx by cause, requests/s and latency, fds) with events and actions "
                     "marked, the stuck requests and how they ended. One HTML file readable "
                     "offline, or Markdown for a ticket.")
    from stackmon.record.replay_command import add_host_source

    p.add_argument("file", metavar="FILE", nargs="?",
                   help="a recording (stackmon record, --record)")
    add_host_source(p)
    p.add_argument("--from", dest="start", metavar="TIME",
                   help="from this time (HH:MM[:SS], YYYY-MM-DD HH:MM:SS, +30s, epoch)")
    p.add_argument("--to", dest="end", metavar="TIME", help="up to this time")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the report "
                                                                "(- for stdout)")
    p.add_argument("--format", choices=("html", "md"), default=None,
                   help="html (default; .md files default to md) or md")
    p.add_argument("--title", help="the report's title (default: from the recording's name)")


def run(name: str, args: argparse.Namespace) -> int:
    from stackmon.record.replay_command import recording_of

    with recording_of(args, name) as (path, fetched):
        if fetched:  # the agent applied --from/--to; the title names the host, not a temp file
            title = args.title or f"Incident report: {args.host}"
            return _report(args, path, None, None, title)
        return _report(args, path, args.start, args.end,
                       args.title or f"Incident report: {os.path.basename(path)}")


def _report(args: argparse.Namespace, path: str, start: str | None, end: str | None,
            title: str) -> int:
    from stackmon.record.replay import TimeError, parse_time
    from stackmon.record.replay_command import report_damage
    from stackmon.record.report import analyse
    from stackmon.record.report_render import report_html, report_md
    from stackmon.record.store import Recording, RecordingError

    fmt = args.format or ("md" if str(args.out).endswith(".md") else "html")
    try:
        recording = Recording.open(path)
        every = recording.polls()
    except RecordingError as exc:
        raise ConfigError(str(exc)) from None
    if not every:
        raise ConfigError(f"{path}: the recording holds no readable poll")
    first = every[0].taken_at
    try:
        lo = parse_time(start, first) if start else None
        hi = parse_time(end, first) if end else None
    except TimeError as exc:
        raise ConfigError(str(exc)) from None
    incident = analyse(recording, lo, hi)
    if not incident.polls:
        raise ConfigError(f"{path}: no readable poll between the times given")
    report_damage(recording)
    text = report_md(incident, title) if fmt == "md" else report_html(incident, title)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"stackmon report: {args.out} ({incident.polls} polls, {len(incident.stuck)} stuck "
          f"request(s), {len(incident.events)} event(s), {len(incident.actions)} action(s))",
          file=sys.stderr)
    return 0

"""The `stackmon` command line (docs/contracts.md): parse, resolve targets, dispatch.

Usage errors are one line on stderr and exit 2; nothing a user types or a server sends ends in a
traceback. The TUI is imported only when it is opened, so `snapshot` and the agent run on hosts
without a terminal and the core never imports Textual.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from stackmon import __version__
from stackmon.config import (
    ConfigError,
    Targets,
    default_hosts_file,
    load_hosts_file,
    select_group,
)
from stackmon.config import targets_from_args as _from_args

if TYPE_CHECKING:
    from stackmon.model import Snapshot

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

# Subcommands that live in their own module: `configure(name, parser)` adds the arguments,
# `run(name, args) -> int` does the work (importing anything heavy only then).
PLUGGED: dict[str, str] = {
    "kill": "stackmon.actions.command",
    "reload": "stackmon.actions.command",
    "agent": "stackmon.agent.command",
    "doctor": "stackmon.doctor.command",
    "stack": "stackmon.actions.stack_command",
    "record": "stackmon.record.record_command",
    "replay": "stackmon.record.replay_command",
    "report": "stackmon.record.report_command",
}


class UsageError(Exception):
    """Bad usage: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and never exits behind our back."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see stackmon {self.prog.split()[-1]} --help)"
                         if " " in self.prog else f"{message} (see stackmon --help)")


def add_targets(p: argparse.ArgumentParser) -> None:
    p.add_argument("hosts_file", nargs="?", metavar="HOSTS.toml",
                   help="hosts file (default: $XDG_CONFIG_HOME/stackmon/hosts.toml)")
    p.add_argument("--uwsgi", action="append", default=[], metavar="ADDR",
                   help="uWSGI stats address: host:port, unix path, @abstract, http://host:port "
                        "(repeatable)")
    p.add_argument("--nginx", metavar="URL", help="nginx stub_status URL")
    p.add_argument("--name", help="host name to show for --uwsgi/--nginx targets")
    p.add_argument("--slow", metavar="D", help="requests running longer are slow (default 10s)")
    p.add_argument("--critical", metavar="D",
                   help="requests running longer are critical (default 60s)")
    p.add_argument("--timeout", metavar="D", help="per-source timeout (default 2s)")
    p.add_argument("--health", metavar="URL",
                   help="the load balancer's health-check URL (through nginx), probed as it is")
    p.add_argument("--nginx-access-log", metavar="F",
                   help="nginx access log (default: found from the running nginx's config)")
    p.add_argument("--nginx-error-log", metavar="F",
                   help="nginx error log (default: found from the running nginx's config)")
    p.add_argument("--uwsgi-log", action="append", default=[], metavar="F",
                   help="uWSGI log, one per --uwsgi in order (default: from its config)")
    p.add_argument("--window", metavar="D",
                   help="how far back log figures reach (default 60s)")
    p.add_argument("--group", metavar="G",
                   help="only the hosts of this group (group = \"G\" in the hosts file)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("slow", "critical", "timeout", "interval", "window"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    if getattr(args, "read_only", False):
        out["read_only"] = True
    return out


def resolve_targets(args: argparse.Namespace) -> Targets:
    """Hosts file or --uwsgi/--nginx, never both; the default hosts file when neither;
    narrowed to one group by --group."""
    targets = _resolve_all(args)
    group = getattr(args, "group", None)
    return select_group(targets, group) if group is not None else targets


def _resolve_all(args: argparse.Namespace) -> Targets:
    overrides = _overrides(args)
    if args.uwsgi or args.nginx:
        if getattr(args, "group", None) is not None:
            raise ConfigError("--group selects hosts of a hosts file, not --uwsgi/--nginx "
                              "targets")
        if args.hosts_file:
            raise ConfigError("give either a hosts file or --uwsgi/--nginx targets, not both")
        return _from_args(args.uwsgi, args.nginx, overrides, args.name, health=args.health,
                          nginx_access_log=args.nginx_access_log,
                          nginx_error_log=args.nginx_error_log, uwsgi_log=args.uwsgi_log)
    if args.health or args.nginx_access_log or args.nginx_error_log or args.uwsgi_log:
        raise ConfigError("--health and --*-log go with --uwsgi/--nginx targets; in a hosts "
                          "file use health, nginx_access_log, nginx_error_log, uwsgi_log")
    if args.hosts_file:
        return load_hosts_file(Path(args.hosts_file).expanduser(), overrides)
    default = default_hosts_file()
    if not default.exists():
        raise ConfigError(f"nothing to watch: give --uwsgi ADDR / --nginx URL or a hosts file "
                          f"(the default {default} does not exist); try `stackmon demo`")
    return load_hosts_file(default, overrides)


def build_parser() -> tuple[_Parser, dict[str, _Parser]]:
    main = _Parser(prog="stackmon", description="Watch and fix an nginx + uWSGI stack.",
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_targets(main)
    main.add_argument("--version", action="version", version=f"stackmon {__version__}")
    main.add_argument("--interval", metavar="D", help="poll interval (default 1s)")
    main.add_argument("--read-only", action="store_true", help="disable every action")
    main.add_argument("--record", metavar="FILE",
                      help="also record every poll into FILE (see stackmon replay, report)")
    main.add_argument("--retain", metavar="D", help="with --record: keep only this much")
    subs: dict[str, _Parser] = {}

    snap = _Parser(prog="stackmon snapshot", description="One poll of every host, printed.")
    add_targets(snap)
    snap.add_argument("--json", action="store_true", help="print the snapshot JSON (schema 1)")
    snap.add_argument("--rate-window", metavar="D", default="0.5s",
                      help="sample nginx twice this far apart for req/s (default 0.5s; 0: off)")
    subs["snapshot"] = snap

    demo = _Parser(prog="stackmon demo", description="Start a live local stack and watch it.")
    demo.add_argument("--no-ui", action="store_true",
                      help="start the stack and traffic, print its targets, wait for Ctrl-C")
    demo.add_argument("--workdir", metavar="DIR", help="where the stack keeps its files")
    demo.add_argument("--interval", metavar="D", help="poll interval (default 1s)")
    demo.add_argument("--slow", metavar="D", default="5s", help="slow threshold (default 5s)")
    demo.add_argument("--critical", metavar="D", default="20s",
                      help="critical threshold (default 20s)")
    subs["demo"] = demo
    for name, module in PLUGGED.items():
        sub = _Parser(prog=f"stackmon {name}")
        importlib.import_module(module).configure(name, sub)
        subs[name] = sub
    main.epilog = _commands_epilog(subs)
    return main, subs


def _commands_epilog(subs: dict[str, _Parser]) -> str:
    """`stackmon --help` names every subcommand (without one, stackmon opens the TUI)."""
    lines = ["commands (stackmon COMMAND --help for each):"]
    for name, sub in subs.items():
        about = (sub.description or "").strip().split("\n", 1)[0].split("; ")[0]
        about = about.split(" (")[0].rstrip(".")
        about = about if len(about) <= 66 else about[:65].rstrip() + "…"
        lines.append(f"  {name:<10} {about}".rstrip())
    lines.append("  (none)     open the terminal UI on the targets above")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    main_parser, subs = build_parser()
    try:
        if argv and argv[0] in subs:
            command, args = argv[0], subs[argv[0]].parse_args(argv[1:])
        else:
            command, args = "tui", main_parser.parse_args(argv)
        return _dispatch(command, args)
    except (UsageError, ConfigError) as exc:
        print(f"stackmon: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _dispatch(command: str, args: argparse.Namespace) -> int:
    if command == "snapshot":
        return _snapshot(args)
    if command == "demo":
        from stackmon.demo.run import run_demo

        return run_demo(args)
    if command in PLUGGED:
        return int(importlib.import_module(PLUGGED[command]).run(command, args))
    targets = resolve_targets(args)
    if args.retain and not args.record:
        raise UsageError("--retain goes with --record FILE (see stackmon --help)")
    return open_tui(targets, record=args.record, retain=args.retain)


def open_tui(targets: Targets, record: str | None = None, retain: str | None = None) -> int:
    try:
        from tui.app import run_app
    except ImportError as exc:  # the TUI is an installed part of stackmon; say what is missing
        print(f"stackmon: the terminal UI cannot start ({exc})", file=sys.stderr)
        return EXIT_USAGE
    if record:  # the flight recorder (stackmon.record): every poll also stored
        from stackmon.record.record_command import open_recorder
        from tui.replay_app import run_recording

        return run_recording(targets, open_recorder(record, targets, retain))
    return run_app(targets)


def _snapshot(args: argparse.Namespace) -> int:
    from stackmon.config import parse_duration
    from stackmon.hosts.once import poll_once
    from stackmon.render_text import render_snapshot
    from stackmon.snapshot_json import snapshot_to_dict

    targets = resolve_targets(args)
    window = 0.0 if str(args.rate_window).strip() in ("0", "0s") else parse_duration(
        args.rate_window, "--rate-window")
    snap = asyncio.run(poll_once(targets, rate_window=window))
    if args.json:
        json.dump(snapshot_to_dict(snap), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_snapshot(snap, targets.settings.thresholds))
    sys.stdout.flush()
    return snapshot_exit_code(snap)


def snapshot_exit_code(snap: Snapshot) -> int:
    """3 when a host could not be reached at all, 1 when one is critical (the health model:
    a request past --critical, a full queue, 5xx above the threshold, the LB taking it out),
    else 0. A source limited by permissions is an error entry of its host, not exit 3."""
    from stackmon.health import assess

    if any(not h.reachable for h in snap.hosts):
        return EXIT_UNREACHABLE
    if any(assess(h).critical for h in snap.hosts):
        return EXIT_PROBLEMS
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

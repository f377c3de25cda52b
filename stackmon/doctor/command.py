"""`stackmon doctor`: check uWSGI, nginx, the kernel and the load balancer's settings against
each other, and a live host against its own configuration.

Plugged into the CLI (stackmon.cli.PLUGGED): `configure` adds the arguments, `run` does the
work. Only argparse and the CLI's helpers are imported up front; crossplane and the rest load
when the command runs, so `stackmon --help` stays fast.

Exit codes: 0 no warn/critical finding; 1 at least one; 2 bad usage or an unreadable file the
user named (one line "stackmon: FILE:LINE: message", no traceback); 3 no problem found but a
target host could not be reached (so the check is incomplete).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from stackmon.cli import EXIT_OK, EXIT_PROBLEMS, EXIT_UNREACHABLE, EXIT_USAGE, add_targets

if TYPE_CHECKING:
    from stackmon.doctor.facts import LbSettings


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.description = ("Check uWSGI, nginx, the kernel and the load balancer's settings "
                          "against each other (files and/or live hosts).")
    add_targets(parser)
    parser.add_argument("--uwsgi-ini", action="append", default=[], metavar="F",
                        help="a uWSGI ini file to check (FILE or FILE:SECTION; repeatable)")
    parser.add_argument("--nginx-conf", action="append", default=[], metavar="F",
                        help="an nginx config to check, with its includes (default for a live "
                             "host: the running master's, from its command line)")
    parser.add_argument("--lb-idle-timeout", metavar="S", default="60s",
                        help="load balancer idle timeout (default 60s)")
    parser.add_argument("--lb-health-timeout", metavar="S", default="5s",
                        help="health check timeout (default 5s)")
    parser.add_argument("--lb-health-interval", metavar="S", default="30s",
                        help="health check interval (default 30s)")
    parser.add_argument("--lb-unhealthy-threshold", metavar="N", default="2",
                        help="failed checks before a host is taken out (default 2)")
    parser.add_argument("--sample", metavar="D", default="1s",
                        help="time between the two live samples that show rising counters "
                             "(default 1s; 0: one sample)")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON (schema 1)")


def _lb(args: argparse.Namespace) -> LbSettings:
    from stackmon.config import ConfigError, parse_duration
    from stackmon.doctor.facts import LbSettings

    threshold = str(args.lb_unhealthy_threshold).strip()
    if not threshold.isdigit() or int(threshold) < 1:
        raise ConfigError(f"--lb-unhealthy-threshold: expected a whole number >= 1, "
                          f"got {args.lb_unhealthy_threshold!r}")
    return LbSettings(
        idle_timeout=parse_duration(args.lb_idle_timeout, "--lb-idle-timeout"),
        health_timeout=parse_duration(args.lb_health_timeout, "--lb-health-timeout"),
        health_interval=parse_duration(args.lb_health_interval, "--lb-health-interval"),
        unhealthy_threshold=int(threshold),
    )


def _sample(value: str) -> float:
    from stackmon.config import parse_duration

    return 0.0 if str(value).strip() in ("0", "0s") else parse_duration(value, "--sample")


def run(name: str, args: argparse.Namespace) -> int:
    from stackmon.cli import resolve_targets
    from stackmon.config import ConfigError, default_hosts_file
    from stackmon.doctor.api import diagnose
    from stackmon.doctor.render import render_json, render_text

    lb = _lb(args)
    sample = _sample(args.sample)
    targets = None
    files = bool(args.uwsgi_ini or args.nginx_conf)
    if args.hosts_file or args.uwsgi or args.nginx:
        targets = resolve_targets(args)
    elif not files:
        if not default_hosts_file().exists():
            raise ConfigError("nothing to check: give a hosts file, --uwsgi/--nginx targets, "
                              "--uwsgi-ini or --nginx-conf")
        targets = resolve_targets(args)
    try:
        result = diagnose(targets, args.uwsgi_ini, args.nginx_conf, lb, sample)
    except ValueError as exc:  # ConfigFileError / NginxConfError: "FILE:LINE: message"
        print(f"stackmon: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = render_json(result.report) if args.json else render_text(result.report)
    sys.stdout.write(out)
    sys.stdout.flush()
    if result.report.problems:
        return EXIT_PROBLEMS
    if result.unreachable:
        return EXIT_UNREACHABLE
    return EXIT_OK

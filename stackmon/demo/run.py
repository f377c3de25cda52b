"""`stackmon demo`: a real uWSGI + nginx stack on loopback, misbehaving traffic, and the TUI.

Everything it starts it stops on exit, by pid, whatever way the UI ends (q, Ctrl-C, a lost
SSH session). The stack is small on purpose (listen 32, 4 workers x 2 threads) so that stuck
requests and a filling queue show within seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from stackmon.addresses import parse_stats_address
from stackmon.config import ConfigError, HostConfig, Targets, parse_settings
from stackmon.demo.launcher import Stack, StackError
from stackmon.demo.traffic import TrafficThread

DEMO_LISTEN = 32
DEMO_MERCY = 15


def demo_targets(stack: Stack, args: argparse.Namespace) -> Targets:
    overrides = {k: v for k in ("interval", "slow", "critical")
                 if (v := getattr(args, k, None)) is not None}
    host = HostConfig(
        name="demo",
        uwsgi=(parse_stats_address(stack.stats_address),),
        nginx=stack.nginx_status_url,
        # Probed through nginx as a load balancer would: the demo's bursts make it fail.
        health=f"{stack.nginx_base_url}/healthz" if stack.nginx_base_url else None,
    )
    return Targets(hosts=(host,), settings=parse_settings(overrides, "command line"),
                   source="demo")


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run_demo(args: argparse.Namespace) -> int:
    # Check what the user typed before starting anything: a bad --slow must not cost a stack.
    settings_check = {k: v for k in ("interval", "slow", "critical")
                      if (v := getattr(args, k, None)) is not None}
    parse_settings(settings_check, "command line")  # raises ConfigError: exit 2, one line
    if args.workdir:
        workdir = Path(args.workdir)
        if workdir.exists() and not workdir.is_dir():
            raise ConfigError(f"--workdir {workdir}: exists and is not a directory")
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--workdir {workdir}: {exc.strerror or exc}") from None
    else:
        workdir = Path(tempfile.mkdtemp(prefix="stackmon-demo-"))
    try:
        return _run_in(workdir, args)
    finally:
        if not args.workdir:  # ours: a review found 60 of them left in /tmp
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"stackmon demo: removed {workdir} (--workdir DIR keeps the logs)",
                  file=sys.stderr)


def _run_in(workdir: Path, args: argparse.Namespace) -> int:
    """The demo in `workdir`: the stack started, the TUI (or --no-ui's wait), the stack
    stopped whatever happens."""
    # A lost SSH session sends SIGHUP, whose default ends the process at once: no finally, no
    # atexit, and the stack would run on. From here on it (and SIGTERM) is an exit that unwinds
    # through the finally below, even while the stack is still starting.
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, _exit_on_signal)
    print(f"stackmon demo: starting uWSGI and nginx in {workdir} ...", file=sys.stderr)
    try:
        stack = Stack.start(workdir, workers=4, threads=2, listen=DEMO_LISTEN,
                            mercy=DEMO_MERCY, name="demo")
    except StackError as exc:
        print(f"stackmon demo: the stack did not start: {exc}", file=sys.stderr)
        return 1
    except SystemExit:  # a signal while starting: the launcher stopped what it had started
        print("stackmon demo: interrupted while starting; stack stopped.", file=sys.stderr)
        raise
    traffic: TrafficThread | None = None
    try:
        if stack.nginx_skipped_reason:
            print(f"stackmon demo: running without nginx ({stack.nginx_skipped_reason})",
                  file=sys.stderr)
        base = stack.base_url
        if base:
            traffic = TrafficThread(base, capacity=stack.capacity, listen=DEMO_LISTEN,
                                    stats_address=stack.stats_address).start()
        targets = demo_targets(stack, args)
        if args.no_ui:
            print(f"uwsgi stats: {stack.stats_address}")
            print(f"nginx status: {stack.nginx_status_url}")
            print(f"site: {base}")
            print("Ctrl-C stops the stack.")
            # SIGHUP/SIGTERM end the wait through _exit_on_signal, like Ctrl-C does here.
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
            return 0
        from stackmon.cli import open_tui

        return open_tui(targets)
    finally:
        if traffic is not None:
            traffic.stop()
        stack.stop()
        print("stackmon demo: stack stopped.", file=sys.stderr)

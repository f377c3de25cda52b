"""`stackmon stack HOST WORKER_ID`: the Python stack of every thread of a worker, now.

Targets as for `stackmon kill` (a hosts-file entry, or `--uwsgi ADDR` with HOST as a label);
a host with an agent is traced by its agent. The worker's pid is read fresh from the stats
(or given with --pid, the pid you saw: refused if the worker has another one now) and checked
like a kill's (stackmon.actions.stack). Reading a stack changes nothing, so it is allowed in
read-only mode, needs no confirmation and is not audited.

Exit codes: 0 the stack is shown, 1 refused or failed (the reason on stderr: a stale pid, a
process that is not a worker, tracing not allowed and what to change), 2 bad usage, 3 the host
could not be read at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from stackmon.actions.base import ActionError
from stackmon.actions.command import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    _resolve,
)
from stackmon.actions.stack import StackResult, render_stack, stack_to_dict
from stackmon.config import ConfigError, HostConfig, Settings
from stackmon.hosts import open_host


def configure(name: str, p: argparse.ArgumentParser) -> None:
    p.description = ("The Python stack of every thread of a uWSGI worker, now (py-spy, without "
                     "pausing it); the thread serving its oldest request first, marked >>.")
    p.add_argument("host", metavar="HOST", help="host name from the hosts file")
    p.add_argument("worker_id", metavar="WORKER_ID", type=int, help="worker id (1, 2, ...)")
    p.add_argument("--instance", type=int, default=0, metavar="N",
                   help="index in the host's uwsgi list (default 0)")
    p.add_argument("--pid", type=int, metavar="PID",
                   help="the worker's pid as you saw it: refused if the worker has another now")
    p.add_argument("--locals", action="store_true",
                   help="show each frame's local variables (secrets redacted)")
    p.add_argument("--json", action="store_true", help="print the stack as JSON")
    p.add_argument("--hosts", metavar="HOSTS.toml", help="hosts file (default: "
                   "$XDG_CONFIG_HOME/stackmon/hosts.toml)")
    p.add_argument("--uwsgi", metavar="ADDR", help="trace a worker of this stats address "
                   "instead of a hosts-file entry (HOST is then just a label)")


def run(name: str, args: argparse.Namespace) -> int:
    try:
        targets, host = _resolve(args)
        if args.pid is not None and args.pid <= 0:
            raise ConfigError(f"--pid {args.pid}: must be a positive pid")
    except ConfigError as exc:
        print(f"stackmon {name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = asyncio.run(_trace(args, host, targets.settings))
    except ActionError as exc:
        print(f"stackmon {name}: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE if exc.kind == "gone" and "cannot read" in exc.message \
            else EXIT_FAILED
    except OSError as exc:
        print(f"stackmon {name}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\nstackmon {name}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(stack_to_dict(result), ensure_ascii=False, indent=1))
    else:
        print(render_stack(result))
    return EXIT_OK


async def _trace(args: argparse.Namespace, config: HostConfig,
                 settings: Settings) -> StackResult:
    host = open_host(config, settings)
    try:
        inst = await host.current_instance(args.instance)
        worker = next((w for w in inst.workers if w.id == args.worker_id), None)
        if worker is None:
            ids = ", ".join(str(w.id) for w in inst.workers) or "none"
            raise ActionError("not_found", f"{inst.address} on {host.name} has no worker "
                                           f"{args.worker_id} (workers: {ids})")
        pid = args.pid if args.pid is not None else worker.pid
        if pid <= 0:
            raise ActionError("stale", f"worker {worker.id} has no process now (respawning); "
                                       "try again in a moment")
        # The spawn time goes with the pid only when it is the pid just read.
        spawn = worker.last_spawn if pid == worker.pid and worker.last_spawn else None
        return await host.trace(args.instance, worker.id, pid, with_locals=args.locals,
                                expect_spawn=spawn)
    finally:
        await host.aclose()

"""`stackmon kill` and `stackmon reload`: the same actions as the TUI, for scripts and runbooks.

`kill --stack` captures the worker's Python stack first (stackmon.actions.stack), prints it and
appends it to the audit log, so the post-mortem knows where the worker was stuck.

Without --yes they show what they are about to do (pid, requests in flight and their ages) and
ask on the terminal; with no terminal to ask on, they refuse rather than guess.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from stackmon.actions.audit import AuditLog, AuditWriteError
from stackmon.actions.base import ActionError, ActionResult
from stackmon.actions.reload_progress import (
    AnswerTally,
    ClientAnswers,
    ReloadProgress,
    answers_said,
)
from stackmon.actions.rolling import RollPolicy, RollStep, rolling_reload
from stackmon.config import (
    ConfigError,
    HostConfig,
    Settings,
    Targets,
    default_hosts_file,
    load_hosts_file,
    parse_duration,
    select_group,
    targets_from_args,
)
from stackmon.hosts import Host, open_host
from stackmon.logs.host import LogSummary
from stackmon.model import UwsgiInstance, Worker
from stackmon.redact import visible
from stackmon.render_text import human_age

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def configure(name: str, p: argparse.ArgumentParser) -> None:
    if name == "kill":
        p.add_argument("host", metavar="HOST", help="host name from the hosts file")
    else:
        p.add_argument("host", metavar="HOST", nargs="?",
                       help="host name from the hosts file (or --group G --rolling)")
    if name == "kill":
        p.description = "Kill one uWSGI worker (it is respawned by its master)."
        p.add_argument("worker_id", metavar="WORKER_ID", type=int, help="worker id (1, 2, ...)")
        p.add_argument("--signal", choices=["TERM", "KILL"], default="TERM",
                       help="TERM aborts the request (KILL after 3 s if needed); KILL at once")
        p.add_argument("--usr2", action="store_true",
                       help="send SIGUSR2 first: the worker logs its request and backtrace")
        p.add_argument("--stack", action="store_true",
                       help="capture the worker's Python stack first (shown, and kept in the "
                            "audit log for the post-mortem); the kill goes ahead without it "
                            "if it cannot be read")
    else:
        p.description = "Reload a uWSGI instance gracefully (or chain) and follow it."
        p.add_argument("--chain", action="store_true",
                       help="chain reload: one worker at a time")
        p.add_argument("--no-follow", action="store_true",
                       help="return once the reload is sent")
        p.add_argument("--group", metavar="G",
                       help="with --rolling: every host of group G, in hosts-file order")
        p.add_argument("--rolling", action="store_true",
                       help="one host at a time: reload, wait until every worker is replaced, "
                            "the health check passes and the queues are normal, then the next; "
                            "stop at the first host that fails")
        p.add_argument("--max-unavailable", type=int, default=1, metavar="N",
                       help="with --rolling: hosts reloaded at the same time (default 1)")
        p.add_argument("--settle-timeout", default="60s", metavar="D",
                       help="with --rolling: how long a reloaded host may take to be healthy "
                            "again (default 60s)")
    p.add_argument("--instance", type=int, default=None, metavar="N",
                   help="index in the host's uwsgi list (default 0; with --rolling: every "
                        "instance of each host)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--hosts", metavar="HOSTS.toml", help="hosts file (default: "
                   "$XDG_CONFIG_HOME/stackmon/hosts.toml)")
    p.add_argument("--uwsgi", metavar="ADDR", help="act on this stats address instead of a "
                   "hosts-file entry (HOST is then just a label)")
    p.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--audit-log", metavar="FILE", help=argparse.SUPPRESS)


def _resolve(args: argparse.Namespace) -> tuple[Targets, HostConfig]:
    if args.uwsgi:
        targets = targets_from_args([args.uwsgi], None, {}, args.host)
    else:
        path = Path(args.hosts).expanduser() if args.hosts else default_hosts_file()
        targets = load_hosts_file(path)
    host = next((h for h in targets.hosts if h.name == args.host), None)
    if host is None:
        names = ", ".join(h.name for h in targets.hosts)
        raise ConfigError(f"no host {args.host!r} in {targets.source} (hosts: {names})")
    if args.instance < 0:
        raise ConfigError(f"--instance {args.instance}: must be 0 or more")
    return targets, host


class _Refused(Exception):
    """A refusal of the command itself (no terminal, no such worker), to be audited once."""

    def __init__(self, error: ActionError) -> None:
        super().__init__(error.message)
        self.error = error


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise _Refused(ActionError("bad_request", "no terminal to confirm on: pass --yes to "
                                                  "act without asking"))
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")


def run(name: str, args: argparse.Namespace) -> int:
    if name == "reload" and (args.rolling or args.group is not None):
        return _run_rolling(args)
    if args.host is None:
        print(f"stackmon {name}: give a HOST (or --group G --rolling)", file=sys.stderr)
        return EXIT_USAGE
    if args.instance is None:
        args.instance = 0
    try:
        targets, host = _resolve(args)
    except ConfigError as exc:
        print(f"stackmon {name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    settings = targets.settings_for(host)
    if args.read_only:  # on the host too: a grouped host's own settings would not carry it
        settings = replace(settings, read_only=True)
        host = replace(host, read_only=True)
    audit = AuditLog(Path(args.audit_log)) if args.audit_log else AuditLog.default()
    try:
        try:
            if settings.read_only or host.read_only:
                raise ActionError("read_only", "read-only mode: actions are disabled")
            act = _kill if name == "kill" else _reload
            return asyncio.run(_with_host(act, args, host, settings, audit))
        except _Refused as refused:  # refused here, before any action: audited here
            error = refused.error
            audit.record(host=host.name, action=name, outcome=f"refused: {error.kind}",
                         message=error.message, worker_id=getattr(args, "worker_id", None))
            raise error from None
        except ActionError as exc:
            if exc.kind == "read_only":
                audit.record(host=host.name, action=name, outcome="refused: read_only",
                             message=exc.message, worker_id=getattr(args, "worker_id", None))
            raise
    except ActionError as exc:
        print(f"stackmon {name}: {visible(exc.message)}", file=sys.stderr)
        return EXIT_UNREACHABLE if exc.kind == "gone" and "cannot read" in exc.message \
            else EXIT_FAILED
    except AuditWriteError as exc:  # says itself whether the action went ahead
        print(f"stackmon {name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"stackmon {name}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, EOFError):
        print(f"\nstackmon {name}: interrupted", file=sys.stderr)
        return EXIT_FAILED


async def _with_host(act: Callable[[argparse.Namespace, Host, AuditLog], Awaitable[int]],
                     args: argparse.Namespace, config: HostConfig, settings: Settings,
                     audit: AuditLog) -> int:
    """One Host for the whole command (a confirmation, the action, the follow-up)."""
    host = open_host(config, settings)
    try:
        return await act(args, host, audit)
    finally:
        await host.aclose()


def _where(host: Host, inst: UwsgiInstance) -> str:
    via = f" ({host.via})" if host.via else ""
    return f"{host.name}{via}  uWSGI {inst.address}"


async def _kill(args: argparse.Namespace, host: Host, audit: AuditLog) -> int:
    inst = await host.current_instance(args.instance)
    worker = next((w for w in inst.workers if w.id == args.worker_id), None)
    if worker is None:
        raise _Refused(ActionError("not_found", f"{inst.address} on {host.name} has no worker "
                                                f"{args.worker_id}"))
    if not worker.spawned:  # nothing to confirm: there is no process to kill
        from stackmon.actions.kill import no_process_message

        raise _Refused(ActionError("gone", no_process_message(worker)))
    stack = await _capture_stack(host, args, worker) if getattr(args, "stack", False) else None
    if not args.yes:
        print(f"{_where(host, inst)}  worker {worker.id}  pid {worker.pid}  {worker.status}")
        for r in worker.requests_in_flight:
            print(visible(f"  core {r.core}: {r.method} {r.uri}  from {r.remote_addr}  "
                          f"running {human_age(r.running_s)}"))
        if not worker.requests_in_flight:
            print("  no request in flight")
        how = f"SIG{args.signal}" + (" (after SIGUSR2)" if args.usr2 else "")
        if not _confirm(f"Kill worker {worker.id} (pid {worker.pid}) with {how}?"):
            print("nothing done")
            return EXIT_FAILED
    from stackmon.actions.kill import kill_meant_for

    # Answering takes the user seconds: the kill is refused if what they were shown (the
    # stuck requests, else all) has ended meanwhile. --yes shows nothing, so checks nothing.
    shown = worker.requests_by_key()
    meant = None if args.yes else kill_meant_for(shown)
    try:
        result = await host.kill(args.instance, worker.id, worker.pid, args.signal,
                                 expect_spawn=worker.last_spawn, usr2_first=args.usr2,
                                 audit=audit, stack=stack, expect_requests=meant)
    except ActionError as exc:
        if exc.kind != "ended" or not meant:
            raise
        named = ", ".join(f"{shown[k].method} {shown[k].uri}" for k in meant)
        raise ActionError("ended", f"{named}: {exc.message}") from None
    print(result.message)
    return EXIT_OK if result.ok else EXIT_FAILED


async def _capture_stack(host: Host, args: argparse.Namespace,
                         worker: Worker) -> dict[str, Any]:
    """`kill --stack`: the stack before the kill destroys it, printed, and returned for the
    kill's own audit record; a stack that cannot be read is said (and recorded as such), and
    the kill goes on: it is what ends the outage."""
    from stackmon.actions.stack import capture_for_kill, render_stack

    stack, message = await capture_for_kill(host, args.instance, worker.id, worker.pid,
                                            expect_spawn=worker.last_spawn or None)
    print(render_stack(stack) if stack is not None else message, flush=True)
    print(flush=True)
    return stack.summary() if stack is not None else {"not_captured": message}


def _print_progress(p: ReloadProgress, last: list[str],
                    answers: ClientAnswers | None = None) -> None:
    """The tracker's line and one per worker, when they change; the done line with the 502s
    and 504s nginx's logs show during the reload (`answers`, when its logs are read)."""
    if p.done and answers is not None:
        p = replace(p, message=f"{p.message}; {answers_said(answers, done=True)}")
    lines = [p.message]
    for w in p.workers:
        line = f"  worker {w.id}: {w.state}"
        if w.state == "replaced":
            line += f" (pid {w.old_pid} -> {w.pid})"
        elif w.in_flight:  # every request mercy may cut, not only the oldest
            line += f" pid {w.pid} finishing " + ", ".join(
                f"{r.method} {r.uri} ({human_age(r.running_s)})" for r in w.in_flight)
        if w.countdown is not None and w.state in ("draining", "killing"):
            line += f", cut in {max(0.0, w.countdown):.0f} s if still running"
        lines.append(line)
    text = "\n".join(lines)
    if not last or text != last[0]:
        print(text, flush=True)
        last[:] = [text]


async def _reload(args: argparse.Namespace, host: Host, audit: AuditLog) -> int:
    mode = "chain" if args.chain else "graceful"
    if not args.yes:
        inst = await host.current_instance(args.instance)
        busy = [(w, r) for w in inst.workers for r in w.requests_in_flight]
        print(f"{_where(host, inst)}  master {inst.master_pid}  {len(inst.workers)} workers, "
              f"{len(busy)} requests in flight")
        for w, r in busy:
            print(f"  worker {w.id} pid {w.pid}: {r.method} {r.uri}  running "
                  f"{human_age(r.running_s)}")
        if not _confirm(f"Start a {mode} reload of {inst.address} on {host.name}?"):
            print("nothing done")
            return EXIT_FAILED
    before = None if args.no_follow else await _logs_now(host)  # where the 502 count starts
    result: ActionResult = await host.reload(args.instance, mode, audit=audit)
    print(result.message, flush=True)
    if args.no_follow:
        return EXIT_OK
    started = float(result.data.get("started_at") or 0.0)
    tally = AnswerTally(started, before) if before is not None and started else None
    last: list[str] = []
    # The done line waits for a read of the logs after the end (they say what clients got).
    progress = await host.follow(args.instance, result,
                                 lambda p: None if p.done else _print_progress(p, last),
                                 audit=audit)
    answers = None
    if progress.done and tally is not None:
        tally.finish(tally.started_at + progress.elapsed)
        tally.add(await _logs_now(host))
        answers = tally.answers()
    _print_progress(progress, last, answers)
    return EXIT_OK if progress.done else EXIT_FAILED


async def _logs_now(host: Host) -> LogSummary | None:
    """The host's log summary now (a poll), None when it cannot be had: the count of 502s
    during a reload is then not said, never said as zero."""
    try:
        return (await host.poll()).logs
    except (ActionError, OSError):
        return None


# --- stackmon reload --group G --rolling -------------------------------------------------------


def _rolling_targets(args: argparse.Namespace) -> Targets:
    """The group's hosts from the hosts file, with the options checked (ConfigError)."""
    if not args.rolling:
        raise ConfigError("--group reloads a whole group: add --rolling (one host at a time)")
    if args.group is None:
        raise ConfigError("--rolling needs --group G (the hosts to reload, in hosts-file order)")
    if args.host is not None:
        raise ConfigError(f"give HOST ({args.host}) or --group G --rolling, not both")
    if args.uwsgi or args.no_follow:
        raise ConfigError("--rolling follows every host to its end and takes its hosts from "
                          "the hosts file: --uwsgi and --no-follow do not apply")
    if args.max_unavailable < 1:
        raise ConfigError(f"--max-unavailable {args.max_unavailable}: must be 1 or more")
    if args.instance is not None and args.instance < 0:
        raise ConfigError(f"--instance {args.instance}: must be 0 or more")
    path = Path(args.hosts).expanduser() if args.hosts else default_hosts_file()
    targets = select_group(load_hosts_file(path), args.group)
    if args.read_only:
        targets = replace(targets, hosts=tuple(replace(h, read_only=True)
                                               for h in targets.hosts))
    return targets


def _run_rolling(args: argparse.Namespace) -> int:
    try:
        targets = _rolling_targets(args)
        policy = RollPolicy(max_unavailable=args.max_unavailable,
                            mode="chain" if args.chain else "graceful", instance=args.instance,
                            settle_timeout=parse_duration(args.settle_timeout,
                                                          "--settle-timeout"))
    except ConfigError as exc:
        print(f"stackmon reload: {exc}", file=sys.stderr)
        return EXIT_USAGE
    audit = AuditLog(Path(args.audit_log)) if args.audit_log else AuditLog.default()
    try:
        return asyncio.run(_roll(args, targets, policy, audit))
    except ActionError as exc:
        print(f"stackmon reload: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except AuditWriteError as exc:
        print(f"stackmon reload: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, EOFError):
        print("\nstackmon reload: interrupted (the host being reloaded finishes its reload on "
              "its own; no further host was started)", file=sys.stderr)
        return EXIT_FAILED


async def _roll(args: argparse.Namespace, targets: Targets, policy: RollPolicy,
                audit: AuditLog) -> int:
    hosts = [open_host(h, targets.settings_for(h)) for h in targets.hosts]
    try:
        if not args.yes:
            await _confirm_roll(args, hosts, policy, audit)
        last: list[str] = []
        result = await rolling_reload(hosts, audit=audit, policy=policy, group=args.group,
                                      on_step=lambda s: _print_step(s, last))
    finally:
        await asyncio.gather(*(h.aclose() for h in hosts))
    if result.ok:
        print(result.message, flush=True)
        return EXIT_OK
    print(f"stackmon reload: {result.message}", file=sys.stderr)
    return EXIT_FAILED


async def _confirm_roll(args: argparse.Namespace, hosts: list[Host], policy: RollPolicy,
                        audit: AuditLog) -> None:
    """The plan (hosts in order, how each is reached), then one question for the whole roll;
    a refusal to ask is audited like any other."""
    at_once = f", {policy.max_unavailable} at a time" if policy.max_unavailable > 1 else ""
    print(f"Rolling {policy.mode} reload of group {args.group!r}: {len(hosts)} hosts in this "
          f"order{at_once}:")
    for i, h in enumerate(hosts, 1):
        via = f" ({h.via})" if h.via else ""
        health = f"  health {h.config.health}" if h.config.health else "  (no health URL)"
        print(f"  {i}. {h.name}{via}{health}")
    try:
        ok = _confirm("Start the rolling reload?")
    except _Refused as refused:
        audit.record(host=hosts[0].name, action="rolling reload",
                     outcome=f"refused: {refused.error.kind}", message=refused.error.message,
                     group=args.group)
        raise refused.error from None
    if not ok:
        raise ActionError("bad_request", "nothing done")


def _print_step(step: RollStep, last: list[str]) -> None:
    """One line per change (draining progress only when its text changes)."""
    text = f"[{step.position}/{step.total}] {step.message}"
    if step.reload is not None:
        text += "".join(f"\n    worker {w.id}: {w.state}" for w in step.reload.workers
                        if w.state != "replaced")
    if last and text == last[0]:
        return
    last[:] = [text]
    print(text, flush=True)

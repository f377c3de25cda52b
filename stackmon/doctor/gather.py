"""Gathering the doctor's Facts: config files, /proc, running instances and a live poll.

Kept apart from the rules so the rules stay pure. Two kinds of input fail differently:
- files the user named (--uwsgi-ini, --nginx-conf) raise ConfigFileError / NginxConfError, which
  the command turns into exit 2 with the file and line;
- what is discovered (a running instance's command line and ini, the running nginx's config, a
  host's live state) never raises: a failure becomes an Input with an error, shown in the
  report, and the rules simply have less to go on.

Two samples ~1 s apart are taken of each live host (and of the kernel counters), because a
cumulative counter (ListenOverflows, accepts - handled) only says something is happening now
when it moves.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import replace

from stackmon.bounded_io import BoundedReadError, User
from stackmon.config import HostConfig, Settings
from stackmon.doctor.facts import (
    HostFacts,
    Input,
    LiveFacts,
    NginxFacts,
    SystemFacts,
    UwsgiFacts,
)
from stackmon.doctor.nginx_conf import NginxConfError
from stackmon.doctor.nginx_conf import load as load_nginx
from stackmon.hosts import Host, open_host
from stackmon.logs.host import LogSummary
from stackmon.logs.nginx_errors import line_time as error_line_time
from stackmon.logs.nginx_errors import parse_error_line
from stackmon.logs.tail import LogTail
from stackmon.model import HostSnapshot, KernelCounters, SourceError, UwsgiInstance
from stackmon.nginx_master import nginx_conf_path
from stackmon.sources.procfs import read_kernel_counters, system_fds
from stackmon.uwsgi_ini import (
    ConfigFileError,
    instance_options,
    read_ini,
    split_section,
)

# ------------------------------------------------------------------ the kernel


def system_facts(first: KernelCounters | None = None, second: KernelCounters | None = None,
                 interval: float = 0.0) -> SystemFacts:
    """somaxconn, fd figures and ListenOverflows of this host. `first`/`second` are counters
    sampled `interval` apart (e.g. from two polls); without them one reading is taken now."""
    errors: list[str] = []
    if first is None:
        first, errs = read_kernel_counters()
        errors.extend(e.message for e in errs)
    fds = system_fds()
    file_nr = file_max = nr_open = None
    if isinstance(fds, SourceError):
        errors.append(fds.message)
    else:
        file_nr, file_max, nr_open = fds.open, fds.max, fds.nr_open or None
    latest = second or first
    return SystemFacts(
        somaxconn=latest.somaxconn, file_nr=file_nr, file_max=file_max, nr_open=nr_open,
        listen_overflows=(first.listen_overflows,
                          second.listen_overflows if second is not None else None),
        overflow_interval=interval, errors=tuple(errors))


def sampled_system_facts(sample: float) -> SystemFacts:
    """Kernel counters read twice, `sample` seconds apart (once when sample <= 0)."""
    first, _ = read_kernel_counters()
    if sample <= 0:
        return system_facts(first)
    start = time.monotonic()
    time.sleep(sample)
    second, _ = read_kernel_counters()
    return system_facts(first, second, time.monotonic() - start)


# ------------------------------------------------------------------ files


def uwsgi_file_facts(path: str) -> UwsgiFacts:
    """An ini file the user named; raises ConfigFileError."""
    name, section = split_section(path)
    name = os.path.abspath(name)
    options = read_ini(name, section or "uwsgi", cwd=os.path.dirname(name))
    return UwsgiFacts(name=name, options=tuple(options))


def nginx_file_facts(path: str) -> NginxFacts:
    """An nginx config the user named; raises NginxConfError."""
    return NginxFacts(conf=load_nginx(path))


# ------------------------------------------------------------------ running processes


_UNREAD_FORMATS = frozenset({"yaml", "json", "xml", "xmlconfig", "sqlite", "ldap"})


def instance_facts(inst: UwsgiInstance) -> UwsgiFacts | SourceError:
    """A running uWSGI's own configuration, found from its master's command line."""
    if inst.master_pid <= 0:
        return SourceError("uwsgi config", f"{inst.address}: the stats name no master pid")
    options = instance_options(inst.master_pid)
    if isinstance(options, SourceError):
        return options
    other = next((o for o in options if o.key in _UNREAD_FORMATS), None)
    if other is not None:
        # Judging an instance by half its configuration would invent findings (harakiri
        # "unset" when the YAML sets it): say what cannot be read instead.
        return SourceError("uwsgi config", f"{inst.address}: configured from {other.value} "
                                           f"({other.key}); stackmon reads ini files and "
                                           "command lines only")
    return UwsgiFacts(name=f"uWSGI {inst.address} (master {inst.master_pid})",
                      options=tuple(options), master_pid=inst.master_pid,
                      stats_address=inst.address, live=inst)


def nginx_master_pid(snap: HostSnapshot) -> int | None:
    masters = sorted(p.pid for p in snap.fds.processes if p.role == "nginx-master")
    return masters[0] if masters else None


# ------------------------------------------------------------------ live hosts


async def _poll_twice(host: Host, sample: float, first: HostSnapshot | None) -> LiveFacts:
    if first is None:
        first = await host.poll()
    if sample <= 0:
        return LiveFacts(first=first)
    wait = sample - (time.time() - first.taken_at)
    if wait > 0:
        await asyncio.sleep(wait)
    second = await host.poll()
    return LiveFacts(first=first, second=second,
                     interval=max(0.0, second.taken_at - first.taken_at))


async def poll_hosts(hosts: Sequence[HostConfig], settings: Settings, sample: float,
                     firsts: Sequence[HostSnapshot | None] | None = None) -> list[LiveFacts]:
    """Two polls of each host, `sample` seconds apart, all hosts at once (a first snapshot
    already taken, e.g. by the TUI, is reused)."""
    opened = [open_host(h, settings) for h in hosts]
    starts = list(firsts) if firsts is not None else [None] * len(hosts)
    try:
        return list(await asyncio.gather(*(
            _poll_twice(h, sample, s) for h, s in zip(opened, starts, strict=True))))
    finally:
        await asyncio.gather(*(h.aclose() for h in opened))


def log_inputs(name: str, live: LiveFacts) -> list[Input]:
    """The logs the polls read (the `logs.*` rules' evidence), each with its error, so a
    report without log findings says whether the logs were read at all."""
    snap = live.latest if live.latest.logs is not None else live.first
    if not snap.reachable:
        return []
    if snap.logs is None:
        return [Input("logs", name, host=name,
                      error="no log found from the running nginx and uWSGI; name them in the "
                            "hosts file (nginx_access_log, nginx_error_log, uwsgi_log)")]
    out = []
    for s in snap.logs.sources:
        what = f"{s.kind.replace('_', ' ')} log"
        source = f"{what} {s.path}" if s.path else f"{what} of {s.label or name}"
        out.append(Input("log", source, host=name, error=s.error))
    return out


def live_host_facts(host: HostConfig, live: LiveFacts, *,
                    discover_nginx: bool) -> tuple[HostFacts, list[Input]]:
    """A polled host's facts: its uWSGI instances' own configs (from their command lines) and,
    with discover_nginx, the running nginx's config (when the host has an nginx target whose
    master the poll identified). Never raises: what cannot be read becomes an Input error."""
    # An unreadable log is listed with the logs (log_inputs), not as a fault of the poll.
    problems = [e.message if e.source in e.message else f"{e.source}: {e.message}"
                for e in live.latest.errors if not e.source.endswith(" log")]
    if not live.latest.reachable and not problems:
        problems = ["unreachable"]
    inputs = [Input("live", f"{host.name} (two polls {live.interval:.1f} s apart)"
                    if live.second is not None else host.name,
                    host=host.name, error="; ".join(problems) or None)]
    inputs += log_inputs(host.name, live)
    uwsgi: list[UwsgiFacts] = []
    snap = live.latest if live.latest.reachable else live.first
    for inst in snap.uwsgi:
        got = instance_facts(inst)
        if isinstance(got, SourceError):
            inputs.append(Input("uwsgi-instance", inst.address, host=host.name,
                                error=got.message))
            continue
        inputs.append(Input("uwsgi-instance", got.name, host=host.name))
        uwsgi.append(got)
    nginx: list[NginxFacts] = []
    pid = nginx_master_pid(snap)
    if discover_nginx and pid is not None:
        path = nginx_conf_path(pid)
        if isinstance(path, SourceError):
            inputs.append(Input("nginx-conf", f"nginx master {pid}", host=host.name,
                                error=path.message))
        else:
            try:
                # read with the rights of the master that runs it, never as a reading proxy
                user = User.of_process(pid)
                nginx.append(NginxFacts(conf=load_nginx(path, as_user=user), master_pid=pid,
                                        discovered=True))
                inputs.append(Input("nginx-conf", path, host=host.name))
            except (NginxConfError, BoundedReadError) as exc:
                inputs.append(Input("nginx-conf", path, host=host.name, error=str(exc)))
    logs = live.latest.logs or live.first.logs
    return HostFacts(name=host.name, uwsgi=tuple(uwsgi), nginx=tuple(nginx), live=live,
                     queue_full_at=queue_full_times(logs)), inputs


def queue_full_times(logs: LogSummary | None) -> tuple[tuple[str, float], ...]:
    """(upstream, time) of every full-queue line in the nginx error logs the poll read, over
    the logs' window: read again here (a bounded backward read to the window's start, as the
    poll's own first read), because the summary only counts them. Never raises: a log that
    cannot be read gives nothing, and the rule falls back to the count alone."""
    if logs is None or not any(e.cause == "queue_full" for e in logs.upstream_errors):
        return ()
    since = logs.taken_at - logs.window_s
    out: list[tuple[str, float]] = []
    for src in logs.sources:
        if src.kind != "nginx_error" or not src.path:
            continue
        try:
            with LogTail(src.path, since=since, line_time=error_line_time) as tail:
                read = tail.poll()
        except OSError:
            continue
        for line in read.lines:
            err = parse_error_line(line)
            if err is not None and err.cause == "queue_full" \
                    and int(since) <= err.at <= logs.taken_at:  # nginx: whole seconds
                out.append((err.upstream, err.at))
    return tuple(out)


def ini_files_of(u: UwsgiFacts) -> set[str]:
    """Real paths of every file an instance's options came from (to drop duplicates)."""
    return {os.path.realpath(o.file) for o in u.options if o.file.startswith("/")}


def merge_files(host: HostFacts, files_uwsgi: Sequence[UwsgiFacts],
                files_nginx: Sequence[NginxFacts]) -> HostFacts:
    """Add the user's files to a live host, dropping those its running processes already
    cover (the same ini, the same nginx.conf): one finding per problem, not two."""
    covered = set().union(*(ini_files_of(u) for u in host.uwsgi)) if host.uwsgi else set()
    extra_u = [u for u in files_uwsgi if os.path.realpath(u.name) not in covered]
    known = {os.path.realpath(n.conf.path) for n in host.nginx}
    extra_n = [n for n in files_nginx if os.path.realpath(n.conf.path) not in known]
    return replace(host, uwsgi=host.uwsgi + tuple(extra_u), nginx=host.nginx + tuple(extra_n))


__all__ = [
    "ConfigFileError",
    "NginxConfError",
    "instance_facts",
    "live_host_facts",
    "log_inputs",
    "merge_files",
    "nginx_conf_path",
    "nginx_file_facts",
    "poll_hosts",
    "sampled_system_facts",
    "system_facts",
    "uwsgi_file_facts",
]

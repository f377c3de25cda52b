"""Running the doctor: gather the facts, apply the rules, return a Report.

`diagnose()` serves the command line (it raises for files the user named, so the command can
exit 2 naming file and line); `diagnose_host()` serves the TUI's doctor screen (it never
raises: every problem becomes an input error inside the Report).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass

from stackmon.config import HostConfig, Settings, Targets
from stackmon.doctor.facts import (
    Facts,
    HostFacts,
    Input,
    LbSettings,
    LiveFacts,
    NginxFacts,
    Report,
    SystemFacts,
    UwsgiFacts,
)
from stackmon.doctor.gather import (
    live_host_facts,
    merge_files,
    nginx_file_facts,
    poll_hosts,
    sampled_system_facts,
    system_facts,
    uwsgi_file_facts,
)
from stackmon.doctor.rules import run_rules
from stackmon.hosts import open_host
from stackmon.model import HostSnapshot

KERNEL_SOURCES = "/proc/sys/net/core/somaxconn, /proc/sys/fs/file-nr, /proc/net/netstat"


@dataclass(frozen=True)
class Diagnosis:
    """A Report plus what the command needs for its exit code."""

    report: Report
    facts: Facts
    unreachable: tuple[str, ...] = ()


def _system_from_live(lives: Sequence[LiveFacts], sample: float) -> SystemFacts:
    """Kernel counters from the polls when one reached the host (same kernel: this one), else
    read here."""
    for live in lives:
        if live.first.reachable and live.first.kernel.somaxconn is not None:
            second = live.second.kernel if live.second is not None else None
            return system_facts(live.first.kernel, second, live.interval)
    return sampled_system_facts(sample)


def _kernel_input(system: SystemFacts) -> Input:
    return Input("kernel", KERNEL_SOURCES, error="; ".join(system.errors) or None)


def diagnose(targets: Targets | None, uwsgi_inis: Sequence[str] = (),
             nginx_confs: Sequence[str] = (), lb: LbSettings | None = None,
             sample: float = 1.0) -> Diagnosis:
    """Check the named files and/or the targets' hosts.

    Files are read first, so a malformed one fails fast: raises ConfigFileError (uWSGI ini) or
    NginxConfError (nginx), both ValueErrors whose str() is "FILE:LINE: message". Local hosts
    are polled twice `sample` seconds apart (0: once); agent hosts are listed as not checked
    (their config lives on the other machine: run the doctor there).
    """
    lb = lb or LbSettings()
    files_u: list[UwsgiFacts] = [uwsgi_file_facts(p) for p in uwsgi_inis]
    files_n: list[NginxFacts] = [nginx_file_facts(p) for p in nginx_confs]
    inputs: list[Input] = [Input("uwsgi-ini", u.name) for u in files_u]
    inputs += [Input("nginx-conf", n.conf.path) for n in files_n]
    hosts: list[HostFacts] = []
    unreachable: list[str] = []
    if targets is not None:
        local = []
        for h in targets.hosts:
            elsewhere = open_host(h, targets.settings).config_elsewhere
            if elsewhere:
                inputs.append(Input("live", h.name, host=h.name, error=elsewhere))
            else:
                local.append(h)
        lives = asyncio.run(poll_hosts(local, targets.settings, sample)) if local else []
        system = _system_from_live(lives, sample)
        for h, live in zip(local, lives, strict=True):
            if not live.latest.reachable:
                unreachable.append(h.name)
            facts_h, more = live_host_facts(h, live, discover_nginx=not nginx_confs)
            hosts.append(facts_h)
            inputs += more
        if files_u or files_n:
            if len(hosts) == 1:
                hosts[0] = merge_files(hosts[0], files_u, files_n)
            else:
                hosts.append(HostFacts(name="files", uwsgi=tuple(files_u),
                                       nginx=tuple(files_n)))
    else:
        system = sampled_system_facts(sample)
        hosts.append(HostFacts(name=os.uname().nodename or "localhost", uwsgi=tuple(files_u),
                               nginx=tuple(files_n)))
    inputs.append(_kernel_input(system))
    facts = Facts(system=system, lb=lb, hosts=tuple(hosts))
    report = Report(findings=tuple(run_rules(facts)), inputs=tuple(inputs))
    return Diagnosis(report=report, facts=facts, unreachable=tuple(unreachable))


def diagnose_host(host: HostConfig, settings: Settings, snapshot: HostSnapshot | None,
                  lb: LbSettings | None = None, *, sample: float = 1.0,
                  uwsgi_inis: Sequence[str] = (), nginx_conf: str | None = None) -> Report:
    """The doctor for one host, for the TUI's doctor screen. Call it in a worker thread.

    - Blocking but bounded: it polls the host once more (or twice when `snapshot` is None) so
      that counters can be compared over `sample` seconds (it sleeps only for what remains of
      `sample` since snapshot.taken_at), reads /proc, the running instances' command lines
      and ini files, and the running nginx's config. Each poll is bounded by
      settings.timeout, so the whole call takes about sample + 2 x settings.timeout at worst
      (typically ~1 s); parsing the configs takes milliseconds.
    - Never raises: an unreadable file or unreachable host becomes an Input with an error in
      the Report (show `report.errors` next to the findings); a bug in a rule ends up there too
      rather than killing the worker.
    - Uses its own asyncio loop (asyncio.run), so it must not be called on the UI's event
      loop thread; the TUI's own poller and hosts are not touched.
    - Agent hosts: their configuration lives on the remote machine, so the Report holds only
      an input error saying so.
    `uwsgi_inis`/`nginx_conf` add files to check (the nginx config is otherwise discovered
    from the running master's command line).
    """
    lb = lb or LbSettings()
    elsewhere = open_host(host, settings).config_elsewhere
    if elsewhere:
        return Report(findings=(), inputs=(Input("live", host.name, host=host.name,
                                                 error=elsewhere),))
    inputs: list[Input] = []
    try:
        files_u = []
        for path in uwsgi_inis:
            try:
                files_u.append(uwsgi_file_facts(path))
                inputs.append(Input("uwsgi-ini", path, host=host.name))
            except ValueError as exc:
                inputs.append(Input("uwsgi-ini", path, host=host.name, error=str(exc)))
        files_n = []
        if nginx_conf:
            try:
                files_n.append(nginx_file_facts(nginx_conf))
                inputs.append(Input("nginx-conf", nginx_conf, host=host.name))
            except ValueError as exc:
                inputs.append(Input("nginx-conf", nginx_conf, host=host.name, error=str(exc)))
        (live,) = asyncio.run(poll_hosts([host], settings, sample, [snapshot]))
        system = _system_from_live([live], sample)
        facts_h, more = live_host_facts(host, live, discover_nginx=nginx_conf is None)
        inputs += more
        facts_h = merge_files(facts_h, files_u, files_n)
        inputs.append(_kernel_input(system))
        facts = Facts(system=system, lb=lb, hosts=(facts_h,))
        return Report(findings=tuple(run_rules(facts)), inputs=tuple(inputs))
    except Exception as exc:  # the UI must get a report, whatever happened
        inputs.append(Input("doctor", host.name, host=host.name,
                            error=f"the doctor failed: {type(exc).__name__}: {exc}"))
        return Report(findings=(), inputs=tuple(inputs))

"""The host interface: one way to poll and act on a host, wherever it lives."""

from __future__ import annotations

from typing import Any

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings
from stackmon.doctor.api import diagnose_host
from stackmon.hosts import open_host
from stackmon.hosts.agent import AgentHost
from stackmon.hosts.local import LocalHost


def test_open_host_chooses_by_configuration() -> None:
    local = open_host(HostConfig(name="a", uwsgi=(parse_stats_address("127.0.0.1:1"),)),
                      Settings())
    agent = open_host(HostConfig(name="b", agent="http://127.0.0.1:9"), Settings())
    assert isinstance(local, LocalHost) and local.via == "" and local.config_elsewhere is None
    assert isinstance(agent, AgentHost) and agent.via == "agent"
    assert agent.config_elsewhere is not None and "stackmon doctor" in agent.config_elsewhere


def test_the_doctor_says_where_an_agent_hosts_config_is_read() -> None:
    report = diagnose_host(HostConfig(name="b", agent="http://127.0.0.1:9"), Settings(), None)
    assert report.findings == ()
    (inp,) = report.inputs
    assert inp.error is not None and "127.0.0.1:9" in inp.error and "run `stackmon doctor`" \
        in inp.error


async def test_an_unreachable_host_keeps_its_last_good_data_with_its_age(stack) -> None:
    host = open_host(HostConfig(name="s", uwsgi=(parse_stats_address(stack.stats_address),)),
                     Settings(timeout=1.0))
    good = await host.poll()
    assert good.reachable and good.uwsgi and good.stale_s is None
    later = host.unreachable(good.taken_at + 7.0, [])
    assert not later.reachable and later.stale_s == 7.0
    assert later.uwsgi == good.uwsgi


async def test_a_hung_master_keeps_its_last_requests_as_they_were_and_the_kernel_figures(
        fresh_stack, hang) -> None:
    """SIGSTOP the master: its stats server stops answering while its workers go on serving.
    The last good workers stay on screen, stale, their requests as they were then: ages are
    not grown (a review watched a 0.9 s /slow, ended per nginx's log, age into CRIT under a
    stopped master). The kernel's queue and fd figures (no stats server needed) keep coming,
    and the reading names the uWSGI stats that stopped answering."""
    import os
    import signal

    stack = fresh_stack(workers=2, threads=1)
    hang(stack, "/hang/stuck-during-stop", n=1)
    # nginx still answers (the case): the host is partial, not unreachable
    host = open_host(HostConfig(name="s", uwsgi=(parse_stats_address(stack.stats_address),),
                                nginx=stack.nginx_status_url),
                     Settings(timeout=0.5, slow=1.0, critical=3.0))
    first = await host.poll()
    (before,) = [r for w in first.uwsgi[0].workers for r in w.requests_in_flight]
    assert before.running_s is not None
    os.kill(stack.master_pid, signal.SIGSTOP)
    try:
        import asyncio

        await asyncio.sleep(3.5)
        later = await host.poll()
    finally:
        os.kill(stack.master_pid, signal.SIGCONT)
    assert later.reachable  # nothing else failed: the host is partial, not gone
    assert any("uwsgi" in e.source.lower() or "stats" in e.source.lower()
               for e in later.errors), later.errors
    (inst,) = later.uwsgi
    # Its age when the snapshot was made, the stats' 0.5 s timeout included (measured from the
    # poll's start, STALE lagged the truth by the timeout).
    assert inst.stale_s is not None and inst.stale_s >= 3.5 + 0.5 - 0.05, inst.stale_s
    (req,) = [r for w in inst.workers for r in w.requests_in_flight]
    assert (req.running_s, req.level) == (before.running_s, before.level)  # was: grown to CRIT
    assert {p.role for p in later.fds.processes} >= {"uwsgi-master", "uwsgi-worker"}
    assert any(li.owner == "uwsgi" for li in later.listeners)
    from stackmon.health import assess

    state = assess(later)
    assert any(r.kind == "source" and "uwsgi" in r.badge for r in state.reasons), state.reasons


async def test_a_kill_through_the_host_is_an_event_of_that_host(fresh_stack, hang,
                                                                tmp_path) -> None:
    """Actions taken through the same Host that polls (as the TUI does) show among its log
    events, beside uWSGI's own lines about the death and the respawn."""
    from stackmon.actions.audit import AuditLog

    stack = fresh_stack(workers=2, threads=1)
    hang(stack, "/hang/to-kill", n=1)
    host = open_host(HostConfig(name="s", uwsgi=(parse_stats_address(stack.stats_address),),
                                nginx=stack.nginx_status_url), Settings())
    try:
        snap = await host.poll()
        (worker,) = [w for w in snap.uwsgi[0].workers if w.requests_in_flight]
        result = await host.kill(0, worker.id, worker.pid, "KILL", audit=AuditLog(
            tmp_path / "audit.log"), expect_spawn=worker.last_spawn)
        assert result.ok, result.message
        import asyncio

        for _ in range(20):
            after = await host.poll()
            assert after.logs is not None
            kinds = {(e.source, e.kind) for e in after.logs.events}
            if ("stackmon", "killed") in kinds and ("uwsgi", "worker_died") in kinds:
                break
            await asyncio.sleep(0.25)
        assert ("stackmon", "killed") in kinds and ("uwsgi", "worker_died") in kinds, kinds
        assert after.logs is not None
        (ours,) = [e for e in after.logs.events if e.source == "stackmon"]
        assert ours.pid == worker.pid and ours.worker == worker.id
        assert ours.uri == "GET /hang/to-kill"  # what the kill aborted (it was None: "-")
    finally:
        await host.aclose()


async def test_fds_are_listed_less_often_than_queues_are_read(fresh_stack, hang) -> None:
    """The accept queues come fresh every poll; every process's fd listing is reused for
    FD_RESCAN_S unless the processes changed (a respawned worker is listed at once)."""
    import os
    import signal

    from stackmon.hosts.local import LocalHost

    stack = fresh_stack(workers=2, threads=1)
    host = LocalHost(HostConfig(name="s", uwsgi=(parse_stats_address(stack.stats_address),)),
                     Settings())
    first = await host.poll()
    assert host._last_facts is not None and host._last_facts.rescanned
    hang(stack, "/hang/queue-moves", n=1)
    second = await host.poll()
    assert host._last_facts is not None and not host._last_facts.rescanned  # reused
    assert second.fds == first.fds
    busy = [w for w in second.uwsgi[0].workers if w.requests_in_flight]
    assert busy, "the poll itself is fresh"
    os.kill(busy[0].pid, signal.SIGKILL)
    import asyncio

    for _ in range(40):
        third = await host.poll()
        pids = {p.pid for p in third.fds.processes}
        if busy[0].pid not in pids and len(pids) == len({p.pid for p in first.fds.processes}):
            break
        await asyncio.sleep(0.1)
    assert host._last_facts is not None and host._last_facts.rescanned
    assert busy[0].pid not in {p.pid for p in third.fds.processes}


async def test_fds_are_listed_again_once_due(stack, monkeypatch) -> None:
    import stackmon.hosts.local as local

    monkeypatch.setattr(local, "FD_RESCAN_S", 0.0)
    host = local.LocalHost(HostConfig(name="s", uwsgi=(parse_stats_address(stack.stats_address),)),
                           Settings())
    await host.poll()
    await host.poll()
    assert host._last_facts is not None and host._last_facts.rescanned


async def test_kernel_counters_are_read_with_the_fds_and_keep_their_errors(
        stack, monkeypatch) -> None:
    """/proc/net/netstat is the poll's largest read and no screen shows its counter: it is
    read when the fds are (every FD_RESCAN_S), and a reason it could not be read stays in
    every poll's errors meanwhile."""
    import stackmon.hosts.local as local
    from stackmon.model import SourceError
    from stackmon.sources import kernel

    calls: list[float] = []
    real = kernel.read_kernel_counters

    def counted() -> Any:
        calls.append(1.0)
        counters, _errors = real()
        return counters, (SourceError("kernel", "cannot read /proc/net/netstat: test"),)

    monkeypatch.setattr(kernel, "read_kernel_counters", counted)
    host = local.LocalHost(HostConfig(name="s", uwsgi=(parse_stats_address(stack.stats_address),)),
                           Settings())
    first = await host.poll()
    second = await host.poll()
    assert len(calls) == 1
    assert host._last_facts is not None and not host._last_facts.rescanned
    assert second.kernel == first.kernel and second.kernel.somaxconn
    for snap in (first, second):
        assert any("netstat: test" in e.message for e in snap.errors), snap.errors
    monkeypatch.setattr(local, "FD_RESCAN_S", 0.0)
    await host.poll()
    assert len(calls) == 2

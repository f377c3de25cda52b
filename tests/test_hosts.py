"""The host interface: one way to poll and act on a host, wherever it lives."""

from __future__ import annotations

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

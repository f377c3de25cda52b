"""The LB probe against the truth: nginx's own access-log lines of the probe (user agent
`stackmon-health-probe`) during a graceful reload with no worker serving and the listen queue
overflowing, through the real nginx and uWSGI.

A review saw nginx answer the probe 502 every second for 16 s, then the panel read `fails 0`
and the events screen had nothing: "fails" is the streak now (reset by the first pass) and
the streak was kept nowhere. Every streak is now an episode, an event and a panel line, and
the LB's verdict counts the LB's checks (`health_interval` apart), not stackmon's probes (one
per poll).
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.style import Style

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings
from stackmon.demo.launcher import Stack
from stackmon.health import assess
from stackmon.hosts.local import LocalHost
from stackmon.logs.uwsgi_events import Event
from stackmon.model import HostSnapshot
from stackmon.sources.lb_probe import HealthProbe, ProbePolicy
from widgets.clients_panel import ClientsText, clients_shown

PROBE_LINE = re.compile(r'\[(\d\d/\w+/\d{4}:\d\d:\d\d:\d\d) [^]]*\] "GET /healthz[^"]*" (\d{3}) '
                        r'.*"stackmon-health-probe"')


def _probe_statuses(access_log: Path) -> list[str]:
    return [m.group(2) for line in access_log.read_text().splitlines()
            if (m := PROBE_LINE.search(line))]


async def _outage(st: Stack, hang: Callable[..., Any], flood: Callable[[str], threading.Event],
                  settings: Settings) -> tuple[list[HostSnapshot], LocalHost]:
    """Poll each second through a graceful reload that leaves no worker serving (one worker
    held by /hang, mercy 12 s) while traffic overflows the listen queue (listen 4), until
    the probe passes again after having failed."""
    assert st.nginx_base_url and st.nginx_status_url
    host = LocalHost(HostConfig(name="truth", uwsgi=(parse_stats_address(st.stats_address),),
                                nginx=st.nginx_status_url,
                                health=st.nginx_base_url + "/healthz"), settings)
    snaps: list[HostSnapshot] = []
    await host.prime()
    hang(st, "/hang/x", n=1)
    flood(st.nginx_base_url + "/fast")
    st.send_fifo(b"r")  # graceful reload: the idle worker goes, the held one waits for mercy
    failed = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        snaps.append(await host.poll())
        check = snaps[-1].health
        assert check is not None
        failed = failed or check.failures_in_row > 0
        if failed and check.ok:
            break
        await asyncio.sleep(1.0)
    for _ in range(2):  # the next polls hand the streak's event to the logs
        await asyncio.sleep(1.0)
        snaps.append(await host.poll())
    return snaps, host


def _stackmon_events(snaps: list[HostSnapshot]) -> dict[str, Event]:
    return {e.kind: e for s in snaps if s.logs for e in s.logs.events if e.source == "stackmon"}


def _panel(snap: HostSnapshot) -> str:
    shown = clients_shown(snap.logs, snap.health, {})
    return "\n".join(line.plain for line in ClientsText(lambda _name: Style()).lines(shown, 60))


async def test_a_short_outage_is_counted_and_the_lb_would_not_take_the_host_out(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any],
        flood: Callable[[str], threading.Event]) -> None:
    # ELB defaults (30 s x 2): a streak shorter than 30 s holds at most one LB check.
    st = fresh_stack(workers=2, threads=1, listen=4, mercy=12)
    snaps, host = await _outage(st, hang, flood, Settings())
    try:
        last = snaps[-1].health
        assert last is not None and last.ok and last.failures_in_row == 0
        ep = last.episode
        assert ep is not None and ep.end is not None and ep.out_at is None
        failed_in_log = sum(1 for s in _probe_statuses(Path(st.nginx_access_log_path))
                            if s != "200")
        # Every probe nginx answered with an error is in the streak (the one answered 200
        # after it ends it; a probe still queued when the reload ended may pass).
        assert failed_in_log >= 3
        assert abs(ep.failures - failed_in_log) <= 1, (ep, failed_in_log)
        assert ep.span_s is not None and ep.span_s < 30 and ep.lb_checks == 1
        events = _stackmon_events(snaps)
        assert "health_fail" in events and "lb_out" not in events
        assert f"failed ×{ep.failures}" in events["health_fail"].text
        assert "would not have taken this host out" in events["health_fail"].text
        panel = _panel(snaps[-1])
        assert f"failed ×{ep.failures}" in panel and "LB not out" in panel
        assert "fails 0" in panel.replace("  ", " ")
    finally:
        await host.aclose()


async def test_an_outage_past_the_threshold_is_an_lb_out_episode(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any],
        flood: Callable[[str], threading.Event]) -> None:
    # An LB checking every 2 s, out after 2 failures: a 10 s streak takes the host out.
    st = fresh_stack(workers=2, threads=1, listen=4, mercy=12)
    snaps, host = await _outage(st, hang, flood,
                                Settings(health_interval=2.0, unhealthy_threshold=2))
    try:
        outs = [s for s in snaps if s.health and s.health.out_of_service]
        assert outs, "the LB verdict never said OUT"
        assert any(r.badge == "LB OUT" for r in assess(outs[0]).reasons)
        last = snaps[-1]
        ep = last.health.episode if last.health else None
        assert ep is not None and ep.out_at is not None and ep.end is not None
        # OUT once the LB's span (1 x 2 s) is covered and its 2nd failure is seen: a probe
        # that times out is seen failing its timeout (5 s) after it was sent, when it began.
        assert 2.0 - 0.1 <= ep.out_at - ep.start <= 2.0 + 5.0 + 1.1, ep
        assert ep.out_for_s is not None and ep.out_for_s > 0
        failed_in_log = sum(1 for s in _probe_statuses(Path(st.nginx_access_log_path))
                            if s != "200")
        assert abs(ep.failures - failed_in_log) <= 1, (ep, failed_in_log)
        events = _stackmon_events(snaps)
        assert {"lb_out", "lb_in"} <= events.keys()
        assert events["lb_out"].at == pytest.approx(ep.out_at)
        text = events["lb_in"].text
        assert "would have taken this host OUT at" in text and f"for {ep.out_for_s:.0f} s" in text
        # Passing again, the host is still a warning: the LB takes it back only after its
        # healthy threshold of passing checks.
        state = assess(last)
        assert any(r.badge == "LB WAS OUT" and r.severity == "warn" for r in state.reasons)
        assert f"LB OUT for {ep.out_for_s:.0f} s" in _panel(last)
    finally:
        await host.aclose()


@pytest.mark.parametrize("interval,threshold,span,out", [
    (30.0, 2, 16.0, False), (30.0, 2, 29.0, False), (30.0, 2, 30.0, True),
    (5.0, 2, 16.0, True), (5.0, 4, 14.0, False), (5.0, 4, 15.0, True), (30.0, 1, 0.0, True),
])
def test_an_episode_counts_the_lbs_checks(interval: float, threshold: int, span: float,
                                          out: bool) -> None:
    probe = HealthProbe("http://x/", ProbePolicy(interval=interval,
                                                 unhealthy_threshold=threshold))
    t0 = 1000.0
    n = int(span) + 1  # one probe a second, as the poll kicks it
    for i in range(n):
        probe._record(False, 0.0, "HTTP 502", t0 + i)  # sent when it came back
    probe._record(True, 0.0, "", t0 + span + 1)
    (ep,) = probe.episodes()
    assert ep.failures == n and ep.span_s == pytest.approx(span + 1)
    assert (ep.out_at is not None) is out
    # The streak is [t0, t0 + span + 1): the pass at its end is what an LB check there saw.
    assert ep.lb_checks == max(1, math.ceil((span + 1) / interval))
    assert (ep.lb_checks >= threshold) is out
    (news,) = probe.take_news(now=t0 + span + 2)
    assert news[0] == ("lb_in" if out else "health_fail")


def test_a_streak_starts_when_its_first_failing_probe_was_sent() -> None:
    """A probe that times out comes back `timeout` later: the streak began when it was sent.
    A review saw `failed ×2 for 7 s from 16:44:57` for an outage nginx logged from 16:44:52
    to 16:45:08 (the reload view: no worker serving for 16.1 s)."""
    from stackmon.sources.lb_probe import HealthProbe, ProbePolicy

    probe = HealthProbe("http://127.0.0.1/health", ProbePolicy(timeout=5.0, interval=30.0))
    probe._record(False, 5000.0, "timed out after 5 s", 1005.0)   # sent at 1000
    probe._record(False, 5000.0, "timed out after 5 s", 1011.0)   # sent at 1006
    probe._record(True, 3.0, "", 1016.003)                        # sent at 1016
    (episode,) = probe.episodes()
    assert episode.start == 1000.0 and episode.end == 1016.0
    assert episode.span_s == 16.0 and episode.failures == 2

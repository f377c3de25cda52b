"""The demo keeps a request stuck: a hang that ends early (its worker killed, after nginx gave up
on it with a 504) is sent again within seconds, on the real stack.

The demo is how new users learn stackmon: in one run no request was stuck for 2.5 minutes,
because a slot whose hang had been killed waited for the hang's full duration (up to 240 s)
before sending the next one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from stackmon.addresses import parse_stats_address
from stackmon.demo.traffic import HANG_TAG_VAR, TrafficStats, run_traffic
from stackmon.model import SourceError, Thresholds, UwsgiInstance
from stackmon.sources.uwsgi_stats import poll_stats


async def _hangs(address: str) -> dict[str, int]:
    """Tagged hangs in flight now: tag -> pid of the worker running it."""
    got = await poll_stats(parse_stats_address(address), Thresholds(), timeout=2.0)
    if isinstance(got, SourceError):
        return {}
    assert isinstance(got, UwsgiInstance)
    return {value: w.pid for w in got.workers for r in w.requests_in_flight
            for key, value in r.vars if key == HANG_TAG_VAR}


async def _until(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.25)
    return None


def test_a_killed_hang_is_sent_again_even_after_nginx_gave_up(fresh_stack):
    # nginx gives up after 2 s (504) while the worker sleeps on: from then on only the stats
    # can tell that the worker was killed.
    stack = fresh_stack(workers=2, threads=1, extra_nginx=("uwsgi_read_timeout 2s;",))
    assert stack.base_url is not None

    async def scenario() -> tuple[TrafficStats, list[float]]:
        stop = asyncio.Event()
        stats = TrafficStats()
        traffic = asyncio.create_task(run_traffic(
            stack.base_url, stop_event=stop, rate=0.1, hang_in_flight=1,
            hang_seconds=(600.0, 600.0), burst_every=None, stats_address=stack.stats_address,
            stats=stats, seed=1))
        gaps: list[float] = []
        try:
            for _ in range(2):
                first = await _until(lambda: _hangs(stack.stats_address), 15)
                assert first, "no tagged /hang in flight"
                tag, pid = next(iter(first.items()))
                await asyncio.sleep(3)  # past uwsgi_read_timeout: nginx answered 504
                assert stats.statuses.get(504, 0) >= 1
                os.kill(pid, signal.SIGKILL)  # a worker of the stack this test started
                killed = time.monotonic()

                async def another(old: str = tag) -> bool:
                    return any(t != old for t in await _hangs(stack.stats_address))

                assert await _until(another, 15), "the killed hang was not sent again"
                gaps.append(time.monotonic() - killed)
        finally:
            stop.set()
            await asyncio.wait_for(traffic, 20)
        return stats, gaps

    stats, gaps = asyncio.run(scenario())
    # The watch looks every 2 s, uWSGI respawns the worker, the re-send waits up to 2 s.
    assert max(gaps) < 10, gaps
    assert stats.hangs_resent_early >= 2
    assert stats.hangs_started >= 3


def test_without_the_stats_address_a_killed_hang_before_the_504_is_sent_again(fresh_stack):
    """A kill while nginx still waits: nginx answers 502 at once, and the slot re-sends."""
    stack = fresh_stack(workers=2, threads=1)
    assert stack.base_url is not None

    async def scenario() -> float:
        stop = asyncio.Event()
        stats = TrafficStats()
        traffic = asyncio.create_task(run_traffic(
            stack.base_url, stop_event=stop, rate=0.1, hang_in_flight=1,
            hang_seconds=(600.0, 600.0), burst_every=None, stats=stats, seed=2))
        try:
            first = await _until(lambda: _hangs(stack.stats_address), 15)
            assert first
            tag, pid = next(iter(first.items()))
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()

            async def another() -> bool:
                return any(t != tag for t in await _hangs(stack.stats_address))

            assert await _until(another, 15), "the killed hang was not sent again"
            return time.monotonic() - killed
        finally:
            stop.set()
            await asyncio.wait_for(traffic, 20)

    assert asyncio.run(scenario()) < 8

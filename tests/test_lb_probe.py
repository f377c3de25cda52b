"""The LB health probe, through the real nginx in front of the real uWSGI."""

from __future__ import annotations

import asyncio
import time

import pytest

from stackmon.sources.lb_probe import HealthProbe, ProbePolicy


async def test_a_healthy_url_passes_through_nginx(stack) -> None:
    probe = HealthProbe(stack.nginx_base_url + "/healthz", ProbePolicy(timeout=2.0))
    try:
        first = await probe.probe_now()
        second = await probe.probe_now()
    finally:
        await probe.aclose()
    assert first.ok and second.ok
    assert second.failures_in_row == 0 and not second.out_of_service
    assert second.last_ms is not None and 0 < second.last_ms < 2000
    assert second.max_ms is not None and second.max_ms >= second.last_ms


async def test_timeouts_in_a_row_take_the_host_out_as_the_lb_would(stack) -> None:
    # /slow?s=3 answers after 3 s: with a 0.5 s timeout every probe fails, like the seed
    # outage's reload holding the queue. Threshold 2 at a 1 s LB interval: out after the
    # second failure, once the streak spans one LB interval.
    policy = ProbePolicy(timeout=0.5, interval=1.0, unhealthy_threshold=2)
    probe = HealthProbe(stack.nginx_base_url + "/slow?s=3", policy)
    try:
        first = await probe.probe_now()
        assert first.ok is False and first.failures_in_row == 1
        assert "timed out after 0.5 s" in first.last_error
        assert not first.out_of_service and first.out_in_s is not None
        assert first.last_ms is not None and 450 <= first.last_ms < 1500
        await asyncio.sleep(1.0)
        second = await probe.probe_now()
    finally:
        await probe.aclose()
    assert second.failures_in_row == 2
    assert second.out_of_service


async def test_an_error_status_fails_and_a_pass_resets_the_streak(stack) -> None:
    bad = HealthProbe(stack.nginx_base_url + "/no-such-page", ProbePolicy(timeout=2.0))
    try:
        state = await bad.probe_now()
    finally:
        await bad.aclose()
    assert state.ok is False and state.last_error == "HTTP 404"
    probe = HealthProbe(stack.nginx_base_url + "/healthz", ProbePolicy(timeout=2.0))
    probe._record(False, 10.0, "HTTP 502", time.time())  # a failure seen earlier
    try:
        state = await probe.probe_now()
    finally:
        await probe.aclose()
    assert state.ok and state.failures_in_row == 0 and state.failing_since is None


async def test_nothing_listening_is_a_failure_with_a_reason() -> None:
    probe = HealthProbe("http://127.0.0.1:9/healthz", ProbePolicy(timeout=1.0))
    try:
        state = await probe.probe_now()
    finally:
        await probe.aclose()
    assert state.ok is False and state.failures_in_row == 1
    assert state.last_error and "Traceback" not in state.last_error


async def test_a_probe_in_flight_is_reported_without_waiting(stack) -> None:
    probe = HealthProbe(stack.nginx_base_url + "/slow?s=1", ProbePolicy(timeout=3.0))
    try:
        probe.kick()
        await asyncio.sleep(0.3)
        state = probe.state()
        assert state.ok is None and state.in_flight_s is not None and state.in_flight_s >= 0.2
    finally:
        await probe.aclose()


@pytest.mark.parametrize("threshold,interval,fails,span,out", [
    (2, 30.0, 2, 1.0, False), (2, 30.0, 31, 30.0, True), (1, 30.0, 1, 0.0, True),
    (3, 10.0, 3, 19.0, False), (3, 10.0, 21, 20.0, True),
])
def test_lb_verdict(threshold: int, interval: float, fails: int, span: float, out: bool) -> None:
    probe = HealthProbe("http://x/", ProbePolicy(interval=interval,
                                                 unhealthy_threshold=threshold))
    t0 = 1000.0
    for i in range(fails):
        # 0 ms: each probe sent when it came back (a streak starts when its probe was sent)
        probe._record(False, 0.0, "HTTP 502", t0 + span * i / max(fails - 1, 1))
    state = probe.state(now=t0 + span)
    assert state.out_of_service is out
    if not out:
        assert state.out_in_s == pytest.approx((threshold - 1) * interval - span)

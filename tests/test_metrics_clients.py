"""/metrics through a real agent on a real stack: what the clients got, by cause.

A unix-socket listen queue is filled the way it fills in production (one worker held by a stuck
request, `listen = 2`, a burst through nginx): nginx answers 502 at once with EAGAIN. The agent's
/metrics, parsed with prometheus_client's own parser, must count exactly the 502s the access log
holds and exactly the EAGAIN lines the error log holds (the truth counted here by plain string
matching on the files, not by stackmon's parsers), attribute them to that socket, and show the
health check failing through the same full queue, the LB's verdict and the health model's
critical severity; and, once the worker is free again, the health check passing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stackmon.addresses import parse_stats_address
from stackmon.agent.server import AgentOptions, serve
from stackmon.config import HostConfig, Settings
from stackmon.demo.launcher import Stack, free_port
from tests.conftest import burst, wait_until

TOKEN = "metrics-clients-token-0123456789abcdef"
TIMED = ('$remote_addr - [$time_local] "$request" $status $body_bytes_sent '
         'urt="$upstream_response_time" rt=$request_time')
Series = dict[str, dict[frozenset[tuple[str, str]], float]]


@dataclass
class Agent:
    url: str
    stop: Callable[[], None]

    def metrics(self) -> Series:
        resp = httpx.get(self.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=10, trust_env=False)
        assert resp.status_code == 200, resp.text
        out: Series = {}
        for family in text_string_to_metric_families(resp.text):
            for s in family.samples:
                out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
        return out


@pytest.fixture
def agent_for(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """`agent_for(stack, health=URL, **settings)`: a real agent (stackmon.agent.server.serve)
    on a free loopback port, in a thread with its own event loop."""
    started: list[Agent] = []

    def start(stack: Stack, health: str | None = None, **settings: Any) -> Agent:
        host = HostConfig(name="web-1", uwsgi=(parse_stats_address(stack.stats_address),),
                          nginx=stack.nginx_status_url, health=health)
        options = AgentOptions(host=host, settings=Settings(**settings), token=TOKEN,
                               read_only=True, audit_path=str(tmp_path / "audit.log"))
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            loop, stop = asyncio.get_running_loop(), asyncio.Event()
            box["stop"] = lambda: loop.call_soon_threadsafe(stop.set)

            def on_ready(url: str) -> None:
                box["url"] = url
                ready.set()

            await serve(options, ("127.0.0.1", free_port()), None, ready=on_ready, stop=stop)

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:
                box["error"] = exc
                ready.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert ready.wait(10), "agent did not start"
        if "error" in box:
            raise box["error"]

        def stop() -> None:
            box["stop"]()
            thread.join(10)

        agent = Agent(box["url"], stop)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def value(series: Series, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for k, v in series.get(name, {}).items() if want <= k]
    assert len(found) <= 1, (name, labels, series.get(name))
    return found[0] if found else None


def access_statuses(path: Path) -> list[int]:
    """Truth: each access-log line's status, right after the quoted request."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split('"')
        if len(parts) >= 3 and parts[2].split() and parts[2].split()[0].isdigit():
            out.append(int(parts[2].split()[0]))
    return out


def count_in(path: Path, needle: str) -> int:
    return sum(needle in line for line in path.read_text(errors="replace").splitlines())


def test_full_unix_queue_502s_by_cause_health_check_and_severity(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any],
        agent_for: Callable[..., Agent]) -> None:
    stack = fresh_stack(workers=1, threads=1, listen=2, nginx_log_format=TIMED)
    assert stack.nginx_base_url is not None and stack.nginx_access_log_path is not None
    agent = agent_for(stack, health=stack.nginx_base_url + "/healthz", health_timeout=1.0,
                      health_interval=1.0, unhealthy_threshold=2)
    before = agent.metrics()
    assert value(before, "stackmon_host_severity", host="web-1") == 0.0
    upstream = f"unix:{stack.uwsgi_socket_path}"
    assert value(before, "stackmon_upstream_errors", cause="queue_full") is None

    held = hang(stack, "/hang/metrics", n=1, via="unix")
    results = burst(stack, 30)
    assert results.count(502) >= 10, results

    # While the worker is held the health check fails through the same full queue, and the LB
    # would take the host out: the health model calls it critical.
    def out_of_service() -> Series | None:
        got = agent.metrics()
        return got if value(got, "stackmon_health_check_out_of_service") == 1.0 else None

    during = wait_until(out_of_service, 15, interval=0.3, message="the LB's verdict")
    assert during is not None
    assert value(during, "stackmon_health_check_ok") == 0.0
    failures = value(during, "stackmon_health_check_failures_in_row")
    assert failures is not None and failures >= 2
    assert value(during, "stackmon_host_severity", host="web-1") == 3.0
    assert value(during, "stackmon_host_reason_severity", kind="health") == 3.0
    queue_full = value(during, "stackmon_upstream_errors", cause="queue_full",
                       upstream=upstream)
    assert queue_full is not None and queue_full >= results.count(502)

    held.close()  # the worker is free: the health check passes again, no new 502s

    def recovered() -> Series | None:
        got = agent.metrics()
        truth_502 = access_statuses(stack.nginx_access_log_path).count(502)
        eagain = count_in(stack.nginx_error_log_path, "(11: Resource temporarily unavailable)")
        if value(got, "stackmon_health_check_ok") != 1.0:
            return None
        if value(got, "stackmon_http_error_responses", status="502") != truth_502:
            return None
        if value(got, "stackmon_upstream_errors", cause="queue_full",
                 upstream=upstream) != eagain:
            return None
        return got

    after = wait_until(recovered, 15, interval=0.3, message="figures equal to the logs")
    assert after is not None
    statuses = access_statuses(stack.nginx_access_log_path)
    truth_502 = statuses.count(502)
    # every 502 is a full queue on that socket, and nothing else failed upstream
    assert truth_502 == count_in(stack.nginx_error_log_path,
                                 "(11: Resource temporarily unavailable)")
    assert {dict(k)["cause"] for k in after["stackmon_upstream_errors"]} == {"queue_full"}
    # (health probes keep adding 200s, so the request total is only bounded here)
    requests = value(after, "stackmon_http_requests")
    assert requests is not None and len(results) <= requests <= len(statuses)
    assert value(after, "stackmon_http_responses", status="5xx") == sum(
        1 for s in statuses if 500 <= s < 600)
    # the true counters agree with the logs too, and are what rate() is for
    assert value(after, "stackmon_upstream_failures_total", cause="queue_full",
                 upstream=upstream) == truth_502
    assert value(after, "stackmon_http_responses_by_status_total", status="502") == truth_502
    assert value(after, "stackmon_health_check_failures_in_row") == 0.0
    assert value(after, "stackmon_health_check_out_of_service") == 0.0
    # the 502s are still in the window: the host stays critical by the 5xx rule
    assert value(after, "stackmon_host_reason_severity", kind="http") == 3.0
    p99 = value(after, "stackmon_http_upstream_response_seconds", quantile="0.99",
                variable="upstream_response_time")
    assert p99 is not None and p99 >= 0.0
    for name, samples in after.items():
        for labels in samples:
            assert not any("/hang" in v or "/fast" in v or v == "127.0.0.1"
                           for _, v in labels), (name, labels)

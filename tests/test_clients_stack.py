"""What the clients get, end to end: real nginx and uWSGI write real logs, stackmon's figures
(through `stackmon snapshot`, through an agent) are compared with the truth counted
independently from the same log files."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings
from stackmon.demo.launcher import Stack
from stackmon.hosts import open_host
from tests.conftest import wait_until
from tests.test_agent import start_agent  # noqa: F401  (a fixture)
from tests.test_logs_stack import get, statuses


def fill_unix_queue(stack: Stack, hang: Callable[..., Any]) -> int:
    """One worker held, a backlog of 2, 30 requests at once through nginx: most get 502 at
    once (connect() to the full unix socket fails with EAGAIN). Returns the access log's 502s."""
    hang(stack, "/hang/q", n=1, via="unix")
    threads = [threading.Thread(target=get, args=(stack, "/fast", 2.0)) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stack.release_hangs()
    return int(wait_until(lambda: statuses(stack.nginx_access_log_path)[502], 5))


def snapshot_json(stack: Stack, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "stackmon.cli", "snapshot", "--json", "--uwsgi",
         stack.stats_address, "--nginx", str(stack.nginx_status_url), *extra],
        capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)["hosts"][0]


def test_snapshot_counts_every_502_by_cause_and_exits_1(fresh_stack, hang) -> None:
    stack = fresh_stack(workers=1, threads=1, listen=2)
    truth = fill_unix_queue(stack, hang)
    assert truth >= 10
    code, host = snapshot_json(stack, "--health", f"{stack.nginx_base_url}/healthz")
    assert host["http"]["status"]["502"] == truth
    upstream = f"unix:{stack.uwsgi_socket_path}"
    assert [(e["cause"], e["upstream"], e["count"]) for e in host["upstream_errors"]] == \
        [("queue_full", upstream, truth)]
    assert host["state"]["severity"] == "critical", host["state"]
    assert any("uWSGI listen queue full" in r for r in host["state"]["reasons"])
    assert code == 1
    assert host["health"]["url"].endswith("/healthz") and host["health"]["ok"] is True
    kinds = {s["kind"] for s in host["log_sources"]}
    assert kinds == {"nginx_access", "nginx_error", "uwsgi"}


def test_a_quiet_stack_is_ok_and_exits_0(stack) -> None:
    code, host = snapshot_json(stack, "--window", "1s")
    assert host["state"]["severity"] in ("ok", "warn"), host["state"]
    assert code == 0


def test_snapshot_text_names_the_cause(fresh_stack, hang) -> None:
    stack = fresh_stack(workers=1, threads=1, listen=2)
    truth = fill_unix_queue(stack, hang)
    proc = subprocess.run(
        [sys.executable, "-m", "stackmon.cli", "snapshot", "--uwsgi", stack.stats_address,
         "--nginx", stack.nginx_status_url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr + proc.stdout
    assert f"502 {truth}  " in proc.stdout, proc.stdout
    assert f"upstream queue_full (uWSGI listen queue full) on unix:{stack.uwsgi_socket_path}: " \
           f"{truth} in window" in proc.stdout
    assert "[critical: 502" in proc.stdout


def test_the_same_figures_arrive_through_an_agent(fresh_stack, hang, start_agent) -> None:  # noqa: F811
    stack = fresh_stack(workers=1, threads=1, listen=2)
    agent = start_agent(stack)
    truth = fill_unix_queue(stack, hang)

    async def both() -> tuple[Any, Any]:
        local = open_host(HostConfig(name="l", uwsgi=(parse_stats_address(stack.stats_address),),
                                     nginx=stack.nginx_status_url), Settings())
        remote = open_host(agent.host(), Settings())
        try:
            return await local.poll(), await remote.poll()
        finally:
            await local.aclose()
            await remote.aclose()

    local, remote = asyncio.run(both())
    for snap in (local, remote):
        assert snap.logs is not None and snap.logs.http is not None
        assert snap.logs.http.status["502"] == truth
        assert [(e.cause, e.count) for e in snap.logs.upstream_errors] == [("queue_full", truth)]
    assert remote.logs is not None and local.logs is not None
    assert {s.kind for s in remote.logs.sources} == {s.kind for s in local.logs.sources}


def test_snapshot_json_carries_each_requests_deadlines(fresh_stack, hang) -> None:
    """The host layer plans the deadlines from the running configs and every poll carries
    them: the contract's `deadlines` in `snapshot --json`, through the real CLI."""
    stack = fresh_stack(workers=2, threads=1, harakiri=30,
                        extra_nginx=["uwsgi_read_timeout 20s;"])
    hang(stack, "/hang/deadline-json", via="nginx")
    _, host = snapshot_json(stack)
    (req,) = [r for w in host["uwsgi"][0]["workers"] for r in w["requests_in_flight"]]
    got = {d["name"]: d for d in req["deadlines"]}
    assert set(got) == {"harakiri", "nginx_read_timeout", "lb_idle_timeout"}
    assert got["harakiri"]["limit_s"] == 30 and got["nginx_read_timeout"]["limit_s"] == 20
    age = req["running_s"]
    assert abs(got["nginx_read_timeout"]["after_s"] - (20 - age)) < 0.01

"""The doctor against a real, running uWSGI + nginx started by the launcher.

Nothing is given but the stats address and the stub_status URL: the doctor must find the
uWSGI instance's ini from its master's command line and nginx's config from its master's, and
cite their files and lines. Other tests may be filling queues on this machine at the same time,
so assertions look for the expected findings rather than for an exact list.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings
from stackmon.demo.launcher import Stack
from stackmon.doctor import LbSettings, diagnose_host
from stackmon.doctor.gather import nginx_conf_path
from stackmon.model import SourceError
from tests.conftest import burst

TIMED = ('$remote_addr - [$time_local] "$request" $status $body_bytes_sent '
         'urt="$upstream_response_time" rt=$request_time')


def run_doctor(stack: Stack, *args: str) -> tuple[int, dict[str, Any]]:
    got = subprocess.run(
        [sys.executable, "-m", "stackmon.cli", "doctor", "--uwsgi", stack.stats_address,
         "--nginx", stack.nginx_status_url or "", "--json", *args],
        capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in got.stderr, got.stderr
    return got.returncode, json.loads(got.stdout)


def line_of(path: Any, prefix: str) -> int:
    lines = path.read_text().splitlines()
    return next(i + 1 for i, line in enumerate(lines) if line.strip().startswith(prefix))


def host_of(stack: Stack) -> HostConfig:
    return HostConfig(name="local", uwsgi=(parse_stats_address(stack.stats_address),),
                      nginx=stack.nginx_status_url)


def test_mistuned_stack_is_flagged_from_its_command_lines(
        fresh_stack: Callable[..., Stack]) -> None:
    stack = fresh_stack(workers=2, threads=1, mercy=90, extra_uwsgi={"max-requests": 1000},
                        extra_nginx=["uwsgi_read_timeout 75s;"])
    assert stack.has_nginx
    code, doc = run_doctor(stack)
    assert code == 1
    by_id = {f["id"]: f for f in doc["findings"]}
    ini = str(stack.ini_path)
    conf = str(stack.nginx_conf_path)

    mercy = by_id["uwsgi.reload-mercy-vs-health-check"]
    assert mercy["evidence"][0] == {"file": ini,
                                    "line": line_of(stack.ini_path, "worker-reload-mercy"),
                                    "values": {"worker-reload-mercy": "90"}}
    mr = by_id["uwsgi.max-requests-without-delta"]
    assert mr["evidence"][0]["file"] == ini
    assert mr["evidence"][0]["line"] == line_of(stack.ini_path, "max-requests")
    hara = by_id["uwsgi.harakiri-unset"]
    assert hara["severity"] == "warn"
    assert hara["evidence"][0]["file"] == ini
    # ...and compared with the read timeout of the location that passes to this instance.
    assert {"file": conf, "line": line_of(stack.nginx_conf_path, "uwsgi_read_timeout"),
            "values": {"uwsgi_read_timeout": "75s"}} in hara["evidence"]
    read = by_id["nginx.read-timeout-vs-lb-idle"]
    assert read["evidence"][0]["file"] == conf
    unix = by_id["nginx.unix-upstream"]
    assert unix["severity"] == "info"
    assert unix["evidence"][0]["values"]["socket"] == str(stack.uwsgi_socket_path)

    inputs = {(i["kind"], i.get("error")) for i in doc["inputs"]}
    assert ("nginx-conf", None) in inputs
    assert ("uwsgi-instance", None) in inputs
    sources = [i["source"] for i in doc["inputs"]]
    assert conf in sources
    assert any(f"master {stack.master_pid}" in s for s in sources)


def test_well_tuned_stack_passes(fresh_stack: Callable[..., Stack]) -> None:
    stack = fresh_stack(workers=2, threads=1, mercy=5, harakiri=20, nginx_log_format=TIMED,
                        extra_uwsgi={"max-requests": 1000, "max-requests-delta": 50},
                        extra_nginx=["client_header_timeout 65s;", "client_body_timeout 65s;",
                                     "uwsgi_read_timeout 30s;"])
    # One sample: ListenOverflows is host-wide and other tests may be overflowing queues.
    code, doc = run_doctor(stack, "--sample", "0")
    problems = [(f["id"], f["title"]) for f in doc["findings"] if f["severity"] != "info"]
    assert problems == []
    assert code == 0
    assert [f["id"] for f in doc["findings"]] == ["nginx.unix-upstream"]
    logs = {i["source"]: i.get("error") for i in doc["inputs"] if i["kind"] == "log"}
    assert logs[f"nginx access log {stack.nginx_access_log_path}"] is None
    assert logs[f"nginx error log {stack.nginx_error_log_path}"] is None


def test_default_log_format_is_a_low_finding_naming_the_variable(
        fresh_stack: Callable[..., Stack]) -> None:
    stack = fresh_stack(workers=1, threads=1)
    _, doc = run_doctor(stack, "--sample", "0")
    (f,) = [f for f in doc["findings"] if f["id"] == "logs.format-without-timing"]
    assert f["severity"] == "info"
    assert "$upstream_response_time" in f["fix"]
    assert f["evidence"][0]["file"] == str(stack.nginx_access_log_path)


def test_unix_queue_that_overflowed_is_critical_from_the_logs(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any]) -> None:
    """The queue fills and drains before the doctor runs: nothing live shows it any more
    (uWSGI's stats say 0/0 for unix sockets, ListenOverflows counts TCP only); nginx's error
    log does, and the doctor must say so, with the count and the socket, and exit 1."""
    stack = fresh_stack(workers=1, threads=1, listen=2, harakiri=30, nginx_log_format=TIMED)
    held = hang(stack, "/hang/doctor", n=1, via="unix")
    results = burst(stack, 30)
    held.close()
    truth_502 = sum('" 502 ' in line for line in
                    stack.nginx_access_log_path.read_text().splitlines())
    assert truth_502 >= 10 and truth_502 == results.count(502), results
    code, doc = run_doctor(stack, "--sample", "0")
    assert code == 1
    by_id = {f["id"]: f for f in doc["findings"]}
    f = by_id["logs.upstream-queue-full"]
    assert f["severity"] == "critical"
    assert str(stack.uwsgi_socket_path) in f["title"]
    log_ev = f["evidence"][0]
    assert log_ev["file"] == str(stack.nginx_error_log_path)
    assert log_ev["values"]["count"] == truth_502
    assert log_ev["values"]["upstream"] == f"unix:{stack.uwsgi_socket_path}"
    assert "(11: Resource temporarily unavailable)" in log_ev["values"]["sample"]
    assert {"file": str(stack.ini_path), "line": line_of(stack.ini_path, "listen"),
            "values": {"listen": "2"}} in f["evidence"]
    assert "somaxconn" in f["fix"] and "listen (now 2)" in f["fix"]
    assert "live.listen-queue-full" not in by_id  # drained: only the log remembers
    assert doc["findings"][0]["severity"] == "critical"

    text = subprocess.run(
        [sys.executable, "-m", "stackmon.cli", "doctor", "--uwsgi", stack.stats_address,
         "--nginx", stack.nginx_status_url or "", "--sample", "0"],
        capture_output=True, text=True, timeout=60, check=False)
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "[critical] logs.upstream-queue-full" in text.stdout
    assert f"count={truth_502}" in text.stdout


def test_nginx_config_found_from_the_masters_command_line(
        fresh_stack: Callable[..., Stack]) -> None:
    stack = fresh_stack(workers=1, threads=1)
    assert stack.nginx_master_pid is not None
    assert nginx_conf_path(stack.nginx_master_pid) == str(stack.nginx_conf_path)
    got = nginx_conf_path(stack.master_pid)  # a uWSGI master is not nginx
    assert isinstance(got, SourceError)


def test_full_unix_queue_is_critical_through_diagnose_host(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any]) -> None:
    """One worker, backlog 2: one request in flight and the unix socket's queue full, which
    only the kernel can see; diagnose_host (the TUI's entry point) reports it."""
    stack = fresh_stack(workers=1, threads=1, listen=2, nginx=False, harakiri=30)
    hang(stack, "/hang/a", n=1, via="unix")
    hang(stack, "/hang/b", n=2, via="unix", wait=False)
    settings = Settings(timeout=2.0)
    started = time.monotonic()
    report = diagnose_host(host_of(stack), settings, None, LbSettings())
    elapsed = time.monotonic() - started
    assert elapsed < 2 * settings.timeout + 2
    full = [f for f in report.findings if f.id == "live.listen-queue-full"
            and str(stack.uwsgi_socket_path) in f.title]
    assert full, [f.title for f in report.findings]
    assert full[0].severity == "critical"
    assert full[0].evidence[0].values["kind"] == "unix"
    assert full[0].evidence[0].values["backlog"] == 2
    assert report.problems


def test_diagnose_host_reuses_a_snapshot_and_never_raises(
        fresh_stack: Callable[..., Stack]) -> None:
    import asyncio

    from stackmon.hosts import open_host

    stack = fresh_stack(workers=1, threads=1, mercy=90)
    host = host_of(stack)
    settings = Settings()

    async def one() -> Any:
        return await open_host(host, settings).poll()

    snap = asyncio.run(one())
    time.sleep(1.0)  # old enough already: the given snapshot is the first of the two polls
    report = diagnose_host(host, settings, snap, LbSettings(), sample=1.0)
    assert "uwsgi.reload-mercy-vs-health-check" in [f.id for f in report.findings]
    live = [i for i in report.inputs if i.kind == "live"]
    assert live and live[0].error is None and "two polls" in live[0].source

    gone = HostConfig(name="gone", uwsgi=(parse_stats_address("127.0.0.1:1"),))
    report = diagnose_host(gone, Settings(timeout=0.5), None, LbSettings(), sample=0)
    assert report.findings == () or all(f.host == "gone" for f in report.findings)
    assert any(i.error and "connection refused" in i.error for i in report.inputs)

    remote = HostConfig(name="far", agent="http://127.0.0.1:1")
    report = diagnose_host(remote, settings, None, LbSettings())
    assert report.findings == ()
    assert "run `stackmon doctor` there" in (report.inputs[0].error or "")

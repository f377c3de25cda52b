"""The doctor's rules on what the clients got (logs) and on the LB's health check, and its
agreement with the health model's thresholds; Facts built by hand, as the polls would carry
them (HostSnapshot.logs, .health). The real-stack counterpart is in test_doctor_stack.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stackmon.doctor.facts import (
    Facts,
    Finding,
    HostFacts,
    LbSettings,
    LiveFacts,
    SystemFacts,
    UwsgiFacts,
)
from stackmon.doctor.gather import nginx_file_facts, uwsgi_file_facts
from stackmon.doctor.render import render_json, render_text
from stackmon.doctor.rules import run_rules
from stackmon.health import fd_severity, queue_severity
from stackmon.logs.access import HttpSummary, Percentiles
from stackmon.logs.host import LogSummary, SourceStatus
from stackmon.logs.nginx_errors import UpstreamError
from stackmon.logs.uwsgi_events import Event
from stackmon.model import (
    FdReport,
    HostSnapshot,
    KernelCounters,
    Listener,
    ProcessFds,
    Socket,
    UwsgiInstance,
)
from stackmon.sources.lb_probe import HealthCheck
from stackmon.uwsgi_ini import Option

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"
CLEAN = FIXTURES / "clean"
SYSTEM = SystemFacts(somaxconn=4096, file_nr=2000, file_max=1_000_000, nr_open=1_048_576,
                     listen_overflows=(10, 10), overflow_interval=1.0)
SOCK = "/run/app/uwsgi.sock"
ERROR_LOG = "/var/log/nginx/error.log"
ACCESS_LOG = "/var/log/nginx/access.log"
EAGAIN = (f"connect() to unix:{SOCK} failed (11: Resource temporarily unavailable) while "
          'connecting to upstream, client: 127.0.0.1, server: app, request: "GET '
          '/report?token=<redacted> HTTP/1.1", upstream: "uwsgi://unix:' + SOCK + ':"')


def http(requests: int = 100, log_format: str = "main", timing: str | None = "$request_time",
         **status: int) -> HttpSummary:
    counts = dict.fromkeys(("2xx", "3xx", "4xx", "5xx", "499", "502", "503", "504"), 0)
    counts.update({k.removeprefix("s"): v for k, v in status.items()})
    return HttpSummary(
        window_s=60.0, source=ACCESS_LOG, requests=requests, per_s=requests / 60, covered_s=60.0,
        status=counts, upstream_ms=Percentiles(1.0, 2.0, 3.0) if timing else None,
        timing=timing, top_5xx=(), top_slow=(), unparsed=0, log_format=log_format,
        missing=() if timing else ("$upstream_response_time",),
        advice=None if timing else f"add $upstream_response_time to log_format {log_format}")


def summary(errors: tuple[UpstreamError, ...] = (), events: tuple[Event, ...] = (),
            access: HttpSummary | None = None) -> LogSummary:
    sources = (SourceStatus("nginx_access", ACCESS_LOG, None, None, 1, 0, 0, ()),
               SourceStatus("nginx_error", ERROR_LOG, None, None, 1, 0, 0, ()))
    return LogSummary(taken_at=1060.0, window_s=60.0, http=access or http(),
                      upstream_errors=errors, events=events, sources=sources)


def snapshot(**kw: Any) -> HostSnapshot:
    base: dict[str, Any] = {"name": "web-1", "taken_at": 1060.0, "reachable": True,
                            "kernel": KernelCounters(4096, 0, 0)}
    base.update(kw)
    return HostSnapshot(**base)


def unix_instance(queue: int = 0) -> tuple[UwsgiFacts, UwsgiInstance]:
    inst = UwsgiInstance(address="127.0.0.1:9002", version="2.0.31", master_pid=4242,
                         listen_queue=0, listen_queue_max=0,
                         sockets=(Socket(SOCK, "uwsgi", queue, 2, source="kernel"),),
                         workers=())
    u = UwsgiFacts("uWSGI 127.0.0.1:9002 (master 4242)",
                   (Option("socket", SOCK, "/etc/uwsgi/app.ini", 5),
                    Option("listen", "2", "/etc/uwsgi/app.ini", 6),
                    Option("stats", "127.0.0.1:9002", "/etc/uwsgi/app.ini", 7)),
                   master_pid=4242, stats_address="127.0.0.1:9002", live=inst)
    return u, inst


def facts(snap: HostSnapshot, uwsgi: tuple[UwsgiFacts, ...] = (),
          nginx: tuple[Path, ...] = ()) -> Facts:
    host = HostFacts(name="web-1", uwsgi=uwsgi,
                     nginx=tuple(nginx_file_facts(str(p)) for p in nginx),
                     live=LiveFacts(snap))
    return Facts(system=SYSTEM, lb=LbSettings(), hosts=(host,))


def of(found: list[Finding], rule_id: str) -> list[Finding]:
    return [f for f in found if f.id == rule_id]


def error(cause: str, upstream: str, count: int, sample: str = "sample") -> UpstreamError:
    return UpstreamError(cause, upstream, count, 1001.0, 1059.0, sample)


# ------------------------------------------------------------------ causes


def test_unix_queue_overflow_is_critical_with_count_socket_and_fix() -> None:
    u, inst = unix_instance()
    logs = summary((error("queue_full", f"unix:{SOCK}", 37, EAGAIN),), access=http(s502=37))
    found = run_rules(facts(snapshot(uwsgi=(inst,), logs=logs), uwsgi=(u,)))
    (f,) = of(found, "logs.upstream-queue-full")
    assert f.severity == "critical" and f.host == "web-1"
    assert SOCK in f.title and "37x" in f.title
    log_ev = f.evidence[0]
    assert log_ev.file == ERROR_LOG
    assert log_ev.values["count"] == 37 and log_ev.values["upstream"] == f"unix:{SOCK}"
    assert "(11: Resource temporarily unavailable)" in log_ev.values["sample"]
    assert f.evidence[1].values == {"502": 37, "requests": 100}
    assert (f.evidence[2].file, f.evidence[2].line) == ("/etc/uwsgi/app.ini", 6)  # listen = 2
    assert f.evidence[3].values["backlog"] == 2  # the live socket, from the kernel
    for words in ("listen", "somaxconn", "workers", "stuck requests", "app.ini"):
        assert words in f.fix, words
    assert "to 128 in app.ini within net.core.somaxconn (4096)" in f.fix
    low = facts(snapshot(uwsgi=(inst,), logs=logs), uwsgi=(u,))
    low = replace(low, system=replace(SYSTEM, somaxconn=64))
    (f,) = of(run_rules(low), "logs.upstream-queue-full")
    assert "sysctl -w net.core.somaxconn=128" in f.fix
    assert found[0].id == "logs.upstream-queue-full"  # critical first


def test_queue_overflow_is_critical_even_when_rare() -> None:
    # One 502 among 10,000 requests is below every 5xx rate threshold: the queue rule does not
    # wait for a rate, because the kernel refused that client at once.
    logs = summary((error("queue_full", f"unix:{SOCK}", 1),), access=http(10_000, s502=1))
    (f,) = of(run_rules(facts(snapshot(logs=logs))), "logs.upstream-queue-full")
    assert f.severity == "critical"
    assert "?" in f.fix  # listen unknown without the instance's config: not invented


def test_read_timeout_cites_the_location_timeout_and_harakiri() -> None:
    u = uwsgi_file_facts(str(CLEAN / "uwsgi.ini"))
    logs = summary((error("read_timeout", "127.0.0.1:3031", 2,
                          "upstream timed out (110: Connection timed out) while reading "
                          "response header from upstream"),), access=http(200, s504=2))
    found = run_rules(facts(snapshot(logs=logs), uwsgi=(u,), nginx=(CLEAN / "nginx.conf",)))
    (f,) = of(found, "logs.read-timeout")
    assert f.severity == "warn"  # 2 in 60 s of 200 requests: under the policy's rates
    assert "504" in f.title and "127.0.0.1:3031" in f.title
    values = [e.values for e in f.evidence]
    assert {"uwsgi_read_timeout": "50s"} in values
    assert {"harakiri": "40"} in values
    assert values[0]["sample"].startswith("upstream timed out")
    assert "harakiri" in f.fix


def test_cause_severity_follows_the_health_policy_rates() -> None:
    many = summary((error("read_timeout", "127.0.0.1:3031", 90),), access=http(400, s504=90))
    (f,) = of(run_rules(facts(snapshot(logs=many))), "logs.read-timeout")
    assert f.severity == "critical"  # 1.5/s: at least errors_critical_per_s
    share = summary((error("read_timeout", "127.0.0.1:3031", 6),), access=http(100, s504=6))
    (f,) = of(run_rules(facts(snapshot(logs=share))), "logs.read-timeout")
    assert f.severity == "critical"  # 6 % of requests, at least 5 of them


def test_refused_names_the_reload_window() -> None:
    events = (Event(1050.0, "uwsgi", "reload", None, 4242, None, "gracefully reloading"),
              Event(1052.0, "uwsgi", "reload", None, 4242, None, "binary reloaded"))
    logs = summary((error("refused", f"unix:{SOCK}", 3,
                          "connect() to unix:/x failed (111: Connection refused)"),),
                   events, http(300, s502=3))
    (f,) = of(run_rules(facts(snapshot(logs=logs))), "logs.refused")
    assert f.severity == "warn" and "3 connection(s)" in f.title
    assert f.evidence[0].values["count"] == 3
    assert any(e.values.get("reload") == 2 for e in f.evidence)
    assert "chain" in f.fix


def test_closed_mid_request_with_the_harakiri_events() -> None:
    events = (Event(1040.0, "uwsgi", "harakiri", 2, 5151, "/report?token=<redacted>",
                    "HARAKIRI ON WORKER 2 (pid: 5151, try: 1)"),
              Event(1041.0, "uwsgi", "respawn", 2, 5160, None, "Respawned uWSGI worker 2"))
    logs = summary((error("closed_mid_request", f"unix:{SOCK}", 1,
                          "upstream prematurely closed connection while reading response "
                          "header from upstream"),), events)
    (f,) = of(run_rules(facts(snapshot(logs=logs))), "logs.closed-mid-request")
    assert f.severity == "warn"
    ev = next(e for e in f.evidence if "harakiri" in e.values)
    assert ev.values["harakiri"] == 1 and "HARAKIRI ON WORKER 2" in ev.values["newest"]
    assert "respawn" not in ev.values  # only the kinds that kill a request
    assert f.evidence[0].values["sample"].startswith("upstream prematurely closed")


def test_other_causes_and_no_logs() -> None:
    logs = summary((error("connect_timeout", "127.0.0.1:3031", 4),
                    error("no_live_upstreams", "app", 1)))
    found = of(run_rules(facts(snapshot(logs=logs))), "logs.upstream-errors")
    assert sorted(f.evidence[0].values["cause"] for f in found) == ["connect_timeout",
                                                                     "no_live_upstreams"]
    nothing = run_rules(facts(snapshot()))
    assert not [f for f in nothing if f.id.startswith("logs.")]
    clean = run_rules(facts(snapshot(logs=summary())))
    assert not [f for f in clean if f.id.startswith("logs.")]


# ------------------------------------------------------------------ log format


def test_combined_format_without_timing_is_low_and_says_what_to_add() -> None:
    logs = summary(access=http(log_format="combined", timing=None))
    found = run_rules(facts(snapshot(logs=logs)))
    (f,) = of(found, "logs.format-without-timing")
    assert f.severity == "info"
    assert "$upstream_response_time" in f.fix and "access_log" in f.fix
    assert f.evidence[0].file == ACCESS_LOG
    report_problems = [x for x in found if x.severity != "info"]
    assert report_problems == []


def test_custom_format_cites_its_log_format_line(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text("events {}\nhttp {\n    log_format main '$remote_addr \"$request\" "
                    "$status';\n    server {\n        listen 8080;\n"
                    f"        access_log {ACCESS_LOG} main;\n    }}\n}}\n")
    logs = summary(access=http(log_format="main", timing=None))
    (f,) = of(run_rules(facts(snapshot(logs=logs), nginx=(conf,))),
              "logs.format-without-timing")
    assert f.fix.startswith("Add $upstream_response_time to log_format main")
    where = {(Path(e.file).name, e.line) for e in f.evidence}
    assert ("nginx.conf", 3) in where and ("nginx.conf", 6) in where


# ------------------------------------------------------------------ the LB's health check


def check(**kw: Any) -> HealthCheck:
    base: dict[str, Any] = {"url": "http://127.0.0.1/healthz", "ok": False, "last_ms": 5000.0,
                            "max_ms": 5000.0, "failures_in_row": 2, "out_of_service": True,
                            "last_error": "timed out after 5 s", "timeout_s": 5.0}
    base.update(kw)
    return HealthCheck(**base)


def test_host_out_of_service_is_critical() -> None:
    (f,) = of(run_rules(facts(snapshot(health=check()))), "live.lb-health-check")
    assert f.severity == "critical"
    assert "out" in f.title and "2 health checks failed" in f.title
    assert f.evidence[0].file == "http://127.0.0.1/healthz"
    assert f.evidence[0].values["last_error"] == "timed out after 5 s"
    failing = check(out_of_service=False, failures_in_row=1, out_in_s=29.0)
    (f,) = of(run_rules(facts(snapshot(health=failing))), "live.lb-health-check")
    assert f.severity == "warn"
    passing = check(ok=True, last_ms=12.0, max_ms=15.0, failures_in_row=0,
                    out_of_service=False, last_error="")
    assert of(run_rules(facts(snapshot(health=passing))), "live.lb-health-check") == []


def test_report_renders_log_findings_with_their_evidence() -> None:
    logs = summary((error("queue_full", f"unix:{SOCK}", 37, EAGAIN),))
    found = run_rules(facts(snapshot(logs=logs, health=check())))
    from stackmon.doctor.facts import Report
    text = render_text(Report(findings=tuple(found)))
    assert "[critical] logs.upstream-queue-full" in text
    assert "[critical] live.lb-health-check" in text
    assert "count=37" in text and "token=<redacted>" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert '"cause": "queue_full"' in render_json(Report(findings=tuple(found)))


# ------------------------------------------------------------------ one health model


def severity_of(found: list[Finding], rule_id: str) -> str:
    matching = of(found, rule_id)
    return matching[0].severity if matching else "ok"


@pytest.mark.parametrize("depth", [0, 50, 69, 70, 89, 90, 99, 100, 101])
def test_queue_thresholds_are_the_health_models(depth: int) -> None:
    snap = snapshot(listeners=(Listener("127.0.0.1:80", "tcp", "nginx", depth, 100),))
    assert severity_of(run_rules(facts(snap)), "live.listen-queue-full") == \
        queue_severity(depth, 100)


@pytest.mark.parametrize("used", [0, 700, 799, 800, 949, 950, 1000])
def test_fd_thresholds_are_the_health_models(used: int) -> None:
    snap = snapshot(fds=FdReport(system=None, processes=(
        ProcessFds(20, "uwsgi-worker", used, 1000),)))
    assert severity_of(run_rules(facts(snap)), "live.fds-near-limit") == \
        fd_severity(used, 1000)
    system = replace(SYSTEM, file_nr=used * 1000, file_max=1_000_000)
    found = run_rules(Facts(system=system, lb=LbSettings(), hosts=()))
    assert severity_of(found, "kernel.file-nr-near-max") == fd_severity(used, 1000)

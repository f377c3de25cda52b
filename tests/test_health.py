"""The health model: one verdict per host, with reasons, from every signal."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stackmon.health import HostState, assess, fd_severity, fill_severity, queue_severity
from stackmon.logs.access import HttpSummary
from stackmon.logs.host import LogSummary
from stackmon.logs.nginx_errors import UpstreamError
from stackmon.model import (
    Core,
    FdReport,
    HostSnapshot,
    Listener,
    ProcessFds,
    Request,
    SourceError,
    UwsgiInstance,
    Worker,
)
from stackmon.sources.lb_probe import HealthCheck

BASE = HostSnapshot(name="web-1", taken_at=1000.0, reachable=True)


def _worker(wid: int, level: str, age: float) -> Worker:
    req = Request(core=0, method="GET", uri=f"/r{wid}", remote_addr="1.2.3.4", host="h",
                  started_at=1000.0 - age, running_s=age, level=level)  # type: ignore[arg-type]
    return Worker(id=wid, pid=100 + wid, status="busy", accepting=True, requests=1,
                  exceptions=0, harakiri_count=0, respawn_count=1, avg_rt_ms=1.0, rss=0,
                  vsz=0, last_spawn=900.0, running_time_s=0.0, tx=0,
                  cores=(Core(id=0, requests=0, in_request=True, request=req),))


def _http(status: dict[str, int], requests: int, covered: float = 60.0) -> LogSummary:
    http = HttpSummary(window_s=60.0, source="/a.log", requests=requests,
                       per_s=requests / covered, covered_s=covered, status=status,
                       upstream_ms=None, timing=None, top_5xx=(), top_slow=(), unparsed=0,
                       log_format="combined", missing=(), advice=None)
    cause = UpstreamError(cause="queue_full", upstream="unix:/run/app.sock", count=37,
                          first_at=990.0, last_at=999.0, sample="connect() failed (11: ...)")
    return LogSummary(taken_at=1000.0, window_s=60.0, http=http, upstream_errors=(cause,),
                      events=())


def _probe(**kw: object) -> HealthCheck:
    base = dict(url="http://x/healthz", ok=True, last_ms=10.0, max_ms=10.0, failures_in_row=0,
                out_of_service=False, timeout_s=5.0)
    base.update(kw)
    return HealthCheck(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("value,limit,sev", [
    (69, 100, "ok"), (70, 100, "warn"), (89, 100, "warn"), (90, 100, "critical"),
    (9, 10, "critical"), (33, 32, "critical"), (0, 0, "unknown"),
])
def test_queue_thresholds(value: int, limit: int, sev: str) -> None:
    assert queue_severity(value, limit) == sev


def test_fd_thresholds_are_their_own() -> None:
    assert fd_severity(79, 100) == "ok" and fd_severity(80, 100) == "warn"
    assert fd_severity(94, 100) == "warn" and fd_severity(95, 100) == "critical"
    assert fill_severity(1, 3, 0.33, 0.9) == "warn"


def test_a_quiet_host_is_ok() -> None:
    state = assess(BASE)
    assert state == HostState(severity="ok", reasons=(), label="ok")


def test_worst_reason_wins_and_all_are_kept() -> None:
    inst = UwsgiInstance(address="a", version="2", master_pid=1, listen_queue=0,
                         listen_queue_max=100, sockets=(), index=0,
                         workers=(_worker(1, "critical", 75.0), _worker(2, "slow", 12.0)))
    host = replace(BASE, uwsgi=(inst,), listeners=(
        Listener(address="/run/app.sock", kind="unix", owner="uwsgi", queue=23, backlog=32),))
    state = assess(host)
    assert state.severity == "critical" and state.label == "CRIT 1"
    kinds = [(r.kind, r.severity) for r in state.reasons]
    assert kinds[0] == ("request", "critical")
    assert ("request", "warn") in kinds and ("queue", "warn") in kinds
    assert "oldest 75 s: worker 1 GET /r1" in state.reasons[0].text


def test_a_full_unix_queue_is_critical_and_says_so() -> None:
    host = replace(BASE, listeners=(
        Listener(address="/run/app.sock", kind="unix", owner="uwsgi", queue=33, backlog=32),))
    state = assess(host)
    assert state.severity == "critical" and state.label == "QUEUE 103%"
    assert "full" in state.reasons[0].text


def test_fds_near_the_limit() -> None:
    host = replace(BASE, fds=FdReport(system=None, processes=(
        ProcessFds(pid=7, role="nginx-worker", open=980, limit=1024),)))
    state = assess(host)
    assert state.severity == "critical" and state.label == "FDS 95%"


def test_502s_name_their_rate_and_cause() -> None:
    host = replace(BASE, logs=_http({"502": 120, "2xx": 300}, requests=420))
    state = assess(host)
    assert state.severity == "critical" and state.label == "502 2.0/s"
    assert "uWSGI listen queue full on unix:/run/app.sock (×37)" in state.reasons[0].text


def test_a_few_5xx_are_a_warning() -> None:
    host = replace(BASE, logs=_http({"504": 2, "2xx": 1000}, requests=1002))
    state = assess(host)
    assert state.severity == "warn" and state.label == "504 ×2"


def test_the_lb_taking_the_host_out_is_critical() -> None:
    out = replace(BASE, health=_probe(ok=False, failures_in_row=2, out_of_service=True,
                                      last_error="timed out after 5 s"))
    assert assess(out).severity == "critical" and assess(out).label == "LB OUT"
    failing = replace(BASE, health=_probe(ok=False, failures_in_row=1, out_in_s=29.0,
                                          last_error="HTTP 502"))
    state = assess(failing)
    assert state.severity == "warn" and "out of service in 29 s" in state.reasons[0].text
    slow = replace(BASE, health=_probe(last_ms=4500.0))
    assert assess(slow).label == "HEALTH SLOW"
    assert assess(replace(BASE, health=_probe())).severity == "ok"


def test_unreachable_and_stale() -> None:
    down = replace(BASE, reachable=False, errors=(SourceError("uwsgi", "connection refused"),))
    assert assess(down).severity == "critical"
    assert assess(down).label == "UNREACHABLE connection refused"
    stale = replace(down, stale_s=12.0)
    assert assess(stale).label.endswith("(data 12s old)")
    old_but_fine = replace(BASE, stale_s=12.0)
    assert assess(old_but_fine).severity == "unknown"
    assert assess(old_but_fine).label == "STALE 12s"


def test_a_failed_source_is_partial() -> None:
    host = replace(BASE, errors=(SourceError("nginx http://x/s", "refused"),))
    state = assess(host)
    assert state.severity == "warn" and state.label == "PARTIAL: nginx down"

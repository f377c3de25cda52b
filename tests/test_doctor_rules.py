"""The doctor's rules, one by one, on Facts built from the fixture files and by hand.

The kernel facts are made up here (somaxconn 4096, plenty of fds) so that every test is the
same on any machine; the CLI and live-stack tests use the real kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    NginxFacts,
    Report,
    SystemFacts,
    UwsgiFacts,
)
from stackmon.doctor.gather import merge_files, nginx_file_facts, uwsgi_file_facts
from stackmon.doctor.render import WIDTH, render_json, render_text
from stackmon.doctor.rules import RULES, address_matches, run_rules
from stackmon.model import (
    FdReport,
    HostSnapshot,
    KernelCounters,
    Listener,
    NginxStatus,
    ProcessFds,
    Socket,
    SystemFds,
    UwsgiInstance,
)
from stackmon.uwsgi_ini import Option

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"
CLEAN = FIXTURES / "clean"
MISTUNED = FIXTURES / "mistuned"
SYSTEM = SystemFacts(somaxconn=4096, file_nr=2000, file_max=1_000_000, nr_open=1_048_576,
                     listen_overflows=(10, 10), overflow_interval=1.0)


def facts(uwsgi: Sequence[str | Path] = (), nginx: Sequence[str | Path] = (),
          system: SystemFacts = SYSTEM,
          lb: LbSettings | None = None, live: LiveFacts | None = None,
          extra_uwsgi: tuple[UwsgiFacts, ...] = ()) -> Facts:
    host = HostFacts(name="web-1",
                     uwsgi=tuple(uwsgi_file_facts(str(p)) for p in uwsgi) + extra_uwsgi,
                     nginx=tuple(nginx_file_facts(str(p)) for p in nginx), live=live)
    return Facts(system=system, lb=lb or LbSettings(), hosts=(host,))


def ids(findings: list[Finding]) -> list[str]:
    return [f.id for f in findings]


def only(findings: list[Finding], rule_id: str) -> Finding:
    matching = [f for f in findings if f.id == rule_id]
    assert len(matching) == 1, ids(findings)
    return matching[0]


def evidence_at(f: Finding, name: str) -> list[tuple[int, dict]]:
    return [(e.line, e.values) for e in f.evidence if Path(e.file).name == name]


def test_clean_configuration_has_no_findings() -> None:
    assert run_rules(facts([CLEAN / "uwsgi.ini"], [CLEAN / "nginx.conf"])) == []


def test_every_rule_id_is_unique_and_namespaced() -> None:
    names = [r.id for r in RULES]
    assert len(names) == len(set(names))
    assert all(n.split(".")[0] in ("uwsgi", "nginx", "kernel", "live", "logs") for n in names)


def test_mistuned_files_trip_their_rules() -> None:
    found = run_rules(facts([MISTUNED / "uwsgi.ini"],
                            [MISTUNED / "nginx.conf"]))
    assert ids(found) == [
        "uwsgi.listen-vs-somaxconn",
        "nginx.backlog-vs-somaxconn",
        "nginx.rlimit-vs-nr-open",
        "nginx.keepalive-vs-lb-idle",
        "nginx.client-timeouts-vs-lb-idle",
        "nginx.read-timeout-vs-lb-idle",
        "nginx.connect-timeout-over-75s",
        "uwsgi.harakiri-unset",
        "uwsgi.reload-mercy-vs-health-check",
        "uwsgi.max-requests-without-delta",
        "uwsgi.number-with-text",
        "uwsgi.no-stats",
        "nginx.unix-upstream",
    ]
    # Most severe first.
    assert [f.severity for f in found][:2] == ["critical", "warn"]
    assert found[-1].severity == "info"


def test_listen_vs_somaxconn_cites_the_line_and_the_sysctl() -> None:
    f = only(run_rules(facts([MISTUNED / "uwsgi.ini"])), "uwsgi.listen-vs-somaxconn")
    assert f.severity == "critical"
    assert evidence_at(f, "uwsgi.ini") == [(8, {"listen": "100000"})]
    assert any(e.file == "/proc/sys/net/core/somaxconn" and e.values == {"somaxconn": 4096}
               for e in f.evidence)
    assert "net.core.somaxconn=100000" in f.fix
    assert "refuses to start" in f.why
    # The default listen (100) is fine against somaxconn 128 (old kernels) but not 64.
    small = replace(SYSTEM, somaxconn=64)
    f = only(run_rules(facts([MISTUNED / "harakiri-long.ini"], system=small)),
             "uwsgi.listen-vs-somaxconn")
    assert f.evidence[0].values["note"] == "not set: uWSGI default"


def test_nginx_backlog_defaults_to_511() -> None:
    small = replace(SYSTEM, somaxconn=128)
    f = only(run_rules(facts(nginx=[CLEAN / "nginx.conf"], system=small)),
             "nginx.backlog-vs-somaxconn")
    assert evidence_at(f, "app.conf") == [
        (6, {"listen": "127.0.0.1:8080", "backlog": 511, "note": "backlog not set: nginx default"})]


def test_keepalive_and_client_timeouts_cite_defaults_and_explicit_values() -> None:
    found = run_rules(facts(nginx=[MISTUNED / "nginx.conf"]))
    keep = only(found, "nginx.keepalive-vs-lb-idle")
    assert evidence_at(keep, "nginx.conf") == [(10, {"keepalive_timeout": "60s"})]
    client = only(found, "nginx.client-timeouts-vs-lb-idle")
    # The server sets client_header_timeout 30s; client_body_timeout is nginx's default 60s,
    # cited at the http block where it would go.
    assert evidence_at(client, "app.conf") == [(3, {"client_header_timeout": "30s"})]
    assert evidence_at(client, "nginx.conf") == [
        (9, {"client_body_timeout": "60s", "note": "not set: nginx default"})]
    # A longer LB idle timeout makes the defaults (75 s keep-alive) too short as well.
    found = run_rules(facts(nginx=[CLEAN / "nginx.conf"], lb=LbSettings(idle_timeout=120)))
    keep = only(found, "nginx.keepalive-vs-lb-idle")
    assert "keepalive_timeout 135s;" in keep.fix


def test_keepalive_disabled_is_not_a_race() -> None:
    conf = FIXTURES / "clean" / "nginx.conf"
    parsed = nginx_file_facts(str(conf))
    http = parsed.conf.block("http")
    assert http is not None
    zero = replace(http.directives[0], args=("0",))
    assert zero.name == "keepalive_timeout"
    new_http = replace(http, directives=(zero, *http.directives[1:]))
    root = replace(parsed.conf.root, children=tuple(
        new_http if c is http else c for c in parsed.conf.root.children))
    f = Facts(SYSTEM, LbSettings(), (HostFacts("h", nginx=(
        NginxFacts(replace(parsed.conf, root=root)),)),))
    assert run_rules(f) == []


def test_read_timeout_at_the_idle_timeout_is_flagged() -> None:
    found = run_rules(facts(nginx=[CLEAN / "nginx.conf"], lb=LbSettings(idle_timeout=50)))
    f = only(found, "nginx.read-timeout-vs-lb-idle")
    assert evidence_at(f, "app.conf") == [(11, {"uwsgi_read_timeout": "50s"})]


def test_harakiri_vs_read_timeout_pairs_by_socket() -> None:
    found = run_rules(facts([MISTUNED / "harakiri-long.ini"], [MISTUNED / "nginx.conf"]))
    f = only(found, "uwsgi.harakiri-vs-read-timeout")
    assert evidence_at(f, "harakiri-long.ini") == [(4, {"harakiri": "90"})]
    assert evidence_at(f, "app.conf") == [(7, {"uwsgi_read_timeout": "75s"})]
    assert f.fix.startswith("harakiri = 70")


def test_harakiri_not_compared_with_another_instances_locations() -> None:
    """Two uWSGI configs, nginx passes to one of them: the other is not compared."""
    other = UwsgiFacts("other.ini", (Option("socket", "127.0.0.1:9999", "other.ini", 1),
                                     Option("harakiri", "500", "other.ini", 2),
                                     Option("stats", ":1717", "other.ini", 3)))
    found = run_rules(facts([MISTUNED / "harakiri-long.ini"], [MISTUNED / "nginx.conf"],
                            extra_uwsgi=(other,)))
    f = only(found, "uwsgi.harakiri-vs-read-timeout")
    assert f.title.startswith("harakiri 90s")


def test_harakiri_unset_suggests_below_the_read_timeout() -> None:
    f = only(run_rules(facts([MISTUNED / "uwsgi.ini"], [CLEAN / "nginx.conf"])),
             "uwsgi.harakiri-unset")
    assert f.evidence[0].values == {"harakiri": "unset", "note": "not set: off by default"}
    assert f.fix.startswith("harakiri = 40")


def test_mercy_vs_health_window() -> None:
    f = only(run_rules(facts([MISTUNED / "uwsgi.ini"])), "uwsgi.reload-mercy-vs-health-check")
    assert evidence_at(f, "uwsgi.ini") == [(11, {"worker-reload-mercy": "90"})]
    # A longer window (3 checks every 30 s) accepts 60 s of mercy, not 90 s.
    lb = LbSettings(unhealthy_threshold=3)
    assert "uwsgi.reload-mercy-vs-health-check" not in ids(
        run_rules(facts([MISTUNED / "harakiri-long.ini"], lb=lb)))
    assert "uwsgi.reload-mercy-vs-health-check" in ids(
        run_rules(facts([MISTUNED / "uwsgi.ini"], lb=lb)))


def test_number_with_text() -> None:
    f = only(run_rules(facts([MISTUNED / "uwsgi.ini"])), "uwsgi.number-with-text")
    assert evidence_at(f, "uwsgi.ini") == [(14, {"socket-timeout": "30s", "read_as": 30})]


def test_fd_limit_rules() -> None:
    found = run_rules(facts(nginx=[MISTUNED / "fd-limit.conf"]))
    f = only(found, "nginx.worker-connections-vs-fd-limit")
    assert [(e.line, e.values) for e in f.evidence] == [
        (6, {"worker_connections": 4096}), (3, {"worker_rlimit_nofile": "1024"})]
    assert "worker_rlimit_nofile 8192;" in f.fix
    found = run_rules(facts(nginx=[MISTUNED / "fd-headroom.conf"]))
    f = only(found, "nginx.fd-limit-vs-proxying")
    assert f.severity == "info"
    assert f.evidence[-1].values["proxied_clients_capacity"] == 4 * 4096 // 2


def test_fd_limit_from_the_live_workers_wins_over_the_config() -> None:
    snap = host_snapshot(fds=FdReport(system=None, processes=(
        ProcessFds(10, "nginx-master", 10, 1024), ProcessFds(11, "nginx-worker", 10, 512),
        ProcessFds(12, "nginx-worker", 10, 1024))))
    found = run_rules(facts(nginx=[CLEAN / "nginx.conf"], live=LiveFacts(snap)))
    f = only(found, "nginx.worker-connections-vs-fd-limit")
    assert f.evidence[1].file == "/proc/11/limits"
    assert f.evidence[1].values["max_open_files"] == 512


def test_system_fds() -> None:
    near = replace(SYSTEM, file_nr=960_000)
    f = only(run_rules(facts(system=near)), "kernel.file-nr-near-max")
    assert f.severity == "critical"
    f = only(run_rules(facts(system=replace(SYSTEM, file_nr=850_000))),
             "kernel.file-nr-near-max")
    assert f.severity == "warn"


def test_listen_overflows_rising() -> None:
    assert "kernel.listen-overflows" not in ids(run_rules(facts()))
    rising = replace(SYSTEM, listen_overflows=(10, 17), overflow_interval=1.02)
    f = only(run_rules(facts(system=rising)), "kernel.listen-overflows")
    assert f.severity == "critical"
    assert f.evidence[0].values["ListenOverflows_after"] == 17
    one_sample = replace(SYSTEM, listen_overflows=(10, None))
    assert "kernel.listen-overflows" not in ids(run_rules(facts(system=one_sample)))


# ------------------------------------------------------------------ live


def host_snapshot(**kw: Any) -> HostSnapshot:
    base: dict[str, Any] = {"name": "web-1", "taken_at": 1000.0, "reachable": True,
            "kernel": KernelCounters(4096, 0, 0)}
    base.update(kw)
    return HostSnapshot(**base)


def instance(sockets: tuple[Socket, ...]) -> UwsgiInstance:
    return UwsgiInstance(address="127.0.0.1:9002", version="2.0.31", master_pid=4242,
                         listen_queue=0, listen_queue_max=0, sockets=sockets, workers=())


def test_live_backlog_capped_for_uwsgi_and_nginx() -> None:
    inst = instance((Socket("/run/app/uwsgi.sock", "uwsgi", 3, 128, source="kernel"),
                     Socket("127.0.0.1:3031", "uwsgi", 0, 1024)))
    u = UwsgiFacts("uWSGI 127.0.0.1:9002 (master 4242)",
                   (Option("listen", "1024", "/etc/uwsgi/app.ini", 7),
                    Option("stats", "127.0.0.1:9002", "/etc/uwsgi/app.ini", 8),
                    Option("harakiri", "20", "/etc/uwsgi/app.ini", 9),
                    Option("worker-reload-mercy", "10", "/etc/uwsgi/app.ini", 10)),
                   master_pid=4242, stats_address="127.0.0.1:9002", live=inst)
    snap = host_snapshot(uwsgi=(inst,), listeners=(
        Listener("127.0.0.1:8080", "tcp", "nginx", 0, 128, pids=(10,)),))
    # somaxconn was 128 when the sockets were created and is 4096 now.
    f = facts(nginx=[MISTUNED / "fd-headroom.conf"], live=LiveFacts(snap), extra_uwsgi=(u,))
    found = [x for x in run_rules(f) if x.id == "live.backlog-capped"]
    assert len(found) == 2
    uw, ng = found
    assert uw.title == "uWSGI sockets run with backlog 128, configured listen 1024"
    assert uw.evidence[0].values == {"listen": "1024"} and uw.evidence[0].line == 7
    assert uw.evidence[1].values == {"socket": "/run/app/uwsgi.sock", "backlog": 128,
                                     "source": "kernel"}
    assert ng.evidence[0].values == {"listen": "127.0.0.1:8080", "backlog": 511,
                                     "note": "backlog not set: nginx default"}
    assert ng.evidence[1].values == {"listener": "127.0.0.1:8080", "backlog": 128}
    assert ng.fix.startswith("Restart nginx")
    # With somaxconn still 128 the config itself asks too much: that is
    # nginx.backlog-vs-somaxconn's finding, not repeated here.
    f = replace(f, system=replace(SYSTEM, somaxconn=128))
    found = run_rules(f)
    assert [x.title for x in found if x.id == "live.backlog-capped"] == [uw.title]
    assert "nginx.backlog-vs-somaxconn" in ids(found)


def test_live_queue_full_uses_the_worse_of_two_samples() -> None:
    first = host_snapshot(listeners=(Listener("/run/app/uwsgi.sock", "unix", "uwsgi", 100, 100),
                                     Listener("127.0.0.1:80", "tcp", "nginx", 90, 100),
                                     Listener("127.0.0.1:81", "tcp", "nginx", 70, 100),
                                     Listener("127.0.0.1:82", "tcp", "nginx", 69, 100)))
    second = host_snapshot(taken_at=1001.0, listeners=(
        Listener("/run/app/uwsgi.sock", "unix", "uwsgi", 40, 100),
        Listener("127.0.0.1:80", "tcp", "nginx", 10, 100)))
    found = [x for x in run_rules(facts(live=LiveFacts(first, second, 1.0)))
             if x.id == "live.listen-queue-full"]
    # The health model's thresholds (70 % warn, 90 % critical), as the TUI's gauge and badge.
    assert [(x.severity, x.title) for x in found] == [
        ("critical", "uwsgi listen queue full: 100/100 on /run/app/uwsgi.sock"),
        ("critical", "nginx listen queue nearly full: 90/100 on 127.0.0.1:80"),
        ("warn", "nginx listen queue nearly full: 70/100 on 127.0.0.1:81"),
    ]
    assert "EAGAIN" in found[0].why


def test_accepts_not_handled() -> None:
    def status(accepts: int, handled: int, at: float) -> NginxStatus:
        return NginxStatus("http://127.0.0.1/nginx_status", 5, accepts, handled, 100, 0, 1, 4,
                           at)

    first = host_snapshot(nginx=status(100, 100, 1000.0))
    assert "nginx.accepts-not-handled" not in ids(run_rules(facts(live=LiveFacts(first))))
    old = host_snapshot(nginx=status(100, 97, 1000.0))
    f = only(run_rules(facts(live=LiveFacts(old, old, 1.0))), "nginx.accepts-not-handled")
    assert f.severity == "warn" and f.evidence[0].values["dropped"] == 3
    newer = host_snapshot(nginx=status(150, 140, 1001.0))
    f = only(run_rules(facts(live=LiveFacts(old, newer, 1.0))), "nginx.accepts-not-handled")
    assert f.severity == "critical"
    assert f.evidence[0].values == {"accepts": 150, "handled": 140, "dropped": 10,
                                    "dropped_before": 3, "interval_s": 1.0}


def test_fds_near_limit() -> None:
    snap = host_snapshot(fds=FdReport(system=SystemFds(10, 100), processes=(
        ProcessFds(20, "uwsgi-worker", 1000, 1024), ProcessFds(21, "uwsgi-worker", 10, 1024))))
    f = only(run_rules(facts(live=LiveFacts(snap))), "live.fds-near-limit")
    assert f.severity == "critical" and f.title.startswith("uwsgi-worker 20 has 1000 of 1024")


@pytest.mark.parametrize(("target", "socket", "match"), [
    ("unix:/run/app.sock", "/run/app.sock", True),
    ("unix:/run/app.sock", "/run/other.sock", False),
    ("127.0.0.1:3031", ":3031", True),
    ("127.0.0.1:3031", "0.0.0.0:3031", True),
    ("localhost:3031", "127.0.0.1:3031", True),
    ("10.0.0.5:3031", "127.0.0.1:3031", False),
    ("127.0.0.1:3031", "127.0.0.1:3032", False),
    ("127.0.0.1:3031", "/run/app.sock", False),
])
def test_address_matching(target: str, socket: str, match: bool) -> None:
    assert address_matches(target, socket) is match


def test_files_already_covered_by_a_running_instance_are_dropped() -> None:
    ini = str(MISTUNED / "harakiri-long.ini")
    live = UwsgiFacts("uWSGI x", (Option("ini", ini, "<cmdline>", 1),
                                  Option("harakiri", "90", ini, 4)), master_pid=1)
    host = HostFacts("h", uwsgi=(live,))
    files = [uwsgi_file_facts(ini), uwsgi_file_facts(str(CLEAN / "uwsgi.ini"))]
    merged = merge_files(host, files, [])
    assert [u.name for u in merged.uwsgi] == ["uWSGI x", str(CLEAN / "uwsgi.ini")]


# ------------------------------------------------------------------ rendering


def test_text_output_fits_80_columns_and_groups_by_severity() -> None:
    found = run_rules(facts([MISTUNED / "uwsgi.ini"], [MISTUNED / "nginx.conf"]))
    text = render_text(Report(tuple(found)))
    lines = text.splitlines()
    assert all(len(line) <= WIDTH for line in lines), max(lines, key=len)
    assert lines[0] == "stackmon doctor: 1 critical, 11 warnings, 1 info"
    order = [lines.index(h) for h in ("CRITICAL", "WARNINGS", "INFO")]
    assert order == sorted(order)
    assert "[critical] uwsgi.listen-vs-somaxconn" in lines
    fix = "fix: sysctl -w net.core.somaxconn=100000"
    assert any(line.strip().startswith(fix) for line in lines)


def test_text_makes_control_characters_visible() -> None:
    u = UwsgiFacts("evil.ini", (Option("max-requests", "5\x1b[2J", "evil.ini", 1),))
    text = render_text(Report(tuple(run_rules(facts(extra_uwsgi=(u,))))))
    assert "\x1b" not in text and "\\x1b" in text


def test_json_shape() -> None:
    import json

    found = run_rules(facts([MISTUNED / "uwsgi.ini"], [MISTUNED / "nginx.conf"]))
    doc = json.loads(render_json(Report(tuple(found))))
    assert doc["schema"] == 1 and doc["inputs"] == []
    first = doc["findings"][0]
    assert set(first) >= {"id", "severity", "title", "evidence", "why", "fix"}
    assert set(first["evidence"][0]) == {"file", "line", "values"}


def test_instance_configured_from_yaml_is_not_judged(tmp_path: Path) -> None:
    import subprocess
    import sys

    from stackmon.doctor.gather import instance_facts
    from stackmon.model import SourceError
    from tests.conftest import wait_until

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                             "--yaml", "app.yaml", "--master"], cwd=tmp_path)
    try:
        wait_until(lambda: b"--yaml" in Path(f"/proc/{proc.pid}/cmdline").read_bytes())
        got = instance_facts(replace(instance(()), master_pid=proc.pid))
        assert isinstance(got, SourceError)
        assert "app.yaml" in got.message and "ini files and command lines only" in got.message
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(("path", "cwd", "shown"), [
    ("/srv/app/nginx.conf", "/srv/app", "nginx.conf"),
    ("/srv/app/conf.d/a.conf", "/srv/app/", "conf.d/a.conf"),
    ("/srv/application.ini", "/srv/app", "/srv/application.ini"),
    ("/etc/nginx/nginx.conf", "/", "/etc/nginx/nginx.conf"),
    ("load balancer", "/srv", "load balancer"),
])
def test_short_path(path: str, cwd: str, shown: str) -> None:
    from stackmon.doctor.render import short_path

    assert short_path(path, cwd) == shown

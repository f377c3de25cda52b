"""Log parsing and reduction on real log lines (captured from the real stack, and nginx's and
uWSGI's exact texts from docs/reference.md §5): formats, causes, events, windows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stackmon.logs.access import AccessWindow, fold_path
from stackmon.logs.discover import nginx_logs_from_conf
from stackmon.logs.host import HostLogs, LogSpec
from stackmon.logs.nginx_errors import ErrorWindow, parse_error_line
from stackmon.logs.nginx_format import (
    COMBINED,
    compile_format,
    format_from_args,
    upstream_seconds,
)
from stackmon.logs.uwsgi_events import EventLog, parse_uwsgi_line

FIXTURES = Path(__file__).parent / "fixtures" / "logs"


def combined(at: float, request: str, status: int) -> str:
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(at))
    return f'127.0.0.1 - - [{stamp}] "{request}" {status} 5 "-" "curl/7.88 (x)"'


# ------------------------------------------------------------------ formats


def test_combined_line_is_parsed() -> None:
    rec = COMBINED.parse('10.1.2.3 - bob [10/Oct/2000:13:55:36 -0700] "GET /a?b=1 HTTP/1.1" '
                         '502 157 "http://x/?q=\\x22" "Mozilla/5.0 (X11; Linux)"')
    assert rec is not None
    assert (rec.status, rec.method, rec.uri) == (502, "GET", "/a?b=1")
    assert rec.at == 971211336.0  # 20:55:36 UTC
    assert COMBINED.missing == ("$upstream_response_time",)
    assert COMBINED.advice() == "add $upstream_response_time to log_format combined"


@pytest.mark.parametrize(("raw", "seconds"), [
    ("0.004", 0.004), ("-", None), ("0.001, 0.002", 0.003), ("0.5 : 1.0", 1.5),
    ("0.100, - : 0.200", 0.3), ("", None), ("junk", None),
])
def test_upstream_response_time_values(raw: str, seconds: float | None) -> None:
    got = upstream_seconds(raw)
    assert got == (pytest.approx(seconds) if seconds is not None else None)


def test_custom_format_with_spaces_inside_a_variable() -> None:
    fmt = format_from_args(["main", '$remote_addr [$time_local] "$request" $status ',
                            "urt=$upstream_response_time rt=$request_time"])
    rec = fmt.parse('1.2.3.4 [10/Oct/2000:13:55:36 +0000] "POST /x HTTP/1.1" 504 '
                    "urt=0.001, 2.000 rt=2.002")
    assert rec is not None
    assert (rec.status, rec.method, rec.uri) == (504, "POST", "/x")
    assert rec.upstream_s == pytest.approx(2.001) and rec.request_s == pytest.approx(2.002)
    assert fmt.missing == () and fmt.timing == "upstream_response_time"


def test_json_format_with_escaped_quotes() -> None:
    fmt = format_from_args(["j", "escape=json", '{"t":"$time_iso8601","s":$status,',
                            '"m":"$request_method","u":"$request_uri",',
                            '"rt":$request_time,"ua":"$http_user_agent"}'])
    rec = fmt.parse('{"t":"2024-05-01T10:00:00+00:00","s":200,"m":"GET",'
                    '"u":"/a\\"b?x=1","rt":0.250,"ua":"x \\"y\\""}')
    assert rec is not None
    assert (rec.at, rec.status, rec.method, rec.uri) == (1714557600.0, 200, "GET", '/a"b?x=1')
    assert rec.request_s == 0.25 and rec.upstream_s is None
    assert fmt.timing == "request_time"


def test_format_without_timing_names_what_to_add() -> None:
    fmt = compile_format('$remote_addr [$time_local] "$request" $status', name="main")
    assert fmt.missing == ("$upstream_response_time",)
    assert fmt.advice() == "add $upstream_response_time to log_format main"
    assert fmt.usable
    bare = compile_format("$remote_addr $body_bytes_sent", name="tiny")
    assert bare.missing == ("$status", "$request", "$time_local", "$upstream_response_time")
    assert not bare.usable


def test_garbage_non_utf8_and_huge_lines_do_not_match() -> None:
    for line in ("", "garbage", "\ufffd\ufffd\x00", "x" * 100_000,
                 '1.2.3.4 - - [bad time] "GET / HTTP/1.1" 2000 5 "-" "-"'):
        assert COMBINED.parse(line) is None


def test_tls_handshake_on_a_plain_port_is_counted_without_a_path() -> None:
    rec = COMBINED.parse('1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] '
                         '"\\x16\\x03\\x01\\x02\\x00\\x01" 400 157 "-" "-"')
    assert rec is not None and rec.status == 400 and rec.uri == ""


# ------------------------------------------------------------------ access window


@pytest.mark.parametrize(("uri", "folded"), [
    ("/api/users/123/orders?token=abc", "/api/users/:id/orders"),
    ("/u/9f86d081-884c-7d65-9a2f-eaf0c7a1b3d4/x", "/u/:id/x"),
    ("/files/deadbeefcafe1234", "/files/:id"),
    ("/reset/Zx8kP2mQ9vL4tR7wY1nB", "/reset/:id"),
    ("/static/app.css", "/static/app.css"),
    ("/static/app.3f2a1b9c.js", "/static/app.:id.js"),
    ("/a;jsessionid=SECRET123", "/a;jsessionid=<redacted>"),
    ("/x\x1b[31m", "/x\\x1b[31m"),
])
def test_endpoints_are_folded_and_redacted(uri: str, folded: str) -> None:
    assert fold_path(uri) == folded


def test_window_counts_status_classes_percentiles_and_top_endpoints() -> None:
    now = time.time()
    fmt = compile_format('[$time_local] "$request" $status $upstream_response_time', "t")
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now - 1))
    old = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now - 120))
    lines = [f'[{stamp}] "GET /fast HTTP/1.1" 200 0.010' for _ in range(90)]
    lines += [f'[{stamp}] "GET /users/{i} HTTP/1.1" 502 0.001' for i in range(5)]
    lines += [f'[{stamp}] "GET /slow HTTP/1.1" 504 2.000' for _ in range(3)]
    lines += [f'[{stamp}] "GET /gone HTTP/1.1" 499 -', f'[{stamp}] "GET /r HTTP/1.1" 301 -']
    lines += [f'[{old}] "GET /old HTTP/1.1" 500 0.1', "garbage"]
    window = AccessWindow(fmt, window_s=60, started_at=now - 60)
    window.add_lines(lines, now)
    s = window.summary(now)
    assert s.requests == 100
    assert s.status == {"2xx": 90, "3xx": 1, "4xx": 1, "5xx": 8, "499": 1, "502": 5,
                        "503": 0, "504": 3}
    assert s.unparsed == 1
    assert s.upstream_ms is not None
    assert s.upstream_ms.p50 == pytest.approx(10, rel=0.05)
    assert s.upstream_ms.p99 == pytest.approx(2000, rel=0.05)
    assert [(e.endpoint, e.errors_5xx) for e in s.top_5xx] == [("GET /users/:id", 5),
                                                              ("GET /slow", 3)]
    assert s.top_slow[0].endpoint == "GET /slow"
    assert s.per_s == pytest.approx(100 / 60)
    # A minute later everything has left the window.
    assert window.summary(now + 61).requests == 0


# ------------------------------------------------------------------ error log


def test_every_cause_from_the_error_log_fixture() -> None:
    lines = (FIXTURES / "nginx_error.log").read_text().splitlines()
    parsed = [parse_error_line(line) for line in lines]
    got = [(p.cause, p.upstream) for p in parsed if p is not None]
    assert got == [
        ("closed_mid_request", "unix:/tmp/app/uwsgi.sock"),
        ("queue_full", "unix:/tmp/app/uwsgi.sock"),
        ("refused", "unix:/tmp/app/uwsgi.sock"),
        ("refused", "unix:/tmp/gone.sock"),
        ("connect_timeout", "10.0.0.5:3031"),
        ("read_timeout", "unix:/tmp/app/uwsgi.sock"),
        ("closed_mid_request", "127.0.0.1:8000"),
        ("no_live_upstreams", "backend"),
        ("other", "unix:/tmp/app/uwsgi.sock"),
    ]


def test_error_window_counts_per_cause_and_upstream_with_a_redacted_sample() -> None:
    lines = (FIXTURES / "nginx_error.log").read_text().splitlines()
    first = parse_error_line(lines[0])
    assert first is not None
    window = ErrorWindow(window_s=60)
    window.add_lines(lines * 3, first.at + 5)
    summary = window.summary(first.at + 5)
    by_key = {(e.cause, e.upstream): e for e in summary}
    closed = by_key[("closed_mid_request", "unix:/tmp/app/uwsgi.sock")]
    assert closed.count == 3
    assert "token=<redacted>" in closed.sample and "secret" not in closed.sample
    assert sum(e.count for e in summary) == 27
    assert window.summary(first.at + 200) == ()


# ------------------------------------------------------------------ uWSGI events


def test_uwsgi_events_from_the_fixture() -> None:
    log = EventLog(window_s=3600)
    now = time.time()
    log.add_uwsgi_lines((FIXTURES / "uwsgi_events.log").read_text().splitlines(), now)
    events = list(reversed(log.summary(now, limit=100)))
    kinds = [(e.kind, e.worker, e.pid) for e in events if e.kind != "harakiri"]
    assert kinds == [
        ("worker_died", 1, 14374), ("respawn", 1, 14386), ("reload", None, None),
        ("no_mercy", 2, 14388), ("reload", None, 14373), ("chain_reload", None, None),
        ("chain_reload", 1, None), ("chain_reload", None, None), ("queue_full", None, None),
        ("worker_died", 3, 14390), ("worker_died", 4, 14391),
    ]


def test_harakiri_event_carries_worker_pid_and_redacted_uri() -> None:
    log = EventLog(window_s=1e10)
    log.add_uwsgi_lines((FIXTURES / "uwsgi_events.log").read_text().splitlines(), time.time())
    harakiri = [e for e in log.summary(time.time(), limit=100) if e.kind == "harakiri"]
    assert len(harakiri) == 1
    h = harakiri[0]
    assert (h.worker, h.pid, h.uri) == (1, 14374, "/slow?s=5&token=<redacted>")
    assert h.at == time.mktime(time.strptime("Fri Nov 27 06:19:02 2026", "%a %b %d %H:%M:%S %Y"))


def test_backfilled_uwsgi_lines_without_a_time_are_not_shown_as_now() -> None:
    log = EventLog(window_s=60)
    now = time.time()
    log.add_uwsgi_lines(["DAMN ! worker 1 (pid: 5) died, killed by signal 9 :( trying respawn"],
                        now, backfill=True)
    assert log.summary(now) == ()
    log.add_uwsgi_lines(["DAMN ! worker 1 (pid: 5) died, killed by signal 9 :( trying respawn"],
                        now)
    assert [e.kind for e in log.summary(now)] == ["worker_died"]


def test_plain_request_lines_are_not_events() -> None:
    line = ("[pid: 14375|app: 0|req: 1/1] 127.0.0.1 () {30 vars in 356 bytes} [Fri Nov 27 "
            "06:19:00 2026] GET /chain => generated 3 bytes in 0 msecs (HTTP/1.1 200)")
    assert parse_uwsgi_line(line, 0.0) is None


# ------------------------------------------------------------------ discovery from a file


def test_discovery_from_a_config_with_includes_and_odd_destinations(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "nginx.conf").write_text(
        "error_log logs/error.log warn;\n"
        "http {\n"
        "  log_format main '$remote_addr [$time_local] \"$request\" $status';\n"
        "  log_format js escape=json '{\"s\":$status,\"r\":\"$request\"}';\n"
        "  access_log /var/log/a.log main buffer=32k flush=5s;\n"
        "  include conf.d/*.conf;\n"
        "}\n")
    (tmp_path / "conf.d" / "one.conf").write_text(
        "server { listen 80; access_log syslog:server=10.0.0.1 main;\n"
        "  access_log logs/json.log js;\n"
        "  access_log /var/log/$host.log;\n"
        "  location /x { access_log /var/log/x.log nosuch; access_log off; } }\n")
    found = nginx_logs_from_conf(str(tmp_path / "nginx.conf"), prefix="/srv/nginx")
    assert found.error is None
    assert len(found.files) == 2
    assert [e.path for e in found.errors] == ["/srv/nginx/logs/error.log"]
    access = {t.path or t.not_file: t for t in found.access}
    main = access["/var/log/a.log"]
    assert main.log_format is not None and main.log_format.name == "main"
    assert main.notes and "buffer" in main.notes[0]
    assert access["/srv/nginx/logs/json.log"].log_format.escape == "json"  # type: ignore[union-attr]
    assert access["syslog:server=10.0.0.1"].message is not None
    assert "variables" in (access["/var/log/$host.log (a path with variables: one file per "
                                  "value)"].not_file or "")
    assert access["/var/log/x.log"].format_error == "log_format 'nosuch' is not defined"


def test_discovery_refuses_a_fifo_include_without_hanging(tmp_path: Path) -> None:
    import os
    os.mkfifo(tmp_path / "evil.conf")
    (tmp_path / "nginx.conf").write_text("include evil.conf;\nhttp { }\n")
    started = time.monotonic()
    found = nginx_logs_from_conf(str(tmp_path / "nginx.conf"))
    assert time.monotonic() - started < 2
    assert found.error is not None and "FIFO" in found.error


# ------------------------------------------------------------------ a host's logs


def test_host_logs_report_an_unreadable_log_and_still_count_the_others(tmp_path: Path) -> None:
    now = time.time()
    access = tmp_path / "access.log"
    access.write_text("")
    specs = [LogSpec("nginx_access", str(access)),
             LogSpec("nginx_error", str(tmp_path)),  # a directory: refused
             LogSpec("uwsgi", None, not_file="not a file: stderr -> /dev/pts/0")]
    with HostLogs(specs) as logs:
        logs.poll()
        access.write_text("\n".join(combined(now, "GET /a HTTP/1.1", 502) for _ in range(3))
                          + "\n")
        summary = logs.poll()
    assert summary.http is not None and summary.http.status["502"] == 3
    errors = dict(summary.errors())
    assert "directory" in errors["nginx_error log"]
    assert errors["uwsgi log"] == "not a file: stderr -> /dev/pts/0"
    assert summary.as_json()["http"]["status"]["502"] == 3


def test_sigusr2_names_the_request_the_worker_was_running() -> None:
    """The line a real uWSGI 2.0.31 worker wrote on SIGUSR2 (after its C backtrace)."""
    from stackmon.logs.uwsgi_events import parse_uwsgi_line

    line = ("SIGUSR2: --- uWSGI worker 1 (pid: 8981) is managing request "
            "/hang/usr2?x=1&token=abc123 since Fri Nov 27 07:48:25 2026 ---")
    ev = parse_uwsgi_line(line, 1000.0)
    assert ev is not None and (ev.kind, ev.worker, ev.pid) == ("usr2", 1, 8981)
    assert ev.uri is not None and ev.uri.startswith("/hang/usr2?x=1")
    assert "abc123" not in ev.uri and "abc123" not in ev.text

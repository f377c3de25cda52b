"""Log sources on the real stack: real nginx and uWSGI write real logs, stackmon's figures are
compared with the truth counted independently from the same files (plain splitting and
substring counts, not stackmon's parsers)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stackmon.demo.launcher import Stack, http_get, server_name
from stackmon.logs.discover import nginx_logs, uwsgi_log
from stackmon.logs.host import HostLogs, LogSpec, LogSummary
from stackmon.logs.nginx_format import COMBINED
from stackmon.logs.tail import LogTail
from tests.conftest import wait_until

TIMED = ('$remote_addr - [$time_local] "$request" $status $body_bytes_sent '
         'urt="$upstream_response_time" rt=$request_time')


# ------------------------------------------------------------------ helpers


def host_logs(stack: Stack) -> HostLogs:
    """Logs found from the stack's running masters, as stackmon finds them."""
    assert stack.nginx_master_pid is not None
    found = nginx_logs(stack.nginx_master_pid)
    assert found.error is None, found.error
    specs = [LogSpec.from_target(t) for t in (*found.access, *found.errors)]
    specs.append(LogSpec.from_target(uwsgi_log(stack.master_pid), label="app"))
    return HostLogs(specs)


def statuses(path: Path) -> Counter[int]:
    """Truth: the status of each access-log line, by splitting on quotes (combined and the
    TIMED format both have the status right after the quoted request)."""
    found: Counter[int] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split('"')
        if len(parts) >= 3 and parts[2].split() and parts[2].split()[0].isdigit():
            found[int(parts[2].split()[0])] += 1
    return found


def count_in(path: Path, needle: str) -> int:
    return sum(needle in line for line in path.read_text(errors="replace").splitlines())


def settled(logs: HostLogs, done: Callable[[LogSummary], bool], timeout: float = 10) -> LogSummary:
    """Poll until `done` holds, then once more after a short pause (nothing else arrives)."""
    holder: dict[str, LogSummary] = {}

    def check() -> bool:
        holder["s"] = logs.poll()
        return done(holder["s"])

    wait_until(check, timeout, interval=0.2, message="log figures")
    time.sleep(0.5)
    return logs.poll()


def get(stack: Stack, path: str, timeout: float = 10.0) -> int:
    assert stack.base_url is not None
    try:
        return http_get(stack.base_url + path, timeout=timeout,
                        headers={"Host": server_name(stack.config.name)})[0]
    except (OSError, http.client.HTTPException):
        return -1


def causes(summary: LogSummary) -> dict[tuple[str, str], int]:
    return {(e.cause, e.upstream): e.count for e in summary.upstream_errors}


@pytest.fixture
def logs_of() -> Iterator[Callable[[Stack], HostLogs]]:
    opened: list[HostLogs] = []

    def make(stack: Stack) -> HostLogs:
        logs = host_logs(stack)
        opened.append(logs)
        return logs

    yield make
    for logs in opened:
        logs.close()


# ------------------------------------------------------------------ discovery


def test_logs_are_found_from_the_running_masters(stack: Stack) -> None:
    assert stack.nginx_master_pid is not None
    found = nginx_logs(stack.nginx_master_pid)
    assert found.error is None
    assert [t.path for t in found.access] == [str(stack.nginx_access_log_path)]
    assert found.access[0].log_format is COMBINED
    assert str(stack.nginx_error_log_path) in [t.path for t in found.errors]
    target = uwsgi_log(stack.master_pid)
    assert target.path == str(stack.uwsgi_log_path)
    assert f"{stack.ini_path}:" in target.where  # the ini line that set logto


# ------------------------------------------------------------------ upstream failures


def test_full_unix_queue_every_502_is_queue_full_on_that_socket(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any],
        logs_of: Callable[[Stack], HostLogs]) -> None:
    stack = fresh_stack(workers=1, threads=1, listen=2)
    logs = logs_of(stack)
    logs.poll()
    hang(stack, "/hang/q", n=1, via="unix")
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(get(stack, "/fast", 2.0)))
               for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stack.release_hangs()
    truth_502 = wait_until(lambda: statuses(stack.nginx_access_log_path)[502], 5)
    upstream = f"unix:{stack.uwsgi_socket_path}"
    summary = settled(logs, lambda s: causes(s).get(("queue_full", upstream), 0) >= truth_502)
    assert truth_502 >= 10, results
    assert causes(summary) == {("queue_full", upstream): truth_502}
    assert count_in(stack.nginx_error_log_path, "(11: Resource temporarily unavailable)") \
        == truth_502
    assert summary.http is not None and summary.http.status["502"] == truth_502
    assert "queue" not in {e.kind for e in summary.events}  # unix: uWSGI cannot see it


def test_read_timeout_gives_504_and_read_timeout(fresh_stack: Callable[..., Stack],
                                                 logs_of: Callable[[Stack], HostLogs]) -> None:
    stack = fresh_stack(workers=1, threads=2, extra_nginx=("uwsgi_read_timeout 2s;",))
    logs = logs_of(stack)
    logs.poll()
    assert get(stack, "/slow?s=5") == 504
    upstream = f"unix:{stack.uwsgi_socket_path}"
    summary = settled(logs, lambda s: bool(s.upstream_errors))
    assert causes(summary) == {("read_timeout", upstream): 1}
    assert summary.http is not None and summary.http.status["504"] == 1
    assert statuses(stack.nginx_access_log_path)[504] == 1


def test_worker_killed_mid_request(fresh_stack: Callable[..., Stack], hang: Callable[..., Any],
                                   logs_of: Callable[[Stack], HostLogs]) -> None:
    stack = fresh_stack(workers=2, threads=1)
    logs = logs_of(stack)
    logs.poll()
    held = hang(stack, "/hang/k", n=1, via="nginx")
    doc = stack.stats()
    busy = [w for w in doc["workers"] if w["status"] == "busy"]
    assert len(busy) == 1
    os.kill(busy[0]["pid"], signal.SIGKILL)
    reply = held.sockets[0].recv(4096)
    assert b" 502 " in reply
    upstream = f"unix:{stack.uwsgi_socket_path}"
    summary = settled(logs, lambda s: bool(s.upstream_errors)
                      and {"worker_died", "respawn"} <= {e.kind for e in s.events})
    assert causes(summary) == {("closed_mid_request", upstream): 1}
    died = next(e for e in summary.events if e.kind == "worker_died")
    respawn = next(e for e in summary.events if e.kind == "respawn")
    assert (died.worker, died.pid) == (busy[0]["id"], busy[0]["pid"])
    assert "signal 9" in died.text
    assert respawn.worker == busy[0]["id"] and respawn.pid != busy[0]["pid"]
    assert summary.events[0].at >= summary.events[-1].at  # newest first


def test_uwsgi_stopped_is_refused(fresh_stack: Callable[..., Stack],
                                  logs_of: Callable[[Stack], HostLogs]) -> None:
    stack = fresh_stack(workers=1, threads=1)
    logs = logs_of(stack)
    logs.poll()
    sock = str(stack.uwsgi_socket_path)
    # Stop uWSGI but leave a socket file nobody listens on (vacuum removes the real one).
    assert stack.stop_uwsgi()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(sock)
    os.chmod(sock, 0o666)
    try:
        assert get(stack, "/fast") == 502
        summary = settled(logs, lambda s: bool(s.upstream_errors))
    finally:
        dead.close()
    assert causes(summary) == {("refused", f"unix:{sock}"): 1}
    assert count_in(stack.nginx_error_log_path, "(111: Connection refused)") == 1


def test_harakiri_event_names_its_uri(fresh_stack: Callable[..., Stack],
                                      logs_of: Callable[[Stack], HostLogs]) -> None:
    stack = fresh_stack(workers=1, threads=1, harakiri=2)
    logs = logs_of(stack)
    logs.poll()
    assert get(stack, "/slow?s=6&token=hunter2") == 502
    summary = settled(logs, lambda s: any(e.kind == "harakiri" and e.uri for e in s.events))
    harakiri = [e for e in summary.events if e.kind == "harakiri"]
    assert len(harakiri) == 1
    assert harakiri[0].uri == "/slow?s=6&token=<redacted>"
    assert "hunter2" not in repr(summary.as_json())
    assert count_in(stack.uwsgi_log_path, "HARAKIRI ON WORKER") == 1
    assert causes(summary) == {("closed_mid_request", f"unix:{stack.uwsgi_socket_path}"): 1}


def test_reload_past_its_mercy_gives_no_mercy_events(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any],
        logs_of: Callable[[Stack], HostLogs]) -> None:
    stack = fresh_stack(workers=1, threads=1, mercy=1)
    logs = logs_of(stack)
    logs.poll()
    hang(stack, "/hang/m", n=1, via="unix")
    stack.send_fifo("r")
    summary = settled(logs, lambda s: {"no_mercy", "reload"} <= {e.kind for e in s.events},
                      timeout=20)
    kinds = [e.kind for e in summary.events]
    assert kinds.count("no_mercy") == count_in(stack.uwsgi_log_path, "NO MERCY") >= 1
    assert "reload" in kinds


def test_client_giving_up_is_499(fresh_stack: Callable[..., Stack],
                                 logs_of: Callable[[Stack], HostLogs]) -> None:
    stack = fresh_stack(workers=1, threads=2)
    logs = logs_of(stack)
    logs.poll()
    assert get(stack, "/slow?s=3", timeout=0.5) == -1
    summary = settled(logs, lambda s: s.http is not None and s.http.status["499"] >= 1)
    assert summary.http is not None
    assert summary.http.status["499"] == statuses(stack.nginx_access_log_path)[499] == 1
    assert summary.upstream_errors == ()  # info level only: not an upstream failure


# ------------------------------------------------------------------ rotation during a burst


class Burst:
    """Requests through nginx from 4 threads until stopped, each with a unique id."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.stop = threading.Event()
        self.next = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run) for _ in range(4)]

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                self.next += 1
                n = self.next
            get(self.stack, f"/fast?id={n}", 5.0)

    def __enter__(self) -> Burst:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def ids(lines: Any) -> list[int]:
    return [int(m.group(1)) for m in (re.search(r"/fast\?id=(\d+)", line) for line in lines)
            if m]


def test_rotation_by_rename_during_a_burst_loses_and_doubles_nothing(
        fresh_stack: Callable[..., Stack], logs_of: Callable[[Stack], HostLogs]) -> None:
    stack = fresh_stack(workers=2, threads=2)
    logs = logs_of(stack)
    logs.poll()
    access = stack.nginx_access_log_path
    with Burst(stack) as burst:
        for _ in range(5):
            logs.poll()
            time.sleep(0.1)
        # logrotate's order: rename, create the new file, then tell nginx (postrotate USR1).
        # Until nginx reopens, it keeps writing to the renamed file, which stackmon has
        # already left for the new one: those lines come from draining the old descriptor.
        access.rename(access.with_name("access.log.1"))
        access.touch()
        for _ in range(3):
            logs.poll()
            time.sleep(0.1)
        assert stack.nginx_master_pid is not None
        os.kill(stack.nginx_master_pid, signal.SIGUSR1)  # reopen: a new access.log
        for _ in range(10):
            logs.poll()
            time.sleep(0.1)
        assert burst.next > 50
    wait_until(lambda: access.exists(), 5)
    time.sleep(0.5)
    summary = logs.poll()
    old = statuses(access.with_name("access.log.1"))
    new = statuses(access)
    assert sum(old.values()) > 0 and sum(new.values()) > 0
    assert summary.http is not None
    assert summary.http.requests == sum(old.values()) + sum(new.values())
    assert any("rotated" in n for s in summary.sources for n in s.notes)


def test_copytruncate_during_a_burst_counts_no_line_twice(
        fresh_stack: Callable[..., Stack]) -> None:
    """copytruncate loses, for every reader, the lines written between the copy and the
    truncation, and a follower also those written after its last read: every line stackmon
    misses must be one of those (after the offset it had read to), and none is seen twice."""
    stack = fresh_stack(workers=2, threads=2)
    access = stack.nginx_access_log_path
    copy = access.with_name("access.log.1")
    seen: list[str] = []
    with LogTail(access) as tail:
        tail.poll()  # start following before the burst
        with Burst(stack):
            time.sleep(0.5)
            seen += tail.poll().lines
            offset = tail.position
            assert offset is not None
            shutil.copyfile(access, copy)
            os.truncate(access, 0)
            for _ in range(10):
                time.sleep(0.1)
                seen += tail.poll().lines
        time.sleep(0.5)
        seen += tail.poll().lines
    copied = copy.read_bytes()
    cut = copied.rfind(b"\n", 0, offset) + 1  # the line being read at `offset` was not whole
    read_part, gap = copied[:cut].decode(), copied[cut:].decode()
    current = access.read_text()
    got = ids(seen)
    assert len(got) == len(set(got)), "a line counted twice"
    before, lost, after = (set(ids(x.splitlines())) for x in (read_part, gap, current))
    assert before and after
    assert before <= set(got) and after <= set(got)
    assert set(got) <= before | lost | after


# ------------------------------------------------------------------ formats and bad input


def test_custom_log_format_gives_percentiles(fresh_stack: Callable[..., Stack],
                                             logs_of: Callable[[Stack], HostLogs]) -> None:
    stack = fresh_stack(workers=2, threads=2, nginx_log_format=TIMED)
    logs = logs_of(stack)
    logs.poll()
    for _ in range(10):
        assert get(stack, "/slow?s=0.2") == 200
    summary = settled(logs, lambda s: s.http is not None and s.http.requests >= 10)
    http = summary.http
    assert http is not None and http.log_format == "stackmon" and http.missing == ()
    assert http.timing == "upstream_response_time"
    assert http.upstream_ms is not None
    assert 190 <= http.upstream_ms.p50 <= 230
    assert http.top_slow[0].endpoint == "GET /slow"


def test_json_log_format(fresh_stack: Callable[..., Stack],
                         logs_of: Callable[[Stack], HostLogs]) -> None:
    fmt = ('{"time":"$time_iso8601","status":$status,"request":"$request",'
           '"urt":"$upstream_response_time","ua":"$http_user_agent"}')
    stack = fresh_stack(workers=1, threads=2, nginx_log_format=fmt,
                        nginx_log_format_escape="json")
    logs = logs_of(stack)
    logs.poll()
    assert get(stack, '/nope/42?q="quoted"') == 404
    summary = settled(logs, lambda s: s.http is not None and s.http.status["4xx"] >= 1)
    truth = Counter(json.loads(line)["status"]
                    for line in stack.nginx_access_log_path.read_text().splitlines())
    assert summary.http is not None and summary.http.unparsed == 0
    assert summary.http.status["4xx"] == truth[404] == 1
    assert summary.http.requests == sum(truth.values())
    assert summary.http.upstream_ms is not None


def test_log_format_without_timing_says_what_to_add(stack: Stack,
                                                    logs_of: Callable[[Stack], HostLogs]) -> None:
    logs = logs_of(stack)
    summary = logs.poll()
    assert summary.http is not None
    assert summary.http.upstream_ms is None
    assert summary.http.advice == "add $upstream_response_time to log_format combined"


def test_garbage_non_utf8_and_huge_lines_in_a_real_access_log(
        fresh_stack: Callable[..., Stack], logs_of: Callable[[Stack], HostLogs]) -> None:
    stack = fresh_stack(workers=1, threads=2)
    logs = logs_of(stack)
    logs.poll()
    with stack.nginx_access_log_path.open("ab") as fh:
        fh.write(b"garbage\n\xff\xfe\x00 not utf-8 \xe9\n" + b"A" * 100_000 + b"\n")
    for _ in range(5):
        assert get(stack, "/fast") == 200
    summary = settled(logs, lambda s: s.http is not None and s.http.requests >= 5)
    assert summary.http is not None
    assert summary.http.requests == sum(statuses(stack.nginx_access_log_path).values())
    assert summary.http.unparsed == 3
    status = next(s for s in summary.sources if s.kind == "nginx_access")
    assert status.cut_lines == 1 and status.skipped_bytes == 100_000 - 16 * 1024


def test_an_unreadable_log_is_an_error_entry_and_the_rest_still_counts(
        fresh_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = fresh_stack(workers=1, threads=2)
    assert stack.nginx_master_pid is not None
    found = nginx_logs(stack.nginx_master_pid)
    fifo = tmp_path / "uwsgi.fifo"
    os.mkfifo(fifo)
    specs = [LogSpec.from_target(t) for t in (*found.access, *found.errors)]
    specs.append(LogSpec("uwsgi", str(fifo), label="app"))
    with HostLogs(specs) as logs:
        logs.poll()
        assert get(stack, "/fast") == 200
        summary = settled(logs, lambda s: s.http is not None and s.http.requests >= 1)
    assert summary.http is not None and summary.http.status["2xx"] >= 1
    errors = dict(summary.errors())
    assert "FIFO" in errors["uwsgi log"]
    assert [s.error for s in summary.sources if s.kind != "uwsgi"] == [None, None]

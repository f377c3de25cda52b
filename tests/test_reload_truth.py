"""The reload view tells what clients get while no worker serves.

A review of the demo's graceful reload saw "NO WORKER SERVING for 12 s   nginx gets no answer
listen queue 33/32" on every frame while nginx's access log had 2 to 6 502s a second: a full
unix-socket queue makes connect() fail with EAGAIN and nginx answers 502 at once. The view
must say so, count the 502s from the host's logs, and say the count in its done line.

The first test runs the real thing: uWSGI and nginx (fresh_stack, a unix socket with a small
backlog), every worker held by `hang` through nginx, a graceful reload pressed in the app,
traffic through nginx while it drains, and the view's 502 count compared with nginx's access
log counted independently (its lines split by hand).
"""

from __future__ import annotations

import asyncio
import http.client
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from stackmon.actions.audit import AuditLog
from stackmon.actions.reload_progress import (
    AnswerTally,
    ClientAnswers,
    ReloadProgress,
    WorkerReload,
    WorkerState,
    answers_said,
)
from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.demo.launcher import Stack, http_get, server_name
from stackmon.logs.host import LogSummary
from tests.tui_support import screen_text, wait_for
from tui.app import StackmonApp
from tui.screens.reload_view import ReloadScreen, render_progress, what_clients_get

# --- on the real stack ----------------------------------------------------------------------


class Traffic:
    """Requests to /fast through nginx, one every `every` seconds, each on its own connection
    and thread, until stopped; their statuses (-1: no answer)."""

    def __init__(self, stack: Stack, every: float = 0.1) -> None:
        self.stack, self.every = stack, every
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> None:
        base = self.stack.base_url
        assert base is not None
        try:
            got = http_get(base + "/fast", timeout=15.0,
                           headers={"Host": server_name(self.stack.config.name)})[0]
        except (OSError, http.client.HTTPException):
            got = -1
        self.statuses.append(got)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            t = threading.Thread(target=self._one, daemon=True)
            t.start()
            self._threads.append(t)

    def __enter__(self) -> Traffic:
        self._loop.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._loop.join()
        for t in self._threads:
            t.join(20)


def access_502s(path: Path, offset: int) -> int:
    """Truth: 502 lines of nginx's access log written past `offset` (the status right after
    the quoted request, split by hand)."""
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    found = 0
    for line in text.splitlines():
        parts = line.split('"')
        if len(parts) >= 3 and parts[2].split()[:1] == ["502"]:
            found += 1
    return found


def view_text(screen: ReloadScreen, width: int = 240) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(screen._view())
    return " ".join(console.export_text().split())


async def test_a_graceful_reload_with_a_full_unix_queue_says_502_and_counts_them(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any], tmp_path: Path) -> None:
    stack = fresh_stack(workers=2, threads=1, listen=4, mercy=5)
    assert stack.has_nginx
    host = HostConfig(name="live", uwsgi=(parse_stats_address(stack.stats_address),),
                      nginx=stack.nginx_status_url)
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.5)),
                      audit=AuditLog(tmp_path / "audit.log"))
    seen: list[str] = []
    async with app.run_test(size=(120, 36)) as pilot:
        assert await wait_for(pilot, lambda: "Clients · last 60 s" in screen_text(app),
                              timeout=10), screen_text(app)
        hang(stack, "/hang/held", n=2, via="nginx")  # both workers: graceful serves none
        assert await wait_for(pilot, lambda: "/hang/held" in screen_text(app), timeout=10)
        await pilot.press("R")
        assert await wait_for(pilot, lambda: "worker-reload-mercy 5 s" in screen_text(app))
        offset = stack.nginx_access_log_path.stat().st_size  # nothing more before the reload
        await pilot.press("g")
        assert await wait_for(pilot, lambda: isinstance(app.screen, ReloadScreen), timeout=10)
        screen = app.screen
        assert isinstance(screen, ReloadScreen)
        with Traffic(stack):
            deadline = time.monotonic() + 30
            while not screen.progress.done and time.monotonic() < deadline:
                seen.append(view_text(screen))
                await asyncio.sleep(0.25)
        assert screen.progress.done, view_text(screen)

        def final() -> bool:
            answers = screen._answers.answers()
            return answers is not None and answers.final

        assert await wait_for(pilot, final, timeout=10), view_text(screen)
        done = view_text(screen)
        truth = await asyncio.to_thread(access_502s, stack.nginx_access_log_path, offset)
    assert truth >= 5, truth  # the queue did overflow: the test tests something
    during = [t for t in seen if "NO WORKER SERVING" in t]
    assert during, seen
    assert not any("nginx gets no answer" in t for t in seen)
    full = [t for t in during if "queue full: nginx answers 502 at once" in t]
    assert full, during
    assert any(re.search(r"clients got 502 ×[1-9]\d* \(queue full ×[1-9]", t) for t in full)
    said = re.search(r"graceful reload done: .*clients got 502 ×(\d+)(.*?) during it", done)
    assert said, done
    assert int(said.group(1)) == truth, (done, truth)
    assert "so far" not in done and "at least" not in done
    assert "cut mid-request ×2" in said.group(2)  # the two held requests, NO MERCY


def test_the_cli_done_line_says_the_502s_nginx_answered_during_the_reload(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any], tmp_path: Path) -> None:
    """`stackmon reload`: the same count in its done line, against the access log."""
    stack = fresh_stack(workers=2, threads=1, listen=4, mercy=4)
    assert stack.has_nginx
    hang(stack, "/hang/cli-held", n=2, via="nginx")
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(f'[[host]]\nname = "web-1"\nuwsgi = ["{stack.stats_address}"]\n'
                     f'nginx = "{stack.nginx_status_url}"\n')
    offset = stack.nginx_access_log_path.stat().st_size
    cmd = [sys.executable, "-m", "stackmon.cli", "reload", "web-1", "--hosts", str(hosts),
           "--yes", "--audit-log", str(tmp_path / "a.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    sent = proc.stdout.readline()  # the reload's own message: it was sent
    with Traffic(stack):
        out, err = proc.communicate(timeout=60)
    out = sent + out
    truth = access_502s(stack.nginx_access_log_path, offset)
    assert proc.returncode == 0, out + err
    assert truth >= 5, truth
    done = next(line for line in out.splitlines() if "graceful reload done" in line)
    said = re.search(r"clients got 502 ×(\d+) \(queue full ×\d+, cut mid-request ×2\) "
                     r"during it$", done)
    assert said and int(said.group(1)) == truth, (done, truth)


# --- the sentence, from the figures ---------------------------------------------------------

def _progress(*states: WorkerState, done: bool = False) -> ReloadProgress:
    workers = tuple(WorkerReload(i + 1, 100 + i, 0 if s == "exited" else 100 + i, s)
                    for i, s in enumerate(states))
    return ReloadProgress("graceful", 5.0, 6.0, workers, True, done,
                          "graceful reload done: 2 workers replaced in 6.0 s" if done
                          else "graceful reload: 0/2 workers replaced",
                          started_at=1000.0)


def _text(p: ReloadProgress, **kwargs: Any) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(render_progress("web-1", "i", p, **kwargs))
    return " ".join(console.export_text().split())


def test_what_a_request_gets_follows_the_queue_and_the_socket():
    assert what_clients_get(0, (33, 32, 30), "unix") == "queue full: nginx answers 502 at once"
    tcp = what_clients_get(0, (101, 100, 90), "tcp")
    assert "connect timeout" in tcp and tcp.endswith("then 504") and "502" not in tcp
    assert what_clients_get(0, (12, 32, 3), "unix") == "new requests wait in the listen queue (12)"
    assert what_clients_get(0, (32, 32, 31), "unix").startswith("new requests wait")  # room: 1
    assert what_clients_get(1, (33, 32, 30), "unix").startswith("queue full")
    assert what_clients_get(2, (3, 32, 3), "unix") == ""  # served: nothing to warn of
    assert what_clients_get(0, None, "unix") == ""


def test_the_view_never_says_no_answer_and_says_the_502s():
    p = _progress("draining", "exited")
    answers = ClientAnswers((("502", 41), ("504", 0)), (("queue_full", 39),
                                                        ("closed_mid_request", 2)))
    text = _text(p, none_for=9.0, queue=(33, 32, 33), kind="unix", answers=answers)
    assert "no answer" not in text
    assert "NO WORKER SERVING for 9 s listen queue 33/32" in text
    assert ("queue full: nginx answers 502 at once clients got 502 ×41 (queue full ×39, "
            "cut mid-request ×2) since the reload began") in text
    below = _text(p, none_for=2.0, queue=(7, 32, 3), kind="unix",
                  answers=ClientAnswers((("502", 0), ("504", 0))))
    assert "new requests wait in the listen queue (7)" in below
    assert "clients got no 502 or 504 since the reload began" in below
    unread = _text(p, none_for=2.0, queue=(7, 32, 3), kind="unix")
    assert "clients got" not in unread  # no logs read: no count, never a zero


def test_the_done_line_says_what_clients_got_during_it():
    done = _progress("replaced", "replaced", done=True)
    answers = ClientAnswers((("502", 41), ("504", 3)), (("queue_full", 41),), final=True)
    text = _text(done, queue=(0, 32, 33), kind="unix", answers=answers)
    assert text.endswith("graceful reload done: 2 workers replaced in 6.0 s; clients got 502 "
                         "×41 (queue full ×41), 504 ×3 during it")
    assert "queue full:" not in text and "since the reload began" not in text
    early = ClientAnswers((("502", 41), ("504", 0)), final=False)
    assert _text(done, answers=early).endswith("clients got 502 ×41 during it, so far")
    assert "during it" not in _text(done)  # logs not read: the line says nothing of them


# --- the count, from the logs' summaries ----------------------------------------------------

def _logs(at: float, s502: int, s504: int = 0, queue_full: int = 0) -> LogSummary:
    return LogSummary(taken_at=at, window_s=60.0, http=None, upstream_errors=(), events=(),
                      status_totals=(("2xx", 100), ("502", s502), ("504", s504)),
                      upstream_totals=(("queue_full", "unix:/run/a.sock", queue_full),
                                       ("queue_full", "unix:/run/b.sock", 1)))


def test_the_count_starts_from_the_read_before_the_reload_and_ends_after_it():
    tally = AnswerTally(1000.0, _logs(999.5, 30, queue_full=5))  # 30 before: not counted
    tally.add(_logs(1000.5, 34, queue_full=9))
    tally.add(None)  # a poll without logs adds nothing
    tally.add(_logs(1001.0, 40, 1, queue_full=15))
    got = tally.answers()
    assert got is not None
    assert got.counts == (("502", 10), ("504", 1)) and got.causes == (("queue_full", 10),)
    assert got.whole and not got.final
    tally.finish(1001.2)
    tally.add(_logs(1001.1, 41, 1, queue_full=16))  # read before the end: counted
    tally.add(_logs(1001.5, 43, 1, queue_full=18))  # the first read after: the last
    tally.add(_logs(1002.0, 60, 1, queue_full=35))  # after the reload: not its 502s
    got = tally.answers()
    assert got is not None and got.final and got.count("502") == 13
    assert answers_said(got, done=True) == ("clients got 502 ×13 (queue full ×13), 504 ×1 "
                                            "during it")


def test_a_count_that_began_late_or_whose_counters_reset_says_at_least():
    late = AnswerTally(1000.0)
    late.add(_logs(1000.4, 30))  # the first read came after the reload began
    late.add(_logs(1001.0, 33))
    got = late.answers()
    assert got is not None and not got.whole and got.count("502") == 3
    assert answers_said(got, done=False).startswith("clients got at least 502 ×3")
    reset = AnswerTally(1000.0, _logs(999.0, 30))
    reset.add(_logs(1001.0, 32))
    reset.add(_logs(1001.5, 5))  # the logs were opened anew: their backfill counts again
    reset.add(_logs(1002.0, 7))
    got = reset.answers()
    assert got is not None and not got.whole and got.count("502") == 4
    assert AnswerTally(1000.0).answers() is None
    no_access = AnswerTally(1000.0, LogSummary(999.0, 60.0, None, (), ()))
    assert no_access.answers() is None  # no access log followed: unknown, not zero

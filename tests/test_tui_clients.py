"""What the clients get, in the TUI: the clients panel, the tab badge and the reading from the
health model, and the events screen; constructed snapshots (Pilot) and one real stack whose
unix-socket queue is filled until nginx answers 502."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.demo.launcher import Stack, http_get, server_name
from stackmon.logs.host import SourceStatus
from stackmon.model import HostSnapshot
from tests.tui_support import (
    EVENTS,
    QUEUE_FULL,
    app_for,
    check,
    errors_burst,
    event,
    feed,
    http,
    recorded,
    screen_text,
    summary,
    upstream_error,
    wait_for,
)
from tui.app import StackmonApp
from tui.screens.events import EventsScreen
from widgets.clients_panel import CauseHistory, new_errors
from widgets.side_panel import SidePanel


def quiet_host(name: str = "web-1") -> HostSnapshot:
    """The recorded demo host without its stuck requests and queues: only the logs and the
    health check can make it sick."""
    host = recorded(host_name=name)
    inst = host.uwsgi[0]
    idle = tuple(replace(w, status="idle", cores=tuple(replace(c, request=None,
                                                               in_request=False)
                                                       for c in w.cores))
                 for w in inst.workers)
    sockets = tuple(replace(s, queue=0) for s in inst.sockets)
    return replace(host, uwsgi=(replace(inst, workers=idle, sockets=sockets, listen_queue=0),),
                   listeners=tuple(replace(li, queue=0) for li in host.listeners))


def panel_text(app: StackmonApp) -> str:
    """The clients panel's lines before the terminal wraps them."""
    return app.query_one(SidePanel).section_text("clients")


# ------------------------------------------------------------------ 5xx/s from the summaries


def test_new_errors_counts_what_arrived_between_two_summaries() -> None:
    a = upstream_error(10, first_at=100.0, last_at=150.0)
    # nothing left the window: the difference is exact
    assert new_errors([a], [upstream_error(13, first_at=100.0, last_at=151.0)]) \
        == {"queue_full": 3}
    # some left, none came
    assert new_errors([a], [upstream_error(4, first_at=120.0, last_at=150.0)]) \
        == {"queue_full": 0}
    # some left and some came: at least one
    assert new_errors([a], [upstream_error(4, first_at=120.0, last_at=160.0)]) \
        == {"queue_full": 1}
    # a new cause or upstream: all of it is new; causes add up over upstreams
    assert new_errors([a], [upstream_error(10, first_at=100.0, last_at=150.0),
                            upstream_error(2, "refused", "127.0.0.1:9000", 155.0, 156.0),
                            upstream_error(1, "refused", "127.0.0.1:9001", 155.0, 155.0)]) \
        == {"queue_full": 0, "refused": 3}


def test_cause_history_one_rate_per_poll_aligned_and_pruned() -> None:
    h = CauseHistory(max_samples=5)
    first = summary(100.0, (upstream_error(30, first_at=50.0, last_at=99.0),))
    h.push(first)
    assert h.series() == {}  # the first summary covers the whole window, not one interval
    h.push(first)  # the same summary again (stale data carried forward): nothing
    assert h.series() == {}
    h.push(summary(102.0, (upstream_error(34, first_at=50.0, last_at=101.0),)))
    assert h.series() == {"queue_full": (2.0,)}
    h.push(summary(103.0, (upstream_error(34, first_at=50.0, last_at=101.0),
                           upstream_error(1, "read_timeout", "x", 103.0, 103.0))))
    assert h.series() == {"queue_full": (2.0, 0.0), "read_timeout": (0.0, 1.0)}
    for t in range(104, 110):  # quiet: the series roll out of the window and go
        h.push(summary(float(t), (upstream_error(34, first_at=50.0, last_at=101.0),)))
    assert h.series() == {}


# ------------------------------------------------------------------ the host view


def _tab(app: StackmonApp) -> str:
    """The host's tab title (the tab bar itself shows only with a second tab)."""
    return app._tabs.get_tab("host-0").label.plain


async def test_badge_reading_and_panel_show_the_502s_by_cause() -> None:
    polls = errors_burst(quiet_host(), [0, 0, 2, 5, 30])
    app = app_for(polls[-1])
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, polls[0])
        await pilot.pause()
        text = screen_text(app)
        assert "● web-1" in _tab(app)  # no 5xx yet
        for poll in polls[1:]:
            app.show_snapshot(0, poll)
        await pilot.pause()
        text = screen_text(app)
        # 37 in 60 s is 0.6/s, and more than 5 % of 600 requests: critical, named by rate
        assert "✖ web-1 502 0.6/s" in _tab(app)
        assert f"✖ 502 ×37 in 60 s: uWSGI listen queue full on {QUEUE_FULL} (×37)" in text
        for part in ("req/s 10 ", "600 in 60 s", "5xx 37", "502 37", "499 0", "504 0",
                     "p50 12ms", "p95 480ms", "p99 1.2s", "most 5xx", "×30 GET /report",
                     "upstream errors by cause", "×37 queue_full", "LB health check",
                     "last 4ms", "worst 38ms", "fails 0"):
            assert part in text, f"{part!r} not in\n{text}"
        spark = next(line for line in text.splitlines() if "queue_full " in line
                     and "█" in line)
        assert spark.rstrip().endswith(" ×37")  # the window's count, as the errors below
        # 4 polls of a 60 s window: a cell per 3 s, the newest 30/s; the rest not watched
        assert spark.count("█") == 1 and "·" in spark
        side = app.query_one(SidePanel)  # every line of the side column can be scrolled to
        assert side.virtual_size.height == side.line_count


async def test_no_timing_says_what_to_add_and_each_log_says_what_is_wrong() -> None:
    host = quiet_host()
    sources = (
        SourceStatus("nginx_access", "/var/log/nginx/access.log", None, None, 10, 0, 0, ()),
        SourceStatus("nginx_error", None, None, "not a file: syslog:server=unix:/dev/log",
                     0, 0, 0, ()),
        SourceStatus("uwsgi", "/var/log/uwsgi/app.log", "0", "permission denied", 0, 0, 0,
                     ()),
        SourceStatus("nginx_access", "/var/log/nginx/big.log", None, None, 10, 3_500_000, 2,
                     ("rotated (renamed); following the new file",)),
    )
    logs = summary(host.taken_at, http_summary=http(
        upstream_ms=None, timing=None, missing=("$upstream_response_time",),
        advice="add $upstream_response_time to log_format main"), sources=sources)
    app = app_for(host)
    async with app.run_test(size=(160, 48)) as pilot:
        app.show_snapshot(0, replace(host, logs=logs, health=None))
        await pilot.pause()
        text = panel_text(app)
        assert "no timing: add $upstream_response_time to log_format main" in text
        assert "p95" not in text
        assert "error log: not a file: syslog:server=unix:/dev/log" in text
        assert "uWSGI log 0: /var/log/uwsgi/app.log: permission denied" in text
        assert "access log: skipped 3.5M bytes" in text
        assert "access log: rotated (renamed); following the new file" in text
        assert "LB health check: no health URL" in text
        # no log source at all: said, not zeros
        app.show_snapshot(0, replace(host, logs=None))
        await pilot.pause()
        text = panel_text(app)
        assert "no log found" in text and "5xx" not in text


async def test_the_lb_verdict_failing_then_out_of_service() -> None:
    host = quiet_host()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        failing = check(ok=False, last_ms=5000.0, max_ms=5000.0, failures_in_row=1,
                        last_error="timed out after 5 s", failing_since=host.taken_at - 5,
                        out_in_s=25.0, in_flight_s=3.0)
        app.show_snapshot(0, replace(host, logs=summary(host.taken_at, http_summary=http(
            status={"2xx": 10}, top_5xx=())), health=failing))
        await pilot.pause()
        text = screen_text(app)
        assert "▲ web-1 HEALTH FAIL" in _tab(app)
        for part in ("FAIL", "last 5.0s", "fails 1", "out of service in 25 s",
                     "timed out after 5 s", "probe running for 3 s",
                     "▲ health check failed 1× in a row (timed out after 5 s); out of service "
                     "in 25 s"):
            assert part in text, part
        out = replace(failing, failures_in_row=2, out_of_service=True, out_in_s=None)
        app.show_snapshot(0, replace(host, taken_at=host.taken_at + 30, health=out))
        await pilot.pause()
        text = screen_text(app)
        assert "✖ web-1 LB OUT" in _tab(app)
        assert "LB would take this host OUT" in text
        assert "✖ the load balancer would take this host out: 2 health checks failed" in text


async def test_text_from_logs_is_shown_literally() -> None:
    host = quiet_host()
    odd = "unix:/run/[b]app[/b].sock"
    logs = summary(host.taken_at, (upstream_error(37, upstream=odd),), http_summary=http(
        top_5xx=(replace(http().top_5xx[0], endpoint="GET /[red]x[/red]\\x1b"),)),
        events=(event(host.taken_at, "harakiri", "[bold]HARAKIRI[/bold] \\x1b[2J", 3, 4242,
                      "/report?[i]x[/i]"),))
    app = app_for(host)
    async with app.run_test(size=(200, 50)) as pilot:
        app.show_snapshot(0, replace(host, logs=logs))
        await pilot.pause()
        text = screen_text(app)
        assert f"queue_full {odd}" in text
        assert "GET /[red]x[/red]" in text
        assert f"on {odd} (×37)" in text  # the reading
        await pilot.press("e")
        await pilot.pause()
        text = screen_text(app)
        assert "[bold]HARAKIRI[/bold] \\x1b[2J" in text and "/report?[i]x[/i]" in text


# ------------------------------------------------------------------ the events screen

async def test_events_screen_newest_first_filtered_and_live() -> None:
    host = quiet_host()
    logs = summary(host.taken_at, events=EVENTS)
    app = app_for(host)
    async with app.run_test(size=(140, 36)) as pilot:  # wide enough for the whole Footer
        app.show_snapshot(0, replace(host, logs=logs))
        await pilot.pause()
        assert "e Events" in screen_text(app)  # from the one registry, in the Footer
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, EventsScreen)
        text = screen_text(app)
        assert "Events web-1" in text and "4 event(s)" in text
        for column in ("time", "source", "kind", "worker", "pid", "uri", "text"):
            assert column in text
        times = [datetime.fromtimestamp(e.at).strftime("%H:%M:%S") for e in EVENTS]
        rows = [line for line in text.splitlines() if line.split()[:1] in ([t] for t in times)]
        assert [r.split()[2] for r in rows] == ["killed", "respawn", "harakiri", "reload"]
        harakiri = rows[2]
        for part in (times[2], "uwsgi", "harakiri", " 3 ", "4303", "/report?id=42",
                     "HARAKIRI ON WORKER 3"):
            assert part in harakiri, part
        assert rows[3].split()[3:5] == ["-", "-"]  # no worker, no pid: said, not 0
        await pilot.press("slash", *"worker 3")
        await pilot.pause()
        text = screen_text(app)
        assert "2 of 4 event(s)" in text and "filter: worker 3" in text
        assert "graceful reload started" not in text and "HARAKIRI" in text
        # a new poll while open: the screen follows the host, the filter stays
        newer = (event(1010.0, "no_mercy", "NO MERCY for worker 3", 3, 4310), *EVENTS)
        app.show_snapshot(0, replace(host, taken_at=host.taken_at + 1,
                                     logs=summary(host.taken_at + 1, events=newer)))
        await pilot.pause()
        text = screen_text(app)
        assert "3 of 5 event(s)" in text and "NO MERCY for worker 3" in text
        await pilot.press("escape")  # clears the filter
        await pilot.pause()
        assert "5 event(s)" in screen_text(app) and "graceful reload" in screen_text(app)
        await pilot.press("escape")  # closes the screen
        await pilot.pause()
        assert not isinstance(app.screen, EventsScreen)


async def test_events_screen_without_logs_says_why() -> None:
    host = quiet_host()
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        app.show_snapshot(0, replace(host, logs=None))
        await pilot.pause()
        await pilot.press("e")
        await pilot.pause()
        assert "No log source for this host" in screen_text(app)
        await pilot.press("q")  # q closes the screen, it does not quit the app
        await pilot.pause()
        assert not isinstance(app.screen, EventsScreen) and app.is_running


# ------------------------------------------------------------------ the real stack


def _burst(stack: Stack, n: int) -> list[int]:
    """n concurrent requests through nginx; their statuses (-1: no answer)."""
    assert stack.base_url is not None
    results: list[int] = []

    def one() -> None:
        try:
            results.append(http_get(f"{stack.base_url}/fast", timeout=2.0,
                                    headers={"Host": server_name(stack.config.name)})[0])
        except OSError:
            results.append(-1)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


async def test_live_502s_from_a_full_queue_reach_the_panel_and_the_badge(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any]) -> None:
    stack = fresh_stack(workers=1, threads=1, listen=2)
    host = HostConfig(name="live", uwsgi=(parse_stats_address(stack.stats_address),),
                      nginx=stack.nginx_status_url)
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.3)))
    async with app.run_test(size=(120, 36)) as pilot:
        assert await wait_for(pilot, lambda: "Clients · last 60 s" in screen_text(app),
                              timeout=10), screen_text(app)
        held = hang(stack, "/hang/tui-502", n=1, via="unix")
        results = await asyncio.to_thread(_burst, stack, 30)
        await asyncio.to_thread(held.close)  # the queue drains: the 502s remain in the logs
        truth = results.count(502)
        assert truth >= 10, results
        upstream = f"unix:{stack.uwsgi_socket_path}"

        def shown() -> bool:
            text = screen_text(app)
            return (f"502 {truth}" in text and f"×{truth} queue_full" in text
                    and "QUEUE" not in text)

        assert await wait_for(pilot, shown, timeout=10), screen_text(app)
        text = screen_text(app)
        tab = _tab(app)
        assert "✖ live 502" in tab or "▲ live 502" in tab  # the tab names the error rate
        assert f"502 ×{truth} in" in text and "uWSGI listen queue full on" in text
        snap = app.active_pane().latest
        assert snap is not None and snap.logs is not None
        assert [(e.cause, e.upstream, e.count) for e in snap.logs.upstream_errors] == [
            ("queue_full", upstream, truth)]


def test_a_recorded_log_source_without_an_error_has_no_error() -> None:
    host = recorded("demo-502s.json")
    assert host.logs is not None
    assert [s.error for s in host.logs.sources] == [None, None, None]

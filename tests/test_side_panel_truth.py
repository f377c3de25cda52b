"""The side panel tells the truth in the room it has (a new user's review of the demo): the
5xx/s sparklines span the minute their heading names and sit beside the window's counts, every
req/s says whose it is, and at 80x24 every section is on the first screen (in trouble whole,
otherwise one line) with a line naming what is below."""

from __future__ import annotations

from dataclasses import replace

from stackmon.model import HostSnapshot, NginxStatus
from tests.tui_support import app_for, check, errors_burst, feed, recorded, screen_text
from tui.app import StackmonApp
from widgets.clients_panel import CauseHistory
from widgets.side_panel import SECTIONS, SidePanel, fit_sections


def quiet(host: HostSnapshot) -> HostSnapshot:
    """The recorded demo host with empty listen queues: only the logs can make it sick."""
    inst = host.uwsgi[0]
    sockets = tuple(replace(s, queue=0) for s in inst.sockets)
    return replace(host, uwsgi=(replace(inst, sockets=sockets, listen_queue=0),),
                   listeners=tuple(replace(li, queue=0) for li in host.listeners))


def side(app: StackmonApp) -> SidePanel:
    return app.query_one(SidePanel)


def first_screen(app: StackmonApp) -> list[str]:
    """The side panel's lines on screen (not scrolled)."""
    panel = side(app)
    top = round(panel.scroll_y)
    return panel.lines[top:top + panel.scrollable_content_region.height]


# ------------------------------------------------------------------ fitting, on its own


def test_every_section_whole_when_they_fit() -> None:
    sizes = dict(zip(SECTIONS, (5, 6, 10, 3, 4), strict=True))
    assert fit_sections(sizes, {}, 5 + 6 + 10 + 3 + 4 + 4) == {}  # with 4 blank lines


def test_sections_without_trouble_shrink_first_and_the_one_in_trouble_stays_whole() -> None:
    sizes = dict(zip(SECTIONS, (5, 6, 10, 3, 4), strict=True))
    shown = fit_sections(sizes, {"clients": True}, 20)
    assert shown["clients"] is None  # whole
    # what fits whole again is given back from the top; one line is kept for "more"
    assert sum(sizes[n] if v is None else v for n, v in shown.items()) <= 19
    assert shown["history"] == 1 and shown["nginx"] == 1
    assert shown["queues"] is None  # 5 + fds 1 + clients 10 + 1 + 1 = 18 of 19


def test_a_section_in_trouble_too_tall_is_cut_to_what_is_left() -> None:
    sizes = dict(zip(SECTIONS, (5, 6, 30, 3, 4), strict=True))
    shown = fit_sections(sizes, {"clients": True}, 20)
    assert shown == {"queues": 1, "fds": 1, "clients": 15, "nginx": 1, "history": 1}


def test_a_queue_in_trouble_outranks_clients_that_are_fine() -> None:
    sizes = dict(zip(SECTIONS, (5, 6, 12, 3, 4), strict=True))
    shown = fit_sections(sizes, {"queues": True}, 14)
    assert shown["queues"] is None and shown["clients"] == 1


# ------------------------------------------------------------------ 5xx/s by cause


async def test_cause_sparkline_spans_the_whole_window_beside_the_windows_count() -> None:
    """60 polls a second apart; 19 queue_full 502s at poll 5, none since. Under 'last 60 s'
    the burst must still show 55 s later, and the figure beside it is the window's ×19 (the
    list of upstream errors says the same). It showed the last ~17 polls (the burst gone) and
    `0.0`, the last poll's rate."""
    per_poll = [0] * 60
    per_poll[4] = 19
    polls = errors_burst(quiet(recorded()), per_poll)
    app = app_for(polls[-1])
    async with app.run_test(size=(80, 24)) as pilot:
        for poll in polls:
            app.show_snapshot(0, poll)
        await pilot.pause()
        text = side(app).section_text("clients")
        spark = next(line for line in text.splitlines() if line.startswith("queue_full "))
        assert "█" in spark, spark  # the burst, 55 s ago
        assert spark.rstrip().endswith("×19"), spark
        assert "×19 queue_full" in text
        assert "0.0" not in spark


def test_cause_history_says_what_it_covers() -> None:
    polls = errors_burst(quiet(recorded()), [0, 3, 0, 0])
    history = CauseHistory(60)
    for poll in polls:
        history.push(poll.logs)
    series = history.series()
    assert series == {"queue_full": (3.0, 0.0, 0.0)}
    assert series.span_s == 3.0 and series.samples == 3


async def test_before_stackmon_watched_is_unknown_not_zero() -> None:
    """Started with 72 failures already in the log window: the part of the minute stackmon
    did not see is `·`, and the count is the window's."""
    polls = errors_burst(quiet(recorded()), [72, 0, 0])
    app = app_for(polls[-1])
    async with app.run_test(size=(120, 36)) as pilot:
        for poll in polls:
            app.show_snapshot(0, poll)
        await pilot.pause()
        text = side(app).section_text("clients")
        spark = next(line for line in text.splitlines() if line.startswith("queue_full "))
        assert "·" in spark and spark.rstrip().endswith("×72"), spark


# ------------------------------------------------------------------ whose req/s


async def test_each_rate_says_whose_it_is() -> None:
    host = quiet(recorded())
    nginx = NginxStatus(url="http://127.0.0.1/nginx_status", active=3, accepts=10, handled=10,
                        requests=100, reading=0, writing=1, waiting=2, sampled_at=host.taken_at,
                        requests_per_s=3.0)
    polls = errors_burst(host, [0, 0])
    polls = [replace(p, nginx=nginx) for p in polls]
    app = app_for(polls[-1])
    async with app.run_test(size=(200, 50)) as pilot:
        for poll in polls:
            app.show_snapshot(0, poll)
        await pilot.pause()
        text = screen_text(app)
        header = text.splitlines()[0]
        assert "uWSGI req/s" in header, header
        assert "access log req/s 10" in text
        assert "nginx req/s 3.0" in text and "(stub_status, polls included)" in text
        assert "History · uWSGI" in text


# ------------------------------------------------------------------ 80x24


async def test_at_80x24_every_section_is_on_the_first_screen() -> None:
    """Queues and fds fine, 5xx and a failing health check: the clients keep their lines
    (the LB verdict and the causes on screen), the other sections one line each, and the
    last line names what is below; Tab and End reach it from the keyboard."""
    failing = check(ok=False, last_ms=5000.0, max_ms=5000.0, failures_in_row=1,
                    last_error="timed out after 5 s", out_in_s=25.0)
    polls = errors_burst(quiet(recorded()), [0, 2, 5, 30], health=failing)
    app = app_for(polls[-1])
    async with app.run_test(size=(80, 24)) as pilot:
        for poll in polls:
            feed(app, poll)
        await pilot.pause()
        shown = first_screen(app)
        joined = "\n".join(shown)
        assert shown[0].startswith("Listen queues ok, max"), shown
        assert shown[1].startswith("File descriptors ok, max"), shown
        for part in ("Clients · last 60 s", "LB health check", "FAIL", "5xx/s by cause",
                     "queue_full", "nginx req/s", "History · uWSGI max queue"):
            assert part in joined, f"{part!r} not on the first screen:\n{joined}"
        at = next(i for i, line in enumerate(shown) if line.startswith("▼ Tab ↓: "))
        assert at >= len(shown) - 2, shown  # the last line or two
        more = " ".join(shown[at:])
        assert "clients +" in more and "queues, fds, nginx, history" in more, more
        # the full sections follow, for scrolling
        panel = side(app)
        assert "History · uWSGI" in panel.lines[len(shown):]
        await pilot.press("tab")
        await pilot.pause()
        assert app.focused is panel
        await pilot.press("end")
        await pilot.pause()
        assert panel.scroll_y > 0
        assert any(line.startswith("req/s") for line in first_screen(app))


async def test_at_80x24_nothing_wrong_nothing_hidden_silently() -> None:
    """A quiet host at 80x24: the column is still too short; no line of it is below the
    screen without the last line saying so."""
    polls = errors_burst(quiet(recorded()), [0, 0])
    app = app_for(polls[-1])
    async with app.run_test(size=(80, 24)) as pilot:
        for poll in polls:
            feed(app, poll)
        await pilot.pause()
        panel = side(app)
        height = panel.scrollable_content_region.height
        if panel.line_count > height:
            assert panel.lines[height - 1].startswith("▼ Tab ↓: ") or \
                any(line.startswith("▼ Tab ↓: ") for line in panel.lines[:height])
        for title in ("Listen queues", "File descriptors", "Clients", "nginx", "History"):
            assert any(line.startswith(title) for line in first_screen(app)), title


async def test_big_screens_keep_every_section_whole() -> None:
    polls = errors_burst(quiet(recorded()), [0, 0])
    app = app_for(polls[-1])
    async with app.run_test(size=(200, 60)) as pilot:
        for poll in polls:
            feed(app, poll)
        await pilot.pause()
        panel = side(app)
        assert panel.fitted == {}
        assert not any(line.startswith("▼") for line in panel.lines)

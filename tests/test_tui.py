"""Pilot tests: the keys a user presses and what the screen then shows."""

from __future__ import annotations

from dataclasses import replace

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.model import Core, HostSnapshot, Request, UwsgiInstance, Worker
from tests.tui_support import app_for, feed, recorded, screen_text, unreachable, wait_for
from tui.app import StackmonApp
from tui.screens.help import HelpScreen
from tui.screens.worker_detail import WorkerDetailScreen
from widgets.worker_list import WorkerList


def with_uri(host: HostSnapshot, uri: str) -> HostSnapshot:
    """The recorded host with the first request in flight given another URI (and an age
    past the thresholds, so that it has a line of its own)."""
    inst = host.uwsgi[0]
    workers = []
    done = False
    for w in inst.workers:
        cores = []
        for c in w.cores:
            if c.request is not None and not done:
                c = replace(c, request=replace(c.request, uri=uri, level="critical",
                                                   started_at=host.taken_at - 30.0,
                                                   running_s=30.0))
                done = True
            cores.append(c)
        workers.append(replace(w, cores=tuple(cores)))
    return replace(host, uwsgi=(replace(inst, workers=tuple(workers)),))


async def test_tabs_carry_each_hosts_worst_state():
    good = recorded(host_name="web-1")
    dead = unreachable("web-2", good.taken_at)
    app = app_for(good, dead)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, good, dead)
        await pilot.pause()
        text = screen_text(app)
        assert "web-1 CRIT" in text  # the recorded hangs are past 20 s
        assert "web-2 UNREACHABLE" in text
        assert "/hang/report?id=42" in text
        await pilot.press("right_square_bracket")
        await pilot.pause()
        text = screen_text(app)
        assert "no answer within 2 s" in text  # the reason, on the unreachable tab


async def test_connecting_before_the_first_poll():
    good = recorded()
    app = app_for(good)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert "connecting" in screen_text(app)


async def test_move_between_workers_and_open_detail_with_redacted_vars():
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        workers = app.query_one(WorkerList)
        assert workers.has_focus
        assert workers.cursor_worker_id == 4  # the worst worker: its request is the oldest
        await pilot.press("home")
        assert workers.cursor_worker_id == 1
        await pilot.press("j", "j", "j")
        assert workers.cursor_worker_id == 4
        await pilot.press("k")
        assert workers.cursor_worker_id == 3
        await pilot.press("down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, WorkerDetailScreen)
        text = screen_text(app)
        assert "worker 4" in text
        assert "HTTP_COOKIE" in text and "<redacted>" in text
        assert "demo-not-a-secret" not in text
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, WorkerDetailScreen)


async def test_detail_follows_a_respawn():
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.press("end", "enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, WorkerDetailScreen)
        inst = host.uwsgi[0]
        last = inst.workers[-1]
        respawned = replace(last, pid=last.pid + 1000, respawn_count=last.respawn_count + 1,
                            cores=tuple(replace(c, request=None, in_request=False)
                                        for c in last.cores))
        new = replace(host, uwsgi=(replace(inst, workers=(*inst.workers[:-1], respawned)),))
        app.show_snapshot(0, new)
        await pilot.pause()
        text = screen_text(app)
        assert f"Respawned: pid {last.pid} -> {last.pid + 1000}" in text
        assert "No request in flight" in text


async def test_sort_filter_and_help():
    host = recorded()
    app = app_for(host)
    # 40 rows: the help lists every key of the registry (the fleet's too) and its legend.
    async with app.run_test(size=(120, 40)) as pilot:
        feed(app, host)
        await pilot.pause()
        workers = app.query_one(WorkerList)
        await pilot.press("s")
        assert workers.sort_key == "age"
        assert "sort: age" in screen_text(app)
        await pilot.press("s", "s")
        assert workers.sort_key == "id"
        await pilot.press("slash")
        await pilot.press(*"search")
        await pilot.pause()
        assert workers.filter_text == "search"
        text = screen_text(app)  # only worker 4 runs /hang/search; 1-3 run /slow
        assert "/hang/search" in text and "/slow?s=5" not in text
        await pilot.press("escape")
        await pilot.pause()
        assert workers.filter_text == "" and workers.has_focus
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for words in ("Sort workers", "Freeze the screen", "Command palette", "critical >= 20s"):
            assert words in text
        await pilot.press("escape")


async def test_pause_freezes_the_screen_until_resumed():
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.press("p")
        app.show_snapshot(0, with_uri(host, "/after/pause"))
        await pilot.pause()
        assert "/after/pause" not in screen_text(app)
        await pilot.press("p")
        await pilot.pause()
        assert "/after/pause" in screen_text(app)


async def test_request_text_is_shown_literally_never_as_markup():
    host = with_uri(recorded(), "/x/[b]y[/b]/[red]z")
    app = app_for(host)
    async with app.run_test(size=(160, 48)) as pilot:
        feed(app, host)
        await pilot.pause()
        assert "/x/[b]y[/b]/[red]z" in screen_text(app)
        await pilot.press("home", "enter")  # worker 1 holds the edited request
        await pilot.pause()
        assert isinstance(app.screen, WorkerDetailScreen)
        assert "/x/[b]y[/b]/[red]z" in screen_text(app)


async def test_many_workers_scroll_at_80x24():
    base = recorded()
    now = base.taken_at
    workers = tuple(
        Worker(id=i, pid=1000 + i, status="busy", accepting=True, requests=i, exceptions=0,
               harakiri_count=0, respawn_count=1, avg_rt_ms=10, rss=0, vsz=0, last_spawn=now,
               running_time_s=0, tx=0,
               cores=tuple(Core(id=c, requests=0, in_request=True, request=Request(
                   core=c, method="GET", uri=f"/w{i}/c{c}", remote_addr="127.0.0.1", host="h",
                   started_at=now - 10 - c, running_s=10.0 + c, level="slow"))
                   for c in range(8)))
        for i in range(1, 65))
    inst = UwsgiInstance(address="127.0.0.1:9002", version="2.0.31", master_pid=999,
                         listen_queue=0, listen_queue_max=100, sockets=(), workers=workers)
    host = replace(base, uwsgi=(inst,))
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.pause()
        wl = app.query_one(WorkerList)
        assert wl.virtual_size.height == 64 * 9
        assert "/w64/" not in screen_text(app)
        await pilot.press("end")
        await pilot.pause()
        assert wl.cursor_worker_id == 64
        assert "/w64/c7" in screen_text(app)
        assert wl.scroll_y > 0


async def test_palette_offers_the_registry_actions():
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Help", "Sort", "Filter", "Pause", "Next host"):
            assert title in titles


async def test_live_app_on_the_real_stack_shows_a_hung_request(stack, hang):
    hang(stack, "/hang/live-tui?id=5", n=1)
    host = HostConfig(name="live", uwsgi=(parse_stats_address(stack.stats_address),),
                      nginx=stack.nginx_status_url)
    # slow 1 s: the request gets its line (younger ones are a count in the worker's row).
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.3, slow=1.0)))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: all(s in screen_text(app) for s in (
            "/hang/live-tui?id=5", "active", "uwsgi workers")))
        text = screen_text(app)
        assert "/hang/live-tui?id=5" in text
        assert "connecting" not in text
        assert "uwsgi workers" in text  # fd gauges from /proc


async def test_kill_flow_from_key_to_confirmation_to_respawned_worker(fresh_stack, hang,
                                                                      tmp_path):
    from stackmon.actions.audit import AuditLog
    from tui.screens.confirm import KillConfirm

    st = fresh_stack(workers=2, threads=1, nginx=False)
    hang(st, "/hang/pilot-kill", n=1, via="unix")
    host = HostConfig(name="k", uwsgi=(parse_stats_address(st.stats_address),))
    audit = AuditLog(tmp_path / "audit.log")
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.3)), audit=audit)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: "/hang/pilot-kill" in screen_text(app))
        await pilot.press("slash", *"pilot-kill", "enter")
        await pilot.pause(0.2)
        victim = app.active_pane().selected_worker()
        assert victim is not None and victim.requests_in_flight
        await pilot.press("K")
        await pilot.pause()
        assert isinstance(app.screen, KillConfirm)
        text = screen_text(app)
        assert f"Kill worker {victim.id} (pid {victim.pid}) of k?" in text
        assert "/hang/pilot-kill" in text and "SIGKILL now" in text
        await pilot.press("t")
        def respawned() -> bool:
            now = app.active_pane().find_worker(victim.id)
            return now is not None and now.pid not in (0, victim.pid)

        await wait_for(pilot, respawned, timeout=8)
        now = app.active_pane().find_worker(victim.id)
        assert now is not None and now.pid not in (0, victim.pid)
        assert now.respawn_count == victim.respawn_count + 1
        # The kill is done when its outcome is recorded; capture is on (py-spy is installed),
        # so the stack read before the kill is shown then: where the worker was stuck.
        await wait_for(pilot, lambda: [e["outcome"] for e in audit.entries()]
                       == ["started", "ok"], timeout=10)
        await wait_for(pilot, lambda: "stack captured before the kill" in screen_text(app),
                       timeout=5)
        await pilot.press("escape")  # close the stack
        await pilot.pause()
        await pilot.press("escape")  # clear the filter: the respawned worker is idle
        await pilot.pause(0.5)
        text = screen_text(app)
        # The worker rows no longer show the request; the recent events name it once, on
        # the kill's own line (the requests it aborted).
        rows = [ln for ln in text.splitlines() if "/hang/pilot-kill" in ln]
        assert f"pid {now.pid}" in text and len(rows) == 1 and "killed" in rows[0], rows
        assert [e["outcome"] for e in audit.entries()] == ["started", "ok"]


async def test_read_only_removes_every_action():
    host = recorded()
    app = app_for(host, read_only=True)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Kill" not in titles and "Reload" not in titles
        assert "Kill" not in screen_text(app)  # not in the Footer either
        await pilot.press("K", "R", "C")
        await pilot.pause()
        assert len(app.screen_stack) == 1  # no confirmation opened


async def test_reload_flow_shows_the_drain_then_the_outcome(fresh_stack, hang, tmp_path):
    from stackmon.actions.audit import AuditLog
    from tui.screens.confirm import ReloadConfirm
    from tui.screens.reload_view import ReloadScreen

    st = fresh_stack(workers=2, threads=1, mercy=4, nginx=False)
    hang(st, "/hang/pilot-reload", n=1, via="unix")
    host = HostConfig(name="r", uwsgi=(parse_stats_address(st.stats_address),))
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.5)),
                      audit=AuditLog(tmp_path / "audit.log"))
    async with app.run_test(size=(140, 36)) as pilot:
        await wait_for(pilot, lambda: "/hang/pilot-reload" in screen_text(app))
        await pilot.press("R")
        await pilot.pause()
        assert isinstance(app.screen, ReloadConfirm)
        assert "/hang/pilot-reload" in screen_text(app)
        await pilot.press("g")
        saw_draining = False
        for _ in range(150):
            await pilot.pause(0.1)
            text = screen_text(app)
            if isinstance(app.screen, ReloadScreen) and "draining" in text \
                    and "/hang/pilot-reload" in text:
                saw_draining = True
            if "graceful reload done" in text:
                break
        assert saw_draining
        assert "graceful reload done: 2 workers replaced" in text


async def test_doctor_screen_diagnoses_the_selected_host(fresh_stack):
    from tui.screens.doctor import DoctorScreen

    st = fresh_stack(workers=2, threads=1, mercy=90, nginx=False)  # mercy past the LB window
    host = HostConfig(name="doc", uwsgi=(parse_stats_address(st.stats_address),))
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.5)))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.active_pane().latest is not None, timeout=3)
        await pilot.press("d")
        await pilot.pause()
        doctor = app.screen
        assert isinstance(doctor, DoctorScreen)
        await wait_for(pilot, lambda: doctor.report is not None, timeout=10)
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "uwsgi.reload-mercy-vs-health-check" in text
        assert "worker-reload-mercy=90" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, DoctorScreen)


async def test_action_messages_are_shown_literally():
    """An action's outcome can quote server text; a notification never renders it as markup."""
    from tui.messages import ActionFinished

    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        app.post_message(ActionFinished("Kill refused", "cannot read /x/[b]y[/b] [red]z", False))
        await pilot.pause(0.3)
        (note,) = list(app._notifications)  # the toast itself is drawn on a later frame
        assert note.message == "cannot read /x/[b]y[/b] [red]z" and note.markup is False


async def test_kill_targets_the_instance_shown_when_another_instance_is_down(fresh_stack, hang,
                                                                           tmp_path):
    """Instance 0 of the host is down, so the snapshot holds only instance 1: the action must
    still name instance 1 (the one on screen), not position 0 of the snapshot."""
    from stackmon.actions.audit import AuditLog

    st = fresh_stack(workers=1, threads=1, nginx=False)
    hang(st, "/hang/second-instance", n=1, via="unix")
    host = HostConfig(name="two", uwsgi=(parse_stats_address("127.0.0.1:1"),
                                         parse_stats_address(st.stats_address)))
    audit = AuditLog(tmp_path / "audit.log")
    app = StackmonApp(Targets(hosts=(host,), settings=Settings(interval=0.3, timeout=2.0)),
                      audit=audit)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: "/hang/second-instance" in screen_text(app))
        victim = app.active_pane().selected_worker()
        assert victim is not None and victim.requests_in_flight
        await pilot.press("K", "t")
        await wait_for(pilot, lambda: bool(audit.entries())
                       and audit.entries()[-1]["outcome"] != "started", timeout=8)
        last = audit.entries()[-1]
        assert last["outcome"] == "ok", last
        assert last["instance"] == st.stats_address


async def test_odd_text_from_the_stack_never_breaks_the_screens():
    """A host name, a worker status and an error message carrying markup or escapes, and a
    timestamp out of range: shown literally, nothing crashes."""
    from stackmon.model import SourceError

    base = recorded(host_name="api [/] [b]x")
    inst = base.uwsgi[0]
    odd = replace(inst.workers[0], status="[/x] busy\x1b[2J", last_spawn=1e20)
    host = replace(base, uwsgi=(replace(inst, workers=(odd, *inst.workers[1:])),),
                   errors=(SourceError("nginx http://x", "bad [red]reply\x1b[2J"),))
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        text = screen_text(app)
        assert "api [/] [b]x" in text
        assert "bad [red]reply\\x1b[2J" in text
        await pilot.press("home", "enter")
        await pilot.pause()
        assert isinstance(app.screen, WorkerDetailScreen)
        text = screen_text(app)
        assert "[/x] busy\\x1b[2J" in text


async def test_help_at_80x24_scrolls_with_the_keys_it_names_and_esc_closes_it():
    """At 80x24 the help is taller than the screen: the frame says how to scroll and close
    (the Footer underneath is the main screen's), and those keys do it."""
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert "Esc close" in screen_text(app)
        scroll = app.screen.query_one("VerticalScroll")
        assert scroll.max_scroll_y > 0 and scroll.scroll_y == 0
        await pilot.press("pagedown")
        await pilot.pause()
        assert scroll.scroll_y > 0
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_the_filter_shows_first_on_the_instance_line_at_80_columns():
    """Workers are hidden while a filter is set: at 80x24 the instance line is cut at its end,
    so the filter text comes right after the label, before the address and the sort."""
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.press("slash", *"search", "enter")
        await pilot.pause()
        title = next(line for line in screen_text(app).splitlines()
                     if line.startswith(" uWSGI "))
        assert "filter: search" in title, title


async def test_sorted_by_requests_at_80_columns_the_req_column_is_shown():
    """At 80x24 a worker row has no room for `req N`; sorted by requests served, that column
    explains the order, so it is kept then (and only then)."""
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, host)
        await pilot.pause()

        def rows() -> list[str]:
            return [line for line in screen_text(app).splitlines() if " pid " in line]

        assert rows() and not any("req " in line for line in rows())
        await pilot.press("s", "s")  # id -> age -> requests
        await pilot.pause()
        assert app.query_one(WorkerList).sort_key == "requests"
        assert rows() and all("req " in line for line in rows()), rows()
        await pilot.press("s")
        await pilot.pause()
        assert not any("req " in line for line in rows())


async def test_recent_events_arriving_and_ageing_out_never_lay_the_screen_out():
    """The recent events box has a height fixed per screen size: growing with each new event
    (and shrinking as they aged out) laid the whole screen out each time (12 layouts in 70 s
    on the demo, against 3). Events come one by one, then all age out: no layout."""
    from tests.tui_support import LayoutCounter, event, summary

    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, replace(host, logs=summary(host.taken_at)))
        # The first poll's own layout lands on the screen's next update tick (the side
        # panel's sections settle to their height then): counted from after it.
        await pilot.pause(0.3)
        layouts = LayoutCounter(app)
        for n in range(1, 8):
            events = tuple(event(host.taken_at + i, "respawn", f"worker {i} respawned",
                                 worker=i) for i in range(n))
            feed(app, replace(host, taken_at=host.taken_at + n,
                              logs=summary(host.taken_at + n, events=events)))
            await pilot.pause()
        assert "worker 6 respawned" in screen_text(app)
        feed(app, replace(host, taken_at=host.taken_at + 200,
                          logs=summary(host.taken_at + 200)))
        await pilot.pause()
        assert layouts.count == 0

"""The fleet overview (issue 15): every host on one line, worst first, by group; only the
overview, hosts in alarm and hosts the user opened take a tab; the palette finds any host; a
rolling reload from the overview, with its progress on the overview's lines.

Pilot tests feed constructed snapshots (tests.tui_support.fleet_snapshots) through the app's
snapshot callback; the rolling reload runs on two real local stacks. SVG snapshots: update only
after reading the diff (`pytest tests/test_tui_fleet.py --snapshot-update`).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from stackmon.actions.audit import AuditLog
from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from tests.tui_support import (
    check,
    feed,
    fleet_app,
    fleet_snapshots,
    healthy,
    recorded,
    screen_text,
    unreachable,
    wait_for,
)
from tui.app import MAX_ALARM_TABS, StackmonApp
from tui.screens.fleet import PANE_ID, RollConfirm
from widgets.fleet_table import FleetTable


def five() -> list:
    """api-000 ok, web-001 critical (stuck requests, full queue), batch-002 ok, api-003
    unreachable, web-004 warning (its LB health check failed once)."""
    base = recorded("demo-hangs.json")
    ok = healthy(base, "x")
    snaps = [
        replace(ok, name="api-000", group="api"),
        replace(base, name="web-001", group="web"),
        replace(ok, name="batch-002", group="batch"),
        replace(unreachable("api-003", base.taken_at), group="api"),
        replace(ok, name="web-004", group="web", health=check(
            ok=False, failures_in_row=1, last_error="HTTP 502", checked_at=base.taken_at)),
    ]
    return snaps


def table(app: StackmonApp) -> FleetTable:
    assert app.overview is not None
    return app.overview.table


def notes(app: StackmonApp) -> str:
    return "\n".join(n.message for n in app._notifications)


def names(app: StackmonApp) -> list[str]:
    return [app.targets.hosts[i].name for i in table(app).visible_hosts()]


async def test_five_hosts_worst_first_in_sections_by_group():
    snaps = five()
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        assert app._tabs.active == PANE_ID
        # Sections: the one with the worst host first (api and web both have a critical
        # host: hosts-file order), worst first inside each.
        assert names(app) == ["api-003", "api-000", "web-001", "web-004", "batch-002"]
        text = screen_text(app)
        lines = text.splitlines()
        top = next(i for i, ln in enumerate(lines) if "state" in ln and "health" in ln)
        lines = lines[top:]  # the table (the tab bar names hosts too)
        at = {name: next(i for i, ln in enumerate(lines) if f" {name} " in ln)
              for name in names(app)}
        sections = {g: next(i for i, ln in enumerate(lines) if f"▼ {g} " in ln)
                    for g in ("api", "web", "batch")}
        assert sections["api"] < at["api-003"] < at["api-000"] < sections["web"] \
            < at["web-001"] < at["web-004"] < sections["batch"] < at["batch-002"]
        web1 = lines[at["web-001"]]
        assert "✖ CRIT 2" in web1 and "4/4" in web1 and "64s" in web1 and "103%" in web1
        assert "2 request(s) past the critical age" in web1
        assert "FAIL 1" in lines[at["web-004"]] and "▲ HEALTH FAIL" in lines[at["web-004"]]
        assert "UNREACHABLE" in lines[at["api-003"]]
        assert "5 hosts" in text and "✖ 2 critical" in text and "▲ 1 warn" in text
        # The cursor starts on the worst host.
        assert table(app).cursor_index == 3


async def test_a_host_that_turns_critical_moves_up_and_gets_a_tab():
    snaps = five()
    app = fleet_app(snaps)
    app.ALARM_LINGER_S = 0.0
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        # Only the overview and the hosts in alarm take a tab.
        assert sorted(app.panes) == [1, 3]
        assert app._tab_ids() == [PANE_ID, "host-1", "host-3"]
        assert names(app)[:2] == ["api-003", "api-000"]
        sick = replace(recorded("demo-hangs.json"), name="api-000", group="api")
        app.show_snapshot(0, sick)
        await pilot.pause()
        # Both critical now: hosts-file order inside the section.
        assert names(app)[:2] == ["api-000", "api-003"]
        assert 0 in app.panes and app._tab_ids() == [PANE_ID, "host-0", "host-1", "host-3"]
        # Calm again: the alarm tab goes (after ALARM_LINGER_S, here 0, on the next poll).
        app.show_snapshot(0, snaps[0])
        app.show_snapshot(0, snaps[0])
        await pilot.pause()
        assert 0 not in app.panes and names(app)[:2] == ["api-003", "api-000"]


async def test_filter_and_escape():
    snaps = five()
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        await pilot.press("slash", *"web")
        await pilot.pause()
        assert names(app) == ["web-001", "web-004"]
        assert "filter: web" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert len(names(app)) == 5 and table(app).has_focus
        # A reason's words match too.
        await pilot.press("slash", *"unreachable", "enter")
        await pilot.pause()
        assert names(app) == ["api-003"]


async def test_enter_opens_the_host_in_a_tab_and_ctrl_w_closes_it():
    snaps = five()
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        assert 0 not in app.panes
        await pilot.press("down", "enter")  # api-003 -> api-000
        await pilot.pause()
        assert app._tabs.active == "host-0"
        assert app.panes[0].latest is not None
        assert "api-000" in screen_text(app) and "uWSGI" in screen_text(app)
        assert app._tab_ids() == [PANE_ID, "host-0", "host-1", "host-3"]
        # Host keys work there; R is the host's reload again (the footer says so).
        assert "Reload" in screen_text(app) and "Roll group" not in screen_text(app)
        await pilot.press("ctrl+w")
        await pilot.pause()
        assert 0 not in app.panes and app._tabs.active == PANE_ID


async def test_the_palette_finds_any_host_by_name():
    snaps = five()
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"batch-0")
        await wait_for(pilot, lambda: "batch-002" in screen_text(app))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app._tabs.active == "host-2")
        assert app._tabs.active == "host-2" and 2 in app.panes


async def test_five_hundred_hosts():
    snaps = fleet_snapshots(500)
    app = fleet_app(snaps)
    async with app.run_test(size=(200, 50)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        t = table(app)
        rows = [t.row(i) for i in t.visible_hosts()]
        assert len(rows) == 500
        # Worst first inside each section; every section's critical hosts before its others.
        for group in ("api", "web", "batch"):
            sev = [t.row(i).severity for i in t.visible_hosts()
                   if app.targets.hosts[i].group == group]
            rank = {"critical": 0, "warn": 1, "unknown": 2, "ok": 3}
            assert [rank[s] for s in sev] == sorted(rank[s] for s in sev)
        assert sum(r.severity == "critical" for r in rows) == 20
        # Only MAX_ALARM_TABS of the 20 critical hosts took a tab.
        assert len(app.panes) == MAX_ALARM_TABS
        await pilot.press("slash", *"batch-49")
        await pilot.pause()
        assert names(app) == ["batch-491", "batch-494", "batch-497"]
        await pilot.press("enter", "enter")
        await pilot.pause()
        shown = t.cursor_index
        assert shown is not None and app._tabs.active == f"host-{shown}"
        await pilot.press("ctrl+p", *"api-498")
        await wait_for(pilot, lambda: "api-498" in screen_text(app))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app._tabs.active == "host-498")
        assert app._tabs.active == "host-498"


async def test_an_unchanged_poll_redraws_nothing():
    snaps = fleet_snapshots(50)
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        t = table(app)
        cached = dict(t._strips)
        assert cached
        feed(app, *snaps)  # the same figures again: every row compares equal
        assert all(t._strips.get(k) is v for k, v in cached.items())


async def test_few_hosts_keep_a_tab_each_and_o_adds_the_overview():
    base = recorded("demo-hangs.json")
    snaps = [replace(base, name="web-1", group="api"), replace(healthy(base, "web-2"),
                                                               group="api")]
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        assert app.overview is None and app._tab_ids() == ["host-0", "host-1"]
        await pilot.press("o")
        await pilot.pause()
        assert app._tabs.active == PANE_ID and names(app) == ["web-1", "web-2"]
        await pilot.press("right_square_bracket")
        assert app._tabs.active == "host-0"


async def test_rolling_reload_refused_in_read_only_and_without_a_group():
    snaps = five()
    app = fleet_app(snaps, read_only=True)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        assert "Roll group" not in screen_text(app)  # not in the Footer
        await pilot.press("R")
        await pilot.pause()
        assert len(app.screen_stack) == 1
        assert "Read-only (--read-only)" in notes(app)
    snaps = [replace(s, group=None) for s in five()]
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        await pilot.press("R")
        await pilot.pause()
        assert len(app.screen_stack) == 1
        assert "web-001 is in no group" in notes(app)  # the worst host, first


async def test_a_roll_that_cannot_be_audited_says_why_on_the_overview(tmp_path):
    """The roll's worker fails (the audit log is a directory): Worker.StateChanged brings
    the reason to the overview and a notification; nothing was reloaded."""
    snaps = five()
    configs = tuple(HostConfig(name=s.name, group=s.group,
                               uwsgi=(parse_stats_address("127.0.0.1:9"),)) for s in snaps)
    app = StackmonApp(Targets(hosts=configs, settings=Settings()), poll=False,
                      audit=AuditLog(tmp_path))
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        await pilot.press("down", "down")  # web-001
        await pilot.press("R")
        await pilot.pause()
        assert isinstance(app.screen, RollConfirm)
        text = screen_text(app)
        assert "group web: 2 hosts, one at a time" in text and "web-001" in text \
            and "web-004" in text
        await pilot.press("y")
        assert await wait_for(pilot, lambda: "Rolling reload web, max unavailable 1: failed: "
                              in screen_text(app))
        assert app._roll_members is None


# ------------------------------------------------------------------------- live stacks

def _host(name: str, stack) -> HostConfig:
    return HostConfig(name=name, group="api", uwsgi=(parse_stats_address(stack.stats_address),),
                      nginx=stack.nginx_status_url, health=f"{stack.base_url}/healthz")


async def test_rolling_reload_from_the_overview_replaces_every_worker_in_order(
        fresh_stack, tmp_path):
    one = fresh_stack(workers=2, threads=1, mercy=3, name="tui-roll-one")
    two = fresh_stack(workers=2, threads=1, mercy=3, name="tui-roll-two")
    before = {"web-1": set(one.worker_pids()), "web-2": set(two.worker_pids())}
    targets = Targets(hosts=(_host("web-1", one), _host("web-2", two)),
                      settings=Settings(interval=0.5, health_interval=1.0, timeout=1.0))
    audit = AuditLog(tmp_path / "audit.log")
    app = StackmonApp(targets, audit=audit)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("o")
        assert await wait_for(pilot, lambda: all(table(app).row(i).severity == "ok"
                                                 for i in (0, 1)), timeout=15)
        await pilot.press("home", "R")
        await pilot.pause()
        assert isinstance(app.screen, RollConfirm)
        text = screen_text(app)
        assert "group api: 2 hosts, one at a time" in text and "1. web-1" in text \
            and "2. web-2" in text and "Max unavailable  1  of 2 hosts" in text
        await pilot.press("y")
        seen: set[str] = set()
        words = ("1/2 drain", "1/2 ✓ done", "2/2 queued", "2/2 drain", "2/2 ✓ done",
                 "max unavailable 1: 1 in flight web-1;", "max unavailable 1: 1 in flight "
                 "web-2;", "in flight web-1, web-2")
        for _ in range(900):
            await pilot.pause(0.1)
            text = screen_text(app)
            seen.update(w for w in words if w in text)
            if "max unavailable 1: done" in text:
                break
        assert "Rolling reload api, max unavailable 1: done: 2 hosts reloaded" in text, text
        assert "(at most 1 reloading at once)" in text, text
        assert {"1/2 ✓ done", "2/2 ✓ done", "max unavailable 1: 1 in flight web-1;",
                "max unavailable 1: 1 in flight web-2;"} <= seen, seen
        assert "in flight web-1, web-2" not in seen, seen  # never both at once
        assert "1/2 drain" in seen or "2/2 drain" in seen, seen
    after = {"web-1": set(one.worker_pids()), "web-2": set(two.worker_pids())}
    for name in before:
        assert len(after[name]) == 2 and not after[name] & before[name], (name, before, after)
    records = [(e["host"], e["step"], e["outcome"]) for e in audit.entries()
               if e["action"] == "rolling reload"]
    assert records == [
        ("web-1", "host", "started"), ("web-1", "drain", "ok"), ("web-1", "settle", "ok"),
        ("web-1", "host", "ok"),
        ("web-2", "host", "started"), ("web-2", "drain", "ok"), ("web-2", "settle", "ok"),
        ("web-2", "host", "ok"),
    ]


# ------------------------------------------------------------------------- snapshots

@pytest.mark.parametrize("size", [(80, 24), (120, 36), (200, 50)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_overview_snapshot(snap_compare, size):
    snaps = fleet_snapshots(60)
    app = fleet_app(snaps)

    async def run_before(pilot):
        feed(app, *snaps)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


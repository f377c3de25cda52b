"""The rolling reload's policy in the TUI: R on the overview asks how many hosts of the group
may drain together (max unavailable, as `stackmon reload --group G --rolling
--max-unavailable N` does), and the roll runs with what was chosen.

- Pilot, constructed snapshots: the confirmation shows the group, the hosts in order and the
  policy (max unavailable, settle and unreachable timeouts); `+`/`-` and digits change max
  unavailable within 1..hosts-1, and a value out of range is refused with a message in the
  dialog, the value kept.
- Pilot, the real roll (stackmon.actions.rolling) on hosts whose uWSGI port is closed: each
  host started fails at once (nothing to reload), so which hosts the roll *started* shows the
  max unavailable it ran with: with 3, hosts 1-3 were started together (the audit log's
  "host started" records) and host 4 never; with the default 1, only host 1.
- Real components (root, network namespaces, as tests/test_rolling_netns.py): three hosts,
  each a real uWSGI + nginx with its agent; the TUI's roll with 2 chosen has two hosts
  draining at once, seen on the overview and in the agents' own audit logs and /proc, and the
  third waits for one of them.
- SVG snapshots of the confirmation at 80x24 and 120x36 and of the progress line at 80x24:
  update only after reading the diff (`pytest tests/test_tui_roll_policy.py
  --snapshot-update`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from stackmon.actions.audit import AuditLog
from stackmon.actions.reload_progress import ReloadProgress
from stackmon.actions.rolling import RollStep
from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets, load_hosts_file
from tests.conftest import require_nginx, require_uwsgi
from tests.tui_support import (
    feed,
    fleet_app,
    fleet_snapshots,
    healthy,
    recorded,
    screen_text,
    wait_for,
)
from tui.app import StackmonApp
from tui.screens.fleet import PANE_ID, RollConfirm, max_unavailable_refusal


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_app(n: int, audit: AuditLog | None = None) -> StackmonApp:
    """n hosts api-0..api-{n-1} in group api (plus one in group web, so the overview is there
    from 4 hosts in all), their uWSGI on a closed port, no polling; constructed healthy
    snapshots fed by `show`."""
    uwsgi = (parse_stats_address(f"127.0.0.1:{closed_port()}"),)
    configs = (*(HostConfig(name=f"api-{i}", group="api", uwsgi=uwsgi) for i in range(n)),
               HostConfig(name="web-0", group="web", uwsgi=uwsgi))
    targets = Targets(hosts=configs, settings=Settings(slow=5.0, critical=20.0))
    return StackmonApp(targets, poll=False, audit=audit or AuditLog.default())


def show(app: StackmonApp) -> None:
    base = healthy(recorded("demo-hangs.json"), "x")
    feed(app, *(replace(base, name=h.name, group=h.group) for h in app.targets.hosts))


async def press(pilot, *keys: str) -> None:
    """Keys, then a pause: a refusal's line appearing lays the dialog out again."""
    await pilot.press(*keys)
    await pilot.pause()


async def open_confirm(app: StackmonApp, pilot) -> RollConfirm:
    if app.overview is None:
        await pilot.press("o")
    show(app)
    await pilot.pause()
    assert app.overview is not None
    await pilot.press("home")
    assert app.overview.table.cursor_index == 0  # api-0
    await pilot.press("R")
    await pilot.pause()
    assert isinstance(app.screen, RollConfirm), type(app.screen)
    return app.screen


def started(audit: AuditLog) -> list[str]:
    return [e["host"] for e in audit.entries()
            if e["action"] == "rolling reload" and e.get("step") == "host"
            and e["outcome"] == "started"]


# --------------------------------------------------------------------------- the choice

def test_refusals_name_the_bounds():
    assert max_unavailable_refusal(1, 4) is None and max_unavailable_refusal(3, 4) is None
    assert max_unavailable_refusal(4, 4) == ("Max unavailable 4 refused: at most 3 of 4, one "
                                             "host keeps serving")
    assert max_unavailable_refusal(0, 4) == ("Max unavailable 0 refused: at least 1 host "
                                             "reloads at a time")
    assert max_unavailable_refusal(1, 1) is None
    assert "the group has 1 host" in (max_unavailable_refusal(2, 1) or "")


async def test_the_confirm_shows_the_policy_and_keys_change_max_unavailable():
    app = group_app(4)
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await open_confirm(app, pilot)
        text = screen_text(app)
        assert "group api: 4 hosts, one at a time, in this order" in text
        for i in range(4):
            assert f"{i + 1}. api-{i}" in text
        assert "web-0" not in text.split("in this order")[1]  # only the group's hosts
        assert "Max unavailable  1  of 4 hosts: one drains at a time, 3 keep serving" in text
        assert "settled within 60 s" in text and "nothing for 10 s" in text
        assert "y  start" in text and "Esc  cancel" in text and "+ - 1-3  max unavailable" in text
        await press(pilot, "plus")
        text = screen_text(app)
        assert dialog.chosen.max_unavailable == 2
        assert "4 hosts, 2 at a time" in text and "2 drain together, 2 keep serving" in text
        assert [ln for ln in text.splitlines() if "starts at once" in ln] == [
            ln for ln in text.splitlines() if "1. api-0" in ln or "2. api-1" in ln]
        await press(pilot, "3")
        assert dialog.chosen.max_unavailable == 3
        assert "3 drain together, 1 keeps serving" in screen_text(app)
        # Out of range: refused in the dialog, the value kept.
        for key in ("plus", "4", "9"):
            await press(pilot, key)
            assert dialog.chosen.max_unavailable == 3
            assert "refused: at most 3 of 4, one host keeps serving" in screen_text(app)
        await press(pilot, "minus", "minus")
        text = screen_text(app)
        assert dialog.chosen.max_unavailable == 1 and "refused" not in text  # message cleared
        await press(pilot, "minus")
        assert dialog.chosen.max_unavailable == 1
        assert "Max unavailable 0 refused: at least 1 host reloads at a time" in \
            screen_text(app)
        await press(pilot, "0")
        assert dialog.chosen.max_unavailable == 1 and "refused" in screen_text(app)
        # Escape: nothing runs.
        await press(pilot, "2", "escape")
        await pilot.pause()
        assert len(app.screen_stack) == 1 and app._roll_members is None


async def test_a_two_host_group_is_never_fully_down():
    app = group_app(2)
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await open_confirm(app, pilot)
        await press(pilot, "plus")
        assert dialog.chosen.max_unavailable == 1
        assert "Max unavailable 2 refused: at most 1 of 2, one host keeps serving" in \
            screen_text(app)


async def test_every_key_is_visible_at_80x24_with_twenty_hosts():
    """The key line is docked at the dialog's bottom; the host list scrolls (and says so)."""
    snaps = fleet_snapshots(60)
    app = fleet_app(snaps)
    async with app.run_test(size=(80, 24)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        await press(pilot, "R", "plus", "0")
        await pilot.pause()
        text = screen_text(app)
        for words in ("y  start", "Esc  cancel", "+ - 1-9  max unavailable", "↑ ↓  hosts",
                      "Max unavailable  2  of 20 hosts", "refused: at least 1",
                      "none starts after"):
            assert words in text, (words, text)


# --------------------------------------------------------------------------- the roll runs it

@pytest.mark.parametrize("keys,expected", [((), 1), (("3",), 3), (("plus", "plus"), 3)],
                         ids=["default", "digit", "plus"])
async def test_the_roll_runs_with_the_chosen_max_unavailable(tmp_path, keys, expected):
    """Every host fails at once (its uWSGI port is closed: nothing to reload, nothing
    touched), so the roll starts exactly `max_unavailable` hosts before it stops: the audit
    log's "host started" records and the overview's "not started" cells show which."""
    audit = AuditLog(tmp_path / "audit.log")
    app = group_app(4, audit)
    async with app.run_test(size=(120, 36)) as pilot:
        await open_confirm(app, pilot)
        await pilot.press(*keys)
        assert f"4 hosts, {'one' if expected == 1 else expected} at a time" in screen_text(app)
        await pilot.press("y")
        line = f"Rolling reload api, max unavailable {expected}: stopped at api-0"
        assert await wait_for(pilot, lambda: line in screen_text(app), timeout=10), \
            screen_text(app)
        text = screen_text(app)
        assert started(audit) == [f"api-{i}" for i in range(expected)]
        rest = [f"api-{i}" for i in range(expected, 4)]
        assert f"not started: {', '.join(rest)})" in text
        overview = app.overview
        assert overview is not None
        cells = [overview.table._activity.get(i, ("", "ok"))[0] for i in range(4)]
        assert ["not started" in c for c in cells] == [i >= expected for i in range(4)], cells


# --------------------------------------------------------------------------- progress line

def _step(host: int, phase: str, message: str) -> RollStep:
    progress = None
    if phase == "draining":
        progress = ReloadProgress(mode="graceful", mercy=3.0, elapsed=1.0, workers=(),
                                  stats_available=True, done=False, message=message)
    return RollStep(f"api-{host}", host + 1, 4, phase, message,  # type: ignore[arg-type]
                    progress)


def feed_steps(app: StackmonApp) -> None:
    """api-0 and api-1 in flight, api-0 done, api-2 started: as a roll with 2 reports them."""
    overview = app.overview
    assert overview is not None
    members = [0, 1, 2, 3]
    overview.roll_started("api", members, 2)
    for index, step in ((0, _step(0, "reloading", "api-0: graceful reload of instance 0")),
                        (1, _step(1, "reloading", "api-1: graceful reload of instance 0")),
                        (1, _step(1, "settling", "api-1: waiting: health check not yet "
                                                 "probed since the reload")),
                        (0, _step(0, "done", "api-0: reloaded and healthy in 4.2 s")),
                        (2, _step(2, "reloading", "api-2: graceful reload of instance 0"))):
        overview.roll_step(index, step)


async def test_the_progress_line_shows_the_policy_and_the_hosts_in_flight():
    app = group_app(4)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("o")
        show(app)
        await pilot.pause()
        feed_steps(app)
        await pilot.pause()
        text = screen_text(app)
        assert "Rolling reload api, max unavailable 2: 2 in flight api-1, api-2; 1/4 finished" \
            in text, text
        assert "[3/4] api-2: graceful reload of instance 0" in text
        assert app._tabs.active == PANE_ID


# --------------------------------------------------------------------------- snapshots

@pytest.mark.parametrize("size,keys", [((80, 24), ("plus",)), ((120, 36), ("plus", "0"))],
                         ids=["80x24-two", "120x36-refused"])
def test_roll_confirm_snapshot(snap_compare, size, keys):
    snaps = fleet_snapshots(60)
    app = fleet_app(snaps)

    async def run_before(pilot):
        feed(app, *snaps)
        await pilot.pause()
        await pilot.press("R", *keys)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_roll_progress_snapshot(snap_compare):
    app = group_app(4)

    async def run_before(pilot):
        await pilot.press("o")
        show(app)
        await pilot.pause()
        feed_steps(app)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


# --------------------------------------------------------------------------- real hosts

@pytest.fixture(scope="module")
def ns_fleet() -> Iterator[object]:
    """Three hosts in network namespaces, each uWSGI + nginx + agent (test_rolling_netns's
    Fleet: created here, removed by name and pid after)."""
    from tests import test_rolling_netns as netns

    netns._need_netns()
    require_uwsgi()
    require_nginx()
    hosts = netns.Fleet()
    try:
        hosts.create()
        hosts.start()
        yield hosts
    finally:
        hosts.close()


@pytest.mark.netns
@pytest.mark.stack
async def test_choosing_two_in_the_tui_drains_two_hosts_together(ns_fleet, tmp_path):
    from tests import test_rolling_netns as netns

    fleet = ns_fleet
    assert isinstance(fleet, netns.Fleet)
    first, second, third = fleet.hosts
    targets = load_hosts_file(fleet.hosts_file())
    targets = replace(targets, settings=replace(targets.settings, interval=0.5,
                                                health_interval=1.0))
    audit = AuditLog(tmp_path / "audit.log")
    app = StackmonApp(targets, audit=audit)
    before = {h.name: h.workers() for h in fleet.hosts}
    first.command("hang")  # the first host drains for its whole mercy
    seen_in_flight: set[str] = set()
    try:
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.press("o")
            overview = app.overview
            assert overview is not None
            assert await wait_for(pilot, lambda: all(
                overview.table.row(i).severity is not None for i in range(3)), timeout=20)
            await pilot.press("R", "plus")
            await pilot.pause()
            assert "group fleet: 3 hosts, 2 at a time" in screen_text(app)
            since = time.time()
            await pilot.press("y")
            text = ""
            for _ in range(600):
                await pilot.pause(0.1)
                text = screen_text(app)
                seen_in_flight.update(ln.strip() for ln in text.splitlines()
                                      if " in flight " in ln)
                if "max unavailable 2: done" in text or "max unavailable 2: stopped" in text:
                    break
    finally:
        first.command("release")
    assert "Rolling reload fleet, max unavailable 2: done: 3 hosts reloaded in" in text, text
    assert "(at most 2 reloading at once)" in text, text
    pair = f"2 in flight {first.name}, {second.name}"
    assert any(pair in ln for ln in seen_in_flight), seen_in_flight
    assert not any("3 in flight" in ln for ln in seen_in_flight), seen_in_flight
    # What the hosts themselves recorded: the second host's agent was asked to reload while
    # the first host still had old workers (its held request kept it draining), and the third
    # waited until one of them was replaced and healthy, untouched meanwhile.
    one, two, three = (netns.turn_of(h, before[h.name], since) for h in fleet.hosts)
    assert two.asked < one.replaced, (one, two)
    assert three.asked > min(one.healthy, two.healthy), (one, two, three)
    netns.untouched_until(third, since, three.asked)
    for h in fleet.hosts:
        after = h.workers()
        assert len(after) == netns.WORKERS and not after & before[h.name], (h.name, after)
    assert started(audit) == [first.name, second.name, third.name]

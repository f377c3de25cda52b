"""Helpers for driving the app in tests: recorded snapshots, a frozen clock, screen text."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from textual.app import App

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.model import HostSnapshot, SourceError
from stackmon.snapshot_json import host_from_dict
from tui.app import StackmonApp

FIXTURES = Path(__file__).parent / "fixtures" / "snapshots"


def recorded(name: str = "demo-hangs.json", host_name: str | None = None) -> HostSnapshot:
    """A HostSnapshot recorded from the real demo stack by `stackmon snapshot --json`."""
    doc = json.loads((FIXTURES / name).read_text())
    host = host_from_dict(doc["hosts"][0])
    return replace(host, name=host_name) if host_name else host


def unreachable(name: str, taken_at: float) -> HostSnapshot:
    return HostSnapshot(name=name, taken_at=taken_at, reachable=False, errors=(
        SourceError("uwsgi 10.9.9.9:9002", "no answer within 2 s"),))


def app_for(*hosts: HostSnapshot, now: float | None = None, read_only: bool = False,
            slow: float = 5.0, critical: float = 20.0) -> StackmonApp:
    """An app that does not poll, whose clock is frozen `now` (default: 3 s after the first
    snapshot was taken), with one tab per given host."""
    configs = tuple(HostConfig(name=h.name, uwsgi=(parse_stats_address("127.0.0.1:9002"),),
                               nginx="http://127.0.0.1/nginx_status") for h in hosts)
    frozen = now if now is not None else hosts[0].taken_at + 3.0
    targets = Targets(hosts=configs, settings=Settings(slow=slow, critical=critical,
                                                       read_only=read_only))
    return StackmonApp(targets, poll=False, clock=lambda: frozen)


def feed(app: StackmonApp, *hosts: HostSnapshot) -> None:
    for i, h in enumerate(hosts):
        app.show_snapshot(i, h)


async def wait_for(pilot: object, predicate: Callable[[], object], timeout: float = 5.0,
                   step: float = 0.1) -> bool:
    """Let the app run until `predicate()` holds (live stacks answer in their own time)."""
    for _ in range(round(timeout / step)):
        await pilot.pause(step)  # type: ignore[attr-defined]
        if predicate():
            return True
    return False


def screen_text(app: App) -> str:
    """The current screen as plain text, one line per row."""
    strips = app.screen._compositor.render_strips()  # test-only peek at the compositor
    return "\n".join(strip.text for strip in strips)

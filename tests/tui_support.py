"""Helpers for driving the app in tests: recorded snapshots, a frozen clock, screen text."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from textual.app import App

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.logs.access import EndpointStat, HttpSummary, Percentiles
from stackmon.logs.host import LogSummary, SourceStatus
from stackmon.logs.nginx_errors import UpstreamError
from stackmon.logs.uwsgi_events import Event
from stackmon.model import HostSnapshot, SourceError
from stackmon.snapshot_json import host_from_dict
from stackmon.sources.lb_probe import HealthCheck
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


# --------------------------------------------------------------- what the clients get

def http(**kwargs: object) -> HttpSummary:
    """An access-log summary: 600 requests in 60 s, 37 of them 502, upstream timing known."""
    base: dict[str, object] = dict(
        window_s=60.0, source="/var/log/nginx/access.log", requests=600, per_s=10.0,
        covered_s=60.0, status={"2xx": 558, "3xx": 2, "4xx": 3, "5xx": 37, "499": 2,
                                "502": 37, "503": 0, "504": 0},
        upstream_ms=Percentiles(12.0, 480.0, 1250.0), timing="upstream_response_time",
        top_5xx=(EndpointStat("GET /report", 40, 30, 4000.0, 900.0),
                 EndpointStat("GET /api/items/:id", 300, 7, 3000.0, 80.0)),
        top_slow=(), unparsed=0, log_format="main", missing=(), advice=None)
    base.update(kwargs)
    return HttpSummary(**base)  # type: ignore[arg-type]


QUEUE_FULL = "unix:/run/app/app.sock"


def upstream_error(count: int, cause: str = "queue_full", upstream: str = QUEUE_FULL,
                   first_at: float = 0.0, last_at: float = 0.0) -> UpstreamError:
    return UpstreamError(cause, upstream, count, first_at, last_at,
                         f"connect() to {upstream} failed (11: Resource temporarily "
                         "unavailable) while connecting to upstream")


def event(at: float, kind: str, text: str, worker: int | None = None, pid: int | None = None,
          uri: str | None = None, source: str = "uwsgi") -> Event:
    return Event(at=at, source=source, kind=kind, worker=worker, pid=pid, uri=uri, text=text)


def summary(at: float, errors: tuple[UpstreamError, ...] = (), *,
            http_summary: HttpSummary | None = None, events: tuple[Event, ...] = (),
            sources: tuple[SourceStatus, ...] = ()) -> LogSummary:
    return LogSummary(taken_at=at, window_s=60.0,
                      http=http_summary if http_summary is not None else http(),
                      upstream_errors=errors, events=events, sources=sources)


def check(**kwargs: object) -> HealthCheck:
    base: dict[str, object] = dict(url="http://127.0.0.1/healthz", ok=True, last_ms=4.0,
                                   max_ms=38.0, failures_in_row=0, out_of_service=False)
    base.update(kwargs)
    return HealthCheck(**base)  # type: ignore[arg-type]


def errors_burst(host: HostSnapshot, per_poll: list[int], *, events: tuple[Event, ...] = (),
                 health: HealthCheck | None = None) -> list[HostSnapshot]:
    """Successive polls of `host`, one a second, whose error log gains per_poll[i] queue_full
    502s at poll i (all inside the window, so each count is the sum so far)."""
    start = host.taken_at - len(per_poll)
    out = []
    total = 0
    for i, n in enumerate(per_poll):
        at = start + i + 1
        total += n
        errors = (upstream_error(total, first_at=start, last_at=at),) if total else ()
        status = {"2xx": 560, "3xx": 0, "4xx": 3, "5xx": total, "499": 0, "502": total,
                  "503": 0, "504": 0}
        logs = summary(at, errors, http_summary=http(status=status), events=events)
        out.append(replace(host, taken_at=at, logs=logs,
                           health=health if health is not None else check()))
    return out


def growing(host: HostSnapshot, fractions: list[float]) -> list[HostSnapshot]:
    """Polls one second apart that end with `host` (a recording with logs): poll i has
    fractions[i] of each of its upstream errors, so the 5xx/s history has a shape to draw.
    The last fraction should be 1.0 (the recording itself)."""
    assert host.logs is not None
    n = len(fractions)
    out = []
    for i, f in enumerate(fractions):
        at = host.taken_at - (n - 1 - i)
        errors = tuple(replace(e, count=round(e.count * f), last_at=min(e.last_at, at))
                       for e in host.logs.upstream_errors if round(e.count * f) > 0)
        out.append(replace(host, taken_at=at,
                           logs=replace(host.logs, taken_at=at, upstream_errors=errors)))
    out[-1] = host
    return out


EVENTS = (
    event(1000.0, "killed", "SIGTERM to worker 2 (pid 4302) by root from the TUI", 2, 4302,
          "/hang/x", source="stackmon"),
    event(990.0, "respawn", "Respawned uWSGI worker 3 (new pid: 4310)", 3, 4310),
    event(985.0, "harakiri", "HARAKIRI ON WORKER 3 (pid: 4303, try: 1)", 3, 4303,
          "/report?id=42"),
    event(900.0, "reload", "graceful reload started"),
)
"""Events as the core reports them, newest first (times are seconds after the epoch)."""


# --------------------------------------------------------------- fleets (the overview)

def healthy(host: HostSnapshot, name: str) -> HostSnapshot:
    """`host` with every request finished and every queue empty: a host the health model
    calls ok (with its LB health check passing)."""
    from stackmon.model import Core

    uwsgi = tuple(replace(inst, listen_queue=0, sockets=tuple(replace(s, queue=0)
                                                              for s in inst.sockets),
                          workers=tuple(replace(w, status="idle", cores=tuple(
                              Core(c.id, c.requests, False, None) for c in w.cores))
                              for w in inst.workers))
                  for inst in host.uwsgi)
    return replace(host, name=name, uwsgi=uwsgi,
                   listeners=tuple(replace(li, queue=0) for li in host.listeners),
                   health=check(checked_at=host.taken_at))


FLEET_GROUPS = ("api", "web", "batch")


def fleet_name(i: int) -> str:
    return f"{FLEET_GROUPS[i % 3]}-{i:03d}"


def fleet_snapshots(n: int) -> list[HostSnapshot]:
    """n hosts in three groups (api, web, batch by i % 3): mostly ok; every 50th from the 7th
    critical (stuck requests, a full queue), every 50th from the 13th unreachable, every 25th
    from the 4th warning (its LB health check failed once)."""
    base = recorded("demo-hangs.json")
    ok = healthy(base, "x")
    out = []
    for i in range(n):
        name = fleet_name(i)
        if i % 50 == 7:
            snap = replace(base, name=name)
        elif i % 50 == 13:
            snap = unreachable(name, base.taken_at)
        elif i % 25 == 4:
            snap = replace(ok, name=name, health=check(ok=False, failures_in_row=1,
                                                       last_error="HTTP 502",
                                                       checked_at=base.taken_at))
        else:
            snap = replace(ok, name=name)
        out.append(replace(snap, group=FLEET_GROUPS[i % 3]))
    return out


def fleet_app(snaps: list[HostSnapshot], *, read_only: bool = False) -> StackmonApp:
    """An app (no polling, frozen clock) whose hosts are `snaps`' names, each in its group."""
    configs = tuple(HostConfig(name=h.name, group=h.group,
                               uwsgi=(parse_stats_address("127.0.0.1:9002"),))
                    for h in snaps)
    frozen = snaps[0].taken_at + 3.0
    targets = Targets(hosts=configs, settings=Settings(slow=5.0, critical=20.0,
                                                       read_only=read_only))
    return StackmonApp(targets, poll=False, clock=lambda: frozen)


class LayoutCounter:
    """Counts the screen's layout passes (the cost the side panel exists to avoid)."""

    def __init__(self, app: App) -> None:
        self.count = 0
        screen = app.screen
        original = screen._refresh_layout

        def counted(*args: object, **kwargs: object) -> None:
            self.count += 1
            original(*args, **kwargs)  # type: ignore[arg-type]

        screen._refresh_layout = counted  # type: ignore[method-assign]

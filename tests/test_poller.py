"""HostPoller and Fleet: cadence, deadlines, backoff, staleness, pause, delivery order.

Most tests drive the poller with a scripted collector (no network, short intervals), so the
timing rules are checked exactly; the last ones use real sockets: an agent host that accepts
connections and never answers (a black hole) next to a healthy one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stackmon.actions.base import ActionError, ActionResult
from stackmon.actions.reload_progress import ReloadProgress
from stackmon.config import HostConfig, Settings, Targets
from stackmon.hosts import Host
from stackmon.model import HostSnapshot, SourceError, UwsgiInstance
from stackmon.poller import Fleet, HostPoller, backoff_cap


class ScriptedCollector(Host):
    """A Host whose polls are scripted: `behaviour()` says what the next poll does ("ok",
    "fail" or "hang"); unreachable/timed_out are the real Host logic."""

    def __init__(self, config: HostConfig, behaviour: Callable[[], str]) -> None:
        super().__init__(config, Settings())
        self.behaviour = behaviour
        self.calls: list[float] = []
        self.closed = False

    async def poll(self) -> HostSnapshot:
        self.calls.append(time.monotonic())
        what = self.behaviour()
        taken_at = time.time()
        if what == "hang":
            await asyncio.sleep(3600)
        if what == "fail":
            return self.unreachable(taken_at, [SourceError("x", "connection refused")])
        snap = HostSnapshot(name=self.name, taken_at=taken_at, reachable=True)
        self.last_good = snap
        return snap

    async def aclose(self) -> None:
        self.closed = True

    async def current_instance(self, index: int) -> UwsgiInstance:
        raise ActionError("unsupported", "scripted host")

    async def kill(self, *args: Any, **kw: Any) -> ActionResult:
        raise ActionError("unsupported", "scripted host")

    async def reload(self, *args: Any, **kw: Any) -> ActionResult:
        raise ActionError("unsupported", "scripted host")

    async def follow(self, *args: Any, **kw: Any) -> ReloadProgress:
        raise ActionError("unsupported", "scripted host")

    async def trace(self, *args: Any, **kw: Any) -> Any:
        raise ActionError("unsupported", "scripted host")


def make_poller(behaviour: Callable[[], str], *, interval: float = 0.1, timeout: float = 0.1,
                index: int = 0, **kw) -> tuple[HostPoller, ScriptedCollector, list]:
    host = HostConfig(name=f"h{index}", agent="http://127.0.0.1:9")
    got: list[tuple[int, HostSnapshot, float]] = []
    collector = ScriptedCollector(host, behaviour)
    poller = HostPoller(index, host, Settings(interval=interval, timeout=timeout),
                        lambda i, s: got.append((i, s, time.monotonic())),
                        collector=collector, **kw)
    return poller, collector, got


async def run_for(seconds: float, *pollers: HostPoller) -> None:
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


def test_backoff_cap_rule():
    assert backoff_cap(1.0) == 4.0
    assert backoff_cap(5.0) == 10.0
    assert backoff_cap(20.0) == 20.0  # never shorter than the interval


async def test_healthy_host_is_polled_at_a_fixed_rate():
    poller, collector, got = make_poller(lambda: "ok", interval=0.1)
    await run_for(1.05, poller)
    assert 9 <= len(collector.calls) <= 12
    gaps = [b - a for a, b in zip(collector.calls, collector.calls[1:], strict=False)]
    assert max(gaps) < 0.2 and min(gaps) > 0.05, gaps
    assert all(s.reachable for _, s, _ in got)
    assert collector.closed  # run() closes what it opened when cancelled


async def test_failures_back_off_exponentially_but_report_every_interval():
    state = {"mode": "ok"}
    poller, collector, got = make_poller(lambda: state["mode"], interval=0.1)
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(0.25)
    state["mode"] = "fail"
    failed_from = time.monotonic()
    await asyncio.sleep(2.0)
    tries = [c for c in collector.calls if c >= failed_from]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(tries)]
    # 0.1, 0.2, then the cap 0.4 (4 x interval)
    assert gaps[:2] == pytest.approx([0.1, 0.2], abs=0.08), gaps
    assert all(g == pytest.approx(0.4, abs=0.1) for g in gaps[2:]), gaps
    assert len(tries) <= 7, gaps
    reports = [(s, t) for _, s, t in got if t >= failed_from]
    assert all(not s.reachable for s, _ in reports[1:])
    report_gaps = [b - a for (_, a), (_, b) in itertools.pairwise(reports)]
    assert max(report_gaps) < 0.2, report_gaps  # every interval, tried or not
    stale = [s.stale_s for s, _ in reports if not s.reachable]
    assert stale == sorted(stale) and stale[-1] > 1.8
    assert any("next try in" in e.message for s, _ in reports for e in s.errors)
    # The first success resets the backoff.
    state["mode"] = "ok"
    await asyncio.sleep(0.6)
    assert poller.failures == 0 and poller.latest is not None and poller.latest.reachable
    recovered = [c for c in collector.calls if c >= time.monotonic() - 0.35]
    assert len(recovered) >= 3
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_hanging_poll_is_cut_at_the_deadline_and_others_keep_going():
    hang, _, got_hang = make_poller(lambda: "hang", interval=0.1, timeout=0.2, index=0)
    ok, ok_collector, got_ok = make_poller(lambda: "ok", interval=0.1, index=1)
    assert hang.deadline == pytest.approx(1.4)
    started = time.monotonic()
    await run_for(2.0, hang, ok)
    first_hang = got_hang[0]
    assert first_hang[2] - started == pytest.approx(1.4, abs=0.2)
    assert not first_hang[1].reachable
    assert "no answer within" in first_hang[1].errors[0].message
    assert len(ok_collector.calls) >= 18  # the healthy host never waited
    assert all(i == 1 for i, _, _ in got_ok) and all(i == 0 for i, _, _ in got_hang)
    # While the retry hangs, the failing host is still reported every interval.
    after_first = [t for _, _, t in got_hang if t > first_hang[2]]
    assert len(after_first) >= 3


async def test_pause_stops_polling_and_resume_polls_at_once():
    poller, collector, _got = make_poller(lambda: "ok", interval=0.1)
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(0.3)
    poller.pause()
    await asyncio.sleep(0.05)
    n = len(collector.calls)
    await asyncio.sleep(0.5)
    assert len(collector.calls) == n and poller.paused
    poller.resume()
    await asyncio.sleep(0.03)
    assert len(collector.calls) == n + 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_poll_now_skips_the_backoff():
    poller, collector, _ = make_poller(lambda: "fail", interval=0.2)
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(1.3)  # failures: 0.2, 0.4, then 0.8 s waits
    n = len(collector.calls)
    poller.poll_now()
    await asyncio.sleep(0.05)
    assert len(collector.calls) == n + 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_callback_errors_do_not_stop_polling_and_iterator_gets_latest():
    def boom(i, s):
        raise RuntimeError("consumer bug")

    poller, collector, _ = make_poller(lambda: "ok", interval=0.05)
    poller.on_snapshot = boom
    task = asyncio.create_task(poller.run())
    seen = []
    async for snap in poller.snapshots():
        seen.append(snap)
        if len(seen) == 3:
            break
    assert len(collector.calls) >= 3
    assert [s.taken_at for s in seen] == sorted(s.taken_at for s in seen)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- real sockets: a black-holed agent next to a healthy one ---------------------------------


class BlackHole:
    """A TCP listener that accepts and never answers (what a host behind a dead route looks
    like once a connection exists)."""

    def __init__(self) -> None:
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()


HOST_DOC = json.loads((Path(__file__).parent / "fixtures" / "snapshots" /
                       "demo-hangs.json").read_text())["hosts"][0]


async def recorded_agent(token: str) -> tuple[asyncio.base_events.Server, int]:
    """A minimal agent stand-in serving the recorded host object (fresh taken_at), with the
    token check, over raw asyncio (no second HTTP stack needed)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                ok = f"authorization: bearer {token}".encode() in head.lower()
                doc = dict(HOST_DOC, taken_at=time.time())
                body = json.dumps(doc).encode() if ok else b'{"error":"unauthorized"}'
                status = b"200 OK" if ok else b"401 Unauthorized"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_fleet_black_holed_agent_never_delays_the_healthy_one(tmp_path):
    token = secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    hole = BlackHole()
    hole_port = await hole.start()
    server, port = await recorded_agent(token)
    targets = Targets(hosts=(
        HostConfig(name="dead", agent=f"http://127.0.0.1:{hole_port}", token_file=token_file),
        HostConfig(name="alive", agent=f"http://127.0.0.1:{port}", token_file=token_file),
    ), settings=Settings(interval=0.25, timeout=0.5))
    got: dict[int, list[tuple[float, HostSnapshot]]] = {0: [], 1: []}
    fleet = Fleet(targets, lambda i, s: got[i].append((time.monotonic(), s)))
    started = time.monotonic()
    task = asyncio.create_task(fleet.run())
    try:
        await asyncio.sleep(3.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.close()
        await hole.stop()
    alive = got[1]
    assert len(alive) >= 10 and all(s.reachable and s.name == "alive" for _, s in alive)
    times = [t for t, _ in alive]
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.4
    assert alive[0][1].uwsgi and alive[0][1].uwsgi[0].workers
    dead = got[0]
    assert dead and not dead[0][1].reachable
    # The agent source gives up after 2 x timeout (1 s), well before the poll deadline.
    assert dead[0][0] - started < 1.4
    assert "no answer within 1 s" in dead[0][1].errors[0].message
    assert [s.name for _, s in dead] == ["dead"] * len(dead)

"""What one poll costs the TUI's main thread: building the screen's lines and drawing the frame.

    .venv/bin/python bench/bench_tui_frame.py [--polls 60] [--rounds 6] [--size 120x36]

Records `--polls` real polls of the demo stack (real uWSGI + nginx with the demo's traffic,
one a second, through LocalHost as the TUI polls), then replays them headless into the app,
`--rounds` times, and reports per poll the median CPU time (thread time of the main thread) of
show_snapshot (the widgets' lines built) and of the frames it causes (Textual's compositor and
the widgets' render_line; writing to a terminal is not included: the app is headless).

Why a replay: bench_tui_cpu.py measures the whole process in a real terminal, but its figure
moves by +-10 % from run to run on a shared machine; replaying the same recorded polls makes
two versions of the drawing code comparable (run both on the same recording, interleaved if
the machine is busy). No assertion: the figures are the machine's; the README quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual.screen import Screen

from stackmon.config import targets_from_args
from stackmon.demo.launcher import Stack
from stackmon.demo.traffic import TrafficThread
from stackmon.hosts.base import open_host
from stackmon.model import HostSnapshot
from tests.tui_support import app_for


async def record(stats: str, nginx: str, polls: int) -> list[HostSnapshot]:
    targets = targets_from_args([stats], nginx, {})
    host = open_host(targets.hosts[0], targets.settings)
    await host.prime()
    out = []
    try:
        for _ in range(polls):
            out.append(await host.poll())
            await asyncio.sleep(1.0)
    finally:
        await host.aclose()
    return out


def recorded_polls(polls: int) -> list[HostSnapshot]:
    workdir = Path(tempfile.mkdtemp(prefix="stackmon-bench-"))
    stack = Stack.start(workdir, workers=8, threads=2, listen=32, mercy=5, name="bench")
    traffic = TrafficThread(stack.base_url, capacity=stack.capacity, listen=32,
                            stats_address=stack.stats_address).start() \
        if stack.base_url else None
    try:
        time.sleep(15)  # the demo's first stuck requests
        assert stack.nginx_status_url is not None
        return asyncio.run(record(stack.stats_address, stack.nginx_status_url, polls))
    finally:
        if traffic is not None:
            traffic.stop()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class FrameTimer:
    """Thread time spent in Screen._on_timer_update (where a frame is composed)."""

    def __init__(self) -> None:
        self.spent = 0.0
        original = Screen._on_timer_update

        def timed(screen: Screen[Any]) -> None:
            started = time.thread_time()
            try:
                original(screen)
            finally:
                self.spent += time.thread_time() - started

        Screen._on_timer_update = timed  # type: ignore[method-assign,assignment]


async def replay(snaps: list[HostSnapshot], rounds: int, size: tuple[int, int]
                 ) -> list[tuple[float, float]]:
    timer = FrameTimer()
    now = [snaps[0].taken_at + 0.3]
    app = app_for(snaps[0])
    app.clock = lambda: now[0]
    out = []
    async with app.run_test(size=size) as pilot:
        app.show_snapshot(0, snaps[0])
        await pilot.pause(0.3)
        for rnd in range(rounds):
            for snap in snaps[1:]:
                now[0] = snap.taken_at + 0.3
                timer.spent = 0.0
                started = time.thread_time()
                app.show_snapshot(0, snap)
                show = time.thread_time() - started
                await pilot.pause(0.04)
                if rnd:  # the first round warms the caches up
                    out.append((show, timer.spent))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polls", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--size", default="120x36")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    snaps = recorded_polls(args.polls)
    results = asyncio.run(replay(snaps, max(2, args.rounds), (width, height)))
    show = statistics.median(r[0] for r in results) * 1000
    frame = statistics.median(r[1] for r in results) * 1000
    total = statistics.median(r[0] + r[1] for r in results) * 1000
    print(f"{len(snaps)} real polls replayed {args.rounds - 1}x at {args.size}, headless; "
          f"main-thread CPU per poll (medians):")
    print(f"  lines built (show_snapshot) {show:6.2f} ms")
    print(f"  frame drawn                 {frame:6.2f} ms")
    print(f"  together                    {total:6.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Key press to repaint on the fleet overview with 500 hosts (issue 15: under 50 ms).

    .venv/bin/python bench/bench_overview.py [--hosts 500] [--repeat 30] [--size 200x50]
                                             [--rate 500]

The app runs headless under Textual's Pilot with constructed snapshots (tests.tui_support:
mostly healthy hosts, some critical, unreachable or warning, in three groups), no network.
While it measures, a task posts HostPolled messages the way the pollers do, `--rate` per second
(500: every host once a second), each with changed figures so that rows really are redrawn.

What is timed, per key: from just before `pilot.press(key)` to the first frame the screen
renders after the key was handled (App._display is called with the compositor's update: the
render of every changed line is done by then; writing it to a real terminal is not included,
the app is headless). Keys: cursor down, page down, end/home, `/` and one character of a filter
(a relayout of 500 rows), Escape (filter cleared), Enter (a host's tab built and shown) and
`o` back to the overview. Prints median, p95 and max per key, and what feeding costs.

No assertion: the figures depend on the machine (two shared cores here); the README quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual import events

from stackmon.model import HostSnapshot
from tests.tui_support import fleet_app, fleet_snapshots
from tui.messages import HostPolled

BUDGET_MS = 50.0


def variants(snaps: list[HostSnapshot]) -> list[tuple[HostSnapshot, HostSnapshot]]:
    """Two polls per host that draw differently (one worker busy or not)."""
    out = []
    for s in snaps:
        other = s
        if s.uwsgi and s.uwsgi[0].workers:
            inst = s.uwsgi[0]
            w = inst.workers[0]
            flipped = replace(w, status="busy" if w.status != "busy" else "idle")
            other = replace(s, uwsgi=(replace(inst, workers=(flipped, *inst.workers[1:])),
                                      *s.uwsgi[1:]))
        out.append((s, other))
    return out


async def stream(app: Any, polls: list[tuple[HostSnapshot, HostSnapshot]], rate: float,
                 stop: asyncio.Event) -> int:
    """Post HostPolled at `rate` per second, round robin, alternating each host's variant."""
    sent = 0
    n = len(polls)
    if rate <= 0:
        await stop.wait()
        return 0
    period = 1.0 / rate
    batch = max(1, round(rate / 100))  # at most ~100 wake-ups a second
    while not stop.is_set():
        for _ in range(batch):
            i = sent % n
            app.post_message(HostPolled(i, polls[i][(sent // n) % 2]))
            sent += 1
        await asyncio.sleep(period * batch)
    return sent


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    snaps = fleet_snapshots(args.hosts)
    app = fleet_app(snaps)
    width, height = (int(x) for x in args.size.split("x"))
    frames: list[float] = []
    original = app._display

    def display(screen: Any, renderable: Any) -> None:
        if renderable is not None:
            frames.append(time.perf_counter())
        original(screen, renderable)

    app._display = display  # type: ignore[method-assign]
    results: dict[str, list[float]] = {}
    async with app.run_test(size=(width, height)) as pilot:
        t = time.perf_counter()
        for i, s in enumerate(snaps):
            app.show_snapshot(i, s)
        feed_ms = (time.perf_counter() - t) * 1000
        await pilot.pause(0.5)
        stop = asyncio.Event()
        streamer = asyncio.create_task(stream(app, variants(snaps), args.rate, stop))
        await pilot.pause(0.5)

        assert app.overview is not None and app._driver is not None
        overview = app.overview
        table = overview.table
        driver = app._driver
        filter_box = overview.query_one("#fleet-filter")

        async def timed(name: str, keys: tuple[str, ...], done: Any) -> None:
            """Keys sent as Pilot sends them (a Key event through the driver), without
            Pilot's waits for idleness (which, with polls streaming in, wait about a second
            per key); then the first frame rendered once `done()` holds."""
            start = time.perf_counter()
            for key in keys:
                event = events.Key(key, key if len(key) == 1 else None)
                event.set_sender(app)
                driver.send_message(event)
            changed = None
            for _ in range(20000):
                if changed is None and done():
                    changed = time.perf_counter()
                if changed is not None and frames and frames[-1] >= changed:
                    break
                await asyncio.sleep(0.0002)
            after = next((f for f in frames if changed is not None and f >= changed), None)
            if after is not None:
                results.setdefault(name, []).append((after - start) * 1000)
            else:
                print(f"{name}: no frame after the key within 4 s", file=sys.stderr)

        def moved(before: int | None) -> Any:
            return lambda: table.cursor_index != before

        for _ in range(args.repeat):
            await timed("down", ("down",), moved(table.cursor_index))
            await timed("pagedown", ("pagedown",), moved(table.cursor_index))
            await timed("end", ("end",), moved(table.cursor_index))
            await timed("home", ("home",), moved(table.cursor_index))
            await timed("/ (filter opens)", ("slash",), lambda: filter_box.has_focus)
            await timed("a (filter applied)", ("a",), lambda: table.filter_text == "a")
            await timed("escape (filter cleared)", ("escape",),
                        lambda: table.filter_text == "")
            target = f"host-{table.cursor_index}"
            await timed("enter (open host tab)", ("enter",),
                        lambda t=target: app._tabs.active == t)
            await timed("o (back to overview)", ("o",), lambda: app._tabs.active == "fleet")
            await pilot.pause(0.05)
        stop.set()
        sent = await streamer
        elapsed = time.perf_counter() - t
    print(f"{args.hosts} hosts at {width}x{height}; first feed of every host: {feed_ms:.0f} ms "
          f"({feed_ms * 1000 / args.hosts:.0f} µs per snapshot); {sent} polls streamed during "
          f"the run ({sent / elapsed:.0f}/s)")
    return results


def report(results: dict[str, list[float]]) -> None:
    print(f"{'key':<26} {'n':>3} {'median':>8} {'p95':>8} {'max':>8}   (ms, budget "
          f"{BUDGET_MS:g})")
    for name, values in results.items():
        values.sort()
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        flag = "" if p95 < BUDGET_MS else "  OVER"
        print(f"{name:<26} {len(values):>3} {statistics.median(values):>8.1f} {p95:>8.1f} "
              f"{values[-1]:>8.1f}{flag}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--size", default="200x50")
    parser.add_argument("--rate", type=float, default=500.0,
                        help="HostPolled messages per second while measuring")
    args = parser.parse_args()
    report(asyncio.run(measure(args)))


if __name__ == "__main__":
    main()

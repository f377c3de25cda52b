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
`o` back to the overview; for Enter and `o` the frame counted is the first one whose Footer
lists that view's keys too (Detail, Open host). Keys follow each other as soon as the previous
key's frame is out (no pause: whatever a key leaves to do after its frame delays the next).

Prints, per key: median, p95 and max from key to frame; the median CPU time the app's thread
spent in that interval (what the key cost, without the time the machine's other processes
took); and in how many of the intervals Python's cyclic garbage collector made a full
collection (gen 2: 20-40 ms each with 500 hosts here, whatever key it falls on). Also what
feeding costs.

No assertion: the figures depend on the machine (two shared cores here); the README quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual import events
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

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
    start = time.perf_counter()
    while not stop.is_set():
        for _ in range(batch):
            i = sent % n
            app.post_message(HostPolled(i, polls[i][(sent // n) % 2]))
            sent += 1
        # Deadlines from the start: the rate holds however long the app took meanwhile.
        await asyncio.sleep(max(0.0, start + sent * period - time.perf_counter()))
    return sent


class Timing:
    """One key's figures: key to frame (wall clock), the app thread's CPU time meanwhile, and
    whether a full garbage collection ran in between."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.full_gc = 0


class FullCollections:
    """When Python's cyclic GC made a full (gen 2) collection: (start, end) perf_counter."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.spans.append((self._start, time.perf_counter()))

    def between(self, start: float, end: float) -> bool:
        return any(s < end and e > start for s, e in self.spans)


def footer_keys(footer: Footer) -> list[str]:
    """The descriptions the Footer shows, left to right (its children: a DOM query per check
    cost the app's loop more than a millisecond)."""
    return [k.description for k in footer.children if isinstance(k, FooterKey) and k.display]


async def measure(args: argparse.Namespace) -> dict[str, Timing]:
    snaps = fleet_snapshots(args.hosts)
    app = fleet_app(snaps)
    width, height = (int(x) for x in args.size.split("x"))
    original = app._display
    # The key being timed: its done() and the future the first frame showing it resolves.
    waiting: list[tuple[Any, asyncio.Future[tuple[float, float]]]] = []

    def display(screen: Any, renderable: Any) -> None:
        original(screen, renderable)
        if renderable is not None and waiting:
            done, frame = waiting[0]
            # done() is looked at when a frame is out, not polled: a wake-up every 0.2 ms
            # took its share of the loop the app runs on. A state set before the frame was
            # rendered is in it (messages are not handled while the compositor renders).
            if not frame.done() and done():
                frame.set_result((time.perf_counter(), time.thread_time()))

    app._display = display  # type: ignore[method-assign]
    results: dict[str, Timing] = {}
    collections = FullCollections()
    gc.callbacks.append(collections)
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
        footer = app.screen.query_one(Footer)

        async def timed(name: str, keys: tuple[str, ...], done: Any) -> None:
            """Keys sent as Pilot sends them (a Key event through the driver), without
            Pilot's waits for idleness (which, with polls streaming in, wait about a second
            per key); then the first frame rendered once `done()` holds."""
            frame: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop(
                ).create_future()
            waiting[:] = [(done, frame)]
            start, start_cpu = time.perf_counter(), time.thread_time()
            for key in keys:
                event = events.Key(key, key if len(key) == 1 else None)
                event.set_sender(app)
                driver.send_message(event)
            try:
                after = await asyncio.wait_for(frame, 4.0)
            except TimeoutError:
                print(f"{name}: no frame after the key within 4 s", file=sys.stderr)
                return
            finally:
                waiting.clear()
            if name:
                timing = results.setdefault(name, Timing())
                timing.wall.append((after[0] - start) * 1000)
                timing.cpu.append((after[1] - start_cpu) * 1000)
                timing.full_gc += collections.between(start, after[0])

        def moved(before: int | None) -> Any:
            return lambda: table.cursor_index != before

        def fresh_host(r: int) -> int:
            """A host without a tab (not in alarm, not opened before)."""
            return next(i for i in range(1 + 2 * r, len(snaps)) if i not in app.panes)

        for r in range(args.repeat):
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
                        lambda t=target: app._tabs.active == t
                        and "Detail" in footer_keys(footer))
            await timed("o (back to overview)", ("o",), lambda: app._tabs.active == "fleet"
                        and "Open host" in footer_keys(footer))
            # A host that has no tab yet: its pane is built (then closed again, untimed).
            index = fresh_host(r)
            table.move_to(index)
            await timed("enter (new host tab)", ("enter",),
                        lambda t=f"host-{index}": app._tabs.active == t
                        and "Detail" in footer_keys(footer))
            await timed("", ("ctrl+w",), lambda t=f"host-{index}": t not in app._tab_ids()
                        and "Open host" in footer_keys(footer))
            await timed("", ("home",), moved(table.cursor_index))
        stop.set()
        sent = await streamer
        elapsed = time.perf_counter() - t
    gc.callbacks.remove(collections)
    print(f"{args.hosts} hosts at {width}x{height}; first feed of every host: {feed_ms:.0f} ms "
          f"({feed_ms * 1000 / args.hosts:.0f} µs per snapshot); {sent} polls streamed during "
          f"the run ({sent / elapsed:.0f}/s)")
    return results


def report(results: dict[str, Timing]) -> None:
    print(f"{'key':<26} {'n':>3} {'median':>8} {'p95':>8} {'max':>8} {'cpu':>6} {'gc2':>4}"
          f"   (ms, budget {BUDGET_MS:g}; cpu: median; gc2: full collections in the interval)")
    for name, timing in results.items():
        values = sorted(timing.wall)
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        flag = "" if p95 < BUDGET_MS else "  OVER"
        print(f"{name:<26} {len(values):>3} {statistics.median(values):>8.1f} {p95:>8.1f} "
              f"{values[-1]:>8.1f} {statistics.median(timing.cpu):>6.1f} "
              f"{timing.full_gc:>4}{flag}")


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

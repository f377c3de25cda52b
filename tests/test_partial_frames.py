"""tui.partial_frames: every partial frame writes what a full render of the same screen shows.

Each partial update the app draws (host view, fleet overview, modal screens; at 80x24, 120x36
and 200x50; polls that change figures, sparklines, requests, errors) is checked cell by cell,
over every span it writes, against a full render of the same compositor state through
Textual's own _render_chops (the independent truth). A span left unwritten or written with
another widget's cells fails.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from rich.segment import Segment
from textual._compositor import ChopsUpdate, Compositor
from textual.strip import Strip

from stackmon.model import HostSnapshot
from tests.tui_support import (
    app_for,
    errors_burst,
    feed,
    fleet_app,
    fleet_snapshots,
    recorded,
)
from tui import partial_frames

Cell = tuple[str, Any]
SIZES = [(80, 24), (120, 36), (200, 50)]


def _cells(segments: list[Segment]) -> list[Cell]:
    out: list[Cell] = []
    for seg in segments:
        if seg.control:
            continue
        for ch in seg.text:
            out.append((ch, seg.style))
    return out


def _written(update: ChopsUpdate, y: int, x1: int, x2: int) -> list[Cell | None]:
    """The cells a partial update writes on row y between x1 and x2 (None: not written)."""
    row: list[Cell | None] = [None] * (x2 - x1)
    for end, (x, strip) in zip(update.chop_ends[y], update.chops[y].items(), strict=False):
        if strip is None or x >= x2 or end <= x1:
            continue
        start, stop = max(x, x1), min(end, x2)
        for i, cell in enumerate(_cells(list(strip.crop(start - x, stop - x)))):
            if start + i < x2:
                row[start + i - x1] = cell
    return row


class FrameChecker:
    """Wraps render_partial_update: each update is compared with a full original render."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames = 0
        self.cells = 0
        self.problems: list[str] = []
        original_update = Compositor.render_partial_update
        checker = self

        def checked(compositor: Compositor) -> ChopsUpdate | None:
            update = original_update(compositor)
            if update is not None:
                checker.compare(compositor, update)
            return update

        monkeypatch.setattr(Compositor, "render_partial_update", checked)

    def compare(self, compositor: Compositor, update: ChopsUpdate) -> None:
        patched = Compositor._render_chops
        Compositor._render_chops = partial_frames._ORIGINAL  # type: ignore[method-assign]
        try:
            full: list[Strip] = compositor.render_strips()
        finally:
            Compositor._render_chops = patched  # type: ignore[method-assign]
        self.frames += 1
        for y, x1, x2 in update.spans:
            want = _cells(list(full[y].crop(x1, x2)))
            got = _written(update, y, x1, x2)
            self.cells += len(got)
            if got != want and len(self.problems) < 5:
                text = "".join(c[0] if c else "?" for c in got)
                self.problems.append(f"row {y} [{x1},{x2}): wrote {text!r}, screen "
                                     f"{''.join(c[0] for c in want)!r}")


@pytest.fixture
def checker(monkeypatch: pytest.MonkeyPatch) -> FrameChecker:
    assert partial_frames.install()
    return FrameChecker(monkeypatch)


def _polls() -> list[HostSnapshot]:
    """Polls whose figures, sparklines, errors and requests change every time."""
    host = recorded("demo-502s.json")
    polls = errors_burst(host, [0, 1, 3, 8, 20, 2, 0, 5])
    out = []
    for i, snap in enumerate(polls):
        inst = snap.uwsgi[0]
        workers = tuple(replace(w, requests=w.requests + i * (w.id + 1)) for w in inst.workers)
        out.append(replace(snap, uwsgi=(replace(inst, workers=workers), *snap.uwsgi[1:])))
    return out


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_host_view_frames_match_a_full_render(checker: FrameChecker, size) -> None:
    polls = _polls()
    app = app_for(polls[0])
    async with app.run_test(size=size) as pilot:
        for i, snap in enumerate(polls):
            feed(app, snap)
            await pilot.pause()
            if i == 3:
                await pilot.press("down", "down", "s")
            if i == 5:
                await pilot.press("question_mark")
                await pilot.pause()
                await pilot.press("pagedown", "escape")
        await pilot.press("slash", *"hang", "enter")
        await pilot.pause()
        feed(app, polls[-1])
        await pilot.pause()
    assert checker.frames >= len(polls) and checker.cells > 1000
    assert not checker.problems, checker.problems


async def test_overview_and_tab_switch_frames_match_a_full_render(checker: FrameChecker
                                                                  ) -> None:
    snaps = fleet_snapshots(30)
    app = fleet_app(snaps)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, *snaps)
        await pilot.pause()
        await pilot.press("down", "down", "pagedown", "slash", "w", "enter")
        await pilot.pause()
        await pilot.press("escape", "enter")
        await pilot.pause()
        feed(app, *snaps)
        await pilot.press("o")
        await pilot.pause()
    assert checker.frames >= 5
    assert not checker.problems, checker.problems

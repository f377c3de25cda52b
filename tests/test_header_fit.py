"""The host header gives way field by field, never cutting a figure: at 80 columns with PAUSED
a review saw `uWSGI req/s 6…` (6.0, or 60?). The version goes first, then the master's pid;
busy and the rate stay whole."""

from __future__ import annotations

from dataclasses import replace

from tests.tui_support import app_for, feed, recorded, screen_text


async def test_the_header_drops_fields_rather_than_cut_a_figure() -> None:
    first = recorded()
    inst = first.uwsgi[0]
    later = replace(first, taken_at=first.taken_at + 1.0, uwsgi=(replace(inst, workers=tuple(
        replace(w, requests=w.requests + 13) for w in inst.workers)),))
    for width in range(56, 96, 3):
        app = app_for(first, now=later.taken_at + 0.5, read_only=True)
        async with app.run_test(size=(width, 24)) as pilot:
            feed(app, first)
            await pilot.pause()
            feed(app, later)
            await pilot.pause()
            await pilot.press("p")
            await pilot.pause()
            head = screen_text(app).splitlines()[0].rstrip()
            assert "PAUSED" in head and "READ-ONLY" in head, head
            assert head.endswith("req/s 52"), (width, head)  # 4 workers x 13 in 1 s
            assert "…" not in head and ("busy 4/4" in head or "uWSGI req/s" not in head), head
            if "master" not in head:
                assert "uWSGI 2.0" not in head, (width, head)  # the version went first

"""`p` in a worker's detail: the detail freezes with the main screen and says PAUSED. A review
saw `requests 28` and `avg rt` frozen while `running 47s` went on to 51s and `nginx 504 in 13
s` to 9 s, with nothing on screen saying the figures were from different moments."""

from __future__ import annotations

from dataclasses import replace

from tests.tui_support import app_for, feed, recorded, screen_text
from tui.screens.worker_detail import WorkerDetailScreen


def _ages(text: str) -> list[str]:
    return [w for w in text.split() if w.endswith("s") and w[:-1].isdigit()]


async def test_paused_the_detail_keeps_its_ages_and_says_paused_then_resumes() -> None:
    host = recorded()
    clock = [host.taken_at + 3.0]
    app = app_for(host)
    app.clock = lambda: clock[0]
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, WorkerDetailScreen)
        before = screen_text(app)
        assert "PAUSED" not in before and _ages(before)
        await pilot.press("p")
        await pilot.pause()
        paused = screen_text(app)
        assert "PAUSED" in paused and "polling goes on" in paused
        clock[0] += 10.0  # ten seconds of polls while paused
        feed(app, replace(host, taken_at=host.taken_at + 10.0))
        await pilot.pause()
        later = screen_text(app)
        assert "PAUSED" in later
        assert _ages(later) == _ages(before), (_ages(before), _ages(later))
        await pilot.press("p")
        await pilot.pause()
        resumed = screen_text(app)
        assert "PAUSED" not in resumed
        assert _ages(resumed) != _ages(before)  # the same requests, ten seconds older


async def test_the_footer_says_resume_while_paused() -> None:
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=(120, 36)) as pilot:
        feed(app, host)
        await pilot.pause()
        footer = screen_text(app).splitlines()[-1]
        assert "p Pause" in footer, footer
        await pilot.press("p")
        await pilot.pause()
        footer = screen_text(app).splitlines()[-1]
        assert "p Resume" in footer and "Pause" not in footer, footer
        await pilot.press("p")
        await pilot.pause()
        assert "p Pause" in screen_text(app).splitlines()[-1]

"""A terminal resized while another screen is on top: the main screen comes back laid out for
the new size. A review shrank tmux from 200x50 to 80x24 with the stack screen open; after Esc
the side panel kept its 56 columns and the worker list had 24 (`✖ CRIT    84s CLIENT G…`),
until the terminal went up and down again: Textual restyles only the top screens when an App
class changes."""

from __future__ import annotations

import pytest

from tests.test_tui_stack import stack_of, stuck
from tests.tui_support import app_for, feed, recorded
from tui.screens.stack import StackScreen


@pytest.mark.parametrize("over", ["stack", "detail", "help"])
@pytest.mark.parametrize(("start", "end", "side"), [((200, 50), (80, 24), 35),
                                                    ((80, 24), (200, 50), 56)])
async def test_the_main_screen_is_laid_out_for_the_size_it_comes_back_to(
        over: str, start: tuple[int, int], end: tuple[int, int], side: int) -> None:
    host = recorded()
    app = app_for(host)
    async with app.run_test(size=start) as pilot:
        feed(app, host)
        await pilot.pause()
        main = app.screen
        if over == "stack":
            worker, request = stuck(host)[0]
            app.push_screen(StackScreen("web-1", stack_of(worker, request, host.taken_at),
                                        "killed", host.taken_at))
        else:
            await pilot.press("enter" if over == "detail" else "question_mark")
        await pilot.pause()
        assert app.screen is not main
        await pilot.resize_terminal(*end)
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is main
        width = main.query_one("#side").styles.width
        assert width is not None and width.value == side
        workers = main.query_one("WorkerList")
        assert workers.size.width >= end[0] - side - 3, workers.size

"""Containers drawn as background only (Textual's `Widget.BLANK`).

Why: a frame draws every widget that overlaps the changed regions, and the changed regions of
one poll (the header's figures at the top, a sparkline near the bottom) span most of the
screen. The containers behind the widgets (the screen, the tab switcher, the host pane, the
body and main columns) are then rendered line by line through Textual's style cache though
their children cover them: 0.07 ms each per frame, ~0.45 ms of a ~4.7 ms frame (headless replay
of 60 real polls at 120x36, medians, issue 12). BLANK makes each a single blank strip. Only for
containers with no border and no content of their own: BLANK skips both.
"""

from __future__ import annotations

from textual.containers import Horizontal, Vertical
from textual.widget import Widget


class BlankHorizontal(Horizontal):
    """A Horizontal with no border or content of its own (see the module docstring)."""

    BLANK = True


class BlankVertical(Vertical):
    """A Vertical with no border or content of its own (see the module docstring)."""

    BLANK = True


def mark_blank(widget: Widget) -> None:
    """The same for a container Textual creates (the screen, a TabbedContent's switcher):
    BLANK is read from the instance when it renders."""
    setattr(widget, "BLANK", True)  # noqa: B010 - a ClassVar set on one instance, on purpose

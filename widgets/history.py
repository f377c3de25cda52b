"""History: the last minute of queue depth, busy workers and req/s as text sparklines.

A number says where things are; the trend says whether the reload is draining or the queue is
still filling. One widget renders the three series as block characters in a single Text (three
`Sparkline` widgets plus labels would be seven widgets to lay out on every poll). Each series
is scaled to its own maximum over the window, printed at the end of the line, so a flat line of
"█" at max 1 is not mistaken for a full queue. Zero is a blank, any non-zero value at least "▁";
an unknown req/s (first sample, nginx down) is "·".

The whole history is drawn whatever the width (the README promises a minute): where there are
more samples than cells, each cell is the largest of a few consecutive samples, counted from
the newest, so a one-second queue spike is never averaged or dropped away. The side panel is
35-56 columns wide: one cell per second there would show 12-40 s, not a minute. The figures
(now, max) are placed first and the sparkline gets what is left: a figure is never cut.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from math import ceil
from typing import ClassVar

from rich.text import Text
from textual.widget import Widget

from widgets._fmt import fmt_count, fmt_rate
from widgets._styles import StyleGetter, StyleMemo

BLOCKS = " ▁▂▃▄▅▆▇█"
UNKNOWN = "·"
LABEL_WIDTH = 6
MIN_SPARK_WIDTH = 12
DEFAULT_SAMPLES = 60


def sparkline(values: Iterable[float | None], maximum: float) -> str:
    """One character per value, scaled so that `maximum` is a full block."""
    out = []
    for v in values:
        if v is None:
            out.append(UNKNOWN)
        elif v <= 0 or maximum <= 0:
            out.append(BLOCKS[0])
        else:
            out.append(BLOCKS[max(1, min(8, ceil(v / maximum * 8)))])
    return "".join(out)


HISTORY_CLASSES = frozenset({"history--label", "history--spark", "history--value"})
# The component rules, nested in a widget's DEFAULT_CSS (History's and the side panel's).
HISTORY_STYLES = """
        & > .history--label { color: $text-muted; }
        & > .history--spark { color: $text-accent; }
        & > .history--value { text-style: bold; }
"""


class History(StyleMemo, Widget):
    """Three lines: `queue`, `busy`, `req/s`, each a sparkline then the current value and the
    window's maximum. Feed it with `push()` once per poll."""

    COMPONENT_CLASSES: ClassVar[set[str]] = set(HISTORY_CLASSES)

    DEFAULT_CSS = f"""
    History {{
        height: 3;
        width: 1fr;
        {HISTORY_STYLES}
    }}
    """

    def __init__(
        self,
        max_samples: int = DEFAULT_SAMPLES,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        """`max_samples`: how many polls to keep (60 at the default 1 s interval is a minute);
        fewer are drawn when the widget is narrower."""
        super().__init__(name=name, id=id, classes=classes)
        self._queue: deque[int] = deque(maxlen=max_samples)
        self._busy: deque[int] = deque(maxlen=max_samples)
        self._rps: deque[float | None] = deque(maxlen=max_samples)

    @property
    def max_samples(self) -> int:
        return self._queue.maxlen or 0

    def push(self, queue: int, busy: int, rps: float | None) -> None:
        """Append one poll's figures (the oldest sample falls off the window)."""
        self._queue.append(queue)
        self._busy.append(busy)
        self._rps.append(rps)
        self.refresh()

    def set_series(
        self, queue: Sequence[int], busy: Sequence[int], rps: Sequence[float | None]
    ) -> None:
        """Replace the three series (e.g. a history kept by the app for a host); only the last
        `max_samples` of each are kept. Repaints only when something changed."""
        pairs = ((self._queue, queue), (self._busy, busy), (self._rps, rps))
        n = self.max_samples
        if all(list(series) == list(values)[-n:] for series, values in pairs):
            return
        for series, values in pairs:
            series.clear()
            series.extend(values)  # type: ignore[arg-type]
        self.refresh()

    def clear(self) -> None:
        self.set_series((), (), ())

    def series(self) -> tuple[list[int], list[int], list[float | None]]:
        """Copies of the three series, oldest first."""
        return list(self._queue), list(self._busy), list(self._rps)

    def render(self) -> Text:
        return history_text(self._queue, self._busy, self._rps, self.content_region.width,
                            self.component_style)


def history_text(queue: Sequence[int], busy: Sequence[int], rps: Sequence[float | None],
                 width: int, get: StyleGetter) -> Text:
    """The three sparkline lines in `width` cells (History's, and the side panel's)."""
    return Text("\n", no_wrap=True, end="").join(history_lines(queue, busy, rps, width, get))


def history_lines(queue: Sequence[int], busy: Sequence[int], rps: Sequence[float | None],
                  width: int, get: StyleGetter) -> list[Text]:
    """history_text()'s lines, unjoined (what the side panel lays out): each at most `width`
    cells whenever the label and the current figure fit."""
    label_style = get("history--label")
    spark_style = get("history--spark")
    value_style = get("history--value")
    lines: list[Text] = []
    rows: tuple[tuple[str, Sequence[float | None], Callable[[float | None], str]], ...] = (
        ("queue", queue, _fmt_int),
        ("busy", busy, _fmt_int),
        ("req/s", rps, fmt_rate),
    )
    for label, values, fmt in rows:
        # The max is the whole history's (every sample is drawn), so the figure budgeted
        # is the figure printed: a window's max formatted wider than the history's ("9.5"
        # against "10") once pushed "max 9.5" one cell past the panel.
        top = max((v for v in values if v is not None), default=None)
        now = f" {fmt(values[-1]) if values else '?':>6}"
        scale = f"  max {fmt(top) if top is not None else '?'}"
        head = f"{label:<{LABEL_WIDTH}} "
        if width - len(head) - len(now) - len(scale) < MIN_SPARK_WIDTH:
            scale = ""  # a narrow panel: the trend matters more than its scale
        if width < len(head) + len(now):
            head = ""  # narrower still: the figure before its label
        room = max(0, width - len(head) - len(now) - len(scale))
        text = Text(no_wrap=True, end="")
        lines.append(text)
        text.append(head, label_style)
        text.append(sparkline(bucket_max(values, room), top or 0).rjust(room), spark_style)
        text.append(now, value_style)
        text.append(scale, label_style)
    return lines


def bucket_max(values: Sequence[float | None], cells: int) -> list[float | None]:
    """`values` in at most `cells` cells: one each when they fit, else each cell the largest of
    the same number of consecutive values, counted from the newest (the oldest cell may hold
    fewer). A cell of unknowns only is unknown."""
    if cells <= 0:
        return []
    if not isinstance(values, list | tuple):
        values = list(values)  # a deque: no slices
    n = len(values)
    if n <= cells:
        return list(values)
    per = -(-n // cells)  # ceil
    out: list[float | None] = []
    for end in range(n, 0, -per):
        known = [v for v in values[max(0, end - per):end] if v is not None]
        out.append(max(known) if known else None)
    out.reverse()
    return out


def _fmt_int(value: float | None) -> str:
    return "?" if value is None else fmt_count(int(value))

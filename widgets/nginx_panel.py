"""NginxPanel: nginx's stub_status counters, and why they are missing when they are.

`dropped` (accepts - handled) is the one number here that is an alarm by itself: nginx ran out
of worker_connections. It is shown reversed in the error colour as soon as it is above zero.
The error message comes from the source (it may quote a URL or a body) and is shown as plain
text.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from stackmon.model import NginxStatus
from widgets._fmt import fmt_count, fmt_rate, plain
from widgets._styles import StyleMemo

# active, reading, writing, waiting, dropped, and the rate as shown.
_Figures = tuple[int, int, int, int, int, str]


class NginxPanel(StyleMemo, Widget):
    """`active 291  reading 6  writing 179  waiting 106  dropped 0  req/s 45.2`, flowed onto
    more lines when the panel is narrow (the app titles the panel "nginx").

    `set_status(None)`: "nginx: not configured"; with `error`: an error line (below the last
    figures when there are some). Repaints only when what it shows changed.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "nginx-panel--title",
        "nginx-panel--label",
        "nginx-panel--dropped",
        "nginx-panel--error",
        "nginx-panel--muted",
    }

    DEFAULT_CSS = """
    NginxPanel {
        height: auto;
        width: 1fr;
        & > .nginx-panel--title { text-style: bold; }
        & > .nginx-panel--label { color: $text-muted; }
        & > .nginx-panel--dropped { color: $error; text-style: bold reverse; }
        & > .nginx-panel--error { color: $text-error; }
        & > .nginx-panel--muted { color: $text-muted; text-style: italic; }
    }
    """

    def __init__(
        self,
        status: NginxStatus | None = None,
        error: str | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._shown = self._figures(status, error)
        self.set_class(bool(error), "-error")
        self.set_class(status is not None and status.dropped > 0, "-dropped")

    @staticmethod
    def _figures(status: NginxStatus | None,
                 error: str | None) -> tuple[_Figures | None, str | None]:
        # Only what is displayed: a new sample with the same figures repaints nothing.
        if status is None:
            return (None, error)
        return (
            (status.active, status.reading, status.writing, status.waiting, status.dropped,
             fmt_rate(status.requests_per_s)),
            error,
        )

    def set_status(self, status: NginxStatus | None, error: str | None = None) -> None:
        """The latest sample (None: nginx is not monitored on this host) and the source's
        error message, if the last poll failed."""
        shown = self._figures(status, error)
        if shown == self._shown:
            return
        width = self.content_region.width
        height_before = self._height(width)
        self._shown = shown
        self.set_class(bool(error), "-error")
        self.set_class(status is not None and status.dropped > 0, "-dropped")
        self.refresh(layout=self._height(width) != height_before)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self._height(width)

    def _height(self, width: int) -> int:
        if width <= 0 or not self.is_attached:
            return 1
        return len(self._build(width).wrap(self.app.console, width))

    def render(self) -> Text:
        return self._build(self.content_region.width)

    def _build(self, width: int) -> Text:
        """The figures flowed into lines of at most `width` cells (a figure is never split from
        its name), then the error, which may wrap."""
        figures, error = self._shown
        style = self.get_component_rich_style
        label = style("nginx-panel--label", partial=True)
        error_style = style("nginx-panel--error", partial=True)
        text = Text(end="")
        if figures is None:
            text.append("nginx: ", style("nginx-panel--title", partial=True))
            if error:
                text.append(plain(error), error_style)
            else:
                text.append("not configured", style("nginx-panel--muted", partial=True))
            return text
        assert isinstance(figures, tuple)
        active, reading, writing, waiting, dropped, rate = figures
        chunks: list[Text] = [
            Text.assemble((f"{name} ", label), fmt_count(value))
            for name, value in (("active", active), ("reading", reading),
                                ("writing", writing), ("waiting", waiting))
        ]
        if dropped > 0:
            chunks.append(Text(f" dropped {fmt_count(dropped)} ",
                               style("nginx-panel--dropped", partial=True)))
        else:
            chunks.append(Text.assemble(("dropped ", label), str(dropped)))
        chunks.append(Text.assemble(("req/s ", label), rate))
        line_len = 0
        for chunk in chunks:
            if line_len and line_len + 2 + chunk.cell_len > width:
                text.append("\n")
                line_len = 0
            elif line_len:
                text.append("  ")
                line_len += 2
            text.append_text(chunk)
            line_len += chunk.cell_len
        if error:
            text.append("\n")
            text.append("last poll failed: ", label)
            text.append(plain(error), error_style)
        return text

"""A widget whose content is one Text wrapped to its width."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget


class WrappedText(Widget):
    """Content is `_build(width)`; its height is that text's wrapped line count. `_reshow`
    applies a change and asks for a layout only when the height changed with it (a relayout
    repaints every widget in the screen's bounding box: most polls change figures, not lines)."""

    def _build(self, width: int) -> Text:
        raise NotImplementedError

    def _reshow(self, apply: Callable[[], None]) -> None:
        width = self.content_region.width
        height_before = self._height(width)
        apply()
        self.refresh(layout=self._height(width) != height_before)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self._height(width)

    def _height(self, width: int) -> int:
        if width <= 0 or not self.is_attached:
            return 1
        return len(self._build(width).wrap(self.app.console, width))

    def render(self) -> Text:
        return self._build(self.content_region.width)

"""Component styles that survive a repaint.

Textual 8 clears a widget's component-style cache on every refresh(), so a widget that
repaints once a second recomputes each `get_component_rich_style()` (about 0.3 ms each here,
several per render) although the CSS has not changed. These widgets keep their own memo and
drop it only when Textual says their styles changed (classes, theme, parent's background).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.style import Style

# A component class name ("gauge--label") to its style, partial (only what the CSS sets): how
# the text builders shared by a widget and the side panel get their styles without a widget.
StyleGetter = Callable[[str], Style]


class StyleMemo:
    """Mixin for Widget subclasses: memoised get_component_rich_style()."""

    _style_memo: dict[tuple[Any, ...], Style]

    def get_component_rich_style(self, *names: str, partial: bool = False,
                                 default: Style | None = None) -> Style:
        memo = self.__dict__.get("_style_memo")
        if memo is None:
            memo = self._style_memo = {}
        key = (names, partial, default)
        style = memo.get(key)
        if style is None:
            style = memo[key] = super().get_component_rich_style(  # type: ignore[misc]
                *names, partial=partial, default=default)
        return style

    def component_style(self, name: str) -> Style:
        """The partial style of one component class (a StyleGetter)."""
        return self.get_component_rich_style(name, partial=True)

    def notify_style_update(self) -> None:
        self.__dict__.pop("_style_memo", None)
        super().notify_style_update()  # type: ignore[misc]


class LineStyles:
    """Mixin for the line-API lists (WorkerList, FleetTable): their component styles by short
    name and the style under a whole line (cursor or not), kept with their cached Strips until
    Textual says the styles changed. `rich_style` walks the DOM and a component style costs a
    CSS lookup: once per style change, not once per line. Subclasses set STYLE_PREFIX and
    create `_styles` and `_strips` in their __init__."""

    STYLE_PREFIX = ""
    _styles: dict[str, Style]
    _strips: dict[Any, Any]

    def notify_style_update(self) -> None:
        """Styles changed (theme, focus): every cached Strip carries old colours."""
        super().notify_style_update()  # type: ignore[misc]
        self._styles.clear()
        self._strips.clear()

    def _style(self, name: str) -> Style:
        style = self._styles.get(name)
        if style is None:
            style = self._styles[name] = self.get_component_rich_style(  # type: ignore[attr-defined]
                f"{self.STYLE_PREFIX}{name}", partial=True)
        return style

    def _line_style(self, is_cursor: bool) -> Style:
        """The style under a whole line (background included)."""
        key = "__cursor__" if is_cursor else "__base__"
        style = self._styles.get(key)
        if style is None:
            style = self.rich_style  # type: ignore[attr-defined]
            if is_cursor:
                style += self.get_component_rich_style(  # type: ignore[attr-defined]
                    f"{self.STYLE_PREFIX}cursor")
            self._styles[key] = style
        return style

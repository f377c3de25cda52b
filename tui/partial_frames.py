"""A frame renders only the widgets, and only the rows, that its changed lines cross.

Why: Textual 8's Compositor.render_partial_update takes the bounding box of the changed
regions and renders every widget whose clip overlaps it, each widget whole, then keeps the
changed lines. One poll changes the host header's figures at the top and a sparkline near the
bottom, so every frame rendered nearly every widget of the screen, each costing ~0.1-0.2 ms
of fixed style work (background colours, filters) even when its lines came from cache: the
Footer, the scrollbar, the events lines. Rendering each widget's rows from its first to its
last changed line, and no widget that no changed line crosses, made a frame 23 % cheaper
(2.63 -> 2.03 ms median, headless replay of 60 real demo polls at 120x36, issue 12).

What reaches the terminal is the same: Textual writes only the changed lines' spans, and for
those lines this renders the same widgets, in the same front-to-back order, with the same
strips (a widget's rows are rendered through the same style cache, cropped to rows only; the
columns are the widget's visible ones, as Textual does). tests/test_partial_frames.py checks
every partial frame of real screens against a full render of the same screen.

If Textual's compositor no longer has what this relies on, nothing is patched (Textual is
pinned below 9 in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from textual._compositor import Compositor
from textual.geometry import Region
from textual.strip import Strip

_ORIGINAL = Compositor._render_chops


def _render_changed_rows(self: Compositor, crop: Region,
                         is_rendered_line: Callable[[int], bool]
                         ) -> Sequence[Mapping[int, Strip | None]]:
    """Compositor._render_chops, rendering only the rows that will be written."""
    cuts = self.cuts
    chops: list[dict[int, Strip | None]] = [dict.fromkeys(cut_set[:-1]) for cut_set in cuts]
    intersection = Region.intersection
    for widget, (region, clip) in self.visible_widgets.items():
        shown = intersection(region, clip)
        rows = intersection(shown, crop)
        if not rows.width or not rows.height:
            continue
        changed = [y for y in rows.line_range if is_rendered_line(y)]
        if not changed:
            continue
        first, last = changed[0], changed[-1] + 1
        x, right = shown.x, shown.right
        strips = widget.render_lines(Region(x - region.x, first - region.y, shown.width,
                                            last - first))
        for y, strip in zip(range(first, last), strips, strict=False):
            if not is_rendered_line(y):
                continue
            line = chops[y]
            final_cuts = [cut for cut in cuts[y] if right >= cut >= x]
            for cut, piece in zip(final_cuts, strip.divide([c - x for c in final_cuts[1:]]),
                                  strict=False):
                if line.get(cut) is None:  # front to back: the first widget wins
                    line[cut] = piece
    return chops


def install() -> bool:
    """Patch Textual's compositor (once); False when its internals are not the expected."""
    if Compositor._render_chops is not _ORIGINAL:
        return True
    needed = ("cuts", "visible_widgets", "render_partial_update", "render_strips")
    if not all(hasattr(Compositor, name) for name in needed):
        return False
    Compositor._render_chops = _render_changed_rows  # type: ignore[method-assign,assignment]
    return True


def uninstall() -> None:
    """Textual's own compositor again (tests compare the two)."""
    Compositor._render_chops = _ORIGINAL  # type: ignore[method-assign]

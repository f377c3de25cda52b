"""KeysFooter: Textual's Footer, updated in place instead of rebuilt on every focus change.

Why: Textual's Footer recomposes (removes and mounts a FooterKey widget per key, each styled
from scratch) every time the screen's bindings may have changed, and it is told so on every
focus change, once per change: switching between the fleet overview and a host's tab moved the
focus two or three times and rebuilt the Footer as often, 20-40 ms each with 500 hosts at
200x50 (bench/bench_overview.py), after the frame and ahead of the next key.

Here a burst of notifications costs one look at the bindings; nothing happens when the keys
shown are the ones already shown (most focus changes), and a different set of keys reuses the
FooterKey widgets already mounted (their text, action, tooltip and disabled state are set in
place; keys not needed any more are hidden, not removed, and mounted only when more are needed
than ever before). What is shown is exactly what Footer.compose() would show; a Footer that
groups bindings (Binding.group) or changes its command-palette key is still recomposed.

Each key also keeps its component styles until its styles change (widgets._styles.StyleMemo):
a FooterKey looked up four of them on every render, and a tab switch lays out the screen and
renders every key, ~0.3 ms each here.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

from rich.cells import cell_len
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.styles import RenderStyles
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey, FooterLabel, KeyGroup

from widgets._styles import StyleMemo


class KeySpec(NamedTuple):
    """One FooterKey as Footer.compose() builds it."""

    key: str
    key_display: str
    description: str
    action: str
    enabled: bool
    tooltip: str


class Shown(NamedTuple):
    """Everything the Footer shows: its keys in order and the command palette's key."""

    keys: tuple[KeySpec, ...]
    palette: KeySpec | None
    grouped: bool  # some bindings share a group: compose() lays them out differently


class MemoFooterKey(StyleMemo, FooterKey):
    """A FooterKey whose component styles are looked up once per style change."""

    def get_component_styles(self, *names: str) -> RenderStyles:
        memo = self.__dict__.setdefault("_component_memo", {})
        styles = memo.get(names)
        if styles is None:
            styles = memo[names] = super().get_component_styles(*names)
        return styles

    def notify_style_update(self) -> None:
        self.__dict__.pop("_component_memo", None)
        super().notify_style_update()


class KeysFooter(Footer):
    """A Footer whose keys are updated in place (see the module docstring)."""

    def __init__(self, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None, show_command_palette: bool = True,
                 compact: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes,
                         show_command_palette=show_command_palette, compact=compact)
        self._update_due = False
        self._shown: Shown | None = None  # None: not known (before the first compose)

    def bindings_changed(self, screen: Screen) -> None:
        """Textual calls this on every focus change: one update for a burst of them, run
        before the next frame is drawn (so a tab switch lays out the screen once)."""
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if self.is_attached and screen is self.screen and not self._update_due:
            self._update_due = True
            self.call_later(self._update_keys)

    def compose(self) -> ComposeResult:
        """Footer.compose() with MemoFooterKeys (Textual's own, when bindings are grouped)."""
        if not self._bindings_ready:
            return
        wanted = self.wanted()
        if wanted.grouped:
            yield from super().compose()
        else:
            self.styles.grid_size_columns = len(wanted.keys)
            yield from (self._new_key(spec) for spec in wanted.keys)
            if wanted.palette is not None:
                spec = wanted.palette
                yield MemoFooterKey(spec.key, spec.key_display, spec.description, spec.action,
                                    classes="-command-palette", disabled=not spec.enabled,
                                    tooltip=spec.tooltip)
        self._shown = wanted

    def wanted(self) -> Shown:
        """What Footer.compose() would show now."""
        active = self.screen.active_bindings
        by_action: defaultdict[str, list[tuple[Binding, bool, str]]] = defaultdict(list)
        for _node, binding, enabled, tooltip in active.values():
            if binding.show:
                by_action[binding.action].append((binding, enabled, tooltip))
        keys = []
        groups: defaultdict[object, int] = defaultdict(int)
        for multi in by_action.values():
            binding, enabled, tooltip = multi[0]
            if binding.group is not None:
                groups[binding.group] += 1
            keys.append(KeySpec(binding.key, self.app.get_key_display(binding),
                                binding.description, binding.action, enabled, tooltip))
        palette = None
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            found = active.get(self.app.COMMAND_PALETTE_BINDING)
            if found is not None:
                _node, binding, enabled, _tooltip = found
                palette = KeySpec(binding.key, self.app.get_key_display(binding),
                                  binding.description, binding.action, enabled,
                                  binding.tooltip or binding.description)
        return Shown(tuple(keys), palette, any(n > 1 for n in groups.values()))

    async def _update_keys(self) -> None:
        self._update_due = False
        if not self.is_attached or not self._bindings_ready:
            return
        wanted = self.wanted()
        if wanted == self._shown:
            return
        if await self._reuse(wanted):
            self._shown = wanted
        else:
            await self.recompose()  # compose() sets _shown

    async def _reuse(self, wanted: Shown) -> bool:
        """Show `wanted` with the FooterKeys already mounted; False: recompose instead."""
        if (wanted.grouped or self._shown is None or self._shown.grouped
                or wanted.palette != self._shown.palette
                or any(isinstance(w, KeyGroup | FooterLabel) for w in self.children)):
            return False
        pool = [k for k in self.query_children(FooterKey)
                if not k.has_class("-command-palette")]
        missing = [self._new_key(spec) for spec in wanted.keys[len(pool):]]
        if missing:
            palette = [k for k in self.query_children(FooterKey)
                       if k.has_class("-command-palette")]
            await self.mount_all(missing, before=palette[0] if palette else None)
        for key, spec in zip(pool, wanted.keys, strict=False):
            _set_key(key, spec)
        for key in pool[len(wanted.keys):]:
            key.display = False
        return True

    def _new_key(self, spec: KeySpec) -> FooterKey:
        return MemoFooterKey(spec.key, spec.key_display, spec.description, spec.action,
                         disabled=not spec.enabled,
                         tooltip=spec.tooltip).data_bind(compact=Footer.compact)


def _set_key(key: FooterKey, spec: KeySpec) -> None:
    """A mounted FooterKey made to show `spec` (what FooterKey.__init__ sets, in place)."""
    width = cell_len(key.key_display) + cell_len(key.description)
    if key.display and spec == KeySpec(key.key, key.key_display, key.description, key.action,
                                       not key._disabled, str(key.tooltip or "")):
        return
    key.key, key.key_display, key.description, key.action = (
        spec.key, spec.key_display, spec.description, spec.action)
    key._disabled = not spec.enabled
    key.set_class(not spec.enabled, "-disabled")
    key.tooltip = spec.tooltip or None
    relayout = not key.display or width != cell_len(spec.key_display) + cell_len(
        spec.description)
    key.display = True
    key.refresh(layout=relayout)

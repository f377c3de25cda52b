"""ModalKeys: a dialog's own key line over the main screen's Footer.

Why: a modal screen has no Footer, so the main screen's stayed visible under it, dimmed but
readable, and it was wrong: `⏎ Detail` under the kill dialog, where Enter sends SIGTERM, and
under the reload dialog, where it starts a reload. This line is docked where the Footer is
and covers it, listing the dialog's keys in the Footer's look.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import Static


class ModalKeys(Static):
    """The keys of the dialog it is composed in, drawn over the Footer's row."""

    DEFAULT_CSS = """
    ModalKeys {
        dock: bottom; width: 100%; height: 1;
        background: $footer-background; color: $footer-foreground;
        text-wrap: nowrap; text-overflow: ellipsis;
    }
    """

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__(keys_line(keys))

    def set_keys(self, keys: Sequence[tuple[str, str]]) -> None:
        """When what a key does changes (the reload dialog's Enter follows its default)."""
        self.update(keys_line(keys))


def keys_line(keys: Sequence[tuple[str, str]]) -> Text:
    """` t/⏎ SIGTERM  k SIGKILL ...`: each key bold, its meaning after it."""
    text = Text()
    for key, label in keys:
        text.append(f" {key} ", "bold")
        text.append(f"{label} ")
    return text

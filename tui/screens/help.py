"""The `?` screen: every key that applies here, generated from the action registry."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.actions import ACTIONS, key_label
from widgets.modal_keys import ModalKeys

LEGEND = (
    ("SLOW", "bold black on yellow", "a request running past the slow threshold"),
    ("CRIT", "bold white on red", "a request running past the critical threshold"),
)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 80%; max-width: 90; height: auto; max-height: 90%;
        border: round $accent; padding: 0 1; background: $surface;
    }
    """
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, read_only: bool, thresholds: tuple[float, float],
                 one_tab: bool = False) -> None:
        """one_tab: nothing to switch to, so the tab-switching keys are not listed (they
        only say so when pressed); `o` or an alarm tab brings them back."""
        super().__init__()
        self.read_only = read_only
        self.thresholds = thresholds
        self.one_tab = one_tab

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for spec in ACTIONS:
            if (self.read_only and spec.mutating) or (self.one_tab and spec.tabs) \
                    or not spec.listed:
                continue
            table.add_row(key_label(spec), spec.help)
        table.add_row("ctrl+p", "Command palette: every action above, by name.")
        table.add_row("↑↓ j k", "Move between workers; PgUp/PgDn/Home/End to jump.")
        legend = Text()
        slow, critical = self.thresholds
        for label, style, meaning in LEGEND:
            legend.append(f" {label} ", style)
            legend.append(f"  {meaning}\n")
        legend.append(f"Thresholds: slow >= {slow:g}s, critical >= {critical:g}s.")
        if self.read_only:
            legend.append("\nRead-only mode: actions that change the stack are disabled.")
        with VerticalScroll() as scroll:
            # The key line below (ModalKeys) covers the main screen's Footer; how to leave and
            # scroll is said on the frame, where it shows at every size.
            scroll.border_subtitle = "Esc close · ↑↓ PgUp PgDn scroll"
            yield Static(Text("stackmon keys", style="bold"))
            yield Static(table)
            yield Static(legend)
        yield ModalKeys((("Esc/?", "close"), ("↑↓ PgUp PgDn", "scroll")))

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)

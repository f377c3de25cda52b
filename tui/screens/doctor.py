"""The doctor screen: `stackmon doctor` for the selected host, inside the TUI.

The diagnosis reads config files and takes a second live sample, so the app runs it in a
thread worker and hands the finished Report to this screen; until then it says what it is
doing. The text is the doctor's own 80-column rendering (file:line evidence, why, fix), shown
literally with the severities coloured.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from stackmon.doctor.facts import Report
from stackmon.doctor.render import render_text
from stackmon.redact import visible

SEVERITY_STYLE = {"[critical]": "bold white on red", "[warn]": "bold black on yellow",
                  "[info]": "bold cyan"}


def render_report(host: str, report: Report | None, width: int) -> Text:
    """The report as Text (pure: the screen and its tests use it)."""
    if report is None:
        return Text.assemble(("Diagnosing ", "bold"), (visible(host), "bold"),
                             ": reading the running instances' configs, nginx's config and "
                             "the kernel's settings, and taking a second sample...")
    # The report quotes configuration (host names, paths): every line shown literally.
    rendered = render_text(report, max(60, min(width, 100)))
    body = Text("\n".join(map(visible, rendered.split("\n"))))
    for word, style in SEVERITY_STYLE.items():
        body.highlight_words([word], style)
    for heading in ("CRITICAL", "WARNINGS", "INFO", "Checked:", "Not checked:"):
        body.highlight_regex(rf"(?m)^{heading}$", "bold underline")
    return body


class DoctorScreen(Screen[None]):
    DEFAULT_CSS = """
    DoctorScreen > VerticalScroll { padding: 0 1; }
    """
    BINDINGS = [Binding("escape,q", "close", "Back")]

    def __init__(self, host_index: int, host_name: str) -> None:
        super().__init__()
        self.host_index = host_index
        self.host_name = host_name
        self.report: Report | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(render_report(self.host_name, None, 80), id="doctor")
        yield Footer()

    def set_report(self, report: Report) -> None:
        self.report = report
        if self.is_mounted:
            width = self.size.width - 6  # padding and the scrollbar
            self.query_one("#doctor", Static).update(
                render_report(self.host_name, report, width))

    def action_close(self) -> None:
        self.dismiss(None)

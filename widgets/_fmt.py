"""Small formatting helpers shared by the widgets (no Textual, no I/O).

Everything that ends up on screen goes through `rich.text.Text` built from plain strings, never
through markup. `plain()` is the last line of defence for text from outside (URIs, socket names,
error messages): the sources already make control characters visible, but a stray newline or
escape in a line-API strip would corrupt the whole screen, so the widgets apply it again.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.cells import cell_len, set_cell_size
from rich.text import Text

# How bad something is, everywhere in the widgets (gauges, host badges): the health model's
# own words, so a widget never grades on its own ("unknown": data we do not have).
from stackmon.health import SEVERITY_RANK, Severity
from stackmon.redact import visible

__all__ = ["SEVERITY_RANK", "Severity", "ellipsize", "flow", "fmt_count", "fmt_ms", "fmt_rate",
           "plain"]

ELLIPSIS = "…"


def plain(text: str) -> str:
    """Untrusted text made safe to put in a single terminal line (controls made visible)."""
    return visible(text)


def ellipsize(text: str, width: int) -> str:
    """`text` cut to at most `width` cells, ending in an ellipsis when something was cut."""
    if width <= 0:
        return ""
    if cell_len(text) <= width:
        return text
    if width == 1:
        return ELLIPSIS
    return set_cell_size(text, width - 1) + ELLIPSIS


def fmt_count(n: int) -> str:
    """An integer in at most ~6 characters: 37, 1024, 123456, 1.2M, 9.2E (fs.file-max is often
    LONG_MAX, which says "no limit" far better as 9.2E than as 19 digits)."""
    if abs(n) < 1_000_000:
        return str(n)
    value = float(n)
    for unit in ("K", "M", "G", "T", "P", "E"):
        value /= 1000
        if abs(value) < 1000 or unit == "E":
            return f"{value:.1f}{unit}" if abs(value) < 100 else f"{value:.0f}{unit}"
    return str(n)  # pragma: no cover - the loop always returns


def fmt_rate(rps: float | None) -> str:
    """Requests per second: "?" when unknown (first sample), one decimal below 10."""
    if rps is None:
        return "?"
    if rps < 10:
        return f"{rps:.1f}"
    return f"{rps:.0f}"


def fmt_ms(ms: float) -> str:
    """A duration in milliseconds in at most 6 characters: 12ms, 950ms, 1.2s, 125s."""
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    return f"{seconds:.1f}s" if seconds < 100 else f"{seconds:.0f}s"


def flow(chunks: Iterable[Text], width: int, into: Text | None = None) -> Text:
    """Chunks on one line, two spaces apart, broken between chunks when the next would pass
    `width` (a figure never split from its name); appended to `into` when given."""
    text = into if into is not None else Text(end="")
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
    return text

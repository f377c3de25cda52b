"""Wrapping that never splits a figure from its unit ("6 s", "oldest 21 s:").

Rich and Textual both break lines at any whitespace, a no-break space included (Python's `\\s`
matches it), so "oldest 21 s: worker 3" came out as "oldest 21" / "s: worker 3" at 80 columns.
Lines are broken here instead, only between words, a number and its unit counting as one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text

# A word, or a number with its unit and what sticks to it ("6 s:", "(15 s)"): a line may break
# between words, not inside one. A no-break space (NBSP) is part of a word, so a label and its
# figure joined by one ("respawns\u00a00") stay together: only spaces, tabs and newlines part
# words here (Python's \s would match NBSP too).
_WORD = re.compile(r"[^ \t\n]*\d (?:s|ms|min)\b[^ \t\n]*[ \t]*|[^ \t\n]+[ \t]*|[ \t]+")
NBSP = "\u00a0"


def break_offsets(line: str, width: int, fold: bool = False) -> list[int]:
    """Where a greedy wrap at `width` cells breaks `line` (a break only before a word). `fold`:
    a word wider than the line is cut every `width` cells, and the words after its last piece
    go on that line (as Rich's overflow="fold" does)."""
    offsets: list[int] = []
    used = 0
    for m in _WORD.finditer(line):
        word = m.group().rstrip()
        cells = cell_len(word)
        if used and used + cells > width:
            offsets.append(m.start())
            used = 0
        if fold and cells > width:
            used = _fold(word, m.start(), width, offsets)
            used += cell_len(m.group()) - cells  # its trailing blanks
            continue
        used += cell_len(m.group())
    return offsets


def _fold(word: str, start: int, width: int, offsets: list[int]) -> int:
    """Offsets cutting `word` (at `start` in its line) every `width` cells; the cells its last
    piece uses."""
    used = 0
    for i, char in enumerate(word):
        w = cell_len(char)
        if used + w > width:
            offsets.append(start + i)
            used = 0
        used += w
    return used


def wrap_line(line: Text, width: int, fold: bool = False) -> list[Text]:
    """One line (no newline) wrapped at `width` cells, units kept, trailing blanks dropped. A
    word longer than the width is folded (`fold`) or stays whole on its line for the caller
    to cut."""
    out = []
    for piece in line.divide(break_offsets(line.plain, width, fold)):
        piece.rstrip()
        out.append(piece)
    return out


def wrap_keeping_units(text: Text, width: int) -> Text:
    """`text` wrapped at `width` cells with "6 s", "15 s" and the like never split: the
    returned lines fit, so that whoever draws them does not wrap them again."""
    if width <= 0:
        return text
    lines = [part for paragraph in text.split("\n", allow_blank=True)
             for part in wrap_line(paragraph, width)]
    out = Text("\n", style=text.style).join(lines)
    out.justify, out.overflow, out.end = text.justify, text.overflow, text.end
    return out


@dataclass(frozen=True, slots=True)
class UnitsKept:
    """A Text drawn wrapped by wrap_keeping_units at whatever width it is given (a dialog's
    width is only known when it is drawn)."""

    text: Text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield wrap_keeping_units(self.text, options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.text)

"""StackView: a worker's Python stack (stackmon.actions.stack.StackResult), read to find where
it is stuck.

Why this shape: the question is "where is the stuck request now?", so the thread serving it
comes first (the core already orders and marks it), and in that thread the innermost frame of
the application's own code is highlighted (`»`, bold reverse: it reads without colour): the
frames under it are the standard library and packages it called into, which say *how* it waits
(a socket read, a lock) but not *why*. Library frames are dimmed. uWSGI core threads that wait
for a request (no Python frames) are one summary line, not a block each.

Paths are cut from the left (`…/demo/app.py:63`) to fit the width: the file name and line are
what one searches for. Every text comes from the traced process (cleaned by the core); it is
appended to Text as plain strings, never markup. The widget does no I/O: the screen traces and
hands it a result, an error message, or "reading…".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.cells import cell_len
from rich.text import Text
from textual.widget import Widget

from stackmon.actions.stack import Frame, StackResult, ThreadStack
from stackmon.redact import visible
from stackmon.stuck import app_frame, is_app_file
from widgets._fmt import ELLIPSIS, ellipsize

HERE = "» "
FRAME_INDENT = "    "
MIN_PATH = 16  # cells a path keeps even on a narrow screen


def _clock(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(epoch).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "?"


def left_cut(text: str, width: int) -> str:
    """`text` cut from the left to `width` cells (`…/demo/app.py:63`): the end of a path is
    the part that names it."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS if width == 1 else ""
    out = text
    while out and cell_len(out) > width - 1:
        out = out[1:]
    return ELLIPSIS + out


def frame_place(frame: Frame) -> str:
    return f"{frame.file}:{frame.line if frame.line is not None else '?'}"


def _frame_line(frame: Frame, width: int, highlight: bool, name_width: int) -> Text:
    text = Text(no_wrap=True, end="")
    app = is_app_file(frame.file)
    style = "bold reverse" if highlight else ("" if app else "dim")
    text.append(FRAME_INDENT[:-2] + (HERE if highlight else "  "), "bold" if highlight else "")
    name = ellipsize(visible(frame.function) or "?", max(8, name_width))
    text.append(name, style)
    pad = max(1, name_width - cell_len(name) + 2)
    text.append(" " * pad)
    room = max(MIN_PATH, width - text.cell_len)
    text.append(left_cut(visible(frame_place(frame)), room), "" if app else "dim")
    return text


def _thread_head(t: ThreadStack, width: int = 1000) -> Text:
    """The thread's name, state and request; the request's URI is cut with … to fit `width`,
    so that its age ("for 19 s") stays on screen at 80 columns."""
    text = Text(no_wrap=True, end="")
    text.append("▶ " if t.marked else "  ", "bold")
    text.append(visible(t.name) or "thread", "bold" if t.marked else "")
    text.append(f" ({t.state})", "dim")
    if t.request is not None:
        age = f" for {t.request.running_s:.0f} s" if t.request.running_s is not None \
            else " for ?"
        text.append("  serving ")
        room = max(12, width - text.cell_len - len(age))
        text.append(ellipsize(visible(f"{t.request.method} {t.request.uri}"), room), "bold")
        text.append(age)
    return text


def _is_waiting_core(t: ThreadStack) -> bool:
    return t.core is not None and not t.frames and not t.marked


def render_stack(result: StackResult, width: int, now: float | None = None,
                 note: str | Sequence[str] = "") -> Text:
    """The stack as lines for `width` cells (pure: the widget and its tests use it). `note`:
    a line, or several, above the stack; each is made visible on its own, so lines stay
    lines while a newline inside one (untrusted text) is still shown escaped."""
    width = max(20, width)
    out = Text(end="")
    head = Text(no_wrap=True, end="")
    head.append(f"pid {result.pid}", "bold")
    head.append(f" · {len(result.threads)} thread{'s' if len(result.threads) != 1 else ''}"
                f" · {_clock(result.taken_at)}")
    if now is not None and now >= result.taken_at:
        head.append(f", {now - result.taken_at:.0f} s ago")
    head.append(f" · {visible(result.source)} {result.took_s * 1000:.0f} ms", "dim")
    if not result.nonblocking:
        head.append(" · blocking: the worker was paused", "dim")
    if result.with_locals:
        head.append(" · locals (redacted)", "dim")
    out.append_text(head)
    # The core's sentence names the CLI's `>>` marker; here the marked thread has `▶`.
    reason = result.marked_reason.replace("(>>)", "(▶)")
    notes = (note,) if isinstance(note, str) else tuple(note)
    for line in (*notes, reason, *result.notes):
        if line:
            out.append("\n")
            out.append(visible(line), "italic")
    marked = result.marked
    here = app_frame(marked.frames) if marked is not None else None
    waiting = 0
    names = [cell_len(visible(f.function)) for t in result.threads for f in t.frames]
    name_width = min(max(names, default=8), max(12, width // 3))
    for t in result.threads:
        if _is_waiting_core(t):
            waiting += 1
            continue
        out.append("\n")
        out.append_text(_thread_head(t, width))
        if not t.frames:
            out.append("\n" + FRAME_INDENT)
            out.append("(no Python frames)", "dim italic")
        for f in t.frames:
            out.append("\n")
            out.append_text(_frame_line(f, width, f is here, name_width))
            for v in f.locals or ():
                out.append("\n")
                local = Text(no_wrap=True, end="")
                local.append(FRAME_INDENT * 2)
                local.append(visible(v.name), "italic")
                local.append(" = ")
                local.append(ellipsize(visible(v.value), max(10, width - local.cell_len)))
                out.append_text(local)
    if waiting:
        out.append("\n")
        out.append(f"  {waiting} other uWSGI core thread{'s' if waiting != 1 else ''} "
                   "waiting for a request (no Python frames)", "dim")
    if marked is None:
        out.append("\n")
        out.append("No thread is marked as serving the stuck request: see the threads above.",
                   "dim")
    elif here is None and marked.frames:
        out.append("\n")
        out.append("The marked thread has no frame of the application's own code.", "dim")
    if result.truncated:
        out.append("\n")
        out.append("(cut: more threads, frames or locals than shown)", "dim")
    return out


class StackView(Widget):
    """One worker's stack, or why there is none (yet). Fed by its screen: `show_hint`,
    `show_loading`, `show_error`, `show_stack`."""

    DEFAULT_CSS = """
    StackView { height: auto; }
    """

    def __init__(self, hint: str = "", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._hint = hint
        self._message: Text | None = None
        self.result: StackResult | None = None
        self._origin = ""  # where the stack comes from ("captured before the kill")
        self._note = ""  # what changed since (the worker respawned)
        self._now: float | None = None

    # --- what to show ------------------------------------------------------------------

    def show_hint(self, hint: str) -> None:
        self._hint, self._message, self.result = hint, None, None
        self._changed()

    def show_loading(self, text: str) -> None:
        """While py-spy runs: the previous stack, if any, stays under the line."""
        self._message = Text(text, style="italic")
        self._changed()

    def show_error(self, text: str) -> None:
        message = Text("Stack not read: ", style="bold", end="")
        message.append(visible(text), "bold red")
        self._message = message
        self._changed()

    def show_stack(self, result: StackResult, *, note: str = "",
                   now: float | None = None) -> None:
        self.result, self._origin, self._now, self._message = result, note, now, None
        self._note = ""
        self._changed()

    def set_note(self, note: str, now: float | None = None) -> None:
        if (note, now) != (self._note, self._now):
            self._note, self._now = note, now
            if self.result is not None:
                self._changed()

    @property
    def message(self) -> str:
        """The line shown above the stack (loading, error), plain; "" when none."""
        return self._message.plain if self._message is not None else ""

    def _changed(self) -> None:
        self.refresh(layout=True)

    # --- drawing -----------------------------------------------------------------------

    def render(self) -> Text:
        width = self.content_region.width or 80
        out = Text(end="")
        if self._message is not None:
            out.append_text(self._message)
        if self.result is not None:
            if out.plain:
                out.append("\n")
            # Two lines, not one joined with "\n": render_stack escapes control characters
            # in each (a joined one showed a literal \x0a between them).
            notes = [n for n in (self._origin, self._note) if n]
            out.append_text(render_stack(self.result, width, self._now, notes))
        elif not out.plain:
            out.append(self._hint, "dim")
        return out

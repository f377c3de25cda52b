"""NginxPanel: nginx's stub_status counters, and why they are missing when they are.

`dropped` (accepts - handled) is the one number here that is an alarm by itself: nginx ran out
of worker_connections. It is shown reversed in the error colour as soon as it is above zero.
The error message comes from the source (it may quote a URL or a body) and is shown as plain
text.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text

from stackmon.model import NginxStatus
from widgets._fmt import flow, fmt_count, fmt_rate, plain
from widgets._styles import StyleGetter, StyleMemo
from widgets._wrapped import WrappedText

# active, reading, writing, waiting, dropped, and the rate as shown.
_Figures = tuple[int, int, int, int, int, str]
# What the panel shows: the figures (None: nginx not monitored) and the source's error.
NginxShown = tuple[_Figures | None, str | None]

NGINX_CLASSES = frozenset({
    "nginx-panel--title",
    "nginx-panel--label",
    "nginx-panel--dropped",
    "nginx-panel--error",
    "nginx-panel--muted",
})
# The component rules, nested in a widget's DEFAULT_CSS (NginxPanel's and the side panel's).
NGINX_STYLES = """
        & > .nginx-panel--title { text-style: bold; }
        & > .nginx-panel--label { color: $text-muted; }
        & > .nginx-panel--dropped { color: $error; text-style: bold reverse; }
        & > .nginx-panel--error { color: $text-error; }
        & > .nginx-panel--muted { color: $text-muted; text-style: italic; }
"""


# Why nginx's rate is above uWSGI's: stackmon's own polls of stub_status are requests too (1/s
# at the default interval). The side panel shows it under the figures.
NGINX_RATE_NOTE = "(stub_status, polls included)"


def nginx_shown(status: NginxStatus | None, error: str | None) -> NginxShown:
    """Only what is displayed: a new sample with the same figures repaints nothing."""
    if status is None:
        return (None, error)
    return (
        (status.active, status.reading, status.writing, status.waiting, status.dropped,
         fmt_rate(status.requests_per_s)),
        error,
    )


class NginxPanel(StyleMemo, WrappedText):
    """`active 291  reading 6  writing 179  waiting 106  dropped 0  nginx req/s 45`, flowed
    onto
    more lines when the panel is narrow (the app titles the panel "nginx").

    `set_status(None)`: "nginx: not configured"; with `error`: an error line (below the last
    figures when there are some). Repaints only when what it shows changed.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = set(NGINX_CLASSES)

    DEFAULT_CSS = f"""
    NginxPanel {{
        height: auto;
        width: 1fr;
        {NGINX_STYLES}
    }}
    """

    def __init__(
        self,
        status: NginxStatus | None = None,
        error: str | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._shown = nginx_shown(status, error)
        self.set_class(bool(error), "-error")
        self.set_class(status is not None and status.dropped > 0, "-dropped")

    def set_status(self, status: NginxStatus | None, error: str | None = None) -> None:
        """The latest sample (None: nginx is not monitored on this host) and the source's
        error message, if the last poll failed."""
        shown = nginx_shown(status, error)
        if shown == self._shown:
            return

        def apply() -> None:
            self._shown = shown
            self.set_class(bool(error), "-error")
            self.set_class(status is not None and status.dropped > 0, "-dropped")

        self._reshow(apply)

    def _build(self, width: int) -> Text:
        return nginx_text(self._shown, width, self.component_style)


def nginx_text(shown: NginxShown, width: int, get: StyleGetter) -> Text:
    """The figures flowed into lines of at most `width` cells (a figure is never split from
    its name), then the error, which may wrap."""
    figures, error = shown
    label = get("nginx-panel--label")
    error_style = get("nginx-panel--error")
    text = Text(end="")
    if figures is None:
        text.append("nginx: ", get("nginx-panel--title"))
        if error:
            text.append(plain(error), error_style)
        else:
            text.append("not configured", get("nginx-panel--muted"))
        return text
    active, reading, writing, waiting, dropped, rate = figures
    chunks: list[Text] = [
        Text.assemble((f"{name} ", label), fmt_count(value))
        for name, value in (("active", active), ("reading", reading),
                            ("writing", writing), ("waiting", waiting))
    ]
    if dropped > 0:
        chunks.append(Text(f" dropped {fmt_count(dropped)} ", get("nginx-panel--dropped")))
    else:
        chunks.append(Text.assemble(("dropped ", label), str(dropped)))
    # stub_status's request counter: every request nginx read, stackmon's own polls of this
    # page included (1/s at the default interval), 502s nginx answered itself too; so it is
    # above uWSGI's rate; named "nginx req/s" (NGINX_RATE_NOTE, under it in the side panel,
    # says where it comes from).
    chunks.append(Text.assemble(("nginx req/s ", label), rate))
    flow(chunks, width, into=text)
    if error:
        text.append("\n")
        text.append("last poll failed: ", label)
        text.append(plain(error), error_style)
    return text

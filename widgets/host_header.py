"""HostHeader and host_reading(): one line that says whether a host needs you, and one that
says why.

How bad a host is comes from the health model (stackmon.health.assess): the header's badge,
the tab's badge and the gauges all grade by it, so they never disagree. Stale data is always
said (STALE 12s), in front of whatever the old data shows, because old numbers read as current
are worse than no numbers.
"""

from __future__ import annotations

import re
from typing import ClassVar

from rich.text import Text

from stackmon.health import HostState, assess
from stackmon.model import HostSnapshot
from widgets._fmt import Severity, fmt_rate, plain
from widgets._styles import StyleMemo
from widgets.text_lines import TextLines
from widgets.worker_list import is_cheap

# Reasons the host's notice already spells out in full (which sources failed, unreachable,
# stale): the reading is for what the clients and the workers are going through.
NOTICE_KINDS = frozenset({"unreachable", "stale", "source"})
READING_REASONS = 2
READING_PATH = 24  # longer paths are shown as …/name in the reading
READING_STYLE = {"critical": "bold red", "warn": "bold yellow"}
# Without colour, red becomes the darkest grey (the reading was grey 237 on 234, the least
# visible line on the screen): CRIT is reverse video, as everywhere else, and WARN underlined.
READING_STYLE_NO_COLOR = {"critical": "bold reverse", "warn": "bold underline"}
READING_ICON = {"critical": "✖ ", "warn": "▲ "}


def host_reading(state: HostState, *, no_color: bool = False) -> Text:
    """The top reasons as one reading ("502 ×37 in 60 s: uWSGI listen queue full on
    unix:/x/app.sock (×37); 1 request(s) past the critical age; ..."), worst first; empty when
    nothing is wrong beyond what the notice says. The text quotes URIs and socket names: plain
    text only."""
    shown = [r for r in state.reasons
             if r.kind not in NOTICE_KINDS and r.severity in READING_STYLE][:READING_REASONS]
    if not shown:
        return Text()
    worst = shown[0].severity
    style = (READING_STYLE_NO_COLOR if no_color else READING_STYLE)[worst]
    text = Text(READING_ICON[worst], style=style, end="")
    text.append("; ".join(short_paths(plain(r.text)) for r in shown))
    return text


# Socket paths only (`unix:/...`, or ending in .sock/.socket): a URI is what the user needs whole.
_LONG_PATH = re.compile(r"(?:(?<=unix:)/(?:[^\s/()]+/)+([^\s/()]+)"
                        r"|(?<![\w?=&])/(?:[^\s/()]+/)+([^\s/()?]+\.sock(?:et)?)\b)")


def short_paths(text: str) -> str:
    """Socket paths of more than READING_PATH cells cut to `…/name`: at 80 columns the demo's
    `unix:/tmp/stackmon-demo-3bs_oeeg/uwsgi.sock` took the reading's two lines and pushed
    "2 request(s) past the critical age" off screen. The side panel and the events keep the
    whole path."""
    def cut(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return m.group(0) if len(m.group(0)) <= READING_PATH else f"…/{name}"
    return _LONG_PATH.sub(cut, text)


class HostHeader(StyleMemo, TextLines):
    """`web-1  CRIT 2  uWSGI 2.0.28  master 4242  busy 5/8  uWSGI req/s 12` on one line.

    The widget carries the CSS class `-ok`, `-warn`, `-critical` or `-unknown` for its state.
    A TextLines: a poll that changes one figure redraws one cached line, no Visual pipeline.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "host-header--name",
        "host-header--label",
        "host-header--ok",
        "host-header--warn",
        "host-header--critical",
        "host-header--unknown",
        "host-header--flag",
    }
    """
    | Class | What |
    | :- | :- |
    | `host-header--name` | the host name |
    | `host-header--label` | field names |
    | `host-header--ok` / `--warn` / `--critical` / `--unknown` | the state badge |
    | `host-header--flag` | PAUSED, READ-ONLY, STALE 12s: states of the screen itself |
    """

    DEFAULT_CSS = """
    HostHeader {
        height: 1;
        width: 1fr;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        background: $panel;
        & > .host-header--name { text-style: bold; }
        & > .host-header--label { color: $text-muted; }
        & > .host-header--ok { color: $text-success; text-style: bold; }
        & > .host-header--warn { color: $warning; text-style: bold reverse; }
        & > .host-header--critical { color: $error; text-style: bold reverse; }
        & > .host-header--unknown { color: $text-muted; text-style: bold reverse; }
        & > .host-header--flag { color: $accent; text-style: bold reverse; }
    }
    """

    def __init__(
        self,
        host: HostSnapshot | None = None,
        rps: float | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._fields: tuple[str, ...] = ()
        self._flags: tuple[str, ...] = ()
        self._severity: Severity = "unknown"
        self.add_class("-unknown")
        if host is not None:
            self.set_snapshot(host, rps)

    @property
    def severity(self) -> Severity:
        return self._severity

    @property
    def flags(self) -> tuple[str, ...]:
        return self._flags

    def set_flags(self, flags: tuple[str, ...]) -> None:
        """States of what the screen shows, not of the host: PAUSED (a frozen screen looks
        live otherwise), READ-ONLY (K and R are not there), STALE 12s (an instance whose
        stats stopped answering). Shown right after the host's badge, where they are never
        cut, as long as they are true."""
        if flags != self._flags:
            self._flags = flags
            self._redraw()

    def set_snapshot(self, host: HostSnapshot, rps: float | None,
                     state: HostState | None = None) -> None:
        """Show this poll of the host; `rps`: the requests uWSGI finished per second since the
        previous poll (its workers' counters; None: unknown); `state`: the host's assess()
        when the caller has it already."""
        state = state if state is not None else assess(host)
        label, severity = plain(state.label), state.severity
        versions = sorted({u.version or "?" for u in host.uwsgi})
        masters = [str(u.master_pid) for u in host.uwsgi]
        # Counted as the worker list shows them: cheap workers (not spawned) are not rows.
        cheap = sum(1 for u in host.uwsgi for w in u.workers if is_cheap(w))
        busy = sum(1 for u in host.uwsgi for w in u.workers if w.busy and not is_cheap(w))
        total = sum(len(u.workers) for u in host.uwsgi) - cheap
        fields = (
            plain(host.name),
            label,
            severity,
            ",".join(plain(v) for v in versions) if versions else "-",
            ",".join(masters) if masters else "-",
            (f"{busy}/{total}" + (f" +{cheap} cheap" if cheap else "")) if host.uwsgi else "-",
            fmt_rate(rps),
        )
        if fields == self._fields:
            return
        self._fields = fields
        if severity != self._severity:
            self.remove_class(f"-{self._severity}")
            self.add_class(f"-{severity}")
            self._severity = severity
        self._redraw()

    def on_mount(self) -> None:
        self._redraw()

    def notify_style_update(self) -> None:
        """The component styles changed (theme, NO_COLOR): the line carries old ones."""
        super().notify_style_update()
        self._redraw()

    def _redraw(self) -> None:
        if self.is_mounted:
            self.show(self._line())

    def _line(self) -> Text:
        text = Text(no_wrap=True, end="")
        if not self._fields:
            return text
        name, label, severity, version, master, busy, rps = self._fields
        style = self.get_component_rich_style
        field = style("host-header--label", partial=True)
        text.append(name, style("host-header--name", partial=True))
        text.append("  ")
        text.append(f" {label} ", style(f"host-header--{severity}", partial=True))
        flag_style = style("host-header--flag", partial=True)
        for flag in self._flags:
            text.append(" ")
            text.append(f" {plain(flag)} ", flag_style)
        # "uWSGI req/s": the last poll's finished requests, by uWSGI's counters. The side
        # panel's access-log and stub_status rates count other things over other spans (a
        # review saw 38 here beside 6.5 there: a burst's queued requests all finishing in one
        # second, 38 lines in the access log that second too).
        fields = [("uWSGI", version), ("master", master), ("busy", busy), ("uWSGI req/s", rps)]
        # What gives way where the line is short, in this order: the version, the master's
        # pid, the rate's "uWSGI" (the side panel names the others), busy; a figure is never
        # cut (PAUSED at 80 columns cut "req/s 6…", review).
        room = self.size.width - text.cell_len
        for step in ("uWSGI", "master", "uWSGI req/s", "busy"):
            if sum(len(c) + len(v) + 3 for c, v in fields) <= room:
                break
            fields = [("req/s", v) if c == step == "uWSGI req/s" else (c, v)
                      for c, v in fields if c != step or step == "uWSGI req/s"]
        for caption, value in fields:
            text.append(f"  {caption} ", field)
            text.append(value)
        return text

    def on_resize(self) -> None:
        self._redraw()

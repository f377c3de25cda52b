"""ClientsPanel: what the clients get, from the logs and the load balancer's health check.

stackmon sees uWSGI's insides; this panel says what that means for the people on the other end:
requests per second and status classes over the log window (499, 502, 503, 504 each on their
own, since each has a different cause), 5xx per second by cause over the last minute, upstream
time percentiles (or the log_format variable to add when the log has no timing), upstream
errors by cause and upstream, the LB's verdict on its health check, and every log that could
not be read. The figures are the core's (stackmon.logs, stackmon.sources.lb_probe); the panel
only lays them out. Everything from outside (paths, upstream names, URIs, errors) is plain
text, never markup.

`CauseHistory` turns successive LogSummaries into 5xx/s per cause, one sample per poll: the
summaries give counts over a sliding window, so the failures logged between two polls are the
difference of the counts while nothing left the window (first_at unchanged), none when last_at
did not move, else at least the difference and at least one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text

from stackmon.logs.host import LogSummary, SourceStatus
from stackmon.logs.nginx_errors import UpstreamError, arrivals
from stackmon.sources.lb_probe import HealthCheck
from widgets._fmt import flow, fmt_count, fmt_ms, fmt_rate, plain
from widgets._styles import StyleGetter, StyleMemo
from widgets._wrapped import WrappedText
from widgets.history import bucket_max, sparkline

DEFAULT_SAMPLES = 60
MAX_UPSTREAM_ERRORS = 4
MAX_TOP_5XX = 3
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
STATUS_CODES = ("499", "502", "503", "504")


# ------------------------------------------------------------------------- 5xx/s history


def new_errors(prev: Sequence[UpstreamError], cur: Sequence[UpstreamError]) -> dict[str, int]:
    """Per cause, the upstream failures logged between two summaries of the same logs."""
    before = {(e.cause, e.upstream): e for e in prev}
    out: dict[str, int] = {}
    for e in cur:
        n = arrivals(before.get((e.cause, e.upstream)), e)
        out[e.cause] = out.get(e.cause, 0) + n
    return out


class CauseSeries(dict[str, tuple[float, ...]]):
    """CauseHistory.series(): per cause its rates oldest first, and `span_s`, the seconds
    those samples cover (from the start of the oldest poll interval to the newest poll): the
    panel draws them across its log window and marks the part not observed, so a sparkline
    under "last 60 s" never passes for a minute it did not see."""

    span_s: float = 0.0
    samples: int = 0  # how many polls (a cause without a series was zero in each)


class CauseHistory:
    """5xx/s by cause, one sample per poll, the last `max_samples` polls (a minute at 1 s).

    The first summary gives no sample (its counts cover the whole window, not one interval);
    the same summary twice (stale data carried forward) adds nothing. A cause that has been
    zero for the whole history is dropped."""

    def __init__(self, max_samples: int = DEFAULT_SAMPLES) -> None:
        self.max_samples = max_samples
        self._last: LogSummary | None = None
        self._series: dict[str, deque[float]] = {}
        self._samples = 0
        self._starts: deque[float] = deque(maxlen=max_samples)  # each sample's interval start

    def push(self, logs: LogSummary | None) -> None:
        if logs is None or logs is self._last:
            return
        prev, self._last = self._last, logs
        if prev is None:
            return
        dt = logs.taken_at - prev.taken_at
        if dt <= 0:
            return
        rates = {cause: n / dt for cause, n in
                 new_errors(prev.upstream_errors, logs.upstream_errors).items()}
        self._samples = min(self._samples + 1, self.max_samples)
        self._starts.append(prev.taken_at)
        for cause in rates:
            if cause not in self._series and rates[cause] > 0:
                padding = [0.0] * (self._samples - 1)
                self._series[cause] = deque(padding, maxlen=self.max_samples)
        for cause, series in list(self._series.items()):
            series.append(rates.get(cause, 0.0))
            if not any(series):
                del self._series[cause]

    def series(self) -> CauseSeries:
        """Per cause, its rates oldest first (every series as long as the others), with the
        seconds they cover."""
        out = CauseSeries((cause, tuple(values)) for cause, values in self._series.items())
        if self._starts and self._last is not None:
            out.span_s = self._last.taken_at - self._starts[0]
            out.samples = self._samples
        return out


# ------------------------------------------------------------------------------ the panel

# logs, health check, 5xx/s per cause, and (seconds, polls) those rates cover (None: unknown)
ClientsShown = tuple[LogSummary | None, HealthCheck | None,
                     tuple[tuple[str, tuple[float, ...]], ...], tuple[float, int] | None]


def clients_shown(logs: LogSummary | None, health: HealthCheck | None,
                  causes: Mapping[str, Sequence[float]] | None) -> ClientsShown:
    """What the clients panel shows, comparable from one poll to the next. `causes`:
    CauseHistory.series() (a plain mapping: its span is not known)."""
    span = (causes.span_s, causes.samples) if isinstance(causes, CauseSeries) else None
    return (logs, health, tuple((c, tuple(v)) for c, v in (causes or {}).items()), span)


def clients_trouble(shown: ClientsShown) -> bool:
    """Whether the clients are getting hurt or the evidence is missing: 5xx in the window,
    an upstream failure, a failing health check, a log that cannot be read. The side panel
    keeps such a section whole when it has to shorten the others."""
    logs, health, causes, _span = shown
    if health is not None and (health.out_of_service or health.ok is False):
        return True
    if logs is None:
        return False
    http = logs.http
    if http is not None and http.status.get("5xx", 0):
        return True
    return bool(logs.upstream_errors) or any(s.error for s in logs.sources) \
        or any(any(v) for _c, v in causes)


CLIENTS_CLASSES = frozenset({
    "clients-panel--label",
    "clients-panel--heading",
    "clients-panel--bad",
    "clients-panel--warn",
    "clients-panel--ok",
    "clients-panel--muted",
    "clients-panel--spark",
})
# The component rules, nested in a widget's DEFAULT_CSS (ClientsPanel's and the side panel's).
CLIENTS_STYLES = """
        & > .clients-panel--label { color: $text-muted; }
        & > .clients-panel--heading { color: $text-muted; text-style: underline; }
        & > .clients-panel--bad { color: $error; text-style: bold reverse; }
        & > .clients-panel--warn { color: $text-warning; text-style: bold; }
        & > .clients-panel--ok { color: $text-success; text-style: bold; }
        & > .clients-panel--muted { color: $text-muted; text-style: italic; }
        & > .clients-panel--spark { color: $text-error; }
"""


class ClientsPanel(StyleMemo, WrappedText):
    """Status codes, the LB health check, 5xx by cause, upstream time, upstream errors and the
    logs' own problems, flowed into the panel's width (the app titles it "Clients").

    `set_data(logs, health, causes)` every poll; repaints only when what it shows changed."""

    COMPONENT_CLASSES: ClassVar[set[str]] = set(CLIENTS_CLASSES)
    """
    | Class | What |
    | :- | :- |
    | `clients-panel--label` | field names |
    | `clients-panel--heading` | the sub-headings (5xx/s by cause, upstream errors, ...) |
    | `clients-panel--bad` | 5xx counts above zero, the LB taking the host out |
    | `clients-panel--warn` | 499s, a failing health check, a log that cannot be read |
    | `clients-panel--ok` | a passing health check |
    | `clients-panel--muted` | explanations (no log, no timing) |
    | `clients-panel--spark` | the sparklines |
    """

    DEFAULT_CSS = f"""
    ClientsPanel {{
        height: auto;
        width: 1fr;
        {CLIENTS_STYLES}
    }}
    """

    def __init__(
        self,
        logs: LogSummary | None = None,
        health: HealthCheck | None = None,
        causes: Mapping[str, Sequence[float]] | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._shown: ClientsShown = self._key(logs, health, causes)

    @staticmethod
    def _key(logs: LogSummary | None, health: HealthCheck | None,
             causes: Mapping[str, Sequence[float]] | None) -> ClientsShown:
        return clients_shown(logs, health, causes)

    def set_data(self, logs: LogSummary | None, health: HealthCheck | None,
                 causes: Mapping[str, Sequence[float]] | None = None) -> None:
        """The host's latest log summary (None: no log source), its health check (None: no
        `health` URL) and 5xx/s per cause (CauseHistory.series())."""
        shown = self._key(logs, health, causes)
        if shown == self._shown:
            return

        def apply() -> None:
            self._shown = shown

        self._reshow(apply)

    def _build(self, width: int) -> Text:
        return ClientsText(self.component_style).build(self._shown, width)


class ClientsText:
    """Builds the clients panel's text with a widget's styles (ClientsPanel's, or the side
    panel's, which shows the same lines)."""

    def __init__(self, get: StyleGetter) -> None:
        self._get = get

    def _style(self, name: str) -> Style:
        return self._get(f"clients-panel--{name}")

    def build(self, shown: ClientsShown, width: int) -> Text:
        """The panel's text for what it shows, flowed into `width` cells (lines longer than
        that are left to the caller's wrapping: errors and paths are shown whole)."""
        return Text("\n", end="").join(self.lines(shown, width))

    def lines(self, shown: ClientsShown, width: int) -> list[Text]:
        """build()'s lines, unjoined (the side panel lays out lines: joining them only to split
        them again was a third of its cost per poll). The most telling first: a side panel
        too short for all of them cuts the end."""
        logs, health, causes, span = shown
        lines: list[Text] = []
        if logs is None:
            lines.append(Text("no log found", self._style("muted")))
        else:
            lines.extend(self._http_lines(logs, width))
        # The load balancer's verdict right under the status codes: below the causes it was
        # off screen at 120x36 (a new user found it only with Tab and End).
        lines.extend(self._health_lines(health, width))
        if logs is not None:
            lines.extend(self._cause_lines(dict(causes), span, logs, width))
            lines.extend(self._error_lines(logs.upstream_errors, width))
            lines.extend(self._top_5xx_lines(logs))
            # What to add to log_format: advice, not a figure (3 lines at 80 columns, it was
            # above the health check and the causes).
            lines.extend(self._advice_lines(logs))
            lines.extend(self._source_lines(logs.sources))
        return lines

    def summary(self, shown: ClientsShown) -> list[tuple[str, Style | str]]:
        """The section in one line (the side panel's when it is short of height): the access
        log's rate, 5xx and the LB's verdict."""
        logs, health, _causes, _span = shown
        label = self._style("label")
        out: list[tuple[str, Style | str]] = []
        http = logs.http if logs is not None else None
        if logs is None:
            out.append(("no log found", self._style("muted")))
        elif http is None:
            out.append(("no access log", self._style("muted")))
        else:
            n5xx = http.status.get("5xx", 0)
            out += [("access log req/s ", label), (fmt_rate(http.per_s), ""),
                    ("  5xx ", label), (fmt_count(n5xx), self._style("bad") if n5xx else "")]
        if health is not None:
            verdict, style = ("?", "muted") if health.ok is None else \
                ("OUT", "bad") if health.out_of_service else \
                ("ok", "ok") if health.ok else ("FAIL", "warn")
            out += [("  LB ", label), (verdict, self._style(style))]
        return out

    def _flow(self, chunks: Iterable[Text], width: int) -> Text:
        return flow(chunks, width)

    def _figure(self, name: str, value: str, style: str | None = None) -> Text:
        text = Text.assemble((f"{name} ", self._style("label")))
        text.append(value, self._style(style) if style else "")
        return text

    def _http_lines(self, logs: LogSummary, width: int) -> list[Text]:
        http = logs.http
        muted = self._style("muted")
        if http is None:
            return [Text("no access log found", muted)]
        span = min(http.covered_s, http.window_s)
        # "access log": nginx's lines over the window, an average; the header's uWSGI req/s
        # is the last poll's finished requests and nginx's stub_status counts every request
        # (its own polls too), so the three differ and each says what it counts.
        head = [self._figure("access log req/s", fmt_rate(http.per_s)),
                Text(f"{fmt_count(http.requests)} in {span:.0f} s",
                     self._style("label"))]
        classes = [self._figure(c, fmt_count(http.status.get(c, 0)),
                                "bad" if c == "5xx" and http.status.get(c, 0) else None)
                   for c in STATUS_CLASSES]
        codes = []
        for code in STATUS_CODES:
            n = http.status.get(code, 0)
            style = None if not n else ("warn" if code == "499" else "bad")
            codes.append(self._figure(code, fmt_count(n), style))
        lines = [self._flow(head, width), self._flow(classes, width), self._flow(codes, width)]
        who = "upstream" if http.timing in (None, "upstream_response_time") else "request"
        if http.upstream_ms is not None:
            p = http.upstream_ms
            lines.append(self._flow([Text(who, self._style("label")),
                                     self._figure("p50", fmt_ms(p.p50)),
                                     self._figure("p95", fmt_ms(p.p95)),
                                     self._figure("p99", fmt_ms(p.p99))], width))
        elif not http.advice:
            lines.append(Text(f"{who} time: no timed request", muted))
        if http.unparsed:
            lines.append(Text(f"{fmt_count(http.unparsed)} line(s) not in the log format",
                              muted))
        return lines

    def _advice_lines(self, logs: LogSummary) -> list[Text]:
        http = logs.http
        if http is None or http.upstream_ms is not None or not http.advice:
            return []
        return [Text.assemble(("no timing: ", self._style("label")),
                              (plain(http.advice), self._style("warn")))]

    def _top_5xx_lines(self, logs: LogSummary) -> list[Text]:
        http = logs.http
        if http is None or not http.status.get("5xx", 0) or not http.top_5xx:
            return []
        lines = [Text("most 5xx", self._style("heading"))]
        for e in http.top_5xx[:MAX_TOP_5XX]:
            lines.append(Text.assemble((f"×{fmt_count(e.errors_5xx)}", self._style("bad")),
                                       " ", plain(e.endpoint)))
        return lines

    def _cause_lines(self, causes: Mapping[str, tuple[float, ...]],
                     span: tuple[float, int] | None, logs: LogSummary,
                     width: int) -> list[Text]:
        """`queue_full  ▁ ▃█▂   ×19`: per cause, its 5xx/s across the whole log window (each
        cell the largest of the polls it covers, as History; `·` where stackmon was not
        watching yet), then the cause's count in the window, the figure the upstream errors
        below add up to. It showed the last `room` polls (17 s at 120x36 under "last 60 s")
        and the last poll's rate (`0.0` beside `×19 queue_full`)."""
        counts: dict[str, int] = {}
        for e in logs.upstream_errors:
            counts[e.cause] = counts.get(e.cause, 0) + e.count
        names = sorted({*causes, *counts}, key=lambda c: (-counts.get(c, 0), c))
        if not names:
            return []
        top = max((max(v, default=0.0) for v in causes.values()), default=0.0)
        lines = [Text.assemble(("5xx/s by cause", self._style("heading")),
                               (f"  max {fmt_rate(top)}/s" if top else "", self._style("label")))]
        figures = {c: f"×{fmt_count(counts.get(c, 0))}" for c in names}
        fig_w = max(len(f) for f in figures.values())
        label_w = min(max(len(c) for c in names), max(6, width // 2))
        span_s, samples = span if span is not None else (None, 0)
        for cause in names:
            now = f" {figures[cause]:>{fig_w}}"
            # A cause only in the window: it was zero in every poll watched.
            values = causes.get(cause) or (0.0,) * samples
            room = max(0, width - label_w - 1 - len(now))
            cells = bucket_max(_over_window(values, span_s, logs.window_s, room), room)
            spark = sparkline(cells, top).rjust(room)
            label = cause if len(cause) <= label_w else cause[: label_w - 1] + "…"
            lines.append(Text.assemble((f"{label:<{label_w}} ", self._style("label")),
                                       (spark, self._style("spark")), now))
        return lines

    def _error_lines(self, errors: Sequence[UpstreamError], width: int) -> list[Text]:
        """`×17 queue_full unix:…/app.sock`: one line per cause and upstream, the upstream cut
        from the left (its file name or port is what tells upstreams apart); the full name is
        in the reading above and in the JSON."""
        if not errors:
            return []
        lines = [Text("upstream errors by cause", self._style("heading"))]
        for e in errors[:MAX_UPSTREAM_ERRORS]:
            head = f"×{fmt_count(e.count)}"
            cause = plain(e.cause)
            room = width - len(head) - len(cause) - 2
            lines.append(Text.assemble((head, self._style("bad")), " ", cause, " ",
                                       (_cut_left(plain(e.upstream or "?"), room),
                                        self._style("label"))))
        if len(errors) > MAX_UPSTREAM_ERRORS:
            rest = sum(e.count for e in errors[MAX_UPSTREAM_ERRORS:])
            lines.append(Text(f"×{fmt_count(rest)} more, other causes or upstreams",
                              self._style("muted")))
        return lines

    def _health_lines(self, check: HealthCheck | None, width: int) -> list[Text]:
        label = self._style("label")
        if check is None:
            return [Text.assemble(("LB health check: ", label),
                                  ("no health URL", self._style("muted")))]
        heading = Text("LB health check", self._style("heading"))
        url = plain(check.url)
        if heading.cell_len + 1 + cell_len(url) <= width:
            heading.append(" ")
            heading.append(url, label)
        lines = [heading]
        if check.ok is None:
            lines.append(Text("first probe running…", self._style("muted")))
            return lines
        verdict = Text(" ok " if check.ok else " FAIL ",
                       self._style("ok" if check.ok else "warn"))
        chunks = [verdict]
        if check.last_ms is not None:
            chunks.append(self._figure("last", fmt_ms(check.last_ms)))
        if check.max_ms is not None:
            chunks.append(self._figure("worst", fmt_ms(check.max_ms)))
        chunks.append(self._figure("fails", str(check.failures_in_row),
                                   "warn" if check.failures_in_row else None))
        lines.append(self._flow(chunks, width))
        if check.out_of_service:
            lines.append(Text(" LB would take this host OUT ", self._style("bad")))
        elif not check.ok and check.out_in_s is not None:
            lines.append(Text(f"out of service in {check.out_in_s:.0f} s",
                              self._style("warn")))
        if not check.ok and check.last_error:
            lines.append(Text(plain(check.last_error), self._style("warn")))
        ep = check.episode  # the latest finished failing streak: "fails" is back to 0
        if check.ok and ep is not None and ep.recent(check.checked_at):
            lines.append(Text(ep.short(), self._style("bad" if ep.out_at else "warn")))
        if check.in_flight_s is not None and check.in_flight_s >= 1:
            lines.append(Text(f"probe running for {check.in_flight_s:.0f} s",
                              self._style("muted")))
        return lines

    def _source_lines(self, sources: Sequence[SourceStatus]) -> list[Text]:
        lines: list[Text] = []
        for s in sources:
            name = _source_name(s)
            problems: list[tuple[str, str]] = []
            if s.error:
                where = f"{s.path}: " if s.path and s.path not in s.error else ""
                problems.append((plain(where + s.error), "warn"))
            if s.skipped_bytes:
                problems.append((f"skipped {fmt_count(s.skipped_bytes)} bytes", "warn"))
            if s.cut_lines:
                problems.append((f"{s.cut_lines} over-long line(s) cut", "muted"))
            problems.extend((plain(note), "muted") for note in s.notes)
            for what, style in problems:
                lines.append(Text.assemble((f"{name}: ", self._style("label")),
                                           (what, self._style(style))))
        return lines


def _over_window(values: Sequence[float], span_s: float | None, window_s: float,
                 cells: int) -> list[float | None]:
    """`values` (one per poll, covering `span_s`) preceded by unknowns for the part of the
    window they do not cover, as many as the same polls would have taken: the sparkline
    then spans the window whatever the poll interval and however long stackmon has run."""
    if not values or not span_s or span_s <= 0:
        return [None] * max(cells, 1)
    per = span_s / len(values)
    missing = max(0, round((window_s - span_s) / per)) if window_s > span_s else 0
    # Never more than the window's polls at this rate (a huge window at a short interval).
    missing = min(missing, max(cells, len(values)) * 4)
    return [None] * missing + list(values)


def _cut_left(text: str, width: int) -> str:
    """`text` in at most `width` cells, cut from the left (`…/demo/uwsgi.sock`)."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:max(width, 0)]
    kept: list[str] = []
    used = 1
    for ch in reversed(text):
        used += cell_len(ch)
        if used > width:
            break
        kept.append(ch)
    return "…" + "".join(reversed(kept))


_KIND_NAMES = {"nginx_access": "access log", "nginx_error": "error log", "uwsgi": "uWSGI log"}


def _source_name(s: SourceStatus) -> str:
    """`error log`, `uWSGI log 0`: which log, briefly (its path is in the message or notes)."""
    name = _KIND_NAMES.get(s.kind, plain(s.kind))
    if s.kind == "uwsgi" and s.label:
        name += f" {plain(s.label)}"
    return name

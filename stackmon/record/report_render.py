"""An Incident as one self-contained HTML file (inline SVG charts) or as Markdown.

HTML: no script, no stylesheet or font from anywhere else, charts drawn by matplotlib (Agg, no
display) as SVG with real text (svg.fonttype none: smaller, searchable, and a secret check on
the file's bytes sees every label). Every text from the recording is escaped for HTML and goes
through redact.clean again (recordings are redacted when written; a report is what leaves the
team, so it is checked once more). Mathtext is off: a `$` in a socket name stays a `$`.
Events (thin lines, by kind) and stackmon's actions (dashed red) are marked on every chart.
"""

from __future__ import annotations

import html
import io
import re
import time
from datetime import datetime
from typing import Any

from stackmon.record.report import CAUSE_ORDER, FIVE_XX, HostSeries, Incident
from stackmon.redact import clean

EVENT_COLOURS = {"harakiri": "#d62728", "worker_died": "#8c564b", "no_mercy": "#e377c2",
                 "killed": "#ff7f0e", "reload": "#1f77b4", "chain_reload": "#17becf",
                 "queue_full": "#9467bd", "respawn": "#2ca02c"}
ACTION_COLOUR = "#b00020"
MAX_TABLE = 200


def _esc(text: object) -> str:
    return html.escape(clean(str(text)))


def _clock(at: float | None) -> str:
    return "" if at is None else time.strftime("%H:%M:%S", time.localtime(at))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.fonttype": "none", "text.parse_math": False,
                                "font.size": 9, "axes.titlesize": 10,
                                "svg.hashsalt": "stackmon"})
    import matplotlib.pyplot as plt

    return plt


def _times(ts: list[float]) -> list[datetime]:
    return [datetime.fromtimestamp(t) for t in ts]


def _mark(ax: Any, incident: Incident, host: str) -> None:
    for e in incident.events:
        if e.host == host:
            ax.axvline(datetime.fromtimestamp(e.at), color=EVENT_COLOURS.get(e.kind, "#7f7f7f"),
                       linewidth=0.8, alpha=0.7)
    for a in incident.actions:
        if a.host == host:
            ax.axvline(datetime.fromtimestamp(a.at), color=ACTION_COLOUR, linewidth=1.2,
                       linestyle="--")


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = re.sub(r"(?s)\s*<metadata>.*?</metadata>", "", text, count=1)  # RDF with URLs
    return text[text.index("<svg"):]


def _charts(incident: Incident, h: HostSeries) -> list[tuple[str, str]]:
    """(title, inline SVG) for one host."""
    plt = _pyplot()
    t = _times(h.t)
    out = []

    def chart(title: str, draw: Any, ylabel: str) -> None:
        fig, ax = plt.subplots(figsize=(9, 2.4))
        try:
            draw(ax)
            if not ax.get_legend_handles_labels()[0]:
                ax.text(0.5, 0.5, "nothing recorded", transform=ax.transAxes, ha="center",
                        va="center", color="#777")
            _mark(ax, incident, h.name)
            ax.set_title(title, loc="left")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if len(t) > 1:
                ax.set_xlim(t[0], t[-1])
            fig.autofmt_xdate()
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7,
                          framealpha=0.8)
            out.append((title, _svg(fig)))
        finally:
            plt.close(fig)

    def busy(ax: Any) -> None:
        ax.plot(t, h.busy, label="busy", color="#d62728", drawstyle="steps-post")
        ax.plot(t, h.workers, label="workers", color="#7f7f7f", linestyle=":")
        ax.set_ylim(bottom=0)

    def queues(ax: Any) -> None:
        shown = list(h.queues.items())[:6]
        peak = max((v for _a, series in shown for v in series if v is not None), default=0)
        smallest = min((h.backlogs[a] for a, _s in shown), default=0)
        for i, (address, series) in enumerate(shown):
            colour = f"C{i}"
            ax.plot(t, [float("nan") if v is None else v for v in series], color=colour,
                    label=f"{clean(address)} (backlog {h.backlogs[address]})",
                    drawstyle="steps-post")
            ax.axhline(h.backlogs[address], color=colour, linestyle=":", linewidth=0.8)
        # Scaled to what matters: a 511 backlog must not flatten a 33/32 queue to a line.
        ax.set_ylim(0, max(peak, smallest, 1) * 1.15)

    def errors(ax: Any) -> None:
        causes = sorted(h.errors_per_s, key=lambda c: CAUSE_ORDER.index(c)
                        if c in CAUSE_ORDER else 99)
        for cause in causes:
            if any(h.errors_per_s[cause]):
                ax.plot(t, h.errors_per_s[cause], label=clean(cause), drawstyle="steps-post")
        for code in FIVE_XX:
            series = h.status_per_s.get(code, [])
            if any(series):
                ax.plot(t, series, label=f"HTTP {code}", linestyle="--", drawstyle="steps-post")
        ax.set_ylim(bottom=0)

    def traffic(ax: Any) -> None:
        if any(v is not None for v in h.rps):
            ax.plot(t, [float("nan") if v is None else v for v in h.rps], label="requests/s",
                    color="#1f77b4")
        ax.set_ylim(bottom=0)
        if any(v is not None for v in h.p99):
            ax2 = ax.twinx()
            for name, series, style in (("p50", h.p50, ":"), ("p95", h.p95, "--"),
                                        ("p99", h.p99, "-")):
                ax2.plot(t, [float("nan") if v is None else v for v in series],
                         label=f"upstream {name} ms", color="#ff7f0e", linestyle=style)
            ax2.set_ylabel("ms")
            ax2.set_ylim(bottom=0)
            ax2.legend(loc="lower left", bbox_to_anchor=(1.01, 0), fontsize=7)

    def fds(ax: Any) -> None:
        for role, series in h.fds.items():
            ax.plot(t, [float("nan") if v is None else v for v in series], label=clean(role))
        ax.set_ylim(0, 100)

    chart("Busy workers", busy, "workers")
    chart("Listen queue depth against backlog", queues, "connections")
    chart("5xx and upstream errors by cause (per second)", errors, "per s")
    chart("Requests per second and upstream latency", traffic, "req/s")
    chart("File descriptors: fullest process per role, % of its limit", fds, "%")
    return out


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 12px; width: 100%; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } .num { text-align: right; font-variant-numeric: tabular-nums; }
.summary { background: #f8f8f8; border-left: 4px solid #b00020; padding: .5em 1em; }
.chart svg { max-width: 100%; height: auto; } .legend span { margin-right: 1em; }
code { word-break: break-all; }
"""


def report_html(incident: Incident, title: str) -> str:
    """The whole report as one HTML document (see the module docstring)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1>", '<div class="summary">']
    parts += [f"<p>{_esc(line)}</p>" for line in incident.summary()]
    parts.append("</div>")
    parts.append(_legend())
    for h in incident.hosts:
        parts.append(f"<h2>{_esc(h.name)}</h2>")
        for chart_title, svg in _charts(incident, h):
            parts.append(f'<div class="chart" title="{_esc(chart_title)}">{svg}</div>')
    parts.append(_stuck_html(incident))
    parts.append(_timeline_html(incident))
    if incident.problems:
        parts.append("<h2>Damage</h2><ul>" + "".join(
            f"<li>{_esc(p)}</li>" for p in incident.problems[:20]) + "</ul>")
    parts.append(f"<p><small>stackmon report, {_esc(_clock(time.time()))}</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _legend() -> str:
    items = "".join(f'<span style="color:{c}">│ {k}</span>' for k, c in EVENT_COLOURS.items())
    return (f'<p class="legend"><b>Marks:</b> {items}<span style="color:{ACTION_COLOUR}">'
            "┆ stackmon action</span></p>")


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
        for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _stuck_rows(incident: Incident) -> list[list[str]]:
    return [[s.host, f"{s.method} {s.uri}", f"{s.longest_s:.1f} s", str(s.worker), str(s.pid),
             _clock(s.first_seen), _clock(s.ended_at) if s.ended_at else "", s.ended]
            for s in sorted(incident.stuck, key=lambda s: -s.longest_s)[:MAX_TABLE]]


STUCK_HEADERS = ["host", "endpoint", "longest age", "worker", "pid", "seen from", "gone at",
                 "how it ended"]


def _stuck_html(incident: Incident) -> str:
    head = f"<h2>Stuck requests (past {incident.slow_s:g} s)</h2>"
    if not incident.stuck:
        return head + "<p>None.</p>"
    rows = [[_esc(c) if i != 1 else f"<code>{_esc(c)}</code>" for i, c in enumerate(row)]
            for row in _stuck_rows(incident)]
    return head + _table(STUCK_HEADERS, rows, {2, 3, 4})


def _timeline_rows(incident: Incident) -> list[list[str]]:
    rows = [(e.at, [_clock(e.at), e.host, e.source, e.kind,
                    "" if e.worker is None else str(e.worker),
                    "" if e.pid is None else str(e.pid), e.text]) for e in incident.events]
    rows += [(a.at, [_clock(a.at), a.host, "stackmon", f"{a.action} ({a.outcome})",
                     "" if a.worker_id is None else str(a.worker_id),
                     "" if a.target_pid is None else str(a.target_pid),
                     f"{a.actor}: {a.message}"]) for a in incident.actions]
    return [r for _at, r in sorted(rows, key=lambda x: x[0])][:MAX_TABLE * 5]


TIMELINE_HEADERS = ["time", "host", "source", "what", "worker", "pid", "text"]


def _timeline_html(incident: Incident) -> str:
    rows = _timeline_rows(incident)
    if not rows:
        return "<h2>Events and actions</h2><p>None.</p>"
    return "<h2>Events and actions</h2>" + _table(
        TIMELINE_HEADERS, [[_esc(c) for c in row] for row in rows], {4, 5})


def _md_cell(text: str) -> str:
    return clean(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


def report_md(incident: Incident, title: str) -> str:
    """The same report for a ticket: the summary, peak figures, stuck requests, the timeline."""
    lines = [f"# {_md_cell(title)}", ""]
    lines += [f"- {_md_cell(s)}" for s in incident.summary()]
    lines += ["", f"## Stuck requests (past {incident.slow_s:g} s)", ""]
    lines += _md_table(STUCK_HEADERS, _stuck_rows(incident)) if incident.stuck else ["None."]
    lines += ["", "## Events and actions", ""]
    rows = _timeline_rows(incident)
    lines += _md_table(TIMELINE_HEADERS, rows) if rows else ["None."]
    if incident.problems:
        lines += ["", "## Damage", ""] + [f"- {_md_cell(p)}" for p in incident.problems[:20]]
    return "\n".join(lines) + "\n"

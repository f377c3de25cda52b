"""The doctor's report as text (80 columns, grouped by severity) and as JSON (schema 1).

Text is for a person in an SSH session: the worst first, each finding with its evidence
(file:line and the values read there), why it matters and the fix, wrapped to the width so
nothing is cut off. Values come from config files and servers, so control characters are
made visible rather than sent to the terminal.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from typing import Any

from stackmon.doctor.facts import SEVERITIES, Evidence, Finding, Report

WIDTH = 80
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HEADINGS = {"critical": "CRITICAL", "warn": "WARNINGS", "info": "INFO"}


def _visible(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def _fill(text: str, first: str, rest: str, width: int) -> list[str]:
    return textwrap.wrap(_visible(text), width=width, initial_indent=first,
                         subsequent_indent=rest, break_on_hyphens=False) or [first.rstrip()]


def _value(v: Any) -> str:
    return str(v)


def short_path(path: str, cwd: str | None = None) -> str:
    """A file under the current directory as a relative path (narrower lines); the JSON keeps
    absolute paths."""
    base = (cwd if cwd is not None else os.getcwd()).rstrip("/")
    if not base:  # "/": every path is under it, and all would lose their leading slash
        return path
    base += "/"
    return path[len(base):] if path.startswith(base) and len(path) > len(base) else path


def evidence_lines(e: Evidence, width: int, indent: str = "    ") -> list[str]:
    file = short_path(e.file)
    where = file if e.line <= 0 else f"{file}:{e.line}"
    values = ", ".join(f"{k}={_value(v)}" for k, v in e.values.items())
    one = f"{where}  {values}" if values else where
    if len(indent) + len(one) <= width:
        return [_visible(indent + one)]
    lines = _fill(where, indent, indent + "  ", width)
    if values:
        lines += _fill(values, indent + "  ", indent + "  ", width)
    return lines


def finding_lines(f: Finding, width: int = WIDTH, show_host: bool = False) -> list[str]:
    head = f"[{f.severity}] {f.id}" + (f"  ({f.host})" if show_host and f.host else "")
    lines = _fill(head, "", "    ", width)
    lines += _fill(f.title, "  ", "  ", width)
    if f.evidence:
        lines.append("  evidence:")
        for e in f.evidence:
            lines += evidence_lines(e, width)
    lines += _fill(f.why, "  why: ", "       ", width)
    lines += _fill(f.fix, "  fix: ", "       ", width)
    return lines


def summary(report: Report) -> str:
    counts = {s: len(report.by_severity(s)) for s in SEVERITIES}
    if not report.findings:
        return "stackmon doctor: no findings"
    parts = [f"{counts['critical']} critical", f"{counts['warn']} warning"
             + ("" if counts["warn"] == 1 else "s"), f"{counts['info']} info"]
    return "stackmon doctor: " + ", ".join(parts)


def render_text(report: Report, width: int = WIDTH) -> str:
    hosts = {f.host for f in report.findings if f.host}
    show_host = len(hosts) > 1
    lines = [summary(report)]
    for severity in SEVERITIES:
        found = report.by_severity(severity)
        if not found:
            continue
        lines += ["", _HEADINGS[severity], "=" * len(_HEADINGS[severity])]
        for n, f in enumerate(found):
            if n:
                lines.append("")
            lines += finding_lines(f, width, show_host)
    checked = [i for i in report.inputs if i.error is None]
    failed = report.errors
    if checked:
        lines += ["", "Checked:"]
        for done in checked:
            lines += _fill(f"{done.kind}: {short_path(done.source)}", "  ", "    ", width)
    if failed:
        lines += ["", "Not checked:"]
        for miss in failed:
            lines += _fill(f"{miss.kind}: {miss.source}: {miss.error}", "  ", "    ", width)
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"

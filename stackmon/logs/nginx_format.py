"""nginx `log_format` compiled to a line parser, and what a format lacks for stackmon's figures.

Log tools most often fail on a custom `log_format` (ngxtop, GoAccess issues): they assume
`combined` and show zeros. stackmon reads the format from nginx's own config (discover.py) and
compiles it here into one regular expression, so any format works, and says which variable to
add when one that a figure needs is missing ("add $upstream_response_time to log_format main").

How a format becomes a regex: the template is split into `$name` / `${name}` variables and the
literal text between them (escaped). A variable between double quotes matches up to the
closing quote, allowing backslash escapes: nginx's default escaping writes `"` as `\\x22`, and
`escape=json` writes `\\"`, so both formats are parsed by the same rule (JSON values with
backslashes are unescaped afterwards). Some variables have a tight pattern (`$status` is three
digits); any other variable matches lazily up to the literal that follows it, which is what
lets `$upstream_response_time` contain spaces ("0.001, 0.002", "0.5 : 1.0").

`$upstream_response_time` lists one time per upstream tried, separated by ", " (and " : " across
internal redirects), "-" for none: `upstream_seconds()` sums them, which is how long the client
waited on upstreams. Times: `$time_local`, `$time_iso8601` or `$msec` (in that order of
preference when several are logged); each distinct timestamp string is converted once.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

__all__ = [
    "COMBINED",
    "COMBINED_TEMPLATE",
    "AccessRecord",
    "LogFormat",
    "compile_format",
    "format_from_args",
    "parse_time_local",
    "upstream_seconds",
]

COMBINED_TEMPLATE = ('$remote_addr - $remote_user [$time_local] "$request" $status '
                     '$body_bytes_sent "$http_referer" "$http_user_agent"')

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_TIME_VARS = ("time_local", "time_iso8601", "msec")
_TIMING_VARS = ("upstream_response_time", "request_time")
_REQUEST_VARS = ("request", "request_uri", "uri")
# Variables whose values have a known shape: a tighter pattern keeps a lazy neighbour from
# swallowing them (and fails fast on garbage).
_TIGHT = {
    "status": r"\d{3}",
    "body_bytes_sent": r"\d+",
    "bytes_sent": r"\d+",
    "request_length": r"\d+",
    "msec": r"\d+(?:\.\d+)?",
    "request_time": r"\d+(?:\.\d+)?|-",
    "remote_addr": r"[^\s\"]+",
    "time_iso8601": r"[0-9T:+.Z-]+",
    "time_local": r"[^\]\"]+",
    "connection": r"\d+",
    "pid": r"\d+",
}
_QUOTED = r'[^"\\]*(?:\\.[^"\\]*)*'
_WANTED = frozenset((*_TIME_VARS, *_TIMING_VARS, *_REQUEST_VARS, "status", "request_method",
                     "upstream_addr"))
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


class AccessRecord(NamedTuple):
    """One access-log line as stackmon uses it. `at` is None when the format logs no time
    (the reader's time is used then); `uri` is raw (the reducer folds and redacts it).
    A NamedTuple rather than a frozen dataclass: it is built for every line, and a frozen
    dataclass's __init__ costs about a microsecond more."""

    at: float | None
    status: int
    method: str
    uri: str
    upstream_s: float | None
    request_s: float | None


@dataclass(frozen=True)
class LogFormat:
    """A compiled log_format. `missing` names the variables to add, most important first;
    `parse()` gives None for a line that does not match the format."""

    name: str
    template: str
    escape: str = "default"
    variables: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    _regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _groups: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def timing(self) -> str | None:
        """The variable latency percentiles come from: upstream time, else request time."""
        return next((v for v in _TIMING_VARS if v in self._groups), None)

    @property
    def usable(self) -> bool:
        """Whether lines can be counted at all (a status and a request are logged)."""
        return "$status" not in self.missing and "$request" not in self.missing

    def advice(self) -> str | None:
        """One line for the UI when a figure cannot be computed, naming what to add."""
        if not self.missing:
            return None
        names = " and ".join(self.missing)
        return f"add {names} to log_format {self.name}"

    def parse(self, line: str) -> AccessRecord | None:
        regex = self._regex
        if regex is None:
            return None
        m = regex.match(line)
        if m is None:
            return None
        g = self._groups
        values = m.groups()
        try:
            status = int(values[g["status"]])
        except (KeyError, ValueError):
            return None
        method, uri = self._request(values, g)
        upstream = request = None
        if "upstream_response_time" in g:
            upstream = upstream_seconds(self._value(values[g["upstream_response_time"]]))
        if "request_time" in g:
            request = upstream_seconds(values[g["request_time"]])
        return AccessRecord(self._time(values, g), status, method, uri, upstream, request)

    def _value(self, raw: str) -> str:
        if self.escape == "json" and "\\" in raw:
            with contextlib.suppress(ValueError):
                return str(json.loads(f'"{raw}"'))
        return raw

    def _request(self, values: Sequence[str], g: dict[str, int]) -> tuple[str, str]:
        method = self._value(values[g["request_method"]]) if "request_method" in g else ""
        if "request_uri" in g:
            return method, self._value(values[g["request_uri"]])
        if "request" in g:
            parts = self._value(values[g["request"]]).split(" ")
            if len(parts) >= 2:
                return method or parts[0], parts[1]
            return method, ""  # "-" or garbage (a TLS handshake on a plain port)
        if "uri" in g:
            return method, self._value(values[g["uri"]])
        return method, ""

    @staticmethod
    def _time(values: Sequence[str], g: dict[str, int]) -> float | None:
        if "time_local" in g:
            return parse_time_local(values[g["time_local"]])
        if "time_iso8601" in g:
            return _parse_iso(values[g["time_iso8601"]])
        if "msec" in g:
            try:
                return float(values[g["msec"]])
            except ValueError:
                return None
        return None


def compile_format(template: str, name: str = "custom", escape: str = "default") -> LogFormat:
    """Compile a log_format template (the strings of the directive, concatenated)."""
    parts: list[str] = []
    groups: dict[str, int] = {}
    variables: list[str] = []
    pos = 0
    matches = list(_VAR.finditer(template))
    for i, m in enumerate(matches):
        var = m.group(1) or m.group(2)
        variables.append(var)
        parts.append(re.escape(template[pos:m.start()]))
        following = matches[i + 1].start() if i + 1 < len(matches) else len(template)
        after = template[m.end():following]
        quoted = template[:m.start()].endswith('"') and after.startswith('"')
        if quoted:
            pattern = _QUOTED
        elif var in _TIGHT:
            pattern = _TIGHT[var]
        elif after:
            pattern = r".*?"
        elif i + 1 < len(matches):
            pattern = r"\S*"  # two variables with nothing between: guess a word boundary
        else:
            pattern = r".*"
        if var in _WANTED and var not in groups:
            groups[var] = len(groups)
            parts.append(f"({pattern})")
        else:
            parts.append(f"(?:{pattern})")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    try:
        regex: re.Pattern[str] | None = re.compile("".join(parts) + r"\Z", re.DOTALL)
    except re.error:
        regex = None
    return LogFormat(name=name, template=template, escape=escape,
                     variables=tuple(variables), missing=_missing(set(variables)),
                     _regex=regex, _groups=groups)


def _missing(present: set[str]) -> tuple[str, ...]:
    missing = []
    if "status" not in present:
        missing.append("$status")
    if not present & set(_REQUEST_VARS):
        missing.append("$request")
    if not present & set(_TIME_VARS):
        missing.append("$time_local")
    if not present & set(_TIMING_VARS):
        missing.append("$upstream_response_time")
    return tuple(missing)


def format_from_args(args: Sequence[str]) -> LogFormat:
    """A `log_format NAME [escape=default|json|none] STRING...` directive's arguments (as
    crossplane gives them: quotes removed) compiled."""
    if not args:
        raise ValueError("log_format without a name")
    name, rest = args[0], list(args[1:])
    escape = "default"
    if rest and rest[0].startswith("escape="):
        escape = rest.pop(0)[len("escape="):]
    return compile_format("".join(rest), name=name, escape=escape)


COMBINED = compile_format(COMBINED_TEMPLATE, name="combined")


def upstream_seconds(value: str) -> float | None:
    """Seconds from `$upstream_response_time` / `$request_time`: "0.004" -> 0.004;
    "0.001, 0.002" (two upstreams tried) and "0.5 : 1.0" (an internal redirect) -> their sum;
    "-" or garbage -> None."""
    try:
        return float(value)
    except ValueError:
        pass
    total, found = 0.0, False
    for part in re.split(r"[,:]", value):
        try:
            total += float(part)
            found = True
        except ValueError:
            continue
    return total if found else None


_time_cache: dict[str, float | None] = {}


def parse_time_local(text: str) -> float | None:
    """`10/Oct/2000:13:55:36 -0700` as epoch seconds (None when malformed). Lines of one
    second share the string, so each distinct one is converted once (a small cache)."""
    cached = _time_cache.get(text, -1.0)
    if cached != -1.0:
        return cached
    result: float | None = None
    try:
        day, mon, rest = text.split("/", 2)
        year, hh, mm, ss_tz = rest.split(":", 3)
        ss, tz = ss_tz.split(" ")
        offset = (int(tz[1:3]) * 3600 + int(tz[3:5]) * 60) * (-1 if tz[0] == "-" else 1)
        result = float(calendar.timegm((int(year), _MONTHS[mon], int(day), int(hh), int(mm),
                                        int(ss), 0, 0, 0)) - offset)
    except (ValueError, KeyError, IndexError):
        result = None
    if len(_time_cache) > 4096:
        _time_cache.clear()
    _time_cache[text] = result
    return result


def _parse_iso(text: str) -> float | None:
    cached = _time_cache.get(text, -1.0)
    if cached != -1.0:
        return cached
    try:
        result: float | None = datetime.fromisoformat(text).timestamp()
    except ValueError:
        result = None
    if len(_time_cache) > 4096:
        _time_cache.clear()
    _time_cache[text] = result
    return result

"""Targets and settings: the hosts file (TOML) and the command line's --uwsgi/--nginx targets.

A mistake in the hosts file is found before the first poll and reported as one line naming the
file, the line and what was expected, because a monitor that starts with half its hosts silently
missing is worse than one that refuses to start.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackmon.addresses import (
    AddressError,
    StatsAddress,
    parse_agent_url,
    parse_health_url,
    parse_nginx_url,
    parse_stats_address,
)
from stackmon.bounded_io import BoundedReadError, read_file
from stackmon.model import Thresholds

# A hosts file of 500 hosts is ~50 KB: 4 MiB is room for a generated one, and a bound for a
# hostile path. Nesting: [[host]] -> table -> list of addresses is 3 deep.
HOSTS_FILE_LIMIT = 4 * 1024 * 1024
MAX_NESTING = 16


class ConfigError(ValueError):
    """A hosts file or option stackmon cannot use; str() is the one line shown to the user."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object, what: str = "duration") -> float:
    """'10s', '1.5s', '500ms', '2m', or a bare number of seconds.

    TOML has nan and inf literals: both are refused, since a NaN timeout compares false with
    everything (every source would fail "within nan s") and an infinite one waits forever.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a duration such as 10s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ConfigError(f"{what}: expected a duration such as 10s, 500ms or 2m, "
                              f"got {value!r}")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not math.isfinite(seconds):
        raise ConfigError(f"{what}: expected a finite duration such as 10s, got {value!r}")
    if seconds <= 0:
        raise ConfigError(f"{what}: must be greater than zero, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Settings:
    interval: float = 1.0
    slow: float = 10.0
    critical: float = 60.0
    timeout: float = 2.0
    read_only: bool = False
    # The load balancer in front (DESIGN's hosts file; ELB defaults): its idle timeout is a
    # deadline of every request, its health check decides whether the host gets traffic.
    lb_idle_timeout: float = 60.0
    health_timeout: float = 5.0
    health_interval: float = 30.0
    unhealthy_threshold: int = 2
    # How far back log-derived figures (status counts, errors by cause, events) reach.
    window: float = 60.0

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(slow=self.slow, critical=self.critical)


@dataclass(frozen=True, slots=True)
class HostConfig:
    name: str
    uwsgi: tuple[StatsAddress, ...] = ()
    nginx: str | None = None
    health: str | None = None
    agent: str | None = None
    token_file: Path | None = None
    read_only: bool = False
    group: str | None = None
    # Logs found from the running nginx's and uWSGI's configs unless named here.
    nginx_access_log: str | None = None
    nginx_error_log: str | None = None
    uwsgi_log: tuple[str, ...] = ()  # one per uwsgi entry, in the same order


@dataclass(frozen=True, slots=True)
class Targets:
    hosts: tuple[HostConfig, ...]
    settings: Settings = field(default_factory=Settings)
    source: str = "command line"


def default_hosts_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "stackmon" / "hosts.toml"


def _line_of(text: str, host_index: int | None, key: str | None) -> int:
    """Best-effort line number of `key` (in the host_index-th [[host]] table, or [defaults])."""
    lines = text.splitlines()
    start, seen = 0, -1
    header = re.compile(r"^\s*\[\[\s*host\s*\]\]" if host_index is not None
                        else r"^\s*\[\s*defaults\s*\]")
    for i, line in enumerate(lines):
        if header.match(line):
            seen += 1
            if host_index is None or seen == host_index:
                start = i
                break
    else:
        return 1
    if key is None:
        return start + 1
    keypat = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for j in range(start + 1, len(lines)):
        if re.match(r"^\s*\[", lines[j]):
            break
        if keypat.match(lines[j]):
            return j + 1
    return start + 1


_HOST_KEYS = {"name", "uwsgi", "nginx", "health", "agent", "token_file", "read_only", "group",
              "nginx_access_log", "nginx_error_log", "uwsgi_log"}
_DURATION_KEYS = ("interval", "slow", "critical", "timeout", "lb_idle_timeout",
                  "health_timeout", "health_interval", "window")
_DEFAULT_KEYS = {*_DURATION_KEYS, "read_only", "unhealthy_threshold"}


def parse_settings(raw: dict[str, Any], where: str = "defaults",
                   base: Settings | None = None) -> Settings:
    base = base or Settings()
    unknown = set(raw) - _DEFAULT_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                          f"(known: {', '.join(sorted(_DEFAULT_KEYS))})")
    durations = {key: parse_duration(raw.get(key, getattr(base, key)), f"{where}: {key}")
                 for key in _DURATION_KEYS}
    threshold = raw.get("unhealthy_threshold", base.unhealthy_threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= 10:
        raise ConfigError(f"{where}: unhealthy_threshold must be a whole number from 1 to 10, "
                          f"got {threshold!r}")
    s = Settings(**durations, read_only=raw.get("read_only", base.read_only),
                 unhealthy_threshold=threshold)
    if not isinstance(s.read_only, bool):
        raise ConfigError(f"{where}: read_only must be true or false")
    if s.critical < s.slow:
        raise ConfigError(f"{where}: critical ({s.critical:g}s) is shorter than slow "
                          f"({s.slow:g}s)")
    return s


def _host(raw: Any, index: int, text: str, path: Path) -> HostConfig:
    def fail(key: str | None, message: str) -> ConfigError:
        return ConfigError(f"{path}:{_line_of(text, index, key)}: {message}")

    if not isinstance(raw, dict):
        raise fail(None, "each [[host]] must be a table")
    unknown = set(raw) - _HOST_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise fail(key, f"unknown key {key!r} in [[host]] (known: {', '.join(sorted(_HOST_KEYS))})")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail("name", "every [[host]] needs a name = \"...\"")
    uw = raw.get("uwsgi", [])
    if isinstance(uw, str):
        uw = [uw]
    if not isinstance(uw, list) or not all(isinstance(a, str) for a in uw):
        raise fail("uwsgi", f"host {name!r}: uwsgi must be a list of addresses")
    try:
        addrs = tuple(parse_stats_address(a) for a in uw)
    except AddressError as exc:
        raise fail("uwsgi", f"host {name!r}: {exc}") from None
    strings: dict[str, str | None] = {}
    for key in ("nginx", "health", "agent", "token_file", "group", "nginx_access_log",
                "nginx_error_log"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise fail(key, f"host {name!r}: {key} must be a string")
        strings[key] = value
    nginx = strings["nginx"]
    if nginx is not None:
        try:
            nginx = parse_nginx_url(nginx)
        except AddressError as exc:
            raise fail("nginx", f"host {name!r}: {exc}") from None
    health = strings["health"]
    if health is not None:
        try:
            health = parse_health_url(health)
        except AddressError as exc:
            raise fail("health", f"host {name!r}: {exc}") from None
    uwsgi_log = raw.get("uwsgi_log", [])
    if isinstance(uwsgi_log, str):
        uwsgi_log = [uwsgi_log]
    if not isinstance(uwsgi_log, list) or not all(isinstance(p, str) for p in uwsgi_log):
        raise fail("uwsgi_log", f"host {name!r}: uwsgi_log must be a list of paths")
    if len(uwsgi_log) > len(addrs):
        raise fail("uwsgi_log", f"host {name!r}: {len(uwsgi_log)} uwsgi_log paths for "
                                f"{len(addrs)} uwsgi entries (one per entry, same order)")
    agent = strings["agent"]
    if agent is not None:
        try:
            agent = parse_agent_url(agent)
        except AddressError as exc:
            raise fail("agent", f"host {name!r}: {exc}") from None
    if agent is None and not addrs and nginx is None:
        raise fail(None, f"host {name!r}: nothing to watch (give uwsgi, nginx or agent)")
    read_only = raw.get("read_only", False)
    if not isinstance(read_only, bool):
        raise fail("read_only", f"host {name!r}: read_only must be true or false")
    token = strings["token_file"]
    return HostConfig(
        name=name.strip(), uwsgi=addrs, nginx=nginx, health=health, agent=agent,
        token_file=Path(token).expanduser() if token else None, read_only=read_only,
        group=strings["group"], nginx_access_log=strings["nginx_access_log"],
        nginx_error_log=strings["nginx_error_log"], uwsgi_log=tuple(uwsgi_log),
    )


def _read_hosts_file(path: Path) -> bytes:
    """The file's bytes, read the bounded way: a hosts file is named by whoever starts
    stackmon (often root), and a FIFO there must not hang it nor /dev/zero eat its memory."""
    try:
        return read_file(path, limit=HOSTS_FILE_LIMIT, what="hosts file")
    except BoundedReadError as exc:
        if exc.reason.endswith("does not exist"):
            raise ConfigError(f"{path}: no such hosts file") from None
        raise ConfigError(f"{path}: {exc.reason}") from None


def _depth(value: Any) -> int:
    """How deeply lists and tables nest in a parsed document, without recursing (the document
    itself may be deep enough to exhaust Python's stack when walked recursively)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            break
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return deepest


def load_hosts_file(path: Path, overrides: dict[str, Any] | None = None) -> Targets:
    """Read and check a hosts file; any problem raises ConfigError naming file and line."""
    raw_bytes = _read_hosts_file(path)
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw_bytes[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8") from None
    try:
        data = tomllib.loads(text)
    except RecursionError:  # tomllib recurses per nesting level: [[[[... is a crash otherwise
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m:
            msg = msg[: m.start()].strip()
            raise ConfigError(f"{path}:{m.group(1)}: invalid TOML: {msg}") from None
        raise ConfigError(f"{path}: invalid TOML: {msg}") from None
    if _depth(data) > MAX_NESTING:
        raise ConfigError(f"{path}: invalid hosts file: values nested more than {MAX_NESTING} "
                          "deep (a hosts file needs 3)")
    unknown = set(data) - {"defaults", "host"}
    if unknown:
        key = sorted(unknown)[0]
        line = next((i + 1 for i, ln in enumerate(text.splitlines())
                     if re.match(rf"^\s*\[?\[?\s*{re.escape(key)}\b", ln)), 1)
        raise ConfigError(f"{path}:{line}: unknown section or key {key!r} "
                          "(expected [defaults] and [[host]] tables)")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}:{_line_of(text, None, None)}: [defaults] must be a table")
    try:
        settings = parse_settings(defaults)
        if overrides:
            settings = parse_settings(overrides, "command line", settings)
    except ConfigError as exc:
        where = next((k for k in _DEFAULT_KEYS if f": {k}" in str(exc)), None)
        raise ConfigError(f"{path}:{_line_of(text, None, where)}: {exc}") from None
    hosts_raw = data.get("host", [])
    if not isinstance(hosts_raw, list) or not hosts_raw:
        raise ConfigError(f"{path}: no [[host]] tables: nothing to watch")
    hosts = tuple(_host(h, i, text, path) for i, h in enumerate(hosts_raw))
    names = [h.name for h in hosts]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(f"{path}:{_line_of(text, i, 'name')}: host name {n!r} "
                              "appears twice")
    return Targets(hosts=hosts, settings=settings, source=str(path))


def targets_from_args(uwsgi: list[str], nginx: str | None, overrides: dict[str, Any],
                      name: str | None = None, *, health: str | None = None,
                      nginx_access_log: str | None = None, nginx_error_log: str | None = None,
                      uwsgi_log: list[str] | None = None) -> Targets:
    """The one host described by --uwsgi/--nginx (and --health, --*-log) on the command line."""
    try:
        addrs = tuple(parse_stats_address(a) for a in uwsgi)
        url = parse_nginx_url(nginx) if nginx else None
        health_url = parse_health_url(health) if health else None
    except AddressError as exc:
        raise ConfigError(str(exc)) from None
    if uwsgi_log and len(uwsgi_log) > len(addrs):
        raise ConfigError(f"--uwsgi-log given {len(uwsgi_log)} times for {len(addrs)} --uwsgi "
                          "(one per --uwsgi, same order)")
    settings = parse_settings(overrides, "command line")
    host = HostConfig(name=name or os.uname().nodename or "localhost", uwsgi=addrs, nginx=url,
                      health=health_url, nginx_access_log=nginx_access_log,
                      nginx_error_log=nginx_error_log, uwsgi_log=tuple(uwsgi_log or ()))
    return Targets(hosts=(host,), settings=settings)

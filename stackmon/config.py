"""Targets and settings: the hosts file (TOML) and the command line's --uwsgi/--nginx targets.

A mistake in the hosts file is found before the first poll and reported as one line naming the
file, the line and what was expected, because a monitor that starts with half its hosts silently
missing is worse than one that refuses to start.
"""

from __future__ import annotations

import glob
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
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
# include = [...]: a fleet split one file per host is 500 files; the bounds keep a glob of /
# or a runaway generator from making stackmon read without end.
MAX_INCLUDE_FILES = 2000
MAX_INCLUDE_DEPTH = 8
MAX_INCLUDE_BYTES = 32 * 1024 * 1024


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
    # The load balancer in front (hosts file keys, docs/contracts.md; ELB defaults): its idle
    # timeout is a deadline of every request, its health check decides whether the host gets
    # traffic.
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
    # The host's own settings when its group has a [groups.NAME] table; None: the file's.
    settings: Settings | None = None


@dataclass(frozen=True, slots=True)
class Targets:
    hosts: tuple[HostConfig, ...]
    settings: Settings = field(default_factory=Settings)
    source: str = "command line"

    def settings_for(self, host: HostConfig) -> Settings:
        """The settings that apply to `host`: its group's, else the file's [defaults]."""
        return host.settings if host.settings is not None else self.settings


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
    if "include" in unknown:  # TOML puts a key after a [table] header into that table
        raise ConfigError(f"{where}: include must come before the first [table] of the file")
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


def _read_hosts_file(path: Path, what: str = "hosts file") -> bytes:
    """The file's bytes, read the bounded way: a hosts file is named by whoever starts
    stackmon (often root), and a FIFO there must not hang it nor /dev/zero eat its memory."""
    try:
        return read_file(path, limit=HOSTS_FILE_LIMIT, what=what)
    except BoundedReadError as exc:
        if exc.reason.endswith("does not exist"):
            raise ConfigError(f"{path}: no such {what}") from None
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


def _parse_toml(path: Path, raw_bytes: bytes) -> tuple[str, dict[str, Any]]:
    """(text, document) of one hosts file; ConfigError naming file and line otherwise."""
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
    return text, data


def _top_key_line(text: str, key: str) -> int:
    """The line where top-level `key` (a key or a [key...] / [[key]] header) first appears."""
    pat = re.compile(rf"^\s*\[?\[?\s*{re.escape(key)}\b")
    return next((i + 1 for i, ln in enumerate(text.splitlines()) if pat.match(ln)), 1)


def _group_line(text: str, group: str, key: str | None) -> int:
    """The line of `key` in the [groups.<group>] table (or of its header)."""
    lines = text.splitlines()
    header = re.compile(rf"^\s*\[\s*groups\s*\.\s*\"?{re.escape(group)}\"?\s*\]")
    start = next((i for i, ln in enumerate(lines) if header.match(ln)), None)
    if start is None:
        return _top_key_line(text, "groups")
    if key is not None:
        keypat = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for j in range(start + 1, len(lines)):
            if re.match(r"^\s*\[", lines[j]):
                break
            if keypat.match(lines[j]):
                return j + 1
    return start + 1


@dataclass(frozen=True, slots=True)
class _File:
    """One parsed file of a hosts file and its includes."""

    path: Path
    text: str
    data: dict[str, Any]


class _Includes:
    """Reads a hosts file and, depth first, the files its `include` patterns name.

    Bounded because an include is a path from configuration read by root: at most
    MAX_INCLUDE_FILES files, MAX_INCLUDE_DEPTH levels and MAX_INCLUDE_BYTES in all, each file
    read through bounded_io (regular files only, size-capped, non-blocking). A file that
    includes itself, directly or not, is a cycle and refused; a file reached twice by
    different paths is refused too (its hosts would appear twice anyway).
    """

    def __init__(self) -> None:
        self.files: list[_File] = []
        self.seen: dict[str, Path] = {}  # real path -> the file that included it
        self.total = 0

    def load(self, path: Path, chain: tuple[str, ...] = (),
             where: str | None = None) -> None:
        real = os.path.realpath(path)
        if real in chain:
            cycle = " -> ".join([*(str(c) for c in chain[chain.index(real):]), real])
            raise ConfigError(f"{where}: include cycle: {cycle}")
        if real in self.seen:
            raise ConfigError(f"{where}: {path} is included twice (also from "
                              f"{self.seen[real]})")
        if len(chain) > MAX_INCLUDE_DEPTH:
            raise ConfigError(f"{where}: includes nested more than {MAX_INCLUDE_DEPTH} deep")
        if len(self.files) >= MAX_INCLUDE_FILES:
            raise ConfigError(f"{where}: more than {MAX_INCLUDE_FILES} files included")
        if where is None:
            raw = _read_hosts_file(path)
        else:
            try:
                raw = read_file(path, limit=HOSTS_FILE_LIMIT, what="included file")
            except BoundedReadError as exc:
                raise ConfigError(f"{where}: include {path}: {exc.reason}") from None
        self.total += len(raw)
        if self.total > MAX_INCLUDE_BYTES:
            raise ConfigError(f"{where or path}: hosts files over {MAX_INCLUDE_BYTES} bytes "
                              "in all")
        self.seen[real] = Path(chain[-1]) if chain else path
        text, data = _parse_toml(path, raw)
        self.files.append(_File(path, text, data))
        for match in self._matches(path, text, data):
            self.load(match, (*chain, real), f"{path}:{_top_key_line(text, 'include')}")

    @staticmethod
    def _matches(path: Path, text: str, data: dict[str, Any]) -> list[Path]:
        """The files `include` names, in order: each pattern relative to `path`'s directory,
        its matches sorted; a pattern without wildcards must name an existing file, one with
        wildcards may match nothing (an empty hosts.d/ is normal)."""
        patterns = data.get("include", [])
        where = f"{path}:{_top_key_line(text, 'include')}"
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p.strip()
                                                     for p in patterns):
            raise ConfigError(f"{where}: include must be a list of paths or patterns, such as "
                              '["hosts.d/*.toml"]')
        out: list[Path] = []
        for pattern in patterns:
            full = Path(pattern).expanduser()
            if not full.is_absolute():
                full = path.parent / full
            if not glob.has_magic(str(full)):
                out.append(full)
                continue
            found = sorted(glob.glob(str(full)))
            if len(found) > MAX_INCLUDE_FILES:
                raise ConfigError(f"{where}: include {pattern!r} matches {len(found)} files, "
                                  f"over the limit of {MAX_INCLUDE_FILES}")
            out.extend(Path(f) for f in found)
        return out


def _check_keys(f: _File, top: bool) -> None:
    allowed = {"defaults", "host", "include", "groups"} if top else {"host", "include", "groups"}
    unknown = set(f.data) - allowed
    if not unknown:
        return
    key = sorted(unknown)[0]
    line = _top_key_line(f.text, key)
    if key == "defaults":
        raise ConfigError(f"{f.path}:{line}: [defaults] belongs in the main hosts file, not in "
                          "an included one (use [groups.NAME] for a group's own settings)")
    raise ConfigError(f"{f.path}:{line}: unknown section or key {key!r} (expected [defaults], "
                      "[groups.NAME], [[host]] tables and include)")


def _key_of(exc: ConfigError) -> str | None:
    """The key a parse_settings error is about, to find its line."""
    m = re.search(r"unknown key '([^']+)'", str(exc))
    if m:
        return m.group(1)
    return next((k for k in _DEFAULT_KEYS if f": {k}" in str(exc)), None)


def _settings(f: _File, overrides: dict[str, Any] | None) -> Settings:
    defaults = f.data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{f.path}:{_line_of(f.text, None, None)}: [defaults] must be a table")
    try:
        settings = parse_settings(defaults)
        if overrides:
            settings = parse_settings(overrides, "command line", settings)
    except ConfigError as exc:
        where = next((k for k in _DEFAULT_KEYS if f": {k}" in str(exc)), None)
        raise ConfigError(f"{f.path}:{_line_of(f.text, None, where)}: {exc}") from None
    return settings


def _groups(files: list[_File], base: Settings,
            overrides: dict[str, Any] | None) -> dict[str, tuple[Settings, str]]:
    """Each [groups.NAME] table as the settings of that group's hosts: the file's
    [defaults], then the group's keys, then the command line's (which win over both);
    with where it is defined, for messages."""
    out: dict[str, tuple[Settings, str]] = {}
    for f in files:
        groups = f.data.get("groups", {})
        line = _top_key_line(f.text, "groups")
        if not isinstance(groups, dict):
            raise ConfigError(f"{f.path}:{line}: groups must be tables such as [groups.api]")
        for name, raw in groups.items():
            where = f"{f.path}:{_group_line(f.text, name, None)}"
            if name in out:
                raise ConfigError(f"{where}: [groups.{name}] is defined twice (also at "
                                  f"{out[name][1]})")
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: [groups.{name}] must be a table")
            try:
                settings = parse_settings(raw, f"[groups.{name}]", base)
                if overrides:
                    settings = parse_settings(overrides, "command line", settings)
            except ConfigError as exc:
                line = _group_line(f.text, name, _key_of(exc))
                raise ConfigError(f"{f.path}:{line}: {exc}") from None
            out[name] = (settings, where)
    return out


def load_hosts_file(path: Path, overrides: dict[str, Any] | None = None) -> Targets:
    """Read and check a hosts file and the files it includes; any problem raises ConfigError
    naming file and line. Hosts keep the order they are read in: the main file's first, then
    each included file's, depth first, in the order of `include` and of each pattern's sorted
    matches."""
    loader = _Includes()
    loader.load(path)
    main, *included = loader.files
    for f in loader.files:
        _check_keys(f, f is main)
    settings = _settings(main, overrides)
    groups = _groups(loader.files, settings, overrides)
    hosts: list[HostConfig] = []
    first_at: dict[str, str] = {}
    for f in loader.files:
        hosts_raw = f.data.get("host", [])
        if not isinstance(hosts_raw, list):
            raise ConfigError(f"{f.path}:{_top_key_line(f.text, 'host')}: host entries must "
                              "be [[host]] tables")
        for i, raw in enumerate(hosts_raw):
            host = _host(raw, i, f.text, f.path)
            where = f"{f.path}:{_line_of(f.text, i, 'name')}"
            if host.name in first_at:
                raise ConfigError(f"{where}: host name {host.name!r} appears twice (also at "
                                  f"{first_at[host.name]})")
            first_at[host.name] = where
            if host.group is not None and host.group in groups:
                host = replace(host, settings=groups[host.group][0])
            hosts.append(host)
    if not hosts:
        where = f"{path} and the files it includes" if included else str(path)
        raise ConfigError(f"{where}: no [[host]] tables: nothing to watch")
    used = {h.group for h in hosts}
    for name, (_, where) in groups.items():
        if name not in used:
            known = ", ".join(sorted(g for g in used if g)) or "none"
            raise ConfigError(f"{where}: [groups.{name}] names a group no host is in (groups "
                              f"of the hosts: {known})")
    return Targets(hosts=tuple(hosts), settings=settings, source=str(path))


def select_group(targets: Targets, group: str) -> Targets:
    """Only the hosts of `group` (`--group G`); ConfigError naming the groups there are."""
    hosts = tuple(h for h in targets.hosts if h.group == group)
    if not hosts:
        known = sorted({h.group for h in targets.hosts if h.group})
        listed = ", ".join(known) if known else "no host has a group"
        raise ConfigError(f"no host in group {group!r} in {targets.source} (groups: {listed})")
    return replace(targets, hosts=hosts)


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

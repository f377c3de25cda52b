"""Find the logs of a running nginx and uWSGI without configuration.

nginx (`nginx_logs(master_pid)`): the master's command line (`-c CONF`, `-p PREFIX`, `-e
ERRORLOG`; nginx rewrites its title to "nginx: master process <argv>") names the config;
without `-c`/`-p` the compiled defaults of its binary (`nginx -V`: --prefix, --conf-path,
--error-log-path, --http-log-path) apply, as nginx applies them. The config is tokenised with
crossplane's lexer (nginx's own grammar) and walked here, `include`s followed (globs, relative
to the main config's directory) with every file read through stackmon.bounded_io (non-blocking,
regular files only, size-capped). Collected:
- every `error_log` (main, http, server, location; `-e` replaces the main-level default);
- every `access_log` (http, server, location), with its `log_format` compiled (`combined` is
  built in); none at http level means nginx's compiled default path with `combined`;
- relative paths are relative to the prefix, as nginx resolves them.

uWSGI (`uwsgi_log(master_pid)`): its options (stackmon.uwsgi_ini.instance_options): `logger =
[name] file:PATH` (or `file:PATH`), else `logto`/`logto2`, else `daemonize`/`daemonize2`, else
the master's stderr when that is a regular file (/proc/PID/fd/2: a service manager or a shell
redirect), else it is the terminal or journald.

A destination that is not a file gives a `LogTarget` with `not_file` set ("syslog:server=...",
"stderr", "off", "/dev/stdout", a path with variables), so the UI says why there are no figures
instead of showing zeros. Nothing here raises: problems are `error` strings on the result.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from stackmon.bounded_io import BoundedReadError, User, read_file
from stackmon.logs.nginx_format import COMBINED, LogFormat, format_from_args
from stackmon.model import SourceError
from stackmon.nginx_master import master_paths

__all__ = ["LogTarget", "NginxLogs", "nginx_logs", "nginx_logs_from_conf", "uwsgi_log"]

_MAX_FILES = 256
_MAX_DEPTH = 16
_MAX_BLOCK_DEPTH = 64


@dataclass(frozen=True)
class LogTarget:
    """One log stackmon could follow. Exactly one of `path` and `not_file` is set.

    kind: "nginx_access", "nginx_error" or "uwsgi".
    where: what named it ("nginx.conf:12", "<cmdline -e>", "nginx default", "uwsgi.ini:7").
    log_format: for access logs, the compiled format (`format_error` when it is unknown).
    notes: things worth saying ("buffered: lines arrive up to 5s late").
    """

    kind: str
    path: str | None
    where: str
    not_file: str | None = None
    log_format: LogFormat | None = None
    format_error: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def message(self) -> str | None:
        """The one line the UI shows when this log cannot be read as a file."""
        if self.not_file is None:
            return None
        return f"not a file: {self.not_file} ({self.where})"


@dataclass(frozen=True)
class NginxLogs:
    """What an nginx config says about its logs; `error` when the config could not be read."""

    conf: str | None
    access: tuple[LogTarget, ...] = ()
    errors: tuple[LogTarget, ...] = ()
    error: str | None = None
    files: tuple[str, ...] = field(default=())


@dataclass
class _Stmt:
    name: str
    args: list[str]
    file: str
    line: int
    block: list[_Stmt] | None = None

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"


# ------------------------------------------------------------------ nginx


def nginx_logs(master_pid: int, *, as_user: User | None = None) -> NginxLogs:
    """The logs of the running nginx master `master_pid` (see the module docstring).

    as_user: read its config files only if that user (the master's) could; where its files
    are comes from stackmon.nginx_master (its binary run for `-V` only when trusted)."""
    paths = master_paths(master_pid)
    if isinstance(paths, SourceError):
        return NginxLogs(conf=None, error=paths.message)
    return nginx_logs_from_conf(paths.conf, prefix=paths.prefix, as_user=as_user,
                                default_error=(paths.error_log, paths.error_log_where),
                                default_access=paths.access_log)


def nginx_logs_from_conf(conf: str, *, prefix: str | None = None,
                         as_user: User | None = None,
                         default_error: tuple[str, str] | None = None,
                         default_access: str = "logs/access.log") -> NginxLogs:
    """The logs an nginx config names. `prefix` resolves relative paths (default: the
    config's parent directory's parent, nginx's layout `PREFIX/conf/nginx.conf`)."""
    conf = os.path.abspath(conf)
    if prefix is None:
        prefix = os.path.dirname(os.path.dirname(conf))
    files: list[str] = []
    try:
        stmts = _parse_file(conf, os.path.dirname(conf), files, 0, as_user)
    except _ConfError as exc:
        return NginxLogs(conf=conf, error=str(exc), files=tuple(files))
    formats: dict[str, LogFormat] = {"combined": COMBINED}
    for stmt, _ in _walk(stmts, ()):
        if stmt.name == "log_format" and stmt.args:
            formats[stmt.args[0]] = format_from_args(stmt.args)
    errors = [_error_target(s, prefix) for s, ctx in _walk(stmts, ())
              if s.name == "error_log" and s.args]
    if not any(s.name == "error_log" for s in stmts) and default_error is not None:
        errors.insert(0, _file_or_not("nginx_error", default_error[0], prefix, default_error[1]))
    access = [_access_target(s, prefix, formats) for s, ctx in _walk(stmts, ())
              if s.name == "access_log" and s.args]
    http = [s for s in stmts if s.name == "http" and s.block is not None]
    if http and not any(s.name == "access_log" for h in http for s in h.block or ()):
        target = _file_or_not("nginx_access", default_access, prefix, "nginx default")
        access.insert(0, LogTarget(target.kind, target.path, target.where, target.not_file,
                                   COMBINED))
    return NginxLogs(conf=conf, access=_dedupe(access), errors=_dedupe(errors),
                     files=tuple(files))


def _dedupe(targets: Sequence[LogTarget]) -> tuple[LogTarget, ...]:
    """One target per path (a path named in several servers is one log); `off` dropped."""
    seen: set[str] = set()
    out = []
    for t in targets:
        key = t.path or t.not_file or ""
        if key in seen or t.not_file == "off":
            continue
        seen.add(key)
        out.append(t)
    return tuple(out)


def _error_target(stmt: _Stmt, prefix: str) -> LogTarget:
    return _file_or_not("nginx_error", stmt.args[0], prefix,
                        f"{stmt.file}:{stmt.line}")


def _access_target(stmt: _Stmt, prefix: str, formats: dict[str, LogFormat]) -> LogTarget:
    target = _file_or_not("nginx_access", stmt.args[0], prefix, f"{stmt.file}:{stmt.line}")
    name = stmt.args[1] if len(stmt.args) > 1 and "=" not in stmt.args[1] else "combined"
    fmt = formats.get(name)
    notes = []
    if any(a.startswith(("buffer=", "flush=")) for a in stmt.args[1:]):
        notes.append("buffered access_log: lines arrive when the buffer flushes")
    return LogTarget(target.kind, target.path, target.where, target.not_file, fmt,
                     None if fmt else f"log_format {name!r} is not defined", tuple(notes))


def _file_or_not(kind: str, value: str, prefix: str, where: str) -> LogTarget:
    if value == "off":
        return LogTarget(kind, None, where, "off")
    if value in ("stderr", "stdout") or value.startswith(("syslog:", "memory:")):
        return LogTarget(kind, None, where, value)
    if value.startswith("/dev/") or value.startswith("/proc/"):
        return LogTarget(kind, None, where, f"{value} (not a regular file)")
    if "$" in value:
        return LogTarget(kind, None, where, f"{value} (a path with variables: one file per "
                                            "value)")
    return LogTarget(kind, os.path.normpath(os.path.join(prefix, value)), where)


class _ConfError(Exception):
    pass


def _parse_file(path: str, conf_dir: str, files: list[str], depth: int,
                user: User | None = None) -> list[_Stmt]:
    if depth > _MAX_DEPTH or len(files) >= _MAX_FILES:
        raise _ConfError(f"{path}: includes nested too deep or too many files")
    try:
        text = read_file(path, what="nginx config", as_user=user).decode("utf-8", "replace")
    except BoundedReadError as exc:
        raise _ConfError(str(exc)) from None
    files.append(path)
    tokens = _tokens(text, path)
    stmts = _statements(tokens, path, conf_dir, files, depth, user)
    return stmts


def _tokens(text: str, path: str) -> Iterator[tuple[str, int, bool]]:
    """crossplane's tokeniser on text we read ourselves (crossplane would open the file
    itself, without the FIFO/size guards of bounded_io)."""
    from crossplane.lexer import _lex_file_object  # nginx's grammar: quotes, escapes, ${}

    try:
        yield from _lex_file_object(text.splitlines(keepends=True))
    except Exception as exc:  # crossplane raises its own syntax errors
        raise _ConfError(f"{path}: cannot tokenise: {exc}") from None


def _statements(tokens: Iterator[tuple[str, int, bool]], path: str, conf_dir: str,
                files: list[str], depth: int, user: User | None = None,
                nesting: int = 0) -> list[_Stmt]:
    if nesting > _MAX_BLOCK_DEPTH:
        raise _ConfError(f"{path}: blocks nested more than {_MAX_BLOCK_DEPTH} deep")
    out: list[_Stmt] = []
    current: _Stmt | None = None
    for token, line, quoted in tokens:
        if not quoted and token == "}":
            return out
        if current is None:
            current = _Stmt(token, [], path, line)
            continue
        if not quoted and token == ";":
            out.extend(_expand(current, conf_dir, files, depth, user))
            current = None
        elif not quoted and token == "{":
            current.block = _statements(tokens, path, conf_dir, files, depth, user,
                                        nesting + 1)
            out.append(current)
            current = None
        else:
            current.args.append(token)
    return out


def _expand(stmt: _Stmt, conf_dir: str, files: list[str], depth: int,
            user: User | None = None) -> list[_Stmt]:
    """An `include` becomes the statements of the files it names; others stay."""
    if stmt.name != "include" or not stmt.args:
        return [stmt]
    pattern = os.path.join(conf_dir, stmt.args[0])
    names = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    out: list[_Stmt] = []
    for name in names:
        if name in files:
            continue
        out.extend(_parse_file(name, conf_dir, files, depth + 1, user))
    return out


def _walk(stmts: Sequence[_Stmt], ctx: tuple[str, ...]) -> Iterator[tuple[_Stmt, tuple[str, ...]]]:
    for s in stmts:
        yield s, ctx
        if s.block is not None:
            yield from _walk(s.block, (*ctx, s.name))


# ------------------------------------------------------------------ uWSGI


def uwsgi_log(master_pid: int) -> LogTarget:
    """Where the uWSGI master `master_pid` logs (see the module docstring)."""
    from stackmon.uwsgi_ini import all_values, instance_options, last

    options = instance_options(master_pid)
    if isinstance(options, SourceError):
        return LogTarget("uwsgi", None, f"uWSGI master {master_pid}",
                         f"its configuration could not be read: {options.message}")
    cwd = _cwd(master_pid)
    for opt in reversed(all_values(options, "logger")):
        value = opt.value.strip()
        spec = value.split(None, 1)[-1] if " " in value else value
        if spec.startswith("file:"):
            path = spec[5:]
            if "logfile=" in path:  # file:logfile=PATH,maxsize=N
                path = path.split("logfile=", 1)[1].split(",", 1)[0]
            return LogTarget("uwsgi", _abspath(path, cwd), opt.where)
    loggers = all_values(options, "logger")
    if loggers:
        return LogTarget("uwsgi", None, loggers[-1].where, f"logger = {loggers[-1].value}")
    for key in ("logto", "logto2", "daemonize", "daemonize2"):
        found = last(options, key)
        if found is not None and found.value.strip():
            value = found.value.strip()
            if ":" in value and not value.startswith("/"):
                return LogTarget("uwsgi", None, found.where, f"{key} = {value} (a network "
                                                            "address)")
            return LogTarget("uwsgi", _abspath(value, cwd), found.where)
    return _stderr_target(master_pid)


def _stderr_target(master_pid: int) -> LogTarget:
    where = f"/proc/{master_pid}/fd/2"
    try:
        target = os.readlink(where)
        st = os.stat(where)
    except OSError as exc:
        return LogTarget("uwsgi", None, where, f"stderr (cannot inspect: {exc.strerror})")
    import stat as stat_mod

    if stat_mod.S_ISREG(st.st_mode) and target.startswith("/"):
        return LogTarget("uwsgi", target.removesuffix(" (deleted)"),
                         "stderr of the master (no logto)")
    return LogTarget("uwsgi", None, where, f"stderr -> {target} (a terminal, pipe or journald)")


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return "/"


def _abspath(path: str, cwd: str) -> str:
    return os.path.normpath(os.path.join(cwd, path))


def describe(target: LogTarget) -> dict[str, Any]:
    """A plain dict of a target (for JSON and tests)."""
    return {"kind": target.kind, "path": target.path, "where": target.where,
            "not_file": target.not_file,
            "log_format": target.log_format.name if target.log_format else None,
            "format_error": target.format_error, "notes": list(target.notes)}

"""A uWSGI instance's configuration, option by option, with the file and line each came from.

Reload parameters (`worker-reload-mercy`, `harakiri`, `listen`, `master-fifo`) are not in the
stats document, so the reload action and the doctor read them from the instance's own config:
its command line (/proc/PID/cmdline) names the ini files and options, and this module turns that
into an ordered list of `Option`s. Every Option keeps where it was set, so a finding or a
confirmation dialog can say "uwsgi.ini:12: worker-reload-mercy = 90" rather than just "90".

uWSGI's ini dialect, as uWSGI 2.0.31 itself reads it (checked with `--show-config`):
- `[section]` headers; only the asked section (default `uwsgi`) counts, and a section may appear
  several times (all of them count, in order). Lines before any header are ignored.
- `key = value`, whitespace around both stripped. Keys repeat (`socket`, `env`...) and every
  occurrence is kept in order; for single-valued options the last one wins (`last()`).
- Whole-line comments start with `#` or `;`. There are NO inline comments: in
  `listen = 77 ; note` the value is `77 ; note` (uWSGI then reads 77 with atoi, and so does
  `get_int`).
- A bare word without `=` (`master`) is accepted by uWSGI as that option with an empty value,
  which for a flag means "on"; it is kept here with the value "true". A line that is not a
  single option name and has no `=` is rejected as malformed (uWSGI would take the whole line
  as an option name and ignore it, or refuse it under `strict`).
- `%(name)` is replaced by the value of an option set earlier, `$(NAME)` by the instance's
  environment variable; the magic variables `%d` (the
  file's directory, with a trailing slash), `%p` (its absolute path), `%s` (its name), `%n`
  (name without extension), `%e` (extension), `%c` (name of its directory) and `%%` are
  expanded too, because paths such as `master-fifo = %d/master.fifo` are common.
- `ini = OTHER` (and `include = OTHER`) inside a file loads another ini file at that point,
  followed here as well (relative to the instance's cwd, else to the including file; cycles
  are refused).

Keys are normalised (lowercase, `_` -> `-`) so `worker_reload_mercy` and `worker-reload-mercy`
compare equal. Errors are `ConfigFileError` (a ValueError whose str() names file and line),
never a traceback.

Bounds, because the files are named by a process's command line, which any user can write
(stackmon runs as root, and `--ini /dev/zero` once drove a reload to 9.4 GB): every file is
read through stackmon.bounded_io (regular files only, non-blocking open, at most
MAX_FILE_BYTES), at most MAX_FILES files and MAX_TOTAL_BYTES per command line, includes at
most _MAX_DEPTH deep, an expanded value at most MAX_VALUE_CHARS (`%(x)` of `%(x)%(x)`... would
double at every line). For a running instance (`instance_options`) a file is read only if the
master's user could read it itself (`as_user`): root must not read, and then show, a file on
behalf of whoever wrote that command line. /proc/PID/cmdline and environ are bounded too.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stackmon.bounded_io import BoundedReadError, User, read_file
from stackmon.model import SourceError

__all__ = [
    "CMDLINE",
    "ENVIRON",
    "ConfigFileError",
    "Option",
    "all_values",
    "get_bool",
    "get_int",
    "get_seconds",
    "instance_options",
    "last",
    "normalise_key",
    "options_from_argv",
    "parse_int",
    "read_ini",
    "split_section",
]

CMDLINE = "<cmdline>"
ENVIRON = "<environ>"
SOURCE = "uwsgi config"

_MAX_DEPTH = 8
MAX_FILE_BYTES = 1024 * 1024  # an ini is rarely 100 KB
MAX_FILES = 64  # ini files read for one command line, includes included
MAX_TOTAL_BYTES = 8 * 1024 * 1024
MAX_VALUE_CHARS = 64 * 1024  # one option's value after %(...) / $(...) expansion
MAX_PROC_BYTES = 1024 * 1024  # /proc/PID/cmdline and /proc/PID/environ
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_PLACEHOLDER = re.compile(r"%\(([^)]*)\)|\$\(([^)]*)\)|%(.)")

# uWSGI options that take no argument (getopt no_argument): on the command line the next
# word is NOT their value. The ones that matter for a web stack; an unknown option is judged
# by whether the next word looks like an option.
FLAGS = frozenset({
    "master", "vacuum", "die-on-term", "enable-threads", "lazy-apps", "lazy", "no-orphans",
    "memory-report", "strict", "need-app", "stats-http", "stats-minified", "stats-no-cores",
    "stats-no-metrics", "single-interpreter", "thunder-lock", "harakiri-verbose",
    "harakiri-no-arh", "disable-logging", "log-master", "log-x-forwarded-for", "log-4xx",
    "log-5xx", "log-zero", "threaded-logger", "cheaper-busyness-verbose",
    "show-config", "version", "help", "master-as-root",
    "close-on-exec", "close-on-exec2", "reuse-port", "tcp-nodelay", "so-keepalive",
    "no-default-app", "manage-script-name", "catch-exceptions", "reload-on-exception",
    "auto-procname", "no-server", "honour-stdin", "skip-atexit", "emperor-tyrant",
    "spooler-ordered",
})

# Short options (`uwsgi -s :3031 -M -p 4`): name, and whether it takes a value.
SHORT = {
    "s": ("socket", True), "l": ("listen", True), "M": ("master", False),
    "p": ("processes", True), "t": ("harakiri", True), "R": ("max-requests", True),
    "T": ("enable-threads", False), "L": ("disable-logging", False), "w": ("module", True),
    "H": ("home", True), "b": ("buffer-size", True), "z": ("socket-timeout", True),
    "m": ("memory-report", False), "d": ("daemonize", True), "C": ("chmod-socket", True),
    "x": ("xmlconfig", True), "j": ("json", True), "y": ("yaml", True),
    "i": ("single-interpreter", False), "A": ("sharedarea", True), "Q": ("spooler", True),
    "v": ("version", False), "h": ("help", False), "V": ("version", False),
}

# Options that load more configuration at their position.
_INI_KEYS = frozenset({"ini", "include"})
_OTHER_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".xml": "xml",
                  ".js": "json"}

# UWSGI_* environment variables are options too (uWSGI parses them before argv), except the
# ones uWSGI sets for itself across reloads and for vassals.
_ENV_INTERNAL = ("UWSGI_RELOADS", "UWSGI_ORIGINAL_PROC_NAME", "UWSGI_VASSALS_DIR",
                 "UWSGI_SECURE_COOKIE", "UWSGI_EMPEROR_", "UWSGI_VASSAL_", "UWSGI_JAIL_",
                 "UWSGI_FD", "UWSGI_SOCKET_FD", "UWSGI_MASTER_FD", "UWSGI_FORKED",
                 "UWSGI_BROODLORD", "UWSGI_ZERG")

_FALSE = frozenset({"false", "off", "no", "0", "n"})


class ConfigFileError(ValueError):
    """A config file (or command line) that cannot be read as uWSGI would.

    str() is "FILE:LINE: message", the one line a user needs; "FILE: message" when the problem
    is the whole file (missing, unreadable: line 0).
    """

    def __init__(self, file: str | os.PathLike[str], line: int, message: str) -> None:
        self.file = str(file)
        self.line = line
        self.message = message
        super().__init__(f"{self.file}:{line}: {message}" if line > 0
                         else f"{self.file}: {message}")


class _Budget:
    """What one command line may still cost: files and bytes, shared by all its includes."""

    def __init__(self) -> None:
        self.files = MAX_FILES
        self.bytes = MAX_TOTAL_BYTES

    def take(self, path: Path, size: int) -> None:
        self.files -= 1
        self.bytes -= size
        if self.files < 0:
            raise ConfigFileError(path, 0, f"more than {MAX_FILES} ini files for one instance; "
                                           "not reading more")
        if self.bytes < 0:
            raise ConfigFileError(path, 0, f"the instance's ini files are over "
                                           f"{MAX_TOTAL_BYTES} bytes in all; not reading more")


@dataclass(frozen=True)
class Option:
    """One option as set: normalised key, raw value, and where (file and 1-based line; for the
    command line file is "<cmdline>" and line is the argv index; "<environ>" line 0 for a
    UWSGI_* environment variable)."""

    key: str
    value: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line > 0 or self.file == CMDLINE else self.file


def normalise_key(key: str) -> str:
    """uWSGI option names compared the way users think of them: case and `_`/`-` ignored."""
    return key.strip().lower().replace("_", "-")


# ------------------------------------------------------------------ ini files


def _magic(path: Path) -> dict[str, str]:
    absolute = path if path.is_absolute() else Path(os.path.abspath(path))
    return {
        "d": str(absolute.parent).rstrip("/") + "/",
        "p": str(absolute),
        "s": absolute.name,
        "n": absolute.stem,
        "e": absolute.suffix,
        "c": absolute.parent.name,
        "%": "%",
    }


def _expand(value: str, magic: dict[str, str], seen: Sequence[Option],
            env: Mapping[str, str] | None) -> str:
    """%(name): the value of an option set before (latest wins); $(NAME): an environment
    variable of the instance (`env`; this process's when None); magic vars (%d, %n...). An
    unknown placeholder is left as written, so the evidence shows it."""
    if "%" not in value and "$(" not in value:
        return value
    environ = os.environ if env is None else env

    def repl(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            found = last(seen, m.group(1))
            return found.value if found is not None else m.group(0)
        if m.group(2) is not None:
            return environ.get(m.group(2), m.group(0))
        return magic.get(m.group(3), m.group(0))

    expanded = _PLACEHOLDER.sub(repl, value)
    if len(expanded) > MAX_VALUE_CHARS:
        raise ValueError(f"expands to over {MAX_VALUE_CHARS} characters")
    return expanded


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigFileError(file, line, "not valid UTF-8") from None


def _read_bytes(path: Path, as_user: User | None = None) -> bytes:
    """The file's bytes, bounded (see the module docstring); `as_user` must be able to read it."""
    try:
        return read_file(path, limit=MAX_FILE_BYTES, what="ini file", as_user=as_user)
    except BoundedReadError as exc:
        reason = exc.reason
        if reason.endswith("does not exist"):
            reason = "no such file"
        elif "Permission denied" in reason:
            reason = "permission denied (run as the uWSGI user or root)"
        raise ConfigFileError(path, 0, reason) from None


def split_section(spec: str) -> tuple[str, str | None]:
    """`app.ini:prod` -> ("app.ini", "prod"), as uWSGI's `--ini FILE:SECTION`. Only split when
    the part after the last ':' looks like a section name and not like a path."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and "/" not in tail and _NAME.match(tail):
        return head, tail
    if sep and head and not tail:
        return head, None
    return spec, None


def read_ini(path: str | os.PathLike[str], section: str = "uwsgi", *,
             cwd: str | None = None, env: Mapping[str, str] | None = None,
             as_user: User | None = None, _budget: _Budget | None = None,
             _stack: tuple[str, ...] = (), _seen: Sequence[Option] = ()) -> list[Option]:
    """Every option of `section` in the ini file at `path`, in order, with file:line.

    Raises ConfigFileError for a missing/unreadable file, invalid UTF-8, a malformed line, or a
    file without the section (uWSGI only warns about that and then runs on defaults, which is
    never what the author meant). `cwd` is where relative `ini =` includes are looked for first
    (the instance's working directory). `as_user`: read a file (and its includes) only if that
    user could (ConfigFileError saying so otherwise). Sizes and counts are bounded (module
    docstring).
    """
    budget = _budget if _budget is not None else _Budget()
    p = Path(path)
    file = str(p)
    if len(_stack) >= _MAX_DEPTH:
        raise ConfigFileError(_stack[-1], 0, f"includes nested deeper than {_MAX_DEPTH}")
    real = os.path.realpath(p)
    if real in _stack:
        raise ConfigFileError(file, 0, "includes itself (include cycle)")
    data = _read_bytes(p, as_user)
    budget.take(p, len(data))
    text = _decode(data, file)
    magic = _magic(p)
    out: list[Option] = []
    current: str | None = None
    found_section = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigFileError(file, number, f"section header without ']': {line[:60]!r}")
            current = line[1:-1].strip()
            if current == section:
                found_section = True
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            if not _NAME.match(line):
                raise ConfigFileError(file, number,
                                      f"expected 'key = value', got {line[:60]!r}")
            value = "true"
        elif not key:
            raise ConfigFileError(file, number, "option without a name before '='")
        if current != section:
            continue
        norm = normalise_key(key)
        try:
            value = _expand(value, magic, [*_seen, *out], env)
        except ValueError as exc:
            raise ConfigFileError(file, number, f"{norm}: {exc}") from None
        opt = Option(norm, value, file, number)
        out.append(opt)
        if norm in _INI_KEYS and value:
            out.extend(_include(value, opt, cwd, p, (*_stack, real), [*_seen, *out], env,
                                as_user, budget))
    if not found_section:
        raise ConfigFileError(file, 0, f"no [{section}] section")
    return out


def _include(spec: str, where: Option, cwd: str | None, including: Path,
             stack: tuple[str, ...], seen: Sequence[Option],
             env: Mapping[str, str] | None, as_user: User | None,
             budget: _Budget) -> list[Option]:
    """Options of an `ini = FILE[:SECTION]` met inside a file or on the command line."""
    name, section = split_section(spec)
    if name.startswith(("http://", "https://", "exec://", "data://", "sym://", "fd://")):
        raise ConfigFileError(where.file, where.line,
                              f"{where.key} = {spec}: only local files can be read")
    candidates = [Path(name)]
    if not os.path.isabs(name):
        bases = [b for b in (cwd, str(including.parent) if including.name else None) if b]
        candidates = [Path(b) / name for b in bases] or [Path(name)]
    target = next((c for c in candidates if c.exists()), candidates[0])
    suffix = target.suffix.lower()
    if suffix in _OTHER_FORMATS:
        raise ConfigFileError(where.file, where.line,
                              f"{where.key} = {spec}: {_OTHER_FORMATS[suffix]} configs are "
                              "not read by stackmon (only ini)")
    try:
        return read_ini(target, section or "uwsgi", cwd=cwd, env=env, as_user=as_user,
                        _budget=budget, _stack=stack, _seen=seen)
    except ConfigFileError as exc:
        if exc.line == 0 and exc.file == str(target) and "no such file" in exc.message:
            raise ConfigFileError(where.file, where.line,
                                  f"{where.key} = {spec}: no such file ({target})") from None
        raise


# ------------------------------------------------------------------ command lines


def _looks_like_value(word: str) -> bool:
    return not word.startswith("-") or bool(re.match(r"^-\d", word))


def options_from_argv(argv: Sequence[str], cwd: str,
                      environ: Iterable[str] = (), *,
                      as_user: User | None = None) -> list[Option]:
    """The options of a uWSGI command line, in the order uWSGI applies them.

    argv[0] is the program. `--key value`, `--key=value`, flags (`--master` -> "true"), short
    options (`-s :3031 -M`), `--ini FILE[:SECTION]` and bare `FILE.ini` arguments (expanded via
    read_ini, relative to `cwd`; the `ini` option itself is kept as evidence). `environ`
    (KEY=VALUE strings, e.g. from /proc/PID/environ) contributes UWSGI_* variables first, as
    uWSGI parses them before argv. Raises ConfigFileError when a named ini file cannot be read
    (or `as_user` could not read it, or the bounds are exceeded).
    """
    budget = _Budget()
    out: list[Option] = []
    environ = list(environ)
    env = dict(e.partition("=")[::2] for e in environ if "=" in e) if environ else None
    for entry in environ:
        name, sep, value = entry.partition("=")
        if (sep and name.startswith("UWSGI_") and len(name) > 6
                and not name.startswith(_ENV_INTERNAL)):
            out.append(Option(normalise_key(name[6:]), value, ENVIRON, 0))
    here = Path(cwd) / "<cmdline>"
    i = 1
    while i < len(argv):
        arg = argv[i]
        index = i
        i += 1
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            key = normalise_key(name)
            if not sep:
                if key in FLAGS:
                    value = "true"
                elif i < len(argv) and _looks_like_value(argv[i]):
                    value = argv[i]
                    i += 1
                else:
                    value = "true"
        elif arg.startswith("-") and len(arg) > 1 and not _looks_like_value(arg):
            letter, rest = arg[1], arg[2:]
            key, takes = SHORT.get(letter, (letter, True))
            if not takes:
                value = "true"
                # combined flags: -MT
                for extra in rest:
                    more, _ = SHORT.get(extra, (extra, False))
                    out.append(Option(more, "true", CMDLINE, index))
            elif rest:
                value = rest
            elif i < len(argv) and _looks_like_value(argv[i]):
                value = argv[i]
                i += 1
            else:
                value = "true"
        elif arg.lower().endswith(".ini") or ".ini:" in arg:
            key, value = "ini", arg
        elif os.path.splitext(arg)[1].lower() in _OTHER_FORMATS:
            key, value = _OTHER_FORMATS[os.path.splitext(arg)[1].lower()], arg
        else:
            continue  # uWSGI ignores stray words too
        opt = Option(key, value, CMDLINE, index)
        out.append(opt)
        if key in _INI_KEYS:
            out.extend(_include(value, opt, cwd, here, (), out, env, as_user, budget))
    return out


def _read_proc(path: str) -> bytes:
    """A /proc file, size-capped: a process chooses its own command line and environment."""
    return read_file(path, limit=MAX_PROC_BYTES, what=os.path.basename(path))


def instance_options(master_pid: int) -> list[Option] | SourceError:
    """The configuration the uWSGI master `master_pid` runs with, from its command line.

    Relative ini paths are resolved against the master's cwd; when the file is not there (a
    `chdir` option moved the process after start-up) the PWD it was started with is tried.
    Gives a SourceError (never raises) when the process is gone, not ours to read, has
    rewritten its command line (`procname-master` and friends), or names a file that cannot
    be read now (edited or deleted since start: the running instance may differ from it), or
    that the process's own user could not read (files are read with its rights, not ours).
    """
    proc = f"/proc/{master_pid}"
    try:
        raw = _read_proc(f"{proc}/cmdline")
        user = User.of_process(master_pid)
    except BoundedReadError as exc:
        if exc.reason.endswith("does not exist"):
            return SourceError(SOURCE, f"uWSGI master {master_pid} has exited")
        if "Permission denied" in exc.reason:
            return SourceError(SOURCE, f"not allowed to read {proc}/cmdline: run stackmon as "
                                       "the uWSGI user or root")
        return SourceError(SOURCE, f"{exc}")
    argv = [a.decode("utf-8", "surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")]
    if not argv or not argv[0]:
        return SourceError(SOURCE, f"process {master_pid} has no command line (exited?)")
    if len(argv) == 1 and " " in argv[0] and "uwsgi" not in os.path.basename(
            argv[0].split(" ", 1)[0]):
        return SourceError(SOURCE, f"uWSGI master {master_pid} rewrote its command line "
                                   f"({argv[0][:40]!r}: procname options?); give its ini file "
                                   "with --uwsgi-ini")
    try:
        cwd = os.readlink(f"{proc}/cwd")
    except OSError:
        cwd = "/"
    environ: list[str] = []
    # Another user's environment may be unreadable: then only the command line counts.
    with contextlib.suppress(OSError):
        environ = [e.decode("utf-8", "surrogateescape")
                   for e in _read_proc(f"{proc}/environ").split(b"\0") if e]
    bases = [cwd]
    pwd = next((e[4:] for e in environ if e.startswith("PWD=")), None)
    if pwd and pwd != cwd:
        bases.append(pwd)
    first_error: ConfigFileError | None = None
    for base in bases:
        try:
            return options_from_argv(argv, base, environ, as_user=user)
        except ConfigFileError as exc:
            first_error = first_error or exc
    assert first_error is not None
    return SourceError(SOURCE, f"uWSGI master {master_pid}: {first_error}")


# ------------------------------------------------------------------ lookups


def last(options: Sequence[Option], key: str, default: str | None = None) -> Option | None:
    """The option that decides a single-valued setting (the last one set), or None.

    With `default`, an unset key gives an Option with that value, file "<default>" and line 0,
    so evidence can say "(uWSGI default)".
    """
    want = normalise_key(key)
    for opt in reversed(options):
        if opt.key == want:
            return opt
    if default is not None:
        return Option(want, default, "<default>", 0)
    return None


def all_values(options: Sequence[Option], key: str) -> list[Option]:
    """Every occurrence of a repeatable option (`socket`, `env`...) in order."""
    want = normalise_key(key)
    return [opt for opt in options if opt.key == want]


def parse_int(value: str) -> tuple[int, bool]:
    """(number, clean) with C atoi() semantics, which is how uWSGI reads integer options:
    leading blanks and sign, then digits; anything after is ignored ("2m" is 2, "abc" is 0).
    clean is False when text was ignored, which is usually a mistake worth a warning."""
    m = re.match(r"^\s*([+-]?\d+)", value)
    if not m:
        return 0, value.strip() == ""
    return int(m.group(1)), m.end() == len(value.rstrip())


def get_int(options: Sequence[Option], key: str, default: int | None = None) -> int | None:
    """The integer value of a single-valued option as uWSGI reads it (atoi), or `default`."""
    opt = last(options, key)
    if opt is None:
        return default
    return parse_int(opt.value)[0]


def get_seconds(options: Sequence[Option], key: str,
                default: float | None = None) -> float | None:
    """A duration option (harakiri, worker-reload-mercy, socket-timeout...) in seconds: uWSGI
    takes these as whole seconds, atoi-style."""
    value = get_int(options, key)
    return float(value) if value is not None else default


def get_bool(options: Sequence[Option], key: str, default: bool = False) -> bool:
    """A flag: set (any value but false/off/no/0) or `default` when absent."""
    opt = last(options, key)
    if opt is None:
        return default
    return opt.value.strip().lower() not in _FALSE

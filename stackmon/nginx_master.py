"""What a running nginx master was started with: its config file, prefix and default logs.

The log sources, the deadlines (uwsgi_read_timeout by location) and the doctor all need the
running nginx's config; this is the one place that finds it, the way nginx itself resolves it.
nginx overwrites its argv with "nginx: master process <original argv joined by spaces>", so
`-c`, `-p` and `-e` are read back from that title; without them the defaults compiled into the
binary apply (`nginx -V`: --prefix, --conf-path, --error-log-path, --http-log-path).

Running `nginx -V` is running a program as root: the binary is run only when it cannot have
been planted by another user (trusted_binary): the process runs as root and the binary is a
regular file owned by root that nobody else can write. An unprivileged user can name a process
"nginx: master process" and hold a port; root must never execute its binary. Untrusted, the
compiled defaults are simply unknown and nginx's stock ones are assumed.
"""

from __future__ import annotations

import functools
import os
import stat
import subprocess
from dataclasses import dataclass

from stackmon.bounded_io import BoundedReadError, read_file
from stackmon.model import SourceError

SOURCE = "nginx config"
_CMDLINE_LIMIT = 64 * 1024
_COMPILED_KEYS = ("--prefix=", "--conf-path=", "--error-log-path=", "--http-log-path=")


@dataclass(frozen=True, slots=True)
class MasterPaths:
    """Where a running nginx master's files are, as nginx resolved them."""

    pid: int
    conf: str  # absolute, normalised
    prefix: str  # absolute: what relative paths in the config are relative to
    error_log: str  # the default error log (-e, else compiled, else logs/error.log)
    error_log_where: str  # "<cmdline -e>" or "nginx default (-V)"
    access_log: str  # the compiled default access log (relative to prefix when relative)


def parse_master_flags(title: str) -> dict[str, str] | None:
    """-c, -p, -e values from an nginx master's title, None when it is not a master's. `-g`
    values are skipped (they are directives such as "daemon off;", never flags)."""
    marker = "master process "
    if not title.startswith("nginx: ") or marker not in title:
        return None
    words = title.split(marker, 1)[1].split()
    found: dict[str, str] = {}
    i = 1  # words[0] is the binary
    while i < len(words):
        word = words[i]
        if word == "-g":
            i += 2
            continue
        for flag in ("-c", "-p", "-e"):
            if word == flag and i + 1 < len(words):
                found[flag] = words[i + 1]
                i += 1
                break
            if word.startswith(flag) and len(word) > 2:
                found[flag] = word[2:]
                break
        i += 1
    return found


def trusted_binary(exe: str, pid: int) -> bool:
    """Whether running `exe -V` as root is safe (see the module docstring)."""
    try:
        st = os.stat(exe)
        proc = os.stat(f"/proc/{pid}")
    except OSError:
        return False
    return (proc.st_uid == 0 and stat.S_ISREG(st.st_mode) and st.st_uid == 0
            and not st.st_mode & 0o022)


@functools.lru_cache(maxsize=8)
def compiled_paths(exe: str) -> dict[str, str]:
    """--prefix, --conf-path, --error-log-path, --http-log-path of an nginx binary (call only
    for a trusted_binary)."""
    try:
        out = subprocess.run([exe, "-V"], capture_output=True, timeout=3, check=False,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for word in (out.stderr + out.stdout).decode("utf-8", "replace").split():
        for key in _COMPILED_KEYS:
            if word.startswith(key):
                found[key.strip("-=")] = word[len(key):]
    return found


def master_paths(pid: int) -> MasterPaths | SourceError:
    """The running nginx master's config, prefix and default logs (see the module docstring).
    Relative paths resolve as nginx resolves them: -p relative to the cwd, the config and
    logs relative to the prefix."""
    proc = f"/proc/{pid}"
    try:
        raw = read_file(f"{proc}/cmdline", limit=_CMDLINE_LIMIT, what="nginx command line")
    except BoundedReadError as exc:
        return SourceError(SOURCE, f"cannot read {proc}/cmdline: {exc.reason}")
    title = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    flags = parse_master_flags(title)
    if flags is None:
        return SourceError(SOURCE, f"process {pid} is not an nginx master ({title[:40]!r})")
    try:
        cwd = os.readlink(f"{proc}/cwd")
    except OSError:
        cwd = "/"
    compiled: dict[str, str] = {}
    if not {"-c", "-p", "-e"} <= set(flags):
        try:
            exe = os.readlink(f"{proc}/exe").removesuffix(" (deleted)")
        except OSError:
            exe = ""
        compiled = compiled_paths(exe) if exe and trusted_binary(exe, pid) else {}
    prefix = os.path.join(cwd, flags.get("-p") or compiled.get("prefix") or "/usr/share/nginx")
    conf = flags.get("-c") or compiled.get("conf-path") or "conf/nginx.conf"
    return MasterPaths(
        pid=pid, conf=os.path.normpath(os.path.join(prefix, conf)), prefix=prefix,
        error_log=flags.get("-e") or compiled.get("error-log-path") or "logs/error.log",
        error_log_where="<cmdline -e>" if "-e" in flags else "nginx default (-V)",
        access_log=compiled.get("http-log-path") or "logs/access.log")


def nginx_conf_path(pid: int) -> str | SourceError:
    """The config file the running nginx master loaded, checked to be a file here (a path with
    a space in it cannot be told apart in the title; another mount namespace sees other
    files): otherwise the error says to name the config (--nginx-conf)."""
    paths = master_paths(pid)
    if isinstance(paths, SourceError):
        return paths
    if not os.path.isfile(paths.conf):
        return SourceError(SOURCE, f"nginx master {pid}: its config {paths.conf} is not a "
                                   "readable file here (a path with spaces, or another mount "
                                   "namespace?); give --nginx-conf")
    return paths.conf

"""Start and stop a real, private nginx + uWSGI stack on loopback.

The same launcher serves `stackmon demo` and the test suite, so what the tests exercise is what a
user sees in the demo: a real uWSGI master (from PyPI) with workers x threads, a unix socket for
nginx AND a TCP socket (both kinds of listen queue exist: uWSGI reports the TCP one, only the
kernel reports the unix one), a stats server, a master FIFO, and a real nginx with stub_status
proxying to the unix socket.

Everything lives in one work directory: the uWSGI ini, its log, the FIFO, the unix socket and a
private nginx prefix (conf, pid, logs, temp paths), so several stacks can run side by side and
nothing outside the directory is touched. Ports are picked free on 127.0.0.1 and retried when
another process wins the race. Only the processes this module started are ever signalled, and
only by the pids it recorded (psutil checks process identity, so a recycled pid is never hit).

This module is core (no Textual): the CLI's `demo` command, the TUI and pytest all drive it.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

APP_PATH = Path(__file__).with_name("app.py")

# sun_path is 108 bytes including the terminating NUL.
_UNIX_PATH_MAX = 107
_PORT_RETRIES = 3
_ADDR_IN_USE = "Address already in use"

# Inline uwsgi params: the stack must not depend on /etc/nginx/uwsgi_params existing or
# being the Debian version.
UWSGI_PARAMS: tuple[tuple[str, str], ...] = (
    ("QUERY_STRING", "$query_string"),
    ("REQUEST_METHOD", "$request_method"),
    ("CONTENT_TYPE", "$content_type"),
    ("CONTENT_LENGTH", "$content_length"),
    ("REQUEST_URI", "$request_uri"),
    ("PATH_INFO", "$document_uri"),
    ("DOCUMENT_ROOT", "$document_root"),
    ("SERVER_PROTOCOL", "$server_protocol"),
    ("REQUEST_SCHEME", "$scheme"),
    ("HTTPS", "$https if_not_empty"),
    ("REMOTE_ADDR", "$remote_addr"),
    ("REMOTE_PORT", "$remote_port"),
    ("SERVER_PORT", "$server_port"),
    ("SERVER_NAME", "$server_name"),
)


class StackError(RuntimeError):
    """The stack could not be started (or stopped); the message carries the relevant log tails,
    because "uWSGI did not come up" alone sends the reader digging through a temp dir."""


@dataclass(frozen=True)
class StackConfig:
    """What to run. Defaults match the demo: 4 workers x 2 threads behind nginx.

    Ports left as None are picked free on 127.0.0.1 (and re-picked if another process takes
    one before uWSGI/nginx binds it); a fixed port that is busy is a startup error, which is
    what a test of that error wants.
    """

    workers: int = 4
    threads: int = 2
    listen: int = 100
    mercy: int = 5
    harakiri: int | None = None
    nginx: bool = True
    stats_http: bool = False
    extra_uwsgi: Mapping[str, Any] | Sequence[Any] | None = None
    name: str = "demo"
    lazy_apps: bool = False
    # An HTTP listener on uWSGI itself, so there is something to send HTTP to without nginx.
    # None: only when nginx is not used.
    http_socket: bool | None = None
    stats_port: int | None = None
    tcp_port: int | None = None
    http_port: int | None = None
    nginx_port: int | None = None
    nginx_worker_processes: int = 2
    nginx_worker_connections: int = 256
    # Extra directives inside the nginx `server {}` block, e.g. "uwsgi_read_timeout 5s;".
    extra_nginx: Sequence[str] = field(default_factory=tuple)
    # A custom access-log format (a log_format template, e.g. with $upstream_response_time),
    # defined as `log_format stackmon` and used by the access log; None: nginx's `combined`.
    # `nginx_log_format_escape` adds escape=json|default|none.
    nginx_log_format: str | None = None
    nginx_log_format_escape: str | None = None
    startup_timeout: float = 15.0
    # Ready also means the master has sampled the listen queues once (up to ~1 s after the
    # workers accept): before that every socket shows max_queue 0, which would trip any test
    # or screenshot taken right after start.
    wait_for_queue_sample: bool = True
    uwsgi_bin: str | None = None
    nginx_bin: str | None = None


@dataclass(frozen=True)
class _Ports:
    stats: int
    tcp: int
    http: int | None
    nginx: int | None


def find_uwsgi(explicit: str | None = None) -> str | None:
    """The uWSGI binary: explicit, $STACKMON_UWSGI, the one next to this Python (the venv's,
    which `pip install uwsgi` put there), then PATH."""
    for candidate in (explicit, os.environ.get("STACKMON_UWSGI")):
        if candidate:
            return candidate if _is_executable(candidate) else None
    beside = Path(sys.executable).parent / "uwsgi"
    if _is_executable(str(beside)):
        return str(beside)
    return shutil.which("uwsgi")


def find_nginx(explicit: str | None = None) -> str | None:
    """The nginx binary: explicit, $STACKMON_NGINX, PATH, then /usr/sbin (not on every PATH)."""
    for candidate in (explicit, os.environ.get("STACKMON_NGINX")):
        if candidate:
            return candidate if _is_executable(candidate) else None
    found = shutil.which("nginx")
    if found:
        return found
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if _is_executable(path):
            return path
    return None


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def free_port() -> int:
    """A port free on 127.0.0.1 right now. Racy by nature: callers retry on EADDRINUSE."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def somaxconn() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text().strip())
    except (OSError, ValueError):
        return None


def read_stats(address: str, *, http: bool = False, timeout: float = 2.0) -> dict[str, Any]:
    """One stats document from a TCP stats server, read to EOF (one recv() is not enough).

    Plain mode: send nothing (sending first makes uWSGI reset the connection). stats-http mode:
    send a request and strip the HTTP/1.0 headers. Raises OSError/ValueError on failure; this is
    the launcher's own readiness probe, not stackmon's lenient source.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        if http:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: stats\r\n\r\n")
        chunks: list[bytes] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"stats server {address} did not finish within {timeout}s")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    if http:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"HTTP/"):
            raise ValueError(f"stats-http server {address} sent no HTTP response")
    if not data:
        raise ValueError(f"stats server {address} sent an empty reply")
    return json.loads(data.decode("utf-8", errors="replace"), strict=False)


def http_get(
    url: str, *, timeout: float = 2.0, headers: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    """A plain HTTP GET with no proxy or environment influence (http.client, not httpx: an
    HTTP_PROXY in the environment must never reroute a loopback probe)."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def tail(path: Path, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last lines of a log file, or a note saying why there are none."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return f"({path} does not exist)"
    except OSError as exc:
        return f"({path}: {exc})"
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    if not text:
        return f"({path} is empty)"
    return "\n".join(text.splitlines()[-lines:])


def _ini_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _extra_options(extra: Mapping[str, Any] | Sequence[Any] | None) -> list[tuple[str, str]]:
    """Normalise extra uWSGI options: a mapping (a list value repeats the key, as uWSGI allows
    for `socket`, `env`...), or a sequence of (key, value) pairs or "key = value" strings."""
    if not extra:
        return []
    out: list[tuple[str, str]] = []
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            values = value if isinstance(value, list | tuple) else [value]
            out.extend((str(key), _ini_value(v)) for v in values)
        return out
    for item in extra:
        if isinstance(item, str):
            key, sep, value = item.partition("=")
            if not sep:
                key, value = item, "true"
            out.append((key.strip(), value.strip()))
        else:
            key, value = item
            out.append((str(key), _ini_value(value)))
    return out


def _check_line(text: str, what: str) -> str:
    if "\n" in text or "\r" in text:
        raise StackError(f"{what} must be a single line: {text!r}")
    return text


def server_name(name: str) -> str:
    """The stack name as an nginx server_name / Host value (test names carry brackets)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name) or "_"


def _nginx_quote(text: str) -> str:
    if any(c in text for c in '"\\\n\r;'):
        raise StackError(f"path not usable in nginx.conf: {text!r}")
    return f'"{text}"'


class Stack:
    """A running nginx + uWSGI stack in one work directory. Use `Stack.start(...)`.

    Also a context manager; `stop()` is idempotent and also runs at interpreter exit for
    stacks still running, so a demo that crashes does not leave uWSGI behind.
    """

    def __init__(self, workdir: Path, config: StackConfig) -> None:
        self.workdir = Path(workdir).resolve()
        self.config = config
        self._uwsgi_bin = find_uwsgi(config.uwsgi_bin)
        self._nginx_bin = find_nginx(config.nginx_bin) if config.nginx else None
        self._ports: _Ports | None = None
        self._uwsgi: subprocess.Popen[bytes] | None = None
        self._nginx: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self.nginx_skipped_reason: str | None = None
        if config.nginx and self._nginx_bin is None:
            self.nginx_skipped_reason = "nginx binary not found (set STACKMON_NGINX)"

    # ---------------------------------------------------------------- construction

    @classmethod
    def start(
        cls,
        workdir: Path | str,
        *,
        workers: int = 4,
        threads: int = 2,
        listen: int = 100,
        mercy: int = 5,
        harakiri: int | None = None,
        nginx: bool = True,
        stats_http: bool = False,
        extra_uwsgi: Mapping[str, Any] | Sequence[Any] | None = None,
        name: str = "demo",
        **more: Any,
    ) -> Stack:
        """Start a stack in `workdir` (created if needed) and wait until it serves.

        `more` takes the remaining StackConfig fields (lazy_apps, http_socket, fixed ports,
        extra_nginx, startup_timeout, binaries). nginx=True without an nginx binary runs uWSGI
        alone (see `nginx_skipped_reason`); callers that need nginx check `has_nginx`.
        """
        config = StackConfig(
            workers=workers,
            threads=threads,
            listen=listen,
            mercy=mercy,
            harakiri=harakiri,
            nginx=nginx,
            stats_http=stats_http,
            extra_uwsgi=extra_uwsgi,
            name=name,
            **more,
        )
        return cls.from_config(Path(workdir), config)

    @classmethod
    def from_config(cls, workdir: Path, config: StackConfig) -> Stack:
        stack = cls(workdir, config)
        stack._launch()
        return stack

    # ---------------------------------------------------------------- paths and addresses

    @property
    def ini_path(self) -> Path:
        return self.workdir / "uwsgi.ini"

    @property
    def uwsgi_log_path(self) -> Path:
        return self.workdir / "uwsgi.log"

    @property
    def uwsgi_socket_path(self) -> Path:
        return self.workdir / "uwsgi.sock"

    @property
    def fifo_path(self) -> Path:
        return self.workdir / "master.fifo"

    @property
    def pidfile_path(self) -> Path:
        return self.workdir / "uwsgi.pid"

    @property
    def release_file(self) -> Path:
        """Writing new content here makes every /hang in flight return (see demo.app)."""
        return self.workdir / "release"

    @property
    def nginx_prefix(self) -> Path:
        return self.workdir / "nginx"

    @property
    def nginx_conf_path(self) -> Path:
        return self.nginx_prefix / "nginx.conf"

    @property
    def nginx_error_log_path(self) -> Path:
        return self.nginx_prefix / "logs" / "error.log"

    @property
    def nginx_access_log_path(self) -> Path:
        return self.nginx_prefix / "logs" / "access.log"

    def _require_ports(self) -> _Ports:
        if self._ports is None:
            raise StackError("stack not started")
        return self._ports

    @property
    def stats_address(self) -> str:
        """host:port of the stats server (it speaks HTTP when stats_http is set)."""
        return f"127.0.0.1:{self._require_ports().stats}"

    @property
    def stats_http_address(self) -> str | None:
        return f"http://{self.stats_address}" if self.config.stats_http else None

    @property
    def uwsgi_tcp_address(self) -> str:
        return f"127.0.0.1:{self._require_ports().tcp}"

    @property
    def uwsgi_http_address(self) -> str | None:
        port = self._require_ports().http
        return f"127.0.0.1:{port}" if port else None

    @property
    def has_nginx(self) -> bool:
        return self._nginx is not None

    @property
    def nginx_base_url(self) -> str | None:
        port = self._require_ports().nginx
        return f"http://127.0.0.1:{port}" if port else None

    @property
    def nginx_status_url(self) -> str | None:
        base = self.nginx_base_url
        return f"{base}/nginx_status" if base else None

    @property
    def base_url(self) -> str | None:
        """Where HTTP traffic goes: nginx, else uWSGI's own http-socket, else None."""
        if self.nginx_base_url:
            return self.nginx_base_url
        http_addr = self.uwsgi_http_address
        return f"http://{http_addr}" if http_addr else None

    @property
    def master_pid(self) -> int:
        if self._uwsgi is None:
            raise StackError("stack not started")
        return self._uwsgi.pid

    @property
    def nginx_master_pid(self) -> int | None:
        return self._nginx.pid if self._nginx is not None else None

    @property
    def capacity(self) -> int:
        """Requests uWSGI can run at once (workers x threads)."""
        return self.config.workers * max(1, self.config.threads)

    @property
    def running(self) -> bool:
        return not self._stopped and self._uwsgi is not None and self._uwsgi.poll() is None

    # ---------------------------------------------------------------- inspection and control

    def stats(self, timeout: float = 2.0) -> dict[str, Any]:
        """The current stats document, parsed (raw: secrets are NOT redacted here)."""
        return read_stats(self.stats_address, http=self.config.stats_http, timeout=timeout)

    def worker_pids(self) -> list[int]:
        """Pids of the uWSGI processes under the master (workers, and mules if any)."""
        try:
            return [p.pid for p in psutil.Process(self.master_pid).children()]
        except psutil.Error:
            return []

    def pids(self) -> set[int]:
        """Every live process of this stack: both masters and all their descendants."""
        return {p.pid for p in self._processes()}

    def send_fifo(self, command: bytes | str) -> None:
        """Write command bytes to the master FIFO (uWSGI never acknowledges: check stats)."""
        data = command.encode() if isinstance(command, str) else command
        fd = os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def stop_uwsgi(self, timeout: float = 10.0) -> bool:
        """Stop uWSGI alone (SIGINT, as `stop()` does), leaving nginx up: what a crashed or
        restarting backend looks like from nginx. True when it exited within `timeout`."""
        self._signal(self._uwsgi, signal.SIGINT)
        return self._wait(self._uwsgi, time.monotonic() + timeout)

    def release_hangs(self) -> None:
        """Make every /hang request in flight return now, without touching its worker."""
        self.release_file.write_text(f"{time.time_ns()}\n")

    def log_tail(self, lines: int = 40) -> str:
        """The uWSGI log tail and, with nginx, its error log tail, labelled."""
        parts = [f"--- {self.uwsgi_log_path} ---\n{tail(self.uwsgi_log_path, lines)}"]
        if self.config.nginx and self._nginx_bin:
            parts.append(
                f"--- {self.nginx_error_log_path} ---\n{tail(self.nginx_error_log_path, lines)}"
            )
        return "\n".join(parts)

    # ---------------------------------------------------------------- start

    def _launch(self) -> None:
        cfg = self.config
        self._validate()
        self.workdir.mkdir(parents=True, exist_ok=True)
        use_nginx = self._nginx_bin is not None
        if use_nginx:
            self._prepare_for_nobody()
        self.release_file.write_text("0\n")
        fixed = any(
            p is not None for p in (cfg.stats_port, cfg.tcp_port, cfg.http_port, cfg.nginx_port)
        )
        attempts = 1 if fixed else _PORT_RETRIES
        deadline = time.monotonic() + cfg.startup_timeout
        for attempt in range(1, attempts + 1):
            self._ports = self._pick_ports(use_nginx)
            try:
                self._start_uwsgi(deadline)
                if use_nginx:
                    self._start_nginx(deadline)
            except StackError as exc:
                self._kill_everything()
                if attempt < attempts and _ADDR_IN_USE in str(exc):
                    continue  # lost a port race: pick new ports and go again
                raise
            except BaseException:
                self._kill_everything()
                raise
            break
        with _RUNNING_LOCK:
            _RUNNING.add(self)

    def _validate(self) -> None:
        cfg = self.config
        for given, what in (
            (cfg.uwsgi_bin, "uWSGI"),
            (cfg.nginx_bin if cfg.nginx else None, "nginx"),
        ):
            if given and not _is_executable(given):
                raise StackError(f"{what} binary {given!r} is not an executable file")
        if self._uwsgi_bin is None:
            raise StackError("uWSGI binary not found: pip install uwsgi (or set STACKMON_UWSGI)")
        if cfg.workers < 1 or cfg.threads < 1:
            raise StackError(f"workers and threads must be >= 1 (got {cfg.workers}, {cfg.threads})")
        if cfg.listen < 1:
            raise StackError(f"listen must be >= 1 (got {cfg.listen})")
        limit = somaxconn()
        if limit is not None and cfg.listen > limit:
            raise StackError(
                f"listen = {cfg.listen} is above net.core.somaxconn = {limit}; uWSGI refuses to "
                "start with that (raise the sysctl or lower listen)"
            )
        sock = str(self.workdir / "uwsgi.sock")
        if len(sock.encode()) > _UNIX_PATH_MAX:
            raise StackError(
                f"work directory too deep for a unix socket path "
                f"({len(sock.encode())} > {_UNIX_PATH_MAX} bytes): {sock}"
            )
        _check_line(str(self.workdir), "work directory")
        _check_line(cfg.name, "name")

    def _prepare_for_nobody(self) -> None:
        """Running as root, nginx workers become `nobody`: they must traverse every directory
        down to the uWSGI socket. Our own directories we open up; a closed ancestor (pytest's
        /tmp/pytest-of-root is 0700) we do not touch but name in a clear error."""
        for path in (self.workdir, self.nginx_prefix):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        for sub in ("logs", "temp"):
            (self.nginx_prefix / sub).mkdir(exist_ok=True)
        if os.geteuid() != 0:
            return  # nginx cannot switch users: its workers run as us
        for parent in self.workdir.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                raise StackError(
                    f"{parent} is not traversable by others (mode {stat.filemode(mode)}); "
                    f"nginx workers run as nobody and could not reach {self.uwsgi_socket_path}. "
                    "Use a work directory under /tmp (tempfile.mkdtemp())."
                )

    def _pick_ports(self, use_nginx: bool) -> _Ports:
        cfg = self.config
        taken: set[int] = set()

        def pick(fixed: int | None) -> int:
            if fixed is not None:
                taken.add(fixed)
                return fixed
            while True:
                port = free_port()
                if port not in taken:
                    taken.add(port)
                    return port

        want_http = cfg.http_socket if cfg.http_socket is not None else not use_nginx
        return _Ports(
            stats=pick(cfg.stats_port),
            tcp=pick(cfg.tcp_port),
            http=pick(cfg.http_port) if want_http else None,
            nginx=pick(cfg.nginx_port) if use_nginx else None,
        )

    def uwsgi_options(self) -> list[tuple[str, str]]:
        """The uWSGI options this stack runs with, in ini order (extra options last)."""
        cfg = self.config
        ports = self._require_ports()
        opts: list[tuple[str, str]] = [
            ("master", "true"),
            # Unknown options are silently ignored without strict: a typo in extra_uwsgi
            # would otherwise go unnoticed.
            ("strict", "true"),
            ("workers", str(cfg.workers)),
            ("threads", str(cfg.threads)),
            ("socket", str(self.uwsgi_socket_path)),
            ("chmod-socket", "666"),
            ("socket", f"127.0.0.1:{ports.tcp}"),
        ]
        if ports.http:
            opts.append(("http-socket", f"127.0.0.1:{ports.http}"))
        opts.append(("stats", f"127.0.0.1:{ports.stats}"))
        if cfg.stats_http:
            opts.append(("stats-http", "true"))
        opts += [
            ("master-fifo", str(self.fifo_path)),
            ("worker-reload-mercy", str(cfg.mercy)),
            ("listen", str(cfg.listen)),
            ("memory-report", "true"),
            ("die-on-term", "true"),
            # If the master is SIGKILLed its workers exit instead of lingering as orphans.
            ("no-orphans", "true"),
            ("vacuum", "true"),
            ("pidfile", str(self.pidfile_path)),
            ("logto", str(self.uwsgi_log_path)),
            ("wsgi-file", str(APP_PATH)),
            ("need-app", "true"),
            ("env", f"STACKMON_RELEASE_FILE={self.release_file}"),
        ]
        if cfg.harakiri:
            opts.append(("harakiri", str(cfg.harakiri)))
        if cfg.lazy_apps:
            opts.append(("lazy-apps", "true"))
        opts += _extra_options(cfg.extra_uwsgi)
        return opts

    def _write_ini(self) -> None:
        lines = [
            f"; written by stackmon.demo.launcher for stack {self.config.name!r}",
            "[uwsgi]",
        ]
        for key, value in self.uwsgi_options():
            lines.append(
                f"{_check_line(key, 'uWSGI option')} = {_check_line(value, 'uWSGI value')}"
            )
        self.ini_path.write_text("\n".join(lines) + "\n")

    def _start_uwsgi(self, deadline: float) -> None:
        assert self._uwsgi_bin is not None
        self._write_ini()
        # The same file as `logto`: errors printed before logto takes over (strict-mode
        # complaints, ini parse errors) land in it too. Truncated per attempt so a startup
        # error's tail is about this attempt.
        with self.uwsgi_log_path.open("wb") as log:
            self._uwsgi = subprocess.Popen(
                [self._uwsgi_bin, "--ini", str(self.ini_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C meant for the terminal (or pytest) does not also hit
                # the stack half-way; stop() shuts it down in order.
                start_new_session=True,
            )
        want = self.config.workers
        last_problem = "no answer yet"
        while True:
            code = self._uwsgi.poll()
            if code is not None:
                raise StackError(self._failure(f"uWSGI exited with code {code} during startup"))
            try:
                doc = self.stats(timeout=1.0)
                workers = doc.get("workers") or []
                ready = [w for w in workers if w.get("pid") and w.get("accepting")]
                sampled = not self.config.wait_for_queue_sample or any(
                    s.get("name") == self.uwsgi_tcp_address and s.get("max_queue")
                    for s in doc.get("sockets") or []
                )
                if len(workers) == want and len(ready) == want and sampled:
                    return
                last_problem = (
                    f"{len(ready)}/{want} workers accepting"
                    if sampled
                    else "listen queues not sampled yet"
                )
            except (OSError, ValueError) as exc:
                last_problem = f"stats server: {exc}"
            if time.monotonic() > deadline:
                raise StackError(
                    self._failure(
                        f"uWSGI not ready within {self.config.startup_timeout}s ({last_problem})"
                    )
                )
            time.sleep(0.05)

    def nginx_conf(self) -> str:
        """The nginx.conf text for this stack's private prefix."""
        cfg = self.config
        ports = self._require_ports()
        p = self.nginx_prefix
        q = _nginx_quote
        params = "\n".join(f"            uwsgi_param {k:<16} {v};" for k, v in UWSGI_PARAMS)
        extra = "\n".join(f"        {_check_line(d, 'nginx directive')}" for d in cfg.extra_nginx)
        access_log = f"access_log {q(str(self.nginx_access_log_path))};"
        if cfg.nginx_log_format is not None:
            template = _check_line(cfg.nginx_log_format, "nginx log_format")
            if "'" in template or "\\" in template:
                raise StackError(f"log_format not usable in nginx.conf: {template!r}")
            escape = (f" escape={cfg.nginx_log_format_escape}"
                      if cfg.nginx_log_format_escape else "")
            access_log = (f"log_format stackmon{escape} '{template}';\n"
                          f"    access_log {q(str(self.nginx_access_log_path))} stackmon;")
        return f"""\
# written by stackmon.demo.launcher for stack {cfg.name!r}; private prefix {p}
worker_processes {cfg.nginx_worker_processes};
pid {q(str(p / "nginx.pid"))};
error_log {q(str(self.nginx_error_log_path))} warn;

events {{
    worker_connections {cfg.nginx_worker_connections};
}}

http {{
    default_type text/plain;
    {access_log}
    client_body_temp_path {q(str(p / "temp" / "client_body"))};
    proxy_temp_path {q(str(p / "temp" / "proxy"))};
    fastcgi_temp_path {q(str(p / "temp" / "fastcgi"))};
    uwsgi_temp_path {q(str(p / "temp" / "uwsgi"))};
    scgi_temp_path {q(str(p / "temp" / "scgi"))};

    server {{
        listen 127.0.0.1:{ports.nginx};
        server_name {server_name(cfg.name)};
{extra}
        location = /nginx_status {{
            stub_status;
            access_log off;
        }}

        location / {{
{params}
            uwsgi_pass unix:{self.uwsgi_socket_path};
        }}
    }}
}}
"""

    def _start_nginx(self, deadline: float) -> None:
        assert self._nginx_bin is not None
        self.nginx_conf_path.write_text(self.nginx_conf())
        self.nginx_error_log_path.write_bytes(b"")
        stderr_path = self.nginx_prefix / "logs" / "stderr.log"
        with stderr_path.open("wb") as err:
            self._nginx = subprocess.Popen(
                [
                    self._nginx_bin,
                    "-p",
                    f"{self.nginx_prefix}/",
                    "-c",
                    str(self.nginx_conf_path),
                    "-e",
                    str(self.nginx_error_log_path),
                    "-g",
                    "daemon off;",
                ],
                cwd=self.nginx_prefix,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        status_url = self.nginx_status_url
        assert status_url is not None and self.nginx_base_url is not None
        last_problem = "no answer yet"
        while True:
            code = self._nginx.poll()
            if code is not None:
                raise StackError(
                    self._failure(
                        f"nginx exited with code {code} during startup", extra=[stderr_path]
                    )
                )
            try:
                status, _ = http_get(status_url, timeout=1.0)
                if status == 200:
                    # The whole chain, through the unix socket: proves chmod-socket and that
                    # `nobody` can reach it.
                    status, body = http_get(self.nginx_base_url + "/healthz", timeout=2.0)
                    if status == 200:
                        return
                    last_problem = f"GET /healthz via nginx: {status} {body[:200]!r}"
                else:
                    last_problem = f"GET /nginx_status: {status}"
            except (OSError, http.client.HTTPException) as exc:
                last_problem = f"GET /nginx_status: {exc}"
            if time.monotonic() > deadline:
                raise StackError(
                    self._failure(
                        f"nginx not ready within {self.config.startup_timeout}s ({last_problem})",
                        extra=[stderr_path],
                    )
                )
            time.sleep(0.05)

    def _failure(self, headline: str, extra: Iterable[Path] = ()) -> str:
        parts = [
            f"stack {self.config.name!r} in {self.workdir} failed to start: {headline}",
            self.log_tail(30),
        ]
        for path in extra:
            parts.append(f"--- {path} ---\n{tail(path, 20)}")
        return "\n".join(parts)

    # ---------------------------------------------------------------- stop

    def _processes(self) -> list[psutil.Process]:
        """Our masters and every descendant, as psutil handles (identity-checked later)."""
        procs: list[psutil.Process] = []
        for popen in (self._uwsgi, self._nginx):
            if popen is None or popen.returncode is not None:
                continue
            try:
                master = psutil.Process(popen.pid)
                procs.append(master)
                procs.extend(master.children(recursive=True))
            except psutil.Error:
                continue
        return procs

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the stack down: SIGINT to the uWSGI master and SIGQUIT to nginx's at once, then
        SIGKILL by pid for anything of ours still alive after `timeout`. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self._shutdown(timeout)
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(self)

    def _shutdown(self, timeout: float) -> None:
        recorded = self._processes()  # before signalling: workers vanish from the tree after
        self._signal(self._uwsgi, signal.SIGINT)
        self._signal(self._nginx, signal.SIGQUIT)
        deadline = time.monotonic() + timeout
        uwsgi_ok = self._wait(self._uwsgi, deadline)
        # nginx's graceful stop waits for in-flight requests; once uWSGI is gone they end.
        nginx_ok = self._wait(self._nginx, min(deadline, time.monotonic() + 5.0))
        if not nginx_ok:
            self._signal(self._nginx, signal.SIGTERM)
            nginx_ok = self._wait(self._nginx, time.monotonic() + 2.0)
        for popen, ok in ((self._uwsgi, uwsgi_ok), (self._nginx, nginx_ok)):
            if not ok:
                self._signal(popen, signal.SIGKILL)
                self._wait(popen, time.monotonic() + 5.0)
        self._kill_leftovers(recorded + self._strays())

    def _kill_everything(self) -> None:
        """Startup failed: no grace, just make sure nothing we started survives."""
        recorded = self._processes()
        for popen in (self._uwsgi, self._nginx):
            self._signal(popen, signal.SIGKILL)
            self._wait(popen, time.monotonic() + 5.0)
        self._kill_leftovers(recorded + self._strays())
        self._uwsgi = self._nginx = None

    @staticmethod
    def _signal(popen: subprocess.Popen[bytes] | None, sig: int) -> None:
        if popen is not None and popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(sig)  # Popen checks it has not reaped the pid yet

    @staticmethod
    def _wait(popen: subprocess.Popen[bytes] | None, deadline: float) -> bool:
        if popen is None:
            return True
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False

    def _strays(self) -> list[psutil.Process]:
        """Our processes that escaped the recorded tree: an nginx worker respawned by a master
        that was then SIGKILLed is reparented to init and keeps serving (nginx workers do not
        exit with their master). Identified strictly: the executable is one of the binaries we
        ran AND the working directory is inside this stack's private work directory, where
        only processes started for this stack ever run."""
        exes = {os.path.realpath(b) for b in (self._uwsgi_bin, self._nginx_bin) if b}
        found = []
        for proc in psutil.process_iter(["exe", "cwd"]):
            try:
                exe, cwd = proc.info["exe"], proc.info["cwd"]
                if not exe or not cwd or os.path.realpath(exe) not in exes:
                    continue
                if Path(cwd) == self.workdir or self.workdir in Path(cwd).parents:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    @staticmethod
    def _kill_leftovers(recorded: list[psutil.Process]) -> None:
        """SIGKILL recorded processes still alive. psutil's send_signal checks the process is
        the same one (pid + create time) we recorded, so a recycled pid is never signalled."""
        alive = []
        for proc in recorded:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
                    alive.append(proc)
            except psutil.Error:
                continue
        if alive:
            psutil.wait_procs(alive, timeout=5.0)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.stats_address if self._ports else "-"
        return f"<Stack {self.config.name!r} {state} stats={where} workdir={self.workdir}>"

    def with_config(self, **changes: Any) -> StackConfig:
        """This stack's config with some fields changed (to start a sibling stack)."""
        return replace(self.config, **changes)


_RUNNING: set[Stack] = set()
_RUNNING_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """Interpreter exit with stacks still up (a crashed demo, an interrupted test run)."""
    with _RUNNING_LOCK:
        stacks = list(_RUNNING)
    for stack in stacks:
        with contextlib.suppress(Exception):
            stack.stop(timeout=5.0)

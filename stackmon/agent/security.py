"""Secrets and exposure for both ends of the agent: token files, listen addresses, TLS.

The agent can signal uWSGI workers, so whoever holds its token can take a site down. The rules
here are deliberately strict and checked before anything listens:

- a token file must be a regular file that neither group nor others can access (like ssh keys:
  a token anyone on the box can read is no token), at least 16 visible ASCII characters;
- the agent binds 127.0.0.1 unless told otherwise, and refuses a non-loopback address without a
  token;
- TLS when given a certificate and key (TLS 1.2 at least; the key file follows the token rule).

Every refusal is a ConfigError whose str() is the one line the CLI prints (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import resource
import socket
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackmon import redact
from stackmon.bounded_io import describe_type
from stackmon.config import ConfigError

MIN_TOKEN_LENGTH = 16
MAX_TOKEN_FILE = 4096
# Extra CA certificates (PEM) that a remote stackmon trusts for https:// agents, on top of the
# system's store: self-signed agent certificates are the common case on a private network.
CA_ENV = "STACKMON_AGENT_CA"


def check_private(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a secret that is not a regular file or that group/others may access."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path} is {describe_type(st.st_mode)}, not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(f"{what} {path} is accessible by group/others (mode {mode:04o}); "
                          f"run: chmod 600 {path}")


def read_token_file(path: Path | str, what: str = "token file") -> str:
    """The token in `path`, after checking the file is private; ConfigError otherwise.

    The file is opened once and checked through its descriptor, so a file swapped between the
    check and the read is never used. The open is non-blocking: a FIFO at the path would
    otherwise hang the agent's start (open() waits for a writer); it is refused at once by the
    regular-file check instead.
    """
    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror}") from None
    try:
        check_private(path, os.fstat(fd), what)
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE:
        raise ConfigError(f"{what} {path} is too large to be a token")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: the token must be ASCII") from None
    if not token:
        raise ConfigError(f"{what} {path} is empty")
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in token):
        raise ConfigError(f"{what} {path}: the token must be one line of visible ASCII "
                          "(no spaces)")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{what} {path}: the token is shorter than {MIN_TOKEN_LENGTH} "
                          "characters (make one with: openssl rand -hex 32)")
    return token


def parse_listen(text: str, default_port: int = 9300) -> tuple[str, int]:
    """'127.0.0.1:9300', '[::1]:9300', 'localhost:9300', '0.0.0.0:9300' or a bare port."""
    raw = text.strip()
    if raw.isdigit():
        host, port_text = "127.0.0.1", raw
    elif raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"--listen {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:] if rest else str(default_port)
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    elif ":" not in raw and raw:
        host, port_text = raw, str(default_port)
    else:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT such as 127.0.0.1:9300")
    if not host:
        raise ConfigError(f"--listen {text!r}: give the address to bind, e.g. 0.0.0.0:9300")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--listen {text!r}: bad port {port_text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True when every address `host` stands for is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addrs = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a).is_loopback for a in addrs)


def server_ssl_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """A TLS server context for the agent; ConfigError with one line when unusable."""
    cert, key = Path(cert).expanduser(), Path(key).expanduser()
    with contextlib.suppress(OSError):  # a missing certificate is reported by the load below
        if not stat.S_ISREG((st := os.stat(cert)).st_mode):  # a FIFO would hang the load
            raise ConfigError(f"TLS certificate {cert} is {describe_type(st.st_mode)}, not a "
                              "regular file")
    try:
        check_private(key, os.stat(key), "TLS key file")
    except FileNotFoundError:
        raise ConfigError(f"TLS key file {key} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"TLS key file {key}: {exc.strerror}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS certificate {exc.filename or cert} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"TLS certificate {cert} / key {key} cannot be used: {reason}") from None
    return ctx


def client_ssl_context(cafile: str | None = None) -> ssl.SSLContext:
    """What a remote stackmon verifies https:// agents with: the system's CAs plus `cafile`
    (default: $STACKMON_AGENT_CA). Hostname checking stays on: the agent URL must match the
    certificate (an IP address in the URL needs an IP SAN)."""
    return _client_context(cafile if cafile is not None else os.environ.get(CA_ENV) or "")


@functools.cache
def _client_context(extra: str) -> ssl.SSLContext:
    """One context per CA file: building one loads the whole system store (milliseconds)."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if extra:
        try:
            ctx.load_verify_locations(cafile=os.path.expanduser(extra))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{CA_ENV}={extra}: cannot load CA certificates: {exc}") from None
    return ctx


# --- the file-descriptor budget --------------------------------------------------------------

# Descriptors kept free for the agent's own work (stats sockets, /proc, sock_diag, the audit
# log, TLS files) whatever clients hold: the client cap is the limit minus this.
FD_RESERVE = 128


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return the soft limit now in force.

    systemd's default soft limit is 1024 while the hard one is 512K: an agent that keeps the
    soft one lets a thousand idle connections exhaust it, after which accept() fails and even
    the poll of uWSGI cannot open a socket.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


# --- secrets out of logs ----------------------------------------------------------------------


class SecretScrubber(logging.Filter):
    """Removes the agent's token (and bearer values, token= parameters) from every log record.

    aiohttp's own error paths log raw request bytes (a header with a stray control character is
    quoted whole, token included) and exception text can carry anything a client sent, so the
    record's final text is scrubbed, exception included, and the traceback is folded into the
    message so that no handler formats the unscrubbed one later.
    """

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__("")
        self.secrets = tuple(s for s in secrets if s)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, redact.REDACTED)
        return redact.visible(redact.redact_text(text)) if text else text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: keep its template, never its arguments
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" [{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}]"
        record.msg, record.args = self.scrub(text).replace("\n", " | "), None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


# The loggers whose records can carry request bytes: aiohttp's, asyncio's and the agent's.
SCRUBBED_LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal",
                    "asyncio", "stackmon.agent", "stackmon.agent.access")


class RateLimitedLog:
    """One line per kind of event per `interval` seconds, with the count of those skipped.

    When the process runs out of descriptors asyncio reports every failed accept (up to the
    backlog per loop turn, with a traceback each: tens of thousands of lines in seconds); the
    log must say it once and go on saying how often, not fill the disk.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 max_kinds: int = 256) -> None:
        self.logger = logger
        self.interval = interval
        self.max_kinds = max_kinds
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, kind: str, line: str, level: int = logging.WARNING) -> bool:
        """Log `line` unless `kind` was logged less than `interval` ago; True if logged."""
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return False
        if len(self._last) >= self.max_kinds:
            self._last.clear()
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        suffix = f" ({skipped} more like it in the last {self.interval:g} s)" if skipped else ""
        self.logger.log(level, "%s%s", line, suffix)
        return True

    def loop_exception_handler(self, _loop: asyncio.AbstractEventLoop,
                               context: dict[str, Any]) -> None:
        """asyncio's exception handler, rate-limited and one line (no traceback)."""
        message = str(context.get("message") or "error in the event loop")
        exc = context.get("exception")
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        self(f"loop:{message}:{type(exc).__name__}", f"{message}{detail}", logging.ERROR)


# --- connections: caps and timeouts -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a connection may sit without a request, and how many a client may hold.

    aiohttp closes idle keep-alive connections but (up to 3.10) not one that never sends a
    complete request header: such connections, a thousand of them, exhaust the descriptors
    while needing no token. These limits are enforced on every connection before aiohttp sees
    any byte of it.
    """

    header_timeout: float = 10.0  # connect (or first byte after idling) -> full request header
    idle_timeout: float = 30.0  # between requests on a keep-alive connection
    request_timeout: float = 120.0  # one request in progress (slow body, a reader that stalls)
    per_client: int = 32  # connections from one IP address
    total: int = 1024  # connections in all (also capped by the descriptor limit)

    def total_for(self, fd_limit: int) -> int:
        return min(self.total, max(16, fd_limit - FD_RESERVE))


def _has_pending_bytes(transport: asyncio.BaseTransport) -> bool:
    """Whether the peer has sent bytes this process has not read yet (MSG_PEEK: nothing is
    consumed). False when the socket cannot be asked (a test's fake transport, a closed one)."""
    wrapped = transport.get_extra_info("socket")
    if wrapped is None:
        return False
    try:
        # a dup of the descriptor: asyncio's socket wrapper deprecates recv()
        with socket.fromfd(wrapped.fileno(), wrapped.family, wrapped.type) as sock:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing sent; others: closed, not a socket
        return False


class _Conn:
    """Book-keeping for one admitted connection."""

    __slots__ = (
        "busy",
        "busy_since",
        "client",
        "closed",
        "data_since_idle",
        "idle_since",
        "opened",
        "requests",
        "transport",
    )

    def __init__(self, client: str, transport: asyncio.BaseTransport, now: float) -> None:
        self.client = client
        self.transport = transport
        self.opened = now
        self.idle_since = now
        self.data_since_idle: float | None = None  # first byte of a request header not done
        self.busy = 0
        self.busy_since = 0.0
        self.requests = 0
        self.closed = False

    def deadline(self, limits: ConnectionLimits) -> float:
        if self.busy:
            return self.busy_since + limits.request_timeout
        if self.data_since_idle is not None:
            return self.data_since_idle + limits.header_timeout
        wait = limits.idle_timeout if self.requests else limits.header_timeout
        return self.idle_since + wait


class ConnectionGuard:
    """Admits, times and evicts the agent's connections (one per event loop).

    - At most `per_client` connections per client address and `total` in all. When a cap is
      reached, the oldest connection that is not serving a request (from that address, or for
      the total from the address holding the most) is dropped to make room: connections that
      send nothing can never lock out a client that sends requests. Only when every one is busy
      is the new connection refused.
    - A connection must deliver a complete request header within `header_timeout` of opening
      (or of its first byte after idling), may idle `idle_timeout` between requests, and a
      request may take `request_timeout`; a sweep once a second closes the late ones.
    The server marks requests in progress through `request_started` / `request_done`.
    """

    def __init__(self, limits: ConnectionLimits, fd_limit: int,
                 logger: logging.Logger) -> None:
        self.limits = limits
        self.total = limits.total_for(fd_limit)
        self.note = RateLimitedLog(logger)
        self._by_transport: dict[asyncio.BaseTransport, _Conn] = {}
        self._by_client: dict[str, dict[_Conn, None]] = {}  # insertion order = age
        self._task: asyncio.Task[None] | None = None
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self._by_transport)

    # --- admission -----------------------------------------------------------------------

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        mine = self._by_client.get(client, {})
        if len(mine) >= self.limits.per_client and not self._evict_from(client):
            return self._refuse(client, f"{len(mine)} connections from {client}")
        if len(self._by_transport) >= self.total and not self._evict_largest():
            return self._refuse(client, f"{len(self._by_transport)} connections in all")
        conn = _Conn(client, transport, time.monotonic())
        self._by_transport[transport] = conn
        self._by_client.setdefault(client, {})[conn] = None
        return True

    def _refuse(self, client: str, why: str) -> bool:
        self.refused += 1
        self.note("refused", f"connection from {client} refused: {why}, every one serving a "
                             "request")
        return False

    def _evict_largest(self) -> bool:
        """Drop an idle connection of the address holding the most that has one."""
        by_size = sorted(self._by_client, key=lambda c: len(self._by_client[c]), reverse=True)
        return any(self._evict_from(client) for client in by_size)

    def _evict_from(self, client: str) -> bool:
        """Drop the oldest connection of `client` not serving a request; False if none.

        Silent ones go first: a connection whose request is already waiting in the kernel is a
        client talking, not an attacker holding a slot. During a flood from the client's own
        address (localhost, a NAT) the loop accepts a whole batch of connections before it
        reads any of them, so "not read yet" is not "silent": the socket is peeked."""
        idle = [conn for conn in self._by_client.get(client, {}) if not conn.busy]
        victim = next((c for c in idle if not _has_pending_bytes(c.transport)),
                      idle[0] if idle else None)
        if victim is None:
            return False
        self.evicted += 1
        self.note("evicted", f"connection cap reached: dropping idle connections "
                             f"(from {client} first)")
        self._close(victim, abort=True)
        return True

    # --- events from the protocol and the server -----------------------------------------

    def data(self, transport: asyncio.BaseTransport) -> None:
        conn = self._by_transport.get(transport)
        if conn is not None and not conn.busy and conn.data_since_idle is None:
            conn.data_since_idle = time.monotonic()

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is not None:
            if not conn.busy:
                conn.busy_since = time.monotonic()
            conn.busy += 1
            conn.requests += 1
            conn.data_since_idle = None

    def request_done(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is not None and conn.busy:
            conn.busy -= 1
            if not conn.busy:
                conn.idle_since = time.monotonic()
                conn.data_since_idle = None

    def release(self, transport: asyncio.BaseTransport) -> None:
        conn = self._by_transport.pop(transport, None)
        if conn is None:
            return
        conn.closed = True
        mine = self._by_client.get(conn.client)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self._by_client[conn.client]

    def _close(self, conn: _Conn, *, abort: bool) -> None:
        self.release(conn.transport)  # counted free now: connection_lost comes a turn later
        with contextlib.suppress(Exception):
            if abort:
                conn.transport.abort()  # type: ignore[attr-defined]
            else:
                conn.transport.close()

    # --- the sweep -----------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> int:
        """Close every connection past its deadline; returns how many."""
        now = time.monotonic() if now is None else now
        late = [c for c in self._by_transport.values() if now >= c.deadline(self.limits)]
        for conn in late:
            self._close(conn, abort=not conn.busy)
        if late:
            self.timed_out += len(late)
            self.note("timeout", f"closed {len(late)} connection(s) that sent no complete "
                                 "request or idled past the limits", logging.INFO)
        return len(late)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.limits.header_timeout / 4))
            self.sweep()

    def protocol_factory(self, make_inner: Callable[[], asyncio.Protocol],
                         ) -> Callable[[], asyncio.Protocol]:
        """Wraps aiohttp's per-connection protocol factory with admission and timing."""
        return lambda: GuardedProtocol(self, make_inner)


class GuardedProtocol(asyncio.Protocol):
    """Sits between the transport and aiohttp's RequestHandler: admits the connection (or
    drops it before aiohttp sees it), notes the bytes that start a request, releases the slot.
    The inner protocol is only built for admitted connections."""

    def __init__(self, guard: ConnectionGuard,
                 make_inner: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.make_inner = make_inner
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.guard.admit(transport):
            with contextlib.suppress(Exception):
                transport.abort()  # type: ignore[attr-defined]
            return
        self.transport = transport
        self.inner = self.make_inner()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None and self.transport is not None:
            self.guard.data(self.transport)
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.guard.release(self.transport)
        if self.inner is not None:
            self.inner.connection_lost(exc)
            self.inner = None

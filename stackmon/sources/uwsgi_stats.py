"""The uWSGI stats server: fetch one document, turn it into an immutable `UwsgiInstance`.

Two halves, kept apart so each can be tested and timed alone:

- `fetch_stats` speaks the stats protocol. Plain mode is "connect, send nothing, read to EOF"
  (uWSGI never reads: bytes sent first make it reset the connection once it has written, and
  the reset can destroy the document in flight); `stats-http` mode is one HTTP/1.0 request
  answered without Content-Length. Every network failure comes back as a `SourceError`
  with a sentence a user can act on, never as an exception, because one dead host must not take
  the poller down. One deadline covers connect and read, and a size cap stops a peer that never
  stops talking.
- `parse_stats` is where untrusted text enters stackmon. The stats server copies every request
  variable verbatim (Cookie and Authorization included, raw control bytes and invalid UTF-8
  too), and some versions emit unescaped quotes. So the parser decodes leniently, repairs what it
  knows how to repair, redacts secrets and neutralises control characters *here*, tolerates any
  field being missing or of the wrong type (a warning, never an exception) and reports a document
  it cannot read as a `SourceError` with the position and the reason.

Speed matters because a big instance (512 workers x 8 cores, a 1.6 MB document) is parsed every
second in the same process as the UI. The hot loops avoid per-item helper calls for well-formed
fields, the frozen model objects are filled through their slots, garbage collection is paused
during the parse, orjson is used when installed, and the redaction of request variables is
memoised (the same stuck request shows up poll after poll, and most headers repeat across
requests). The memo is keyed by the hash of the raw text, never by the text itself, so it holds
no secret. bench/bench_uwsgi_parse.py measures all of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import gc
import json
import math
import operator
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from stackmon import redact
from stackmon.addresses import StatsAddress
from stackmon.model import (
    Core,
    Request,
    Socket,
    SourceError,
    Thresholds,
    UwsgiInstance,
    Vassal,
    Worker,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "clear_caches",
    "fetch_stats",
    "parse_stats",
    "poll_stats",
]

T = TypeVar("T")

DEFAULT_TIMEOUT = 2.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# Documents at least this big are parsed in a worker thread by poll_stats, so that a 20 ms parse
# of a huge instance does not freeze the event loop (and the UI) in one piece.
_THREAD_PARSE_BYTES = 256 * 1024

# request_start values below this (2001-09-09) cannot be epoch seconds of a live request: the
# instance runs with `clock = monotonic`, and an "age" computed from it would be nonsense.
_EPOCH_MIN = 1_000_000_000

# Bounds of every number in the document. A value outside them is a lie or corruption, never a
# fact: it becomes 0 ("unknown") with a warning, so that the rest of the sample stays usable and
# no later layer meets a pid os.kill() cannot take, a count float() overflows on, or a number
# too long to print (Python refuses to turn an int of more than 4300 digits into text).
PID_MAX = 4_194_304  # the kernel's PID_MAX_LIMIT: /proc/sys/kernel/pid_max can go no higher
COUNT_LIMIT = 2**63  # counts, sizes, times and ids: an int64 is all uWSGI has
_ID_LIMIT = 2**32  # uid, gid
# Longer integer literals are not parsed at all (the stdlib refuses >4300 digits with a
# ValueError): anything of more than 20 digits is out of range anyway.
_MAX_INT_DIGITS = 40


def _secs(value: float) -> str:
    """A timeout as users wrote it: 2 -> "2.0", 0.25 -> "0.25"."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


# --------------------------------------------------------------------------------------------
# Fetch
# --------------------------------------------------------------------------------------------


class _TooBig(Exception):
    """The peer sent more than max_bytes: stop reading instead of filling memory."""


class _Reply(asyncio.Protocol):
    """Collects one whole reply until EOF.

    A bare Protocol rather than a StreamReader: no per-chunk buffering copies, and a reset or an
    oversize reply is recorded as the outcome instead of surfacing as a stray exception.
    """

    def __init__(self, request: bytes, max_bytes: int, done: asyncio.Future[BaseException | None]):
        self.request = request
        self.max_bytes = max_bytes
        self.done = done
        self.chunks: list[bytes] = []
        self.size = 0
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.request:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.size += len(data)
        if self.size > self.max_bytes:
            self._finish(_TooBig())
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.abort()
            return
        self.chunks.append(data)

    def eof_received(self) -> bool:
        self._finish(None)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def _finish(self, outcome: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_result(outcome)


class _SpeaksHttp(Exception):
    """A plain-mode poll met a stats server that waits for a request: `stats-http = true`."""


class _Exchange:
    """What happened so far, so that a timeout can say where it stopped."""

    def __init__(self) -> None:
        self.reply: _Reply | None = None

    def timeout_message(self, timeout: float) -> str:
        if self.reply is None:
            return f"could not connect within {_secs(timeout)} s"
        if self.reply.size == 0:
            return f"no answer within {_secs(timeout)} s"
        return (f"reply not finished within {_secs(timeout)} s ({self.reply.size} bytes received;"
                f" a busy master answers late)")


def describe_os_error(exc: OSError, addr: StatsAddress, received: int) -> str:
    """An OSError as a sentence about the stats server rather than about a syscall."""
    after = f" after {received} bytes" if received else ""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return f"connection reset by peer{after}"
    if isinstance(exc, (BrokenPipeError, ConnectionAbortedError)):
        return f"connection closed by peer{after}"
    if isinstance(exc, FileNotFoundError):
        return f"no such socket file {addr.path!r}"
    if isinstance(exc, PermissionError):
        return "permission denied (the socket's owner or mode does not let this user connect)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {addr.host!r} ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if exc.errno == errno.ENOTSOCK:
        return f"{addr.path!r} is not a socket"
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text[:1].lower()}{text[1:]}{after}"


def _http_request(addr: StatsAddress) -> bytes:
    """The smallest request stats-http answers. uWSGI takes any path; the URL's own path is
    kept for a stats server published behind a proxy. HTTP/1.0, so nobody chunks the reply."""
    parts = urlsplit(addr.path)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = addr.host if ":" not in addr.host else f"[{addr.host}]"
    return (f"GET {target} HTTP/1.0\r\nHost: {host}:{addr.port}\r\n\r\n"
            .encode("ascii", "replace"))


async def _connect(addr: StatsAddress, factory: Callable[[], _Reply]) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    transport: asyncio.Transport
    if addr.kind == "tcp":
        transport, _ = await loop.create_connection(factory, addr.host, addr.port)
    elif addr.kind == "http":
        tls = ssl.create_default_context() if addr.path.startswith("https://") else None
        transport, _ = await loop.create_connection(
            factory, addr.host, addr.port, ssl=tls, server_hostname=addr.host if tls else None
        )
    elif addr.kind == "unix":
        transport, _ = await loop.create_unix_connection(factory, addr.path)
    else:
        # uWSGI binds `@name` with the terminating NUL inside the address ("\0name\0"; `ss`
        # shows it as @name@), so that is what must be dialled. Other servers use "\0name".
        try:
            transport, _ = await loop.create_unix_connection(factory, f"\0{addr.path}\0")
        except ConnectionRefusedError:
            transport, _ = await loop.create_unix_connection(factory, f"\0{addr.path}")
    return transport


async def _exchange(addr: StatsAddress, max_bytes: int, state: _Exchange,
                    probe_after: float) -> BaseException | None:
    """Connect, (send the HTTP request when stats-http), read to EOF; returns how it ended.

    A plain poll that hears nothing for `probe_after` seconds checks whether the server speaks
    HTTP (`stats-http = true` waits for a request, and a plain poll sends none: it would end as
    "no answer" with no hint). uWSGI's master serves stats connections one at a time and
    blocks reading the first one's request, so the silent connection is dropped first; the
    probe sends a GET on its own connection (never on the plain one: bytes sent there make a
    plain server reset it once it has written, which can destroy the reply), and when the
    answer is not HTTP (a slow plain master) a new plain connection gets the rest of the
    deadline.
    """
    loop = asyncio.get_running_loop()
    request = _http_request(addr) if addr.kind == "http" else b""

    def factory() -> _Reply:
        state.reply = _Reply(request, max_bytes, loop.create_future())
        return state.reply

    transport = await _connect(addr, factory)
    try:
        assert state.reply is not None
        done = state.reply.done
        if addr.kind == "http":
            return await done
        try:
            return await asyncio.wait_for(asyncio.shield(done), probe_after)
        except TimeoutError:
            if state.reply.size:
                return await done
    finally:
        transport.abort()
    if await _speaks_http(addr):
        return _SpeaksHttp()
    transport = await _connect(addr, factory)
    try:
        return await state.reply.done
    finally:
        transport.abort()


async def _speaks_http(addr: StatsAddress) -> bool:
    """Whether the server at `addr` answers an HTTP request with an HTTP status line."""
    try:
        if addr.kind == "tcp":
            reader, writer = await asyncio.open_connection(addr.host, addr.port)
        elif addr.kind == "unix":
            reader, writer = await asyncio.open_unix_connection(addr.path)
        else:
            reader, writer = await asyncio.open_unix_connection(f"\0{addr.path}\0")
    except (OSError, ValueError):
        return False
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        await writer.drain()
        head = await reader.read(16)
        return head.startswith(b"HTTP/")
    except OSError:
        return False
    finally:
        writer.close()


async def fetch_stats(
    addr: StatsAddress, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES
) -> bytes | SourceError:
    """Read one stats document from `addr`: the raw bytes, or a SourceError saying why not.

    `timeout` bounds connect and read together (a stalled master must not hold a poll longer
    than that); `max_bytes` bounds the reply. For stats-http the HTTP head is checked and
    stripped, so the bytes returned are always the document itself.
    """
    shown = redact.clean(str(addr))  # a stats-http URL may carry a token in its query
    return await fetch_raw(addr, timeout, max_bytes, source=f"uwsgi {shown}",
                           label=f"uwsgi stats {shown}")


async def fetch_raw(addr: StatsAddress, timeout: float, max_bytes: int, *, source: str,
                    label: str) -> bytes | SourceError:
    """fetch_stats for any small status endpoint of these forms (nginx's stub_status uses the
    `http` form: one HTTP/1.0 GET, body read to EOF); `source`/`label` name it in errors."""
    state = _Exchange()
    try:
        async with asyncio.timeout(timeout):
            outcome = await _exchange(addr, max_bytes, state, min(1.0, timeout / 3))
    except TimeoutError:
        return SourceError(source, f"{label}: {state.timeout_message(timeout)}")
    except OSError as exc:
        return SourceError(source, f"{label}: {describe_os_error(exc, addr, 0)}")
    except ValueError as exc:  # e.g. a unix path too long for sun_path
        return SourceError(source, f"{label}: cannot connect ({exc})")
    reply = state.reply
    assert reply is not None
    if isinstance(outcome, _SpeaksHttp):
        return SourceError(source, f"{label}: {_http_hint(addr)}")
    if isinstance(outcome, _TooBig):
        return SourceError(source, f"{label}: reply exceeded {max_bytes} bytes; gave up reading")
    if isinstance(outcome, OSError):
        message = describe_os_error(outcome, addr, reply.size)
        if addr.kind == "http" and reply.chunks and reply.chunks[0].lstrip()[:1] == b"{":
            # A plain stats server answers our HTTP request with the bare document, then
            # resets because the request was never read.
            message += ("; it answered without HTTP headers: it is a plain stats server, give"
                        " its address without http://")
        return SourceError(source, f"{label}: {message}")
    if outcome is not None:
        return SourceError(source, f"{label}: connection failed ({outcome!r})")
    data = b"".join(reply.chunks)
    if addr.kind == "http":
        return strip_http(data, source, label)
    if not data:
        return SourceError(source, f"{label}: empty reply (connected, but the server closed the"
                                   f" connection without sending anything)")
    return data


def _http_hint(addr: StatsAddress) -> str:
    """What to do about a stats server that speaks HTTP when polled as a plain one."""
    if addr.kind != "tcp":
        return ("this stats server speaks HTTP (stats-http = true), which stackmon reads over"
                " TCP only: serve the stats on host:port, or drop stats-http")
    host = f"[{addr.host}]" if ":" in addr.host else addr.host
    return (f"this stats server speaks HTTP (stats-http = true): use"
            f" http://{host}:{addr.port}")


def strip_http(data: bytes, source: str, label: str) -> bytes | SourceError:
    """The body of a stats-http reply, or why it is not one."""
    if not data:
        return SourceError(source, f"{label}: empty reply (no HTTP status line)")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    status_line = head.split(b"\n", 1)[0].strip()
    if not status_line.startswith(b"HTTP/"):
        if data.lstrip()[:1] == b"{":
            return SourceError(source, f"{label}: the server answered without HTTP headers: it is"
                                       f" a plain stats server, give its address without http://")
        preview = redact.visible(data[:40].decode("utf-8", "replace"))
        return SourceError(source, f"{label}: not an HTTP reply (starts with {preview!r})")
    parts = status_line.split(None, 2)
    code = parts[1].decode("ascii", "replace") if len(parts) > 1 else "?"
    if code != "200":
        reason = parts[2].decode("utf-8", "replace") if len(parts) > 2 else ""
        return SourceError(source, f"{label}: HTTP {code} {redact.visible(reason)}".rstrip())
    if not sep:
        return SourceError(source, f"{label}: reply truncated inside the HTTP headers")
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    if length and len(body) < int(length.group(1)):
        return SourceError(source, f"{label}: reply truncated ({len(body)} of"
                                   f" {int(length.group(1))} body bytes)")
    if not body.strip():
        return SourceError(source, f"{label}: empty reply (HTTP 200 without a body)")
    return body


async def poll_stats(
    addr: StatsAddress,
    thresholds: Thresholds,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    clock: Callable[[], float] = time.time,
) -> UwsgiInstance | SourceError:
    """Fetch and parse in one call; request ages are measured at the moment the reply ended.

    Big documents are parsed in a thread so the event loop keeps serving the UI meanwhile.
    """
    raw = await fetch_stats(addr, timeout, max_bytes)
    if isinstance(raw, SourceError):
        return raw
    now = clock()
    if len(raw) >= _THREAD_PARSE_BYTES:
        return await asyncio.to_thread(parse_stats, raw, str(addr), now, thresholds)
    return parse_stats(raw, str(addr), now, thresholds)


# --------------------------------------------------------------------------------------------
# Parse
# --------------------------------------------------------------------------------------------


def _fast_constructor(cls: type[T]) -> Callable[..., T]:
    """A positional constructor for a frozen, slotted dataclass that fills the slots directly.

    Why: a frozen dataclass's generated __init__ sets each field through object.__setattr__
    (to get past its own frozen __setattr__), which makes building the 4096 Cores and 512
    Workers of a 512x8 instance about twice as slow. Writing through the slot descriptors gives
    the same object (equal, hashable, still frozen for everyone else). The function
    is generated from dataclasses.fields(), so fields added to the model later get their
    defaults; a class this cannot serve exactly (no slots, __post_init__, default factories)
    gets its real constructor back.
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    slots = getattr(cls, "__slots__", ())
    if (hasattr(cls, "__post_init__")
            or any(f.name not in slots or f.default_factory is not dataclasses.MISSING
                   or not f.init for f in fields)):
        return cls
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    params, body = [], []
    for f in fields:
        scope[f"_set_{f.name}"] = getattr(cls, f.name).__set__
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            scope[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(o, {f.name})")
    source = (f"def new({', '.join(params)}):\n    o = _new(_cls)\n" + "\n".join(body)
              + "\n    return o\n")
    exec(source, scope)
    new: Callable[..., T] = scope["new"]
    return new


_new_core = _fast_constructor(Core)
_new_request = _fast_constructor(Request)
_new_worker = _fast_constructor(Worker)


class _Issues:
    """Non-fatal oddities, counted by kind: a document with 4096 bad cores gives one warning
    ("... (4096 times)"), not 4096."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, text: str) -> None:
        self.counts[text] = self.counts.get(text, 0) + 1

    def lines(self) -> tuple[str, ...]:
        return tuple(t if n == 1 else f"{t} ({n} times)" for t, n in self.counts.items())


class _OutOfRange:
    """An integer literal too long to be a number of the document (see _lenient_int)."""

    __slots__ = ()


_OUT_OF_RANGE = _OutOfRange()


def _lenient_int(literal: str) -> int | _OutOfRange:
    """json's parse_int for documents with absurdly long numbers: such a number becomes a
    marker (a bad value of its field) instead of making the whole document unreadable."""
    if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
        return _OUT_OF_RANGE
    return int(literal)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if value is _OUT_OF_RANGE:
        return f"a number of more than {_MAX_INT_DIGITS} digits"
    names: dict[type, str] = {str: "text", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _num(value: object, where: str, issues: _Issues) -> int:
    """Slow path of every integer field: anything that is not a plain JSON integer."""
    if type(value) is bool:
        return int(value)
    if type(value) is float and math.isfinite(value):
        return int(value)
    if value is _OUT_OF_RANGE:
        issues.add(f"{where}: {_type_name(value)} is out of range; used 0")
    else:
        issues.add(f"{where}: expected a number, got {_type_name(value)}; used 0")
    return 0


def _shown_number(value: int) -> str:
    """A number for a warning, without printing 400 digits (or failing on 5,000)."""
    if -10**18 < value < 10**18:
        return str(value)
    digits = int(value.bit_length() * 0.30103) + 1
    return f"{'-' if value < 0 else ''}a number of about {digits} digits"


def _bounded(value: int, where: str, issues: _Issues, high: int = COUNT_LIMIT) -> int:
    """`value` when 0 <= value < high, else 0 and a warning: out of range is unknown."""
    if 0 <= value < high:
        return value
    issues.add(f"{where}: {_shown_number(value)} is out of range; used 0")
    return 0


def _pid(value: int, where: str, issues: _Issues) -> int:
    """A pid as the kernel could have given it (0: none, e.g. a dead worker)."""
    return _bounded(value, where, issues, PID_MAX + 1)


def _text(value: object, where: str, issues: _Issues) -> str:
    """A text field from the document, control characters made visible."""
    if type(value) is str:
        return redact.visible(value)
    if value is None:
        return ""
    issues.add(f"{where}: expected text, got {_type_name(value)}")
    return redact.visible(str(value)) if isinstance(value, (int, float)) else ""


def _optional_id(doc: dict[str, Any], key: str, issues: _Issues) -> int | None:
    """uid/gid: None when absent or out of range (0 would claim root)."""
    value = doc.get(key)
    if value is None:
        return None
    if type(value) is float and math.isfinite(value):
        value = int(value)
    elif type(value) is not int:
        issues.add(f"{key}: expected a number, got {_type_name(value)}; ignored")
        return None
    if 0 <= value < _ID_LIMIT:
        return value
    issues.add(f"{key}: {_shown_number(value)} is out of range; ignored")
    return None


def _list(value: object, where: str, issues: _Issues) -> list[Any]:
    if type(value) is list:
        return value
    if value is not None:
        issues.add(f"{where}: expected a list, got {_type_name(value)}; ignored")
    return []


# Memo of request variables, keyed by hash() of the raw text (never the text: it may hold a
# cookie; a 64-bit hash collision would show one variable in place of another, both redacted).
# _VAR_MEMO: "KEY=VALUE" -> (raw key, (shown key, shown value)); _REQ_MEMO: the whole vars list
# -> (method, uri, remote_addr, host, pairs). Cleared wholesale when one grows past the cap,
# which one poll of even a 512x8 instance (~3,000 distinct variables) stays far below.
_Details = tuple[str, str, str, str, tuple[tuple[str, str], ...]]
_MEMO_CAP = 32768
_VAR_MEMO: dict[int, tuple[str, tuple[str, str]]] = {}
# The value also carries the warnings the list produced, replayed on every hit so that a
# memoised request warns exactly like a fresh one.
_REQ_MEMO: dict[int, tuple[_Details, tuple[str, ...]]] = {}
_MALFORMED: tuple[str, tuple[str, str]] = ("", ("", ""))
# The variables behind Request's own fields, by their index in _request_details's `fields`.
_FIELD_KEYS = {"REQUEST_METHOD": 0, "REQUEST_URI": 1, "PATH_INFO": 2, "QUERY_STRING": 3,
               "REMOTE_ADDR": 4, "HTTP_HOST": 5, "SERVER_NAME": 6}
_NO_DETAILS: _Details = ("", "", "", "", ())


def clear_caches() -> None:
    """Forget memoised variables (benchmarks measuring a cold parse; tests)."""
    _VAR_MEMO.clear()
    _REQ_MEMO.clear()


def _shown_pair(key: str, value: str) -> tuple[str, str]:
    return redact.redact_pair(key, value)


def _request_details(raw_vars: list[Any], issues: _Issues) -> _Details:
    """method, uri, remote_addr, host and the shown (redacted, visible) KEY=VALUE pairs."""
    memo_key: int | None
    try:
        memo_key = hash(tuple(raw_vars))
    except TypeError:  # a list or object inside vars: not memoisable, still parseable
        memo_key = None
    else:
        hit = _REQ_MEMO.get(memo_key)
        if hit is not None:
            for text in hit[1]:
                issues.add(text)
            return hit[0]
    var_memo = _VAR_MEMO
    field_keys = _FIELD_KEYS
    problems: list[str] = []
    pairs: list[tuple[str, str]] = []
    append = pairs.append
    # shown value and raw "KEY=VALUE" of the first occurrence of each _FIELD_KEYS variable
    fields: list[tuple[str, str] | None] = [None] * len(field_keys)
    for item in raw_vars:
        if type(item) is not str:
            problems.append(f"vars: expected \"KEY=VALUE\" text, got {_type_name(item)};"
                            f" skipped")
            continue
        if not item:
            continue  # the list ends with ""
        h = hash(item)
        entry = var_memo.get(h)
        if entry is None:
            key, sep, value = item.partition("=")
            entry = (key, _shown_pair(key, value)) if sep and key else _MALFORMED
            var_memo[h] = entry
        raw_key, pair = entry
        if not raw_key:
            problems.append("vars: entry without KEY= skipped")
            continue
        append(pair)
        index = field_keys.get(raw_key)
        if index is not None and fields[index] is None:
            fields[index] = (pair[1], item)
    # These keys are never secret keys, so their shown value equals redact.clean(raw value).
    method, uri, path_info, query, remote, http_host, server_name = (
        f[0] if f is not None else None for f in fields)
    if uri is None:
        if path_info is None and query is None:
            uri = ""
        else:
            raw_path = fields[2][1].partition("=")[2] if fields[2] else ""
            raw_query = fields[3][1].partition("=")[2] if fields[3] else ""
            uri = redact.clean(f"{raw_path}?{raw_query}" if raw_query else raw_path)
    details = (method or "", uri, remote or "", http_host or server_name or "", tuple(pairs))
    for text in problems:
        issues.add(text)
    if memo_key is not None:
        _REQ_MEMO[memo_key] = (details, tuple(problems))
    return details


def _request(
    core_id: int, core: dict[str, Any], now: float, thresholds: Thresholds, issues: _Issues
) -> Request:
    """The request in flight on a busy core. A busy core always yields one, even when uWSGI
    copied no vars (the copy raced the request): that the core is stuck is the critical fact."""
    raw_vars = core.get("vars")
    if type(raw_vars) is not list:
        if raw_vars is not None:
            issues.add(f"cores[].vars: expected a list, got {_type_name(raw_vars)}; ignored")
        raw_vars = None
    method, uri, remote, host, pairs = (
        _request_details(raw_vars, issues) if raw_vars else _NO_DETAILS
    )
    started: float | None = None
    info = core.get("req_info")
    if type(info) is dict:
        start = info.get("request_start")
        if start is not None:
            if type(start) is not int:
                start = _num(start, "cores[].req_info.request_start", issues) or None
            if start is not None:
                if start >= COUNT_LIMIT:
                    issues.add("cores[].req_info.request_start is out of range; request age"
                               " unknown")
                elif start >= _EPOCH_MIN:
                    started = float(start)
                else:
                    issues.add("request_start is not an epoch time (clock = monotonic?);"
                               " request ages unknown")
    elif info is not None:
        issues.add(f"cores[].req_info: expected an object, got {_type_name(info)}; ignored")
    running = None if started is None else max(0.0, now - started)
    return _new_request(core_id, method, uri, remote, host, started, running,
                        thresholds.level(running), pairs)


_CORE_KEYS = ("id", "requests", "in_request")
_core_ints = operator.itemgetter(*_CORE_KEYS)


def _cores(
    raw_cores: list[Any], now: float, thresholds: Thresholds, issues: _Issues
) -> tuple[Core, ...]:
    """The hot loop (4096 iterations for a 512x8 instance): one C-level itemgetter for the
    three fields, one type test, and the slow paths only for what is missing or odd."""
    out: list[Core] = []
    append = out.append
    new_core = _new_core
    ints = _core_ints
    for core in raw_cores:
        try:
            cid, requests, busy = ints(core)
        except (KeyError, TypeError, IndexError):
            if type(core) is not dict:
                issues.add(f"cores[]: expected an object, got {_type_name(core)}; skipped")
                continue
            cid, requests, busy = (core.get(k, 0) for k in _CORE_KEYS)
        if type(cid) is not int or type(requests) is not int or type(busy) is not int:
            cid, requests, busy = (
                v if type(v) is int else _num(v, f"cores[].{k}", issues)
                for k, v in zip(_CORE_KEYS, (cid, requests, busy), strict=True)
            )
        if not (0 <= cid < COUNT_LIMIT and 0 <= requests < COUNT_LIMIT):
            cid = _bounded(cid, "cores[].id", issues)
            requests = _bounded(requests, "cores[].requests", issues)
        if busy:
            append(new_core(cid, requests, True, _request(cid, core, now, thresholds, issues)))
        else:
            append(new_core(cid, requests, False, None))
    return tuple(out)


# Integer fields of a worker, in the order they are unpacked in _worker.
_WORKER_INTS = ("id", "pid", "accepting", "requests", "exceptions", "harakiri_count",
                "respawn_count", "avg_rt", "rss", "vsz", "last_spawn", "running_time", "tx")
_worker_ints = operator.itemgetter(*_WORKER_INTS)
_ALL_INT = (int,) * len(_WORKER_INTS)


def _worker(doc: dict[str, Any], position: int, now: float, thresholds: Thresholds,
            issues: _Issues) -> Worker:
    """One worker; its id is `position` (1-based), see model.Worker for why."""
    get = doc.get
    try:
        n = _worker_ints(doc)
    except KeyError:
        n = tuple(get(k, 0) for k in _WORKER_INTS)
    if tuple(map(type, n)) != _ALL_INT:
        n = tuple(v if type(v) is int else _num(v, f"workers[].{k}", issues)
                  for k, v in zip(_WORKER_INTS, n, strict=True))
    if min(n) < 0 or max(n) >= COUNT_LIMIT:
        n = tuple(_bounded(v, f"workers[].{k}", issues) for k, v in zip(_WORKER_INTS, n,
                                                                         strict=True))
    (wid, pid, accepting, requests, exceptions, harakiri, respawns, avg_rt, rss, vsz,
     last_spawn, running_time, tx) = n
    if wid != position:
        # 0 or missing: a cheap worker, or a producer without ids; both expected, no warning.
        if wid:
            issues.add("workers[].id differs from the worker's position in the list; workers"
                       " are numbered by position (uWSGI's own order)")
        wid = position
    if pid > PID_MAX:
        pid = _pid(pid, "workers[].pid", issues)
    status = get("status", "")
    if type(status) is not str or not status.isprintable():
        status = _text(status, "workers[].status", issues)
    raw_cores = get("cores")
    if type(raw_cores) is not list:
        raw_cores = _list(raw_cores, "workers[].cores", issues)
    cores = _cores(raw_cores, now, thresholds, issues) if raw_cores else ()
    return _new_worker(
        wid, pid, status, bool(accepting), requests, exceptions, harakiri, respawns,
        avg_rt / 1000.0, rss, vsz, float(last_spawn), running_time / 1_000_000.0, tx, cores,
    )


def _count(value: object, where: str, issues: _Issues) -> int:
    """A non-negative integer field outside the hot loops: typed, then bounded."""
    return _bounded(value if type(value) is int else _num(value, where, issues), where, issues)


def _socket(doc: dict[str, Any], issues: _Issues) -> Socket:
    get = doc.get
    shared = get("shared", 0)
    return Socket(
        name=_text(get("name", ""), "sockets[].name", issues),
        proto=_text(get("proto", ""), "sockets[].proto", issues),
        queue=_count(get("queue", 0), "sockets[].queue", issues),
        max_queue=_count(get("max_queue", 0), "sockets[].max_queue", issues),
        shared=bool(shared if type(shared) is int else _num(shared, "sockets[].shared", issues)),
    )


# --- decoding and lenient JSON ---------------------------------------------------------------

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _decode(raw: bytes) -> tuple[str, int]:
    """The text, and how many bytes were not UTF-8 (each became U+FFFD).

    surrogateescape maps each bad byte to one lone surrogate, so they can be counted exactly and
    then replaced; a clean document pays only for the strict decode.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text, bad = _ESCAPED_BYTE.subn("\ufffd", raw.decode("utf-8", "surrogateescape"))
    else:
        bad = 0
    if text.startswith("\ufeff"):
        text = text[1:]
    return text, bad


# A pretty-printed `"key":"value"` line (how uWSGI prints every text field but vars).
_STRING_LINE = re.compile(r'^([ \t]*"[^"\n]*":[ \t]*)"(.*)"(,?)[ \t]*$', re.MULTILINE)
_JSON_STRING_TOKEN = re.compile(r'\\.|"')


def _repair_quotes(text: str) -> tuple[str, int]:
    """Escape unescaped quotes inside `"key":"value"` lines (seen in socket names and cwd).

    Only works on pretty-printed output, where each value sits on its own line: enough for the
    broken documents uWSGI really produces; a minified one is reported instead of guessed at.
    """
    fixed = 0

    def fix(m: re.Match[str]) -> str:
        nonlocal fixed
        inner = m.group(2)
        if '"' not in inner:
            return m.group()
        repaired = _JSON_STRING_TOKEN.sub(lambda t: '\\"' if t.group() == '"' else t.group(),
                                          inner)
        if repaired == inner:
            return m.group()
        fixed += 1
        return f'{m.group(1)}"{repaired}"{m.group(3)}'

    return _STRING_LINE.sub(fix, text), fixed


# `stats-minified` puts the document on one line, so a value cannot be told by its line. uWSGI
# writes these text fields unescaped (core/master_utils.c, uwsgi_stats_keyval: a plain
# "%s":"%s") and always in the same order, so each one's value ends at the quote that is
# followed by what uWSGI writes next: a socket's `name` by `,"proto":"`, `cwd` by the next key
# of the top-level object, an app's `mountpoint` by `,"startup_time":`, its `chdir` (the app's
# last field) by `}`. The first such quote ends the value (non-greedy): a value that itself
# contains `","proto":"` cannot be told apart and stays unreadable.
_FOLLOWS = {"name": (',"proto":"',), "proto": (',"queue":',),
            "cwd": (',"daemons":', ',"locks":', ',"emperor":'),
            "version": (',"listen_queue":', ',"pid":'), "mountpoint": (',"startup_time":',),
            "chdir": ("}]", "},")}


def _repair_minified(text: str) -> tuple[str, int]:
    """Escape unescaped quotes in the known text fields of a one-line document (above)."""
    fixed = 0
    out: list[str] = []
    pos = 0
    for m in re.finditer(r'"(name|proto|cwd|version|mountpoint|chdir)":"', text):
        start = m.end()
        if start < pos:
            continue
        ends = [text.find(f'"{tail}', start) for tail in _FOLLOWS[m.group(1)]]
        ends = [e for e in ends if e >= 0]
        if not ends:
            continue
        end = min(ends)
        inner = text[start:end]
        if '"' not in inner:
            continue
        repaired = _JSON_STRING_TOKEN.sub(lambda t: '\\"' if t.group() == '"' else t.group(),
                                          inner)
        if repaired != inner:
            fixed += 1
            out.append(text[pos:start])
            out.append(repaired)
            pos = end
    out.append(text[pos:])
    return "".join(out), fixed


# orjson, when installed, parses a big document 2-3x faster than the stdlib (json.loads is most
# of a 512x8 parse). It is strict (no raw control characters, valid UTF-8 only), so it only ever
# takes documents that json.loads(strict=False) would parse to the same value; anything it
# refuses goes down the lenient stdlib path. Not a dependency: stackmon works without it.
try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None  # type: ignore[assignment]
_NOT_LOADED = object()


def _fast_load(raw: bytes) -> Any:
    if _orjson is None:
        return _NOT_LOADED
    try:
        return _orjson.loads(raw)
    except (ValueError, RecursionError):  # orjson.JSONDecodeError is a ValueError
        return _NOT_LOADED


def _loads(text: str) -> Any:
    """json.loads(strict=False), and when a number is too long for int() (a ValueError that is
    not a JSONDecodeError), again with such numbers as bad values of their fields."""
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        raise
    except ValueError:
        return json.loads(text, strict=False, parse_int=_lenient_int)


def _raw_decode(text: str) -> tuple[Any, int]:
    """JSONDecoder.raw_decode, with _loads's handling of absurdly long numbers."""
    try:
        return json.JSONDecoder(strict=False).raw_decode(text)
    except json.JSONDecodeError:
        raise
    except ValueError:
        return json.JSONDecoder(strict=False, parse_int=_lenient_int).raw_decode(text)


def _load(text: str, nbytes: int, issues: _Issues) -> Any | str:
    """The decoded JSON value, or (as a str) why the document cannot be read."""
    try:
        return _loads(text)
    except json.JSONDecodeError as exc:
        first = exc
    except RecursionError:
        return "document nested too deeply to be a stats document"
    if first.msg == "Extra data":
        try:
            value, end = _raw_decode(text)
        except (json.JSONDecodeError, RecursionError):
            pass
        else:
            issues.add(f"ignored {len(text) - end} characters after the end of the document")
            return value
    repaired, fixed = _repair_quotes(text)
    where = "on {} line(s)"
    if not fixed and "\n" not in text.strip():
        repaired, fixed = _repair_minified(text)
        where = "in {} field(s) of the one-line (stats-minified) document"
    if fixed:
        try:
            value = _loads(repaired)
        except (json.JSONDecodeError, RecursionError):
            pass
        else:
            issues.add(f"repaired unescaped quotes {where.format(fixed)}")
            return value
    if first.pos >= len(text.rstrip()) or first.msg.startswith("Unterminated string"):
        return (f"reply truncated: the JSON stops at line {first.lineno} col {first.colno}"
                f" before the document is complete ({nbytes} bytes received)")
    if first.pos == 0 or not text.lstrip().startswith(("{", "[")):
        head = text.lstrip()
        if head.startswith("HTTP/"):
            return ("the reply is HTTP, not a plain stats document: give the address as"
                    " http://host:port (stats-http)")
        preview = redact.visible(head[:40])
        return f"reply is not JSON (starts with {preview!r})"
    return f"invalid JSON at line {first.lineno} col {first.colno}: {first.msg}"


def parse_stats(
    raw: bytes, address: str, now: float, thresholds: Thresholds
) -> UwsgiInstance | SourceError:
    """One stats document as a `UwsgiInstance`, or a SourceError when it cannot be read.

    `now` is the epoch time the document was received: request ages are `now - request_start`.
    Never raises: every field is optional and a wrong type becomes a default plus a warning in
    `UwsgiInstance.warnings`, because a partially odd document still tells which worker is stuck.
    """
    shown = redact.clean(address)  # error messages only: a stats-http URL may carry a token
    source = f"uwsgi {shown}"
    label = f"uwsgi stats {shown}"
    # A big document allocates ~100,000 objects; the collections that triggers are pure cost
    # (JSON is acyclic and freed by refcounting, the model is kept) and scan the whole heap of
    # the process, ~20% of a 512x8 parse in a process the size of the TUI. So: none during it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse(raw, address, now, thresholds, source, label)
    except Exception as exc:  # a bug here must cost one sample, not the poller
        return SourceError(source, f"{label}: could not read the document"
                                   f" ({type(exc).__name__}: {redact.clean(str(exc))[:200]})")
    finally:
        if gc_was_enabled:
            gc.enable()


def _parse(
    raw: bytes, address: str, now: float, thresholds: Thresholds, source: str, label: str
) -> UwsgiInstance | SourceError:
    if max(len(_VAR_MEMO), len(_REQ_MEMO)) > _MEMO_CAP:
        clear_caches()
    issues = _Issues()
    doc = _fast_load(raw)
    if doc is _NOT_LOADED:
        text, bad = _decode(raw)
        if bad:
            issues.add(f"{bad} byte(s) of invalid UTF-8 replaced")
        if not text.strip():
            return SourceError(source, f"{label}: empty reply")
        doc = _load(text, len(raw), issues)
    if isinstance(doc, str):
        return SourceError(source, f"{label}: {doc}")
    if type(doc) is not dict:
        return SourceError(source, f"{label}: not a stats document (the JSON is"
                                   f" {_type_name(doc)}, not an object)")
    if "workers" not in doc and "version" not in doc and "pid" not in doc:
        return SourceError(source, f"{label}: JSON, but not a uWSGI stats document"
                                   f" (no workers, version or pid)")
    get = doc.get
    emperor = "workers" not in doc and ("vassals" in doc or "emperor" in doc)
    if "workers" not in doc and not emperor:
        issues.add("no workers in the document")
    sockets: list[Socket] = []
    for item in _list(get("sockets"), "sockets", issues):
        if type(item) is dict:
            sockets.append(_socket(item, issues))
        else:
            issues.add(f"sockets[]: expected an object, got {_type_name(item)}; skipped")
    workers: list[Worker] = []
    for position, item in enumerate(_list(get("workers"), "workers", issues), 1):
        if type(item) is dict:
            workers.append(_worker(item, position, now, thresholds, issues))
        else:
            # Skipped, but it keeps its number: the next worker is still uWSGI's next one.
            issues.add(f"workers[]: expected an object, got {_type_name(item)}; skipped")
    master_pid = get("pid", 0)
    if type(master_pid) is not int:
        master_pid = _num(master_pid, "pid", issues)
    return UwsgiInstance(
        address=address,
        version=_text(get("version", ""), "version", issues),
        master_pid=_pid(master_pid, "pid", issues),
        listen_queue=_count(get("listen_queue", 0), "listen_queue", issues),
        listen_queue_max=max((s.max_queue for s in sockets), default=0),
        sockets=tuple(sockets),
        workers=tuple(workers),
        uid=_optional_id(doc, "uid", issues),
        gid=_optional_id(doc, "gid", issues),
        cwd=_text(get("cwd", ""), "cwd", issues),
        signal_queue=_count(get("signal_queue", 0), "signal_queue", issues),
        kind="emperor" if emperor else "instance",
        vassals=_vassals(get("vassals"), issues) if emperor else (),
        warnings=issues.lines(),
    )


def _vassals(raw: object, issues: _Issues) -> tuple[Vassal, ...]:
    """An emperor's `vassals[]` (uWSGI core/emperor.c emperor_send_stats): `id` is the
    vassal's config name, `monitor` the scanner argument that found it. Their stats addresses
    are not in the document: stackmon.collect.locate_vassal_stats finds them in the configs."""
    out: list[Vassal] = []
    for item in _list(raw, "vassals", issues):
        if type(item) is not dict:
            issues.add(f"vassals[]: expected an object, got {_type_name(item)}; skipped")
            continue
        get = item.get
        pid = get("pid", 0)
        pid = pid if type(pid) is int else _num(pid, "vassals[].pid", issues)
        out.append(Vassal(
            name=_text(get("id", ""), "vassals[].id", issues),
            pid=_pid(pid, "vassals[].pid", issues),
            ready=bool(_count(get("ready", 0), "vassals[].ready", issues)),
            accepting=bool(_count(get("accepting", 0), "vassals[].accepting", issues)),
            respawns=_count(get("respawns", 0), "vassals[].respawns", issues),
            born=float(_count(get("born", 0), "vassals[].born", issues)),
            last_run=float(_count(get("last_run", 0), "vassals[].last_run", issues)),
            uid=_optional_id(item, "uid", issues),
            gid=_optional_id(item, "gid", issues),
            monitor=_text(get("monitor", ""), "vassals[].monitor", issues),
        ))
    return tuple(out)

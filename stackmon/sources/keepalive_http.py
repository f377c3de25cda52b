"""One small HTTP GET, asked again every poll over the same connection (HTTP/1.1 keep-alive).

Why: nginx's stub_status is fetched every second for every host. A new connection each time
(connect, accept, close: the asyncio transport and protocol built and torn down) cost 0.46 ms
of CPU per fetch on loopback; the same GET on a kept connection 0.06-0.10 ms (measured with
/tmp scripts against the demo nginx, issue 12: the TUI's CPU against a plain Textual table).

What is trusted: nothing but the bytes' shape. The head must end within MAX_HEAD bytes, the
body is read to its Content-Length (at most `max_bytes`), and a reply without a Content-Length,
with `Connection: close`, with bytes beyond its length, or that failed in any way is not
reused: the connection is dropped and the next poll opens a new one. A kept connection that
the server closed while idle (keepalive_timeout, keepalive_requests) is noticed before any
byte of the reply and the GET is sent once more on a new connection, within the same time
budget. Every outcome is either the body or a SourceError that says why, as for a one-shot
fetch (stackmon.sources.uwsgi_stats.fetch_raw, whose messages and HTTP checks are reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from urllib.parse import urlsplit

from stackmon.addresses import StatsAddress
from stackmon.model import SourceError
from stackmon.sources.uwsgi_stats import describe_os_error, strip_http

MAX_HEAD = 16 * 1024
_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d{1,12})[ \t]*\r?$")
_CLOSE = re.compile(rb"(?im)^connection:[ \t]*close[ \t]*\r?$")
_CHUNKED = re.compile(rb"(?im)^transfer-encoding:")


class _Retry(Exception):
    """A kept connection was found closed before any byte of the reply: ask again."""


class _Reply(asyncio.Protocol):
    """Reads replies on one connection; `expect()` arms it for the next one."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buffer = bytearray()
        self.done: asyncio.Future[tuple[bytes, bool]] | None = None
        self.length: int | None = None  # the body's length, once the head is read
        self.head_end = 0
        self.reusable = True

    def expect(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[tuple[bytes, bool]]:
        self.buffer.clear()
        self.length, self.head_end = None, 0
        self.done = loop.create_future()
        return self.done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.done is None or self.done.done():
            self.reusable = False  # bytes nobody asked for: this connection is not in step
            return
        self.buffer += data
        if len(self.buffer) > MAX_HEAD + self.max_bytes:
            self._fail(ValueError(f"reply exceeded {self.max_bytes} bytes; gave up reading"))
            return
        if not self.head_end:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._fail(ValueError(f"HTTP head longer than {MAX_HEAD} bytes"))
                return
            self.head_end = end + 4
            self._read_head(bytes(self.buffer[:end]))
        if self.length is not None and len(self.buffer) - self.head_end >= self.length:
            if len(self.buffer) - self.head_end > self.length:
                self.reusable = False
            self._finish(bytes(self.buffer[:self.head_end + self.length]))

    def _read_head(self, head: bytes) -> None:
        """The body's length, and whether the connection may carry the next GET."""
        match = _LENGTH.search(head)
        if match is None or _CHUNKED.search(head) or len(_LENGTH.findall(head)) != 1:
            self.reusable = False  # read to EOF, as a one-shot fetch does
            return
        if _CLOSE.search(head) or not head.startswith(b"HTTP/1.1"):
            self.reusable = False
        self.length = int(match.group(1))
        if self.length > self.max_bytes:
            self._fail(ValueError(f"reply exceeded {self.max_bytes} bytes; gave up reading"))

    def eof_received(self) -> bool:
        self.closed = True
        if self.done is not None and not self.done.done():
            if not self.buffer:
                self.done.set_exception(_Retry())
            else:
                self._finish(bytes(self.buffer))  # strip_http says what is missing
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done is not None and not self.done.done():
            if not self.buffer:
                self.done.set_exception(_Retry() if exc is None or isinstance(
                    exc, (ConnectionResetError, BrokenPipeError)) else exc)
            elif exc is not None:
                self.done.set_exception(exc)
            else:
                self._finish(bytes(self.buffer))

    def _finish(self, reply: bytes) -> None:
        assert self.done is not None
        if not self.done.done():
            self.done.set_result((reply, self.reusable and not self.closed))

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        assert self.done is not None
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class KeptGet:
    """GET `url` (http or https) over a connection kept between calls; `source`/`label` name
    it in errors. Not safe for concurrent calls: one poll at a time, as the poller does."""

    def __init__(self, url: str, *, max_bytes: int, source: str, label: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.request = (f"GET {target} HTTP/1.1\r\nHost: {shown}:{self.port}\r\n"
                        f"User-Agent: stackmon\r\n\r\n").encode("ascii", "replace")
        self.addr = StatsAddress("http", url, self.host, self.port, url)
        self.max_bytes = max_bytes
        self.source, self.label = source, label
        self.connects = 0  # connections opened so far (the tests compare it with nginx's)
        self._protocol: _Reply | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def get(self, timeout: float) -> bytes | SourceError:
        """The body of one 200 reply, or why not (at most `timeout` seconds in all)."""
        stage = ["connect"]
        try:
            async with asyncio.timeout(timeout):
                return await self._get(stage)
        except TimeoutError:
            received = len(self._protocol.buffer) if self._protocol is not None else 0
            self.close()
            if stage[0] == "connect":
                return self._error(f"could not connect within {timeout:g} s")
            if not received:
                return self._error(f"no answer within {timeout:g} s")
            return self._error(f"reply not finished within {timeout:g} s ({received} bytes"
                               f" received)")
        except ValueError as exc:
            self.close()
            return self._error(str(exc))
        except OSError as exc:
            self.close()
            return self._error(describe_os_error(exc, self.addr, 0))

    async def _get(self, stage: list[str]) -> bytes | SourceError:
        for attempt in (1, 2):
            reused = self._usable()
            protocol = self._protocol if reused else await self._connect()
            assert protocol is not None and protocol.transport is not None
            stage[0] = "reply"
            done = protocol.expect(asyncio.get_running_loop())
            protocol.transport.write(self.request)
            try:
                reply, reusable = await done
            except _Retry:
                self.close()
                if reused and attempt == 1:
                    stage[0] = "connect"
                    continue
                return self._error("connection closed by peer before any reply")
            if not reusable:
                self.close()
            body = strip_http(reply, self.source, self.label)
            if isinstance(body, SourceError):
                self.close()
            return body
        raise AssertionError("unreachable")

    def _usable(self) -> bool:
        p = self._protocol
        return (p is not None and not p.closed and p.reusable and p.transport is not None
                and not p.transport.is_closing()
                and self._loop is asyncio.get_running_loop())

    async def _connect(self) -> _Reply:
        self.close()
        loop = asyncio.get_running_loop()
        protocol = _Reply(self.max_bytes)
        context = ssl.create_default_context() if self.tls else None
        await loop.create_connection(lambda: protocol, self.host, self.port, ssl=context,
                                     server_hostname=self.host if context else None)
        self.connects += 1
        self._protocol, self._loop = protocol, loop
        return protocol

    def close(self) -> None:
        """Drop the kept connection (a later get() opens a new one)."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is already closed
                protocol.transport.abort()

    def _error(self, message: str) -> SourceError:
        return SourceError(self.source, f"{self.label}: {message}")

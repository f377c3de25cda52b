"""The uWSGI stats source against a real uWSGI, against misbehaving fake stats servers, and
against hand-made documents for every kind of breakage the parser promises to survive.

The real instances are started here (not through the shared demo stack) because this module
needs four different stats servers (TCP, stats-http, unix path, abstract name) and nothing else:
one uWSGI instance serves exactly one stats server. `UwsgiProcess` is also used by the fixture
recorder (tests/fixtures/uwsgi/record.py) and the benchmark (bench/bench_uwsgi_parse.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stackmon.addresses import StatsAddress, parse_stats_address
from stackmon.model import SourceError, Thresholds, UwsgiInstance
from stackmon.redact import REDACTED
from stackmon.sources import uwsgi_stats
from stackmon.sources.uwsgi_stats import (
    PID_MAX,
    clear_caches,
    fetch_stats,
    parse_stats,
    poll_stats,
)

FIXTURES = Path(__file__).parent / "fixtures" / "uwsgi"
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
NOW = 1_800_000_000.0
TH = Thresholds(slow=10.0, critical=60.0)

# --------------------------------------------------------------------------------------------
# A real uWSGI, started and stopped by pid
# --------------------------------------------------------------------------------------------

# The app: /hang/<token> stays in flight until the file release-<token> (or release-all)
# appears in STACKMON_TEST_RELEASE_DIR, or 120 s pass; everything else answers at once.
APP_SOURCE = '''\
import os, re, time

RELEASE_DIR = os.environ.get("STACKMON_TEST_RELEASE_DIR", "/nonexistent")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.startswith("/hang"):
        m = re.match(r"/hang/([A-Za-z0-9_-]+)", path)
        names = ["release-all"] + (["release-" + m.group(1)] if m else [])
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(os.path.exists(os.path.join(RELEASE_DIR, n)) for n in names):
                break
            time.sleep(0.05)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\\n"]
'''


def find_uwsgi() -> str | None:
    """The uWSGI of this venv first (the version the project pins), then PATH."""
    candidate = Path(sys.prefix) / "bin" / "uwsgi"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("uwsgi")


def require_uwsgi() -> str:
    """Skip when absent locally; FAIL in CI, where a missing binary must not turn green."""
    binary = find_uwsgi()
    if binary is None:
        if IN_CI:
            pytest.fail("uWSGI binary not found (CI=true: the real uWSGI is required)",
                        pytrace=False)
        pytest.skip("uWSGI binary not found (pip install uwsgi)")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_blocking(address: str, timeout: float = 2.0) -> bytes:
    """A stats document the dumbest possible way (readiness checks; independent of the code
    under test)."""
    addr = parse_stats_address(address)
    if addr.kind in ("tcp", "http"):
        sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(addr.path if addr.kind == "unix" else f"\0{addr.path}\0")
    with sock:
        if addr.kind == "http":
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    return data.partition(b"\r\n\r\n")[2] if addr.kind == "http" else data


def raw_doc(address: str) -> dict[str, Any]:
    """The document as plain JSON, for the harness's own waiting (never the code under test)."""
    return json.loads(read_blocking(address).decode("utf-8", "replace"), strict=False)


@dataclass
class UwsgiProcess:
    """One real uWSGI master in `workdir`. Only the pids it started are ever signalled."""

    binary: str
    workdir: Path
    name: str
    options: dict[str, Any]
    stats: str
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def configure(cls, binary: str, workdir: Path, name: str, stats: str, *,
                  workers: int = 1, threads: int = 1, http: bool = False,
                  extra: dict[str, Any] | None = None) -> UwsgiProcess:
        workdir.mkdir(parents=True, exist_ok=True)
        app = workdir / "app.py"
        if not app.exists():
            app.write_text(APP_SOURCE)
        options: dict[str, Any] = {
            "master": True,
            "workers": workers,
            "threads": threads,
            "socket": str(workdir / f"{name}.sock"),
            "chmod-socket": 666,
            "stats": stats,
            "memory-report": True,
            "die-on-term": True,
            "wsgi-file": str(app),
            "listen": 100,
        }
        if http:
            options["http-socket"] = f"127.0.0.1:{free_port()}"
        options.update(extra or {})
        return cls(binary, workdir, name, options, stats)

    @property
    def http_address(self) -> tuple[str, int]:
        host, _, port = str(self.options["http-socket"]).rpartition(":")
        return host, int(port)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        lines = ["[uwsgi]"]
        for key, value in self.options.items():
            lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
        ini = self.workdir / f"{self.name}.ini"
        ini.write_text("\n".join(lines) + "\n")
        env = dict(os.environ, STACKMON_TEST_RELEASE_DIR=str(self.workdir))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([self.binary, "--ini", str(ini)], stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the stats server answers and every worker is spawned and accepting."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uWSGI {self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                doc = raw_doc(self.stats)
                workers = doc["workers"]
                if workers and all(w["pid"] and w["accepting"] for w in workers):
                    return
                last = "workers not accepting yet"
            except (OSError, ValueError, KeyError) as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"uWSGI {self.name} not ready after {timeout}s ({last!r}):\n"
                           f"{self.log_tail()}")

    def wait_queue_sampled(self, timeout: float = 5.0) -> None:
        """Until the master has sampled the listen queues once: before that (about a second
        after start) a TCP socket reports max_queue 0, not its backlog."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = raw_doc(self.stats)
            if any(s["max_queue"] for s in doc["sockets"]):
                return
            time.sleep(0.1)
        raise RuntimeError(f"uWSGI {self.name}: listen queues never sampled")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGINT to the master (shutdown), SIGKILL to it and its own children as a fallback."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        children: list[Any] = []
        with contextlib.suppress(Exception):
            import psutil

            children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for child in children:  # normally gone with the master; never anyone else's
            with contextlib.suppress(Exception):
                if child.is_running():
                    child.kill()

    def release_hangs(self, token: str = "all") -> None:
        (self.workdir / f"release-{token}").touch()


def start_all(instances: list[UwsgiProcess]) -> None:
    """Start in parallel, wait for each; stop every one of them if any fails."""
    try:
        for inst in instances:
            inst.start()
        for inst in instances:
            inst.wait_ready()
    except BaseException:
        for inst in instances:
            inst.stop()
        raise


class HungRequests:
    """Requests held in flight on the main instance's http-socket, from raw sockets (so the
    bytes sent can be anything, invalid UTF-8 and control characters included)."""

    def __init__(self, inst: UwsgiProcess) -> None:
        self.inst = inst
        self.sockets: list[socket.socket] = []
        self.tokens: list[str] = []

    def send(self, path: str, headers: dict[str, str] | None = None,
             raw_head: bytes | None = None) -> None:
        token = re.match(r"/hang/([A-Za-z0-9_-]+)", path)
        if token:
            self.tokens.append(token.group(1))
        if raw_head is None:
            lines = [f"GET {path} HTTP/1.0", "Host: stackmon.test"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            raw_head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        sock = socket.create_connection(self.inst.http_address, timeout=5)
        sock.sendall(raw_head)
        self.sockets.append(sock)

    def wait_in_flight(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = raw_doc(self.inst.stats)
            busy = sum(c["in_request"] and bool(c["vars"])
                       for w in doc["workers"] for c in w["cores"])
            if busy >= n:
                return
            time.sleep(0.05)
        raise AssertionError(f"{n} requests never showed up in flight")

    def release(self, timeout: float = 10.0) -> None:
        for token in self.tokens:
            self.inst.release_hangs(token)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = raw_doc(self.inst.stats)
            if not any(c["in_request"] for w in doc["workers"] for c in w["cores"]):
                break
            time.sleep(0.05)
        for token in self.tokens:
            with contextlib.suppress(OSError):
                (self.inst.workdir / f"release-{token}").unlink()


@dataclass
class Live:
    main: UwsgiProcess  # 2 workers x 2 threads, TCP stats, http-socket for requests
    by_kind: dict[str, UwsgiProcess]  # "tcp", "http", "unix", "abstract" -> its instance


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    binary = require_uwsgi()
    workdir = tmp_path_factory.mktemp("uwsgi")
    main = UwsgiProcess.configure(binary, workdir, "main", f"127.0.0.1:{free_port()}",
                                  workers=2, threads=2, http=True)
    http = UwsgiProcess.configure(binary, workdir, "http", f"http://127.0.0.1:{free_port()}",
                                  extra={"stats-http": True})
    http.options["stats"] = http.stats.removeprefix("http://")
    unix = UwsgiProcess.configure(binary, workdir, "unix", str(workdir / "stats.sock"))
    abstract = UwsgiProcess.configure(binary, workdir, "abstract",
                                      f"@stackmon-test-{uuid.uuid4().hex[:12]}")
    instances = [main, http, unix, abstract]
    start_all(instances)
    try:
        yield Live(main, {"tcp": main, "http": http, "unix": unix, "abstract": abstract})
    finally:
        for inst in instances:
            inst.stop()


@pytest.fixture
def hung(live: Live) -> Iterator[HungRequests]:
    held = HungRequests(live.main)
    try:
        yield held
    finally:
        held.release()


def in_flight(inst: UwsgiInstance) -> list[Any]:
    return [r for w in inst.workers for r in w.requests_in_flight]


SECRET_HEADERS = {
    "Cookie": "session=SECRETCOOKIE; theme=dark",
    "Authorization": "Bearer SECRETTOKEN",
    "X-Request-Id": "req-1234",
}


# --------------------------------------------------------------------------------------------
# Real uWSGI
# --------------------------------------------------------------------------------------------


@pytest.mark.stack
@pytest.mark.parametrize("kind", ["tcp", "http", "unix", "abstract"])
async def test_live_every_address_form(live: Live, kind: str) -> None:
    inst = live.by_kind[kind]
    addr = parse_stats_address(inst.stats)
    assert addr.kind == kind
    raw = await fetch_stats(addr, timeout=5)
    assert isinstance(raw, bytes), raw
    assert raw.lstrip().startswith(b"{")  # HTTP head stripped for stats-http
    parsed = parse_stats(raw, inst.stats, time.time(), TH)
    assert isinstance(parsed, UwsgiInstance), parsed
    assert parsed.version.startswith("2.0.")
    assert inst.proc is not None and parsed.master_pid == inst.proc.pid
    assert parsed.warnings == ()
    assert len(parsed.workers) == inst.options["workers"]
    assert all(w.pid > 0 and w.accepting for w in parsed.workers)
    assert all(len(w.cores) == inst.options["threads"] for w in parsed.workers)
    assert parsed.sockets[0].name == inst.options["socket"]


@pytest.mark.stack
async def test_live_idle_instance_shape(live: Live) -> None:
    live.main.wait_queue_sampled()
    parsed = await poll_stats(parse_stats_address(live.main.stats), TH, timeout=5)
    assert isinstance(parsed, UwsgiInstance), parsed
    # unix socket (always 0/0 in stats) + the TCP http-socket with its backlog
    by_name = {s.name: s for s in parsed.sockets}
    unix_sock = by_name[live.main.options["socket"]]
    assert (unix_sock.proto, unix_sock.queue, unix_sock.max_queue) == ("uwsgi", 0, 0)
    tcp = by_name[live.main.options["http-socket"]]
    assert (tcp.proto, tcp.max_queue) == ("http", 100)
    assert parsed.listen_queue_max == 100
    assert parsed.cwd == str(live.main.workdir)
    assert parsed.uid == os.getuid() and parsed.gid == os.getgid()
    for worker in parsed.workers:
        assert worker.requests_in_flight == ()
        assert worker.level == "ok"
        assert worker.respawn_count >= 1
        assert worker.last_spawn > 1_000_000_000


@pytest.mark.stack
async def test_live_hung_requests_ages_levels_and_redaction(
    live: Live, hung: HungRequests
) -> None:
    hung.send("/hang/a1?token=SECRETQ&page=2", SECRET_HEADERS)
    hung.send("/hang/b2/items?q=shoes", SECRET_HEADERS)
    hung.wait_in_flight(2)
    th = Thresholds(slow=0.5, critical=1.5)
    addr = parse_stats_address(live.main.stats)

    first = await poll_stats(addr, th, timeout=5)
    assert isinstance(first, UwsgiInstance), first
    requests = {r.uri: r for r in in_flight(first)}
    assert set(requests) == {"/hang/a1?token=<redacted>&page=2", "/hang/b2/items?q=shoes"}
    for r in requests.values():
        assert (r.method, r.remote_addr, r.host) == ("GET", "127.0.0.1", "stackmon.test")
        assert r.started_at is not None and r.started_at == int(r.started_at)
        assert r.running_s is not None and 0 <= r.running_s < 5
        assert r.level == th.level(r.running_s)
        shown = dict(r.vars)
        assert shown["HTTP_COOKIE"] == REDACTED
        assert shown["HTTP_AUTHORIZATION"] == REDACTED
        assert shown["HTTP_X_REQUEST_ID"] == "req-1234"
    assert sum(w.status == "busy" for w in first.workers) >= 1
    assert first.busy_workers >= 1

    await asyncio.sleep(1.1)
    second = await poll_stats(addr, th, timeout=5)
    assert isinstance(second, UwsgiInstance), second
    later = {r.uri: r for r in in_flight(second)}
    for uri, r in requests.items():
        assert later[uri].started_at == r.started_at  # same request, whole-second start
        assert later[uri].running_s is not None and r.running_s is not None
        assert later[uri].running_s >= r.running_s + 1.0
        assert later[uri].level in ("slow", "critical")  # at least 1.1 s old now

    deadline = time.monotonic() + 5
    while True:  # ages are whole seconds: wait until one is past the critical threshold
        third = await poll_stats(addr, th, timeout=5)
        assert isinstance(third, UwsgiInstance), third
        if all((r.running_s or 0) >= 1.5 for r in in_flight(third)):
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert {r.level for r in in_flight(third)} == {"critical"}
    assert {w.level for w in third.workers if w.requests_in_flight} == {"critical"}

    for parsed in (first, second, third):
        assert "SECRET" not in repr(parsed)


@pytest.mark.stack
async def test_live_raw_control_bytes_and_invalid_utf8(live: Live, hung: HungRequests) -> None:
    """uWSGI copies raw bytes into vars, escaping only quotes and backslashes: the real
    document is invalid UTF-8 and holds raw controls, and must still parse."""
    hung.send("", raw_head=(b"GET /hang/ctl/\x1b[31m\xff\xfe\"q HTTP/1.0\r\nHost: a\"b\r\n"
                            b"X-Ctl: a\x01b\x7fc\r\nCookie: sid=SECRETRAW\r\n\r\n"))
    hung.tokens.append("ctl")
    hung.wait_in_flight(1)
    raw = await fetch_stats(parse_stats_address(live.main.stats), timeout=5)
    assert isinstance(raw, bytes)
    assert b"\x1b" in raw and b"\xff" in raw  # what uWSGI really sends
    parsed = parse_stats(raw, live.main.stats, time.time(), TH)
    assert isinstance(parsed, UwsgiInstance), parsed
    # \xff\xfe twice: in REQUEST_URI and in PATH_INFO
    assert "4 byte(s) of invalid UTF-8 replaced" in parsed.warnings, parsed.warnings
    (req,) = in_flight(parsed)
    assert req.uri == '/hang/ctl/\\x1b[31m\ufffd\ufffd"q'
    assert req.host == 'a"b'
    assert dict(req.vars)["HTTP_X_CTL"] == "a\\x01b\\x7fc"
    assert "\x1b" not in repr(parsed) and "SECRET" not in repr(parsed)


@pytest.mark.stack
async def test_live_http_address_for_a_plain_server_is_an_error_not_a_crash(live: Live) -> None:
    host, port = live.main.stats.rsplit(":", 1)
    result = await fetch_stats(parse_stats_address(f"http://{host}:{port}"), timeout=3)
    if isinstance(result, bytes):  # reset raced the data: then the body check names it
        pytest.fail("a plain stats server answered an HTTP request with a document")
    assert result.source == f"uwsgi http://{host}:{port}"


# --------------------------------------------------------------------------------------------
# Fake, misbehaving stats servers
# --------------------------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler, http: bool = False) -> AsyncIterator[StatsAddress]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield parse_stats_address(f"{'http://' if http else ''}127.0.0.1:{port}")
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


def serving(data: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    return handler


def serving_http(data: bytes) -> Handler:
    """Reads the request first: closing with unread input would reset the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(data)
        await writer.drain()
        writer.close()

    return handler


def recorded(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


async def test_fetch_plain_reads_to_eof_in_many_pieces() -> None:
    doc = recorded("busy.json")

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(0, len(doc), 700):
            writer.write(doc[i:i + 700])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    async with tcp_server(dribble) as addr:
        assert await fetch_stats(addr) == doc


async def test_fetch_sends_nothing_in_plain_mode() -> None:
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"version": "x", "workers": []}')
        await writer.drain()
        writer.write_eof()
        got.append(await reader.read())  # what the client sent before closing
        writer.close()

    async with tcp_server(handler) as addr:
        assert isinstance(await fetch_stats(addr), bytes)
    await asyncio.sleep(0.05)
    assert got == [b""]


async def test_garbage_bytes() -> None:
    async with tcp_server(serving(b"\x00\xff\x1b[2Jgarbage")) as addr:
        raw = await fetch_stats(addr)
    assert isinstance(raw, bytes)
    err = parse_stats(raw, str(addr), NOW, TH)
    assert isinstance(err, SourceError)
    assert err.message.startswith(f"uwsgi stats {addr}: reply is not JSON (starts with")
    assert "\\x1b" in err.message and "\x1b" not in err.message


async def test_truncated_document() -> None:
    doc = recorded("busy.json")
    async with tcp_server(serving(doc[: len(doc) // 2])) as addr:
        raw = await fetch_stats(addr)
    assert isinstance(raw, bytes)
    err = parse_stats(raw, str(addr), NOW, TH)
    assert isinstance(err, SourceError)
    assert "truncated" in err.message and f"{len(doc) // 2} bytes received" in err.message


async def test_endless_output_hits_the_size_cap_within_the_timeout() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b'{"a":' * 13000
        with contextlib.suppress(OSError):
            while True:
                writer.write(chunk)
                await writer.drain()

    async with tcp_server(endless) as addr:
        t0 = time.monotonic()
        err = await fetch_stats(addr, timeout=5, max_bytes=1_000_000)
        elapsed = time.monotonic() - t0
    assert isinstance(err, SourceError)
    assert err.message == f"uwsgi stats {addr}: reply exceeded 1000000 bytes; gave up reading"
    assert elapsed < 5


async def test_slow_endless_output_hits_the_deadline() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                writer.write(b"{" * 100)
                await writer.drain()
                await asyncio.sleep(0.05)

    async with tcp_server(slow) as addr:
        t0 = time.monotonic()
        err = await fetch_stats(addr, timeout=0.5)
        elapsed = time.monotonic() - t0
    assert isinstance(err, SourceError)
    assert "reply not finished within 0.5 s" in err.message
    assert elapsed < 0.5 + 2.0  # cut at its deadline (the margin is for a loaded CI)


async def test_server_that_accepts_and_never_answers() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with tcp_server(mute) as addr:
        t0 = time.monotonic()
        err = await fetch_stats(addr, timeout=1.0)
        elapsed = time.monotonic() - t0
    assert err == SourceError(f"uwsgi {addr}", f"uwsgi stats {addr}: no answer within 1.0 s")
    assert 1.0 <= elapsed < 1.0 + 0.5


async def test_connection_reset() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with tcp_server(reset) as addr:
        err = await fetch_stats(addr)
    assert err == SourceError(f"uwsgi {addr}", f"uwsgi stats {addr}: connection reset by peer")


async def test_refused_port() -> None:
    addr = parse_stats_address(f"127.0.0.1:{free_port()}")
    err = await fetch_stats(addr)
    assert err == SourceError(f"uwsgi {addr}", f"uwsgi stats {addr}: connection refused")


async def test_errors_never_show_a_token_from_the_address() -> None:
    """A stats-http URL may carry a token in its query; errors name the address redacted."""
    addr = parse_stats_address(f"http://127.0.0.1:{free_port()}/stats?token=abc123")
    err = await fetch_stats(addr)
    assert isinstance(err, SourceError)
    assert err.source == f"uwsgi http://127.0.0.1:{addr.port}/stats?token=<redacted>"
    assert "abc123" not in err.source and "abc123" not in err.message
    parsed = parse_stats(b"<html>", str(addr), NOW, TH)
    assert isinstance(parsed, SourceError)
    assert "abc123" not in parsed.source and "abc123" not in parsed.message


async def test_empty_reply() -> None:
    async with tcp_server(serving(b"")) as addr:
        err = await fetch_stats(addr)
    assert isinstance(err, SourceError)
    assert err.message.startswith(f"uwsgi stats {addr}: empty reply")
    empty = SourceError("uwsgi x", "uwsgi stats x: empty reply")
    assert parse_stats(b"  \n", "x", NOW, TH) == empty


async def test_stats_http_500() -> None:
    async def fail(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\n"
                     b"boom")
        await writer.drain()
        writer.close()

    async with tcp_server(fail, http=True) as addr:
        err = await fetch_stats(addr)
    assert err == SourceError(f"uwsgi {addr}",
                              f"uwsgi stats {addr}: HTTP 500 Internal Server Error")


async def test_stats_http_ok_strips_the_head_and_sends_a_request() -> None:
    body = recorded("idle.json")
    seen: list[bytes] = []

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.0 200 OK\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    async with tcp_server(ok, http=True) as addr:
        assert await fetch_stats(addr) == body
        behind_proxy = parse_stats_address(f"{addr}/uwsgi/stats?app=1")
        assert await fetch_stats(behind_proxy) == body
    assert seen[0].startswith(b"GET / HTTP/1.0\r\n")
    assert seen[1].startswith(b"GET /uwsgi/stats?app=1 HTTP/1.0\r\n")


async def test_stats_http_empty_and_not_http() -> None:
    async with tcp_server(serving_http(b"HTTP/1.0 200 OK\r\n\r\n"), http=True) as addr:
        err = await fetch_stats(addr)
        assert isinstance(err, SourceError) and "empty reply" in err.message
    async with tcp_server(serving_http(b"SSH-2.0-OpenSSH\r\n"), http=True) as addr:
        err = await fetch_stats(addr)
        assert isinstance(err, SourceError) and "not an HTTP reply" in err.message


async def test_unix_socket_missing_and_abstract_fallback(tmp_path: Path) -> None:
    missing = parse_stats_address(str(tmp_path / "nope.sock"))
    err = await fetch_stats(missing)
    assert isinstance(err, SourceError) and "no such socket file" in err.message

    # A server that binds "\0name" (no trailing NUL, unlike uWSGI) is still reached.
    name = f"stackmon-fake-{uuid.uuid4().hex[:8]}"
    server = await asyncio.start_unix_server(serving(b'{"workers": []}'), path=f"\0{name}")
    try:
        assert await fetch_stats(parse_stats_address(f"@{name}")) == b'{"workers": []}'
    finally:
        server.close()
    err = await fetch_stats(parse_stats_address(f"@{name}-absent"))
    assert isinstance(err, SourceError) and err.message.endswith("connection refused")


async def test_unix_path_server(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = await asyncio.start_unix_server(serving(recorded("idle.json")), path=str(path))
    try:
        parsed = await poll_stats(parse_stats_address(str(path)), TH)
    finally:
        server.close()
    assert isinstance(parsed, UwsgiInstance) and parsed.address == str(path)


async def test_poll_parses_big_documents_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threaded: list[Callable[..., Any]] = []
    real_to_thread = asyncio.to_thread

    async def spy(fn: Callable[..., Any], /, *args: Any) -> Any:
        threaded.append(fn)
        return await real_to_thread(fn, *args)

    monkeypatch.setattr(uwsgi_stats.asyncio, "to_thread", spy)
    small = recorded("idle.json")
    big = _doc(workers=[_worker(i, cores=[_core(0)]) for i in range(1, 2000)])
    assert len(small) < uwsgi_stats._THREAD_PARSE_BYTES < len(big)
    for doc, workers in ((small, 2), (big, 1999)):
        async with tcp_server(serving(doc)) as addr:
            parsed = await poll_stats(addr, TH, clock=lambda: NOW)
        assert isinstance(parsed, UwsgiInstance) and len(parsed.workers) == workers
    assert threaded == [parse_stats]  # only the big one


# --------------------------------------------------------------------------------------------
# Documents: recorded and hand-made
# --------------------------------------------------------------------------------------------


def _core(cid: int, vars: Any = None, start: Any = None, **extra: Any
          ) -> dict[str, Any]:
    core: dict[str, Any] = {
        "id": cid, "requests": 7, "static_requests": 0, "routed_requests": 0,
        "offloaded_requests": 0, "write_errors": 0, "read_errors": 0,
        "in_request": 1 if vars is not None else 0, "vars": vars or [],
        "req_info": {"request_start": start} if start is not None else {},
    }
    core.update(extra)
    return core


def _worker(wid: int, cores: Any = None, **extra: Any) -> dict[str, Any]:
    worker: dict[str, Any] = {
        "id": wid, "pid": 1000 + wid, "accepting": 1, "requests": 10, "delta_requests": 10,
        "exceptions": 1, "harakiri_count": 0, "signals": 0, "signal_queue": 0,
        "status": "busy" if isinstance(cores, list) and any(c["in_request"] for c in cores)
                  else "idle",
        "rss": 1024, "vsz": 2048, "running_time": 2_500_000, "last_spawn": 1_790_000_000,
        "respawn_count": 1, "tx": 99, "avg_rt": 1500, "apps": [],
        "cores": cores if cores is not None else [_core(0)],
    }
    worker.update(extra)
    return worker


def _doc(**extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "version": "2.0.31", "listen_queue": 0, "listen_queue_errors": 0, "signal_queue": 0,
        "load": 0, "pid": 999, "uid": 33, "gid": 33, "cwd": "/srv/app", "locks": [],
        "sockets": [{"name": "127.0.0.1:9000", "proto": "uwsgi", "queue": 3,
                     "max_queue": 100, "shared": 0, "can_offload": 0}],
        "workers": [_worker(1)],
    }
    doc.update(extra)
    return json.dumps(doc, indent="\t", separators=(",", ":")).encode()


def _parse(raw: bytes, now: float = NOW, th: Thresholds = TH) -> UwsgiInstance:
    parsed = parse_stats(raw, "test:1", now, th)
    assert isinstance(parsed, UwsgiInstance), parsed
    return parsed


def _only_request(parsed: UwsgiInstance) -> Any:
    (req,) = in_flight(parsed)
    return req


HANG_VARS = ["REQUEST_METHOD=POST", "REQUEST_URI=/api/x?id=5&api_key=SECRETK",
             "PATH_INFO=/api/x", "QUERY_STRING=id=5&api_key=SECRETK", "SERVER_NAME=web-1",
             "REMOTE_ADDR=10.1.2.3", "HTTP_HOST=shop.example", "HTTP_COOKIE=sid=SECRETC",
             "HTTP_AUTHORIZATION=Basic U0VDUkVUQkFTSUM=", "HTTP_X_API_TOKEN=SECRETT",
             "HTTP_REFERER=https://u:SECRETPW@ex.com/?session=SECRETS", "SCRIPT_NAME=", ""]


def test_recorded_idle_document() -> None:
    parsed = _parse(recorded("idle.json"))
    assert parsed.version.startswith("2.0.") and parsed.warnings == ()
    assert parsed.workers and all(w.status == "idle" for w in parsed.workers)
    assert in_flight(parsed) == []
    assert parsed.listen_queue_max == 100


def test_recorded_busy_document() -> None:
    raw = recorded("busy.json")
    assert b"FAKE" in raw  # the recording carries (obviously fake) secrets on purpose
    starts = [c["req_info"].get("request_start", 0)
              for w in json.loads(raw)["workers"] for c in w["cores"]]
    parsed = _parse(raw, now=max(starts) + 30.0)
    requests = in_flight(parsed)
    assert len(requests) == 3
    assert all(r.method == "GET" and r.remote_addr == "127.0.0.1" for r in requests)
    assert all(r.running_s is not None and r.running_s > 0 for r in requests)
    assert "FAKE" not in repr(parsed)
    assert parsed.busy_workers >= 1


def test_request_fields_and_redaction() -> None:
    raw = _doc(workers=[_worker(1, cores=[_core(0), _core(1, HANG_VARS, int(NOW) - 75)])])
    parsed = _parse(raw)
    worker = parsed.workers[0]
    assert (worker.status, worker.busy, worker.level) == ("busy", True, "critical")
    assert worker.cores[0].request is None and not worker.cores[0].in_request
    req = _only_request(parsed)
    assert (req.core, req.method, req.remote_addr, req.host) == (1, "POST", "10.1.2.3",
                                                                 "shop.example")
    assert req.uri == "/api/x?id=5&api_key=<redacted>"
    assert (req.started_at, req.running_s, req.level) == (NOW - 75, 75.0, "critical")
    shown = dict(req.vars)
    assert list(shown) == [v.partition("=")[0] for v in HANG_VARS if v]  # all pairs, in order
    assert shown["SCRIPT_NAME"] == ""
    assert shown["HTTP_COOKIE"] == shown["HTTP_AUTHORIZATION"] == REDACTED
    assert shown["HTTP_X_API_TOKEN"] == REDACTED
    assert "SECRET" not in repr(parsed)


def test_worker_units_and_sockets() -> None:
    w = _parse(_doc()).workers[0]
    assert (w.avg_rt_ms, w.running_time_s, w.last_spawn) == (1.5, 2.5, 1_790_000_000.0)
    assert (w.id, w.pid, w.requests, w.exceptions, w.rss, w.vsz, w.tx) == (
        1, 1001, 10, 1, 1024, 2048, 99)
    parsed = _parse(_doc(sockets=[{"name": "a", "max_queue": 100},
                                  {"name": "b\x1b[2J", "max_queue": 4096, "queue": 101}]))
    assert parsed.listen_queue_max == 4096
    assert parsed.sockets[1].name == "b\\x1b[2J" and parsed.sockets[1].queue == 101
    assert _parse(_doc(sockets=[])).listen_queue_max == 0


def test_busy_core_without_vars_still_yields_a_request() -> None:
    parsed = _parse(_doc(workers=[_worker(3, cores=[_core(0, [], int(NOW) - 12)])]))
    req = _only_request(parsed)
    assert (req.method, req.uri, req.host, req.vars) == ("", "", "", ())
    assert (req.running_s, req.level) == (12.0, "slow")
    no_start = _parse(_doc(workers=[_worker(3, cores=[_core(0, [])])]))
    req = _only_request(no_start)
    assert (req.started_at, req.running_s, req.level) == (None, None, "ok")


def test_uri_fallback_host_fallback_and_malformed_vars() -> None:
    vars_ = ["REQUEST_METHOD=GET", "PATH_INFO=/p", "QUERY_STRING=a=1&token=SECRET1",
             "SERVER_NAME=srv", "NOEQUALS", "=novalue", 42, None, "K=v=w", ""]
    parsed = _parse(_doc(workers=[_worker(1, cores=[_core(0, vars_, int(NOW))])]))
    req = _only_request(parsed)
    assert (req.uri, req.host) == ("/p?a=1&token=<redacted>", "srv")
    assert dict(req.vars)["K"] == "v=w"  # split on the first '='
    assert "vars: entry without KEY= skipped (2 times)" in parsed.warnings
    assert 'vars: expected "KEY=VALUE" text, got int; skipped' in parsed.warnings
    # memoised the second time round, and warns the same way
    assert _parse(_doc(workers=[_worker(1, cores=[_core(0, vars_, int(NOW))])])) == parsed
    clear_caches()
    assert _parse(_doc(workers=[_worker(1, cores=[_core(0, vars_, int(NOW))])])) == parsed


def test_levels_follow_thresholds_and_clock_quirks() -> None:
    th = Thresholds(slow=0.5, critical=1.5)
    for age, level in [(0, "ok"), (1, "slow"), (2, "critical")]:
        raw = _doc(workers=[_worker(1, cores=[_core(0, ["REQUEST_URI=/", ""], int(NOW) - age)])])
        assert _only_request(_parse(raw, th=th)).level == level
    future = _doc(workers=[_worker(1, cores=[_core(0, ["A=b", ""], int(NOW) + 5)])])
    assert _only_request(_parse(future)).running_s == 0.0
    monotonic = _parse(_doc(workers=[_worker(1, cores=[_core(0, ["A=b", ""], 12345)])]))
    req = _only_request(monotonic)
    assert (req.started_at, req.running_s, req.level) == (None, None, "ok")
    assert any("clock = monotonic" in w for w in monotonic.warnings)


def test_every_field_optional_and_wrong_types_tolerated() -> None:
    parsed = _parse(b'{"workers": [{}, {"cores": [{}, {"in_request": 1}]}]}')
    assert parsed.version == "" and parsed.master_pid == 0 and parsed.sockets == ()
    assert parsed.uid is None and parsed.gid is None
    assert parsed.workers[0].id == 1 and parsed.workers[0].cores == ()
    assert parsed.workers[1].cores[1].request is not None

    bad = _doc(
        pid="999", uid="x", cwd=5, version=None, listen_queue=[],
        sockets=[{"name": None, "queue": "1", "max_queue": 1.5e0, "shared": True}, "zz"],
        workers=[
            _worker(1, requests="12", rss=None, status=7, accepting=True, avg_rt=1.5e3,
                    cores=[_core(0, "notalist", "soon"), _core(1, requests={})]),
            _worker(2, cores={"not": "a list"}, respawn_count=float("nan")),
            "not a worker",
        ],
    )
    parsed = _parse(bad)
    w1, w2 = parsed.workers
    assert (w1.requests, w1.rss, w1.status, w1.accepting, w1.avg_rt_ms) == (0, 0, "7", True, 1.5)
    assert w1.cores[1].requests == 0 and w2.cores == () and w2.respawn_count == 0
    # a uid that is not a number is unknown, never 0 (root)
    assert (parsed.master_pid, parsed.uid, parsed.cwd, parsed.version) == (0, None, "5", "")
    assert parsed.sockets[0].max_queue == 1 and parsed.sockets[0].shared is True
    warnings = "\n".join(parsed.warnings)
    for fragment in ["workers[].requests: expected a number, got text; used 0",
                     "workers[].rss: expected a number, got null",
                     "workers[].status: expected text, got int",
                     "cores[].vars: expected a list, got text",
                     "cores[].req_info.request_start: expected a number, got text",
                     "workers[].cores: expected a list, got an object",
                     "workers[].respawn_count: expected a number, got float",
                     "workers[]: expected an object, got text; skipped",
                     "sockets[]: expected an object, got text; skipped",
                     "pid: expected a number, got text", "uid: expected a number, got text"]:
        assert fragment in warnings


def test_counted_warnings_do_not_flood() -> None:
    cores = [_core(i, requests="x") for i in range(50)]
    parsed = _parse(_doc(workers=[_worker(1, cores=cores)]))
    assert parsed.warnings == ("cores[].requests: expected a number, got text; used 0 (50 times)",)


async def test_invalid_utf8_and_control_bytes_inside_vars() -> None:
    raw = _doc(workers=[_worker(1, cores=[_core(0, ["REQUEST_URI=/xMARK", "HTTP_X=aNULb", ""],
                                                int(NOW))])])
    raw = raw.replace(b"MARK", b"\x1b]0;pwned\x07\xff\xc3").replace(b"NUL", b"\x00\x9b")
    async with tcp_server(serving(raw)) as addr:
        fetched = await fetch_stats(addr)
    assert fetched == raw
    parsed = _parse(fetched)
    req = _only_request(parsed)
    assert req.uri == "/x\\x1b]0;pwned\\x07\ufffd\ufffd"
    assert dict(req.vars)["HTTP_X"] == "a\\x00\ufffdb"
    assert parsed.warnings == ("3 byte(s) of invalid UTF-8 replaced",)
    # escaped controls (\u001b) are neutralised too
    escaped = _doc(workers=[_worker(1, cores=[_core(0, ["REQUEST_URI=/\x1b[2J", ""], 1)])])
    assert b"\\u001b" in escaped
    assert _only_request(_parse(escaped)).uri == "/\\x1b[2J"


def test_unescaped_quotes_are_repaired_in_pretty_printed_documents() -> None:
    raw = _doc(cwd='/srv/QUOTEapp', sockets=[{"name": "/run/QUOTEa.sock", "max_queue": 0}])
    raw = raw.replace(b"QUOTE", b'"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw, strict=False)
    parsed = _parse(raw)
    assert parsed.cwd == '/srv/"app' and parsed.sockets[0].name == '/run/"a.sock'
    assert "repaired unescaped quotes on 2 line(s)" in parsed.warnings

    minified = b'{"version":"2.0.31","cwd":"/srv/"app","workers":[]}'
    err = parse_stats(minified, "m:1", NOW, TH)
    assert err == SourceError("uwsgi m:1",
                              "uwsgi stats m:1: invalid JSON at line 1 col 34: "
                              "Expecting ',' delimiter")


def test_documents_that_are_not_stats() -> None:
    for raw, fragment in [
        (b"[1, 2]", "not a stats document (the JSON is a list, not an object)"),
        (b'{"hello": "world"}', "JSON, but not a uWSGI stats document"),
        (b"[" * 100_000, "nested too deeply"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"HTTP/1.0 200 OK\r\n\r\n{}", "give the address as http://host:port"),
        (b'{"workers": []', "truncated"),
        (b'{"workers": [], "cwd": "/sr', "truncated"),
    ]:
        err = parse_stats(raw, "a:1", NOW, TH)
        assert isinstance(err, SourceError) and fragment in err.message, (raw[:30], err)
    extra = _parse(b'{"workers": []}\n{"workers": []}')
    assert extra.warnings == ("ignored 16 characters after the end of the document",)
    assert _parse(b'\xef\xbb\xbf{"workers": []}').workers == ()
    assert "no workers in the document" in _parse(b'{"version": "2.0.31"}').warnings


def test_no_input_makes_the_parser_raise() -> None:
    """Mutations of a real document: truncations and byte flips at many places. Whatever comes
    out is a result or a reasoned SourceError, never the parser's last-resort safety net."""
    doc = recorded("busy.json")
    step = max(1, len(doc) // 150)

    def check(raw: bytes) -> None:
        result = parse_stats(raw, "f:1", NOW, TH)
        assert isinstance(result, (UwsgiInstance, SourceError))
        if isinstance(result, SourceError):
            assert "could not read the document" not in result.message, (raw, result)

    for cut in range(0, len(doc), step):
        check(doc[:cut])
    for pos in range(0, len(doc), step):
        for byte in (b'"', b"\\", b"\x00", b"{", b"]", b"9", b"\xff"):
            check(doc[:pos] + byte + doc[pos + 1:])


def test_secrets_never_reach_the_model() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJTRUNSRVQifQ.c2lnbmF0dXJlU0VDUkVU"
    vars_ = [*HANG_VARS[:-1], f"HTTP_X_FORWARDED_AUTH={jwt}", "HTTP_X_SESSION_ID=SECRETSESS",
             f"HTTP_X_DEBUG=Bearer {jwt}", "HTTP_PROXY_AUTHORIZATION=Basic SECRETPROXY", ""]
    parsed = _parse(_doc(workers=[_worker(1, cores=[_core(0, vars_, int(NOW))])]))
    text = repr(parsed)
    assert "SECRET" not in text and "eyJ" not in text


# --------------------------------------------------------------------------------------------
# The speed-ups must not change a single result
# --------------------------------------------------------------------------------------------

ADVERSARIAL_VALUES = [
    "", "GET", "/plain/path", "/p?token=abc&x=1", "a=b", "sid=1", "x_sid=2", "key=",
    "Bearer abcdefgh12345", "BEARER abcdefgh12345", "basic\tQWxhZGRpbjpvcGVu", "token  12345678",
    "bearer short", "Baſic abcdefghijkl", "tokenizer abcdefghijk", "eyJhbGciOi.eyJzdWIiOi.sig",
    "eyj lower", "http://user:pw@host/x", "HTTPS://u:p@h", "ftp://h/x", "mailto:a@b",
    "a\x1bb", "\x00", "caf\u00e9", "\u202etxet", "\u00a0nbsp", "\x9bcsi", "a\x7f",
    "203.0.113.7, 10.0.0.2", "Mozilla/5.0 (X11; Linux x86_64)", "en-GB,en;q=0.9",
    "https://shop.example/account?session=FAKE", "4b1f0c2e9d8a4f7e9c3b2a1d0e9f8a7b",
    "/cas?ticket=ST-1&pass=x", "otp=123456", "pin=", "card_pin=1", "/p?spin=1",
]
ADVERSARIAL_KEYS = ["REQUEST_URI", "HTTP_COOKIE", "HTTP_X_TOKEN", "HTTP_REFERER", "X\x1bKEY",
                    "HTTP_X_AUTH", "HTTP_AUTHORIZATION", "QUERY_STRING", "HTTP_X_SESSION_ID",
                    "HTTP_USER_AGENT", "PASSWORD", "SERVER_NAME", "HTTP_X_AUTH_KEY",
                    "HTTP_X_ACCESS_KEY", "HTTP_X_UPSTREAM_AUTHENTICATION", "HTTP_X_REQUEST_ID"]


def _corpus() -> Iterator[tuple[str, str]]:
    for key in ADVERSARIAL_KEYS:
        for value in ADVERSARIAL_VALUES:
            yield key, value
    for name in ("idle.json", "busy.json"):
        doc = json.loads(recorded(name))
        for w in doc["workers"]:
            for c in w["cores"]:
                for item in c["vars"]:
                    key, sep, value = item.partition("=")
                    if sep:
                        yield key, value
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from make_big_doc import make_big_doc

    doc = json.loads(make_big_doc(workers=32))
    for w in doc["workers"]:
        for c in w["cores"]:
            for item in c["vars"]:
                key, sep, value = item.partition("=")
                if sep:
                    yield key, value


def test_redact_pair_equals_the_plain_redaction() -> None:
    """redact.redact_pair (the parser's fast path) gives exactly visible(redact_var(...))."""
    from stackmon import redact

    for key, value in _corpus():
        expected = (redact.visible(key), redact.visible(redact.redact_var(key, value)))
        assert redact.redact_pair(key, value) == expected, (key, value)


def test_fast_constructors_build_ordinary_frozen_objects() -> None:
    import dataclasses

    from stackmon.model import Core, Request, Worker

    req = uwsgi_stats._new_request(1, "GET", "/", "1.2.3.4", "h", 5.0, 1.0, "ok", (("A", "b"),))
    assert req == Request(1, "GET", "/", "1.2.3.4", "h", 5.0, 1.0, "ok", (("A", "b"),))
    core = uwsgi_stats._new_core(1, 2, True, req)
    assert core == Core(1, 2, True, req) and hash(core) == hash(Core(1, 2, True, req))
    with pytest.raises(dataclasses.FrozenInstanceError):
        core.requests = 3  # type: ignore[misc]
    args = (1, 2, "idle", True, 3, 4, 5, 6, 7.0, 8, 9, 10.0, 11.0, 12, (core,))
    assert uwsgi_stats._new_worker(*args) == Worker(*args)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Later:  # a model class that grew a defaulted field
        a: int
        b: str = "dflt"

    assert uwsgi_stats._fast_constructor(Later)(1) == Later(1)

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    assert uwsgi_stats._fast_constructor(NoSlots) is NoSlots


def test_optional_orjson_and_stdlib_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """With orjson installed the clean documents take its path; results must be identical.
    (Without orjson both runs use the stdlib and this only checks determinism.)"""
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from make_big_doc import make_big_doc

    docs = [recorded("idle.json"), recorded("busy.json"), make_big_doc(workers=16)]
    fast = [parse_stats(d, "a:1", NOW, TH) for d in docs]
    monkeypatch.setattr(uwsgi_stats, "_orjson", None)
    clear_caches()
    assert [parse_stats(d, "a:1", NOW, TH) for d in docs] == fast


def test_parse_leaves_the_garbage_collector_as_it_found_it() -> None:
    import gc

    assert gc.isenabled()
    parse_stats(recorded("busy.json"), "a:1", NOW, TH)
    assert gc.isenabled()
    gc.disable()
    try:
        parse_stats(b"garbage", "a:1", NOW, TH)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_missing_uwsgi_fails_in_ci_and_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "find_uwsgi", lambda: None)
    monkeypatch.setattr(module, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_uwsgi()
    monkeypatch.setattr(module, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception):
        require_uwsgi()


def test_absurd_numbers_are_bad_values_and_the_sample_stays_usable() -> None:
    """pids beyond the kernel's pid_max, negative or >= 2**63 counts, times that overflow float,
    uids that would claim root: each becomes unknown with a warning, never a crash, and the
    stuck request is still shown."""
    huge = 10**400
    raw = _doc(
        pid=PID_MAX + 1, uid=huge, gid=-1, listen_queue=-3, signal_queue=2**63,
        sockets=[{"name": "s", "queue": huge, "max_queue": -1}],
        workers=[_worker(1, pid=huge, requests=-1, rss=2**63, last_spawn=huge,
                         cores=[_core(huge, ["REQUEST_URI=/stuck", ""], huge)]),
                 _worker(2, pid=PID_MAX, avg_rt=1e300)],
    )
    parsed = _parse(raw)
    assert (parsed.master_pid, parsed.uid, parsed.gid) == (0, None, None)
    assert (parsed.listen_queue, parsed.signal_queue) == (0, 0)
    assert (parsed.sockets[0].queue, parsed.sockets[0].max_queue) == (0, 0)
    w1, w2 = parsed.workers
    assert (w1.pid, w1.requests, w1.rss, w1.last_spawn) == (0, 0, 0, 0.0)
    assert (w2.pid, w2.avg_rt_ms) == (PID_MAX, 0.0)
    req = _only_request(parsed)
    assert req.uri == "/stuck" and req.started_at is None and w1.cores[0].id == 0
    warnings = "\n".join(parsed.warnings)
    assert f"pid: {PID_MAX + 1} is out of range; used 0" in warnings
    assert "workers[].pid: a number of about 401 digits is out of range; used 0" in warnings
    assert "cores[].req_info.request_start is out of range" in warnings
    assert "uid: a number of about 401 digits is out of range; ignored" in warnings
    assert str(huge) not in warnings


def test_numbers_too_long_for_int_do_not_make_the_document_unreadable() -> None:
    """json.loads raises ValueError for integers of more than 4,300 digits."""
    raw = _doc(pid=PID_MAX).replace(f'"pid":{PID_MAX}'.encode(), b'"pid":' + b"9" * 5000)
    assert b"9" * 5000 in raw
    parsed = _parse(raw)
    assert parsed.master_pid == 0 and parsed.workers[0].id == 1
    assert "pid: a number of more than 40 digits is out of range; used 0" in parsed.warnings


def test_lone_surrogates_in_any_text_are_replaced() -> None:
    """A JSON "\\ud800" in a socket name, a status, a variable's name or value: every string
    of the result can be encoded (printed, sent by the agent, logged)."""
    raw = _doc(cwd="/srv/\ud800", sockets=[{"name": "127.0.0.1:9\udc80"}],
               workers=[_worker(1, status="bu\udfffsy", cores=[_core(
                   0, ["REQUEST_URI=/a\ud800b", "HTTP_X\udbff=v\udc00", ""], int(NOW))])])
    assert b"\\ud800" in raw  # json.dumps wrote them as JSON escapes, as a server can
    parsed = _parse(raw)
    req = _only_request(parsed)
    assert parsed.sockets[0].name == "127.0.0.1:9\ufffd" and parsed.cwd == "/srv/\ufffd"
    assert parsed.workers[0].status == "bu\ufffdsy"
    assert req.uri == "/a\ufffdb" and ("HTTP_X\ufffd", "v\ufffd") in req.vars
    for text in (req.uri, *(k + v for k, v in req.vars), parsed.workers[0].status):
        text.encode("utf-8")

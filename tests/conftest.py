"""Shared fixtures: a real nginx + uWSGI stack, stuck requests on demand, and polling helpers.

The suite runs against real components (real uWSGI from PyPI, real nginx from Debian), started
by stackmon.demo.launcher in private directories on loopback.

- `stack`: one session-wide stack (nginx, 4 workers x 2 threads, mercy 3). Read-mostly: tests
  that kill workers, reload, stop or otherwise change it must use `fresh_stack` instead. Stuck
  requests left by `hang` are released after each test, so it stays idle between tests.
- `fresh_stack(**kwargs)`: a new stack per call (kwargs as Stack.start), always stopped at the
  end of the test; its work directory is kept when the test failed (logs!) and removed otherwise.
- `hang(stack, path, n=1, headers=...)`: n requests that stay in flight in the app, sent from
  raw sockets (nothing blocks the test); closed and released at the end of the test.
- `wait_until(predicate, timeout)`: poll until truthy, fail with a message otherwise.
- `stack_workdir`: a short /tmp directory for a Stack a test starts by hand (cleaned up).

Missing binaries: with CI=true a missing uwsgi or nginx FAILS the tests that need them (a CI
image that lost nginx must not turn the suite green by skipping); locally they are skipped.
Work directories live in /tmp (mkdtemp): pytest's own tmp_path is under a 0700 directory that
nginx's `nobody` workers cannot traverse, and can be too deep for a unix socket path.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from stackmon.demo.launcher import (
    Stack,
    StackError,
    find_nginx,
    find_uwsgi,
    http_get,
    server_name,
)
from stackmon.demo.traffic import DEMO_HEADERS

T = TypeVar("T")

# The suite never touches the user's real config or state (audit log, hosts file): every XDG
# directory points into one private directory for the whole run, set at import time so that
# subprocesses (the CLI, agents, tmux sessions) inherit it too.
_XDG_ROOT = Path(tempfile.mkdtemp(prefix="stackmon-test-xdg-"))
for _name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
    os.environ[_name] = str(_XDG_ROOT / _name.lower())

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
KEEP_WORKDIRS = bool(os.environ.get("STACKMON_KEEP_WORKDIR"))

requires_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (network namespaces, other users' processes)"
)
requires_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and the `ip` command"
)

_STACK_FIXTURES = {"stack", "fresh_stack", "uwsgi_bin", "nginx_bin"}


# ------------------------------------------------------------------ pytest hooks


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_root: needs euid 0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a real stack get the `stack` marker, so `-m "not stack"` gives a fast
    run without starting any process."""
    for item in items:
        if _STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Remember each phase's report on the item, so fixtures know whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


# ------------------------------------------------------------------ binaries


def missing(what: str) -> NoReturn:
    """Skip locally, fail in CI: the CI image promises real uwsgi and nginx."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: the real stack is required here)", pytrace=False)
    pytest.skip(what)


def require_uwsgi() -> str:
    path = find_uwsgi()
    if path is None:
        missing("uWSGI binary not found (pip install uwsgi, or set STACKMON_UWSGI)")
    return path


def require_nginx() -> str:
    path = find_nginx()
    if path is None:
        missing("nginx binary not found (apt-get install nginx, or set STACKMON_NGINX)")
    return path


@pytest.fixture(scope="session")
def uwsgi_bin() -> str:
    return require_uwsgi()


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    return require_nginx()


# ------------------------------------------------------------------ stacks


def new_workdir() -> Path:
    """A short, traversable directory in /tmp (see the module docstring)."""
    return Path(tempfile.mkdtemp(prefix="stackmon-t-"))


def _remove(workdir: Path) -> None:
    if not KEEP_WORKDIRS:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def stack_workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh short directory in /tmp for a Stack a test starts itself; removed afterwards
    unless the test failed (its logs are the evidence)."""
    workdir = new_workdir()
    yield workdir
    if not _test_failed(request):
        _remove(workdir)


@pytest.fixture(scope="session")
def stack(uwsgi_bin: str, nginx_bin: str) -> Iterator[Stack]:
    workdir = new_workdir()
    try:
        started = Stack.start(
            workdir,
            workers=4,
            threads=2,
            mercy=3,
            name="session",
            uwsgi_bin=uwsgi_bin,
            nginx_bin=nginx_bin,
        )
    except StackError as exc:
        pytest.fail(f"the session stack did not start:\n{exc}", pytrace=False)
    try:
        yield started
    finally:
        started.stop()
        _remove(workdir)


@pytest.fixture
def fresh_stack(request: pytest.FixtureRequest, uwsgi_bin: str) -> Iterator[Callable[..., Stack]]:
    """Factory: `fresh_stack(workers=2, nginx=False, ...)` -> a started Stack (kwargs as
    Stack.start). nginx defaults to on, and needs the binary (skip/fail as for `stack`)."""
    stacks: list[Stack] = []
    workdirs: list[Path] = []

    def factory(**kwargs: Any) -> Stack:
        if kwargs.get("nginx", True):
            kwargs.setdefault("nginx_bin", require_nginx())
        kwargs.setdefault("uwsgi_bin", uwsgi_bin)
        kwargs.setdefault("name", request.node.name[:40])
        workdir = Path(kwargs.pop("workdir", None) or new_workdir())
        workdirs.append(workdir)
        started = Stack.start(workdir, **kwargs)
        stacks.append(started)
        return started

    try:
        yield factory
    finally:
        for started in stacks:
            started.stop()
        if not _test_failed(request):
            for workdir in workdirs:
                _remove(workdir)


# ------------------------------------------------------------------ polling


def burst(stack: Stack, n: int) -> list[int]:
    """n requests to /fast at once through nginx, each on its own connection; the statuses
    (-1: no answer). Against a held worker and a small backlog, this is what fills a queue."""
    base = stack.base_url
    assert base is not None
    results: list[int] = []

    def one() -> None:
        try:
            results.append(http_get(base + "/fast", timeout=3.0,
                                    headers={"Host": server_name(stack.config.name)})[0])
        except (OSError, http.client.HTTPException):
            results.append(-1)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout`.

    Exceptions from the predicate count as "not yet" (a stats server mid-restart), and the last
    one is named in the failure, with `message` (a callable is evaluated only on failure).
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            pytest.fail(f"timed out after {timeout}s waiting for {text}{detail}", pytrace=False)
        time.sleep(interval)


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    return wait_until


def in_flight(doc: Mapping[str, Any]) -> list[dict[str, str]]:
    """The vars of every core with a request in flight, as dicts (raw stats, not redacted).
    A core caught mid-copy (in_request 1, vars []) yields an empty dict."""
    found = []
    for worker in doc.get("workers") or []:
        for core in worker.get("cores") or []:
            if core.get("in_request"):
                pairs = (v.partition("=") for v in core.get("vars") or [] if v)
                found.append({k: val for k, _, val in pairs})
    return found


def busy_workers(doc: Mapping[str, Any]) -> list[int]:
    return [w["id"] for w in doc.get("workers") or [] if w.get("status") == "busy"]


# ------------------------------------------------------------------ stuck requests


def uwsgi_packet(variables: Mapping[str, str]) -> bytes:
    """A uwsgi-protocol request (modifier1 0 = WSGI): what nginx's uwsgi_pass sends."""
    body = b"".join(
        struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
        for k, v in ((key.encode(), value.encode()) for key, value in variables.items())
    )
    if len(body) > 0xFFFF:
        raise ValueError("uwsgi packet too large")
    return struct.pack("<BHB", 0, len(body), 0) + body


def _connect(address: str, timeout: float = 5.0) -> socket.socket:
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock
    host, _, port = address.removeprefix("http://").rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


class Hang:
    """Requests stuck in the demo app, held open from raw sockets.

    close() drops the client connections and releases the app's /hang sleeps (repeatedly,
    since a request still queued in the backlog starts hanging only after the first release),
    then waits until no core of the stack is in a request.
    """

    def __init__(self, stack: Stack, path: str, via: str) -> None:
        self.stack = stack
        self.path = path
        self.via = via
        self.sockets: list[socket.socket] = []

    def matching(self) -> list[dict[str, str]]:
        """In-flight requests of this path, from a fresh stats document."""
        return [v for v in in_flight(self.stack.stats()) if v.get("REQUEST_URI") == self.path]

    def close(self, timeout: float = 10.0) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()
        if not self.stack.running:
            return

        def idle() -> bool:
            self.stack.release_hangs()
            return not in_flight(self.stack.stats())

        wait_until(
            idle,
            timeout,
            interval=0.25,
            message=lambda: f"stack {self.stack.config.name} to go idle after hangs",
        )


def _request_bytes(stack: Stack, via: str, path: str, headers: Mapping[str, str]) -> bytes:
    if via in ("nginx", "http"):
        lines = [f"GET {path} HTTP/1.1", f"Host: {server_name(stack.config.name)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += ["Connection: close", "", ""]
        return "\r\n".join(lines).encode()
    path_info, _, query = path.partition("?")
    variables = {
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": path,
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": server_name(stack.config.name),
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": server_name(stack.config.name),
    }
    for key, value in headers.items():
        variables["HTTP_" + key.upper().replace("-", "_")] = value
    return uwsgi_packet(variables)


def _target(stack: Stack, via: str) -> str:
    if via == "auto":
        via = "nginx" if stack.has_nginx else ("http" if stack.uwsgi_http_address else "tcp")
    address = {
        "nginx": stack.nginx_base_url,
        "http": stack.uwsgi_http_address,
        "tcp": stack.uwsgi_tcp_address,
        "unix": str(stack.uwsgi_socket_path),
    }.get(via)
    if not address:
        raise ValueError(f"stack {stack.config.name} has no {via!r} endpoint")
    return via + " " + address


@pytest.fixture(name="hang")
def hang_fixture() -> Iterator[Callable[..., Hang]]:
    """`hang(stack, path="/hang/x", n=1, headers=DEMO_HEADERS, via="auto", wait=True)`.

    via: "nginx" (HTTP through nginx), "http" (uWSGI's http-socket), "tcp" / "unix" (the
    uwsgi protocol straight to uWSGI's TCP / unix socket); "auto" picks the first available.
    wait: block until min(n, capacity) of them show up as in flight in the stats (set False
    when some are meant to stay queued). Everything is closed and released after the test.
    """
    hangs: list[Hang] = []

    def start(
        stack: Stack,
        path: str = "/hang/x",
        n: int = 1,
        headers: Mapping[str, str] | None = None,
        *,
        via: str = "auto",
        wait: bool = True,
        timeout: float = 10.0,
    ) -> Hang:
        if not (path == "/hang" or path.startswith(("/hang/", "/hang?"))):
            raise ValueError(f"not a hanging route: {path}")
        kind, _, address = _target(stack, via).partition(" ")
        payload = _request_bytes(stack, kind, path, DEMO_HEADERS if headers is None else headers)
        held = Hang(stack, path, kind)
        hangs.append(held)
        for _ in range(n):
            sock = _connect(address)
            sock.sendall(payload)
            held.sockets.append(sock)
        if wait:
            want = min(n, stack.capacity)
            wait_until(
                lambda: len(held.matching()) >= want,
                timeout,
                message=lambda: f"{want} x {path} in flight on {stack.config.name}",
            )
        return held

    try:
        yield start
    finally:
        errors = []
        for held in hangs:
            try:
                held.close()
            except BaseException as exc:  # release the others first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


# ------------------------------------------------------------------ traffic that overflows


def _flood(url: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                resp.read()
        except OSError:
            pass
        time.sleep(0.02)


@pytest.fixture
def flood() -> Iterator[Callable[[str], threading.Event]]:
    """`flood(url)`: 8 threads requesting `url` back to back (enough to overflow a small
    listen queue while no worker serves) until the returned Event is set or the test ends."""
    stops: list[threading.Event] = []
    threads: list[threading.Thread] = []

    def start(url: str) -> threading.Event:
        stop = threading.Event()
        stops.append(stop)
        for _ in range(8):
            t = threading.Thread(target=_flood, args=(url, stop), daemon=True)
            t.start()
            threads.append(t)
        return stop

    yield start
    for stop in stops:
        stop.set()
    for t in threads:
        t.join(5)

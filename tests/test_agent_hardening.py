"""The agent against a hostile client, as an attacker on the same host would try it.

Idle-connection floods under systemd's 1024-descriptor limit, malformed headers carrying the
token, tokens in URLs, pid reuse under a kill that names only a pid, an unwritable audit log,
absurd ids, bodies and stats values. The agent runs as the real `stackmon agent` command where
its process (descriptor limit, stderr) is the point, in a thread of the test process otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stackmon.addresses import parse_stats_address
from stackmon.agent.metrics import render_metrics
from stackmon.agent.security import (
    ConnectionGuard,
    ConnectionLimits,
    RateLimitedLog,
    SecretScrubber,
    read_token_file,
)
from stackmon.agent.server import AgentApp, AgentOptions, SpawnMemory, serve
from stackmon.config import ConfigError, HostConfig, Settings
from stackmon.demo.launcher import free_port
from stackmon.model import FdReport, HostSnapshot, ProcessFds, UwsgiInstance, Worker
from tests.test_agent import write_token

FIXTURES = Path(__file__).parent / "fixtures" / "uwsgi"


# --- helpers ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Agent:
    url: str
    token: str | None
    options: AgentOptions
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    thread: threading.Thread

    def app(self) -> AgentApp:
        return next(o for o in gc.get_objects()
                    if isinstance(o, AgentApp) and o.options is self.options)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the agent's loop (its state is only touched from there)."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers(), trust_env=False, timeout=30,
                         **kw)

    def post(self, path: str, body: Any = None, content: bytes | None = None) -> httpx.Response:
        data = content if content is not None else json.dumps(body or {}).encode()
        return httpx.post(self.url + path, headers=self.headers(), content=data,
                          trust_env=False, timeout=30)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture
def agent_for(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """`agent_for(uwsgi_address, token=True, audit=..., limits=...)`: an agent in a thread."""
    running: list[Agent] = []

    def start(address: str, *, token: bool = True, audit: Path | None = None,
              limits: ConnectionLimits | None = None, nginx: str | None = None) -> Agent:
        value = write_token(tmp_path / f"token-{len(running)}") if token else None
        host = HostConfig(name="hardened", uwsgi=(parse_stats_address(address),), nginx=nginx)
        options = AgentOptions(host=host, settings=Settings(timeout=2.0), token=value,
                               audit_path=str(audit or tmp_path / "audit.log"),
                               limits=limits or ConnectionLimits())
        ready = threading.Event()
        box: dict[str, Any] = {}

        def main() -> None:
            async def go() -> None:
                box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()

                def on_ready(url: str) -> None:
                    box["url"] = url
                    ready.set()

                await serve(options, ("127.0.0.1", free_port()), ready=on_ready,
                            stop=box["stop"])
            try:
                asyncio.run(go())
            except BaseException as exc:
                box["error"] = exc
                ready.set()

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        assert ready.wait(10), "agent did not start"
        if "error" in box:
            raise box["error"]
        agent = Agent(box["url"], value, options, box["loop"], box["stop"], thread)
        running.append(agent)
        return agent

    yield start
    for agent in running:
        agent.loop.call_soon_threadsafe(agent.stop.set)
        agent.thread.join(10)


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes, read the answer until the agent closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                out += chunk
    return out


def serve_document(doc: bytes) -> tuple[str, Callable[[], None]]:
    """A plain-mode stats server (send the document, close) on a free port, in a thread."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(doc)

    threading.Thread(target=loop, daemon=True).start()

    def stop() -> None:
        done.set()
        srv.close()

    return f"127.0.0.1:{srv.getsockname()[1]}", stop


def start_cli_agent(tmp_path: Path, stats: str, *extra: str, nofile: int | None = None,
                    ) -> tuple[subprocess.Popen[bytes], str, int, Path]:
    """The real `stackmon agent` in a subprocess, stderr to a file; (proc, token, port, log)."""
    token_file = tmp_path / "agent.token"
    token = write_token(token_file)
    port = free_port()
    log = tmp_path / "agent.stderr"

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stackmon.cli", "agent", "--uwsgi", stats, "--token-file",
             str(token_file), "--listen", f"127.0.0.1:{port}", *extra],
            stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limit)
    deadline = time.monotonic() + 20
    while "serving host" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)
    return proc, token, port, log


def stop_cli_agent(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- 1. idle-connection floods ------------------------------------------------------------------


def _open_idle(n: int, port: int, sources: int) -> list[socket.socket]:
    """`n` connections that never send a byte, from `sources` loopback addresses."""
    socks = []
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        if sources > 1:
            s.bind((f"127.0.{1 + i % sources // 250}.{2 + i % sources % 250}", 0))
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


@pytest.mark.parametrize("sources", [1, 100], ids=["one-address", "100-addresses"])
def test_idle_flood_under_a_1024_fd_limit_does_not_lock_out_a_client(stack, tmp_path, sources):
    """1,100 connections that send nothing (no token needed), against an agent limited to 1024
    descriptors like systemd's default: the authenticated client keeps getting snapshots within
    seconds throughout, the agent never holds more descriptors than its limit allows, and its
    stderr stays a few lines."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1400:
        pytest.skip(f"the test process needs 1400 descriptors (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1400), hard))
    proc, token, port, log = start_cli_agent(tmp_path, stack.stats_address, nofile=1024)
    socks: list[socket.socket] = []
    try:
        auth = {"Authorization": f"Bearer {token}"}
        socks = _open_idle(1100, port, sources)
        worst, answers, fds = 0.0, 0, 0
        deadline = time.monotonic() + 14  # past the 10 s header timeout: drops and refills
        refill = time.monotonic() + 2  # beyond 1024 in all: the unguarded agent hit EMFILE
        while time.monotonic() < deadline:
            if time.monotonic() > refill:  # the attacker reconnects what was dropped
                socks += _open_idle(300, port, sources)
                refill = deadline
            started = time.monotonic()
            with httpx.Client(trust_env=False, timeout=10) as client:
                resp = client.get(f"http://127.0.0.1:{port}/v1/snapshot", headers=auth)
            worst = max(worst, time.monotonic() - started)
            assert resp.status_code == 200, resp.text
            assert resp.json()["uwsgi"][0]["master_pid"] == stack.master_pid
            answers += 1
            fds = max(fds, len(os.listdir(f"/proc/{proc.pid}/fd")))
            time.sleep(0.3)
        assert worst < 3.0, f"a snapshot took {worst:.1f} s during the flood"
        assert answers >= 10 and fds < 1024, (answers, fds)
    finally:
        for s in socks:
            s.close()
        stop_cli_agent(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and len(text) < 8000, text[-3000:]


def test_accept_failures_are_logged_once_per_interval(tmp_path):
    """When descriptors run out anyway (here: the process uses them up itself), asyncio reports
    every failed accept with a traceback, up to the backlog per loop turn; the agent logs one
    line per 10 s with a count instead."""
    script = tmp_path / "emfile.py"
    port = free_port()
    script.write_text(f"""
import asyncio, logging, os, resource, sys
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
from stackmon.agent.server import AgentOptions, serve
from stackmon.config import HostConfig, Settings
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
opts = AgentOptions(host=HostConfig(name="h", uwsgi=()), settings=Settings(), token=None)
hog = []
async def main():
    stop = asyncio.Event()
    def ready(url):
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        print("hogged", flush=True)
        asyncio.get_running_loop().call_later(4, stop.set)
    await serve(opts, ("127.0.0.1", {port}), ready=ready, stop=stop)
asyncio.run(main())
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "hogged"
    conns = []
    for _ in range(300):  # every one waits in the backlog: the agent has no fd to accept it
        with contextlib.suppress(OSError):
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=1))
    try:
        _, stderr = proc.communicate(timeout=30)
    finally:
        for c in conns:
            c.close()
        if proc.poll() is None:
            proc.kill()
    r = SimpleNamespace(stderr=stderr)
    lines = [line for line in r.stderr.splitlines() if "out of system resource" in line]
    assert 1 <= len(lines) <= 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and len(r.stderr) < 4000, r.stderr[-3000:]


class FakeTransport(asyncio.BaseTransport):
    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = (peer, 40000)
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else None

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


def test_guard_drops_idle_connections_first_and_times_them_out():
    import logging

    limits = ConnectionLimits(header_timeout=10, idle_timeout=30, request_timeout=100,
                              per_client=3, total=4)
    guard = ConnectionGuard(limits, fd_limit=1 << 20, logger=logging.getLogger("test"))
    a = [FakeTransport("10.0.0.1") for _ in range(4)]
    assert all(guard.admit(t) for t in a[:3])
    guard.request_started(a[0])  # a[0] serves a request: never dropped to make room
    assert guard.admit(a[3])  # per-client cap: the oldest idle one of that client goes
    assert [t.aborted for t in a] == [False, True, False, False]
    b, c = FakeTransport("10.0.0.2"), FakeTransport("10.0.0.3")
    assert guard.admit(b) and len(guard) == 4
    assert guard.admit(c)  # total cap: an idle one of the address holding the most goes
    assert a[2].aborted and not a[0].aborted and not b.aborted
    guard.request_started(a[3])  # now 10.0.0.1 holds the most, all busy: b goes instead
    extra = FakeTransport("10.0.0.1")
    assert guard.admit(extra) and b.aborted and not c.aborted and len(guard) == 4
    now = time.monotonic()
    assert guard.sweep(now + 5) == 0
    assert guard.sweep(now + 11) == 2 and c.aborted and extra.aborted  # no request in 10 s
    assert not a[0].aborted and not a[3].aborted  # requests in progress keep their 100 s
    guard.request_done(a[0])
    now = time.monotonic()
    assert guard.sweep(now + 29) == 0
    assert guard.sweep(now + 31) == 1 and a[0].aborted  # idle 30 s after its request
    assert guard.sweep(now + 101) == 1 and a[3].aborted  # a request stuck past 100 s
    # every slot of that client busy: the newcomer is refused and nothing is dropped
    full = ConnectionGuard(ConnectionLimits(per_client=1), fd_limit=1 << 20,
                           logger=logging.getLogger("test"))
    x, y = FakeTransport("10.0.0.1"), FakeTransport("10.0.0.1")
    assert full.admit(x)
    full.request_started(x)
    assert not full.admit(y) and not x.aborted and full.refused == 1
    # the total follows the descriptor limit: 1024 descriptors leave 896 for clients
    assert ConnectionLimits().total_for(1024) == 896 and ConnectionLimits().total_for(50) == 16
def test_silent_and_trickling_connections_are_closed_by_the_header_timeout(stack, agent_for):
    agent = agent_for(stack.stats_address,
                      limits=ConnectionLimits(header_timeout=1.0, idle_timeout=2.0))
    silent = socket.create_connection(("127.0.0.1", agent.port))
    trickle = socket.create_connection(("127.0.0.1", agent.port))
    started = time.monotonic()
    closed_at: dict[str, float] = {}
    try:
        for s in (silent, trickle):
            s.settimeout(0.25)
        while len(closed_at) < 2 and time.monotonic() - started < 8:
            with contextlib.suppress(OSError):
                trickle.sendall(b"G")  # one byte of a header every 0.25 s
            for name, s in (("silent", silent), ("trickle", trickle)):
                if name in closed_at:
                    continue
                try:
                    if s.recv(1024) == b"":
                        closed_at[name] = time.monotonic() - started
                except TimeoutError:
                    pass
                except OSError:
                    closed_at[name] = time.monotonic() - started
    finally:
        silent.close()
        trickle.close()
    assert set(closed_at) == {"silent", "trickle"}, closed_at
    assert all(t < 4.0 for t in closed_at.values()), closed_at
    assert agent.get("/v1/snapshot").status_code == 200


# --- 2. the token never in a log line or a response ----------------------------------------------


def _malformed(token: str) -> list[bytes]:
    t = token.encode()
    head = b"GET /v1/snapshot HTTP/1.1\r\nHost: agent\r\n"
    return [
        head + b"Authorization: Bearer " + t + b"\x01\r\n\r\n",
        head + b"Authorization: Bearer " + t + b"\r\r\n\r\n",
        head + b"Authorization: Bearer " + t + b"\r\n\r\n"[:2] + b"X-Bad\x00: 1\r\n\r\n",
        head + b"Authorization: Bearer " + t + b"\n\r\n",
        head + b"Authorization: Bearer\r\n " + t + b"\r\n\r\n",
        head + b"Authorization: Bearer " + t + b"A" * 9000 + b"\r\n\r\n",
        head + b"X-Token-" + t + b": 1\x7f\r\n\r\n",
        b"GET /" + t + b"\x01 HTTP/1.1\r\nHost: agent\r\n\r\n",
        b"G\x01T /v1/snapshot?token=" + t + b" HTTP/1.1\r\n\r\n",
        b"GET /v1/snapshot?token=" + t + b" HTTP/1.1\r\nHost: agent\r\n\r\n",
        b"GET /v1/snapshot?access_token=" + t + b" HTTP/1.1\r\nHost: agent\r\n\r\n",
        b"GET /metrics?x=1&Token=" + t + b"&y=2 HTTP/1.1\r\nHost: agent\r\n\r\n",
        b"GET /v1/nope/" + t + b" HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer " + t
        + b"\r\n\r\n",
        b"POST /v1/workers/0/1/kill HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer " + t
        + b"\r\nContent-Length: 20\r\n\r\n{\"expect_pid\": \"" + t[:4] + b"\"",
    ]


def test_malformed_requests_never_show_the_token(stack, tmp_path):
    proc, token, port, log = start_cli_agent(tmp_path, stack.stats_address, "--access-log")
    answers = []
    try:
        for raw in _malformed(token):
            answers.append(raw_exchange(port, raw))
        ok = httpx.get(f"http://127.0.0.1:{port}/v1/snapshot", trust_env=False,
                       headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        refused = httpx.get(f"http://127.0.0.1:{port}/v1/snapshot?token={token}",
                            trust_env=False)
        assert refused.status_code == 400 and "Authorization" in refused.json()["message"]
    finally:
        stop_cli_agent(proc)
    text = log.read_text(errors="replace")
    for answer in answers:
        assert answer.startswith(b"HTTP/1."), answer[:200]
        assert token.encode() not in answer, answer
        assert b"Traceback" not in answer
    assert token not in refused.text
    assert token not in text, [line for line in text.splitlines() if token in line]
    assert "Traceback" not in text
    # the access log still says what happened, with the secret parameter redacted
    assert "/v1/snapshot?token=<redacted>" in text and "/v1/snapshot 200" in text
    assert "malformed request from 127.0.0.1" in text


def test_scrubber_folds_and_cleans_any_record():
    import logging

    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                               "bad %s", ("Bearer SECRET-TOKEN-123456",), None)
    try:
        raise ValueError("header b'Authorization: Bearer SECRET-TOKEN-123456\\x01'")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert SecretScrubber(("SECRET-TOKEN-123456",)).filter(record)
    assert "SECRET-TOKEN-123456" not in record.getMessage() and record.exc_info is None
    assert "ValueError" in record.getMessage() and "\n" not in record.getMessage()


def test_rate_limited_log_counts_what_it_skipped(caplog):
    import logging

    note = RateLimitedLog(logging.getLogger("stackmon.agent.test"), interval=60)
    with caplog.at_level(logging.WARNING, "stackmon.agent.test"):
        for _ in range(500):
            note.loop_exception_handler(None,  # type: ignore[arg-type]
                                        {"message": "socket.accept() out of system resource",
                                         "exception": OSError(24, "Too many open files")})
    assert len(caplog.records) == 1
    note._last = {k: v - 61 for k, v in note._last.items()}
    with caplog.at_level(logging.WARNING, "stackmon.agent.test"):
        note.loop_exception_handler(None,  # type: ignore[arg-type]
                                    {"message": "socket.accept() out of system resource",
                                     "exception": OSError(24, "Too many open files")})
    assert "499 more like it" in caplog.records[-1].getMessage()


# --- 3. kills that name only a pid ---------------------------------------------------------------


def _worker(wid: int, pid: int, spawn: float) -> Worker:
    return Worker(id=wid, pid=pid, status="idle", accepting=True, requests=0, exceptions=0,
                  harakiri_count=0, respawn_count=1, avg_rt_ms=0.0, rss=0, vsz=0,
                  last_spawn=spawn, running_time_s=0.0, tx=0)


def _snap(*workers: Worker, index: int = 0) -> HostSnapshot:
    inst = UwsgiInstance(address="127.0.0.1:1", version="2.0", master_pid=1, listen_queue=0,
                         listen_queue_max=100, sockets=(), workers=workers, index=index)
    return HostSnapshot(name="h", taken_at=1.0, reachable=True, uwsgi=(inst,))


def test_spawn_memory_keeps_the_first_spawn_served_for_a_pid():
    memory = SpawnMemory(limit=3)
    memory.observe(_snap(_worker(1, 100, 1000.0), _worker(0, 0, 0.0)))
    memory.observe(_snap(_worker(1, 100, 2000.0)))  # respawned, same pid: the first is kept
    assert memory.spawn_of(0, 1, 100) == 1000.0
    assert memory.spawn_of(0, 0, 0) is None and memory.spawn_of(1, 1, 100) is None
    for pid in (101, 102, 103):
        memory.observe(_snap(_worker(2, pid, 3000.0)))
    assert len(memory) == 3 and memory.spawn_of(0, 1, 100) is None  # least recently seen


def test_a_kill_without_expect_spawn_is_checked_against_the_spawn_served(fresh_stack,
                                                                          agent_for):
    """The pid reuse the issue forced in a pid namespace, reduced to what the agent decides on:
    it served pid P as worker W spawned at S; the stats now show W as pid P spawned later (a
    respawn that got the same pid). A kill naming only P is refused, and the worker lives."""
    stack = fresh_stack(nginx=False, workers=2, threads=1)
    agent = agent_for(stack.stats_address)
    worker = agent.get("/v1/snapshot").json()["uwsgi"][0]["workers"][0]
    wid, pid = worker["id"], worker["pid"]
    app = agent.app()
    # What the agent would have remembered had it served this pid before the respawn:
    agent.call(lambda: app.cache.memory._seen.__setitem__((0, wid, pid),
                                                          worker["last_spawn"] - 600))
    resp = agent.post(f"/v1/workers/0/{wid}/kill", {"signal": "KILL", "expect_pid": pid})
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"] == "stale" and "expect_spawn" in resp.json()["message"]
    time.sleep(0.3)
    assert pid in stack.worker_pids()
    # The spawn the agent really served is accepted: the same call kills the worker.
    agent.call(lambda: app.cache.memory._seen.__setitem__((0, wid, pid),
                                                          float(worker["last_spawn"])))
    resp = agent.post(f"/v1/workers/0/{wid}/kill", {"signal": "KILL", "expect_pid": pid})
    assert resp.status_code == 200 and resp.json()["ok"], resp.text
    assert pid not in stack.worker_pids()


# --- 4. an audit log that cannot be written -------------------------------------------------------


def test_unwritable_audit_log_answers_503_and_nothing_is_done(stack, agent_for, tmp_path):
    audit = tmp_path / "audit-dir"
    audit.mkdir()  # a directory where the log should be: every open for append fails
    agent = agent_for(stack.stats_address, audit=audit)
    worker = agent.get("/v1/snapshot").json()["uwsgi"][0]["workers"][0]
    resp = agent.post(f"/v1/workers/0/{worker['id']}/kill",
                      {"signal": "TERM", "expect_pid": worker["pid"],
                       "expect_spawn": worker["last_spawn"]})
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["error"] == "audit" and str(audit) in body["message"]
    assert "no action taken" in body["message"]
    time.sleep(0.3)
    assert worker["pid"] in stack.worker_pids()
    resp = agent.post("/v1/uwsgi/0/reload", {"mode": "graceful"})
    assert resp.status_code == 503 and "no action taken" in resp.json()["message"]


# --- 5. hostile ids, bodies and values ---------------------------------------------------------


def test_absurd_ids_and_bodies_are_4xx_json(agent_for, monkeypatch):
    nowhere = f"127.0.0.1:{free_port()}"
    agent = agent_for(nowhere)
    for path in ("/v1/workers/0/" + "9" * 5000 + "/kill", "/v1/workers/" + "1" * 10 + "/1/kill",
                 "/v1/uwsgi/" + "7" * 5000 + "/reload"):
        resp = agent.post(path, {"expect_pid": 5})
        assert resp.status_code == 404 and resp.json()["error"] == "not_found", resp.text[:200]
    deep = b"[" * 16000 + b"]" * 16000
    for body, status in ((deep[:16000], 400), (b'{"a":' * 2500 + b"1" + b"}" * 2500, 400),
                         (b"x" * (16 * 1024 + 1), 413)):
        resp = agent.post("/v1/workers/0/1/kill", content=body)
        assert resp.status_code == status, (body[:20], resp.text)
        assert set(resp.json()) == {"error", "message"} and "Traceback" not in resp.text
    # Content-Length over the cap: refused before a byte of the body is read
    answer = raw_exchange(agent.port, b"POST /v1/workers/0/1/kill HTTP/1.1\r\nHost: a\r\n"
                          b"Authorization: Bearer " + (agent.token or "").encode()
                          + b"\r\nContent-Length: 99999999\r\n\r\n{")
    assert b" 413 " in answer.split(b"\r\n")[0]
    # a body trickled slower than the body timeout: 408
    monkeypatch.setattr("stackmon.agent.server.BODY_TIMEOUT", 0.5)
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as s:
        s.sendall(b"POST /v1/workers/0/1/kill HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
                  + (agent.token or "").encode() + b"\r\nContent-Length: 100\r\n\r\n{")
        answer = s.recv(4096)
    assert b" 408 " in answer.split(b"\r\n")[0], answer


def _hostile_document() -> bytes:
    doc = json.loads((FIXTURES / "busy.json").read_text())
    w = doc["workers"][0]
    w["cores"][0]["vars"].insert(0, "HTTP_X_ODD=\ud800 surrogate")
    second = json.loads(json.dumps(w))
    second["pid"] = 8525
    doc["workers"].append(second)  # a duplicate worker id
    doc["sockets"][0]["name"] = "sock\ud800"
    text = json.dumps(doc)  # \ud800 spelled as an escape, as a producer could
    return text.replace('"pid": 8525', '"pid": 1' + "0" * 400).encode()


def test_hostile_stats_values_never_500_with_internals(agent_for):
    """A lone surrogate, a 401-digit pid and a repeated worker id in the stats: both routes
    still answer 200 with a body that encodes (UTF-8 JSON, a parseable exposition)."""
    address, stop = serve_document(_hostile_document())
    try:
        agent = agent_for(address)
        snap = agent.get("/v1/snapshot")
        assert snap.status_code == 200, snap.text[:300]
        assert snap.json()["uwsgi"] or snap.json()["errors"]  # data, or a reason: no crash
        metrics = agent.get("/metrics")
        assert metrics.status_code == 200, metrics.text[:300]
        families = list(text_string_to_metric_families(metrics.text))
        assert families and "Traceback" not in snap.text + metrics.text
    finally:
        stop()


def test_metrics_survive_huge_numbers_surrogates_and_duplicate_ids():
    workers = (_worker(1, 100, 1.0), _worker(1, 101, 1.0), _worker(0, 0, 0.0),
               _worker(0, 0, 0.0), dataclasses.replace(_worker(3, 10 ** 400, 1.0),
                                                       requests=10 ** 400))
    snap = dataclasses.replace(
        _snap(*workers), name="web\ud800",
        fds=FdReport(system=None, processes=(ProcessFds(pid=10 ** 400, role="uwsgi-worker", open=3,
                                          limit=10 ** 400),)))
    text = render_metrics(snap).decode("utf-8")
    samples = [(s.name, tuple(sorted(s.labels.items())))
               for family in text_string_to_metric_families(text) for s in family.samples]
    dupes = [k for k, n in Counter(samples).items() if n > 1]
    assert not dupes, dupes
    workers_seen = {dict(labels)["worker"] for name, labels in samples
                    if name == "stackmon_uwsgi_worker_busy"}
    assert workers_seen == {"1@1", "1@2", "0@3", "0@4", "3"}
    assert "+Inf" in text and "out-of-range" in text


# --- the token file ------------------------------------------------------------------------------


def test_a_fifo_at_the_token_path_is_refused_at_once(tmp_path):
    fifo = tmp_path / "token"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="is a FIFO, not a regular file"):
        read_token_file(fifo)
    assert time.monotonic() - started < 1.0
    r = subprocess.run([sys.executable, "-m", "stackmon.cli", "agent", "--uwsgi",
                        f"127.0.0.1:{free_port()}", "--token-file", str(fifo)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "FIFO" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_unit_sets_a_descriptor_limit():
    unit = (Path(__file__).parent.parent / "deploy" / "stackmon-agent.service").read_text()
    limit = next(line for line in unit.splitlines() if line.startswith("LimitNOFILE="))
    assert int(limit.split("=", 1)[1]) >= 8192


def test_a_client_that_has_sent_its_request_is_not_the_one_evicted() -> None:
    """Eviction picks a silent connection, not one whose request already waits in the kernel
    (a flood from the client's own address is accepted in a batch before anything is read)."""
    import socket as socketlib

    from stackmon.agent.security import _has_pending_bytes

    server = socketlib.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    talker = socketlib.create_connection(server.getsockname())
    silent = socketlib.create_connection(server.getsockname())
    try:
        a, _ = server.accept()
        b, _ = server.accept()
        talker.sendall(b"GET / HTTP/1.1\r\n\r\n")
        time.sleep(0.1)

        class T:
            def __init__(self, s: socketlib.socket) -> None:
                self.s = s

            def get_extra_info(self, name: str) -> Any:
                return self.s if name == "socket" else None

        talking: Any = T(a)  # a stand-in with the one method the check uses
        quiet: Any = T(b)
        assert _has_pending_bytes(talking) is True
        assert _has_pending_bytes(quiet) is False
        assert a.recv(100).startswith(b"GET /")  # peeking consumed nothing
        a.close()
        b.close()
    finally:
        for s in (talker, silent, server):
            s.close()

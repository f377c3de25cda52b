"""Host.history: a host's recorded polls read through its agent (GET /v1/history) or from a
recording on this machine, and `stackmon replay/report --host` built on it.

The agent is the real one (stackmon.agent.server.serve in a thread, `--record DIR`) polling the
real uWSGI + nginx stack; what Host.history returns is compared with the agent's own recording
decoded independently (sqlite3 + zstandard). Broken and hostile agents are real loopback
servers that answer with exactly the bytes a test gives them: every failure must be one line,
in bounded time and memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from stackmon.addresses import parse_stats_address
from stackmon.agent import server as agent_server
from stackmon.agent.server import AgentOptions, serve
from stackmon.config import HostConfig, Settings
from stackmon.demo.launcher import free_port
from stackmon.hosts import open_host
from stackmon.hosts.agent import AgentHost
from stackmon.hosts.local import LocalHost
from stackmon.model import HostSnapshot
from stackmon.record.history import History, HistoryError, HistoryLimits
from tests.recording_support import independent_docs as all_docs
from tests.recording_support import stored_polls

TOKEN = "h" * 40
FIXTURE = Path(__file__).parent / "fixtures" / "snapshots" / "demo-hangs.json"


# --- a real agent recording the real stack ----------------------------------------------------


class RunningAgent:
    """serve() in a thread of its own (its own loop), stopped by the fixture."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.url = ""
        self._ready = threading.Event()
        self._box: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the agent did not start"

    def _main(self) -> None:
        async def go() -> None:
            self._box["loop"], self._box["stop"] = asyncio.get_running_loop(), asyncio.Event()

            def on_ready(url: str) -> None:
                self.url = url
                self._ready.set()

            await serve(self.options, ("127.0.0.1", free_port()), ready=on_ready,
                        stop=self._box["stop"])
        asyncio.run(go())

    @property
    def recording(self) -> Path:
        assert self.options.record_dir
        return Path(self.options.record_dir) / f"{self.options.host.name}.stackmon.db"

    def stop(self) -> None:
        self._box["loop"].call_soon_threadsafe(self._box["stop"].set)
        self._thread.join(15)


def independent_docs(path: Path, until: float) -> list[dict[str, Any]]:
    """The agent's polls taken up to `until`, decoded with sqlite3 + zstandard only."""
    return sorted((d for d in all_docs(path) if d["taken_at"] <= until),
                  key=lambda d: d["taken_at"])


def token_file(path: Path, token: str = TOKEN) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def recording_agent(stack: Any, tmp_path: Path, wait_until: Any) -> Iterator[RunningAgent]:
    """An agent recording the stack every 0.25 s, with at least 14 polls stored."""
    host = HostConfig(name="agent-host", uwsgi=(parse_stats_address(stack.stats_address),),
                      nginx=stack.nginx_status_url)
    agent = RunningAgent(AgentOptions(
        host=host, settings=Settings(interval=0.25), token=TOKEN,
        audit_path=str(tmp_path / "agent-audit.log"), record_dir=str(tmp_path / "rec")))
    try:
        wait_until(lambda: stored_polls(agent.recording) >= 14, 30,
                   message="the agent's first 14 recorded polls")
        yield agent
    finally:
        agent.stop()


def figures(snap: HostSnapshot) -> list[Any]:
    """What the screens show of a poll: per worker (id, pid, status, requests, in flight),
    nginx's counters, the listeners' queues."""
    workers = [(w.id, w.pid, w.status, w.requests, len(w.requests_in_flight))
               for inst in snap.uwsgi for w in inst.workers]
    nginx = (snap.nginx.requests, snap.nginx.active) if snap.nginx else None
    return [snap.taken_at, snap.reachable, workers, nginx,
            [(li.address, li.queue, li.backlog) for li in snap.listeners]]


def doc_figures(doc: dict[str, Any]) -> list[Any]:
    """The same figures read straight from the stored JSON."""
    workers = [(w["id"], w["pid"], w["status"], w["requests"], len(w["requests_in_flight"]))
               for inst in doc["uwsgi"] for w in inst["workers"]]
    n = doc.get("nginx")
    nginx = (n["requests"], n["active"]) if n else None
    return [doc["taken_at"], doc["reachable"], workers, nginx,
            [(li["address"], li["queue"], li["backlog"]) for li in doc.get("listeners", [])]]


def agent_host(url: str, tokens: Path, name: str = "web-2", timeout: float = 2.0) -> AgentHost:
    host = open_host(HostConfig(name=name, agent=url, token_file=tokens), Settings(
        timeout=timeout))
    assert isinstance(host, AgentHost)
    return host


async def read_history(host: Any, since: float | None = None, until: float | None = None,
                       limits: HistoryLimits | None = None) -> History:
    try:
        result: History = await host.history(since, until, limits=limits)
        return result
    finally:
        await host.aclose()


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


# --- through a real agent -------------------------------------------------------------------


async def test_history_through_the_agent_is_what_the_agent_recorded(
        recording_agent: RunningAgent, tmp_path: Path) -> None:
    until = time.time() - 1.0  # every poll taken before this is committed by now
    await asyncio.sleep(0.5)
    docs = independent_docs(recording_agent.recording, until)
    assert len(docs) >= 6
    tokens = token_file(tmp_path / "token")
    history = await read_history(agent_host(recording_agent.url, tokens), None, until)
    assert not history.truncated and history.pages == 1 and not history.problems
    assert [figures(s) for s in history.polls] == [doc_figures(d) for d in docs]
    # under the hosts file's name, as live polls are, with workers the stack really has
    assert {s.name for s in history.polls} == {"web-2"}
    assert history.polls[-1].uwsgi[0].workers and history.source.startswith("agent http")
    # a period: only the polls taken in it
    middle = docs[len(docs) // 2]["taken_at"]
    later = await read_history(agent_host(recording_agent.url, tokens), middle, until)
    assert [s.taken_at for s in later.polls] == [d["taken_at"] for d in docs
                                                 if d["taken_at"] >= middle]


async def test_pages_are_followed_across_next_from(recording_agent: RunningAgent,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    until = time.time() - 1.0
    await asyncio.sleep(0.5)
    docs = independent_docs(recording_agent.recording, until)
    monkeypatch.setattr(agent_server, "HISTORY_POLLS", 3)  # the agent's page: 3 polls
    tokens = token_file(tmp_path / "token")
    history = await read_history(agent_host(recording_agent.url, tokens), None, until)
    assert history.pages >= -(-len(docs) // 3) >= 3
    assert [figures(s) for s in history.polls] == [doc_figures(d) for d in docs]
    # the client's own cap ends the read early, saying where the rest starts
    first = await read_history(agent_host(recording_agent.url, tokens), None, until,
                               HistoryLimits(max_polls=4))
    assert first.truncated and len(first.polls) == 4
    assert first.next_from == docs[4]["taken_at"]
    rest = await read_history(agent_host(recording_agent.url, tokens), first.next_from, until)
    assert [s.taken_at for s in first.polls + rest.polls] == [d["taken_at"] for d in docs]


async def test_a_wrong_token_or_no_recording_is_one_line(recording_agent: RunningAgent,
                                                         stack: Any, tmp_path: Path) -> None:
    wrong = token_file(tmp_path / "wrong-token", "w" * 40)
    with pytest.raises(HistoryError) as caught:
        await read_history(agent_host(recording_agent.url, wrong))
    text = one_line(caught.value)
    assert "refused the token" in text and str(wrong) in text and "w" * 40 not in text
    plain = RunningAgent(AgentOptions(
        host=HostConfig(name="plain", uwsgi=(parse_stats_address(stack.stats_address),)),
        settings=Settings(), token=TOKEN, audit_path=str(tmp_path / "audit.log")))
    try:
        with pytest.raises(HistoryError) as caught:
            await read_history(agent_host(plain.url, token_file(tmp_path / "token")))
        assert "does not record" in one_line(caught.value)
    finally:
        plain.stop()


async def test_a_local_host_reads_its_recording_or_says_it_has_none(
        recording_agent: RunningAgent) -> None:
    until = time.time() - 1.0
    await asyncio.sleep(0.5)
    docs = independent_docs(recording_agent.recording, until)
    config = HostConfig(name="agent-host")
    host = open_host(config, Settings())
    assert isinstance(host, LocalHost)
    with pytest.raises(HistoryError) as caught:
        await read_history(host)
    assert "no recording" in one_line(caught.value)
    host = open_host(config, Settings())
    host.recording = str(recording_agent.recording)
    history = await read_history(host, None, until, HistoryLimits(max_polls=1000))
    assert [figures(s) for s in history.polls] == [doc_figures(d) for d in docs]


def cli(*args: str, timeout: float = 90) -> Any:
    import subprocess

    return subprocess.run([sys.executable, "-m", "stackmon.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def hosts_file(path: Path, url: str, tokens: Path, name: str = "web-2") -> Path:
    path.write_text(f'[[host]]\nname = "{name}"\nagent = "{url}"\ntoken_file = "{tokens}"\n')
    return path


def test_report_and_replay_of_a_host_from_its_agent(recording_agent: RunningAgent,
                                                    tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path / "hosts.toml", recording_agent.url,
                       token_file(tmp_path / "token"))
    out = tmp_path / "report.md"
    done = cli("report", "--hosts", str(hosts), "--host", "web-2", "--from=-5m",
               "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "poll(s) of web-2" in done.stderr and "Traceback" not in done.stderr
    text = out.read_text()
    assert "web-2" in text and "Incident report: web-2" in text
    # --save keeps the fetched history as a recording that replays like any other
    saved = tmp_path / "saved.db"
    from argparse import Namespace

    from stackmon.record.replay_command import recording_of
    from stackmon.record.store import Recording

    args = Namespace(file=None, host="web-2", hosts=str(hosts), save=str(saved),
                     start="-5m", end=None)
    with recording_of(args, "replay") as (path, fetched):
        assert fetched and path == str(saved)
    rec = Recording.open(saved)
    assert rec.hosts() == ["web-2"] and len(rec.polls()) >= 10
    # a wrong token through the command line: one line, exit 2
    wrong = hosts_file(tmp_path / "wrong.toml", recording_agent.url,
                       token_file(tmp_path / "wrong-token", "w" * 40))
    done = cli("replay", "--hosts", str(wrong), "--host", "web-2")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "refused the token" in done.stderr
    done = cli("replay", str(saved), "--host", "web-2")
    assert done.returncode == 2 and "not both" in done.stderr


async def test_a_fetched_history_replays_on_the_live_screens(recording_agent: RunningAgent,
                                                             tmp_path: Path) -> None:
    from stackmon.record.history import save_history
    from stackmon.record.replay import Timeline
    from stackmon.record.store import Recording
    from tests.tui_support import screen_text
    from tui.replay_app import ReplayApp

    host = agent_host(recording_agent.url, token_file(tmp_path / "token"))
    try:
        saved = await save_history(host.history_pages(), tmp_path / "h.db", {})
    finally:
        await host.aclose()
    assert saved.polls >= 10 and saved.next_from is None
    rec = Recording.open(tmp_path / "h.db")
    app = ReplayApp(rec, Timeline.load(rec))
    async with app.run_test(size=(160, 48)) as pilot:
        app.timeline.seek(app.timeline.end)
        app.apply()
        await pilot.pause()
        assert "web-2" in screen_text(app)


# --- agents that misbehave ------------------------------------------------------------------


Answer = Callable[[dict[str, float], socket.socket], None]


class FakeAgent:
    """A loopback server whose every answer `answer(query, conn)` writes (then closes)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests = 0
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests += 1
                target = data.split(b" ", 2)[1].decode()
                query = {k: float(v[0]) for k, v in parse_qs(urlsplit(target).query).items()}
                self.answer(query, conn)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def fake_agent() -> Iterator[Callable[[Answer], FakeAgent]]:
    agents: list[FakeAgent] = []

    def start(answer: Answer) -> FakeAgent:
        agents.append(FakeAgent(answer))
        return agents[-1]

    yield start
    for agent in agents:
        agent.close()


def send(conn: socket.socket, body: bytes, status: str = "200 OK") -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: "
                 f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


def sending(body: bytes) -> Answer:
    return lambda _query, conn: send(conn, body)


def host_doc(taken_at: float) -> dict[str, Any]:
    doc = json.loads(FIXTURE.read_text())
    host = dict(doc["hosts"][0] if "hosts" in doc else doc)
    host["taken_at"] = taken_at
    return host


def page(polls: list[Any], **extra: Any) -> bytes:
    return json.dumps({"schema": 1, "from": None, "to": None, "truncated": False,
                       "next_from": None, "problems": [], "events": [], "actions": [],
                       "polls": polls, **extra}).encode()


async def history_of(agent: FakeAgent, tmp_path: Path, limits: HistoryLimits | None = None,
                     ) -> History:
    return await read_history(agent_host(agent.url, token_file(tmp_path / "token")),
                              limits=limits)


@pytest.mark.parametrize(("body", "words"), [
    (b"<html>502 Bad Gateway</html>", "not valid JSON"),
    (b'["a", "list"]', "not a history object"),
    (b'{"schema": 7, "polls": []}', "schema"),
    (b'{"schema": 1, "polls": "all of them"}', "polls are not a list"),
    (b'{"schema": 1, "polls": [], "truncated": "yes"}', "truncated"),
    (b'{"schema": 1, "polls": [], "truncated": true, "next_from": "soon"}', "next_from"),
    (b'{"schema": 1, "polls": [], "truncated": true, "next_from": NaN}', "next_from"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
])
async def test_garbage_answers_are_one_line(fake_agent: Any, tmp_path: Path, body: bytes,
                                            words: str) -> None:
    with pytest.raises(HistoryError) as caught:
        await history_of(fake_agent(sending(body)), tmp_path)
    text = one_line(caught.value)
    assert words in text and text.startswith("agent http://127.0.0.1:"), text


async def test_unreadable_polls_are_skipped_and_named(fake_agent: Any, tmp_path: Path) -> None:
    good = host_doc(1_800_000_000.0)
    polls = [1, "x", {"taken_at": "noon"}, {"taken_at": 1_700_000_000.0, "uwsgi": 5},
             {"taken_at": 1_700_000_001.0, "uwsgi": [{"workers": "many"}]}, good]
    history = await history_of(fake_agent(sending(page(
        polls, events=[{"at": "x"}, 5, {"at": 1_800_000_000.0, "kind": "\x1b[2Jharakiri",
                                        "text": "t"}]))), tmp_path)
    assert [s.taken_at for s in history.polls] == [1_800_000_000.0]
    assert len(history.problems) == 5 and all("cannot be read" in p for p in history.problems)
    (event,) = history.events
    assert event.host == "web-2" and "\x1b" not in event.kind


async def test_a_100_mb_answer_is_refused_at_the_cap(fake_agent: Any, tmp_path: Path) -> None:
    sent = {"bytes": 0}

    def endless(_query: dict[str, float], conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\n\r\n")  # no length: a body that runs to the close
        chunk = b" " * (1 << 20)
        while sent["bytes"] < 100 << 20:
            conn.sendall(chunk)
            sent["bytes"] += len(chunk)

    started = time.monotonic()
    with pytest.raises(HistoryError) as caught:
        await history_of(fake_agent(endless), tmp_path)
    assert "over the 67108864-byte limit" in one_line(caught.value)
    assert sent["bytes"] < 100 << 20 and time.monotonic() - started < 20
    # declared up front: refused before the body is read
    declared = fake_agent(lambda _q, conn: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n{"))
    with pytest.raises(HistoryError) as caught:
        await history_of(declared, tmp_path)
    assert "104857600 bytes, over the" in one_line(caught.value)


async def test_never_ending_pages_end(fake_agent: Any, tmp_path: Path) -> None:
    """Pages that always say "more": moving forward, the limits end the read (a truncated
    History saying where it stopped); standing still or empty, a one-line error at once."""
    def forward(query: dict[str, float], conn: socket.socket) -> None:
        at = query.get("from", 1_800_000_000.0) + 1
        send(conn, page([host_doc(at)], truncated=True, next_from=at + 1))

    agent = fake_agent(forward)
    started = time.monotonic()
    history = await history_of(agent, tmp_path, HistoryLimits(max_pages=40))
    assert history.truncated and history.pages == agent.requests == 40
    assert len(history.polls) == 40 and history.next_from == history.polls[-1].taken_at + 1
    assert time.monotonic() - started < 20
    capped = await history_of(fake_agent(forward), tmp_path, HistoryLimits(max_polls=7))
    assert capped.truncated and len(capped.polls) == 7

    still = fake_agent(lambda query, conn: send(conn, page(
        [host_doc(1_800_000_000.0)], truncated=True, next_from=1_800_000_000.0)))
    with pytest.raises(HistoryError) as caught:
        await history_of(still, tmp_path)
    assert "does not move forward" in one_line(caught.value) and still.requests == 2
    empty = fake_agent(lambda query, conn: send(conn, page(
        [], truncated=True, next_from=query.get("from", 0) + 1)))
    with pytest.raises(HistoryError) as caught:
        await history_of(empty, tmp_path)
    assert "holds no poll" in one_line(caught.value) and empty.requests == 1


async def test_slow_pages_end_at_the_deadlines(fake_agent: Any, tmp_path: Path) -> None:
    def slow(query: dict[str, float], conn: socket.socket) -> None:
        time.sleep(0.3)
        forward_at = query.get("from", 1_800_000_000.0) + 1
        send(conn, page([host_doc(forward_at)], truncated=True, next_from=forward_at + 1))

    started = time.monotonic()
    with pytest.raises(HistoryError) as caught:
        await history_of(fake_agent(slow), tmp_path, HistoryLimits(deadline_s=1.5))
    assert "no complete history within 1.5 s" in one_line(caught.value)
    assert time.monotonic() - started < 4
    silent = fake_agent(lambda _q, _conn: time.sleep(5))
    started = time.monotonic()
    with pytest.raises(HistoryError) as caught:
        await history_of(silent, tmp_path, HistoryLimits(page_timeout_s=1))
    assert "took more than 1 s" in one_line(caught.value)
    assert time.monotonic() - started < 3
    started = time.monotonic()  # a page that would run past the whole read's deadline
    with pytest.raises(HistoryError) as caught:
        await history_of(silent, tmp_path, HistoryLimits(deadline_s=1))
    assert "no complete history within 1 s" in one_line(caught.value)
    assert time.monotonic() - started < 3


async def test_the_command_line_says_one_line_for_a_broken_agent(fake_agent: Any,
                                                                tmp_path: Path) -> None:
    agent = fake_agent(sending(b"garbage"))
    hosts = hosts_file(tmp_path / "hosts.toml", agent.url, token_file(tmp_path / "token"))
    for command in (["replay"], ["report", "--out", str(tmp_path / "r.html")]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stackmon.cli", *command, "--hosts", str(hosts), "--host",
            "web-2", "--save", str(tmp_path / "kept.db"), stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, env={**os.environ})
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        text = err.decode()
        assert proc.returncode == 2 and text.count("\n") == 1, text
        assert "not valid JSON" in text and "Traceback" not in text
        assert not (tmp_path / "kept.db").exists()  # no half-written file left


def test_each_poll_is_recorded_once(recording_agent: RunningAgent) -> None:
    """The agent records every 0.25 s and reuses a poll for 0.25 s (its cache): a poll handed
    back twice by the cache was stored twice, and the history showed it twice."""
    docs = independent_docs(recording_agent.recording, time.time() - 1.0)
    times = [d["taken_at"] for d in docs]
    assert len(times) >= 10
    assert len(times) == len(set(times)), sorted(times)

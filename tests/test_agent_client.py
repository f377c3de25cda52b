"""The agent client against agents that misbehave or URLs it cannot use: every failure is a
reason (SourceError / ActionError), never an exception, and nothing from the URL's secrets or the
agent's raw text reaches the screen. No real agent needed: a closed port or httpx.MockTransport.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from stackmon.actions.base import ActionError
from stackmon.agent.client import AgentSource, remote_kill
from stackmon.config import HostConfig, Settings
from stackmon.demo.launcher import free_port
from stackmon.model import HostSnapshot, SourceError

ESC = "\x1b[2J"


def fetch(source: AgentSource) -> dict[str, Any] | SourceError:
    async def go() -> dict[str, Any] | SourceError:
        try:
            return await source.fetch()
        finally:
            await source.aclose()
    return asyncio.run(go())


def mock_source(handler: Any, agent: str = "http://agent.test:9300") -> AgentSource:
    source = AgentSource(HostConfig(name="remote", agent=agent), Settings(timeout=2.0))
    source._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return source


def test_credentials_in_an_agent_url_built_in_code_are_not_shown():
    """config.py refuses user:password@; a HostConfig built in code still must not leak it."""
    url = f"http://admin:s3cretpw@127.0.0.1:{free_port()}"
    source = AgentSource(HostConfig(name="r", agent=url), Settings(timeout=1.0))
    err = fetch(source)
    assert isinstance(err, SourceError)
    assert "s3cretpw" not in err.source and "s3cretpw" not in err.message
    assert err.source.startswith("agent http://")


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1]:x", "http://127.0.0.1:9300\x00"])
def test_a_url_httpx_cannot_use_is_a_source_error(url):
    source = AgentSource(HostConfig(name="r", agent=url), Settings(timeout=1.0))
    err = fetch(source)
    assert isinstance(err, SourceError), err
    assert "\x00" not in err.source + err.message


def test_a_url_httpx_cannot_use_fails_an_action_cleanly():
    host = HostConfig(name="r", agent="http://[::1")
    with pytest.raises(ActionError) as info:
        asyncio.run(remote_kill(host, 0, 1, expect_pid=123))
    assert info.value.kind == "bad_request"
    assert "nothing was done" in str(info.value)


def test_error_answers_are_shown_with_control_characters_visible():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": f"fail{ESC}", "message": f"boom{ESC}"})

    err = fetch(mock_source(handler))
    assert isinstance(err, SourceError)
    assert "\x1b" not in err.message and "boom\\x1b[2J" in err.message

    async def kill() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await remote_kill(HostConfig(name="r", agent="http://agent.test:9300"), 0, 1,
                              expect_pid=123, client=client)

    with pytest.raises(ActionError) as info:
        asyncio.run(kill())
    assert "\x1b" not in str(info.value) and "boom\\x1b[2J" in str(info.value)


def test_snapshot_text_from_the_agent_is_neutralised():
    doc = {"name": "theirs", "taken_at": 0.0, "reachable": True,
           "errors": [{"source": "uwsgi x", "message": f"bad {ESC}"}],
           "uwsgi": [{"address": "127.0.0.1:1", "workers": [{
               "id": 1, "pid": 10, "status": "busy",
               "cores": [{"id": 0, "requests": 1, "in_request": True}],
               "requests_in_flight": [{"core": 0, "method": "GET", "uri": f"/x{ESC}",
                                       "vars": [["HTTP_X", f"v{ESC}"]]}]}]}]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps(doc).encode())

    source = mock_source(handler)
    got = fetch(source)
    assert isinstance(got, dict)
    snap = source.to_snapshot(got, 0.0)
    assert isinstance(snap, HostSnapshot)
    assert snap.name == "remote"
    assert snap.errors[0].message == "bad \\x1b[2J"
    req = snap.uwsgi[0].workers[0].cores[0].request
    assert req is not None and req.uri == "/x\\x1b[2J" and req.vars == (("HTTP_X", "v\\x1b[2J"),)


# --- hostile agents on loopback: endless, trickling and deep replies --------------------------

class HostileAgent:
    """A stand-in on 127.0.0.1 that answers every request with `behaviour`:
    "endless" (a body that never ends, as fast as the client reads), "trickle" (one byte every
    0.1 s, forever), "deep" (JSON nested 100,000 deep), "huge" (declares 1 TB and stops)."""

    def __init__(self, behaviour: str) -> None:
        import socket
        import threading

        self.behaviour = behaviour
        self.sent = 0
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        import time

        with conn:
            try:
                self._read_request(conn)
                head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                if self.behaviour == "deep":
                    body = b"[" * 100_000 + b"]" * 100_000
                    conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                    return
                if self.behaviour == "huge":
                    conn.sendall(f"{head}Content-Length: {10**12}\r\n\r\n".encode() + b" " * 10)
                    time.sleep(1)
                    return
                conn.sendall(f"{head}Connection: close\r\n\r\n".encode())
                chunk = b" " * (65536 if self.behaviour == "endless" else 1)
                while not self.stop.is_set():
                    conn.sendall(chunk)
                    self.sent += len(chunk)
                    if self.behaviour == "trickle":
                        time.sleep(0.1)
            except OSError:
                return

    @staticmethod
    def _read_request(conn: Any) -> None:
        """The whole request (a POST body left unread would make close() reset the
        connection before the client has our answer)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def hostile_agent() -> Any:
    agents: list[HostileAgent] = []

    def start(behaviour: str) -> HostileAgent:
        agents.append(HostileAgent(behaviour))
        return agents[-1]

    yield start
    for agent in agents:
        agent.close()


def test_an_endless_snapshot_body_is_cut_at_the_cap(hostile_agent: Any) -> None:
    import time

    agent = hostile_agent("endless")
    source = AgentSource(HostConfig(name="r", agent=agent.url), Settings(timeout=5.0))
    started = time.monotonic()
    err = fetch(source)
    assert isinstance(err, SourceError), err
    assert err.message == ("refused the agent's answer: the answer is over the 67108864-byte "
                           "limit")
    assert time.monotonic() - started < 10
    assert agent.sent < 80 * 1024 * 1024  # read stopped at the cap, not when the agent tired


def test_a_trickling_snapshot_body_ends_at_the_timeout(hostile_agent: Any) -> None:
    import time

    agent = hostile_agent("trickle")
    source = AgentSource(HostConfig(name="r", agent=agent.url), Settings(timeout=0.5))
    started = time.monotonic()
    err = fetch(source)
    assert isinstance(err, SourceError) and err.message == "no answer within 1 s", err
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(("behaviour", "words"), [
    ("deep", "refused the agent's answer: the answer is JSON nested too deeply"),
    ("huge", "refused the agent's answer: the answer is 1000000000000 bytes, over the "
             "67108864-byte limit"),
])
def test_deep_and_huge_snapshot_answers_are_reasons(hostile_agent: Any, behaviour: str,
                                                    words: str) -> None:
    agent = hostile_agent(behaviour)
    err = fetch(AgentSource(HostConfig(name="r", agent=agent.url), Settings(timeout=2.0)))
    assert isinstance(err, SourceError) and err.message == words, err


def test_json_deep_but_decodable_is_refused_before_use() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"name": "x", "uwsgi": ' + b"[" * 500 + b"]" * 500
                              + b"}")

    err = fetch(mock_source(handler))
    assert isinstance(err, SourceError)
    assert err.message == "refused the agent's answer: the answer is JSON nested more than 64 deep"


@pytest.mark.parametrize(("behaviour", "words"), [
    ("endless", "over the 67108864-byte limit"),
    ("trickle", "did not answer within 1.5 s"),
    ("deep", "JSON nested too deeply"),
])
def test_hostile_answers_to_an_action_are_clear_failures(hostile_agent: Any, behaviour: str,
                                                         words: str) -> None:
    agent = hostile_agent(behaviour)
    with pytest.raises(ActionError) as info:
        asyncio.run(remote_kill(HostConfig(name="r", agent=agent.url), 0, 1, expect_pid=123,
                                timeout=0.5, action_timeout=1.0))
    text = str(info.value)
    assert info.value.kind == "failed" and words in text, text
    if behaviour != "deep":
        assert "may or may not have been carried out" in text

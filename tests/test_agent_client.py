"""The agent client against agents that misbehave or URLs it cannot use: every failure is a
reason (SourceError / ActionError), never an exception, and nothing from the URL's secrets or the
agent's raw text reaches the screen. No real agent needed: real loopback servers that answer with
exactly the bytes a test gives them (an asyncio server in the test's loop, or the threaded
HostileAgent below), so the real clients (AgentSource's keep-alive aiohttp session, httpx for the
actions) are what is tested, down to their sockets.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from stackmon.actions.base import ActionError
from stackmon.agent.client import AgentSource, remote_kill
from stackmon.config import HostConfig, Settings
from stackmon.demo.launcher import free_port
from stackmon.model import HostSnapshot, SourceError

ESC = "\x1b[2J"
FIXTURE = Path(__file__).parent / "fixtures" / "snapshots" / "demo-hangs.json"


def fetch(source: AgentSource) -> dict[str, Any] | SourceError:
    async def go() -> dict[str, Any] | SourceError:
        try:
            return await source.fetch()
        finally:
            await source.aclose()
    return asyncio.run(go())


def answer(status: str, body: bytes = b"", *headers: str) -> bytes:
    """A raw HTTP/1.1 answer; Content-Length added unless the headers frame the body."""
    lines = [f"HTTP/1.1 {status}", *headers]
    if not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_answer(status: str, doc: Any) -> bytes:
    return answer(status, json.dumps(doc).encode(), "Content-Type: application/json")


# What a loopback agent does with one request: (request head, nth request on this connection,
# writer) -> keep the connection for another request?
Handler = Callable[[bytes, int, asyncio.StreamWriter], Awaitable[bool]]


def replying(raw: bytes) -> Handler:
    """Every request gets `raw`; the connection is kept."""
    async def handle(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return True
    return handle


class Loopback:
    """An agent stand-in on 127.0.0.1 in the test's own event loop."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        nth = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                nth += 1
                if not await self.handler(head, nth, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def loopback(handler: Handler, ssl_context: ssl.SSLContext | None = None,
                   ) -> AsyncIterator[Loopback]:
    agent = Loopback(handler)
    server = await asyncio.start_server(agent.serve, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    agent.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        yield agent
    finally:
        server.close()


async def fetch_from(agent: Loopback, *, token_file: Path | None = None, times: int = 1,
                     timeout: float = 2.0) -> list[dict[str, Any] | SourceError]:
    """`times` polls of `agent` through one AgentSource (one keep-alive pool)."""
    source = AgentSource(HostConfig(name="remote", agent=agent.url, token_file=token_file),
                         Settings(timeout=timeout))
    try:
        return [await source.fetch() for _ in range(times)]
    finally:
        await source.aclose()


def host_doc() -> dict[str, Any]:
    doc = json.loads(FIXTURE.read_text())
    return dict(doc["hosts"][0] if "hosts" in doc else doc)


def test_credentials_in_an_agent_url_built_in_code_are_not_shown():
    """config.py refuses user:password@; a HostConfig built in code still must not leak it."""
    url = f"http://admin:s3cretpw@127.0.0.1:{free_port()}"
    source = AgentSource(HostConfig(name="r", agent=url), Settings(timeout=1.0))
    err = fetch(source)
    assert isinstance(err, SourceError)
    assert "s3cretpw" not in err.source and "s3cretpw" not in err.message
    assert err.source.startswith("agent http://")


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1]:x", "http://127.0.0.1:9300\x00"])
def test_a_url_the_client_cannot_use_is_a_source_error(url):
    source = AgentSource(HostConfig(name="r", agent=url), Settings(timeout=1.0))
    err = fetch(source)
    assert isinstance(err, SourceError), err
    assert "\x00" not in err.source + err.message


def test_a_url_the_client_cannot_use_fails_an_action_cleanly():
    host = HostConfig(name="r", agent="http://[::1")
    with pytest.raises(ActionError) as info:
        asyncio.run(remote_kill(host, 0, 1, expect_pid=123))
    assert info.value.kind == "bad_request"
    assert "nothing was done" in str(info.value)


async def test_error_answers_are_shown_with_control_characters_visible() -> None:
    raw = json_answer("500 Internal Server Error", {"error": f"fail{ESC}", "message": f"boom{ESC}"})
    async with loopback(replying(raw)) as agent:
        [err] = await fetch_from(agent)
        assert isinstance(err, SourceError)
        assert err.message == "the agent answered 500: boom\\x1b[2J"
        with pytest.raises(ActionError) as info:
            await remote_kill(HostConfig(name="r", agent=agent.url), 0, 1, expect_pid=123)
    assert info.value.kind == "failed"
    assert "\x1b" not in str(info.value) and "boom\\x1b[2J" in str(info.value)


async def test_snapshot_text_from_the_agent_is_neutralised() -> None:
    doc = {"name": "theirs", "taken_at": 0.0, "reachable": True,
           "errors": [{"source": "uwsgi x", "message": f"bad {ESC}"}],
           "uwsgi": [{"address": "127.0.0.1:1", "workers": [{
               "id": 1, "pid": 10, "status": "busy",
               "cores": [{"id": 0, "requests": 1, "in_request": True}],
               "requests_in_flight": [{"core": 0, "method": "GET", "uri": f"/x{ESC}",
                                       "vars": [["HTTP_X", f"v{ESC}"]]}]}]}]}
    async with loopback(replying(json_answer("200 OK", doc))) as agent:
        source = AgentSource(HostConfig(name="remote", agent=agent.url), Settings(timeout=2.0))
        got = await source.fetch()
        await source.aclose()
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


async def test_json_deep_but_decodable_is_refused_before_use() -> None:
    body = b'{"name": "x", "uwsgi": ' + b"[" * 500 + b"]" * 500 + b"}"
    async with loopback(replying(answer("200 OK", body))) as agent:
        [err] = await fetch_from(agent)
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


# --- the poll client's HTTP/1.1: framing, limits, keep-alive, refusals, TLS ------------------

def write_token(path: Path) -> str:
    token = secrets.token_hex(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


async def test_the_token_goes_as_a_bearer_and_a_refusal_names_the_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token = write_token(token_file)
    good = json_answer("200 OK", {"name": "theirs", "taken_at": 1.0})
    denied = json_answer("401 Unauthorized", {"error": "unauthorized", "message": "no"})

    async def check(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        ok = f"\r\nauthorization: bearer {token}\r\n".encode() in head.lower()
        writer.write(good if ok else denied)
        return True

    async with loopback(check) as agent:
        [doc] = await fetch_from(agent, token_file=token_file)
        [no_token] = await fetch_from(agent)
    assert isinstance(doc, dict) and doc["name"] == "theirs"
    assert agent.requests[0].startswith(b"GET /v1/snapshot HTTP/1.1\r\n")
    assert b"\r\naccept-encoding: identity\r\n" in agent.requests[0].lower()
    assert isinstance(no_token, SourceError)
    assert no_token.message == "the agent refused the token (no token_file configured) (401)"
    write_token(token_file)  # another token now: refused, and the message names the file
    async with loopback(check) as agent:
        [wrong] = await fetch_from(agent, token_file=token_file)
    assert isinstance(wrong, SourceError)
    assert wrong.message == f"the agent refused the token in {token_file} (401)"


@pytest.mark.parametrize(("status", "kind"), [("409 Conflict", "stale"),
                                              ("403 Forbidden", "not_worker")])
async def test_refusals_of_actions_and_polls_keep_their_meaning(status: str, kind: str) -> None:
    raw = json_answer(status, {"error": kind, "message": f"refused: {kind}"})
    async with loopback(replying(raw)) as agent:
        with pytest.raises(ActionError) as info:
            await remote_kill(HostConfig(name="r", agent=agent.url), 0, 1, expect_pid=123)
        [err] = await fetch_from(agent)
    assert info.value.kind == kind and info.value.message == f"refused: {kind}"
    assert isinstance(err, SourceError)
    assert err.message == f"the agent answered {status[:3]}: refused: {kind}"


async def test_no_proxy_from_the_environment_no_redirect_no_cookie(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A monitor reaches the host it names: a proxy in the environment is not used, a redirect
    is an answer (not followed), a cookie is not sent back; the URL's own path is kept."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")

    async def redirect(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer("302 Found", b"", "Location: http://127.0.0.1:1/elsewhere",
                            "Set-Cookie: session=abc; Path=/"))
        return True

    async with loopback(redirect) as agent:
        # a name, not an address: aiohttp's default jar keeps no cookie from an IP address
        agent.url = agent.url.replace("127.0.0.1", "localhost") + "/prefix"
        got = await fetch_from(agent, times=2)
    assert got == [SourceError(f"agent {agent.url}", "the agent answered 302: HTTP 302 Found")] * 2
    assert [r.split(b"\r\n")[0] for r in agent.requests] == [
        b"GET /prefix/v1/snapshot HTTP/1.1"] * 2
    assert all(b"\r\ncookie:" not in r.lower() for r in agent.requests)
    assert agent.connections == 1


async def test_polls_share_one_kept_alive_connection() -> None:
    doc = host_doc()
    async with loopback(replying(json_answer("200 OK", doc))) as agent:
        got = await fetch_from(agent, times=3)
    assert got == [doc] * 3
    assert agent.connections == 1 and len(agent.requests) == 3


async def test_overlapping_fetches_get_their_own_connections() -> None:
    """A poll and an action's fresh snapshot may overlap on one source: two connections, never
    two exchanges interleaved on one."""
    async def slow(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.2)
        writer.write(json_answer("200 OK", {"name": "x", "n": nth}))
        return True

    async with loopback(slow) as agent:
        source = AgentSource(HostConfig(name="r", agent=agent.url), Settings(timeout=2.0))
        try:
            both = await asyncio.gather(source.fetch(), source.fetch())
            third = await source.fetch()
        finally:
            await source.aclose()
    assert both == [{"name": "x", "n": 1}] * 2 and third == {"name": "x", "n": 2}
    assert agent.connections == 2


async def test_a_connection_closed_while_idle_is_replaced_without_an_error() -> None:
    """The agent may close a kept-alive connection just as a poll is sent on it (it closed it
    while idle): the GET is sent again on a new connection, and the poll is not a failure."""
    doc = {"name": "x", "taken_at": 1.0}

    async def once_per_connection(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        if nth > 1:
            return False  # closed without a word, as an idle timeout does
        writer.write(json_answer("200 OK", doc))
        return True

    async with loopback(once_per_connection) as agent:
        got = await fetch_from(agent, times=3)
    assert got == [doc] * 3
    assert agent.connections == 3 and len(agent.requests) == 5


async def test_an_agent_that_closes_a_new_connection_without_answering() -> None:
    """aiohttp sends an idempotent GET again once when a connection is closed instead of
    answered (it cannot tell a fresh one from a kept-alive one closed while idle): two
    connections, then the reason, never a loop."""
    async def hang_up(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        return False

    async with loopback(hang_up) as agent:
        [err] = await fetch_from(agent)
    assert isinstance(err, SourceError)
    assert err.message == ("cannot connect: the agent closed the connection without "
                           "answering")
    assert agent.connections == 2 and len(agent.requests) == 2


async def test_an_agent_that_closes_in_the_middle_of_its_answer() -> None:
    async def cut(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"name\"")
        await writer.drain()
        return False

    async with loopback(cut) as agent:
        [err] = await fetch_from(agent)
    assert isinstance(err, SourceError)
    assert err.message == ("cannot connect: the agent closed the connection in the middle of "
                           "its answer")


def test_a_closed_port_is_connection_refused() -> None:
    source = AgentSource(HostConfig(name="r", agent=f"http://127.0.0.1:{free_port()}"),
                         Settings(timeout=1.0))
    err = fetch(source)
    assert isinstance(err, SourceError) and err.message == "cannot connect: Connection refused"


async def test_a_chunked_answer_is_read_whole() -> None:
    doc = host_doc()
    body = json.dumps(doc).encode()
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                      for i in range(0, len(body), 1000))
    raw = answer("200 OK", chunks + b"0\r\nX-Trailer: 1\r\n\r\n", "Transfer-Encoding: chunked")
    async with loopback(replying(raw)) as agent:
        got = await fetch_from(agent, times=2)
    assert got == [doc] * 2 and agent.connections == 1


@pytest.mark.parametrize(("raw", "words"), [
    (answer("200 OK", b"zz\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked"),
     "the answer is not HTTP/1.x (Invalid character in chunk size)"),
    (answer("200 OK", b"2\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: gzip, chunked"),
     "the answer has a Transfer-Encoding other than chunked"),
    (answer("200 OK", b"{}", "Content-Length: 2", "Content-Length: 3"),
     "the answer is not HTTP/1.x (Duplicate Content-Length)"),
    (answer("200 OK", b"{}", "Content-Length: 1" + "0" * 30),
     "the answer is not HTTP/1.x (Content-Length overflow)"),
    (answer("200 OK", b"\x1f\x8b", "Content-Encoding: gzip"),
     "the answer is compressed (gzip), which was not asked for"),
    (answer("200 OK", b"\x1f\x8b", f"Content-Encoding: x{ESC}"),
     "the answer is compressed (x\\x1b[2j), which was not asked for"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "the answer is not HTTP/1.x (Bad status line)"),
    (answer("200 " + "O" * 9000, b"{}"), "the answer has a line over 8190 bytes"),
    (answer("200 OK", b"{}", "X: " + "a" * 9000), "the answer has a line over 8190 bytes"),
    (answer("200 OK", b"<html>"), "the answer is not valid JSON"),
])
async def test_answers_the_client_cannot_trust_are_reasons(raw: bytes, words: str) -> None:
    async with loopback(replying(raw)) as agent:
        [err] = await fetch_from(agent)
    assert isinstance(err, SourceError)
    assert err.message == f"refused the agent's answer: {words}"


async def test_a_chunked_answer_is_cut_at_the_cap() -> None:
    """Chunks arriving past the cap are refused as they come: reading stops there, not when
    the agent tires."""
    sent = 0

    async def endless_chunks(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"100000\r\n" + b" " * 0x100000 + b"\r\n"
        with pytest.raises(ConnectionError):
            while True:  # until the client hangs up
                writer.write(chunk)
                sent += 0x100000
                await writer.drain()
        return False

    async with loopback(endless_chunks) as agent:
        [err] = await fetch_from(agent, timeout=10.0)
    assert isinstance(err, SourceError)
    assert err.message == "refused the agent's answer: the answer is over the 67108864-byte limit"
    assert sent < 80 * 1024 * 1024


@pytest.mark.parametrize("parts", [
    # an informational answer and nothing after it: aiohttp waits for the final one
    [b"HTTP/1.1 100 Continue\r\n\r\n"],
    # a folded line (taken as part of the reason), then a body that would run to the close
    [b"HTTP/1.1 200 OK\r\n bad: fold\r\n\r\n{}"],
    # a chunk size broken once the body has begun: aiohttp's C parser drops the connection
    # without telling the body's reader, which then waits for the deadline
    [answer("200 OK", b"2\r\n{}\r\n", "Transfer-Encoding: chunked"), b"zz\r\n"],
])
async def test_answers_that_never_end_end_at_the_deadline(parts: list[bytes]) -> None:
    async def in_parts(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        return True

    async with loopback(in_parts) as agent:
        loop = asyncio.get_running_loop()
        started = loop.time()
        [err] = await fetch_from(agent, timeout=0.25)
    assert isinstance(err, SourceError) and err.message == "no answer within 0.5 s", err
    assert loop.time() - started < 2


async def test_endless_headers_are_cut_at_their_cap() -> None:
    sent = 0

    async def endless_headers(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\n")
        with pytest.raises(ConnectionError):
            while True:  # until the client hangs up
                writer.write(b"X-Filler: " + b"a" * 1000 + b"\r\n")
                sent += 1012
                await writer.drain()
        return False

    async with loopback(endless_headers) as agent:
        [err] = await fetch_from(agent, timeout=5.0)
    assert isinstance(err, SourceError)
    assert err.message == "refused the agent's answer: the answer has over 64 header lines"
    assert sent < 4 * 1024 * 1024


async def test_headers_trickling_end_at_the_deadline() -> None:
    async def trickle(head: bytes, nth: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(100):
            writer.write(b"X: 1\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        return False

    async with loopback(trickle) as agent:
        loop = asyncio.get_running_loop()
        started = loop.time()
        [err] = await fetch_from(agent, timeout=0.25)
    assert isinstance(err, SourceError) and err.message == "no answer within 0.5 s"
    assert loop.time() - started < 2


# --- TLS: the same verification as every agent client -----------------------------------------

@pytest.fixture
def private_ca(tmp_path: Path) -> Any:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))

    def server_context(*names: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(*names).configure_cert(ctx)
        return ctx
    return cafile, server_context


async def test_tls_with_a_private_ca(private_ca: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cafile, server_context = private_ca
    doc = {"name": "theirs", "taken_at": 1.0}
    async with loopback(replying(json_answer("200 OK", doc)),
                        server_context("127.0.0.1", "localhost")) as agent:
        assert agent.url.startswith("https://127.0.0.1:")
        monkeypatch.delenv("STACKMON_AGENT_CA", raising=False)
        [untrusted] = await fetch_from(agent)
        monkeypatch.setenv("STACKMON_AGENT_CA", str(cafile))
        trusted = await fetch_from(agent, times=2)
    assert isinstance(untrusted, SourceError)
    assert untrusted.message.startswith("cannot connect: ")
    assert "certificate verify failed" in untrusted.message
    assert trusted == [doc] * 2
    assert agent.connections == 1  # the refused handshake never was one; then one kept alive


async def test_tls_checks_the_name_in_the_url(private_ca: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A certificate of the right CA for another name is refused: the URL names 127.0.0.1,
    the certificate only localhost."""
    cafile, server_context = private_ca
    monkeypatch.setenv("STACKMON_AGENT_CA", str(cafile))
    async with loopback(replying(json_answer("200 OK", {"name": "x"})),
                        server_context("localhost")) as agent:
        [err] = await fetch_from(agent)
    assert isinstance(err, SourceError)
    assert "certificate verify failed" in err.message and "mismatch" in err.message


async def test_an_unusable_agent_ca_file_is_a_reason(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACKMON_AGENT_CA", str(tmp_path / "absent.pem"))
    source = AgentSource(HostConfig(name="r", agent=f"https://127.0.0.1:{free_port()}"),
                         Settings(timeout=1.0))
    err = await source.fetch()
    await source.aclose()
    assert isinstance(err, SourceError)
    assert err.message.startswith(f"STACKMON_AGENT_CA={tmp_path / 'absent.pem'}: cannot load CA")

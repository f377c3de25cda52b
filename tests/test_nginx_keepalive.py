"""stub_status over a kept connection: reused as nginx itself counts it (its `accepts`
counter), reconnected when nginx closes it (keepalive_requests, keepalive_timeout), and every
strange server answer gives a reason, never a reused connection out of step."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from stackmon.model import NginxStatus, SourceError
from stackmon.sources.nginx_status import StubStatusClient, fetch_stub_status

PAGE = (b"Active connections: 1 \nserver accepts handled requests\n 7 7 9 \n"
        b"Reading: 0 Writing: 1 Waiting: 0 \n")


def _samples(client: StubStatusClient, n: int, pause: float = 0.05) -> list[NginxStatus]:
    async def run() -> list[NginxStatus | SourceError]:
        out = []
        for _ in range(n):
            out.append(await client.sample(2.0))
            await asyncio.sleep(pause)
        return out
    got = asyncio.run(run())
    assert all(isinstance(s, NginxStatus) for s in got), got
    return [s for s in got if isinstance(s, NginxStatus)]


def test_one_connection_for_every_sample_as_nginx_counts_it(fresh_stack):
    stack = fresh_stack(workers=1)
    client = StubStatusClient(stack.nginx_status_url)
    try:
        kept = _samples(client, 8)
    finally:
        client.close()
    # nginx's own count of accepted connections: the first sample's connection, no other
    assert kept[-1].accepts - kept[0].accepts == 0
    assert client.connects == 1
    assert kept[-1].requests - kept[0].requests == 7  # every sample was a request
    # against the one-shot fetch, which nginx sees as a new connection each time
    before = asyncio.run(fetch_stub_status(stack.nginx_status_url))
    after = asyncio.run(fetch_stub_status(stack.nginx_status_url))
    assert isinstance(before, NginxStatus) and isinstance(after, NginxStatus)
    assert after.accepts - before.accepts == 1


def test_nginx_closing_after_n_requests_costs_a_new_connection_not_an_error(fresh_stack):
    stack = fresh_stack(workers=1, extra_nginx=("keepalive_requests 2;",))
    client = StubStatusClient(stack.nginx_status_url)
    try:
        kept = _samples(client, 6)
    finally:
        client.close()
    assert client.connects == 3
    assert kept[-1].accepts - kept[0].accepts == 2


def test_a_connection_nginx_closed_while_idle_is_replaced(fresh_stack):
    stack = fresh_stack(workers=1, extra_nginx=("keepalive_timeout 1s;",))
    client = StubStatusClient(stack.nginx_status_url)
    try:
        kept = _samples(client, 2, pause=1.8)  # longer than nginx keeps an idle connection
        again = _samples(client, 1)
    finally:
        client.close()
    assert client.connects == 3
    assert again[0].accepts - kept[0].accepts == 2


def test_a_client_used_from_a_second_event_loop_opens_its_own_connection(fresh_stack):
    stack = fresh_stack(workers=1)
    client = StubStatusClient(stack.nginx_status_url)
    try:
        _samples(client, 2)
        _samples(client, 2)
    finally:
        client.close()
    assert client.connects == 2


# --- servers that do not behave ----------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bool:
    try:
        await reader.readuntil(b"\r\n\r\n")
        return True
    except (asyncio.IncompleteReadError, ConnectionError):
        return False


def _against(handler: Handler, samples: int = 1, timeout: float = 1.0
             ) -> tuple[list[NginxStatus | SourceError], int, float]:
    """Samples from a client pointed at a loopback server running `handler` per connection;
    returns them, the connections opened and the seconds taken."""
    async def run() -> tuple[list[NginxStatus | SourceError], int, float]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = StubStatusClient(f"http://127.0.0.1:{port}/nginx_status?token=abc123")
        started = time.monotonic()
        try:
            out = [await client.sample(timeout) for _ in range(samples)]
            return out, client.connects, time.monotonic() - started
        finally:
            client.close()
            server.close()
    return asyncio.run(run())


def _error(result: NginxStatus | SourceError) -> str:
    assert isinstance(result, SourceError), result
    assert "abc123" not in result.source + result.message
    return result.message


def _replying(*chunks: bytes, keep: bool = False, pause: float = 0.0) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _read_request(reader):
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(pause)
            if not keep:
                break
        writer.close()
    return handler


def _ok(extra: bytes = b"", headers: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(PAGE) + headers + b"\r\n"
            + PAGE + extra)


def test_a_well_behaved_keepalive_server_is_reused():
    got, connects, _ = _against(_replying(_ok(), keep=True), samples=3)
    assert all(isinstance(g, NginxStatus) for g in got)
    assert connects == 1


@pytest.mark.parametrize("reply, server_closes", [
    (_ok(headers=b"Connection: close\r\n"), True),  # the server says it closes
    (_ok(extra=b"HTTP/1.1 200 OK\r\n"), False),  # bytes beyond the body: out of step
    (b"HTTP/1.0 200 OK\r\n\r\n" + PAGE, True),  # no length: read to the end
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Length: 3\r\n\r\n" % len(PAGE)
     + PAGE, True),  # two lengths: neither is trusted to end the reply
])
def test_a_reply_that_cannot_be_followed_by_another_is_not_reused(reply: bytes,
                                                                   server_closes: bool):
    got, connects, took = _against(_replying(reply, keep=not server_closes), samples=3)
    assert [g.accepts if isinstance(g, NginxStatus) else g for g in got] == [7, 7, 7]
    assert connects == 3
    assert took < 1.0  # no sample waited for a timeout


@pytest.mark.parametrize("reply, expected", [
    (b"HELLO\r\n\r\n", "not an HTTP reply"),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "HTTP 404"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n", "reply exceeded 65536 bytes"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 20000, "HTTP head longer than 16384"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nActive", "truncated"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n<html></html>", "not a stub_status page"),
])
def test_strange_replies_give_a_reason(reply: bytes, expected: str):
    got, _connects, _ = _against(_replying(reply))
    assert expected in _error(got[0])


def test_a_silent_server_costs_the_timeout_once():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()
    got, _connects, took = _against(silent, timeout=0.5)
    assert "no answer within 0.5 s" in _error(got[0])
    assert took < 1.5


def test_a_slow_body_is_given_up_with_what_was_received():
    half = _ok()[:60]
    got, _connects, took = _against(_replying(half, b"x", pause=3.0), timeout=0.5)
    assert "reply not finished within 0.5 s (60 bytes received)" in _error(got[0])
    assert took < 1.5


def test_nothing_listening():
    async def run() -> NginxStatus | SourceError:
        client = StubStatusClient("http://127.0.0.1:1/nginx_status")
        try:
            return await client.sample(1.0)
        finally:
            client.close()
    assert "connection refused" in _error(asyncio.run(run()))


def test_a_bad_url_is_a_reason_not_an_exception():
    async def run() -> NginxStatus | SourceError:
        return await StubStatusClient("http://127.0.0.1:99999999/x").sample(1.0)
    assert "bad host or port" in _error(asyncio.run(run()))

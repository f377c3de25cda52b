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

"""The agent client against agents that misbehave or URLs it cannot use: every failure is a
reason (SourceError / ActionError), never an exception, and nothing from the URL's secrets or the
agent's raw text reaches the screen. No real agent needed: a closed port or httpx.MockTransport.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stackmon.actions.base import ActionError
from stackmon.agent.client import AgentSource, remote_kill
from stackmon.config import HostConfig, Settings
from stackmon.demo.launcher import free_port
from stackmon.model import SourceError


def fetch(source: AgentSource) -> dict[str, Any] | SourceError:
    async def go() -> dict[str, Any] | SourceError:
        try:
            return await source.fetch()
        finally:
            await source.aclose()
    return asyncio.run(go())


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


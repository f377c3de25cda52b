"""A kill carries the requests the user confirmed it for, and is refused when one of them ended
before the kill's own stats read (real uWSGI, locally and through an agent: one Host API).

The TUI's dialog compares against the latest poll, up to an interval old, and the stack capture
before the kill takes a second more: a request that ends in that window must not turn the kill
into one that only aborts whatever came after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError
from stackmon.actions.kill import kill_meant_for
from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings
from stackmon.hosts import Host, open_host
from stackmon.model import RequestKey, Worker
from tests.conftest import wait_until
from tests.test_agent import start_agent  # noqa: F401  (a fixture)


def _host(kind: str, stack: Any, request: pytest.FixtureRequest,
          **settings: Any) -> Callable[[], Host]:
    """A factory of Hosts (an agent's client is bound to the event loop it was opened in: one
    Host per asyncio.run)."""
    if kind == "agent":
        config = request.getfixturevalue("start_agent")(stack, **settings).host()
    else:
        config = HostConfig(name="local", uwsgi=(parse_stats_address(stack.stats_address),))
    return lambda: open_host(config, Settings(**settings))


def _run(new_host: Callable[[], Host], what: Callable[[Host], Any]) -> Any:
    async def go() -> Any:
        host = new_host()
        try:
            return await what(host)
        finally:
            await host.aclose()
    return asyncio.run(go())


def _worker(new_host: Callable[[], Host]) -> Worker:
    async def first(host: Host) -> Worker:
        return (await host.poll()).uwsgi[0].workers[0]
    return _run(new_host, first)


def _uris(worker: Worker) -> set[str]:
    return {r.uri for r in worker.requests_in_flight}


def _kill(new_host: Callable[[], Host], worker: Worker, keys: tuple[RequestKey, ...],
          audit: AuditLog) -> Any:
    return _run(new_host, lambda host: host.kill(
        0, worker.id, worker.pid, "TERM", audit=audit, expect_spawn=worker.last_spawn,
        expect_requests=keys))


@pytest.mark.parametrize("kind", ["local", "agent"])
def test_a_kill_for_a_request_that_ended_is_refused_and_kills_nothing(
        kind, fresh_stack, hang, request, tmp_path):
    stack = fresh_stack(workers=1, threads=2, nginx=False)
    host = _host(kind, stack, request)
    audit = AuditLog(tmp_path / "mine.log")
    hang(stack, "/hang/short?s=1.5", n=1, via="unix")
    seen = _worker(host)
    assert _uris(seen) == {"/hang/short?s=1.5"}
    meant = kill_meant_for(seen.requests_by_key())
    assert len(meant) == 1
    # It ends while the user decides; another request starts on the worker.
    wait_until(lambda: "/hang/short?s=1.5" not in _uris(_worker(host)), 10)
    hang(stack, "/hang/after", n=1, via="unix")
    with pytest.raises(ActionError) as err:
        _kill(host, seen, meant, audit)
    assert err.value.kind == "ended" and err.value.http_status == 409
    assert "ended since you looked" in err.value.message
    assert "GET /hang/after" in err.value.message and "nothing was done" in err.value.message
    now = _worker(host)
    assert now.pid == seen.pid and "/hang/after" in _uris(now)  # not aborted
    # (through an agent, this side records "started" before asking it)
    assert [e["outcome"] for e in audit.entries()][-1:] == ["refused: ended"]
    assert not [e for e in audit.entries() if e["outcome"] == "ok"]
    # Confirmed again on what runs now: the kill goes through, and says it checked.
    result = _kill(host, now, kill_meant_for(now.requests_by_key()), audit)
    assert result.ok, result.message
    assert result.data["requests_checked"] == 1 and result.data["new_pid"] != seen.pid
    assert "older than the check" not in result.message


def test_a_short_request_beside_a_stuck_one_ending_does_not_hold_the_kill(
        fresh_stack, hang, request, tmp_path):
    """The kill is for the stuck request: a short one that ended during the capture (the
    other thread serving) must not refuse it, or the kill never goes through."""
    stack = fresh_stack(workers=1, threads=2, nginx=False)
    host = _host("local", stack, request, slow=1.0)
    audit = AuditLog(tmp_path / "mine.log")
    hang(stack, "/hang/stuck", n=1, via="unix")
    wait_until(lambda: any(r.level != "ok" for r in _worker(host).requests_in_flight), 10)
    hang(stack, "/hang/quick?s=0.8", n=1, via="unix")
    seen = _worker(host)
    assert _uris(seen) == {"/hang/stuck", "/hang/quick?s=0.8"}
    meant = kill_meant_for(seen.requests_by_key())
    assert [seen.requests_by_key()[k].uri for k in meant] == ["/hang/stuck"]
    wait_until(lambda: _uris(_worker(host)) == {"/hang/stuck"}, 10)
    result = _kill(host, seen, meant, audit)
    assert result.ok, result.message
    assert [r["uri"] for r in result.data["requests"]] == ["/hang/stuck"]


def test_without_stuck_requests_every_request_shown_is_what_the_kill_is_for(
        fresh_stack, hang, request):
    stack = fresh_stack(workers=1, threads=2, nginx=False)
    host = _host("local", stack, request)
    hang(stack, "/hang/a", n=1, via="unix")
    hang(stack, "/hang/b", n=1, via="unix")
    seen = _worker(host)
    assert sorted(seen.requests_by_key()[k].uri for k in
                  kill_meant_for(seen.requests_by_key())) == ["/hang/a", "/hang/b"]
    assert kill_meant_for({}) == ()  # an idle worker: nothing to hold the kill to


def test_the_agent_refuses_malformed_expect_requests(request):
    from types import SimpleNamespace

    from stackmon.demo.launcher import free_port

    nowhere = SimpleNamespace(stats_address=f"127.0.0.1:{free_port()}", nginx_status_url=None)
    agent = request.getfixturevalue("start_agent")(nowhere)
    bad: list[Any] = ["x", {"core": 0}, [[0, 1]], [[0, 1, 2, 3]], [[-1, 1, None]],
                  [[0, True, None]], [[0, 1, "soon"]],
                  [[0, 1.5, None]], [[0, 2**63, None]], [[0, 1, None]] * 257]
    for value in bad:
        resp = agent.post("/v1/workers/0/1/kill", {"signal": "TERM", "expect_pid": 5,
                                                   "expect_requests": value})
        assert resp.status_code == 400, (str(value)[:60], resp.text)
        assert "expect_requests" in resp.json()["message"]
    # well formed: validation passes (the dead instance then answers, not with 400)
    resp = agent.post("/v1/workers/0/1/kill", {"signal": "TERM", "expect_pid": 5,
                                           "expect_requests": [[0, 3, 1_795_000_000.0],
                                                               [1, 0, None]]})
    assert resp.status_code != 400, resp.text


async def test_a_refused_kill_is_an_event_of_its_host(fresh_stack, hang, tmp_path) -> None:
    """A refused kill showed only in the audit log; the events screen lists it beside the
    kills (the Host that polls is the one that kills, as in the TUI)."""
    from stackmon.model import HostSnapshot
    from tests.conftest import in_flight

    stack = fresh_stack(workers=1, threads=1)
    hang(stack, "/hang/ends?s=1", n=1, via="unix")
    host = open_host(HostConfig(name="s", uwsgi=(parse_stats_address(stack.stats_address),),
                                nginx=stack.nginx_status_url), Settings())
    try:
        seen = (await host.poll()).uwsgi[0].workers[0]
        meant = kill_meant_for(seen.requests_by_key())
        assert meant
        await asyncio.to_thread(wait_until, lambda: not in_flight(stack.stats()), 10)
        with pytest.raises(ActionError) as err:
            await host.kill(0, seen.id, seen.pid, "TERM", audit=AuditLog(tmp_path / "a.log"),
                            expect_spawn=seen.last_spawn, expect_requests=meant)
        assert err.value.kind == "ended"
        after: HostSnapshot = await host.poll()
        assert after.logs is not None
        (ours,) = [e for e in after.logs.events if e.source == "stackmon"]
        assert ours.kind == "kill_refused" and ours.pid == seen.pid and ours.worker == seen.id
        assert "ended since you looked" in ours.text
        assert ours.uri == "GET /hang/ends?s=1"  # what it was for, though no poll shows it now
    finally:
        await host.aclose()


def test_an_agents_kills_and_refusals_are_events_of_its_host(fresh_stack, hang, request,
                                                            tmp_path) -> None:
    """Through an agent a kill and a refused kill were in its audit log only: its snapshots'
    events (the events screen of an agent host) carry them now, as a local host's do."""
    stack = fresh_stack(workers=1, threads=1)
    new_host = _host("agent", stack, request)
    hang(stack, "/hang/agent-ends?s=1", n=1, via="unix")
    seen = _worker(new_host)
    meant = kill_meant_for(seen.requests_by_key())
    wait_until(lambda: not _uris(_worker(new_host)), 10)
    with pytest.raises(ActionError):
        _kill(new_host, seen, meant, AuditLog(tmp_path / "a.log"))
    hang(stack, "/hang/agent-killed", n=1, via="unix")
    now = _worker(new_host)
    assert _kill(new_host, now, kill_meant_for(now.requests_by_key()),
                 AuditLog(tmp_path / "a.log")).ok

    def kinds() -> dict[str, Any]:
        async def events(host: Host) -> Any:
            snap = await host.poll()
            return {e.kind: e for e in (snap.logs.events if snap.logs else ())
                    if e.source == "stackmon"}
        return _run(new_host, events)

    wait_until(lambda: {"kill_refused", "killed"} <= kinds().keys(), 10)
    got = kinds()
    assert got["kill_refused"].pid == seen.pid and "ended since you looked" in \
        got["kill_refused"].text
    assert got["kill_refused"].uri == "GET /hang/agent-ends?s=1"
    assert got["killed"].pid == now.pid and got["killed"].uri == "GET /hang/agent-killed"

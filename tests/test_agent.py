"""`stackmon agent` on loopback against the real stack: the API contract, its guards, actions.

The agent runs in a thread of the test process (its own event loop) for most tests, and as the
real `stackmon agent` command where start-up checks, exit codes and signals are the point.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from stackmon.actions.base import ActionError
from stackmon.addresses import parse_stats_address
from stackmon.agent.client import remote_kill, remote_reload
from stackmon.agent.security import parse_listen, read_token_file
from stackmon.agent.server import AgentOptions, serve
from stackmon.config import ConfigError, HostConfig, Settings, Targets
from stackmon.demo.launcher import free_port
from stackmon.hosts import Host, open_host
from stackmon.hosts.once import poll_once
from stackmon.model import HostSnapshot

SECRETS = {
    "Cookie": "sessionid=COOKIE-SECRET-4411",
    "Authorization": "Bearer AUTH-SECRET-9922",
    "X-Api-Key": "APIKEY-SECRET-7733",
}
SECRET_VALUES = ("COOKIE-SECRET-4411", "AUTH-SECRET-9922", "APIKEY-SECRET-7733",
                 "QUERY-SECRET-5544")


def write_token(path: Path, token: str | None = None, mode: int = 0o600) -> str:
    token = token or secrets.token_hex(24)
    path.write_text(token + "\n")
    path.chmod(mode)
    return token


@dataclass
class RunningAgent:
    url: str
    token: str | None
    token_file: Path | None
    options: AgentOptions
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    thread: threading.Thread
    cafile: str | None = None
    clients: list[httpx.Client] = field(default_factory=list)

    def _client(self) -> httpx.Client:
        verify: Any = ssl.create_default_context(cafile=self.cafile) if self.cafile else True
        client = httpx.Client(trust_env=False, timeout=30, verify=verify)
        self.clients.append(client)
        return client

    def _headers(self, token: str | bool | None) -> dict[str, str]:
        if token is True:
            token = self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, token: str | bool | None = True, **kw: Any) -> httpx.Response:
        return self._client().get(self.url + path, headers=self._headers(token), **kw)

    def post(self, path: str, body: Any = None, token: str | bool | None = True,
             content: bytes | None = None) -> httpx.Response:
        if content is None:
            content = b"" if body is None else json.dumps(body).encode()
        return self._client().post(self.url + path, headers=self._headers(token),
                                   content=content)

    def host(self, name: str = "remote") -> HostConfig:
        return HostConfig(name=name, agent=self.url, token_file=self.token_file)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """`start_agent(stack, token=True, read_only=False, ssl=None, **settings)` -> an agent
    serving the stack's uWSGI (and nginx) on a free loopback port, in a thread."""
    running: list[RunningAgent] = []

    def start(stack: Any, *, token: bool = True, read_only: bool = False,
              ssl_context: Any = None, cafile: str | None = None, name: str = "agent-host",
              **settings: Any) -> RunningAgent:
        token_file = tmp_path / f"token-{len(running)}" if token else None
        value = write_token(token_file) if token_file else None
        host = HostConfig(name=name, uwsgi=(parse_stats_address(stack.stats_address),),
                          nginx=stack.nginx_status_url)
        options = AgentOptions(host=host, settings=Settings(**settings), token=value,
                               read_only=read_only, audit_path=str(tmp_path / "audit.log"))
        ready = threading.Event()
        box: dict[str, Any] = {}

        def main() -> None:
            async def go() -> None:
                box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()

                def on_ready(url: str) -> None:
                    box["url"] = url
                    ready.set()

                await serve(options, ("127.0.0.1", free_port()), ssl_context, ready=on_ready,
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
        agent = RunningAgent(box["url"], value, token_file, options, box["loop"], box["stop"],
                             thread, cafile)
        running.append(agent)
        return agent

    yield start
    for agent in running:
        agent.close()


def run_cli(*args: str, timeout: float = 30, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackmon.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def poll(collector: Host) -> HostSnapshot:
    async def go() -> HostSnapshot:
        try:
            return await collector.poll()
        finally:
            await collector.aclose()
    return asyncio.run(go())


# --- the API contract -------------------------------------------------------------------------


def test_snapshot_route_serves_the_host_object(stack, start_agent):
    agent = start_agent(stack)
    resp = agent.get("/v1/snapshot")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    for key in ("name", "reachable", "stale_s", "errors", "uwsgi", "nginx", "listeners", "fds",
                "kernel"):
        assert key in doc, key
    assert doc["name"] == "agent-host" and doc["reachable"] is True and doc["schema"] == 1
    inst = doc["uwsgi"][0]
    assert inst["master_pid"] == stack.master_pid
    assert {w["pid"] for w in inst["workers"]} == set(stack.worker_pids())
    for key in ("id", "pid", "status", "requests", "exceptions", "harakiri_count",
                "respawn_count", "avg_rt_ms", "rss", "last_spawn", "requests_in_flight"):
        assert key in inst["workers"][0], key
    assert doc["nginx"]["url"] == stack.nginx_status_url
    assert {p["role"] for p in doc["fds"]["processes"]} >= {"uwsgi-master", "uwsgi-worker"}


def test_many_clients_share_one_poll(stack, start_agent):
    agent = start_agent(stack)
    cache = None

    def fetch(_: int) -> int:
        return agent.get("/v1/snapshot").status_code

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(fetch, range(32)))
    assert codes == [200] * 32
    # Inspect the server-side cache from its own loop.
    fut = asyncio.run_coroutine_threadsafe(_polls(agent), agent.loop)
    cache = fut.result(5)
    assert cache <= 4, f"{cache} polls for 32 concurrent requests"


async def _polls(agent: RunningAgent) -> int:
    import gc

    from stackmon.agent.server import AgentApp

    apps = [o for o in gc.get_objects() if isinstance(o, AgentApp) and o.options is agent.options]
    return apps[0].cache.polls


def test_collector_polls_an_agent_host_under_its_local_name(stack, start_agent):
    agent = start_agent(stack)
    snap = poll(open_host(agent.host("web-2"), Settings()))
    assert snap.name == "web-2" and snap.reachable and not snap.errors, snap.errors
    assert snap.uwsgi[0].master_pid == stack.master_pid
    assert len(snap.uwsgi[0].workers) == stack.config.workers


def test_snapshot_command_mixes_agent_and_local_hosts(stack, start_agent, tmp_path):
    agent = start_agent(stack)
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        f'[[host]]\nname = "local"\nuwsgi = ["{stack.stats_address}"]\n'
        f'[[host]]\nname = "remote"\nagent = "{agent.url}"\ntoken_file = "{agent.token_file}"\n'
        f'[[host]]\nname = "down"\nagent = "http://127.0.0.1:{free_port()}"\n'
        f'token_file = "{agent.token_file}"\n')
    result = run_cli("snapshot", str(hosts), "--json", "--rate-window", "0")
    assert result.returncode == 3, result.stderr  # one host is down
    doc = json.loads(result.stdout)
    by_name = {h["name"]: h for h in doc["hosts"]}
    assert [h["name"] for h in doc["hosts"]] == ["local", "remote", "down"]
    assert by_name["remote"]["reachable"] and by_name["local"]["reachable"]
    assert by_name["remote"]["uwsgi"][0]["master_pid"] == stack.master_pid
    down = by_name["down"]
    assert not down["reachable"]
    assert "cannot connect" in down["errors"][0]["message"]
    text = run_cli("snapshot", str(hosts), "--rate-window", "0")
    assert "remote" in text.stdout and "Traceback" not in text.stderr


def test_metrics_expose_the_same_figures_without_request_data(stack, start_agent, hang):
    hang(stack, "/hang/metrics?token=QUERY-SECRET-5544", n=2, headers=SECRETS)
    agent = start_agent(stack, slow=0.5, critical=100)
    time.sleep(0.7)
    resp = agent.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    inst = stack.stats_address
    for needle in (
        'stackmon_host_up{host="agent-host"} 1.0',
        f'stackmon_uwsgi_requests_in_flight{{host="agent-host",instance="{inst}",level="slow"}}'
        " 2.0",
        f'stackmon_uwsgi_busy_workers{{host="agent-host",instance="{inst}"}}',
        "stackmon_uwsgi_worker_requests_total{",
        "stackmon_uwsgi_worker_exceptions_total{",
        "stackmon_uwsgi_worker_respawns_total{",
        "stackmon_uwsgi_oldest_request_seconds{",
        "stackmon_uwsgi_listen_queue{",
        "stackmon_uwsgi_listen_queue_max{",
        "stackmon_listener_backlog{",
        'stackmon_process_open_fds{host="agent-host",pid=',
        "stackmon_process_max_fds{",
        "stackmon_system_open_fds{",
        'stackmon_nginx_connections{host="agent-host",state="active"}',
        "stackmon_nginx_dropped_total{",
        "stackmon_nginx_requests_total{",
    ):
        assert needle in text, needle
    oldest = next(line for line in text.splitlines()
                  if line.startswith("stackmon_uwsgi_oldest_request_seconds{"))
    assert float(oldest.rsplit(" ", 1)[1]) >= 0.5
    assert "/hang" not in text and "uri" not in text.lower()


# --- the guard: tokens, errors, no tracebacks ---------------------------------------------------


ROUTES = [("GET", "/v1/snapshot"), ("GET", "/metrics"),
          ("POST", "/v1/workers/0/1/kill"), ("POST", "/v1/uwsgi/0/reload"),
          ("GET", "/nope"), ("DELETE", "/v1/snapshot")]


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", "x", "Basic abc"])
def test_every_route_needs_the_token(stack, start_agent, token):
    agent = start_agent(stack)
    for method, path in ROUTES:
        headers = {}
        if token == "Basic abc":
            headers["Authorization"] = "Basic " + agent.token
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        resp = httpx.request(method, agent.url + path, headers=headers,
                             content=b'{"expect_pid": 1}', trust_env=False)
        assert resp.status_code == 401, (method, path, resp.text)
        assert resp.headers["www-authenticate"].startswith('Bearer realm="stackmon-agent"')
        assert resp.json()["error"] == "unauthorized"
        assert agent.token not in resp.text


def test_http_errors_are_json_and_never_tracebacks(stack, start_agent):
    agent = start_agent(stack)
    assert agent.get("/nope").status_code == 404
    assert agent.get("/nope").json()["error"] == "not_found"
    resp = agent._client().delete(agent.url + "/v1/snapshot", headers=agent._headers(True))
    assert resp.status_code == 405 and resp.json()["error"] == "method_not_allowed"
    cases = [
        (b"{not json", 400), (b"[1, 2]", 400), (b"\xff\xfe", 400),
        (json.dumps({"signal": "HUP", "expect_pid": 5}).encode(), 400),
        (json.dumps({"expect_pid": True}).encode(), 400),
        (json.dumps({"signal": "TERM"}).encode(), 400),
        (json.dumps({"expect_pid": "12"}).encode(), 400),
        (b"x" * 100_000, 413),
    ]
    for body, status in cases:
        resp = agent.post("/v1/workers/0/1/kill", content=body)
        assert resp.status_code == status, (body[:40], resp.text)
        assert set(resp.json()) == {"error", "message"}
        assert "Traceback" not in resp.text
    resp = agent.post("/v1/uwsgi/0/reload", {"mode": "brutal"})
    assert resp.status_code == 400 and "graceful" in resp.json()["message"]
    resp = agent.post("/v1/uwsgi/7/reload", {"mode": "graceful"})
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"


def test_internal_errors_answer_500_without_details(stack, start_agent):
    agent = start_agent(stack)

    async def broken() -> None:
        import gc

        from stackmon.agent.server import AgentApp

        app = next(o for o in gc.get_objects()
                   if isinstance(o, AgentApp) and o.options is agent.options)

        async def boom() -> HostSnapshot:
            raise RuntimeError("secret internals /etc/shadow")

        app.collector.poll = boom  # type: ignore[method-assign]
        app.cache.invalidate()

    asyncio.run_coroutine_threadsafe(broken(), agent.loop).result(5)
    resp = agent.get("/v1/snapshot")
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal",
                           "message": "internal error in the agent (see its log)"}


def test_stale_pid_is_refused_with_409_and_nothing_is_signalled(stack, start_agent):
    agent = start_agent(stack)
    doc = agent.get("/v1/snapshot").json()
    worker = doc["uwsgi"][0]["workers"][0]
    before = set(stack.worker_pids())
    resp = agent.post(f"/v1/workers/0/{worker['id']}/kill",
                      {"signal": "KILL", "expect_pid": worker["pid"] + 100000})
    assert resp.status_code == 409 and resp.json()["error"] == "stale"
    # A pid that is no worker at all (the master, this test process) is refused the same way:
    # the pid must be the one uWSGI reports for that worker id.
    for pid in (stack.master_pid, os.getpid()):
        resp = agent.post(f"/v1/workers/0/{worker['id']}/kill", {"expect_pid": pid})
        assert resp.status_code == 409, resp.text
    resp = agent.post("/v1/workers/0/99/kill", {"expect_pid": worker["pid"]})
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    time.sleep(0.3)
    assert set(stack.worker_pids()) == before
    assert stack.running


def test_read_only_and_tokenless_agents_refuse_actions(stack, start_agent):
    worker = stack.stats()["workers"][0]
    body = {"signal": "TERM", "expect_pid": worker["pid"]}
    ro = start_agent(stack, read_only=True)
    resp = ro.post(f"/v1/workers/0/{worker['id']}/kill", body)
    assert resp.status_code == 403 and resp.json()["error"] == "read_only"
    assert ro.post("/v1/uwsgi/0/reload", {"mode": "graceful"}).status_code == 403
    open_agent = start_agent(stack, token=False)
    assert open_agent.get("/v1/snapshot", token=None).status_code == 200
    resp = open_agent.post(f"/v1/workers/0/{worker['id']}/kill", body, token=None)
    assert resp.status_code == 403 and "without a token" in resp.json()["message"]
    assert stack.stats()["workers"][0]["pid"] == worker["pid"]


def test_no_secret_value_in_any_response(stack, start_agent, hang):
    hang(stack, "/hang/secret?token=QUERY-SECRET-5544&page=2", n=1, headers=SECRETS)
    agent = start_agent(stack)
    doc = agent.get("/v1/snapshot").json()
    busy = next(w for w in doc["uwsgi"][0]["workers"] if w["requests_in_flight"])
    bodies = [
        agent.get("/v1/snapshot").text,
        agent.get("/metrics").text,
        agent.post(f"/v1/workers/0/{busy['id']}/kill", {"expect_pid": 1}).text,
        agent.post("/v1/workers/0/1/kill", content=b"{").text,
        agent.get("/v1/snapshot?x=1", token="wrong-token-000000000").text,
        agent.get("/nope").text,
    ]
    snap = poll(open_host(agent.host(), Settings()))
    from stackmon.snapshot_json import host_to_dict

    bodies.append(json.dumps(host_to_dict(snap)))
    assert "/hang/secret" in bodies[0]  # the request is there...
    for body in bodies:
        for secret in (*SECRET_VALUES, agent.token):
            assert secret not in body  # ...its secrets are not, nor the agent's own token


# --- actions through the agent (a stack of their own: they change it) -------------------------


def test_kill_through_the_agent_respawns_the_worker_and_is_audited(fresh_stack, start_agent,
                                                                   tmp_path):
    stack = fresh_stack(nginx=False, workers=2, threads=1)
    agent = start_agent(stack)
    worker = agent.get("/v1/snapshot").json()["uwsgi"][0]["workers"][0]
    result = asyncio.run(remote_kill(agent.host(), 0, worker["id"], worker["pid"], "TERM",
                                     expect_spawn=worker["last_spawn"], actor="alice@laptop"))
    assert result.ok, result.message
    assert result.data["old_pid"] == worker["pid"] and result.data["new_pid"] != worker["pid"]
    # The next snapshot shows it (the action dropped the agent's cache).
    after = agent.get("/v1/snapshot").json()["uwsgi"][0]["workers"][0]
    assert after["pid"] == result.data["new_pid"]
    entries = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert any(e["outcome"] == "ok" and e["user"].startswith("alice@laptop via agent from "
                                                             "127.0.0.1") for e in entries)
    # Same pid again: it is gone, so the agent refuses, and the client says so in kind.
    with pytest.raises(ActionError) as err:
        asyncio.run(remote_kill(agent.host(), 0, worker["id"], worker["pid"]))
    assert err.value.kind == "stale"


def test_remote_action_errors_map_back_to_kinds(stack, start_agent, tmp_path):
    agent = start_agent(stack)
    wrong = HostConfig(name="x", agent=agent.url, token_file=tmp_path / "wrong")
    write_token(tmp_path / "wrong")
    with pytest.raises(ActionError) as err:
        asyncio.run(remote_kill(wrong, 0, 1, 1))
    assert err.value.kind == "permission" and "refused the token" in err.value.message
    with pytest.raises(ActionError) as err:
        asyncio.run(remote_reload(agent.host(), 3))
    assert err.value.kind == "not_found"
    down = HostConfig(name="d", agent=f"http://127.0.0.1:{free_port()}",
                      token_file=agent.token_file)
    with pytest.raises(ActionError) as err:
        asyncio.run(remote_kill(down, 0, 1, 1))
    assert err.value.kind == "gone" and "nothing was done" in err.value.message


def test_reload_through_the_agent(fresh_stack, start_agent, wait_until):
    stack = fresh_stack(nginx=False, workers=2, threads=1, mercy=2)
    agent = start_agent(stack)
    before = set(stack.worker_pids())
    result = asyncio.run(remote_reload(agent.host(), 0, "graceful"))
    assert result.ok and result.data["mode"] == "graceful", result.message
    wait_until(lambda: set(stack.worker_pids()) and not set(stack.worker_pids()) & before,
               20, message="workers replaced after the graceful reload")


# --- TLS -------------------------------------------------------------------------------------


def test_tls_agent_with_a_private_ca(stack, start_agent, tmp_path, monkeypatch):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    agent = start_agent(stack, ssl_context=server_ctx, cafile=str(cafile))
    assert agent.url.startswith("https://127.0.0.1:")
    assert agent.get("/v1/snapshot").status_code == 200
    # Without the CA the client refuses the certificate: a reason, not a crash.
    snap = poll(open_host(agent.host(), Settings()))
    assert not snap.reachable and "certificate" in snap.errors[0].message.lower()
    monkeypatch.setenv("STACKMON_AGENT_CA", str(cafile))
    snap = poll(open_host(agent.host(), Settings()))
    assert snap.reachable and snap.uwsgi[0].master_pid == stack.master_pid
    # Plain HTTP to the TLS port gets nothing useful.
    with pytest.raises(httpx.HTTPError):
        httpx.get(agent.url.replace("https", "http") + "/v1/snapshot", trust_env=False,
                  timeout=3)


def test_tls_cli_options_checked_before_listening(stack, tmp_path):
    token = tmp_path / "t"
    write_token(token)
    base = ["agent", "--uwsgi", stack.stats_address, "--token-file", str(token),
            "--listen", f"127.0.0.1:{free_port()}"]
    r = run_cli(*base, "--tls-cert", str(tmp_path / "cert.pem"))
    assert r.returncode == 2 and "both --tls-cert and --tls-key" in r.stderr
    key = tmp_path / "key.pem"
    key.write_text("x")
    key.chmod(0o644)
    r = run_cli(*base, "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(key))
    assert r.returncode == 2 and "group/others" in r.stderr
    key.chmod(0o600)
    r = run_cli(*base, "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(key))
    assert r.returncode == 2 and "cert.pem" in r.stderr and "Traceback" not in r.stderr


# --- start-up checks and signals (the real command) ---------------------------------------------


def test_token_file_readable_by_others_is_refused(stack, tmp_path):
    token = tmp_path / "token"
    for mode in (0o644, 0o640, 0o604):
        write_token(token, mode=mode)
        r = run_cli("agent", "--uwsgi", stack.stats_address, "--token-file", str(token),
                    "--listen", f"127.0.0.1:{free_port()}")
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "chmod 600" in r.stderr, r.stderr
    r = run_cli("agent", "--uwsgi", stack.stats_address, "--token-file",
                str(tmp_path / "missing"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    write_token(token, token="short")
    r = run_cli("agent", "--uwsgi", stack.stats_address, "--token-file", str(token))
    assert r.returncode == 2 and "shorter than 16" in r.stderr


def test_non_loopback_without_token_is_refused(stack):
    for listen in ("0.0.0.0:9399", "[::]:9399", "10.231.0.1:9399"):
        r = run_cli("agent", "--uwsgi", stack.stats_address, "--listen", listen)
        assert r.returncode == 2, (listen, r.stderr)
        assert "without a token" in r.stderr and r.stderr.count("\n") == 1


def test_listen_and_token_parsing(tmp_path):
    assert parse_listen("127.0.0.1:9300") == ("127.0.0.1", 9300)
    assert parse_listen("[::1]:9301") == ("::1", 9301)
    assert parse_listen("9302") == ("127.0.0.1", 9302)
    assert parse_listen("localhost") == ("localhost", 9300)
    for bad in ("1.2.3.4:99999", ":9300", "a:b:c", "[::1"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    token = tmp_path / "tok"
    write_token(token, "a" * 20 + " b")
    with pytest.raises(ConfigError, match="visible ASCII"):
        read_token_file(token)
    write_token(token, "ok" * 10)
    assert read_token_file(token) == "ok" * 10


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_agent_command_serves_and_stops_cleanly(stack, tmp_path, sig):
    token = tmp_path / "token"
    value = write_token(token)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackmon.cli", "agent", "--uwsgi", stack.stats_address,
         "--nginx", stack.nginx_status_url, "--token-file", str(token), "--listen",
         f"127.0.0.1:{port}", "--name", "cli-host"],
        stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}" in line and "cli-host" in line, line
        resp = httpx.get(f"http://127.0.0.1:{port}/v1/snapshot", trust_env=False,
                         headers={"Authorization": f"Bearer {value}"})
        assert resp.status_code == 200 and resp.json()["name"] == "cli-host"
        proc.send_signal(sig)
        assert proc.wait(10) == 0
        rest = proc.stderr.read()
        assert "stopped" in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_agent_refuses_a_busy_port(stack, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("agent", "--uwsgi", stack.stats_address, "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 2 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


def test_client_token_file_problems_are_reasons_not_crashes(stack, start_agent, tmp_path):
    agent = start_agent(stack)
    loose = tmp_path / "loose"
    write_token(loose, agent.token, mode=0o644)
    for token_file, needle in ((tmp_path / "absent", "does not exist"),
                               (loose, "chmod 600")):
        host = HostConfig(name="r", agent=agent.url, token_file=token_file)
        snap = poll(open_host(host, Settings()))
        assert not snap.reachable and needle in snap.errors[0].message
    host = HostConfig(name="r", agent=agent.url)  # no token_file at all
    snap = poll(open_host(host, Settings()))
    assert not snap.reachable and "refused the token" in snap.errors[0].message


def test_poll_once_closes_agent_pools(stack, start_agent):
    agent = start_agent(stack)
    targets = Targets(hosts=(agent.host("a"), agent.host("b")))
    snap = asyncio.run(poll_once(targets, rate_window=0))
    assert [h.name for h in snap.hosts] == ["a", "b"] and all(h.reachable for h in snap.hosts)


def test_kill_refuses_non_finite_spawn_times_and_boolean_pids(start_agent):
    """NaN would switch the respawn check off (|spawn - NaN| > slack is false): refused, as are
    infinities, numbers too big for a float and booleans for pids. Checked before any instance
    is contacted, so no uWSGI is needed behind this agent."""
    nowhere = SimpleNamespace(stats_address=f"127.0.0.1:{free_port()}", nginx_status_url=None)
    agent = start_agent(nowhere)
    bodies = [b'{"signal": "TERM", "expect_pid": 5, "expect_spawn": NaN}',
              b'{"signal": "TERM", "expect_pid": 5, "expect_spawn": Infinity}',
              b'{"signal": "TERM", "expect_pid": 5, "expect_spawn": -Infinity}',
              b'{"signal": "TERM", "expect_pid": 5, "expect_spawn": 1e999}',
              b'{"signal": "TERM", "expect_pid": 5, "expect_spawn": 1' + b"0" * 400 + b"}",
              b'{"signal": "TERM", "expect_pid": 5, "expect_spawn": true}',
              b'{"signal": "TERM", "expect_pid": true}',
              b'{"signal": "TERM", "expect_pid": false}']
    for body in bodies:
        resp = agent.post("/v1/workers/0/1/kill", content=body)
        assert resp.status_code == 400, (body[:70], resp.text)
        assert resp.json()["error"] == "bad_request"
    # a finite spawn time passes validation (and then fails on the dead instance, not with 400)
    resp = agent.post("/v1/workers/0/1/kill", {"signal": "TERM", "expect_pid": 5,
                                               "expect_spawn": 1_700_000_000.5})
    assert resp.status_code != 400, resp.text


def test_a_kill_through_an_agent_keeps_where_the_worker_was_stuck(fresh_stack, hang,
                                                                  start_agent, tmp_path):
    """The caller's audit record carries the whole stack; the agent's gets the marked thread's
    innermost frame (bodies are capped at 16 KB, a kill is never refused for its evidence)."""
    from stackmon.actions.audit import AuditLog
    from stackmon.hosts import open_host

    stack = fresh_stack(workers=2, threads=1)
    agent = start_agent(stack)
    hang(stack, "/hang/evidence", n=1)
    local_audit = AuditLog(tmp_path / "local-audit.log")
    summary = {"threads": [{"name": "uWSGIWorker1Core0", "marked": True, "core": 0,
                            "frames": ["wait_for_ledger_lock (/srv/app.py:12)", "handler"]}]}

    async def go() -> Any:
        host = open_host(agent.host(), Settings())
        try:
            snap = await host.poll()
            (w,) = [w for w in snap.uwsgi[0].workers if w.requests_in_flight]
            return w, await host.kill(0, w.id, w.pid, "KILL", audit=local_audit,
                                      expect_spawn=w.last_spawn, stack=summary)
        finally:
            await host.aclose()

    worker, result = asyncio.run(go())
    assert result.ok, result.message
    (mine,) = [e for e in local_audit.entries() if e["outcome"] == "started"]
    assert mine["stack"] == summary
    theirs = [json.loads(line) for line in
              Path(agent.options.audit_path).read_text().splitlines()]
    (started,) = [e for e in theirs if e["outcome"] == "started"]
    assert started["target_pid"] == worker.pid
    assert started["stack"] == {"stuck_in": "wait_for_ledger_lock (/srv/app.py:12)"}

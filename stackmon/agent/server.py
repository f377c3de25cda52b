"""The agent's HTTP server (aiohttp): one host's snapshot, metrics and actions, behind a token.

Routes (DESIGN.md, "Agent API"), every one behind `Authorization: Bearer <token>`:

    GET  /v1/snapshot                               the host object of the snapshot JSON
    POST /v1/workers/{uwsgi_index}/{worker_id}/kill {"signal": "TERM"|"KILL", "expect_pid": n}
    POST /v1/uwsgi/{uwsgi_index}/reload             {"mode": "graceful"|"chain"}
    GET  /metrics                                   Prometheus text format of the same figures

Design decisions:
- Authentication runs before routing is revealed: without the right token every path answers
  401 (with WWW-Authenticate), so an unauthenticated client cannot even map the API. Tokens
  are compared with hmac.compare_digest on bytes.
- Every answer is JSON (`{"error": kind, "message": ...}` for failures, the kinds of
  stackmon.actions.ActionError with their HTTP status), and nothing a client sends can produce
  a traceback in a response: unexpected exceptions are logged here and answered with a fixed
  500 message.
- One poll serves many clients: snapshots are cached for `cache_s` (0.25 s: shorter than any
  sensible client interval, long enough to merge a burst) and concurrent requests share the
  poll in progress, so ten dashboards cost the uWSGI masters about what one does. The
  serialised JSON is cached with it. An action drops the cache, so the caller's next poll
  shows its effect.
- An agent without a token (possible on loopback only) serves data but refuses actions: a
  loopback port is reachable by every local user, and killing workers must need a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from stackmon import __version__
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.agent import API_VERSION
from stackmon.agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from stackmon.agent.metrics import render_metrics
from stackmon.collect import HostCollector
from stackmon.config import HostConfig, Settings
from stackmon.model import HostSnapshot
from stackmon.snapshot_json import SCHEMA, host_to_dict

log = logging.getLogger("stackmon.agent")

ACTOR_HEADER = "X-Stackmon-Actor"
MAX_BODY = 16 * 1024
REALM = 'Bearer realm="stackmon-agent"'


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """What an agent serves and how it guards it."""

    host: HostConfig
    settings: Settings
    token: str | None
    read_only: bool = False
    cache_s: float = 0.25
    audit_path: str | None = None  # None: the default audit log of the agent's user


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None,
                  ) -> web.Response:
    return web.Response(body=json.dumps(data, ensure_ascii=False).encode("utf-8"),
                        status=status, content_type="application/json", charset="utf-8",
                        headers=headers)


def error_response(status: int, kind: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": kind, "message": message}, status, headers)


class SnapshotCache:
    """At most one poll in flight and results reused for `max_age` seconds (single-flight)."""

    def __init__(self, collector: HostCollector, max_age: float,
                 client: Callable[[], httpx.AsyncClient]) -> None:
        self.collector = collector
        self.max_age = max_age
        self._client = client
        self._snap: HostSnapshot | None = None
        self._body: bytes | None = None
        self._at = 0.0
        self._task: asyncio.Task[HostSnapshot] | None = None
        self.polls = 0

    def invalidate(self) -> None:
        self._snap, self._body = None, None

    async def get(self) -> HostSnapshot:
        if self._snap is not None and time.monotonic() - self._at <= self.max_age:
            return self._snap
        if self._task is None:
            self._task = asyncio.create_task(self._poll())
            self._task.add_done_callback(self._done)
        # shield: one client giving up must not cancel the poll the others wait for.
        return await asyncio.shield(self._task)

    async def body(self) -> bytes:
        snap = await self.get()
        if self._body is None or self._snap is not snap:
            doc = host_to_dict(snap)
            doc["schema"] = SCHEMA
            doc["agent"] = {"version": __version__, "api": API_VERSION}
            self._body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        return self._body

    def _done(self, task: asyncio.Task[HostSnapshot]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is None:
            self._snap, self._body, self._at = task.result(), None, time.monotonic()

    async def _poll(self) -> HostSnapshot:
        self.polls += 1
        limit = self.collector.settings.timeout * 2 + 1
        try:
            return await asyncio.wait_for(self.collector.poll(self._client()), limit)
        except TimeoutError:
            return self.collector.timed_out(time.time(), limit)


def _clean_actor(text: str) -> str:
    """A client-supplied name for the audit log: printable, short, never trusted for more."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text.strip())
    return cleaned[:64]


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ActionError("bad_request", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ActionError("bad_request", "the request body must be a JSON object")
    return body


def _int_field(body: dict[str, Any], key: str, *, required: bool) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ActionError("bad_request", f"{key} is required (the pid you saw: a kill "
                                             "never lands on a process that replaced it)")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ActionError("bad_request", f"{key} must be a positive integer")
    return value


def _finite_field(body: dict[str, Any], key: str, what: str) -> float | None:
    """An optional finite number. json.loads takes NaN and Infinity (and 1e999 is inf), and
    NaN defeats comparisons: |last_spawn - NaN| > slack is false, so a NaN expect_spawn would
    switch the respawn check off instead of failing it. Integers too big for a float are
    refused too (they would raise in the arithmetic later)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ActionError("bad_request", f"{key} must be {what}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ActionError("bad_request", f"{key} must be a finite number, not {value!r:.40}")
    return number


class AgentApp:
    """The aiohttp application and the state behind it (collector, cache, audit log)."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.collector = HostCollector(options.host, options.settings)
        self._client: httpx.AsyncClient | None = None
        self.cache = SnapshotCache(self.collector, options.cache_s, self.client)
        self._token = options.token.encode("ascii") if options.token else None
        self.app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        self.app.add_routes([
            web.get("/v1/snapshot", self.snapshot),
            web.post(r"/v1/workers/{uwsgi_index:\d+}/{worker_id:\d+}/kill", self.kill),
            web.post(r"/v1/uwsgi/{uwsgi_index:\d+}/reload", self.reload),
            web.get("/metrics", self.metrics),
        ])
        self.app.on_cleanup.append(self._close)

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False)
        return self._client

    async def _close(self, _app: web.Application) -> None:
        if self._client is not None:
            await self._client.aclose()
        await self.collector.aclose()

    # --- guard: authentication and error shape ------------------------------------------

    def _authorized(self, request: web.Request) -> str | None:
        """None when the request carries the token; else the 401 error detail."""
        if self._token is None:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if not header:
            return "missing"
        if scheme.lower() != "bearer":
            return "invalid"
        # Compare bytes (str compare_digest rejects non-ASCII); always compare, never
        # short-circuit on length, so timing says nothing about the token.
        return None if hmac.compare_digest(value.strip().encode("utf-8", "replace"),
                                           self._token) else "invalid"

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> web.StreamResponse:
        problem = self._authorized(request)
        if problem is not None:
            challenge = REALM if problem == "missing" else f'{REALM}, error="invalid_token"'
            text = ("this agent needs Authorization: Bearer <token>" if problem == "missing"
                    else "the token is not valid for this agent")
            return error_response(401, "unauthorized", text, {"WWW-Authenticate": challenge})
        try:
            return await handler(request)
        except ActionError as exc:
            return error_response(exc.http_status, exc.kind, exc.message)
        except web.HTTPException as exc:  # 404, 405, 413 from aiohttp itself
            kind = {404: "not_found", 405: "method_not_allowed",
                    413: "too_large"}.get(exc.status, "bad_request")
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(exc.status, kind, exc.reason, headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error serving %s %s", request.method, request.path)
            return error_response(500, "internal", "internal error in the agent (see its log)")

    # --- routes -----------------------------------------------------------------------------

    async def snapshot(self, request: web.Request) -> web.Response:
        return web.Response(body=await self.cache.body(), content_type="application/json",
                            charset="utf-8")

    async def metrics(self, request: web.Request) -> web.Response:
        snap = await self.cache.get()
        return web.Response(body=render_metrics(snap),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

    def _target(self, request: web.Request) -> ActionTarget:
        host = self.options.host
        index = int(request.match_info["uwsgi_index"])
        if not 0 <= index < len(host.uwsgi):
            raise ActionError("not_found", f"this agent has {len(host.uwsgi)} uWSGI "
                                           f"instance(s); there is no instance {index}")
        read_only = self.options.read_only or host.read_only
        if not read_only and self._token is None:
            raise ActionError("read_only", "this agent runs without a token: actions are "
                                           "disabled (give it --token-file)")
        return ActionTarget(host=host.name, address=host.uwsgi[index], index=index,
                            read_only=read_only, timeout=self.options.settings.timeout)

    def _actor(self, request: web.Request) -> str:
        peer = request.remote or "?"
        who = _clean_actor(request.headers.get(ACTOR_HEADER, ""))
        return f"{who} via agent from {peer}" if who else f"agent client {peer}"

    def _audit(self) -> Any:
        from stackmon.actions.audit import AuditLog

        if self.options.audit_path:
            from pathlib import Path

            return AuditLog(Path(self.options.audit_path))
        return AuditLog.default()

    async def kill(self, request: web.Request) -> web.Response:
        body = _parse_body(await request.read())
        sig = body.get("signal", "TERM")
        if sig not in ("TERM", "KILL"):
            raise ActionError("bad_request", "signal must be \"TERM\" or \"KILL\"")
        expect_pid = _int_field(body, "expect_pid", required=True)
        spawn = _finite_field(body, "expect_spawn", "a number (epoch seconds)")
        usr2 = body.get("usr2", False)
        if not isinstance(usr2, bool):
            raise ActionError("bad_request", "usr2 must be true or false")
        target = self._target(request)
        from stackmon.actions.kill import kill_worker

        try:
            result = await kill_worker(target, int(request.match_info["worker_id"]),
                                       expect_pid or 0, sig, expect_spawn=spawn,
                                       usr2_first=usr2, audit=self._audit(),
                                       actor=self._actor(request))
        finally:
            self.cache.invalidate()
        return self._result(result)

    async def reload(self, request: web.Request) -> web.Response:
        body = _parse_body(await request.read())
        mode = body.get("mode", "graceful")
        if mode not in ("graceful", "chain"):
            raise ActionError("bad_request", "mode must be \"graceful\" or \"chain\"")
        target = self._target(request)
        from stackmon.actions.reload import reload_uwsgi

        try:
            result = await reload_uwsgi(target, mode, audit=self._audit(),
                                        actor=self._actor(request))
        finally:
            self.cache.invalidate()
        return self._result(result)

    @staticmethod
    def _result(result: ActionResult) -> web.Response:
        return json_response({"ok": result.ok, "message": result.message, "data": result.data})


ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


async def serve(options: AgentOptions, listen: tuple[str, int],
                ssl_context: ssl.SSLContext | None = None, *,
                ready: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None, access_log: bool = False) -> None:
    """Run the agent until SIGTERM/SIGINT (or `stop` is set), then close cleanly.

    `ready` receives the URL once the socket listens (the CLI prints it; tests wait on it).
    Binding errors raise OSError for the caller to report.
    """
    agent = AgentApp(options)
    runner = web.AppRunner(agent.app, handle_signals=False,
                           access_log=logging.getLogger("stackmon.agent.access")
                           if access_log else None,
                           access_log_format=ACCESS_LOG_FORMAT, shutdown_timeout=2.0)
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        host, port = listen
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
        if ready is not None:
            scheme = "https" if ssl_context else "http"
            shown = f"[{host}]" if ":" in host else host
            ready(f"{scheme}://{shown}:{port}")
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.cleanup()

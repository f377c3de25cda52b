"""The agent's HTTP server (aiohttp): one host's snapshot, metrics and actions, behind a token.

Routes (docs/contracts.md, "Agent API"), every one behind `Authorization: Bearer <token>`:

    GET  /v1/snapshot                               the host object of the snapshot JSON
    POST /v1/workers/{uwsgi_index}/{worker_id}/kill {"signal": "TERM"|"KILL", "expect_pid": n}
    POST /v1/uwsgi/{uwsgi_index}/reload             {"mode": "graceful"|"chain"}
    GET  /v1/workers/{uwsgi_index}/{worker_id}/stack?expect_pid=n[&locals=1]
                                                    the worker's Python stack (py-spy)
    GET  /metrics                                   Prometheus text format of the same figures
    GET  /v1/history?from=T&to=T                    what the agent recorded (--record DIR):
                                                    polls (host objects), events, actions

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
- Hostile clients cost little: every connection goes through security.ConnectionGuard (a
  complete request header within 10 s, 30 s idle, per-client and total caps that drop idle
  connections first), the body is capped (16 KB, 413) and read within 10 s (408), ids in URLs
  have at most 9 digits, JSON nesting too deep for the parser is a 400.
- The token never reaches a log line or a response: aiohttp's own 400 for a malformed request
  (which quotes the offending header, token included) is replaced by a fixed JSON one, every
  agent and aiohttp log record is scrubbed (security.SecretScrubber), the access log shows the
  path with secret parameters redacted, and a token in the query string is refused (400)
  before anything else.
- A kill names a pid; pids are reused. The agent remembers, for every (instance, worker id,
  pid) it served, the spawn time it first saw, and a kill without expect_spawn is checked
  against it: a worker respawned under the same pid is refused (409) like a changed pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
import resource
import signal
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from stackmon import __version__, redact
from stackmon.actions.base import ActionError, ActionResult, ActionTarget
from stackmon.agent import API_VERSION
from stackmon.agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from stackmon.agent.metrics import render_metrics
from stackmon.agent.security import (
    SCRUBBED_LOGGERS,
    ConnectionGuard,
    ConnectionLimits,
    RateLimitedLog,
    SecretScrubber,
)
from stackmon.config import HostConfig, Settings
from stackmon.hosts.base import Host
from stackmon.hosts.local import LocalHost
from stackmon.model import HostSnapshot, RequestKey
from stackmon.snapshot_json import SCHEMA, host_to_dict

log = logging.getLogger("stackmon.agent")

ACTOR_HEADER = "X-Stackmon-Actor"
MAX_BODY = 16 * 1024
BODY_TIMEOUT = 10.0  # seconds to receive a request body once the headers are in
REALM = 'Bearer realm="stackmon-agent"'
# Query parameters that would carry a credential: refused, never read (URLs end up in proxy
# logs, shell history and browser history; the token goes in the Authorization header only).
_CREDENTIAL_PARAM = re.compile(r"(?i)token|auth|passw|secret|bearer|api[_-]?key|credential|"
                               r"^key$|session")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """What an agent serves and how it guards it."""

    host: HostConfig
    settings: Settings
    token: str | None
    read_only: bool = False
    cache_s: float = 0.25
    audit_path: str | None = None  # None: the default audit log of the agent's user
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    # The flight recorder (stackmon.record): every interval's poll stored in this directory.
    record_dir: str | None = None
    retain_s: float | None = None


def encode_json(data: Any) -> bytes:
    """JSON as UTF-8, with lone surrogates (which a stats document can spell as "\\ud800" and
    which UTF-8 cannot encode) shown as U+FFFD instead of failing the whole answer."""
    text = json.dumps(data, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None,
                  ) -> web.Response:
    return web.Response(body=encode_json(data), status=status,
                        content_type="application/json", charset="utf-8", headers=headers)


def error_response(status: int, kind: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": kind, "message": message}, status, headers)


class SpawnMemory:
    """The spawn time the agent first served for each (instance index, worker id, pid).

    A client that sends only expect_pid names a process by a number the kernel reuses: when a
    worker dies and its respawn gets the same pid, the stats and the process agree with each
    other (new pid, new last_spawn) and nothing in the request tells them apart. What the
    client saw, it saw through this agent, so the agent keeps what it served: the first
    last_spawn it showed for that pid in that worker's slot. A kill then checks it like an
    expect_spawn. Bounded: the least recently seen entries go first.
    """

    def __init__(self, limit: int = 16384) -> None:
        self.limit = limit
        self._seen: OrderedDict[tuple[int, int, int], float] = OrderedDict()

    def observe(self, snap: HostSnapshot) -> None:
        for inst in snap.uwsgi:
            for w in inst.workers:
                if w.pid <= 0 or not w.last_spawn or not math.isfinite(w.last_spawn):
                    continue
                key = (inst.index, w.id, w.pid)
                if key in self._seen:
                    self._seen.move_to_end(key)
                else:
                    self._seen[key] = float(w.last_spawn)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)

    def spawn_of(self, index: int, worker_id: int, pid: int) -> float | None:
        return self._seen.get((index, worker_id, pid))

    def __len__(self) -> int:
        return len(self._seen)


class SnapshotCache:
    """At most one poll in flight and results reused for `max_age` seconds (single-flight)."""

    def __init__(self, collector: Host, max_age: float,
                 memory: SpawnMemory | None = None) -> None:
        self.collector = collector
        self.max_age = max_age
        self.memory = memory if memory is not None else SpawnMemory()
        self._snap: HostSnapshot | None = None
        self._body: bytes | None = None
        self._at = 0.0
        self._task: asyncio.Task[HostSnapshot] | None = None
        self.polls = 0

    def invalidate(self) -> None:
        self._snap, self._body = None, None

    def expires_in(self) -> float:
        """Seconds until get() polls again rather than handing back the cached poll."""
        if self._snap is None:
            return 0.0
        return max(0.0, self._at + self.max_age - time.monotonic())

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
            self._body = encode_json(doc)
        return self._body

    def _done(self, task: asyncio.Task[HostSnapshot]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is None:
            self._snap, self._body, self._at = task.result(), None, time.monotonic()
            self.memory.observe(self._snap)

    async def _poll(self) -> HostSnapshot:
        self.polls += 1
        limit = self.collector.settings.timeout * 2 + 1
        try:
            return await asyncio.wait_for(self.collector.poll(), limit)
        except TimeoutError:
            return self.collector.timed_out(time.time(), limit)


def _clean_actor(text: str) -> str:
    """A client-supplied name for the audit log: printable, short, never trusted for more."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text.strip())
    return cleaned[:64]


async def _read_body(request: web.Request) -> bytes:
    """The request body: at most MAX_BODY bytes (413, before reading when Content-Length says
    so) within BODY_TIMEOUT seconds (408), so a client trickling bytes holds nothing for long."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY,
                                            actual_size=request.content_length)
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ActionError("bad_request", "the request body is not valid JSON") from None
    except RecursionError:  # [[[[...]]]] 16 KB deep: the parser's stack, not ours, gives out
        raise ActionError("bad_request", "the request body is nested too deeply") from None
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


MAX_EXPECT_REQUESTS = 256  # a worker's cores: uWSGI's threads x async, far below this


def _request_keys(value: Any) -> list[RequestKey] | None:
    """A kill's `expect_requests`: [[core, core's request count, start epoch or null], ...]
    (stackmon.model.RequestKey), the requests the caller confirmed the kill for."""
    if value is None:
        return None
    why = ("expect_requests must be a list of [core, requests, started_at] (two integers "
           "from 0 and an epoch time or null)")
    if not isinstance(value, list) or len(value) > MAX_EXPECT_REQUESTS:
        raise ActionError("bad_request", why + f", at most {MAX_EXPECT_REQUESTS}")
    keys: list[RequestKey] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 3:
            raise ActionError("bad_request", why)
        core, count, start = item
        if any(isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**63
               for n in (core, count)):
            raise ActionError("bad_request", why)
        if start is not None and (isinstance(start, bool) or not isinstance(start, int | float)
                                  or not math.isfinite(start)):
            raise ActionError("bad_request", why)
        keys.append((core, count, float(start) if start is not None else None))
    return keys


def _number(text: str | None) -> Any:
    """A query parameter as a JSON number would be (for _finite_field), or the text itself
    when it is not one (so that the refusal names it)."""
    if text is None:
        return None
    try:
        return json.loads(text) if len(text) <= 40 else text
    except ValueError:
        return text


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
        # The agent serves this machine: the local implementation of the host interface.
        self.local = LocalHost(options.host, options.settings)
        self.collector: Host = self.local
        self.cache = SnapshotCache(self.collector, options.cache_s)
        self._token = options.token.encode("ascii") if options.token else None
        self.connections: ConnectionGuard | None = None  # set by serve()
        self.errors = RateLimitedLog(log)
        self.app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        # Ids of at most 9 digits: a 5,000-digit id is a 404 here, not an int() deep inside.
        self.app.add_routes([
            web.get("/v1/snapshot", self.snapshot),
            web.post(r"/v1/workers/{uwsgi_index:\d{1,9}}/{worker_id:\d{1,9}}/kill", self.kill),
            web.get(r"/v1/workers/{uwsgi_index:\d{1,9}}/{worker_id:\d{1,9}}/stack", self.stack),
            web.post(r"/v1/uwsgi/{uwsgi_index:\d{1,9}}/reload", self.reload),
            web.get("/metrics", self.metrics),
            web.get("/v1/history", self.history),
        ])
        self.app.on_cleanup.append(self._close)
        self.recorder: Any = None
        self.record_path: str | None = None
        if options.record_dir:
            self._open_recorder(options.record_dir)

    async def _close(self, _app: web.Application) -> None:
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
        await self.collector.aclose()

    # --- the flight recorder (--record DIR) -----------------------------------------------

    def _open_recorder(self, directory: str) -> None:
        """One recording per served host in DIR (created 0700); RecordingError if unusable."""
        import os
        from pathlib import Path

        from stackmon.record.record_command import settings_meta
        from stackmon.record.store import Recorder, ThreadedRecorder, host_recording

        path = host_recording(directory, self.options.host.name)
        audit = Path(self.options.audit_path) if self.options.audit_path else None
        if audit is None:
            from stackmon.actions.audit import default_audit_path

            audit = default_audit_path()
        self.recorder = ThreadedRecorder(Recorder(
            path, retain_s=self.options.retain_s,
            settings=settings_meta(self.options.settings), audit_path=os.fspath(audit)))
        self.record_path = str(path)

    async def record_loop(self) -> None:
        """A poll every interval, stored (shared with clients through the cache)."""
        interval = self.options.settings.interval
        last: HostSnapshot | None = None
        while True:
            started = time.monotonic()
            snap = await self.cache.get()
            if snap is last:
                # The cache handed the same poll back (an interval no longer than its max
                # age): it was stored twice and the history showed it twice. Ask again once
                # it has expired.
                await asyncio.sleep(self.cache.expires_in() + 0.001)
                continue
            self.recorder.submit(snap)
            last = snap
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def history(self, request: web.Request) -> web.Response:
        """GET /v1/history?from=&to= (epoch seconds, both optional): the recorded polls of that
        period, oldest first, at most HISTORY_POLLS of them or HISTORY_BYTES of JSON (then
        "truncated": true and "next_from" to ask for the rest), with its events and actions."""
        if self.record_path is None:
            raise ActionError("not_found", "this agent does not record (start it with "
                                           "--record DIR)")
        bounds = []
        for key in ("from", "to"):
            value = _finite_field({key: _number(request.query.get(key))}, key,
                                  "a time in epoch seconds")
            bounds.append(value)
        body = await asyncio.to_thread(_read_history, self.record_path, bounds[0], bounds[1])
        return web.Response(body=body, content_type="application/json", charset="utf-8")

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
        transport = request.transport
        if self.connections is not None:
            self.connections.request_started(transport)
        try:
            return await self._answer(request, handler)
        finally:
            if self.connections is not None:
                self.connections.request_done(transport)

    async def _answer(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                      ) -> web.StreamResponse:
        if any(_CREDENTIAL_PARAM.search(key) for key in request.query):
            return error_response(400, "bad_request", "credentials in the URL are refused "
                                  "(they end up in logs and histories): send the token as "
                                  "Authorization: Bearer <token>")
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
        except web.HTTPException as exc:  # 404, 405, 408, 413 from aiohttp or _read_body
            kind = {404: "not_found", 405: "method_not_allowed", 408: "timeout",
                    413: "too_large"}.get(exc.status, "bad_request")
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(exc.status, kind, exc.reason, headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # One line, rate-limited (the scrubber removes any secret from it); the traceback
            # at debug level only: a client able to trigger this must not be able to flood.
            self.errors(f"internal:{type(exc).__name__}",
                        f"error serving {request.method} {redact.clean(request.path)[:200]}: "
                        f"{type(exc).__name__}: {str(exc)[:200]}", logging.ERROR)
            log.debug("traceback", exc_info=True)
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
        # The instance as the served snapshots number it: configured ones, then an emperor's
        # vassals (LocalHost.target resolves both, or refuses not_found).
        target = self.local.target(index)
        read_only = self.options.read_only or host.read_only
        if not read_only and self._token is None:
            raise ActionError("read_only", "this agent runs without a token: actions are "
                                           "disabled (give it --token-file)")
        return replace(target, read_only=read_only, timeout=self.options.settings.timeout)

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

    def _audit_failure(self, exc: OSError, audit: Any) -> web.Response:
        """503 naming the cause: the audit log could not take a record. AuditWriteError says
        itself whether the action went ahead; any other OSError here comes from the log before
        the action (the action code turns its own OS errors into refusals)."""
        if hasattr(exc, "outcome"):
            message = str(exc)
        else:
            reason = getattr(exc, "reason", None) or exc.strerror or str(exc) or "error"
            message = (f"audit log {getattr(audit, 'path', '?')} cannot be written: {reason}; "
                       "no action taken")
        self.errors("audit", message, logging.ERROR)
        return error_response(503, "audit", message)

    async def kill(self, request: web.Request) -> web.Response:
        body = _parse_body(await _read_body(request))
        sig = body.get("signal", "TERM")
        if sig not in ("TERM", "KILL"):
            raise ActionError("bad_request", "signal must be \"TERM\" or \"KILL\"")
        expect_pid = _int_field(body, "expect_pid", required=True) or 0
        spawn = _finite_field(body, "expect_spawn", "a number (epoch seconds)")
        usr2 = body.get("usr2", False)
        if not isinstance(usr2, bool):
            raise ActionError("bad_request", "usr2 must be true or false")
        stuck_in = body.get("stuck_in")
        if stuck_in is not None and not isinstance(stuck_in, str):
            raise ActionError("bad_request", "stuck_in must be a string")
        expect_requests = _request_keys(body.get("expect_requests"))
        target = self._target(request)
        worker_id = int(request.match_info["worker_id"])
        remembered = None
        if spawn is None:
            remembered = self.cache.memory.spawn_of(target.index, worker_id, expect_pid)
        from stackmon.actions.kill import kill_worker

        audit = self._audit()
        try:
            result = await kill_worker(target, worker_id, expect_pid, sig,
                                       expect_spawn=spawn if spawn is not None else remembered,
                                       usr2_first=usr2, audit=audit,
                                       actor=self._actor(request),
                                       stack={"stuck_in": redact.clean(stuck_in[:300])}
                                       if stuck_in else None,
                                       expect_requests=expect_requests)
        except ActionError as exc:
            # Among the host's events (served with its snapshots), as a local kill is.
            self.local.record_kill(target.index, worker_id, expect_pid, sig, refused=exc,
                                   expect_requests=expect_requests)
            if remembered is not None and exc.kind == "stale":
                raise ActionError("stale", f"{exc.message} (this agent served pid {expect_pid} "
                                           f"as worker {worker_id} spawned at {remembered:.0f}; "
                                           "if you mean a later process with that pid, send its "
                                           "last_spawn as expect_spawn)") from None
            raise
        except OSError as exc:
            return self._audit_failure(exc, audit)
        finally:
            self.cache.invalidate()
        self.local.record_kill(target.index, worker_id, expect_pid, sig, result=result)
        return self._result(result)

    async def stack(self, request: web.Request) -> web.Response:
        """GET .../stack?expect_pid=n[&locals=1][&expect_spawn=t]: the `stackmon stack --json`
        answer. Checked like a kill (the pid the caller saw, a worker of the kernel-confirmed
        master, the spawn time this agent served for it), allowed in read-only mode (it
        changes nothing) but never without a token: it shows what a worker holds in memory,
        and a tokenless agent answers every local user."""
        from stackmon.actions.stack import stack_to_dict, trace_worker

        query = request.query
        pid_text, locals_text = query.get("expect_pid", ""), query.get("locals", "0")
        if not (pid_text.isdigit() and len(pid_text) <= 9 and int(pid_text) > 0):
            raise ActionError("bad_request", "expect_pid is required: the pid you saw, as a "
                                             "positive integer (a stack is never read from a "
                                             "process that replaced it)")
        if locals_text not in ("0", "1"):
            raise ActionError("bad_request", "locals must be 0 or 1")
        spawn = _finite_field({"expect_spawn": _number(query.get("expect_spawn"))},
                              "expect_spawn", "a number (epoch seconds)")
        if self._token is None:
            raise ActionError("permission", "this agent runs without a token: it serves no "
                                            "stacks (give it --token-file)")
        host = self.options.host
        index, worker_id, expect_pid = (int(request.match_info["uwsgi_index"]),
                                        int(request.match_info["worker_id"]), int(pid_text))
        if not 0 <= index < len(host.uwsgi):
            raise ActionError("not_found", f"this agent has {len(host.uwsgi)} uWSGI "
                                           f"instance(s); there is no instance {index}")
        target = ActionTarget(host=host.name, address=host.uwsgi[index], index=index,
                              read_only=True, timeout=self.options.settings.timeout)
        if spawn is None:
            spawn = self.cache.memory.spawn_of(index, worker_id, expect_pid)
        result = await trace_worker(target, worker_id, expect_pid,
                                    with_locals=locals_text == "1", expect_spawn=spawn)
        return json_response(stack_to_dict(result))

    async def reload(self, request: web.Request) -> web.Response:
        body = _parse_body(await _read_body(request))
        mode = body.get("mode", "graceful")
        if mode not in ("graceful", "chain"):
            raise ActionError("bad_request", "mode must be \"graceful\" or \"chain\"")
        target = self._target(request)
        from stackmon.actions.reload import reload_uwsgi

        audit = self._audit()
        try:
            result = await reload_uwsgi(target, mode, audit=audit, actor=self._actor(request))
        except OSError as exc:
            return self._audit_failure(exc, audit)
        finally:
            self.cache.invalidate()
        return self._result(result)

    @staticmethod
    def _result(result: ActionResult) -> web.Response:
        return json_response({"ok": result.ok, "message": result.message, "data": result.data})


HISTORY_POLLS = 3600
HISTORY_BYTES = 32 * 1024 * 1024


def _read_history(path: str, start: float | None, end: float | None) -> bytes:
    """The /v1/history answer, read from the recording in a thread (decoding is CPU)."""
    from stackmon.record.store import Recording, RecordingError

    try:
        recording = Recording.open(path)
    except RecordingError as exc:
        raise ActionError("failed", f"the recording cannot be read: {exc}") from None
    try:
        refs = recording.polls(start, end)
        parts: list[bytes] = []
        size, truncated, next_from = 0, False, None
        for ref in refs:
            if len(parts) >= HISTORY_POLLS or size >= HISTORY_BYTES:
                truncated, next_from = True, ref.taken_at
                break
            try:
                raw = recording.doc_bytes(ref.id)
            except RecordingError:
                continue
            parts.append(raw)
            size += len(raw)
        last = refs[-1].taken_at if refs and not truncated else next_from
        events = [{"host": e.host, "at": e.at, "source": e.source, "kind": e.kind,
                   "worker": e.worker, "pid": e.pid, "uri": e.uri, "text": e.text}
                  for e in recording.events(start, last if truncated else end)]
        actions = [{"host": a.host, "at": a.at, "action": a.action, "outcome": a.outcome,
                    "user": a.actor, "worker_id": a.worker_id, "target_pid": a.target_pid,
                    "uri": a.uri, "message": a.message}
                   for a in recording.actions(start, last if truncated else end)]
        head = encode_json({"schema": SCHEMA, "from": start, "to": end,
                            "truncated": truncated, "next_from": next_from,
                            "problems": recording.problems[:10],
                            "events": events, "actions": actions})
    finally:
        recording.close()
    # The stored polls are already JSON (host objects): spliced in, not parsed and re-encoded.
    return head[:-1] + b', "polls": [' + b",".join(parts) + b"]}"


# --- aiohttp's own paths: malformed requests and the access log ----------------------------

_bad_requests = RateLimitedLog(log)


class SafeRequestHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, with its error answer replaced.

    aiohttp answers a request it cannot parse with a text/plain 400 that quotes the offending
    bytes, and logs them with a traceback at ERROR level: a header `Authorization: Bearer
    <token>\\x01` put the whole token in both. Here the answer is a fixed JSON body naming the
    kind of error only, and the log one rate-limited line without any request bytes.
    """

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        what = type(exc).__name__ if exc is not None else f"HTTP {status}"
        remote = getattr(request, "remote", None) or "?"
        _bad_requests(f"bad:{what}", f"malformed request from {remote} answered {status} "
                                     f"({what})", logging.WARNING if status < 500
                      else logging.ERROR)
        writer = getattr(request, "writer", None)
        if writer is not None and getattr(writer, "output_size", 0) > 0:
            raise ConnectionError("a response was already sent")  # as aiohttp does
        if status >= 500:
            resp = error_response(status, "internal", "internal error in the agent (see its log)")
        else:
            resp = error_response(status, "bad_request", f"malformed HTTP request ({what})")
        resp.force_close()
        return resp


class AccessLog(AbstractAccessLogger):
    """`--access-log` lines: client, method, path with secret parameters redacted and control
    characters made visible, status, size, seconds. Never the raw request line."""

    def log(self, request: Any, response: Any, time: float) -> None:
        path = redact.clean(str(getattr(request, "raw_path", "?")))
        if len(path) > 300:
            path = path[:300] + "..."
        self.logger.info("%s %s %s %s %s %.3fs", request.remote,
                         redact.visible(str(request.method))[:16], path, response.status,
                         response.body_length, time)


ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'  # kept for callers; AccessLog does the formatting


def _fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(options: AgentOptions, listen: tuple[str, int],
                ssl_context: ssl.SSLContext | None = None, *,
                ready: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None, access_log: bool = False) -> None:
    """Run the agent until SIGTERM/SIGINT (or `stop` is set), then close cleanly.

    `ready` receives the URL once the socket listens (the CLI prints it; tests wait on it).
    Binding errors raise OSError for the caller to report. The listening socket is ours, not
    aiohttp's site: every connection passes the ConnectionGuard before aiohttp's protocol is
    even created.
    """
    agent = AgentApp(options)
    limits = options.limits
    handler_kwargs: dict[str, Any] = {
        "keepalive_timeout": limits.idle_timeout,
        "access_log_class": AccessLog,
        "access_log": logging.getLogger("stackmon.agent.access") if access_log else None,
        "access_log_format": ACCESS_LOG_FORMAT,
    }
    runner = web.AppRunner(agent.app, handle_signals=False, shutdown_timeout=2.0,
                           **handler_kwargs)
    await runner.setup()
    loop = asyncio.get_running_loop()
    guard = ConnectionGuard(limits, _fd_limit(), log)
    agent.connections = guard
    scrubber = SecretScrubber((options.token,) if options.token else ())
    for name in SCRUBBED_LOGGERS:
        logging.getLogger(name).addFilter(scrubber)
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(guard.note.loop_exception_handler)
    stop = stop or asyncio.Event()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    server: asyncio.Server | None = None
    recording: asyncio.Task[None] | None = None
    manager = runner.server

    def make_inner() -> asyncio.Protocol:
        return SafeRequestHandler(manager, loop=loop, **handler_kwargs)  # type: ignore[arg-type]

    try:
        host, port = listen
        server = await loop.create_server(
            guard.protocol_factory(make_inner), host, port, ssl=ssl_context,
            reuse_address=True, backlog=100,
            ssl_handshake_timeout=limits.header_timeout if ssl_context else None)
        guard.start()
        if agent.recorder is not None:
            recording = asyncio.create_task(agent.record_loop(), name="recorder")
        if ready is not None:
            scheme = "https" if ssl_context else "http"
            shown = f"[{host}]" if ":" in host else host
            ready(f"{scheme}://{shown}:{port}")
        await stop.wait()
    finally:
        if recording is not None:
            recording.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recording
        for sig in installed:
            loop.remove_signal_handler(sig)
        if server is not None:
            server.close()
        await guard.stop()
        await runner.cleanup()
        loop.set_exception_handler(previous_handler)
        for name in SCRUBBED_LOGGERS:
            logging.getLogger(name).removeFilter(scrubber)

"""The remote side of the agent API: polling a host through its agent, and acting through it.

- `AgentSource`: what AgentHost (stackmon.hosts) uses for a host with `agent = URL`: GET
  /v1/snapshot with the token from the host's `token_file`, read once and checked like the
  agent checks its own (owner-only). Every failure is a SourceError with a reason a user can
  act on (refused token, connection refused, no answer within the timeout), never an exception.
- `remote_kill()` / `remote_reload()`: the actions, with the agent's refusals mapped back to
  ActionError kinds (stale pid 409 -> "stale", not a worker 403 -> "not_worker", ...), so the
  CLI and the TUI treat a remote refusal exactly like a local one.
- `remote_stack()`: a worker's Python stack (GET /v1/workers/{i}/{id}/stack), refusals
  mapped like the actions'.
- `fetch_remote_snapshot()`: one snapshot, for confirmations and reload progress
  (stackmon.actions.dispatch, used by the CLI's kill/reload and the TUI).

Each AgentSource owns its own connections (keep-alive to its one agent): a black-holed host
then holds only its own connections, never a slot another host needs. Polls go through
`SnapshotClient`, an aiohttp session per agent (a fleet of 500 agents polled every second could
not afford httpx's per-request cost, bench/bench_fleet.py); the actions, rare and varied, keep
httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

import httpx
import orjson

from stackmon import __version__, redact
from stackmon.actions.base import ActionError, ActionResult, RefusalKind
from stackmon.addresses import parse_agent_url
from stackmon.agent.security import client_ssl_context, read_token_file
from stackmon.config import ConfigError, HostConfig, Settings
from stackmon.model import HostSnapshot, RequestKey, SourceError
from stackmon.redact import visible
from stackmon.snapshot_json import host_from_dict

if TYPE_CHECKING:
    import aiohttp
    import yarl

    from stackmon.actions.stack import StackResult

ACTOR_HEADER = "X-Stackmon-Actor"
SNAPSHOT_PATH = "/v1/snapshot"
# A kill waits for TERM (3 s), maybe KILL (2 s) and the respawn (up to 6 s) on the agent.
ACTION_TIMEOUT = 30.0
# Clocks further apart than this make request ages shown here wrong: said in the errors.
SKEW_WARNING_S = 5.0
_KINDS = frozenset(get_args(RefusalKind))
# Replies are read up to this many bytes (like the uWSGI stats source): an agent, or whatever
# answers at its address, streaming an endless body must not grow this process without bound.
MAX_REPLY_BYTES = 64 * 1024 * 1024
# A snapshot is ~8 levels deep; JSON nested deeper is refused before anything walks it.
MAX_JSON_DEPTH = 64


class ReplyError(ValueError):
    """A reply that is too large or cannot be decoded; str() is the reason for the user."""


async def _read_body(resp: httpx.Response, limit: int = MAX_REPLY_BYTES) -> bytes:
    """The (decoded) body, refused as soon as it passes `limit` bytes, so that memory stays
    bounded whatever the far side sends."""
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ReplyError(f"the answer is {int(declared)} bytes, over the {limit}-byte limit")
    body = bytearray()
    async for chunk in resp.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise ReplyError(f"the answer is over the {limit}-byte limit")
    return bytes(body)


def _json_depth(value: Any) -> int:
    """Nesting depth of a decoded document (up to MAX_JSON_DEPTH + 1), walked level by level
    without recursion. On the poll path of every agent host: exact type checks and one list
    per level, ~7x cheaper than a stack of (item, depth) pairs (bench/bench_fleet.py)."""
    depth = 0
    level = [value] if type(value) in (dict, list) else []
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        deeper: list[Any] = []
        add = deeper.append
        for item in level:
            for child in (item.values() if type(item) is dict else item):
                kind = type(child)
                if kind is dict or kind is list:
                    add(child)
        level = deeper
    return max(depth, 1)


def _loads(body: bytes) -> Any:
    """orjson first (half json.loads's time on a snapshot, paid on every poll of every agent
    host). It is stricter (UTF-8 only, no NaN, no lone surrogates, 64-bit integers, 1024
    levels), so what it takes json.loads would decode to the same value, and what it refuses
    gets json.loads's own verdict."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except RecursionError:
        raise ReplyError("the answer is JSON nested too deeply") from None
    except ValueError:
        raise ReplyError("the answer is not valid JSON") from None


def decode_json(body: bytes) -> Any:
    """The decoded JSON with nesting bounded: json.loads recurses per level, so [[[[... 100,000
    deep would be a RecursionError (a traceback) instead of a reason, and what reads the
    document must not meet more than MAX_JSON_DEPTH levels."""
    value = _loads(body)
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise ReplyError(f"the answer is JSON nested more than {MAX_JSON_DEPTH} deep")
    return value


def _reason(exc: BaseException) -> str:
    """The most specific human reason in an httpx/OS exception chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip()
    # httpx quotes the URL in some messages (an unsupported scheme, an invalid URL).
    return redact.clean(text) if text else type(exc).__name__


@functools.cache
def _plain_context() -> ssl.SSLContext:
    """One default context for every http:// client (see new_http_client)."""
    return ssl.create_default_context()


def new_http_client(url: str, timeout: float, *, pool: int = 2) -> httpx.AsyncClient:
    """An HTTP client for one agent: no proxy from the environment (a monitor must reach the
    host it names), TLS verified against the system CAs plus $STACKMON_AGENT_CA."""
    # An http:// client never uses its SSL context, but httpx builds one from the system store
    # for verify=True (~25 ms each: 12 s of CPU for 500 agents): hand it a shared one instead.
    verify: Any = client_ssl_context() if url.startswith("https://") else _plain_context()
    return httpx.AsyncClient(
        trust_env=False, verify=verify, timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        # identity: a compressed reply could inflate a thousandfold between two size checks.
        headers={"User-Agent": f"stackmon/{__version__}", "Accept-Encoding": "identity"},
    )


# --- the poll path: aiohttp, one session per agent ---------------------------------------------

# Connections per agent, kept alive between polls (a poll and an action's fresh snapshot may
# overlap; a third exchange waits for one of them, within its caller's deadline).
KEEP_ALIVE = 2
# An answer's status line and each header line are read up to this many bytes, and at most
# MAX_HEADERS lines: its head stays under ~512 KiB whatever the far side sends. The agent's own
# heads are a few hundred bytes.
MAX_LINE_BYTES = 8190
MAX_HEADERS = 64


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer, read whole (within the caller's byte limit)."""

    status_code: int
    reason_phrase: str
    content: bytes


class _Closed(ConnectionError):
    """The agent closed the connection before its answer was complete."""


class SnapshotClient:
    """GETs from one agent over keep-alive HTTP/1.1 through aiohttp: the poll path.

    Why aiohttp (already the agent server's library) rather than httpx, which the actions use:
    polling 500 agents every second, httpx's request machinery cost ~0.55 ms of CPU per poll,
    aiohttp's ~0.12 ms (its C parser), which keeps a fleet of 500 within its CPU budget
    (bench/bench_fleet.py). The guarantees are set here, not left to defaults: one session and
    a KEEP_ALIVE-connection pool per agent (a black-holed agent holds only its own); no proxy
    from the environment (a monitor must reach the host it names), no cookies, no redirects;
    TLS verified like every agent client (system CAs plus $STACKMON_AGENT_CA, hostname
    checked); status and header lines bounded (MAX_LINE_BYTES, MAX_HEADERS); the body read up
    to the caller's limit whether it has a Content-Length (refused before reading when it
    declares more), is chunked or runs to the close; no compression asked for or accepted (a
    compressed body could inflate a thousandfold past the cap). The deadline of the whole
    exchange is the caller's (asyncio.timeout): whatever interrupts an exchange drops its
    connection, whose state is then unknown. aiohttp sends an idempotent GET again, once, when
    the agent closed a connection instead of answering (a kept-alive one it had closed while
    idle, usually). Its exceptions leave here as the OSError / ReplyError / ValueError that
    AgentSource.fetch turns into reasons.
    """

    def __init__(self, url: str) -> None:
        base = parse_agent_url(url)  # AddressError (a ValueError) saying why it is not usable
        self.tls = base.startswith("https://")
        self.base = base
        self._urls: dict[str, yarl.URL] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _url(self, path: str) -> yarl.URL:
        """The URL of `path` (after the agent URL's own path), built once per path."""
        url = self._urls.get(path)
        if url is None:
            import yarl

            if len(self._urls) >= 8:
                self._urls.clear()
            url = self._urls[path] = yarl.URL(self.base + path)
        return url

    def _open(self) -> aiohttp.ClientSession:
        """The agent's session, made on first use (in the running loop): ConfigError when
        $STACKMON_AGENT_CA cannot be loaded, and then again at the next poll."""
        if self._closed:
            raise _Closed("the client is closed")
        if self._session is None:
            import aiohttp  # on the first poll: ~0.3 s to import, not paid by local-only runs

            ctx: ssl.SSLContext | bool = client_ssl_context() if self.tls else False
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=KEEP_ALIVE, ssl=ctx),
                headers={"User-Agent": f"stackmon/{__version__}", "Accept": "application/json",
                         "Accept-Encoding": "identity"},
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                # No timeout of aiohttp's own: the whole exchange's deadline is the caller's.
                timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_read=None,
                                              sock_connect=None),
                max_line_size=MAX_LINE_BYTES,
                max_field_size=MAX_LINE_BYTES, max_headers=MAX_HEADERS)
        return self._session

    async def get(self, path: str, headers: dict[str, str],
                  limit: int = MAX_REPLY_BYTES) -> Reply:
        """GET `path` (after the URL's own path). OSError when the agent cannot be reached or
        drops the connection, ReplyError for an answer too large or not HTTP/1.x."""
        import aiohttp

        session = self._open()
        try:
            async with session.get(self._url(path), headers=headers,
                                   allow_redirects=False) as resp:
                try:
                    return await _read_answer(resp, limit)
                except BaseException:
                    resp.close()  # a bad answer, a timeout, a cancellation: state unknown
                    raise
        except aiohttp.ClientError as exc:
            raise _translated(exc) from None

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(OSError, TimeoutError):  # a TLS close waits for the peer
                async with asyncio.timeout(1):
                    await session.close()


async def _read_answer(resp: aiohttp.ClientResponse, limit: int) -> Reply:
    """The answer whole: refused when compressed, or as soon as it is known to pass `limit`."""
    coding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if coding != "identity":
        raise ReplyError(f"the answer is compressed ({visible(coding)}), which was not asked for")
    framing = resp.headers.get("Transfer-Encoding")
    if framing is not None and framing.strip().lower() != "chunked":
        raise ReplyError("the answer has a Transfer-Encoding other than chunked")
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise ReplyError(f"the answer is {declared} bytes, over the {limit}-byte limit")
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise ReplyError(f"the answer is over the {limit}-byte limit")
    return Reply(resp.status, resp.reason or "", bytes(body))


def _translated(exc: aiohttp.ClientError) -> Exception:
    """aiohttp's exception as what AgentSource.fetch gives a reason for."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ssl.SSLError) or not os_error.errno:
            return os_error
        # asyncio says "Connect call failed (address)": say why instead
        return OSError(os_error.errno, os.strerror(os_error.errno))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return _Closed("the agent closed the connection without answering")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return _Closed("the agent closed the connection in the middle of its answer")
    if isinstance(exc, aiohttp.ClientResponseError):  # what aiohttp's parser refused
        return ReplyError(_parser_reason(exc))
    if isinstance(exc, OSError):
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno or 0)) \
            if exc.errno else _Closed(redact.clean(str(exc) or type(exc).__name__))
    if isinstance(exc, ValueError):  # InvalidURL
        return ValueError(f"bad agent URL: {redact.clean(str(exc))}")
    return _Closed(redact.clean(str(exc) or type(exc).__name__))


def _parser_reason(exc: aiohttp.ClientResponseError) -> str:
    """Why aiohttp's parser refused an answer, in words: the first line of its message (the
    rest points at the far side's bytes), cleaned."""
    from aiohttp.http_exceptions import LineTooLong

    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, LineTooLong):
        seen = seen.__cause__
    if seen is not None:
        return f"the answer has a line over {MAX_LINE_BYTES} bytes"
    message = (exc.message or type(exc).__name__).splitlines()[0].rstrip(":. ")
    if message == "Too many headers received":
        return f"the answer has over {MAX_HEADERS} header lines"
    return f"the answer is not HTTP/1.x ({redact.clean(message)})"


class AgentSource:
    """Polls one agent's GET /v1/snapshot (one per AgentHost)."""

    def __init__(self, host: HostConfig, settings: Settings) -> None:
        if not host.agent:
            raise ValueError(f"host {host.name!r} has no agent URL")
        self.host = host
        self.settings = settings
        self.url = host.agent.rstrip("/")
        # Shown in errors, the JSON and the TUI: never the URL's secrets (config.py refuses
        # user:password@, this is the second line of defence for a HostConfig built in code).
        self.source = f"agent {redact.clean(self.url)}"
        self._token: str | None = None
        self._client: SnapshotClient | None = None

    def token(self) -> str | None:
        """The token, read from token_file on first use (and again after a failure, so a
        fixed file is picked up without a restart). None when the host names no file."""
        if self._token is None and self.host.token_file is not None:
            self._token = read_token_file(self.host.token_file,
                                          f"token file of host {self.host.name!r}")
        return self._token

    def headers(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def http(self) -> SnapshotClient:
        """The agent's keep-alive connections; AddressError (a ValueError) for a bad URL."""
        if self._client is None:
            self._client = SnapshotClient(self.url)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def fetch(self) -> dict[str, Any] | SourceError:
        """The agent's host object, or a SourceError saying why not."""
        try:
            headers = self.headers()
            http = self.http
        except (ConfigError, ValueError) as exc:  # a token file, a URL (both say which)
            return SourceError(self.source, str(exc))
        # Twice the timeout for the whole exchange (connect, TLS, request, answer): enough for
        # an agent whose own source just waited out its timeout, and a trickle ends there.
        limit = self.settings.timeout * 2
        try:
            async with asyncio.timeout(limit):
                resp = await http.get(SNAPSHOT_PATH, headers)
        except TimeoutError:
            return SourceError(self.source, f"no answer within {limit:g} s")
        except ReplyError as exc:
            return SourceError(self.source, f"refused the agent's answer: {exc}")
        except OSError as exc:  # refused, reset, unknown name, TLS verification
            return SourceError(self.source, f"cannot connect: {_reason(exc)}")
        except (ConfigError, ValueError) as exc:  # $STACKMON_AGENT_CA unusable, a bad header
            return SourceError(self.source, str(exc))
        if resp.status_code != 200:
            return SourceError(self.source, _http_problem(resp, resp.content, self.host))
        try:
            doc = decode_json(resp.content)
        except ReplyError as exc:
            return SourceError(self.source, f"refused the agent's answer: {exc}")
        if not isinstance(doc, dict) or "name" not in doc:
            return SourceError(self.source, "the agent's answer is not a snapshot host object")
        return doc

    def to_snapshot(self, doc: dict[str, Any], received_at: float) -> HostSnapshot | SourceError:
        """The host object as a HostSnapshot under the local name from the hosts file."""
        doc["name"] = self.host.name
        if self.host.group is not None:  # groups are the hosts file's, like names
            doc["group"] = self.host.group
        try:
            snap = host_from_dict(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return SourceError(self.source, f"the agent's snapshot cannot be read ({exc!r})")
        skew = received_at - snap.taken_at
        if abs(skew) > SKEW_WARNING_S + self.settings.timeout * 2:
            snap = _with_error(snap, SourceError(
                "clock", f"this host's clock and the agent's differ by about {skew:+.0f} s: "
                         "request ages and staleness are off by as much"))
        return snap


def _with_error(snap: HostSnapshot, err: SourceError) -> HostSnapshot:
    from dataclasses import replace

    return replace(snap, errors=(*snap.errors, err))


def _error_body(resp: httpx.Response | Reply, content: bytes) -> tuple[str, str]:
    """(kind, message) from an agent's JSON error, or from the status line.

    Both are the far side's text, shown in the TUI, on stderr and in the audit log: cleaned
    (control characters visible, secrets redacted) like any text from outside.
    """
    try:
        body = decode_json(content)
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return redact.clean(str(body.get("error", ""))), redact.clean(body["message"])
    except ReplyError:
        pass
    return "", redact.clean(f"HTTP {resp.status_code} {resp.reason_phrase}".strip())


def _http_problem(resp: Reply, content: bytes, host: HostConfig) -> str:
    if resp.status_code == 401:
        where = f"in {host.token_file}" if host.token_file else "(no token_file configured)"
        return f"the agent refused the token {where} (401)"
    _kind, message = _error_body(resp, content)
    return f"the agent answered {resp.status_code}: {message}"


# --- actions through an agent -----------------------------------------------------------------


def _actor() -> str:
    from stackmon.actions.audit import current_actor

    return f"{current_actor()}@{os.uname().nodename}"


async def _post(host: HostConfig, path: str, body: dict[str, Any], *, timeout: float,
                action_timeout: float, actor: str,
                client: httpx.AsyncClient | None) -> ActionResult:
    if not host.agent:
        raise ActionError("not_local", f"host {host.name!r} has no agent")
    url = host.agent.rstrip("/")
    shown = redact.clean(url)
    try:
        token = read_token_file(host.token_file, f"token file of host {host.name!r}") \
            if host.token_file else None
    except ConfigError as exc:
        raise ActionError("permission", f"{exc}; nothing was done") from None
    headers = {ACTOR_HEADER: actor or _actor()}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    own = client is None
    http = client or new_http_client(url, timeout, pool=1)
    lost = ("the action may or may not have been carried out; check the next snapshot")
    try:
        # httpx's timeouts are per read: a trickling body needs a deadline for the whole.
        async with asyncio.timeout(action_timeout + timeout), \
                http.stream("POST", url + path, json=body, headers=headers,
                            timeout=httpx.Timeout(action_timeout, connect=timeout)) as resp:
            content = await _read_body(resp)
    except httpx.ConnectTimeout:
        raise ActionError("gone", f"cannot reach the agent at {shown}: no answer within "
                                  f"{timeout:g} s; nothing was done") from None
    except httpx.ConnectError as exc:
        raise ActionError("gone", f"cannot reach the agent at {shown}: {_reason(exc)}; "
                                  "nothing was done") from None
    except httpx.HTTPError as exc:
        raise ActionError("failed", f"the agent at {shown} did not answer ({_reason(exc)}): "
                                    f"{lost}") from None
    except TimeoutError:
        raise ActionError("failed", f"the agent at {shown} did not answer within "
                                    f"{action_timeout + timeout:g} s: {lost}") from None
    except ReplyError as exc:
        raise ActionError("failed", f"refused the answer of the agent at {shown} ({exc}): "
                                    f"{lost}") from None
    except (httpx.InvalidURL, ValueError) as exc:  # raised before anything is sent
        raise ActionError("bad_request", f"bad agent URL {shown}: {_reason(exc)}; nothing was "
                                         "done") from None
    finally:
        if own:
            await http.aclose()
    if resp.status_code == 401:
        raise ActionError("permission", f"the agent at {shown} refused the token "
                                        f"({host.token_file or 'no token_file'}); nothing was "
                                        "done")
    if resp.status_code != 200:
        kind, message = _error_body(resp, content)
        if kind not in _KINDS:
            kind = "failed" if resp.status_code >= 500 else "bad_request"
        raise ActionError(kind, message)  # type: ignore[arg-type]
    try:
        doc = decode_json(content)
        return ActionResult(ok=bool(doc["ok"]), message=redact.clean(str(doc.get("message", ""))),
                            data=dict(doc.get("data") or {}))
    except ReplyError as exc:
        raise ActionError("failed", f"the agent at {shown} sent an unreadable answer ({exc}); "
                                    "check the next snapshot") from None
    except (ValueError, KeyError, TypeError):
        raise ActionError("failed", f"the agent at {shown} sent an unreadable answer; check the "
                                    "next snapshot") from None


async def remote_kill(host: HostConfig, uwsgi_index: int, worker_id: int, expect_pid: int,
                      signal: str = "TERM", *, expect_spawn: float | None = None,
                      usr2_first: bool = False, timeout: float = 2.0,
                      action_timeout: float = ACTION_TIMEOUT, actor: str = "",
                      client: httpx.AsyncClient | None = None,
                      stuck_in: str | None = None,
                      expect_requests: Sequence[RequestKey] | None = None) -> ActionResult:
    """Kill worker `worker_id` of instance `uwsgi_index` on `host` through its agent.
    `stuck_in`: where the worker's stack was captured stuck (for the agent's audit record).

    Refusals raise ActionError with the agent's kind (stale, not_worker, gone, read_only, ...);
    an unreachable agent raises kind "gone" (nothing was done), a lost answer kind "failed".
    """
    body: dict[str, Any] = {"signal": signal, "expect_pid": expect_pid}
    if expect_spawn is not None:
        body["expect_spawn"] = expect_spawn
    if usr2_first:
        body["usr2"] = True
    if stuck_in:
        body["stuck_in"] = stuck_in
    if expect_requests:
        body["expect_requests"] = [list(k) for k in expect_requests]
    result = await _post(host, f"/v1/workers/{uwsgi_index}/{worker_id}/kill", body,
                         timeout=timeout, action_timeout=action_timeout, actor=actor,
                         client=client)
    if expect_requests and "requests_checked" not in result.data:
        # An agent older than the check ignores the field: the kill went through unchecked.
        result = dataclasses.replace(result, message=result.message + " (this agent is older "
                                     "than the check that the requests you confirmed were "
                                     "still running at the kill)")
    return result


async def remote_reload(host: HostConfig, uwsgi_index: int, mode: str = "graceful", *,
                        timeout: float = 2.0, action_timeout: float = ACTION_TIMEOUT,
                        actor: str = "", client: httpx.AsyncClient | None = None,
                        ) -> ActionResult:
    """Start a graceful or chain reload of instance `uwsgi_index` on `host` via its agent."""
    return await _post(host, f"/v1/uwsgi/{uwsgi_index}/reload", {"mode": mode},
                       timeout=timeout, action_timeout=action_timeout, actor=actor,
                       client=client)


# A dump takes ~15 ms (100 ms for 64 threads with locals); the agent gives py-spy 10 s.
STACK_TIMEOUT = 15.0
# A stack answer with locals of 64 threads is a few MB at most (the agent caps py-spy at 16 MiB).
MAX_STACK_REPLY = 32 * 1024 * 1024


async def remote_stack(host: HostConfig, uwsgi_index: int, worker_id: int, expect_pid: int,
                       *, with_locals: bool = False, expect_spawn: float | None = None,
                       timeout: float = 2.0, action_timeout: float = STACK_TIMEOUT,
                       actor: str = "", client: httpx.AsyncClient | None = None,
                       ) -> StackResult:
    """GET /v1/workers/{i}/{id}/stack?expect_pid=n[&locals=1]: the worker's stack through its
    agent, as a StackResult checked and redacted again here (stack_from_dict). Refusals
    raise ActionError with the agent's kind (stale 409, not_worker/permission 403, ...), an
    unreachable agent kind "gone"; nothing is changed on the host either way."""
    from stackmon.actions.stack import stack_from_dict

    if not host.agent:
        raise ActionError("not_local", f"host {host.name!r} has no agent")
    url, shown = host.agent.rstrip("/"), redact.clean(host.agent.rstrip("/"))
    try:
        token = read_token_file(host.token_file, f"token file of host {host.name!r}") \
            if host.token_file else None
    except ConfigError as exc:
        raise ActionError("permission", str(exc)) from None
    headers = {ACTOR_HEADER: actor or _actor()}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    params: dict[str, str] = {"expect_pid": str(expect_pid)}
    if with_locals:
        params["locals"] = "1"
    if expect_spawn is not None:
        params["expect_spawn"] = repr(float(expect_spawn))
    path = f"/v1/workers/{uwsgi_index}/{worker_id}/stack"
    http = client or new_http_client(url, timeout, pool=1)
    try:
        async with asyncio.timeout(action_timeout + timeout), \
                http.stream("GET", url + path, params=params, headers=headers,
                            timeout=httpx.Timeout(action_timeout, connect=timeout)) as resp:
            content = await _read_body(resp, MAX_STACK_REPLY)
    except (httpx.ConnectTimeout, httpx.ConnectError) as exc:
        raise ActionError("gone", f"cannot reach the agent at {shown}: {_reason(exc)}") \
            from None
    except httpx.HTTPError as exc:
        raise ActionError("failed", f"the agent at {shown} did not answer ({_reason(exc)})") \
            from None
    except TimeoutError:
        raise ActionError("failed", f"the agent at {shown} did not answer within "
                                    f"{action_timeout + timeout:g} s") from None
    except ReplyError as exc:
        raise ActionError("failed", f"refused the answer of the agent at {shown}: {exc}") \
            from None
    except (httpx.InvalidURL, ValueError) as exc:
        raise ActionError("bad_request", f"bad agent URL {shown}: {_reason(exc)}") from None
    finally:
        if client is None:
            await http.aclose()
    if resp.status_code == 401:
        raise ActionError("permission", f"the agent at {shown} refused the token "
                                        f"({host.token_file or 'no token_file'})")
    if resp.status_code != 200:
        kind, message = _error_body(resp, content)
        if kind not in _KINDS:
            kind = "failed" if resp.status_code >= 500 else "bad_request"
        raise ActionError(kind, message)  # type: ignore[arg-type]
    try:
        result = stack_from_dict(decode_json(content))
    except (ReplyError, ValueError) as exc:
        raise ActionError("failed", f"the agent at {shown} sent an unreadable stack ({exc})") \
            from None
    from dataclasses import replace

    return replace(result, host=host.name)  # the name from the hosts file, as for snapshots


async def fetch_remote_snapshot(host: HostConfig, settings: Settings | None = None,
                                ) -> HostSnapshot:
    """One snapshot of an agent host (for the CLI's confirmation and reload progress)."""
    source = AgentSource(host, settings or Settings())
    try:
        doc = await source.fetch()
        if isinstance(doc, SourceError):
            raise ActionError("gone", f"cannot read the host through its agent: {doc.message}")
        snap = source.to_snapshot(doc, time.time())
        if isinstance(snap, SourceError):
            raise ActionError("gone", f"cannot read the host through its agent: {snap.message}")
        return snap
    finally:
        await source.aclose()

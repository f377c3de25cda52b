"""The demo WSGI app served by the real uWSGI in `stackmon demo` and in the test suite.

It exists to produce the situations stackmon is built to show: instant requests, slow ones,
requests stuck for an hour, and exceptions that uWSGI counts. It is loaded by uWSGI with
`wsgi-file`, so it imports only the standard library (the uWSGI binary may embed a different
Python than the one running stackmon) and nothing from the stackmon package.

Routes:
  /, /fast             instant 200
  /healthz             instant 200 "ok" (what a load balancer probes)
  /slow?s=N            sleeps N seconds (float, capped at SLOW_CAP), then 200
  /hang, /hang/<any>   sleeps HANG_DEFAULT seconds (or `s`/`X-Hang-Seconds`, capped at HANG_CAP)
  /error               raises, so uWSGI's per-worker `exceptions` counter goes up
  anything else        404

Loading takes $STACKMON_DEMO_LOAD_S seconds (default 0, at most LOAD_CAP), as a real app's
imports do: with lazy-apps each new worker accepts only after it, which is what a chain reload
waits for between two workers.

A hanging request can be released early without killing its worker: when the file named by
$STACKMON_RELEASE_FILE changes content, every /hang in flight returns. The test suite shares one
stack between tests and uses this to give back the cores a test left stuck; a killed worker
would instead change pids and respawn counters that other tests look at.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

SLOW_CAP = 120.0
HANG_DEFAULT = 3600.0
HANG_CAP = 3600.0
_RELEASE_POLL = 0.2

StartResponse = Callable[..., object]
LOAD_CAP = 30.0


def _load_seconds() -> float:
    try:
        seconds = float(os.environ.get("STACKMON_DEMO_LOAD_S") or 0)
    except ValueError:
        return 0.0
    return min(seconds, LOAD_CAP) if 0 < seconds < float("inf") else 0.0


time.sleep(_load_seconds())


def _seconds(environ: dict, default: float, cap: float) -> float:
    """Duration from `?s=N` or the X-Hang-Seconds header; junk falls back to the default."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    raw = (query.get("s") or [environ.get("HTTP_X_HANG_SECONDS", "")])[0]
    try:
        value = float(raw)
    except ValueError:
        return min(default, cap)
    if value != value or value < 0:  # NaN or negative
        return min(default, cap)
    return min(value, cap)


def _release_generation() -> str:
    path = os.environ.get("STACKMON_RELEASE_FILE")
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(64)
    except OSError:
        return ""


def _hang(seconds: float) -> float:
    """Sleep up to `seconds`, returning early when the release file changes; returns time slept."""
    start = time.monotonic()
    deadline = start + seconds
    generation = _release_generation()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(_RELEASE_POLL, remaining))
        if _release_generation() != generation:
            break
    return time.monotonic() - start


def _reply(start_response: StartResponse, status: str, body: str) -> Iterable[bytes]:
    data = body.encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [data]


def application(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/") or "/"
    if path in ("/", "/fast"):
        return _reply(start_response, "200 OK", "fast\n")
    if path == "/healthz":
        return _reply(start_response, "200 OK", "ok\n")
    if path == "/slow":
        seconds = _seconds(environ, 1.0, SLOW_CAP)
        time.sleep(seconds)
        return _reply(start_response, "200 OK", f"slept {seconds:.3f}s\n")
    if path == "/hang" or path.startswith("/hang/"):
        slept = _hang(_seconds(environ, HANG_DEFAULT, HANG_CAP))
        return _reply(start_response, "200 OK", f"hung {slept:.3f}s\n")
    if path == "/error":
        raise RuntimeError("stackmon demo: /error raises on purpose")
    return _reply(start_response, "404 Not Found", "not found\n")

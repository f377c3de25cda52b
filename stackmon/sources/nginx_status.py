"""nginx stub_status: fetch, parse the exact format, and derive the request rate.

The page is four fixed lines (REFERENCE.md section 4). Anything else (an HTML error page, a
proxy's login page, a truncated body) is reported as "not a stub_status page" rather than
guessed at, because a wrong number here would send the on-call engineer down the wrong path.
"""

from __future__ import annotations

import re
import time

import httpx

from stackmon.model import NginxStatus, SourceError

_STUB = re.compile(
    r"\AActive connections:\s*(?P<active>\d+)\s*\n"
    r"\s*server accepts handled requests\s*\n"
    r"\s*(?P<accepts>\d+)\s+(?P<handled>\d+)\s+(?P<requests>\d+)\s*\n"
    r"\s*Reading:\s*(?P<reading>\d+)\s+Writing:\s*(?P<writing>\d+)\s+Waiting:\s*(?P<waiting>\d+)"
    r"\s*\Z"
)

MAX_BODY = 64 * 1024


def parse_stub_status(
    body: str, url: str, sampled_at: float, previous: NginxStatus | None = None
) -> NginxStatus | SourceError:
    """Parse a stub_status body; with the previous sample of the same URL, compute req/s."""
    m = _STUB.match(body.replace("\r\n", "\n"))
    if m is None:
        first = body.strip().splitlines()[0][:60] if body.strip() else "(empty)"
        return SourceError(f"nginx {url}", f"not a stub_status page (starts with {first!r})")
    n = {k: int(v) for k, v in m.groupdict().items()}
    rate = None
    if previous is not None and previous.url == url:
        dt = sampled_at - previous.sampled_at
        dreq = n["requests"] - previous.requests
        # A restarted nginx resets its counters: no rate rather than a negative one.
        if dt > 0 and dreq >= 0:
            rate = dreq / dt
    return NginxStatus(url=url, sampled_at=sampled_at, requests_per_s=rate, **n)


async def fetch_stub_status(
    client: httpx.AsyncClient,
    url: str,
    *,
    timeout: float = 2.0,
    previous: NginxStatus | None = None,
) -> NginxStatus | SourceError:
    """One sample of nginx's counters; every failure becomes a SourceError with the reason."""
    source = f"nginx {url}"
    try:
        async with client.stream("GET", url, timeout=timeout) as resp:
            if resp.status_code != 200:
                return SourceError(source, f"HTTP {resp.status_code} from stub_status")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_BODY:
                    return SourceError(source, f"reply larger than {MAX_BODY} bytes: "
                                               "not a stub_status page")
                chunks.append(chunk)
    except httpx.TimeoutException:
        return SourceError(source, f"no answer within {timeout:g} s")
    except httpx.ConnectError as exc:
        return SourceError(source, f"cannot connect: {_reason(exc)}")
    except httpx.HTTPError as exc:
        return SourceError(source, f"{type(exc).__name__}: {_reason(exc)}")
    except OSError as exc:
        return SourceError(source, exc.strerror or str(exc))
    body = b"".join(chunks).decode("utf-8", errors="replace")
    return parse_stub_status(body, url, time.time(), previous)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text

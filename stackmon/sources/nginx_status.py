"""nginx stub_status: fetch, parse the exact format, and derive the request rate.

The page is four fixed lines (docs/reference.md §4). Anything else (an HTML error page, a
proxy's login page, a truncated body) is reported as "not a stub_status page" rather than
guessed at, because a wrong number here would send the on-call engineer down the wrong path.
"""

from __future__ import annotations

import contextlib
import re
import time
from urllib.parse import urlsplit

from stackmon import redact
from stackmon.addresses import StatsAddress
from stackmon.model import NginxStatus, SourceError
from stackmon.sources.keepalive_http import KeptGet
from stackmon.sources.uwsgi_stats import fetch_raw

_STUB = re.compile(
    r"\AActive connections:\s*(?P<active>\d+)\s*\n"
    r"\s*server accepts handled requests\s*\n"
    r"\s*(?P<accepts>\d+)\s+(?P<handled>\d+)\s+(?P<requests>\d+)\s*\n"
    r"\s*Reading:\s*(?P<reading>\d+)\s+Writing:\s*(?P<writing>\d+)\s+Waiting:\s*(?P<waiting>\d+)"
    r"\s*\Z"
)

MAX_BODY = 64 * 1024
COUNT_LIMIT = 2**63
_MAX_DIGITS = 19  # 2**63 has 19 digits; int() refuses more than 4300 with a ValueError


def parse_stub_status(
    body: str, url: str, sampled_at: float, previous: NginxStatus | None = None
) -> NginxStatus | SourceError:
    """Parse a stub_status body; with the previous sample of the same URL, compute req/s.

    The URL is kept (in NginxStatus.url and errors) as shown: redacted, since the configured
    URL may carry a token in its query and it ends up in the JSON, the TUI and the agent's
    answers. Redaction is idempotent, so a previous sample's url compares equal.
    """
    url = redact.clean(url)
    m = _STUB.match(body.replace("\r\n", "\n"))
    if m is None:
        first = body.strip().splitlines()[0][:60] if body.strip() else "(empty)"
        first = redact.redact_text(first)
        return SourceError(f"nginx {url}", f"not a stub_status page (starts with {first!r})")
    too_big = next((k for k, v in m.groupdict().items() if len(v) > _MAX_DIGITS
                    or int(v) >= COUNT_LIMIT), None)
    if too_big is not None:
        # nginx's counters are atomic_t (64 bits at most): a longer number is not nginx's.
        digits = len(m.group(too_big))
        return SourceError(f"nginx {url}", f"stub_status counter {too_big!r} is out of range"
                                           f" ({digits} digits); not nginx's numbers")
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
    url: str,
    *,
    timeout: float = 2.0,
    previous: NginxStatus | None = None,
) -> NginxStatus | SourceError:
    """One sample of nginx's counters; every failure becomes a SourceError with the reason.

    One HTTP/1.0 GET over a plain asyncio connection (the same exchange as uWSGI's stats-http,
    stackmon.sources.uwsgi_stats.fetch_raw): a general HTTP client costs several times the CPU
    of parsing this four-line page, every second, for every host.
    """
    source = f"nginx {redact.clean(url)}"
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or ""
    except ValueError:  # parse_nginx_url checks this; a caller that skipped it gets a reason
        return SourceError(source, "bad host or port in the URL")
    addr = StatsAddress("http", url, host, port, url)
    body = await fetch_raw(addr, timeout, MAX_BODY, source=source, label="stub_status")
    if isinstance(body, SourceError):
        return body
    return parse_stub_status(body.decode("utf-8", errors="replace"), url, time.time(),
                             previous)


class StubStatusClient:
    """stub_status samples of one URL over a connection kept between polls (see
    stackmon.sources.keepalive_http for why and what is checked); each sample carries the
    request rate since the previous one. `close()` when done."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.previous: NginxStatus | None = None
        self._get: KeptGet | None = None
        # A URL whose host or port cannot be read: parse_nginx_url refuses it; sample() says so.
        with contextlib.suppress(ValueError):
            self._get = KeptGet(url, max_bytes=MAX_BODY, source=f"nginx {redact.clean(url)}",
                                label="stub_status")

    @property
    def connects(self) -> int:
        """Connections opened so far (one while nginx keeps the connection alive)."""
        return self._get.connects if self._get is not None else 0

    async def sample(self, timeout: float = 2.0) -> NginxStatus | SourceError:
        if self._get is None:
            return SourceError(f"nginx {redact.clean(self.url)}", "bad host or port in the URL")
        body = await self._get.get(timeout)
        if isinstance(body, SourceError):
            return body
        result = parse_stub_status(body.decode("utf-8", errors="replace"), self.url,
                                   time.time(), self.previous)
        if isinstance(result, NginxStatus):
            self.previous = result
        return result

    def close(self) -> None:
        if self._get is not None:
            self._get.close()

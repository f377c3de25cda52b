"""The address forms a user can give for a uWSGI stats server, parsed once and checked early.

`host:port` (TCP), a unix socket path, `@name` (abstract unix socket) or `http://host:port`
(stats-http). Anything else is a usage error, reported before any poll starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from stackmon import redact


class AddressError(ValueError):
    """An address stackmon cannot use; the message says which form was expected."""


@dataclass(frozen=True, slots=True)
class StatsAddress:
    kind: Literal["tcp", "unix", "abstract", "http"]
    raw: str
    host: str = ""
    port: int = 0
    path: str = ""  # unix path, abstract name (without '@'), or the http URL

    def __str__(self) -> str:
        return self.raw


FORMS = "host:port, a unix socket path, @abstract or http://host:port"


def _port(text: str, raw: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise AddressError(f"bad port in stats address {raw!r} (expected {FORMS})")
    return int(text)


def shown(raw: str) -> str:
    """An address or URL as it may appear in a message: secrets redacted (a query token, a
    user:password@ that slipped through), control characters visible. Messages quote what the
    user typed, and they end up in logs, the JSON and the audit log."""
    return redact.clean(raw)


def _split_url(text: str, raw: str, what: str, *, credentials_hint: str = "") -> SplitResult:
    """urlsplit with every way it can fail turned into an AddressError naming `what`.

    urlsplit raises a bare ValueError for an unclosed IPv6 bracket ("http://[::1") and
    `.port` raises for a port that is not a number or out of range: both would otherwise
    escape as tracebacks. A URL carrying user:password@ is refused rather than used, because
    the URL is shown in errors, the JSON, metrics and the audit log.
    """
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError as exc:
        raise AddressError(f"bad {what} {shown(raw)!r}: {exc}") from None
    if "@" in parts.netloc:
        hint = f"; {credentials_hint}" if credentials_hint else ""
        raise AddressError(f"credentials in the URL are not supported ({what} "
                           f"{shown(raw)!r}){hint}")
    if not host:
        raise AddressError(f"no host in {what} {shown(raw)!r}")
    if any(ch.isspace() or not ch.isprintable() for ch in host):
        raise AddressError(f"bad host in {what} {shown(raw)!r}")
    try:
        _ = parts.port
    except ValueError:
        raise AddressError(f"bad port in {what} {shown(raw)!r}") from None
    return parts


def parse_stats_address(raw: str) -> StatsAddress:
    text = raw.strip()
    if not text:
        raise AddressError(f"empty stats address (expected {FORMS})")
    if text.startswith(("http://", "https://")):
        parts = _split_url(text, raw, "stats address",
                           credentials_hint="uWSGI's stats-http takes none")
        assert parts.hostname is not None  # checked by _split_url
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return StatsAddress("http", raw, parts.hostname, port, text)
    if "://" in text:
        raise AddressError(f"unknown scheme in stats address {shown(raw)!r} (expected {FORMS})")
    if text.startswith("@"):
        if len(text) == 1:
            raise AddressError(f"empty abstract socket name in {raw!r}")
        return StatsAddress("abstract", raw, path=text[1:])
    if "/" in text or text.endswith((".sock", ".socket")):
        return StatsAddress("unix", raw, path=text)
    if ":" in text:
        host_part, _, port_text = text.rpartition(":")
        host = host_part.strip("[]") or "127.0.0.1"  # ":1717" means all interfaces: ask loopback
        return StatsAddress("tcp", raw, host, _port(port_text, raw))
    raise AddressError(f"unknown address form {shown(raw)!r} (expected {FORMS})")


def parse_nginx_url(raw: str) -> str:
    """The stub_status URL; a bare host:port gets the conventional /nginx_status path.

    A query (a token some setups put on their status location) is kept, since nginx may need
    it, and redacted wherever the URL is shown; user:password@ is refused (see _split_url).
    """
    text = raw.strip()
    if not text.startswith(("http://", "https://")):
        if "://" in text or ":" not in text:
            raise AddressError(f"nginx status must be a URL such as http://127.0.0.1/nginx_status,"
                               f" not {shown(raw)!r}")
        text = f"http://{text}/nginx_status"
    _split_url(text, raw, "nginx status URL",
               credentials_hint="protect the status page by address (allow/deny) instead")
    return text


def parse_health_url(raw: str) -> str:
    """The load balancer's health-check URL (through nginx, as the LB requests it)."""
    text = raw.strip()
    if not text.startswith(("http://", "https://")):
        raise AddressError(f"health must be a URL such as http://127.0.0.1/healthz, "
                           f"not {shown(raw)!r}")
    _split_url(text, raw, "health URL",
               credentials_hint="a load balancer's health check sends no credentials")
    return text


def parse_agent_url(raw: str) -> str:
    """The base URL of a stackmon agent (http[s]://host:port[/prefix]), without a trailing /.

    Checked when the hosts file is loaded, so that a typo is one line naming the file rather
    than an HTTP client's exception at the first poll. Credentials and queries are refused:
    the agent authenticates with the token of `token_file`, and API paths are appended to this
    URL (a query would end up in the middle of them).
    """
    text = raw.strip()
    if not text.startswith(("http://", "https://")):
        raise AddressError(f"agent must be a URL such as http://10.0.0.12:9300, "
                           f"not {shown(raw)!r}")
    parts = _split_url(text, raw, "agent URL",
                       credentials_hint="put the agent's token in token_file")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise AddressError(f"agent URL {shown(raw)!r} has a query or fragment: give its base "
                           "URL such as http://10.0.0.12:9300 (the token goes in token_file)")
    return text.rstrip("/")

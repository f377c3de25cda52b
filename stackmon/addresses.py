"""The address forms a user can give for a uWSGI stats server, parsed once and checked early.

`host:port` (TCP), a unix socket path, `@name` (abstract unix socket) or `http://host:port`
(stats-http). Anything else is a usage error, reported before any poll starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit


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


def parse_stats_address(raw: str) -> StatsAddress:
    text = raw.strip()
    if not text:
        raise AddressError(f"empty stats address (expected {FORMS})")
    if text.startswith(("http://", "https://")):
        parts = urlsplit(text)
        if not parts.hostname:
            raise AddressError(f"no host in stats address {raw!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise AddressError(f"bad port in stats address {raw!r}") from None
        return StatsAddress("http", raw, parts.hostname, port, text)
    if "://" in text:
        raise AddressError(f"unknown scheme in stats address {raw!r} (expected {FORMS})")
    if text.startswith("@"):
        if len(text) == 1:
            raise AddressError(f"empty abstract socket name in {raw!r}")
        return StatsAddress("abstract", raw, path=text[1:])
    if "/" in text or text.endswith((".sock", ".socket")):
        return StatsAddress("unix", raw, path=text)
    if ":" in text:
        host, _, port = text.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"  # ":1717" means all interfaces: ask loopback
        return StatsAddress("tcp", raw, host, _port(port, raw))
    raise AddressError(f"unknown address form {raw!r} (expected {FORMS})")


def parse_nginx_url(raw: str) -> str:
    """The stub_status URL; a bare host:port gets the conventional /nginx_status path."""
    text = raw.strip()
    if not text.startswith(("http://", "https://")):
        if "://" in text or ":" not in text:
            raise AddressError(f"nginx status must be a URL such as http://127.0.0.1/nginx_status,"
                               f" not {raw!r}")
        text = f"http://{text}/nginx_status"
    parts = urlsplit(text)
    if not parts.hostname:
        raise AddressError(f"no host in nginx status URL {raw!r}")
    try:
        _ = parts.port
    except ValueError:
        raise AddressError(f"bad port in nginx status URL {raw!r}") from None
    return text

"""Secrets and exposure for both ends of the agent: token files, listen addresses, TLS.

The agent can signal uWSGI workers, so whoever holds its token can take a site down. The rules
here are deliberately strict and checked before anything listens:

- a token file must be a regular file that neither group nor others can access (like ssh keys:
  a token anyone on the box can read is no token), at least 16 visible ASCII characters;
- the agent binds 127.0.0.1 unless told otherwise, and refuses a non-loopback address without a
  token;
- TLS when given a certificate and key (TLS 1.2 at least; the key file follows the token rule).

Every refusal is a ConfigError whose str() is the one line the CLI prints (exit 2).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import ssl
import stat
from pathlib import Path

from stackmon.config import ConfigError

MIN_TOKEN_LENGTH = 16
MAX_TOKEN_FILE = 4096
# Extra CA certificates (PEM) that a remote stackmon trusts for https:// agents, on top of the
# system's store: self-signed agent certificates are the common case on a private network.
CA_ENV = "STACKMON_AGENT_CA"


def check_private(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a secret that is not a regular file or that group/others may access."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(f"{what} {path} is accessible by group/others (mode {mode:04o}); "
                          f"run: chmod 600 {path}")


def read_token_file(path: Path | str, what: str = "token file") -> str:
    """The token in `path`, after checking the file is private; ConfigError otherwise.

    The file is opened once and checked through its descriptor, so a file swapped between the
    check and the read is never used.
    """
    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror}") from None
    try:
        check_private(path, os.fstat(fd), what)
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE:
        raise ConfigError(f"{what} {path} is too large to be a token")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: the token must be ASCII") from None
    if not token:
        raise ConfigError(f"{what} {path} is empty")
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in token):
        raise ConfigError(f"{what} {path}: the token must be one line of visible ASCII "
                          "(no spaces)")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{what} {path}: the token is shorter than {MIN_TOKEN_LENGTH} "
                          "characters (make one with: openssl rand -hex 32)")
    return token


def parse_listen(text: str, default_port: int = 9300) -> tuple[str, int]:
    """'127.0.0.1:9300', '[::1]:9300', 'localhost:9300', '0.0.0.0:9300' or a bare port."""
    raw = text.strip()
    if raw.isdigit():
        host, port_text = "127.0.0.1", raw
    elif raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"--listen {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:] if rest else str(default_port)
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    elif ":" not in raw and raw:
        host, port_text = raw, str(default_port)
    else:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT such as 127.0.0.1:9300")
    if not host:
        raise ConfigError(f"--listen {text!r}: give the address to bind, e.g. 0.0.0.0:9300")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--listen {text!r}: bad port {port_text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True when every address `host` stands for is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def server_ssl_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """A TLS server context for the agent; ConfigError with one line when unusable."""
    cert, key = Path(cert).expanduser(), Path(key).expanduser()
    try:
        check_private(key, os.stat(key), "TLS key file")
    except FileNotFoundError:
        raise ConfigError(f"TLS key file {key} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"TLS key file {key}: {exc.strerror}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS certificate {exc.filename or cert} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"TLS certificate {cert} / key {key} cannot be used: {reason}") from None
    return ctx


def client_ssl_context(cafile: str | None = None) -> ssl.SSLContext:
    """What a remote stackmon verifies https:// agents with: the system's CAs plus `cafile`
    (default: $STACKMON_AGENT_CA). Hostname checking stays on: the agent URL must match the
    certificate (an IP address in the URL needs an IP SAN)."""
    return _client_context(cafile if cafile is not None else os.environ.get(CA_ENV) or "")


@functools.cache
def _client_context(extra: str) -> ssl.SSLContext:
    """One context per CA file: building one loads the whole system store (milliseconds)."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if extra:
        try:
            ctx.load_verify_locations(cafile=os.path.expanduser(extra))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{CA_ENV}={extra}: cannot load CA certificates: {exc}") from None
    return ctx

"""`stackmon agent`: serve this host's sources and actions to remote stackmons.

    stackmon agent [--listen 127.0.0.1:9300] [--token-file F] [--tls-cert F --tls-key F]
                   [--read-only] [HOSTS.toml | --uwsgi ADDR... --nginx URL]

Everything that could expose the host is checked before the socket opens, and each refusal
is one line on stderr with exit 2: a token file others can read, a non-loopback address
without a token, a certificate without its key.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from stackmon.config import ConfigError, HostConfig, Targets, parse_duration

DEFAULT_LISTEN = "127.0.0.1:9300"


def configure(name: str, p: argparse.ArgumentParser) -> None:
    from stackmon.cli import add_targets

    p.description = ("Serve this host's snapshot, metrics and actions over HTTP to remote "
                     "stackmons (docs/contracts.md, agent API).")
    add_targets(p)
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to bind (default {DEFAULT_LISTEN}; any other than loopback "
                        "needs --token-file)")
    p.add_argument("--token-file", metavar="F",
                   help="file holding the bearer token (mode 0600 or stricter)")
    p.add_argument("--tls-cert", metavar="F", help="TLS certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="F", help="TLS private key (PEM, mode 0600)")
    p.add_argument("--read-only", action="store_true", help="serve data, refuse every action")
    p.add_argument("--audit-log", metavar="F",
                   help="audit log of actions (default $XDG_STATE_HOME/stackmon/audit.log)")
    p.add_argument("--cache", default="0.25s", metavar="D",
                   help="reuse a poll for this long across clients (default 0.25s)")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")
    p.add_argument("--record", metavar="DIR",
                   help="record every poll into DIR/HOST.stackmon.db (served as /v1/history)")
    p.add_argument("--retain", metavar="D", help="with --record: keep this much (e.g. 24h)")


def pick_host(targets: Targets, name: str | None) -> HostConfig:
    """The one local host the agent serves (a hosts file may list several: --name picks)."""
    local = [h for h in targets.hosts if not h.agent]
    if name and targets.source != "command line":
        chosen = next((h for h in targets.hosts if h.name == name), None)
        if chosen is None:
            raise ConfigError(f"no host {name!r} in {targets.source}")
        if chosen.agent:
            raise ConfigError(f"host {name!r} is itself behind an agent ({chosen.agent})")
        return chosen
    if len(local) != 1:
        names = ", ".join(h.name for h in local) or "none"
        raise ConfigError(f"an agent serves one host; {targets.source} has {len(local)} local "
                          f"hosts ({names}): pick one with --name")
    return local[0]


def check_record_dir(directory: str, host: str) -> None:
    """--record DIR must be usable before the socket opens: one line and exit 2 if not."""
    from stackmon.record.store import Recorder, RecordingError, host_recording

    try:
        Recorder(host_recording(directory, host)).close()
    except RecordingError as exc:
        raise ConfigError(f"--record: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"--record {directory}: {exc.strerror or exc}") from None


def run(name: str, args: argparse.Namespace) -> int:
    from stackmon.agent.security import (
        SecretScrubber,
        is_loopback,
        parse_listen,
        raise_fd_limit,
        read_token_file,
        server_ssl_context,
    )
    from stackmon.agent.server import AgentOptions, serve
    from stackmon.cli import resolve_targets

    targets = resolve_targets(args)
    host = pick_host(targets, args.name)
    bind_host, port = parse_listen(args.listen)
    token = read_token_file(args.token_file) if args.token_file else None
    loopback = is_loopback(bind_host)
    if token is None and not loopback:
        raise ConfigError(f"refusing to listen on {args.listen} without a token: anyone who "
                          "can reach it could read this host and kill its workers "
                          "(give --token-file, or bind 127.0.0.1)")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    ssl_context = server_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    cache = parse_duration(args.cache, "--cache")
    read_only = bool(args.read_only or targets.settings.read_only or host.read_only)
    retain = parse_duration(args.retain, "--retain") if args.retain else None
    if retain is not None and not args.record:
        raise ConfigError("--retain goes with --record DIR")
    if args.record:
        check_record_dir(args.record, host.name)
    options = AgentOptions(host=host, settings=targets.settings, token=token,
                           read_only=read_only, cache_s=cache, audit_path=args.audit_log,
                           record_dir=args.record, retain_s=retain)

    logging.basicConfig(level=logging.INFO if args.access_log else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    # On the handler as well as on the agent's loggers (serve()): a record from any library
    # reaches stderr only through here, scrubbed of the token.
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretScrubber((token,) if token else ()))
    # Clients hold descriptors; with systemd's soft 1024 a flood of idle connections would
    # starve the agent's own sockets (the connection caps are sized from this limit).
    raise_fd_limit()
    notes = []
    if token is None:
        notes.append("no token: data for any local user, actions disabled")
    elif ssl_context is None and not loopback:
        notes.append("WARNING: plain HTTP off loopback, the token crosses the network in "
                     "clear (use --tls-cert/--tls-key or a private network)")
    if read_only:
        notes.append("read-only")

    def ready(url: str) -> None:
        what = f"{len(host.uwsgi)} uWSGI instance(s)" + (", nginx" if host.nginx else "")
        extra = f" ({'; '.join(notes)})" if notes else ""
        print(f"stackmon agent: serving host {host.name!r} ({what}) on {url}{extra}",
              file=sys.stderr, flush=True)

    try:
        asyncio.run(serve(options, (bind_host, port), ssl_context, ready=ready,
                          access_log=args.access_log))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    print("stackmon agent: stopped", file=sys.stderr, flush=True)
    return 0

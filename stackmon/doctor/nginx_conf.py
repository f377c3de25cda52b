"""nginx configuration as the doctor needs it: a tree of blocks whose every directive keeps the
file and line it was written on, includes expanded in place.

Parsing is crossplane's (nginx's own grammar: blocks, quoting, includes and globs relative to
the main file's directory, context and argument-count checks). Its errors become one
`NginxConfError` naming file and line, because "nginx.conf:41: unexpected '}'" is what the user
needs and a crossplane exception string is not. Includes are expanded here rather than with
crossplane's `combine=True`, which (0.5.8) attributes directives that follow an include to the
included file.

Values are read with nginx's own units (`parse_time`, `parse_listen`), and `effective()` walks
up the block tree the way nginx inherits http -> server -> location settings, returning None
when a directive is unset so the caller can apply (and say it applied) nginx's default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import crossplane

# nginx's NGX_LISTEN_BACKLOG on Linux (other systems use -1: the system maximum).
DEFAULT_BACKLOG = 511

# Defaults of the directives the rules look at (nginx 1.22 documentation).
DEFAULTS = {
    "worker_processes": "1",
    "worker_connections": "512",
    "keepalive_timeout": "75s",
    "client_header_timeout": "60s",
    "client_body_timeout": "60s",
    "uwsgi_connect_timeout": "60s",
    "uwsgi_read_timeout": "60s",
    "uwsgi_send_timeout": "60s",
}


class NginxConfError(ValueError):
    """An nginx config that nginx would refuse; str() is "FILE:LINE: message"."""

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        super().__init__(f"{file}:{line}: {message}" if line > 0 else f"{file}: {message}")


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...]
    file: str
    line: int

    @property
    def value(self) -> str:
        return " ".join(self.args)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Block:
    """A context: "main", "events", "http", "server", "location", "upstream", "if", ...
    `directives` are its simple directives in order; `children` its nested blocks."""

    kind: str
    args: tuple[str, ...]
    file: str
    line: int
    directives: tuple[Directive, ...] = ()
    children: tuple[Block, ...] = ()

    def get(self, name: str) -> Directive | None:
        """The last occurrence in this block itself (nginx refuses most duplicates anyway)."""
        found = None
        for d in self.directives:
            if d.name == name:
                found = d
        return found

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.directives if d.name == name]

    @property
    def label(self) -> str:
        text = " ".join((self.kind, *self.args))
        return f"{text} ({os.path.basename(self.file)}:{self.line})"


BlockPath = tuple[Block, ...]


@dataclass(frozen=True)
class NginxConf:
    """One parsed nginx configuration (the main file and everything it includes)."""

    path: str
    root: Block
    files: tuple[str, ...]

    def main(self, name: str) -> Directive | None:
        return self.root.get(name)

    def walk(self, kind: str | None = None) -> Iterator[BlockPath]:
        """Every block (of `kind`) with its ancestors: (root, ..., block), depth first."""
        def visit(path: BlockPath) -> Iterator[BlockPath]:
            if kind is None or path[-1].kind == kind:
                yield path
            for child in path[-1].children:
                yield from visit((*path, child))
        yield from visit((self.root,))

    def block(self, kind: str) -> Block | None:
        return next((p[-1] for p in self.walk(kind)), None)

    def directives(self, name: str) -> Iterator[tuple[Directive, BlockPath]]:
        """Every occurrence of a directive anywhere, with the path of blocks containing it."""
        for path in self.walk():
            for d in path[-1].directives:
                if d.name == name:
                    yield d, path

    def servers(self) -> list[BlockPath]:
        return [p for p in self.walk("server") if any(b.kind == "http" for b in p)]

    def upstreams(self) -> dict[str, Block]:
        return {p[-1].args[0]: p[-1] for p in self.walk("upstream") if p[-1].args}


def effective(path: Sequence[Block], name: str) -> Directive | None:
    """The directive that applies in the innermost block of `path` (nginx inheritance: the
    nearest enclosing block that sets it), or None when unset (the default applies)."""
    for block in reversed(path):
        found = block.get(name)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------ values


_TIME_UNITS = {"ms": 0.001, "": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
               "w": 604800.0, "M": 2592000.0, "y": 31536000.0}
_TIME = re.compile(r"(\d+)(ms|s|m|h|d|w|M|y)?")


def parse_time(text: str) -> float | None:
    """nginx's time syntax in seconds: "75", "75s", "1m30s", "500ms"; None when invalid."""
    value = text.strip()
    if not value:
        return None
    total, pos = 0.0, 0
    for m in _TIME.finditer(value):
        if m.start() != pos and value[pos:m.start()].strip():
            return None
        total += int(m.group(1)) * _TIME_UNITS[m.group(2) or ""]
        pos = m.end()
    if pos != len(value) or pos == 0:
        return None
    return total


def parse_number(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


@dataclass(frozen=True)
class Listen:
    """One `listen` directive: where, and the backlog it asks for (None: nginx's default)."""

    directive: Directive
    host: str  # "" for all addresses, "unix:/path" for a unix socket
    port: int
    backlog: int | None

    @property
    def address(self) -> str:
        if self.host.startswith("unix:"):
            return self.host
        return f"{self.host or '*'}:{self.port}"


def parse_listen(d: Directive) -> Listen | None:
    if not d.args:
        return None
    addr = d.args[0]
    backlog = None
    for arg in d.args[1:]:
        if arg.startswith("backlog="):
            backlog = parse_number(arg[8:])
    if addr.startswith("unix:"):
        return Listen(d, addr, 0, backlog)
    host, port = "", 80
    if addr.startswith("["):
        end = addr.find("]")
        host = addr[: end + 1]
        rest = addr[end + 1:]
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif addr.isdigit():
        port = int(addr)
    elif ":" in addr:
        h, _, p = addr.rpartition(":")
        host = h
        port = int(p) if p.isdigit() else 80
    else:
        host = addr
    if host in ("*", "0.0.0.0", "[::]"):
        host = ""
    return Listen(d, host, port, backlog)


# ------------------------------------------------------------------ loading


def _clean(message: str, file: str) -> str:
    """crossplane's messages end in " in FILE:LINE"; the caller prints those itself."""
    return re.sub(r" in \S+?(:\d+)?$", "", message.strip())


def _last_line(file: str) -> int:
    try:
        with open(file, "rb") as fh:
            data = fh.read()
    except OSError:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def _error(err: dict[str, Any]) -> NginxConfError:
    file = str(err.get("file") or "?")
    line = err.get("line")
    message = str(err.get("error") or "")
    m = re.match(r"\[Errno (\d+)\] ([^:]+): '(.*)'$", message)
    if m:
        what = m.group(2).lower()
        if line:  # an include that could not be opened
            return NginxConfError(file, int(line), f"include {m.group(3)}: {what}")
        return NginxConfError(file, 0, what)
    if not message:
        # crossplane ran out of tokens in the middle of a directive.
        return NginxConfError(file, _last_line(file),
                              "unexpected end of file, expecting \";\" or \"}\"")
    return NginxConfError(file, int(line or 0), _clean(message, file))


def load(path: str | os.PathLike[str]) -> NginxConf:
    """Parse the nginx config at `path` with its includes. Raises NginxConfError (the first
    problem, naming file and line) when nginx would refuse it or a file cannot be read."""
    main = os.path.abspath(os.fspath(path))
    if os.path.isdir(main):
        raise NginxConfError(main, 0, "is a directory, not an nginx config file")
    if not os.path.exists(main):
        raise NginxConfError(main, 0, "no such file")
    try:
        with open(main, "rb"):
            pass
    except OSError as exc:
        raise NginxConfError(main, 0, f"cannot read: {exc.strerror or exc}") from None
    try:
        payload = crossplane.parse(main, catch_errors=True, single=False, comments=False,
                                   check_ctx=True, check_args=True)
    except Exception as exc:  # crossplane bug or I/O error mid-parse: never a traceback
        raise NginxConfError(main, 0, f"cannot parse: {exc}") from None
    if payload.get("errors"):
        raise _error(payload["errors"][0])
    configs = payload["config"]
    files = tuple(c["file"] for c in configs)
    root = _build_tree(configs, 0, (0,))
    return NginxConf(path=main, root=root, files=files)


def _build_tree(configs: list[dict[str, Any]], index: int, stack: tuple[int, ...]) -> Block:
    cfg = configs[index]
    directives, children = _build_stmts(configs, cfg["parsed"], cfg["file"], stack)
    return Block("main", (), cfg["file"], 0, directives, children)


def _build_stmts(configs: list[dict[str, Any]], stmts: list[dict[str, Any]], file: str,
                 stack: tuple[int, ...]) -> tuple[tuple[Directive, ...], tuple[Block, ...]]:
    """Directives and child blocks of one block, with includes spliced in where they stand
    (each included statement keeps its own file)."""
    directives: list[Directive] = []
    children: list[Block] = []
    for s in stmts:
        name, args, line = s["directive"], tuple(s.get("args") or ()), int(s["line"])
        if "block" in s:
            d, c = _build_stmts(configs, s["block"], file, stack)
            children.append(Block(name, args, file, line, d, c))
            continue
        directives.append(Directive(name, args, file, line))
        if name == "include":
            for index in s.get("includes") or ():
                if index in stack:
                    continue  # an include cycle: nginx would loop; crossplane parsed it once
                inc = configs[index]
                d, c = _build_stmts(configs, inc["parsed"], inc["file"], (*stack, index))
                directives.extend(d)
                children.extend(c)
    return tuple(directives), tuple(children)

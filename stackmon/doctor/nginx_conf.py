"""nginx configuration as the doctor needs it: a tree of blocks whose every directive keeps the
file and line it was written on, includes expanded in place.

Lexing and checking are crossplane's (nginx's own grammar: blocks, quoting, context and
argument-count checks), but the files are read here, through bounded_io, and crossplane's lexer
is run on their text: its parse() opens every file and include itself with a blocking open(),
which a FIFO or `include /proc/self/fd/*;` hangs and /dev/zero grows without limit. Includes and
globs resolve like nginx (relative to the main file's directory), within limits on files, bytes,
include depth and block depth. Errors become one `NginxConfError` naming file and line, because
"nginx.conf:41: unexpected '}'" is what the user needs and a crossplane exception string is not.
Includes are expanded here rather than with crossplane's `combine=True`, which (0.5.8)
attributes directives that follow an include to the included file.

Values are read with nginx's own units (`parse_time`, `parse_listen`), and `effective()` walks
up the block tree the way nginx inherits http -> server -> location settings, returning None
when a directive is unset so the caller can apply (and say it applied) nginx's default.
"""

from __future__ import annotations

import glob
import io
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from crossplane.analyzer import analyze, enter_block_ctx
from crossplane.errors import NgxParserDirectiveError, NgxParserSyntaxError

# crossplane's lexer and parse helpers, driven here on text read by bounded_io: its own
# parse() opens every file (and include) itself, with a plain blocking open().
from crossplane.lexer import _balance_braces, _lex_file_object
from crossplane.parser import _prepare_if_args

from stackmon.bounded_io import DEFAULT_LIMIT, BoundedReadError, User, read_file

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

# Bounds on what one `load` reads: nginx configs are a few files of a few KB; these stop a
# hostile include (`include /proc/self/fd/*;`, a glob over a huge tree, /dev/zero) from hanging
# the doctor or growing it without limit, while leaving generated configs plenty of room.
MAX_FILES = 1000
MAX_FILE_BYTES = DEFAULT_LIMIT
MAX_TOTAL_BYTES = 64 * 1024 * 1024
MAX_INCLUDE_DEPTH = 32
MAX_BLOCK_DEPTH = 64

_EOF = 'unexpected end of file, expecting ";" or "}"'


@dataclass
class _Files:
    """The files read so far (crossplane's payload shape: {"file", "parsed"} per file, the
    main one first), with the bounds every read is checked against."""

    main: str
    as_user: User | None
    configs: list[dict[str, Any]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    queue: list[tuple[str, tuple[str, ...], int, str]] = field(default_factory=list)
    total: int = 0

    def read(self, path: str, what: str, where: str, line: int) -> str:
        """The text of `path`, read without blocking and within the limits; any refusal is an
        NginxConfError at `where`:`line` (the include that named it; line 0: the main file)."""
        try:
            data = read_file(path, limit=MAX_FILE_BYTES, what=what, as_user=self.as_user)
        except BoundedReadError as exc:
            reason = "no such file or directory" if exc.reason.endswith("does not exist") \
                else exc.reason
            if line:
                raise NginxConfError(where, line, f"include {path}: {reason}") from None
            raise NginxConfError(where, 0, reason) from None
        self.total += len(data)
        if self.total > MAX_TOTAL_BYTES:
            raise NginxConfError(where, line, f"include {path}: the configuration is over "
                                              f"{MAX_TOTAL_BYTES} bytes in all")
        # nginx reads bytes; like crossplane, undecodable bytes are replaced, and newlines
        # are universal (crossplane opens in text mode).
        text = data.decode("utf-8", "replace")
        return text.replace("\r\n", "\n").replace("\r", "\n")

    def add(self, path: str, ctx: tuple[str, ...], depth: int, text: str) -> int:
        if path not in self.index:
            if len(self.index) >= MAX_FILES:
                raise NginxConfError(path, 0, f"more than {MAX_FILES} files included")
            self.index[path] = len(self.index)
            self.queue.append((path, ctx, depth, text))
        return self.index[path]


def _include(files: _Files, stmt: dict[str, Any], file: str, ctx: tuple[str, ...],
             depth: int) -> None:
    """Resolve an include like nginx (relative to the main file's directory, globs sorted)
    and queue each file, read now so that a refusal names the include's own line."""
    pattern = stmt["args"][0]
    if not os.path.isabs(pattern):
        pattern = os.path.join(os.path.dirname(files.main), pattern)
    line = int(stmt["line"])
    if depth >= MAX_INCLUDE_DEPTH:
        raise NginxConfError(file, line, f"include {pattern}: includes nested more than "
                                         f"{MAX_INCLUDE_DEPTH} deep")
    if glob.has_magic(pattern):
        names = sorted(itertools.islice(glob.iglob(pattern), MAX_FILES + 1))
        if len(names) > MAX_FILES:
            raise NginxConfError(file, line, f"include {pattern}: matches more than "
                                             f"{MAX_FILES} files")
    else:
        names = [pattern]
    stmt["includes"] = []
    for name in names:
        text = "" if name in files.index else files.read(name, "included file", file, line)
        stmt["includes"].append(files.add(name, ctx, depth + 1, text))


def _statements(files: _Files, file: str, tokens: Iterator[tuple[str, int, bool]],
                ctx: tuple[str, ...], depth: int, blocks: int) -> list[dict[str, Any]]:
    """One block's statements: crossplane's own parse loop (its analyzer checks contexts and
    argument counts), stopping at the first error, with block nesting bounded."""
    parsed: list[dict[str, Any]] = []
    for token, lineno, quoted in tokens:
        if token == "}" and not quoted:
            break
        if token.startswith("#") and not quoted:
            continue
        stmt: dict[str, Any] = {"directive": token, "line": lineno, "args": []}
        token, _, quoted = next(tokens)
        while token not in ("{", ";", "}") or quoted:
            if quoted or not token.startswith("#"):
                stmt["args"].append(token)
            token, _, quoted = next(tokens)
        if stmt["directive"] == "if":
            _prepare_if_args(stmt)
        try:
            analyze(fname=file, stmt=stmt, term=token, ctx=ctx, strict=False, check_ctx=True,
                    check_args=True)
        except NgxParserDirectiveError as exc:
            raise NginxConfError(file, int(exc.lineno or lineno), str(exc.strerror)) from None
        if stmt["directive"] == "include":
            _include(files, stmt, file, ctx, depth)
        if token == "{" and not quoted:
            if blocks >= MAX_BLOCK_DEPTH:
                raise NginxConfError(file, lineno, f"blocks nested more than "
                                                   f"{MAX_BLOCK_DEPTH} deep")
            stmt["block"] = _statements(files, file, tokens, enter_block_ctx(stmt, ctx),
                                        depth, blocks + 1)
        parsed.append(stmt)
    return parsed


def _parse_file(files: _Files, file: str, ctx: tuple[str, ...], depth: int,
                text: str) -> list[dict[str, Any]]:
    tokens = _balance_braces(_lex_file_object(io.StringIO(text)), file)
    try:
        return _statements(files, file, tokens, ctx, depth, 0)
    except NgxParserSyntaxError as exc:
        raise NginxConfError(file, int(exc.lineno or 0), str(exc.strerror)) from None
    except StopIteration:  # the tokens ran out in the middle of a directive
        lines = text.count("\n") + (0 if text.endswith("\n") else 1)
        raise NginxConfError(file, lines, _EOF) from None


def load(path: str | os.PathLike[str], *, as_user: User | None = None) -> NginxConf:
    """Parse the nginx config at `path` with its includes. Raises NginxConfError (the first
    problem, naming file and line) when nginx would refuse it or a file cannot be read.

    Every file is read through bounded_io (regular files only, no blocking open, size caps),
    never by crossplane itself, which would open a FIFO or /proc/self/fd/N and wait forever.
    `as_user`: refuse files that user could not read (a config named by another user's
    process)."""
    main = os.path.abspath(os.fspath(path))
    if os.path.isdir(main):
        raise NginxConfError(main, 0, "is a directory, not an nginx config file")
    if not os.path.lexists(main):
        raise NginxConfError(main, 0, "no such file")
    files = _Files(main, as_user)
    files.add(main, (), 0, files.read(main, "nginx config", main, 0))
    try:
        for file, ctx, depth, text in files.queue:  # grows as includes are found
            files.configs.append({"file": file, "parsed": _parse_file(files, file, ctx, depth,
                                                                       text)})
        root = _build_tree(files.configs, 0, (0,))
    except RecursionError:  # blocks and includes together nested beyond Python's stack
        raise NginxConfError(main, 0, "blocks and includes nested too deeply") from None
    if _tree_depth(root) > MAX_BLOCK_DEPTH:
        raise NginxConfError(main, 0, f"blocks (across includes) nested more than "
                                      f"{MAX_BLOCK_DEPTH} deep")
    return NginxConf(path=main, root=root, files=tuple(c["file"] for c in files.configs))


def _tree_depth(root: Block) -> int:
    deepest, stack = 0, [(root, 0)]
    while stack:
        block, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in block.children)
    return deepest


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

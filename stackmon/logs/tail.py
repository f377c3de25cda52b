"""Follow a log file from its end: incremental, rotation-aware, bounded in bytes and memory.

A log can be 5 GB and written at thousands of lines a second, and stackmon looks at it every
second as root, so `LogTail.poll()` is built to cost little and never surprise:

- The first poll starts near the END. With a `line_time` function and a `since` time it reads
  backwards in 64 KiB steps only until it meets a line older than `since` (the start of the
  window), never more than `backfill_limit` bytes; without them it reads the last
  `backfill_bytes` (0: start exactly at the end). The first poll's lines are marked
  `backfill=True`: the caller knows they were written before it started watching.
- Each later poll reads what was appended, at most `poll_budget` bytes. When more is waiting
  (a burst, or stackmon fell behind) the OLDEST excess is skipped, not the newest: a monitor
  must show now. Skipped bytes are counted in the result, never silent.
- Rotation (see `_check_rotation`): rename + new file (the old descriptor is read to its end,
  and drained for `drain_grace` seconds more, since nginx writes to it until it reopens its
  logs; the new file is read from 0), copytruncate (the file shrank, or the 64 bytes before our
  read position changed: start again at 0), delete (the open descriptor is kept and read until
  a new file appears at the path).
- A partial last line is held until its newline arrives. A line longer than `max_line` bytes
  is cut to that length (the rest dropped and counted), so one 100 KB line, or a binary file
  without newlines, costs at most `max_line` bytes of memory. Bytes are decoded as UTF-8 with
  replacement characters: non-UTF-8 input never raises.
- The open is non-blocking, and only a regular file is read (fstat on the descriptor we read
  from): a FIFO or a device is refused with a reason. A missing or unreadable file is an
  `error` in the result for this log only; the next poll tries again.

Reads are plain file reads (no threads, no inotify); a caller that must not block its event
loop runs `poll()` in a thread. One LogTail is not thread-safe: poll it from one thread.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from stackmon.bounded_io import describe_type

__all__ = [
    "DEFAULT_BACKFILL_LIMIT",
    "DEFAULT_MAX_LINE",
    "DEFAULT_POLL_BUDGET",
    "LogTail",
    "TailRead",
]

DEFAULT_MAX_LINE = 16 * 1024
DEFAULT_POLL_BUDGET = 8 * 1024 * 1024
DEFAULT_BACKFILL_LIMIT = 8 * 1024 * 1024
_STEP = 64 * 1024
_CHUNK = 1024 * 1024
_FINGERPRINT = 64
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class TailRead:
    """What one poll of a log gave.

    lines: complete lines (without the newline), oldest first; from a rotated-away file first.
    bytes_read: bytes read from the file(s) this poll.
    skipped_bytes: bytes of the log that were NOT read (over the per-poll budget, or the rest
        of a cut line); counted so the UI can say "lines skipped".
    cut_lines: lines longer than max_line, kept only up to max_line.
    notes: what happened to the file, in words ("rotated: ...", "truncated ...").
    error: why the log could not be read at all this poll (None when it was).
    backfill: the lines were already in the file when following started (first poll).
    """

    lines: tuple[str, ...] = ()
    bytes_read: int = 0
    skipped_bytes: int = 0
    cut_lines: int = 0
    notes: tuple[str, ...] = ()
    error: str | None = None
    backfill: bool = False


class _Reader:
    """One open descriptor and where we are in it (the current file, or a rotated-away one
    being drained)."""

    __slots__ = ("cut", "fd", "fingerprint", "ident", "last_data", "offset", "partial",
                 "resync")

    def __init__(self, fd: int, ident: tuple[int, int], offset: int, now: float) -> None:
        self.fd = fd
        self.ident = ident
        self.offset = offset
        self.partial = b""
        self.cut = False        # the held partial line was already cut: drop until newline
        self.resync = False     # we jumped into the middle of a line: drop up to the newline
        self.fingerprint = b""  # the bytes just before `offset`, to notice a rewritten file
        self.last_data = now

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _Poll:
    """Mutable accumulator for one poll; frozen into a TailRead at the end."""

    __slots__ = ("bytes_read", "cut_lines", "lines", "notes", "skipped")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bytes_read = 0
        self.skipped = 0
        self.cut_lines = 0
        self.notes: list[str] = []


class LogTail:
    """Follows one log file; call `poll()` once per interval. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_line: int = DEFAULT_MAX_LINE,
        poll_budget: int = DEFAULT_POLL_BUDGET,
        backfill_bytes: int = 0,
        backfill_limit: int = DEFAULT_BACKFILL_LIMIT,
        since: float | None = None,
        line_time: Callable[[str], float | None] | None = None,
        drain_grace: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path)
        self.max_line = max(64, max_line)
        self.poll_budget = max(_STEP, poll_budget)
        self.backfill_bytes = max(0, backfill_bytes)
        self.backfill_limit = max(0, backfill_limit)
        self.since = since
        self.line_time = line_time
        self.drain_grace = drain_grace
        self._clock = clock
        self._current: _Reader | None = None
        self._draining: list[_Reader] = []
        # Backfill done, or the file was missing at first: later opens read from 0.
        self._started = False
        self._deleted = False     # the path vanished; we keep reading the open descriptor

    # ------------------------------------------------------------------ public

    def poll(self) -> TailRead:
        """Read what is new since the last poll (the first poll: the backfill)."""
        acc = _Poll()
        for reader in list(self._draining):
            self._read_new(reader, acc)
            if self._clock() - reader.last_data > self.drain_grace:
                reader.close()
                self._draining.remove(reader)
        backfill = False
        if self._current is None:
            error = self._open_first(acc)
            if error is not None:
                return self._result(acc, error=error)
            backfill = True
        assert self._current is not None
        self._read_new(self._current, acc)
        self._check_rotation(acc)
        return self._result(acc, backfill=backfill)

    def close(self) -> None:
        for reader in (*self._draining, self._current):
            if reader is not None:
                reader.close()
        self._draining.clear()
        self._current = None

    def __enter__(self) -> LogTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def position(self) -> int | None:
        """Offset of the next byte to read in the current file (None before the first open)."""
        return self._current.offset if self._current is not None else None

    # ------------------------------------------------------------------ opening

    def _open(self) -> tuple[int, os.stat_result] | str:
        """A descriptor on the path, or why not (one line)."""
        try:
            fd = os.open(self.path, _FLAGS)
        except FileNotFoundError:
            return "does not exist"
        except PermissionError:
            return "permission denied"
        except OSError as exc:
            return f"cannot open: {exc.strerror or exc}"
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            return f"cannot stat: {exc.strerror or exc}"
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return f"is {describe_type(st.st_mode)}, not a regular file; not reading it"
        return fd, st

    def _open_first(self, acc: _Poll) -> str | None:
        """Open for the first time (or again after it was missing): start near the end."""
        opened = self._open()
        if isinstance(opened, str):
            # A file that did not exist yet is new when it appears: read from its start.
            self._started = self._started or opened == "does not exist"
            return opened
        fd, st = opened
        start = self._backfill_start(fd, st.st_size, acc) if not self._started else 0
        start = _line_start(fd, start, st.st_size)
        reader = _Reader(fd, (st.st_dev, st.st_ino), start, self._clock())
        # Only when the file ends inside a line (being written): its rest is not a line.
        reader.resync = start > 0 and _pread(fd, 1, start - 1) != b"\n"
        _refresh_fingerprint(reader)
        self._current = reader
        self._started = True
        self._deleted = False
        return None

    def _backfill_start(self, fd: int, size: int, acc: _Poll) -> int:
        """Where the first poll starts reading: the end, minus what the window needs (the
        offset may sit inside a line; `_line_start` moves it to the next line)."""
        if self.line_time is None or self.since is None:
            return max(0, size - self.backfill_bytes) if self.backfill_bytes else size
        floor = max(0, size - self.backfill_limit)
        pos = size
        while pos > floor:
            pos = max(floor, pos - _STEP)
            block = _pread(fd, min(_STEP, size - pos), pos)
            first = self._first_time(block, skip_first=pos > 0)
            if first is not None and first < self.since:
                return pos
        if floor > 0:
            acc.notes.append(f"window start not reached: read only the last "
                             f"{self.backfill_limit // (1024 * 1024)} MiB of {size} bytes")
        return floor

    def _first_time(self, block: bytes, *, skip_first: bool) -> float | None:
        """The time of the first complete line in `block` that has one."""
        assert self.line_time is not None
        lines = block.split(b"\n")
        if skip_first:
            lines = lines[1:]
        for raw in lines[:-1]:
            when = self.line_time(raw[: self.max_line].decode("utf-8", "replace"))
            if when is not None:
                return when
        return None

    # ------------------------------------------------------------------ reading

    def _read_new(self, reader: _Reader, acc: _Poll) -> None:
        """Read `reader`'s descriptor from its offset to its end (within the budget)."""
        try:
            size = os.fstat(reader.fd).st_size
        except OSError:
            return
        if size < reader.offset or not self._same_prefix(reader):
            acc.notes.append(f"truncated or rewritten (copytruncate?): reading {self.path} "
                             "again from its start")
            reader.offset = 0
            reader.partial, reader.cut, reader.resync = b"", False, False
        available = size - reader.offset
        if available <= 0:
            return
        budget = max(0, self.poll_budget - acc.bytes_read)
        if available > budget:
            skip = available - budget
            acc.skipped += skip
            acc.notes.append(f"{skip} bytes skipped: more than {self.poll_budget} bytes "
                             "waiting in one poll")
            reader.offset += skip
            acc.skipped += len(reader.partial)
            reader.partial, reader.cut = b"", False
            reader.resync = _pread(reader.fd, 1, reader.offset - 1) != b"\n"
            _refresh_fingerprint(reader)
        end = reader.offset + min(available, budget)
        while reader.offset < end:
            data = _pread(reader.fd, min(_CHUNK, end - reader.offset), reader.offset)
            if not data:
                break
            if len(data) >= _FINGERPRINT:
                reader.fingerprint = data[-_FINGERPRINT:]
            else:
                reader.fingerprint = (reader.fingerprint + data)[-_FINGERPRINT:]
            reader.offset += len(data)
            acc.bytes_read += len(data)
            reader.last_data = self._clock()
            self._split(reader, data, acc)

    def _same_prefix(self, reader: _Reader) -> bool:
        """Whether the bytes just before our offset are still the ones we read there: a file
        truncated and then written past our offset again (copytruncate between two polls)
        has the same size story but different content."""
        fp = reader.fingerprint
        if not fp or reader.offset < len(fp):
            return True
        return _pread(reader.fd, len(fp), reader.offset - len(fp)) == fp

    def _split(self, reader: _Reader, data: bytes, acc: _Poll) -> None:
        """Complete lines of `data` (after what `reader` held) into acc; keep the rest."""
        if reader.resync or reader.cut:
            nl = data.find(b"\n")
            acc.skipped += len(data) if nl < 0 else nl
            if nl < 0:
                return
            if reader.cut:
                acc.cut_lines += 1
                acc.lines.append(reader.partial.decode("utf-8", "replace"))
            reader.partial, reader.cut, reader.resync = b"", False, False
            data = data[nl + 1:]
        last = data.rfind(b"\n")
        if last < 0:
            self._hold(reader, reader.partial + data, acc)
            return
        complete = reader.partial + data[:last] if reader.partial else data[:last]
        self._hold(reader, data[last + 1:], acc)
        text = complete.decode("utf-8", "replace").split("\n")
        limit = self.max_line
        if len(complete) > limit and max(map(len, text)) > limit:
            for i, line in enumerate(text):
                if len(line) > limit:
                    acc.skipped += len(line) - limit
                    acc.cut_lines += 1
                    text[i] = line[:limit]
        acc.lines.extend(text)

    def _hold(self, reader: _Reader, rest: bytes, acc: _Poll) -> None:
        if len(rest) > self.max_line:
            acc.skipped += len(rest) - self.max_line
            reader.partial, reader.cut = rest[: self.max_line], True
        else:
            reader.partial = rest

    # ------------------------------------------------------------------ rotation

    def _check_rotation(self, acc: _Poll) -> None:
        """After reading the current descriptor to its end: is the path still the same file?"""
        current = self._current
        assert current is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self._deleted:
                acc.notes.append(f"{self.path} was deleted: reading the open file until a "
                                 "new one appears")
                self._deleted = True
            return
        except OSError:
            return
        if (st.st_dev, st.st_ino) == current.ident:
            self._deleted = False
            return
        opened = self._open()
        if isinstance(opened, str):
            return  # the new file is not readable yet: keep the old one, try next poll
        fd, new_st = opened
        acc.notes.append(f"rotated: {self.path} is a new file; the old one is read to its end")
        current.last_data = self._clock()
        self._draining.append(current)
        self._current = _Reader(fd, (new_st.st_dev, new_st.st_ino), 0, self._clock())
        self._deleted = False
        self._read_new(self._current, acc)

    # ------------------------------------------------------------------ result

    @staticmethod
    def _result(acc: _Poll, *, error: str | None = None, backfill: bool = False) -> TailRead:
        return TailRead(lines=tuple(acc.lines), bytes_read=acc.bytes_read,
                        skipped_bytes=acc.skipped, cut_lines=acc.cut_lines,
                        notes=tuple(acc.notes), error=error, backfill=backfill)


def _line_start(fd: int, pos: int, size: int) -> int:
    """The first line start at or after `pos` (size when the rest has no newline)."""
    if pos <= 0:
        return 0
    pos -= 1  # a newline right before `pos` makes `pos` itself a line start
    while pos < size:
        block = _pread(fd, _STEP, pos)
        if not block:
            break
        nl = block.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(block)
    return size


def _refresh_fingerprint(reader: _Reader) -> None:
    n = min(_FINGERPRINT, reader.offset)
    reader.fingerprint = _pread(reader.fd, n, reader.offset - n) if n else b""


def _pread(fd: int, n: int, offset: int) -> bytes:
    try:
        return os.pread(fd, n, offset)
    except OSError:
        return b""

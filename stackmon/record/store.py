"""A recording: one SQLite file holding every poll of every host, its events and actions.

Layout (format 1; `meta` says which):

    meta(key, value)                 format, codec, created_at, settings, hosts
    poll(id, host, taken_at, severity, kind, base, chain, data)
                                     one row per poll of one host; `data` is the host object of
                                     the snapshot JSON (stackmon.snapshot_json.host_to_dict:
                                     already redacted), compressed
    event(host, at, source, kind, worker, pid, uri, text)
                                     every log event seen once (the polls repeat a 60 s window)
    action(host, at, action, outcome, actor, worker_id, target_pid, uri, message)
                                     stackmon's own actions, from the audit log

Why these choices (measured with bench/bench_record.py):
- Compression: zstd, each poll compressed with the host's previous poll as a raw-content
  dictionary (a delta: the workers, sockets and stuck requests of one second are the next
  second's too). A 64 workers x 8 threads host with 256 requests in flight is 340 KB of JSON;
  zlib or zstd alone leave ~29 KB a poll (>100 MB/h), the delta ~5 KB (~18 MB/h) for ~1 ms.
  A keyframe (no dictionary) every `keyframe_every` polls bounds what a seek decodes and what a
  damaged row takes with it: a delta needs its chain back to the keyframe.
- Durability: WAL, a commit per poll, synchronous=NORMAL. A committed poll is in the WAL in the
  kernel's page cache, so a recorder killed with SIGKILL loses at most the poll it was writing
  (a power cut may lose the last ones; fsync per second is not worth it for a monitor).
- Retention as it writes: whole chains whose newest poll is older than `retain_s` are deleted
  (so a kept delta never loses its keyframe; at most one chain past the limit stays), and the
  freed pages are given back (auto_vacuum=INCREMENTAL).
- Only redacted data: polls go through host_to_dict (request variables already redacted at the
  source, other text through visible()); event, action and URI texts through redact.clean
  again. The file is created 0600 (the WAL and shm files take its mode): it holds URIs.
- Bounds: a poll's JSON is at most MAX_DOC bytes (larger: stored without its request variables,
  then refused); decompression is capped at the same size; event and action texts are cut.

Reading (`Recording`) tolerates damage: a file that is not SQLite or not a recording is a
RecordingError with one line; a truncated or partly overwritten one yields every row still
readable, and `problems` says what was lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zstandard as zstd

from stackmon.health import assess
from stackmon.model import HostSnapshot
from stackmon.redact import clean
from stackmon.snapshot_json import host_from_dict, host_to_dict

FORMAT = 1
CODEC = "zstd-delta"
KEYFRAME_EVERY = 60
MAX_DOC = 64 * 1024 * 1024
MAX_TEXT = 1000
LEVEL = 3
SQLITE_MAGIC = b"SQLite format 3\x00"
KIND_KEY, KIND_DELTA = 0, 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS poll (
    id INTEGER PRIMARY KEY, host TEXT NOT NULL, taken_at REAL NOT NULL,
    severity TEXT NOT NULL, kind INTEGER NOT NULL, base INTEGER, chain INTEGER NOT NULL,
    data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS poll_time ON poll (taken_at);
CREATE INDEX IF NOT EXISTS poll_chain ON poll (chain);
CREATE TABLE IF NOT EXISTS event (
    id INTEGER PRIMARY KEY, host TEXT NOT NULL, at REAL NOT NULL, source TEXT NOT NULL,
    kind TEXT NOT NULL, worker INTEGER, pid INTEGER, uri TEXT, text TEXT NOT NULL,
    UNIQUE (host, at, kind, worker, pid, text));
CREATE INDEX IF NOT EXISTS event_time ON event (at);
CREATE TABLE IF NOT EXISTS action (
    id INTEGER PRIMARY KEY, host TEXT NOT NULL, at REAL NOT NULL, action TEXT NOT NULL,
    outcome TEXT NOT NULL, actor TEXT NOT NULL, worker_id INTEGER, target_pid INTEGER,
    uri TEXT, message TEXT NOT NULL,
    UNIQUE (host, at, action, outcome, target_pid));
CREATE INDEX IF NOT EXISTS action_time ON action (at);
"""


class RecordingError(Exception):
    """A recording that cannot be written or read at all; `str()` is one line for the user."""


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    return clean("" if value is None else str(value))[:limit]


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def host_recording(directory: str | os.PathLike[str], host: str) -> Path:
    """Where an agent started with --record DIR keeps a host's recording (DIR made 0700)."""
    import re

    folder = Path(directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", host)[:100].lstrip(".") or "host"
    return folder / f"{safe}.stackmon.db"


# --- writing ----------------------------------------------------------------------------------


@dataclass
class _Chain:
    """Per host: the previous poll (the next one's dictionary) and its chain."""

    last_id: int = 0
    last_doc: bytes = b""
    chain: int = 0
    length: int = 0


def _create_private(path: Path) -> None:
    """The file exists, mode 0600, before SQLite opens it (its WAL and shm copy the mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        st = os.fstat(fd)
        if st.st_size == 0 or st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class Recorder:
    """Writes polls into one recording file (synchronously: see ThreadedRecorder).

    `retain_s` None keeps everything. `audit_path` is the audit log whose new entries (from
    now on) become actions; None records none from it.
    """

    def __init__(self, path: str | os.PathLike[str], *, retain_s: float | None = None,
                 keyframe_every: int = KEYFRAME_EVERY, settings: dict[str, Any] | None = None,
                 audit_path: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.retain_s = retain_s
        self.keyframe_every = max(1, keyframe_every)
        self.clock = clock
        self._chains: dict[str, _Chain] = {}
        self._seen_events: dict[tuple[Any, ...], None] = {}
        self._last_prune = 0.0
        self.polls = 0
        try:
            if self.path.exists() and self.path.stat().st_size:
                _check_magic(self.path)
            else:
                _create_private(self.path)
            self.db = sqlite3.connect(self.path, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self._init_meta(settings or {})
            self._resume_chains()
        except sqlite3.DatabaseError as exc:
            raise RecordingError(f"{self.path}: cannot record into it ({exc})") from None
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot record into it "
                                 f"({exc.strerror or exc})") from None
        self._audit = _AuditTail(Path(audit_path)) if audit_path else None

    def _init_meta(self, settings: dict[str, Any]) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        if row is not None:
            if row[0] != str(FORMAT):
                raise RecordingError(f"{self.path}: a recording of format {row[0]}, this "
                                     f"stackmon writes format {FORMAT}")
            return
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                ("format", str(FORMAT)), ("codec", CODEC),
                ("created_at", repr(self.clock())), ("settings", json.dumps(settings))])

    def _resume_chains(self) -> None:
        """Appending to an existing file starts every host on a new keyframe."""
        self._chains.clear()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def write(self, snap: HostSnapshot) -> None:
        """Store one poll of one host (one transaction), its new events, new audit entries,
        and enforce retention."""
        doc = host_to_dict(snap)
        severity = str(doc["state"]["severity"])
        self.write_doc(doc, severity)

    def write_doc(self, doc: dict[str, Any], severity: str | None = None) -> None:
        """Store a host object of the snapshot JSON (a live poll's, or one from an agent's
        history: read back through host_from_dict's cleaning first)."""
        host = _text(doc.get("name"), 200)
        taken_at = float(doc.get("taken_at") or 0.0)
        if severity is None:
            severity = assess(host_from_dict(doc)).severity
        data = _encode_doc(doc)
        chain = self._chains.setdefault(host, _Chain())
        events = self._new_events(host, doc.get("events") or [])
        actions = self._audit.read() if self._audit is not None else []
        with self._transaction():
            if chain.last_id and chain.length < self.keyframe_every:
                blob, kind, base = _compress(data, chain.last_doc), KIND_DELTA, chain.last_id
            else:
                blob, kind, base = _compress(data, None), KIND_KEY, None
            cur = self.db.execute(
                "INSERT INTO poll (host, taken_at, severity, kind, base, chain, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (host, taken_at, severity, kind, base, chain.chain if base else 0, blob))
            row_id = int(cur.lastrowid or 0)
            if kind == KIND_KEY:
                self.db.execute("UPDATE poll SET chain=? WHERE id=?", (row_id, row_id))
                chain.chain, chain.length = row_id, 0
            self.db.executemany(
                "INSERT OR IGNORE INTO event (host, at, source, kind, worker, pid, uri, text) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", events)
            self.db.executemany(
                "INSERT OR IGNORE INTO action (host, at, action, outcome, actor, worker_id, "
                "target_pid, uri, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", actions)
        chain.last_id, chain.last_doc = row_id, data
        chain.length += 1
        self.polls += 1
        self._prune()

    def write_marks(self, events: Any, actions: Any) -> None:
        """Store events and actions read elsewhere (an agent's history: EventRow and ActionRow
        values, already cleaned), each once."""
        event_rows = [(e.host, e.at, e.source, e.kind, e.worker, e.pid, e.uri, e.text)
                      for e in events]
        action_rows = [(a.host, a.at, a.action, a.outcome, a.actor, a.worker_id, a.target_pid,
                        a.uri, a.message) for a in actions]
        if not event_rows and not action_rows:
            return
        with self._transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO event (host, at, source, kind, worker, pid, uri, text) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", event_rows)
            self.db.executemany(
                "INSERT OR IGNORE INTO action (host, at, action, outcome, actor, worker_id, "
                "target_pid, uri, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", action_rows)

    def _new_events(self, host: str, events: list[Any]) -> list[tuple[Any, ...]]:
        out = []
        for e in events:
            if not isinstance(e, dict):
                continue
            row = (host, float(e.get("at") or 0.0), _text(e.get("source"), 40),
                   _text(e.get("kind"), 40), _opt_int(e.get("worker")), _opt_int(e.get("pid")),
                   _text(e.get("uri")) or None, _text(e.get("text")))
            if row in self._seen_events:
                continue
            self._seen_events[row] = None
            out.append(row)
        while len(self._seen_events) > 4096:  # the window's events, bounded
            del self._seen_events[next(iter(self._seen_events))]
        return out

    def _prune(self) -> None:
        """Delete what is older than retain_s: at most once every few seconds (a delete and an
        incremental vacuum cost more than a poll)."""
        if self.retain_s is None:
            return
        now = self.clock()
        if now - self._last_prune < min(10.0, self.retain_s / 4):
            return
        self._last_prune = now
        cutoff = now - self.retain_s
        live = {c.chain for c in self._chains.values()}
        with self._transaction():
            old = [r[0] for r in self.db.execute(
                "SELECT chain FROM poll GROUP BY chain HAVING max(taken_at) < ?", (cutoff,))
                if r[0] not in live]
            self.db.executemany("DELETE FROM poll WHERE chain=?", [(c,) for c in old])
            self.db.execute("DELETE FROM event WHERE at < ?", (cutoff,))
            self.db.execute("DELETE FROM action WHERE at < ?", (cutoff,))
        if old:
            self.db.execute("PRAGMA incremental_vacuum")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


def _encode_doc(doc: dict[str, Any]) -> bytes:
    """Compact JSON: orjson (8x faster on a 340 KB host), the stdlib for what it refuses (a
    lone surrogate from a hostile request, an integer past 64 bits)."""
    try:
        data = orjson.dumps(doc)
    except TypeError:
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace")
    if len(data) > MAX_DOC:
        raise RecordingError(f"a poll of {len(data)} bytes is past the {MAX_DOC}-byte bound")
    return data


_PLAIN = zstd.ZstdCompressor(level=LEVEL)


def _compress(data: bytes, previous: bytes | None) -> bytes:
    if previous is None:
        return _PLAIN.compress(data)
    d = zstd.ZstdCompressionDict(previous, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    return zstd.ZstdCompressor(level=LEVEL, dict_data=d).compress(data)


def _decompress(blob: bytes, previous: bytes | None) -> bytes:
    if previous is None:
        return zstd.ZstdDecompressor().decompress(blob, max_output_size=MAX_DOC)
    d = zstd.ZstdCompressionDict(previous, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    return zstd.ZstdDecompressor(dict_data=d).decompress(blob, max_output_size=MAX_DOC)


class _AuditTail:
    """The audit log's entries appended since the recorder started, read a bounded amount
    per poll (the log is append-only JSON lines; stackmon.actions.audit)."""

    CHUNK = 256 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.offset = path.stat().st_size
        except OSError:
            self.offset = 0
        self._partial = b""

    def read(self) -> list[tuple[Any, ...]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError:
            return []
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return []
            if st.st_size < self.offset:  # rotated or truncated: start over
                self.offset, self._partial = 0, b""
            chunk = os.pread(fd, self.CHUNK, self.offset)
        finally:
            os.close(fd)
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()[:65536]
        return [row for row in map(_action_row, lines) if row is not None]


def _action_row(line: bytes) -> tuple[Any, ...] | None:
    try:
        e = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(e, dict) or not isinstance(e.get("epoch"), int | float):
        return None
    request = e.get("request")
    if not isinstance(request, dict):
        request = {}
    return (_text(e.get("host"), 200), float(e["epoch"]), _text(e.get("action"), 60),
            _text(e.get("outcome"), 60), _text(e.get("user"), 200),
            _opt_int(e.get("worker_id")), _opt_int(e.get("target_pid")),
            _text(request.get("uri")) or None, _text(e.get("message")))


class ThreadedRecorder:
    """A Recorder fed from an event loop: `submit` never blocks the caller (serialising and
    compressing a big host is milliseconds); a thread writes. The queue is bounded: a disk that
    cannot keep up drops polls (counted in `dropped`) rather than grow memory."""

    def __init__(self, recorder: Recorder, maxsize: int = 64) -> None:
        self.recorder = recorder
        self.dropped = 0
        self.error: str | None = None
        self._queue: queue.Queue[HostSnapshot | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def submit(self, snap: HostSnapshot) -> None:
        try:
            self._queue.put_nowait(snap)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            snap = self._queue.get()
            if snap is None:
                return
            try:
                self.recorder.write(snap)
            except (RecordingError, sqlite3.Error, OSError) as exc:
                self.error = str(exc)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self.recorder.close()


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PollRef:
    """A poll's place in the recording, without its data."""

    id: int
    host: str
    taken_at: float
    severity: str
    kind: int
    base: int | None


@dataclass(frozen=True, slots=True)
class EventRow:
    host: str
    at: float
    source: str
    kind: str
    worker: int | None
    pid: int | None
    uri: str | None
    text: str


@dataclass(frozen=True, slots=True)
class ActionRow:
    host: str
    at: float
    action: str
    outcome: str
    actor: str
    worker_id: int | None
    target_pid: int | None
    uri: str | None
    message: str


def _check_magic(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if head != SQLITE_MAGIC:
        raise RecordingError(f"{path}: not a stackmon recording (not an SQLite file)")


@dataclass
class Recording:
    """A recording opened for reading (replay, report, the agent's history)."""

    path: Path
    db: sqlite3.Connection
    settings: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    _cache: dict[int, bytes] = field(default_factory=dict)
    _refs: dict[int, PollRef] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Recording:
        p = Path(path)
        if not p.is_file():
            raise RecordingError(f"{p}: no such recording")
        _check_magic(p)
        try:
            db = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True,
                                 check_same_thread=False)
            # A truncated file's header claims more pages than there are, which SQLite
            # refuses outright unless the schema is "writable"; the connection is read-only.
            db.execute("PRAGMA writable_schema=ON")
            rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise RecordingError(f"{p}: not a readable stackmon recording ({exc})") from None
        if rows.get("format") != str(FORMAT) or rows.get("codec") != CODEC:
            raise RecordingError(f"{p}: not a stackmon recording of format {FORMAT} "
                                 f"(format {rows.get('format')!r})")
        try:
            settings = json.loads(rows.get("settings") or "{}")
        except ValueError:
            settings = {}
        return cls(p, db, settings if isinstance(settings, dict) else {})

    def close(self) -> None:
        self.db.close()

    def _note(self, what: str, exc: Exception) -> None:
        """A damaged stretch, said as such: sqlite's own words for overwritten pages vary
        ("malformed", "string or blob too big", "Could not decode to UTF-8 column ... with
        text '<the garbage>'"), and the garbage itself is made visible and cut short."""
        reason = clean(str(exc))
        if len(reason) > 120:
            reason = reason[:119] + "…"
        text = f"{what}: damaged, skipped ({reason})"
        if text not in self.problems and len(self.problems) < 50:
            self.problems.append(text)

    def _scan(self, sql: str, args: tuple[Any, ...], what: str) -> Iterator[tuple[Any, ...]]:
        """Rows of `sql` (which selects `id` first, takes `id > ?` as its first parameter and
        `LIMIT ?` as its last, ordered by id), in batches. A batch that fails is retried a row
        at a time, and a row that cannot be read is skipped by growing steps of ids, so a
        truncated or overwritten file still yields every row that is readable."""
        last, gap, batch, failures = 0, 1, 2000, 0
        try:
            top = self.db.execute(f"SELECT max(id) FROM {what}").fetchone()[0] or 0
        except sqlite3.DatabaseError as exc:
            self._note(f"{what} rows", exc)
            top = 1 << 62
        while last < top:
            try:
                rows = self.db.execute(sql, (last, *args, batch)).fetchall()
            except sqlite3.DatabaseError as exc:
                if batch > 1:
                    batch = 1
                    continue
                self._note(f"{what} rows after #{last}", exc)
                failures += 1
                if failures > 64:
                    return
                last, gap = last + gap, gap * 2
                continue
            if not rows:
                return
            failures, gap = 0, 1
            yield from rows
            last = rows[-1][0]
            batch = min(batch * 2, 2000)

    def polls(self, start: float | None = None, end: float | None = None) -> list[PollRef]:
        """Every readable poll in [start, end], in time order."""
        lo = -1e300 if start is None else start
        hi = 1e300 if end is None else end
        refs = [PollRef(int(r[0]), str(r[1]), float(r[2]), str(r[3]), int(r[4]),
                        None if r[5] is None else int(r[5]))
                for r in self._scan("SELECT id, host, taken_at, severity, kind, base FROM poll "
                                    "WHERE id > ? AND taken_at BETWEEN ? AND ? ORDER BY id "
                                    "LIMIT ?", (lo, hi), "poll")]
        for ref in refs:
            self._refs[ref.id] = ref
        refs.sort(key=lambda r: (r.taken_at, r.id))
        return refs

    def hosts(self) -> list[str]:
        seen: dict[str, None] = {}
        for ref in self.polls():
            seen.setdefault(ref.host, None)
        return list(seen)

    def doc_bytes(self, poll_id: int) -> bytes:
        """The JSON of one poll, decoding its chain back to the keyframe as far as needed
        (the last decoded polls are cached: replay steps forward one poll at a time)."""
        cached = self._cache.get(poll_id)
        if cached is not None:
            return cached
        chain: list[tuple[int, int | None, bytes]] = []
        current: int | None = poll_id
        previous: bytes | None = None
        while current is not None:
            if current in self._cache:
                previous = self._cache[current]
                break
            try:
                row = self.db.execute("SELECT base, data FROM poll WHERE id=?",
                                      (current,)).fetchone()
            except sqlite3.DatabaseError as exc:
                raise RecordingError(f"poll #{current} cannot be read ({exc})") from None
            if row is None:
                raise RecordingError(f"poll #{current} is missing (its chain is broken)")
            chain.append((current, row[0], bytes(row[1])))
            current = row[0]
            if len(chain) > 100_000:
                raise RecordingError(f"poll #{poll_id}: its chain does not end")
        for row_id, base, blob in reversed(chain):
            try:
                previous = _decompress(blob, previous if base is not None else None)
            except zstd.ZstdError as exc:
                raise RecordingError(f"poll #{row_id} is damaged ({exc})") from None
            self._remember(row_id, previous)
        assert previous is not None
        return previous

    def _remember(self, row_id: int, data: bytes) -> None:
        self._cache[row_id] = data
        while len(self._cache) > 8:
            del self._cache[next(iter(self._cache))]

    def doc(self, poll_id: int) -> dict[str, Any]:
        try:
            value = json.loads(self.doc_bytes(poll_id))
        except (ValueError, RecursionError) as exc:
            raise RecordingError(f"poll #{poll_id} is damaged ({exc})") from None
        if not isinstance(value, dict) or "name" not in value:
            raise RecordingError(f"poll #{poll_id} is not a host object")
        return value

    def snapshot(self, poll_id: int) -> HostSnapshot:
        """The poll as the TUI shows it (read back through host_from_dict's cleaning)."""
        try:
            return host_from_dict(self.doc(poll_id))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordingError(f"poll #{poll_id} is not a host object ({exc})") from None

    def events(self, start: float | None = None, end: float | None = None) -> list[EventRow]:
        lo, hi = -1e300 if start is None else start, 1e300 if end is None else end
        rows = [EventRow(*r[1:]) for r in self._scan(
            "SELECT id, host, at, source, kind, worker, pid, uri, text FROM event "
            "WHERE id > ? AND at BETWEEN ? AND ? ORDER BY id LIMIT ?", (lo, hi), "event")]
        return sorted(rows, key=lambda e: e.at)

    def actions(self, start: float | None = None, end: float | None = None) -> list[ActionRow]:
        lo, hi = -1e300 if start is None else start, 1e300 if end is None else end
        rows = [ActionRow(*r[1:]) for r in self._scan(
            "SELECT id, host, at, action, outcome, actor, worker_id, target_pid, uri, message "
            "FROM action WHERE id > ? AND at BETWEEN ? AND ? ORDER BY id LIMIT ?",
            (lo, hi), "action")]
        return sorted(rows, key=lambda a: a.at)

    def iter_docs(self, refs: list[PollRef]) -> Iterator[tuple[PollRef, dict[str, Any]]]:
        """(ref, host object) for each readable poll; a damaged one is noted in `problems`
        and skipped (with the deltas that depend on it)."""
        for ref in refs:
            try:
                yield ref, self.doc(ref.id)
            except RecordingError as exc:
                self._note("polls", exc)

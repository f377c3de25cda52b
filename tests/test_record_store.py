"""The recording file: polls stored and read back exactly, deltas, retention, damage, mode."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from stackmon.logs.host import LogSummary
from stackmon.logs.uwsgi_events import Event
from stackmon.model import HostSnapshot
from stackmon.record.store import Recorder, Recording, RecordingError
from stackmon.snapshot_json import host_to_dict
from tests.tui_support import recorded

T0 = 1_800_000_000.0


def polls(n: int, start: float = T0, name: str = "web-1") -> list[HostSnapshot]:
    """n successive polls of the recorded demo host, one a second, request ages growing."""
    base = recorded("demo-hangs.json", name)
    out = []
    for i in range(n):
        inst = base.uwsgi[0]
        workers = tuple(replace(w, requests=w.requests + i) for w in inst.workers)
        out.append(replace(base, taken_at=start + i,
                           uwsgi=(replace(inst, workers=workers),)))
    return out


def record(path: Path, snaps: list[HostSnapshot], **kwargs: object) -> Recorder:
    rec = Recorder(path, **kwargs)  # type: ignore[arg-type]
    for s in snaps:
        rec.write(s)
    return rec


def test_polls_read_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    snaps = polls(130)
    record(path, snaps, keyframe_every=60).close()
    rec = Recording.open(path)
    refs = rec.polls()
    assert [r.taken_at for r in refs] == [s.taken_at for s in snaps]
    # keyframes every 60 polls, deltas between
    assert [r.id for r in refs if r.kind == 0] == [refs[0].id, refs[60].id, refs[120].id]
    for ref, snap in zip(refs, snaps, strict=True):
        assert rec.doc(ref.id) == json.loads(json.dumps(host_to_dict(snap)))
    # random access in the middle of a chain (no cache) gives the same
    fresh = Recording.open(path)
    assert fresh.doc(refs[97].id)["taken_at"] == T0 + 97
    assert fresh.snapshot(refs[97].id).uwsgi[0].workers[3].requests_in_flight[0].uri \
        == "/hang/report?id=42"
    assert not rec.problems


def test_deltas_are_much_smaller_than_keyframes(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    record(path, polls(20)).close()
    db = sqlite3.connect(path)
    sizes = dict(db.execute("SELECT kind, avg(length(data)) FROM poll GROUP BY kind"))
    assert sizes[1] < sizes[0] / 4


def test_events_are_stored_once_and_actions_come_from_the_audit_log(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    audit.write_text('{"time": "x", "epoch": 1.0, "host": "old", "action": "kill", '
                     '"outcome": "ok", "user": "root", "message": "before the recording"}\n')
    ev = Event(at=T0 + 1, source="uwsgi", kind="harakiri", worker=4, pid=123,
               uri="/hang/report?token=s3cr3t", text="HARAKIRI ON WORKER 4 token=s3cr3t")
    logs = LogSummary(taken_at=T0, window_s=60, http=None, upstream_errors=(), events=(ev,))
    snaps = [replace(s, logs=logs) for s in polls(5)]
    rec = Recorder(tmp_path / "r.db", audit_path=audit)
    rec.write(snaps[0])
    with audit.open("a") as f:
        f.write(json.dumps({"time": "x", "epoch": T0 + 2, "host": "web-1", "action": "kill",
                            "worker_id": 4, "target_pid": 123, "outcome": "ok",
                            "user": "alice", "request": {"uri": "/x?password=hunter2"},
                            "message": "SIGTERM sent"}) + "\n")
    for s in snaps[1:]:
        rec.write(s)
    rec.close()
    r = Recording.open(tmp_path / "r.db")
    events = r.events()
    assert len(events) == 1 and events[0].kind == "harakiri" and events[0].worker == 4
    assert "s3cr3t" not in (events[0].uri or "") + events[0].text
    actions = r.actions()
    assert [(a.host, a.action, a.target_pid, a.actor) for a in actions] \
        == [("web-1", "kill", 123, "alice")]
    assert "hunter2" not in (actions[0].uri or "")
    assert b"hunter2" not in (tmp_path / "r.db").read_bytes()


def test_retention_drops_whole_old_chains(tmp_path: Path) -> None:
    now = [T0]
    rec = Recorder(tmp_path / "r.db", retain_s=20, keyframe_every=5, clock=lambda: now[0])
    for snap in polls(60):
        now[0] = snap.taken_at
        rec.write(snap)
    rec.close()
    kept = [r.taken_at for r in Recording.open(tmp_path / "r.db").polls()]
    assert kept[-1] == T0 + 59
    # nothing older than the limit plus one chain (5 polls) and one prune period (5 s)
    assert kept[0] >= T0 + 59 - 20 - 5 - 5
    assert kept == sorted(kept) and len(kept) == kept[-1] - kept[0] + 1
    # and every poll that is kept still decodes (its keyframe was kept with it)
    r = Recording.open(tmp_path / "r.db")
    assert all(doc["taken_at"] for _ref, doc in r.iter_docs(r.polls()))
    assert not r.problems


def test_file_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        record(tmp_path / "r.db", polls(3)).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.db").stat().st_mode) == 0o600
    rec = Recorder(tmp_path / "w.db")
    rec.write(polls(1)[0])
    for suffix in ("-wal", "-shm"):
        assert stat.S_IMODE((tmp_path / f"w.db{suffix}").stat().st_mode) == 0o600
    rec.close()


def test_not_a_recording_is_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(RecordingError, match="not a stackmon recording"):
        Recording.open(junk)
    with pytest.raises(RecordingError, match="not a stackmon recording"):
        Recorder(junk)
    with pytest.raises(RecordingError, match="no such recording"):
        Recording.open(tmp_path / "missing.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(RecordingError, match="not a readable stackmon recording"):
        Recording.open(other)


def _damaged_copy(src: Path, dst: Path, how: str) -> None:
    shutil.copy(src, dst)
    size = dst.stat().st_size
    with open(dst, "r+b") as f:
        if how == "truncate":
            f.truncate(size * 6 // 10)
        else:  # garbage over a stretch in the middle of the file
            f.seek(size // 2)
            f.write(os.urandom(16384))


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_damaged_file_replays_what_it_can(tmp_path: Path, how: str) -> None:
    src = tmp_path / "r.db"
    record(src, polls(400), keyframe_every=20).close()
    dst = tmp_path / f"{how}.db"
    _damaged_copy(src, dst, how)
    rec = Recording.open(dst)
    refs = rec.polls()
    docs = [doc for _ref, doc in rec.iter_docs(refs)]
    assert 0 < len(docs) < 400
    assert docs[0]["taken_at"] == T0  # the beginning survives
    assert rec.problems, "the damage must be reported"
    assert all("damaged" in p for p in rec.problems), rec.problems
    # Overwritten bytes quoted by sqlite ("with text 'criti\x07n...'") are shown literally.
    assert not any(ch < " " for p in rec.problems for ch in p), rec.problems


def test_independent_decode_with_sqlite3_and_zstd(tmp_path: Path) -> None:
    """The format is plain: any tool with sqlite3 and zstd reads it (the report test relies on
    this to check figures independently)."""
    import zstandard

    record(tmp_path / "r.db", polls(3)).close()
    db = sqlite3.connect(tmp_path / "r.db")
    rows = db.execute("SELECT kind, data FROM poll ORDER BY id").fetchall()
    first = zstandard.ZstdDecompressor().decompress(rows[0][1])
    d = zstandard.ZstdCompressionDict(first, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    second = zstandard.ZstdDecompressor(dict_data=d).decompress(rows[1][1])
    assert json.loads(second)["taken_at"] == T0 + 1
    assert zlib  # (the stdlib alternative was measured and rejected: see store's docstring)

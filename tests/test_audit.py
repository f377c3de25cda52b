"""The audit log never keeps a cut record, and an action whose "started" record cannot be
written is not taken: on a real, tiny tmpfs filled to the brim, on a read-only one, and against
the real stack (the kill target must still be alive)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from stackmon.actions.audit import AuditLog, AuditWriteError
from stackmon.actions.base import ActionTarget
from stackmon.actions.kill import kill_worker
from stackmon.addresses import parse_stats_address
from tests.conftest import IN_CI

PAGE = 4096
# A valid JSON line that leaves less room in the log's first page than any record needs.
PAD = json.dumps({"pad": "p" * 4000}) + "\n"

requires_mount = pytest.mark.skipif(os.geteuid() != 0 and not IN_CI,
                                    reason="mounting a tmpfs needs root")


def _mount(where: Path, *options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=8k", *options)), "tmpfs",
                    str(where)], check=True, capture_output=True)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 KiB tmpfs (two pages), unmounted at the end."""
    where = tmp_path / "mnt"
    where.mkdir()
    _mount(where)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def fill(fs: Path) -> Path:
    """The audit log path on `fs`, which holds one pad line (4 KB, ~100 bytes short of a page)
    and no free page left: the next record gets a short write, then ENOSPC."""
    log = fs / "audit.log"
    log.write_text(PAD)
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"f" * PAGE) == PAGE:
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    with pytest.raises(OSError):  # really full: even one more page is refused
        (fs / "probe").write_bytes(b"x" * PAGE)
    return log


def remount_read_only(fs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True, capture_output=True)


def record_started(log: AuditLog) -> None:
    log.record(host="h", action="kill TERM", outcome="started", worker_id=1, target_pid=4242,
               request={"method": "GET", "uri": "/" + "u" * 200}, message="m" * 50)


@requires_mount
def test_a_record_on_a_full_disk_is_refused_whole(tiny_fs: Path) -> None:
    path = fill(tiny_fs)
    log = AuditLog(path)
    with pytest.raises(AuditWriteError) as info:
        record_started(log)
    text = str(info.value)
    assert text.startswith(f"audit log {path} cannot be written: No space left on device")
    assert text.endswith("; no action taken") and "\n" not in text
    assert path.read_text() == PAD  # the short write was cut back off: no partial line
    with pytest.raises(AuditWriteError) as after:
        log.record(host="h", action="kill TERM", outcome="ok", message="worker 1 killed")
    assert "the action went ahead but its outcome (ok: worker 1 killed) is not recorded" \
        in str(after.value)
    assert path.read_text() == PAD
    # Room again: the next record is whole, on its own line, and readable.
    (tiny_fs / "filler").unlink()
    record_started(log)
    assert [e.get("outcome") for e in log.entries()] == [None, "started"]
    assert all(json.loads(line) for line in path.read_text().splitlines())


@requires_mount
def test_read_only_audit_dir_refuses(tiny_fs: Path) -> None:
    remount_read_only(tiny_fs)
    with pytest.raises(AuditWriteError, match=r"Read-only file system; no action taken$"):
        record_started(AuditLog(tiny_fs / "audit.log"))


def _target(stack) -> ActionTarget:
    return ActionTarget(host="local", address=parse_stats_address(stack.stats_address))


def _assert_untouched(stack, worker: dict) -> None:
    proc = psutil.Process(worker["pid"])
    assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    now = next(w for w in stack.stats()["workers"] if w["id"] == worker["id"])
    assert (now["pid"], now["respawn_count"]) == (worker["pid"], worker["respawn_count"])


@requires_mount
def test_no_kill_without_its_record_full_disk_and_read_only(fresh_stack, tiny_fs: Path) -> None:
    st = fresh_stack(workers=2, threads=1, nginx=False)
    worker = st.stats()["workers"][0]
    path = fill(tiny_fs)
    with pytest.raises(AuditWriteError, match="no action taken"):
        asyncio.run(kill_worker(_target(st), worker["id"], worker["pid"], "KILL",
                                expect_spawn=worker["last_spawn"], audit=AuditLog(path)))
    assert path.read_text() == PAD
    _assert_untouched(st, worker)

    remount_read_only(tiny_fs)
    with pytest.raises(AuditWriteError, match="Read-only file system; no action taken"):
        asyncio.run(kill_worker(_target(st), worker["id"], worker["pid"], "KILL",
                                expect_spawn=worker["last_spawn"], audit=AuditLog(path)))
    _assert_untouched(st, worker)


@requires_mount
def test_cli_kill_on_a_full_disk_is_one_line_and_exit_1(fresh_stack, tiny_fs: Path) -> None:
    st = fresh_stack(workers=2, threads=1, nginx=False)
    worker = st.stats()["workers"][0]
    path = fill(tiny_fs)
    proc = subprocess.run(
        [sys.executable, "-m", "stackmon.cli", "kill", "web-1", str(worker["id"]),
         "--uwsgi", st.stats_address, "--yes", "--signal", "KILL", "--audit-log", str(path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == (f"stackmon kill: audit log {path} cannot be written: No space left "
                           "on device; no action taken\n")
    assert path.read_text() == PAD
    _assert_untouched(st, worker)


def test_a_line_cut_earlier_is_not_continued(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"time": "2024-01-01", "outcome": "started"}\n{"time": "2024-01-01", "out')
    log = AuditLog(path)
    log.record(host="h", action="kill TERM", outcome="started")
    lines = path.read_text().splitlines()
    assert lines[1] == '{"time": "2024-01-01", "out'
    assert json.loads(lines[2])["outcome"] == "started"
    assert [e["outcome"] for e in log.entries()] == ["started", "started"]


def test_a_record_glued_onto_a_cut_line_by_an_older_version_is_still_read(tmp_path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"time": "x", "outcome": "ok", "mes{"time": "y", "outcome": "sent"}\n')
    assert [e["outcome"] for e in AuditLog(path).entries()] == ["sent"]


def test_hostile_text_is_recorded_as_valid_json(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    log.record(host="h", action="kill TERM", outcome="started",
               request={"uri": "/\ud800\x1b]52;c;aGk=\x07"})
    (entry,) = log.entries()
    assert entry["request"]["uri"] == "/\ud800\x1b]52;c;aGk=\x07"


def test_concurrent_writers_never_interleave_or_cut(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    code = ("import sys; from pathlib import Path; from stackmon.actions.audit import AuditLog\n"
            "log = AuditLog(Path(sys.argv[1]))\n"
            "for i in range(200):\n"
            "    log.record(host=sys.argv[2], action='a', outcome='ok', message='x' * 3000)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), name])
             for name in ("one", "two", "three")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    lines = path.read_text().splitlines()
    assert len(lines) == 600
    assert sorted(json.loads(line)["host"] for line in lines) == \
        ["one"] * 200 + ["three"] * 200 + ["two"] * 200


@requires_mount
def test_cli_reload_on_a_full_disk_does_not_reload(fresh_stack, tiny_fs: Path) -> None:
    import time

    st = fresh_stack(workers=2, threads=1, nginx=False)
    before = sorted((w["id"], w["pid"]) for w in st.stats()["workers"])
    path = fill(tiny_fs)
    proc = subprocess.run(
        [sys.executable, "-m", "stackmon.cli", "reload", "web-1", "--uwsgi", st.stats_address,
         "--yes", "--no-follow", "--audit-log", str(path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == (f"stackmon reload: audit log {path} cannot be written: No space "
                           "left on device; no action taken\n")
    time.sleep(2)  # a graceful reload would have replaced the workers by now
    assert sorted((w["id"], w["pid"]) for w in st.stats()["workers"]) == before
    assert path.read_text() == PAD

"""LogTail on real files: start at the end, follow rotations, hold partial lines, bounded reads."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from stackmon.logs.tail import LogTail


def write(path: Path, data: bytes | str, mode: str = "ab") -> None:
    with path.open(mode) as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def numbered(start: int, stop: int, prefix: str = "line") -> str:
    return "".join(f"{prefix} {i}\n" for i in range(start, stop))


def test_starts_at_the_end_and_reads_only_what_is_appended(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    write(log, numbered(0, 1000))
    with LogTail(log) as tail:
        first = tail.poll()
        assert first.lines == () and first.backfill and first.error is None
        write(log, numbered(1000, 1003))
        assert tail.poll().lines == ("line 1000", "line 1001", "line 1002")
        assert tail.poll().lines == ()


def test_backfill_reads_backwards_only_as_far_as_the_window(tmp_path: Path) -> None:
    """Lines carry their time (the number); since=990_000 must read about the last 10,000
    lines of 1,000,000, not the whole 13 MB file."""
    log = tmp_path / "big.log"
    write(log, numbered(0, 1_000_000, "t"))
    with LogTail(log, since=990_000, line_time=lambda line: float(line.split()[1])) as tail:
        first = tail.poll()
    assert first.backfill
    numbers = [int(line.split()[1]) for line in first.lines]
    assert numbers[-1] == 999_999
    assert numbers == list(range(numbers[0], 1_000_000)), "contiguous, no half line first"
    assert 980_000 < numbers[0] <= 990_000
    assert first.bytes_read < 400_000


def test_backfill_bytes_starts_on_a_line_boundary(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    write(log, numbered(0, 100))
    with LogTail(log, backfill_bytes=30) as tail:
        lines = tail.poll().lines
    assert lines and lines[-1] == "line 99"
    assert all(line.startswith("line ") for line in lines)
    assert lines == tuple(f"line {i}" for i in range(100 - len(lines), 100))


def test_partial_line_is_held_until_complete(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    with LogTail(log) as tail:
        tail.poll()
        write(log, "GET /a 200\nGET /b 2")
        assert tail.poll().lines == ("GET /a 200",)
        write(log, "00")
        assert tail.poll().lines == ()
        write(log, "\n")
        assert tail.poll().lines == ("GET /b 200",)


def test_starting_inside_a_line_being_written_drops_its_rest(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    write(log, "old 1\nhalf of a li")
    with LogTail(log) as tail:
        tail.poll()
        write(log, "ne\nnew 2\n")
        assert tail.poll().lines == ("new 2",)


def test_non_utf8_and_garbage_never_raise(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    with LogTail(log) as tail:
        tail.poll()
        write(log, b"caf\xe9 \xff\xfe\x00\x1b[31m\nok\n")
        lines = tail.poll().lines
    assert lines == ("caf\ufffd \ufffd\ufffd\x00\x1b[31m", "ok")


def test_a_100kb_line_is_cut_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    with LogTail(log, max_line=16384) as tail:
        tail.poll()
        write(log, b"x" * 100_000 + b"\nnext\n")
        got = tail.poll()
    assert [len(line) for line in got.lines] == [16384, 4]
    assert got.cut_lines == 1
    assert got.skipped_bytes == 100_000 - 16384


def test_a_long_line_arriving_over_several_polls_stays_bounded(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    with LogTail(log, max_line=1000) as tail:
        tail.poll()
        skipped = 0
        for _ in range(50):
            write(log, b"y" * 10_000)
            got = tail.poll()
            assert got.lines == ()
            skipped += got.skipped_bytes
        write(log, b"z\nafter\n")
        got = tail.poll()
    assert got.lines == ("y" * 1000, "after")
    assert got.cut_lines == 1
    assert skipped + got.skipped_bytes == 500_001 - 1000


def test_over_the_poll_budget_the_oldest_bytes_are_skipped_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    with LogTail(log, poll_budget=65536) as tail:
        tail.poll()
        write(log, numbered(0, 100_000))  # ~1.1 MB
        got = tail.poll()
        assert got.lines[-1] == "line 99999"
        assert got.bytes_read <= 65536
        assert got.skipped_bytes > 1_000_000
        assert any("skipped" in note for note in got.notes)
        assert all(line.startswith("line ") for line in got.lines)
        write(log, "line next\n")
        assert tail.poll().lines == ("line next",)


def test_rotation_by_rename_drains_the_old_file_then_reads_the_new_one(tmp_path: Path) -> None:
    """nginx keeps writing to the renamed file until it reopens its logs (USR1): those lines
    are read from the old descriptor, then the new file from its start; nothing is lost."""
    log = tmp_path / "access.log"
    write(log, numbered(0, 10))
    with LogTail(log, drain_grace=60) as tail:
        tail.poll()
        write(log, numbered(10, 20))
        log.rename(tmp_path / "access.log.1")
        old = (tmp_path / "access.log.1").open("ab")
        old.write(numbered(20, 25).encode())  # the writer has not reopened yet
        old.flush()
        got = tail.poll()
        write(log, numbered(25, 30), mode="wb")  # the new file appears
        old.write(numbered(30, 32).encode())  # a late line on the old descriptor
        old.close()
        got2 = tail.poll()
        with (tmp_path / "access.log.1").open("ab") as late:
            late.write(numbered(35, 37).encode())  # after stackmon moved to the new file
        write(log, numbered(32, 35))
        got3 = tail.poll()
    seen = [int(x.split()[1]) for x in got.lines + got2.lines + got3.lines]
    assert sorted(seen) == list(range(10, 37))
    assert any("rotated" in note for note in got2.notes)


def test_copytruncate_restarts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    write(log, numbered(0, 50))
    with LogTail(log) as tail:
        tail.poll()
        write(log, numbered(50, 55))
        assert len(tail.poll().lines) == 5
        shutil.copy(log, tmp_path / "a.log.1")
        os.truncate(log, 0)
        write(log, numbered(55, 57))
        got = tail.poll()
    assert got.lines == ("line 55", "line 56")
    assert any("truncated" in note for note in got.notes)


def test_copytruncate_regrown_past_the_offset_is_noticed(tmp_path: Path) -> None:
    """Truncated and written past our position between two polls: the size alone says
    nothing, the bytes before our position changed."""
    log = tmp_path / "a.log"
    write(log, numbered(0, 5))
    with LogTail(log) as tail:
        tail.poll()
        os.truncate(log, 0)
        write(log, numbered(100, 110))
        got = tail.poll()
    assert got.lines == tuple(f"line {i}" for i in range(100, 110))


def test_deleted_file_is_read_until_a_new_one_appears(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    writer = log.open("ab")
    with LogTail(log) as tail:
        tail.poll()
        log.unlink()
        writer.write(b"still here\n")
        writer.flush()
        got = tail.poll()
        assert got.lines == ("still here",)
        assert any("deleted" in note for note in got.notes)
        writer.close()
        write(log, "fresh\n")
        assert tail.poll().lines == ("fresh",)


def test_missing_file_is_an_error_then_read_once_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    with LogTail(log) as tail:
        got = tail.poll()
        assert got.error == "does not exist"
        write(log, "first\n")
        got = tail.poll()
    assert got.error is None and got.lines == ("first",)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with LogTail(fifo) as tail:
        got = tail.poll()
    assert time.monotonic() - started < 1.0
    assert got.error is not None and "FIFO" in got.error


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with LogTail(tmp_path) as tail:
        got = tail.poll()
    assert got.error is not None and "directory" in got.error


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_unreadable_file_is_an_error_for_that_log(tmp_path: Path) -> None:
    """Polled as `nobody` (a forked child) on a 0600 root file: permission denied, no
    traceback."""
    log = tmp_path / "secret.log"
    log.write_text("x\n")
    log.chmod(0o600)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, poll, report, exit without pytest's cleanup
        try:
            os.setgid(65534)
            os.setuid(65534)
            error = LogTail(log).poll().error
            os.write(write_end, str(error).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as fh:
        assert fh.read().decode() == "permission denied"

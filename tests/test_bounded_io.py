"""Bounded reads: the paths an attacker can point configuration at never hang or flood us."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from stackmon.bounded_io import BoundedReadError, User, may_read, read_file


def test_regular_file_is_read_whole(tmp_path: Path) -> None:
    f = tmp_path / "a.ini"
    f.write_bytes(b"[uwsgi]\nworkers = 4\n")
    assert read_file(f) == b"[uwsgi]\nworkers = 4\n"


def test_dev_zero_is_refused_without_reading() -> None:
    with pytest.raises(BoundedReadError) as info:
        read_file("/dev/zero", what="ini")
    assert "character device" in info.value.reason


def test_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(BoundedReadError) as info:
        read_file(fifo)
    assert time.monotonic() - started < 1.0
    assert "FIFO" in info.value.reason


def test_fifo_with_a_writer_is_still_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    stop = threading.Event()

    def writer() -> None:
        fd = os.open(fifo, os.O_RDWR)  # never blocks, keeps a writer present
        stop.wait(5)
        os.close(fd)

    t = threading.Thread(target=writer)
    t.start()
    try:
        with pytest.raises(BoundedReadError):
            read_file(fifo)
    finally:
        stop.set()
        t.join()


def test_over_the_limit_is_refused_not_truncated(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"x" * 2048)
    with pytest.raises(BoundedReadError) as info:
        read_file(f, limit=1024)
    assert "2048 bytes" in info.value.reason
    assert read_file(f, limit=2048) == b"x" * 2048


def test_proc_files_with_size_zero_are_read() -> None:
    assert b"Name:" in read_file("/proc/self/status")


def test_directory_and_missing(tmp_path: Path) -> None:
    with pytest.raises(BoundedReadError, match="directory"):
        read_file(tmp_path)
    with pytest.raises(BoundedReadError, match="does not exist"):
        read_file(tmp_path / "nope")


def test_may_read_follows_mode_bits(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text("x")
    os.chmod(f, 0o600)
    st = f.stat()
    other = User(uid=st.st_uid + 12345, gids=frozenset({st.st_gid + 12345}))
    assert not may_read(st, other)
    os.chmod(f, 0o640)
    assert may_read(f.stat(), User(uid=st.st_uid + 12345, gids=frozenset({st.st_gid})))
    assert not may_read(f.stat(), other)
    os.chmod(f, 0o644)
    assert may_read(f.stat(), other)
    with pytest.raises(BoundedReadError, match="not readable by uid"):
        os.chmod(f, 0o600)
        read_file(f, as_user=other)


def test_user_of_process_reads_this_process() -> None:
    me = User.of_process(os.getpid())
    assert me.uid == os.getuid()
    assert os.getgid() in me.gids

"""stackmon.uwsgi_ini: uWSGI's ini dialect and command lines, with file:line evidence, checked
on real files and against a real uWSGI started by the launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from stackmon.bounded_io import User
from stackmon.demo.launcher import Stack
from stackmon.model import SourceError
from stackmon.uwsgi_ini import (
    CMDLINE,
    ENVIRON,
    MAX_FILE_BYTES,
    MAX_FILES,
    ConfigFileError,
    Option,
    all_values,
    get_bool,
    get_int,
    get_seconds,
    instance_options,
    last,
    options_from_argv,
    parse_int,
    read_ini,
)
from tests.conftest import wait_until


def value_of(options: list[Option], key: str) -> str:
    """The deciding value of `key`, which the test expects to be set."""
    opt = last(options, key)
    assert opt is not None, f"{key} is not set"
    return opt.value


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_repeated_keys_comments_and_sections(tmp_path: Path) -> None:
    ini = write(tmp_path / "app.ini", """\
; top comment
ignored = before any section
[uwsgi]
master = true
socket = /run/app.sock
  # indented comment
Socket = 127.0.0.1:3031
listen = 77 ; not an inline comment
[other]
listen = 5
[uwsgi]
worker_reload_mercy = 90
""")
    opts = read_ini(ini)
    assert [(o.key, o.value, o.line) for o in opts] == [
        ("master", "true", 4),
        ("socket", "/run/app.sock", 5),
        ("socket", "127.0.0.1:3031", 7),
        ("listen", "77 ; not an inline comment", 8),
        ("worker-reload-mercy", "90", 12),
    ]
    assert all(o.file == str(ini) for o in opts)
    assert [o.value for o in all_values(opts, "socket")] == ["/run/app.sock", "127.0.0.1:3031"]
    # uWSGI reads integers with atoi: "77 ; ..." is 77, and the leftover text is reported.
    assert get_int(opts, "listen") == 77
    assert parse_int("77 ; not an inline comment") == (77, False)
    assert parse_int(" 60 ") == (60, True)
    assert parse_int("2m") == (2, False)
    assert get_seconds(opts, "worker_reload_mercy") == 90.0
    assert get_seconds(opts, "harakiri") is None
    assert get_seconds(opts, "harakiri", 0.0) == 0.0
    assert get_bool(opts, "master") is True
    assert get_bool(opts, "lazy-apps") is False
    assert last(opts, "nope") is None
    dflt = last(opts, "worker-reload-mercy-x", default="60")
    assert dflt == Option("worker-reload-mercy-x", "60", "<default>", 0)
    assert read_ini(ini, "other") == [Option("listen", "5", str(ini), 10)]


def test_bare_word_is_a_flag_and_placeholders(tmp_path: Path) -> None:
    ini = write(tmp_path / "site.ini", """\
[uwsgi]
master
base = /srv/app
chdir = %(base)/src
master-fifo = %dmaster.fifo
logto = %n.log
pct = 100%%
keep = %(undefined_thing_xyz)
vacuum = false
home = $(APP_HOME)/venv
""")
    opts = read_ini(ini, env={"APP_HOME": "/srv/app"})
    assert value_of(opts, "home") == "/srv/app/venv"
    assert value_of(read_ini(ini, env={}), "home") == "$(APP_HOME)/venv"
    assert last(opts, "master") == Option("master", "true", str(ini), 2)
    assert value_of(opts, "chdir") == "/srv/app/src"
    assert value_of(opts, "master-fifo") == f"{tmp_path}/master.fifo"
    assert value_of(opts, "logto") == "site.log"
    assert value_of(opts, "pct") == "100%"
    assert value_of(opts, "keep") == "%(undefined_thing_xyz)"
    assert get_bool(opts, "vacuum", default=True) is False


@pytest.mark.parametrize(("content", "line", "message"), [
    ("[uwsgi]\nmaster = true\nthis is not an option\n", 3, "expected 'key = value'"),
    ("[uwsgi]\n= 5\n", 2, "option without a name"),
    ("[uwsgi\nmaster = true\n", 1, "section header"),
    ("[app]\nmaster = true\n", 0, "no [uwsgi] section"),
    (b"[uwsgi]\nmaster = true\nsocket = /tmp/\xff.sock\n", 3, "not valid UTF-8"),
])
def test_malformed_files_name_file_and_line(tmp_path: Path, content: str | bytes, line: int,
                                            message: str) -> None:
    ini = write(tmp_path / "bad.ini", content)
    with pytest.raises(ConfigFileError) as info:
        read_ini(ini)
    assert info.value.file == str(ini)
    assert info.value.line == line
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)
    expected = f"{ini}:{line}: " if line else f"{ini}: "
    assert str(info.value).startswith(expected)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such file"):
        read_ini(tmp_path / "nope.ini")
    with pytest.raises(ConfigFileError, match="is a directory"):
        read_ini(tmp_path)


def test_includes_followed_with_their_own_lines(tmp_path: Path) -> None:
    write(tmp_path / "base.ini", "[uwsgi]\nlisten = 1024\nharakiri = 30\n")
    write(tmp_path / "prod.ini", "[prod]\nharakiri = 20\n")
    main = write(tmp_path / "main.ini", """\
[uwsgi]
ini = base.ini
include = prod.ini:prod
harakiri = 25
""")
    opts = read_ini(main, cwd=str(tmp_path))
    assert [(o.key, o.value, Path(o.file).name, o.line) for o in opts] == [
        ("ini", "base.ini", "main.ini", 2),
        ("listen", "1024", "base.ini", 2),
        ("harakiri", "30", "base.ini", 3),
        ("include", "prod.ini:prod", "main.ini", 3),
        ("harakiri", "20", "prod.ini", 2),
        ("harakiri", "25", "main.ini", 4),
    ]
    # Relative to the including file when not found in cwd.
    assert value_of(read_ini(main, cwd="/nonexistent"), "listen") == "1024"


def test_include_errors(tmp_path: Path) -> None:
    loop = write(tmp_path / "loop.ini", "[uwsgi]\nini = loop.ini\n")
    with pytest.raises(ConfigFileError, match="include cycle"):
        read_ini(loop, cwd=str(tmp_path))
    missing = write(tmp_path / "m.ini", "[uwsgi]\nmaster = true\nini = gone.ini\n")
    with pytest.raises(ConfigFileError) as info:
        read_ini(missing, cwd=str(tmp_path))
    assert (info.value.file, info.value.line) == (str(missing), 3)
    assert "gone.ini" in str(info.value)
    yaml = write(tmp_path / "y.ini", "[uwsgi]\nini = x.yaml\n")
    with pytest.raises(ConfigFileError, match="yaml configs are not read"):
        read_ini(yaml, cwd=str(tmp_path))


def test_argv_forms(tmp_path: Path) -> None:
    write(tmp_path / "app.ini", "[uwsgi]\nlisten = 512\nmaster-fifo = /tmp/f\n")
    write(tmp_path / "alt.ini", "[alt]\nharakiri = 9\n")
    argv = ["/usr/bin/uwsgi", "--master", "--socket", ":3031", "--processes=4",
            "--ini", "app.ini", "-M", "-l", "2048", "-t30", "--vacuum", "alt.ini:alt",
            "--offset", "-1", "stray"]
    opts = options_from_argv(argv, str(tmp_path))
    got = [(o.key, o.value, o.file if o.file == CMDLINE else Path(o.file).name, o.line)
           for o in opts]
    assert got == [
        ("master", "true", CMDLINE, 1),
        ("socket", ":3031", CMDLINE, 2),
        ("processes", "4", CMDLINE, 4),
        ("ini", "app.ini", CMDLINE, 5),
        ("listen", "512", "app.ini", 2),
        ("master-fifo", "/tmp/f", "app.ini", 3),
        ("master", "true", CMDLINE, 7),
        ("listen", "2048", CMDLINE, 8),
        ("harakiri", "30", CMDLINE, 10),
        ("vacuum", "true", CMDLINE, 11),
        ("ini", "alt.ini:alt", CMDLINE, 12),
        ("harakiri", "9", "alt.ini", 2),
        ("offset", "-1", CMDLINE, 13),
    ]
    assert get_int(opts, "listen") == 2048


def test_argv_environment_and_missing_ini(tmp_path: Path) -> None:
    opts = options_from_argv(["uwsgi", "--listen", "64"], str(tmp_path),
                             environ=["UWSGI_LISTEN=32", "UWSGI_RELOADS=3", "PATH=/bin",
                                      "UWSGI_HARAKIRI=20"])
    assert [(o.key, o.value, o.file) for o in opts] == [
        ("listen", "32", ENVIRON), ("harakiri", "20", ENVIRON), ("listen", "64", CMDLINE)]
    # $(VAR) in an ini named on the command line reads the instance's environment.
    write(tmp_path / "e.ini", "[uwsgi]\nchdir = $(APP)/src\n")
    opts = options_from_argv(["uwsgi", "e.ini"], str(tmp_path), environ=["APP=/opt/a"])
    assert value_of(opts, "chdir") == "/opt/a/src"
    with pytest.raises(ConfigFileError) as info:
        options_from_argv(["uwsgi", "--ini", "nope.ini"], str(tmp_path))
    assert (info.value.file, info.value.line) == (CMDLINE, 1)


def wait_for_cmdline(pid: int) -> None:
    """Right after fork+exec the new /proc/PID/cmdline is briefly empty."""
    wait_until(lambda: b"--ini" in Path(f"/proc/{pid}/cmdline").read_bytes(), timeout=5)


def test_instance_options_of_a_process_that_is_not_uwsgi(tmp_path: Path) -> None:
    """A plain process with a fake uWSGI-like command line: cmdline and cwd are read from
    /proc, relative ini resolved against the process's cwd."""
    write(tmp_path / "x.ini", "[uwsgi]\nlisten = 99\n")
    code = "import sys, time; time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code, "--ini", "x.ini"], cwd=tmp_path)
    try:
        wait_for_cmdline(proc.pid)
        opts = instance_options(proc.pid)
        assert not isinstance(opts, SourceError), opts
        assert last(opts, "listen") == Option("listen", "99", str(tmp_path / "x.ini"), 2)
    finally:
        proc.kill()
        proc.wait()
    gone = instance_options(proc.pid)
    assert isinstance(gone, SourceError)
    assert "has exited" in gone.message


def test_instance_options_unreadable_ini_is_a_source_error(tmp_path: Path) -> None:
    code = "import time; time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code, "--ini", "gone.ini"], cwd=tmp_path)
    try:
        wait_for_cmdline(proc.pid)
        got = instance_options(proc.pid)
        assert isinstance(got, SourceError)
        assert "gone.ini" in got.message and str(proc.pid) in got.message
    finally:
        proc.kill()
        proc.wait()


def test_instance_options_of_a_real_uwsgi(fresh_stack: Callable[..., Stack]) -> None:
    stack = fresh_stack(nginx=False, workers=1, threads=1, mercy=42, listen=64,
                        extra_uwsgi={"max-requests": 1000})
    opts = instance_options(stack.master_pid)
    assert not isinstance(opts, SourceError), opts
    ini = str(stack.ini_path)
    fifo = last(opts, "master-fifo")
    assert fifo is not None and fifo.value == str(stack.fifo_path) and fifo.file == ini
    mercy = last(opts, "worker-reload-mercy")
    assert mercy is not None and mercy.value == "42" and mercy.file == ini
    lines = ini_lines(stack.ini_path)
    assert lines[mercy.line - 1].startswith("worker-reload-mercy")
    assert get_int(opts, "listen") == 64
    assert get_int(opts, "max-requests") == 1000
    assert len(all_values(opts, "socket")) == 2
    assert last(opts, "ini") == Option("ini", ini, CMDLINE, 1)
    # Workers carry the same command line: the master's is the one asked for, but a worker
    # pid gives the same answer.
    worker = stack.worker_pids()[0]
    again = instance_options(worker)
    assert not isinstance(again, SourceError)
    assert get_int(again, "listen") == 64


def ini_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_permission_denied(tmp_path: Path) -> None:
    ini = write(tmp_path / "secret.ini", "[uwsgi]\n")
    ini.chmod(0)
    with pytest.raises(ConfigFileError, match="permission denied"):
        read_ini(ini)


# ------------------------------------------------------------------ bounds (issue 9)


@pytest.mark.parametrize("path, why", [
    ("/dev/zero", "is a character device, not a regular file"),
    ("/proc/self/fd/0", "not a regular file"),
])
def test_a_device_or_stream_is_refused_without_reading(path: str, why: str) -> None:
    with pytest.raises(ConfigFileError, match=why):
        read_ini(path)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "hang.ini"
    os.mkfifo(fifo)
    with pytest.raises(ConfigFileError, match="is a FIFO"):
        read_ini(fifo)  # a blocking open would hang here: no writer ever comes


def test_size_file_count_and_expansion_caps(tmp_path: Path) -> None:
    big = tmp_path / "big.ini"
    with big.open("wb") as fh:
        fh.write(b"[uwsgi]\n")
        fh.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ConfigFileError, match=f"over the {MAX_FILE_BYTES}-byte limit"):
        read_ini(big)
    # A chain of includes longer than the file cap (each a distinct file, no cycle, shallow
    # enough for the depth cap: siblings included from one file).
    names = [f"part{i}.ini" for i in range(MAX_FILES + 1)]
    for name in names:
        write(tmp_path / name, "[uwsgi]\nlisten = 1\n")
    write(tmp_path / "many.ini", "[uwsgi]\n" + "".join(f"ini = {n}\n" for n in names))
    with pytest.raises(ConfigFileError, match=f"more than {MAX_FILES} ini files"):
        read_ini(tmp_path / "many.ini", cwd=str(tmp_path))
    # %(x) doubling at every line would grow to 2**40 characters.
    lines = ["[uwsgi]", "a0 = xxxxxxxx"] + [f"a{i} = %(a{i - 1})%(a{i - 1})"
                                             for i in range(1, 40)]
    write(tmp_path / "bomb.ini", "\n".join(lines) + "\n")
    with pytest.raises(ConfigFileError, match="expands to over"):
        read_ini(tmp_path / "bomb.ini")


def test_as_user_refuses_a_file_that_user_could_not_read(tmp_path: Path) -> None:
    secret = write(tmp_path / "secret.ini", "[uwsgi]\nlisten = 1\n")
    secret.chmod(0o600)
    nobody = User(65534, frozenset({65534}))
    with pytest.raises(ConfigFileError, match="not readable by uid 65534"):
        read_ini(secret, as_user=nobody)
    # An include of it from a file nobody may read is refused the same way.
    outer = write(tmp_path / "outer.ini", f"[uwsgi]\nini = {secret}\n")
    outer.chmod(0o644)
    with pytest.raises(ConfigFileError, match="not readable by uid 65534"):
        read_ini(outer, as_user=nobody)
    assert last(read_ini(outer), "listen") is not None  # for root (no as_user) it is fine


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="starts a process as nobody")
def test_instance_options_reads_as_the_processs_user(tmp_path: Path) -> None:
    """A nobody process whose command line names root's 0600 ini: not read on its behalf."""
    secret = write(tmp_path / "root.ini", "[uwsgi]\nmaster-fifo = /etc/shadow\n")
    secret.chmod(0o600)
    proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "/usr/bin/python3", "-c", "import time; time.sleep(30)",
                             "--ini", str(secret)],
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"/usr"),
                   timeout=5)  # setpriv has exec'd python as nobody
        got = instance_options(proc.pid)
        assert isinstance(got, SourceError)
        assert "not readable by uid 65534" in got.message and str(secret) in got.message
    finally:
        proc.kill()
        proc.wait()

"""`stackmon demo` stops everything it started, however it ends (q, a lost terminal)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import require_nginx, require_uwsgi, wait_until


def _ours(workdir: Path) -> list[psutil.Process]:
    """Processes whose command line names this demo's private directory."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(workdir) in part for part in p.info["cmdline"] or ()):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def workdir():
    require_uwsgi()
    require_nginx()
    d = Path(tempfile.mkdtemp(prefix="stackmon-demo-test-"))
    yield d
    for p in _ours(d):  # a failed test must not leave its stack behind
        p.kill()
    shutil.rmtree(d, ignore_errors=True)


def _started(workdir: Path) -> bool:
    return (workdir / "uwsgi.pid").exists() and len(_ours(workdir)) >= 4


@pytest.mark.skipif(shutil.which("tmux") is None and os.environ.get("CI") != "true",
                    reason="needs tmux (installed by ./dev)")
def test_a_lost_terminal_stops_the_demo_stack(workdir):
    """SSH drops: the terminal's session gets SIGHUP. The stack must not run on."""
    sock = f"stackmon-test-{os.getpid()}"
    cmd = f"{sys.executable} -m stackmon.cli demo --workdir {workdir}"
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-x", "100", "-y", "30", cmd],
                   check=True)
    try:
        wait_until(lambda: _started(workdir), 30, interval=0.3, message="the demo stack")
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], check=False)
    wait_until(lambda: not _ours(workdir), 20, interval=0.3,
               message=lambda: f"demo processes gone: {[p.pid for p in _ours(workdir)]}")


def test_no_ui_demo_stops_its_stack_on_sighup(workdir):
    proc = subprocess.Popen([sys.executable, "-m", "stackmon.cli", "demo", "--no-ui",
                             "--workdir", str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _started(workdir), 30, interval=0.3, message="the demo stack")
        time.sleep(0.5)
        proc.send_signal(signal.SIGHUP)
        # Whenever it lands (even during start-up), SIGHUP ends the demo as 128 + 1.
        assert proc.wait(timeout=20) == 128 + signal.SIGHUP
        assert proc.stderr is not None and "stack stopped" in proc.stderr.read()
        wait_until(lambda: not _ours(workdir), 10, interval=0.2, message="demo processes gone")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_demo_removes_the_work_directory_it_made(workdir):
    """Without --workdir the demo makes its own directory under $TMPDIR: gone when it ends (a
    review counted 60 left in /tmp). `workdir` here is only the $TMPDIR it makes it in."""
    workdir.chmod(0o755)  # nginx's workers (nobody) reach the socket through it
    env = {**os.environ, "TMPDIR": str(workdir)}
    proc = subprocess.Popen([sys.executable, "-m", "stackmon.cli", "demo", "--no-ui"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        def made() -> list[Path]:
            return list(workdir.glob("stackmon-demo-*"))

        wait_until(lambda: len(made()) == 1 and _started(made()[0]), 30, interval=0.3,
                   message="the demo stack")
        ours = made()[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    _, err = proc.communicate(timeout=10)
    assert not ours.exists() and f"removed {ours}" in err, err
    wait_until(lambda: not _ours(ours), 10, interval=0.2, message="demo processes gone")

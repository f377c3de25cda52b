"""SIGTERM and SIGHUP to the TUI give the terminal back (issue 9, item 8).

Killed by a signal's default action, the TUI left the terminal in the alternate screen with
mouse tracking on. The app turns both signals into App.exit(), so Textual's driver restores the
terminal. Checked on a real terminal: a tmux pane running `stackmon --uwsgi ADDR` against a
stats server stand-in on loopback, whose state tmux reports after the signal.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.test_hostile_values import _Server

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None and os.environ.get("CI") != "true",
                                reason="needs tmux (installed by ./dev)")

# A plain document (the signal alone is under test): one worker on a request.
DOC = (b'{"version": "2.0.28", "pid": 1, "sockets": [], "workers": [{"id": 1, "pid": 2,'
       b' "status": "busy", "requests": 3, "cores": [{"id": 0, "requests": 3, "in_request": 1,'
       b' "vars": ["REQUEST_METHOD=GET", "REQUEST_URI=/stuck", ""], "req_info": {}}]}]}')

# What must be off once the TUI is gone: the alternate screen and every mouse mode.
RESTORED = ("alternate_on", "mouse_any_flag", "mouse_button_flag", "mouse_standard_flag",
            "mouse_sgr_flag", "mouse_all_flag")


class _Pane:
    """One tmux server of our own (-L), one pane running the command; the pane stays after the
    command exits (remain-on-exit), so its terminal state can still be read."""

    def __init__(self, command: str, workdir: Path) -> None:
        self.sock = f"stackmon-sig-{os.getpid()}-{time.monotonic_ns()}"
        self.pidfile = workdir / "tui.pid"
        # sh records its pid and execs the TUI: the pid in the file is the TUI's own.
        wrapped = f"sh -c 'echo $$ > {self.pidfile}; exec {command}'"
        self._tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "36", wrapped)
        self._tmux("set-option", "-t", "t", "remain-on-exit", "on")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], check=True, capture_output=True,
                              text=True, timeout=10).stdout

    def flags(self) -> dict[str, str]:
        names = (*RESTORED, "pane_dead", "pane_dead_status", "pane_dead_signal")
        fmt = "|".join(f"#{{{name}}}" for name in names)
        values = self._tmux("display", "-p", "-t", "t", fmt).rstrip("\n").split("|")
        return dict(zip(names, values, strict=True))

    def text(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], check=False, capture_output=True)


@pytest.fixture
def stats_server() -> Iterator[_Server]:
    server = _Server(DOC)
    yield server
    server.close()


def _exit_status(pane: _Pane, pid: int) -> str:
    """The TUI's exit status: tmux's, or, while tmux has not reaped it yet (seen under load:
    the pane dead, the process a zombie for over 15 s), the kernel's (/proc/PID/stat field 52,
    the wait status of a zombie). "" while it still runs."""
    status = pane.flags()["pane_dead_status"]
    if status:
        return status
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] != "Z":
        return ""
    wait_status = int(fields[49])  # field 52 of the line; fields[] starts at field 3
    return str(wait_status >> 8) if wait_status & 0x7F == 0 else f"signal {wait_status & 0x7F}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_restores_the_terminal(sig, stats_server, tmp_path):
    command = f"{sys.executable} -m stackmon.cli --uwsgi 127.0.0.1:{stats_server.port}"
    pane = _Pane(command, tmp_path)
    try:
        # Up and drawing: the alternate screen and mouse tracking are on, the data is shown.
        # (The request has no start time: too young for a line, it is counted in the row.)
        wait_until(lambda: pane.flags()["alternate_on"] == "1" and "+1" in pane.text(), 30,
                   interval=0.3, message=lambda: f"the TUI on screen: {pane.flags()}")
        assert pane.flags()["mouse_any_flag"] == "1"
        pid = pane.pid()
        os.kill(pid, sig)
        # tmux marks the pane dead before it has reaped the exit status: wait for both.
        wait_until(lambda: pane.flags()["pane_dead"] == "1" and _exit_status(pane, pid), 15,
                   interval=0.2, message=lambda: f"the TUI exits on {sig.name}: {pane.flags()}")
        flags = pane.flags()
        assert {name: flags[name] for name in RESTORED} == dict.fromkeys(RESTORED, "0")
        assert _exit_status(pane, pid) == str(128 + sig)  # exited, as a shell reports it
        assert "Traceback" not in pane.text()
    finally:
        pane.close()

"""Hostile values from a stats server, nginx or the hosts file (issue 9, items 7 and 8).

A stats server on loopback serves crafted documents, polled through the real code path: the
`stackmon snapshot` CLI as a subprocess (text and --json) and the TUI under Pilot. What must hold:
no traceback, a usable sample, the absurd value reported as a bad value, no terminal escape from
configuration text reaching the terminal, and two workers sharing an id both shown.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from tests.tui_support import screen_text, wait_for
from tui.app import StackmonApp
from widgets.worker_list import WorkerList

ESC_NAME = "evil\x1b]52;c;cHduZWQ=\x07\x1b[2Jhost"
BIG_PID = "7" * 401

# Raw JSON text: the lone surrogates are JSON escapes, as a stats server can send them.
HOSTILE_DOC = """{
 "version": "2.0.28", "pid": PID, "listen_queue": 0, "uid": PID,
 "sockets": [{"name": "127.0.0.1:9\\ud800x", "proto": "uwsgi", "queue": 0, "max_queue": 100,
              "shared": 0}],
 "workers": [
  {"id": 1, "pid": 4001, "status": "idle", "accepting": 1, "requests": 5, "cores": []},
  {"id": 1, "pid": 4002, "status": "busy", "accepting": 1, "requests": PID,
   "last_spawn": PID, "cores": [{"id": 0, "requests": 1, "in_request": 1,
    "vars": ["REQUEST_METHOD=GET", "REQUEST_URI=/stuck\\udc00here", "REMOTE_ADDR=10.1.2.3", ""],
    "req_info": {"request_start": PID}}]},
  {"id": 2, "pid": PID, "status": "idle", "accepting": 1, "requests": 0, "cores": []}
 ]
}""".replace("PID", BIG_PID).encode()

STUB_STATUS = ("Active connections: 2 \nserver accepts handled requests\n 10 10 " + "9" * 5000
               + " \nReading: 0 Writing: 1 Waiting: 1 \n")


class _Server:
    """A loopback TCP server that answers every connection with one fixed reply, then closes:
    the stats protocol (read to EOF), or HTTP/1.0 when `reply` carries a head."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.settimeout(1)
                    if self.reply.startswith(b"HTTP/"):
                        conn.recv(65536)  # the GET
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def stats_server() -> Iterator[_Server]:
    server = _Server(HOSTILE_DOC)
    yield server
    server.close()


@pytest.fixture
def stub_server() -> Iterator[_Server]:
    body = STUB_STATUS.encode()
    server = _Server(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body)
    yield server
    server.close()


def _snapshot(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "stackmon.cli", "snapshot", *args],
                          capture_output=True, timeout=60, env=dict(os.environ))


def _assert_clean_run(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    assert proc.returncode in (0, 3), (proc.returncode, proc.stderr)
    proc.stdout.decode("utf-8")  # valid UTF-8: no surrogate escaped into the output
    assert b"\x1b" not in proc.stdout and b"\x1b" not in proc.stderr


def test_snapshot_text_survives_surrogates_huge_numbers_and_duplicate_ids(stats_server):
    proc = _snapshot("--uwsgi", f"127.0.0.1:{stats_server.port}")
    _assert_clean_run(proc)
    out = proc.stdout.decode()
    # The sample is usable: both workers with id 1 are listed, the busy one with its request.
    assert "pid 4001" in out and "pid 4002" in out
    assert "core 0: GET /stuck\ufffdhere  from 10.1.2.3" in out
    assert "socket 127.0.0.1:9\ufffdx" in out
    # The absurd numbers became unknown (0), and said so, without 401 digits.
    assert "master 0" in out
    assert "pid: a number of about 401 digits is out of range; used 0" in out
    assert "workers[].pid: a number of about 401 digits is out of range; used 0" in out
    assert BIG_PID not in out


def test_snapshot_json_survives_surrogates_huge_numbers_and_duplicate_ids(stats_server):
    proc = _snapshot("--uwsgi", f"127.0.0.1:{stats_server.port}", "--json")
    _assert_clean_run(proc)
    doc = json.loads(proc.stdout)
    inst = doc["hosts"][0]["uwsgi"][0]
    assert inst["master_pid"] == 0 and inst["uid"] is None
    # uWSGI numbers workers 1..N by position: a document repeating id 1 cannot hide a worker
    assert [(w["id"], w["pid"]) for w in inst["workers"]] == [(1, 4001), (2, 4002), (3, 0)]
    busy = inst["workers"][1]
    assert busy["requests"] == 0 and busy["last_spawn"] == 0
    request = busy["requests_in_flight"][0]
    assert request["uri"] == "/stuck\ufffdhere" and request["started_at"] is None
    assert inst["sockets"][0]["name"] == "127.0.0.1:9\ufffdx"


def test_stub_status_with_a_5000_digit_number_is_a_clear_error(stub_server):
    proc = _snapshot("--nginx", f"http://127.0.0.1:{stub_server.port}/nginx_status")
    _assert_clean_run(proc)
    assert proc.returncode == 3  # the source failed, said so, and nothing crashed
    out = proc.stdout.decode()
    assert "stub_status counter 'requests' is out of range (5000 digits)" in out


def _hosts_file(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "hosts.toml"
    # TOML basic strings spell ESC and BEL as \u escapes: the name really holds the bytes.
    name = ESC_NAME.replace("\x1b", "\\u001b").replace("\x07", "\\u0007")
    path.write_text(f'[[host]]\nname = "{name}"\nuwsgi = ["127.0.0.1:{port}"]\n')
    return path


def test_a_host_name_with_terminal_escapes_is_printed_literally(stats_server, tmp_path):
    hosts = _hosts_file(tmp_path, stats_server.port)
    for extra in ((), ("--json",)):
        proc = _snapshot(str(hosts), *extra)
        _assert_clean_run(proc)
        shown = proc.stdout.decode()
        if extra:
            shown = json.loads(shown)["hosts"][0]["name"]
        assert "evil\\x1b]52;c;cHduZWQ=\\x07\\x1b[2Jhost" in shown


def _tui_targets(port: int, name: str = "web") -> Targets:
    host = HostConfig(name=name, uwsgi=(parse_stats_address(f"127.0.0.1:{port}"),))
    return Targets(hosts=(host,), settings=Settings(interval=0.3, read_only=True))


async def test_tui_shows_both_workers_that_share_an_id(stats_server):
    app = StackmonApp(_tui_targets(stats_server.port))
    async with app.run_test(size=(120, 36)) as pilot:
        # (a request younger than --slow is a count in its worker's row, not a row of its own)
        assert await wait_for(pilot, lambda: "4002" in screen_text(app))
        text = screen_text(app)
        assert "4001" in text and "4002" in text  # the busy worker is not hidden by the idle one
        workers = app.query_one(WorkerList)
        assert workers.cursor_key == (1, 0)
        await pilot.press("down")
        assert workers.cursor_key == (2, 0)  # numbered by position, as uWSGI numbers them
        pane = app.active_pane()
        selected = pane.selected_worker()
        assert selected is not None and (selected.id, selected.pid) == (2, 4002)
        await pilot.press("enter")  # the detail of the second worker 1, not of the first
        await pilot.pause()
        detail = screen_text(app)
        assert "4002" in detail and "/stuck" in detail


async def test_tui_tab_label_and_header_show_an_escaping_host_name_literally(stats_server):
    app = StackmonApp(_tui_targets(stats_server.port, ESC_NAME))
    async with app.run_test(size=(160, 36)) as pilot:
        assert await wait_for(pilot, lambda: "4002" in screen_text(app))
        literal = "evil\\x1b]52;c;cHduZWQ=\\x07\\x1b[2Jhost"
        tab = app._tabs.get_tab("host-0")
        assert literal in tab.label.plain and "\x1b" not in tab.label.plain
        text = screen_text(app)
        assert "\x1b" not in text
        assert literal in text  # the header
        # A notification quoting the name (as action outcomes do) is literal too.
        from tui.messages import ActionFinished

        app.post_message(ActionFinished(f"about {ESC_NAME}", f"host {ESC_NAME} [b]x", ok=False))
        assert await wait_for(pilot, lambda: list(app._notifications))
        (note,) = list(app._notifications)  # the toast itself is drawn on a later frame
        assert note.message == f"host {literal} [b]x" and note.markup is False
        assert note.title == f"about {literal}"


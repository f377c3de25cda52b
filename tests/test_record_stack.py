"""The flight recorder on the real stack: record, replay, report, SIGKILL, the agent's history.

The recorder runs as its own process (`python -m stackmon.cli record`), as a user runs it, so
SIGKILL really kills it mid-write. Actions are taken with the real CLI, through the audit log
the recorder follows.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stackmon.addresses import parse_stats_address
from stackmon.agent.server import AgentOptions, serve
from stackmon.config import HostConfig, Settings
from stackmon.demo.launcher import free_port
from stackmon.record.replay import Timeline
from stackmon.record.replay_command import settings_of
from stackmon.record.report import analyse
from stackmon.record.report_render import report_html
from stackmon.record.store import Recording
from tests.recording_support import independent_docs, stored_polls
from tests.tui_support import screen_text
from tui.replay_app import ReplayApp

pytestmark = pytest.mark.stack

SECRET_HEADERS = {"Cookie": "sessionid=REC-COOKIE-4411",
                  "Authorization": "Bearer REC-AUTH-9922",
                  "X-Api-Key": "REC-APIKEY-7733"}
SECRETS = (b"REC-COOKIE-4411", b"REC-AUTH-9922", b"REC-APIKEY-7733", b"REC-QUERY-5544")
KILLED = "/hang/stuck-killed?token=REC-QUERY-5544"
RELOADED = "/hang/stuck-reloaded"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackmon.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def targets(stack: Any) -> list[str]:
    return ["--uwsgi", stack.stats_address, "--nginx", stack.nginx_status_url, "--name",
            "web-1", "--uwsgi-log", str(stack.uwsgi_log_path), "--nginx-access-log",
            str(stack.nginx_access_log_path), "--nginx-error-log",
            str(stack.nginx_error_log_path), "--slow", "2s", "--critical", "4s"]


def start_recorder(stack: Any, out: Path, audit: Path, interval: str = "0.5s",
                   ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stackmon.cli", "record", *targets(stack), "--out", str(out),
         "--interval", interval, "--audit-log", str(audit)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def worker_running(stack: Any, uri: str) -> tuple[int, int] | None:
    for w in stack.stats()["workers"]:
        for core in w.get("cores") or []:
            if any(v == f"REQUEST_URI={uri}" for v in core.get("vars") or []):
                return int(w["id"]), int(w["pid"])
    return None


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


@pytest.fixture
def incident(fresh_stack: Any, hang: Any, wait_until: Any, tmp_path: Path,
             ) -> Iterator[tuple[Path, dict[str, Any]]]:
    """~30 s of a real stack recorded: a request stuck past --critical and killed (SIGKILL by
    `stackmon kill`), another stuck and ended by `stackmon reload`."""
    stack = fresh_stack(workers=3, threads=1, mercy=2)
    out, audit = tmp_path / "incident.db", tmp_path / "audit.log"
    rec = start_recorder(stack, out, audit)
    facts: dict[str, Any] = {}
    try:
        wait_until(lambda: stored_polls(out) >= 3, 20, message="the recorder's first polls")
        hang(stack, KILLED, headers=SECRET_HEADERS, via="nginx")
        wid, pid = wait_until(lambda: worker_running(stack, KILLED), 10)
        time.sleep(5)  # past --critical 4s
        done = cli("kill", "web-1", str(wid), "--uwsgi", stack.stats_address, "--signal",
                   "KILL", "--yes", "--audit-log", str(audit))
        assert done.returncode == 0, done.stderr
        facts.update(killed_worker=wid, killed_pid=pid, killed_at=time.time())
        wait_until(lambda: worker_running(stack, KILLED) is None, 10)
        hang(stack, RELOADED, headers=SECRET_HEADERS, via="nginx")
        time.sleep(3)
        facts["reload_at"] = time.time()
        done = cli("reload", "web-1", "--uwsgi", stack.stats_address, "--yes", "--no-follow",
                   "--audit-log", str(audit))
        assert done.returncode == 0, done.stderr
        wait_until(lambda: worker_running(stack, RELOADED) is None, 20)
        time.sleep(3)  # the respawns and the log lines reach a poll
    finally:
        facts["stderr"] = stop(rec)
    yield out, facts


async def test_incident_recorded_replayed_reported(incident: tuple[Path, dict[str, Any]],
                                                  tmp_path: Path) -> None:
    """One real incident (the recording takes ~30 s), checked three ways."""
    check_recording(*incident)
    check_report(*incident, tmp_path)
    await check_replay(*incident)


def check_recording(out: Path, facts: dict[str, Any]) -> None:
    assert "poll(s)" in facts["stderr"]
    docs = independent_docs(out)
    assert len(docs) >= 30
    seen = [d["taken_at"] for d in docs for inst in d["uwsgi"] for w in inst["workers"]
            for r in w["requests_in_flight"] if r["uri"].startswith("/hang/stuck-killed")]
    assert seen and max(seen) <= facts["killed_at"] + 0.5
    rec = Recording.open(out)
    actions = rec.actions()
    kills = [a for a in actions if a.action.startswith("kill") and a.outcome == "ok"]
    assert kills and kills[0].target_pid == facts["killed_pid"]
    assert any("reload" in a.action and a.outcome == "sent" for a in actions)
    kinds = {e.kind for e in rec.events()}
    assert "worker_died" in kinds and "reload" in kinds, kinds
    # no secret anywhere: the file's bytes (events, actions) and every decompressed poll
    raw = out.read_bytes() + json.dumps(docs).encode()
    for secret in SECRETS:
        assert secret not in raw, secret
    assert not rec.problems


def check_report(out: Path, facts: dict[str, Any], tmp_path: Path) -> None:
    rec = Recording.open(out)
    found = analyse(rec)
    stuck = {s.uri.split("?")[0]: s for s in found.stuck}
    killed, reloaded = stuck["/hang/stuck-killed"], stuck[RELOADED]
    assert killed.ended == "killed" and killed.worker == facts["killed_worker"]
    assert reloaded.ended == "reload"
    assert "REC-QUERY-5544" not in killed.uri
    # figures against an independent decode of the file
    docs = independent_docs(out)
    busy = [sum(1 for w in d["uwsgi"][0]["workers"] if w["status"] == "busy"
                or any(c["in_request"] for c in w["cores"])) for d in docs]
    (host,) = found.hosts
    assert host.busy == busy and host.t == [d["taken_at"] for d in docs]
    longest = max(r["running_s"] or 0 for d in docs for w in d["uwsgi"][0]["workers"]
                  for r in w["requests_in_flight"] if r["uri"].startswith("/hang/stuck-k"))
    assert killed.longest_s == longest >= 4
    page = report_html(found, "incident")
    for secret in SECRETS:
        assert secret.decode() not in page
    (tmp_path / "incident.html").write_text(page)


async def check_replay(out: Path, facts: dict[str, Any]) -> None:
    """The stuck URI on screen at the time it was recorded, not a poll before; x and n."""
    docs = independent_docs(out)
    runs = [(d["taken_at"], r["running_s"] or 0) for d in docs
            for w in d["uwsgi"][0]["workers"] for r in w["requests_in_flight"]
            if r["uri"].startswith("/hang/stuck-killed")]
    first = min(t for t, _running in runs)
    slow = min(t for t, running in runs if running >= 2)  # past --slow: shown in full
    rec = Recording.open(out)
    app = ReplayApp(rec, Timeline.load(rec), settings_of(rec.settings))
    async with app.run_test(size=(160, 48)) as pilot:
        app.timeline.seek(slow)
        app.apply()
        await pilot.pause()
        assert "/hang/stuck-killed" in screen_text(app)
        app.timeline.seek(first)
        await pilot.press("comma")  # the poll before it was sent
        await pilot.pause()
        assert app.timeline.now < first
        assert "/hang/stuck-killed" not in screen_text(app).split("REPLAY")[0]
        await pilot.press("x")  # the next time the host turned critical: the stuck request
        await pilot.pause()
        assert first <= app.timeline.now <= facts["killed_at"]
        for _ in range(5):
            await pilot.press("n")  # events: the kill and the worker's death among them
            await pilot.pause()
            if "kill" in screen_text(app).split("REPLAY")[1]:
                break
        assert "kill" in screen_text(app).split("REPLAY")[1]


def test_sigkill_loses_at_most_the_last_poll(stack: Any, wait_until: Any, tmp_path: Path,
                                             ) -> None:
    out = tmp_path / "killed.db"
    rec = start_recorder(stack, out, tmp_path / "audit.log", interval="0.25s")
    try:
        wait_until(lambda: stored_polls(out) >= 12, 30, message="12 polls stored")
    finally:
        killed_at = time.time()
        rec.kill()
        rec.communicate(timeout=10)
    assert rec.returncode == -signal.SIGKILL
    recording = Recording.open(out)
    refs = recording.polls()
    docs = [doc for _ref, doc in recording.iter_docs(refs)]
    assert len(docs) == len(refs) >= 12 and not recording.problems
    # the newest poll stored is at most about one interval (plus the poll's own time) old
    assert killed_at - refs[-1].taken_at < 0.25 * 2 + 0.3
    gaps = [b.taken_at - a.taken_at for a, b in itertools.pairwise(refs)]
    assert max(gaps) < 0.25 * 3  # nothing missing in the middle
    # and the file takes a new recorder after the crash
    done = cli("record", *targets(stack), "--out", str(out), "--duration", "1.5s",
               "--interval", "0.25s")
    assert done.returncode == 0, done.stderr
    assert len(Recording.open(out).polls()) > len(refs)


def test_agent_records_and_serves_history(stack: Any, tmp_path: Path) -> None:
    host = HostConfig(name="agent-host", uwsgi=(parse_stats_address(stack.stats_address),),
                      nginx=stack.nginx_status_url)
    options = AgentOptions(host=host, settings=Settings(interval=0.25), token="t" * 32,
                           audit_path=str(tmp_path / "audit.log"),
                           record_dir=str(tmp_path / "rec"), retain_s=3600)
    box: dict[str, Any] = {}
    ready = threading.Event()

    def main() -> None:
        async def go() -> None:
            box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()

            def on_ready(url: str) -> None:
                box["url"] = url
                ready.set()

            await serve(options, ("127.0.0.1", free_port()), ready=on_ready, stop=box["stop"])
        asyncio.run(go())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10)
    headers = {"Authorization": "Bearer " + "t" * 32}
    try:
        time.sleep(2.0)
        with httpx.Client(trust_env=False, timeout=30) as client:
            all_polls = client.get(box["url"] + "/v1/history", headers=headers)
            assert all_polls.status_code == 200, all_polls.text
            doc = all_polls.json()
            assert len(doc["polls"]) >= 4 and not doc["truncated"]
            times = [p["taken_at"] for p in doc["polls"]]
            assert times == sorted(times) and doc["polls"][0]["name"] == "agent-host"
            assert doc["polls"][0]["uwsgi"][0]["workers"]
            middle = times[len(times) // 2]
            later = client.get(box["url"] + "/v1/history", headers=headers,
                               params={"from": str(middle), "to": str(times[-1])}).json()
            # bounded by `to`: the agent goes on recording between the two requests
            assert [p["taken_at"] for p in later["polls"]] == [t for t in times if t >= middle]
            newer = client.get(box["url"] + "/v1/history", headers=headers,
                               params={"from": str(middle)}).json()
            got = [p["taken_at"] for p in newer["polls"]]
            assert got[:len(later["polls"])] == [t for t in times if t >= middle]
            bad = client.get(box["url"] + "/v1/history", headers=headers,
                             params={"from": "yesterday"})
            assert bad.status_code == 400 and "from" in bad.json()["message"]
            assert client.get(box["url"] + "/v1/history").status_code == 401
        path = tmp_path / "rec" / "agent-host.stackmon.db"
        assert (path.stat().st_mode & 0o077) == 0 and (path.parent.stat().st_mode & 0o077) == 0
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)
    assert len(Recording.open(path).polls()) >= len(times)


def test_agent_refuses_an_unusable_record_dir(stack: Any, tmp_path: Path) -> None:
    done = cli("agent", "--uwsgi", stack.stats_address, "--record", "/proc/nope",
               "--listen", f"127.0.0.1:{free_port()}", timeout=20)
    assert done.returncode == 2 and "--record" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr

"""`stackmon stack`: a real uWSGI worker stuck in a known function, traced with the real py-spy.

The app (written below, run by the project's launcher in place of the demo app) blocks in
`wait_for_ledger_lock` on a lock that is never free, with a token in a local, until the
launcher's release file says so (the `hang` fixture releases it after each test). Everything
else is real: uWSGI, its stats, the kernel's pid checks, py-spy, the agent over HTTP, a
non-root user made with setpriv.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackmon.actions.base import ActionError
from stackmon.actions.stack import (
    MAX_VALUE,
    StackResult,
    mark,
    parse_dump,
    redact_local,
    stack_from_dict,
    stack_to_dict,
)
from stackmon.agent.client import remote_stack
from stackmon.config import Settings
from stackmon.demo.launcher import Stack, StackError
from stackmon.hosts import open_host
from stackmon.model import Core, Request, Worker
from tests.conftest import _remove, new_workdir
from tests.test_agent import start_agent  # noqa: F401  (a fixture)

TOKEN = "sk_live_LEDGER9f8e7d6c5b4a"
BEARER = "Bearer BEARERSECRET0123456789"
HANG = "/hang/ledger"

LEDGER_APP = '''
import os, threading, time

RELEASE = os.environ.get("STACKMON_RELEASE_FILE", "")
LEDGER_LOCK = threading.Lock()
LEDGER_LOCK.acquire()  # held for good: every request below waits on it


def _released(since_ns):
    try:
        with open(RELEASE) as f:
            return int(f.read().strip() or 0) > since_ns
    except (OSError, ValueError):
        return False


def wait_for_ledger_lock(account_id, session_token):
    started = time.time_ns()
    reference = "plain-visible-text"
    header_value = "BEARER"
    while not _released(started):
        LEDGER_LOCK.acquire(timeout=0.1)
    return reference, header_value


def application(environ, start_response):
    if environ.get("PATH_INFO", "").startswith("/hang"):
        wait_for_ledger_lock(42, "TOKEN")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''.replace("TOKEN", TOKEN).replace("BEARER", BEARER)


class LedgerStack(Stack):
    """The launcher's stack with the ledger app as its wsgi-file."""

    def uwsgi_options(self) -> list[tuple[str, str]]:
        app = self.workdir / "ledger_app.py"
        app.write_text(LEDGER_APP)
        return [(k, str(app) if k == "wsgi-file" else v) for k, v in super().uwsgi_options()]


def _start(uwsgi_bin: str, **kw: Any) -> tuple[LedgerStack, Path]:
    workdir = new_workdir()
    try:
        started = LedgerStack.start(workdir, workers=2, threads=2, nginx=False, mercy=2,
                                    name="ledger", uwsgi_bin=uwsgi_bin, **kw)
    except StackError as exc:
        pytest.fail(f"the ledger stack did not start:\n{exc}", pytrace=False)
    assert isinstance(started, LedgerStack)
    return started, workdir


@pytest.fixture(scope="module")
def ledger(uwsgi_bin: str) -> Iterator[LedgerStack]:
    """One ledger stack for the tests that only read it (2 workers x 2 threads)."""
    started, workdir = _start(uwsgi_bin)
    try:
        yield started
    finally:
        started.stop()
        _remove(workdir)


@pytest.fixture
def own_ledger(uwsgi_bin: str) -> Iterator[LedgerStack]:
    """A ledger stack of this test's own (it kills a worker)."""
    started, workdir = _start(uwsgi_bin)
    try:
        yield started
    finally:
        started.stop()
        _remove(workdir)


def stuck_worker(stack: Stack) -> tuple[int, int, int]:
    """(worker id, pid, core) of the worker running the ledger request."""
    for w in stack.stats()["workers"]:
        for core in w.get("cores") or []:
            if core.get("in_request") and f"REQUEST_URI={HANG}" in (core.get("vars") or []):
                return w["id"], w["pid"], core["id"]
    raise AssertionError("no worker runs the ledger request")


def other_worker(stack: Stack, worker_id: int) -> tuple[int, int]:
    w = next(w for w in stack.stats()["workers"] if w["id"] != worker_id)
    return w["id"], w["pid"]


def cli(*args: str, user: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`stackmon ARGS` in a subprocess; as `nobody` (setpriv, no capabilities) with user."""
    argv = [sys.executable, "-m", "stackmon.cli", *args]
    if user:
        argv = [*NOBODY, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                   reason="needs root and setpriv to become another user")


# ------------------------------------------------------------------ the CLI, locally


def test_stack_names_the_blocking_function_in_the_marked_thread(ledger, hang):
    hang(ledger, HANG)
    worker_id, pid, core = stuck_worker(ledger)
    got = cli("stack", "web", str(worker_id), "--uwsgi", ledger.stats_address)
    assert got.returncode == 0, got.stderr
    text = got.stdout
    assert f"worker {worker_id}  pid {pid}" in text and "non-blocking" in text
    threads = text.split("\n\n")[1:]
    marked = [t for t in threads if t.startswith(">>")]
    assert len(marked) == 1 and threads[0] is marked[0]  # first and the only one marked
    head, *frames = marked[0].splitlines()
    assert f"uWSGIWorker{worker_id}Core{core}" in head and f"GET {HANG}" in head
    assert frames[0].strip().startswith("wait_for_ledger_lock (")  # innermost first
    assert "ledger_app.py:" in frames[0] and frames[1].strip().startswith("application (")
    # the idle core of the same worker is listed too, unmarked, without frames
    idle = [t for t in threads[1:] if f"uWSGIWorker{worker_id}Core" in t]
    assert idle and "wait_for_ledger_lock" not in idle[0]
    assert TOKEN not in text  # no locals unless asked


def test_stack_json_marks_the_thread_and_frame(ledger, hang):
    hang(ledger, HANG)
    worker_id, pid, core = stuck_worker(ledger)
    got = cli("stack", "web", str(worker_id), "--uwsgi", ledger.stats_address, "--json")
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    assert doc["worker_id"] == worker_id and doc["pid"] == pid and doc["nonblocking"] is True
    assert doc["locals"] is False and doc["source"] == "py-spy"
    first = doc["threads"][0]
    assert first["marked"] is True and first["core"] == core
    assert first["name"] == f"uWSGIWorker{worker_id}Core{core}"
    assert first["request"]["uri"] == HANG and first["request"]["running_s"] >= 0
    assert first["frames"][0]["function"] == "wait_for_ledger_lock"
    assert first["frames"][0]["file"].endswith("ledger_app.py")
    assert isinstance(first["frames"][0]["line"], int) and first["frames"][0]["locals"] is None
    assert [t["marked"] for t in doc["threads"]].count(True) == 1
    # The document reads back as the same result (what the agent's client does).
    assert stack_to_dict(stack_from_dict(doc)) == doc


def test_locals_are_shown_with_secrets_redacted(ledger, hang):
    hang(ledger, HANG, headers={"Authorization": BEARER})
    worker_id, _pid, _core = stuck_worker(ledger)
    got = cli("stack", "web", str(worker_id), "--uwsgi", ledger.stats_address, "--locals",
              "--json")
    assert got.returncode == 0, got.stderr
    assert TOKEN not in got.stdout and "BEARERSECRET" not in got.stdout
    frame = json.loads(got.stdout)["threads"][0]["frames"][0]
    values = {v["name"]: v["value"] for v in frame["locals"]}
    assert values["session_token"] == "<redacted>"  # by its name, like a request variable
    assert values["header_value"] == '"Bearer <redacted>"'  # by its value
    assert values["account_id"] == "42" and values["reference"] == '"plain-visible-text"'
    text = cli("stack", "web", str(worker_id), "--uwsgi", ledger.stats_address, "--locals")
    assert "session_token = <redacted>" in text.stdout and TOKEN not in text.stdout


def test_a_stale_pid_is_refused(ledger, hang):
    hang(ledger, HANG)
    worker_id, pid, _core = stuck_worker(ledger)
    _other, other_pid = other_worker(ledger, worker_id)
    got = cli("stack", "web", str(worker_id), "--uwsgi", ledger.stats_address,
              "--pid", str(other_pid))
    assert got.returncode == 1 and not got.stdout
    assert f"now pid {pid}, not pid {other_pid}" in got.stderr
    assert "Traceback" not in got.stderr


def test_unknown_worker_and_bad_usage_are_one_line(ledger):
    got = cli("stack", "web", "9", "--uwsgi", ledger.stats_address)
    assert got.returncode == 1 and "has no worker 9 (workers: 1, 2)" in got.stderr
    got = cli("stack", "web", "x", "--uwsgi", ledger.stats_address)
    assert got.returncode == 2 and "Traceback" not in got.stderr


def test_a_host_that_cannot_be_read_exits_3():
    got = cli("stack", "web", "1", "--uwsgi", "127.0.0.1:9")
    assert got.returncode == 3 and "cannot read uWSGI stats" in got.stderr


# ------------------------------------------------------------------ without the right


@needs_setpriv
def test_tracing_without_permission_says_what_to_change(ledger, hang):
    hang(ledger, HANG)
    worker_id, pid, _core = stuck_worker(ledger)
    got = cli("stack", "web", str(worker_id), "--uwsgi", ledger.stats_address, user=True)
    assert got.returncode == 1, got.stdout
    err = got.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert f"not allowed to trace pid {pid}" in err
    assert "uid 65534 without CAP_SYS_PTRACE" in err and "runs as uid 0" in err
    assert "run it as root (sudo stackmon stack ...)" in err


@needs_setpriv
def test_py_spy_refused_by_the_kernel_gives_the_same_message(ledger, hang):
    """py-spy itself, run as nobody against root's worker: its "Permission Denied" becomes
    the message that says what to change (not py-spy's advice to retry with sudo)."""
    hang(ledger, HANG)
    _worker_id, pid, _core = stuck_worker(ledger)
    code = ("import asyncio\nfrom stackmon.actions.base import ActionError\n"
            "from stackmon.actions.stack import run_py_spy\n"
            f"try:\n    asyncio.run(run_py_spy({pid}))\n"
            "except ActionError as e:\n    print(e.kind, e.message)\n")
    got = subprocess.run([*NOBODY, sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith(f"permission not allowed to trace pid {pid}: ")
    assert "CAP_SYS_PTRACE" in got.stdout and "sudo env" not in got.stdout


# ------------------------------------------------------------------ through an agent


def test_agent_serves_the_stack_and_refuses_a_stale_pid(ledger, hang, start_agent):  # noqa: F811
    hang(ledger, HANG)
    worker_id, pid, _core = stuck_worker(ledger)
    _other, other_pid = other_worker(ledger, worker_id)
    agent = start_agent(ledger)
    path = f"/v1/workers/0/{worker_id}/stack"
    resp = agent.get(path, params={"expect_pid": pid, "locals": 1})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["threads"][0]["marked"] and doc["pid"] == pid
    assert doc["threads"][0]["frames"][0]["function"] == "wait_for_ledger_lock"
    assert TOKEN not in resp.text and doc["locals"] is True
    stale = agent.get(path, params={"expect_pid": other_pid})
    assert stale.status_code == 409 and stale.json()["error"] == "stale"
    assert agent.get(path).status_code == 400  # no expect_pid: never "whatever is there now"
    assert agent.get(path, params={"expect_pid": pid, "locals": "yes"}).status_code == 400
    assert agent.get(path, params={"expect_pid": pid}, token=False).status_code == 401
    assert agent.get("/v1/workers/7/1/stack", params={"expect_pid": pid}).status_code == 404
    # the client maps the refusal to the same kind as a local one
    with pytest.raises(ActionError) as exc:
        asyncio.run(remote_stack(agent.host(), 0, worker_id, other_pid))
    assert exc.value.kind == "stale" and f"not pid {other_pid}" in exc.value.message


def test_agent_host_trace_and_the_cli_through_an_agent(ledger, hang, start_agent,  # noqa: F811
                                                       tmp_path):
    hang(ledger, HANG)
    worker_id, pid, _core = stuck_worker(ledger)
    agent = start_agent(ledger)

    async def trace() -> StackResult:
        host = open_host(agent.host(), Settings())
        try:
            return await host.trace(0, worker_id, pid, with_locals=True)
        finally:
            await host.aclose()

    result = asyncio.run(trace())
    inner = result.innermost()
    assert inner is not None and inner.function == "wait_for_ledger_lock"
    assert inner.locals is not None and TOKEN not in repr(result)
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(f'[[host]]\nname = "remote"\nagent = "{agent.url}"\n'
                     f'token_file = "{agent.token_file}"\n')
    got = cli("stack", "remote", str(worker_id), "--hosts", str(hosts))
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines()[0].startswith("remote  uWSGI 127.0.0.1:")
    assert ">> uWSGIWorker" in got.stdout and "wait_for_ledger_lock" in got.stdout


def test_an_agent_without_a_token_serves_no_stacks(ledger, start_agent):  # noqa: F811
    agent = start_agent(ledger, token=False)
    worker = ledger.stats()["workers"][0]
    resp = agent.get(f"/v1/workers/0/{worker['id']}/stack", params={"expect_pid": worker["pid"]})
    assert resp.status_code == 403 and "without a token" in resp.json()["message"]


# ------------------------------------------------------------------ the kill keeps the evidence


def test_kill_with_stack_records_the_stack_in_the_audit_log(own_ledger, hang, tmp_path):
    hang(own_ledger, HANG)
    worker_id, pid, _core = stuck_worker(own_ledger)
    audit = tmp_path / "audit.log"
    got = cli("kill", "web", str(worker_id), "--uwsgi", own_ledger.stats_address, "--stack",
              "--yes", "--audit-log", str(audit))
    assert got.returncode == 0, got.stderr
    assert got.stdout.index("wait_for_ledger_lock") < got.stdout.index("killed with TERM")
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    # The kill's own "started" record (written before any signal) carries the stack.
    started = records[0]
    assert (started["action"], started["outcome"]) == ("kill TERM", "started")
    assert started["target_pid"] == pid
    marked = started["stack"]["threads"][0]
    assert marked["marked"] and marked["frames"][0].startswith("wait_for_ledger_lock (")
    assert TOKEN not in audit.read_text()
    assert records[-1]["outcome"] == "ok"


def test_kill_with_stack_goes_ahead_when_the_stack_cannot_be_read(own_ledger, tmp_path):
    """A worker whose process is not Python-traceable... is hard to make; a host whose py-spy
    is missing is not: the kill still happens and the audit says why there is no stack."""
    worker_id = own_ledger.stats()["workers"][0]["id"]
    audit = tmp_path / "audit.log"
    env = {**os.environ, "PATH": "/nonexistent"}
    code = ("import sys, stackmon.actions.stack as s\n"
            "s.find_py_spy = lambda: None\n"
            "from stackmon.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    got = subprocess.run([sys.executable, "-c", code, "kill", "web", str(worker_id), "--uwsgi",
                          own_ledger.stats_address, "--stack", "--yes", "--audit-log",
                          str(audit)], capture_output=True, text=True, timeout=60, env=env,
                         stdin=subprocess.DEVNULL)
    assert got.returncode == 0, got.stderr
    assert "stack not captured: py-spy is not installed" in got.stdout
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert records[0]["outcome"] == "started"
    assert "py-spy is not installed" in records[0]["stack"]["not_captured"]
    assert records[-1]["outcome"] == "ok"


# ------------------------------------------------------------------ parsing and redaction


def _worker(requests: dict[int, float]) -> Worker:
    cores = tuple(Core(c, 1, True, Request(c, "GET", f"/r{c}", "", "", None, age, "ok"))
                  for c, age in requests.items())
    return Worker(id=3, pid=10, status="busy", accepting=True, requests=1, exceptions=0,
                  harakiri_count=0, respawn_count=0, avg_rt_ms=0, rss=0, vsz=0,
                  last_spawn=1.0, running_time_s=0, tx=0, cores=cores)


def _dump(*names: str, frames: int = 1) -> bytes:
    return json.dumps([{"thread_name": n, "thread_id": i, "os_thread_id": i, "active": True,
                        "frames": [{"name": f"f{j}", "filename": "a.py", "line": j}
                                   for j in range(frames)]}
                       for i, n in enumerate(names)]).encode()


def test_the_oldest_request_marks_its_core_thread_first():
    threads, cut = parse_dump(_dump("Thread-9", "uWSGIWorker3Core0", "uWSGIWorker3Core2",
                                    "uWSGIWorker3Core1"))
    ordered, reason = mark(threads, _worker({0: 5.0, 2: 40.0}))
    assert [t.name for t in ordered] == ["uWSGIWorker3Core2", "uWSGIWorker3Core0",
                                         "uWSGIWorker3Core1", "Thread-9"]
    assert [t.marked for t in ordered] == [True, False, False, False] and not cut
    assert ordered[0].request is not None and ordered[0].request.uri == "/r2"
    assert "core 2" in reason and "/r2" in reason
    ordered, reason = mark(threads, _worker({}))
    assert not any(t.marked for t in ordered) and "no request in flight" in reason


def test_hostile_dump_text_is_bounded_and_made_visible():
    bad = json.dumps([{"thread_name": "uWSGIWorker1Core0\x1b[2J", "frames": [
        {"name": "f\x1b]0;x\x07", "filename": "a" * 10_000, "line": "7",
         "locals": [{"name": "password", "repr": "\"hunter2\""},
                    {"name": "env", "repr": '{"HTTP_COOKIE": "sid=1", "PATH": "/x"}'},
                    {"name": "big", "repr": "x" * 100_000}]}] * 1000}]).encode()
    threads, cut = parse_dump(bad)
    assert cut and len(threads[0].frames) < 1000
    frame = threads[0].frames[0]
    assert "\x1b" not in threads[0].name + frame.function and frame.line is None
    assert len(frame.file) < 400
    values = {v.name: v.value for v in frame.locals or ()}
    assert values["password"] == "<redacted>"
    assert values["env"] == '{"HTTP_COOKIE": "<redacted>", "PATH": "/x"}'
    assert len(values["big"]) <= MAX_VALUE + 1
    assert redact_local("h", '{"HTTP_AUTHORIZATION": "Bearer abcdefgh12345...') == \
        '{"HTTP_AUTHORIZATION": "<redacted>"'
    with pytest.raises(ActionError):
        parse_dump(b"{not json")


def test_a_stack_answer_from_an_agent_is_cleaned_again():
    doc: dict[str, Any] = {"threads": [{"name": "t\x1b", "marked": True, "frames": [
        {"function": "f", "file": "a.py", "line": 1,
         "locals": [{"name": "api_key", "value": "AKIA-LEAK"}]}]}], "pid": 5}
    result = stack_from_dict(doc)
    assert "AKIA-LEAK" not in repr(result) and "\x1b" not in result.threads[0].name
    bad: Any
    for bad in ([], {"threads": "x"}, {"threads": [1]}):
        with pytest.raises(ValueError):
            stack_from_dict(bad)


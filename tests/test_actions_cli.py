"""`stackmon kill` and `stackmon reload` from the command line, on the real stack."""

from __future__ import annotations

import json
import subprocess
import sys


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackmon.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def hosts_file(tmp_path, stack, read_only: bool = False):
    path = tmp_path / "hosts.toml"
    path.write_text(f'[defaults]\nread_only = {str(read_only).lower()}\n'
                    f'[[host]]\nname = "web-1"\nuwsgi = ["{stack.stats_address}"]\n')
    return path


def test_kill_with_yes_respawns_and_audits(fresh_stack, hang, tmp_path):
    st = fresh_stack(workers=2, threads=1, nginx=False)
    hang(st, "/hang/cli-kill", n=1, via="unix")
    victim = next(w for w in st.stats()["workers"] if w["status"] == "busy")
    log = tmp_path / "audit.log"
    proc = cli("kill", "web-1", str(victim["id"]), "--hosts", str(hosts_file(tmp_path, st)),
               "--yes", "--audit-log", str(log))
    assert proc.returncode == 0, proc.stderr
    assert f"pid {victim['pid']} killed with TERM, respawned as pid" in proc.stdout
    after = next(w for w in st.stats()["workers"] if w["id"] == victim["id"])
    assert after["pid"] != victim["pid"]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["outcome"] for e in entries] == ["started", "ok"]
    assert entries[0]["host"] == "web-1" and entries[0]["request"]["uri"] == "/hang/cli-kill"


def test_without_yes_and_without_a_terminal_nothing_happens(fresh_stack, tmp_path):
    st = fresh_stack(workers=1, threads=1, nginx=False)
    pid = st.stats()["workers"][0]["pid"]
    proc = cli("kill", "web-1", "1", "--hosts", str(hosts_file(tmp_path, st)),
               "--audit-log", str(tmp_path / "a.log"))
    assert proc.returncode == 1
    assert "pass --yes" in proc.stderr and "Traceback" not in proc.stderr
    assert st.stats()["workers"][0]["pid"] == pid
    entries = [json.loads(line) for line in (tmp_path / "a.log").read_text().splitlines()]
    assert [e["outcome"] for e in entries] == ["refused: bad_request"]


def test_read_only_hosts_file_refuses_kill_and_reload(fresh_stack, tmp_path):
    st = fresh_stack(workers=1, threads=1, nginx=False)
    path = hosts_file(tmp_path, st, read_only=True)
    for args in (["kill", "web-1", "1"], ["reload", "web-1"]):
        proc = cli(*args, "--hosts", str(path), "--yes", "--audit-log", str(tmp_path / "a.log"))
        assert proc.returncode == 1 and "read-only" in proc.stderr, proc.stderr
    entries = [json.loads(line) for line in (tmp_path / "a.log").read_text().splitlines()]
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("kill", "refused: read_only"), ("reload", "refused: read_only")]


def test_reload_follows_until_every_worker_is_replaced(fresh_stack, tmp_path):
    st = fresh_stack(workers=2, threads=1, mercy=3, nginx=False)
    before = {w["pid"] for w in st.stats()["workers"]}
    proc = cli("reload", "web-1", "--hosts", str(hosts_file(tmp_path, st)), "--yes",
               "--audit-log", str(tmp_path / "a.log"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "graceful reload done: 2 workers replaced" in proc.stdout
    assert not before & {w["pid"] for w in st.stats()["workers"]}


def test_unknown_host_is_a_usage_error(tmp_path, fresh_stack):
    st = fresh_stack(workers=1, threads=1, nginx=False)
    proc = cli("kill", "nope", "1", "--hosts", str(hosts_file(tmp_path, st)), "--yes")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"stackmon kill: no host 'nope' in "
                                   f"{tmp_path / 'hosts.toml'} (hosts: web-1)")


def test_reload_lists_every_request_a_draining_worker_holds(fresh_stack, hang, tmp_path):
    """One worker, two threads, both stuck: the CLI's progress names both requests, as mercy
    cuts both (it named only the oldest)."""
    st = fresh_stack(workers=1, threads=2, mercy=3, nginx=False)
    hang(st, "/hang/first", n=1, via="unix")
    hang(st, "/hang/second", n=1, via="unix")
    proc = cli("reload", "web-1", "--hosts", str(hosts_file(tmp_path, st)), "--yes",
               "--audit-log", str(tmp_path / "a.log"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    finishing = [line for line in proc.stdout.splitlines() if "finishing" in line
                 and line.startswith("  worker 1:")]
    assert any("/hang/first" in line and "/hang/second" in line for line in finishing), \
        proc.stdout
    assert "2 requests were in flight when their worker's mercy ran out" in proc.stdout


def test_a_kill_confirmed_at_the_prompt_is_refused_if_the_request_shown_ended(
        fresh_stack, hang, tmp_path):
    """The prompt waits on a person: the request it showed ends and another starts before
    `y`. The kill is refused and the new request is not aborted (a terminal on stdin: a pty)."""
    import os
    import selectors

    st = fresh_stack(workers=1, threads=1, nginx=False)
    shown = hang(st, "/hang/shown-at-prompt", n=1, via="unix")
    pid = st.stats()["workers"][0]["pid"]
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "stackmon.cli", "kill", "web-1", "1",
                             "--hosts", str(hosts_file(tmp_path, st)), "--audit-log",
                             str(tmp_path / "a.log")], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    os.close(slave)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out, sel = "", selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while "[y/N]" not in out:
            assert sel.select(30), f"no prompt: {out!r}"
            chunk = os.read(proc.stdout.fileno(), 4096).decode()
            assert chunk, f"exited before the prompt: {out!r} {proc.stderr.read()}"
            out += chunk
        assert "/hang/shown-at-prompt" in out
        shown.close()
        hang(st, "/hang/arrived-before-yes", n=1, via="unix")
        os.write(master, b"y\n")
        rest, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (out + rest, err)
    assert "ended since you looked" in err and "GET /hang/arrived-before-yes" in err, err
    assert "Traceback" not in err
    assert st.stats()["workers"][0]["pid"] == pid
    entries = [json.loads(line) for line in (tmp_path / "a.log").read_text().splitlines()]
    assert [e["outcome"] for e in entries] == ["refused: ended"]

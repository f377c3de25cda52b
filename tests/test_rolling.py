"""Rolling reloads across real stacks: host after host, each drained and healthy first; the
roll stops at the first host that fails and says where and why; every step audited."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError
from stackmon.actions.rolling import RollPolicy, RollStep, rolling_reload
from stackmon.config import Targets, load_hosts_file, select_group
from stackmon.hosts import open_host


def host_entry(name: str, stack=None, *, group: str = "api", stats: str | None = None,
               health_path: str = "/healthz") -> str:
    """A [[host]] table for a live stack (stats, nginx, health through nginx) or, with
    `stats`, for a bare stats address."""
    lines = ["[[host]]", f'name = "{name}"', f'group = "{group}"']
    if stack is not None:
        lines += [f'uwsgi = ["{stack.stats_address}"]', f'nginx = "{stack.nginx_status_url}"',
                  f'health = "{stack.base_url}{health_path}"']
    else:
        lines.append(f'uwsgi = ["{stats}"]')
    return "\n".join(lines) + "\n"


def hosts_file(tmp_path: Path, *entries: str, defaults: str = "") -> Path:
    path = tmp_path / "hosts.toml"
    path.write_text('[defaults]\nhealth_interval = "1s"\ntimeout = "1s"\n' + defaults
                    + "\n".join(entries))
    return path


def dead_address() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def roll(targets: Targets, audit: AuditLog, policy: RollPolicy | None = None,
         group: str = "api"):
    steps: list[RollStep] = []

    async def go():
        hosts = [open_host(h, targets.settings_for(h)) for h in targets.hosts]
        try:
            return await rolling_reload(hosts, audit=audit, policy=policy, group=group,
                                        on_step=steps.append)
        finally:
            await asyncio.gather(*(h.aclose() for h in hosts))

    return asyncio.run(go()), steps


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackmon.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def roll_records(audit: AuditLog) -> list[tuple[str, str, str]]:
    return [(e["host"], e["step"], e["outcome"]) for e in audit.entries()
            if e["action"] == "rolling reload"]


def test_two_hosts_reloaded_in_turn_every_worker_replaced(fresh_stack, tmp_path):
    one = fresh_stack(workers=2, threads=1, mercy=3, name="roll-one")
    two = fresh_stack(workers=2, threads=1, mercy=3, name="roll-two")
    before = {"web-1": set(one.worker_pids()), "web-2": set(two.worker_pids())}
    path = hosts_file(tmp_path, host_entry("web-1", one), host_entry("web-2", two),
                      host_entry("other", stats=dead_address(), group="batch"))
    targets = select_group(load_hosts_file(path), "api")
    audit = AuditLog(tmp_path / "audit.log")

    result, steps = roll(targets, audit)

    assert result.ok, result.message
    assert result.done == ("web-1", "web-2") and "2 hosts reloaded" in result.message
    after = {"web-1": set(one.worker_pids()), "web-2": set(two.worker_pids())}
    for name in before:
        assert len(after[name]) == 2 and not after[name] & before[name], (name, before, after)
    # In turn: web-2 was not touched before web-1 was done (reloaded, drained and healthy).
    order = [(s.host, s.phase) for s in steps if s.phase in ("reloading", "done")]
    assert order == [("web-1", "reloading"), ("web-1", "done"),
                     ("web-2", "reloading"), ("web-2", "done")], order
    assert any(s.phase == "draining" and s.reload is not None for s in steps)
    # Every step audited, host by host, besides the reload's own records.
    assert roll_records(audit) == [
        ("web-1", "host", "started"), ("web-1", "drain", "ok"), ("web-1", "settle", "ok"),
        ("web-1", "host", "ok"),
        ("web-2", "host", "started"), ("web-2", "drain", "ok"), ("web-2", "settle", "ok"),
        ("web-2", "host", "ok"),
    ]
    settle = [e for e in audit.entries() if e.get("step") == "settle"]
    assert all("health check passed" in e["message"] for e in settle)
    reloads = [(e["host"], e["outcome"]) for e in audit.entries()
               if e["action"] == "reload graceful"]
    assert reloads == [("web-1", "started"), ("web-1", "sent"), ("web-1", "ok"),
                       ("web-2", "started"), ("web-2", "sent"), ("web-2", "ok")]
    assert {e.get("group") for e in audit.entries() if e["action"] == "rolling reload"} == {"api"}


def test_the_cli_stops_at_a_dead_second_host_and_says_why(fresh_stack, tmp_path):
    one = fresh_stack(workers=2, threads=1, mercy=3, name="roll-first")
    three = fresh_stack(workers=2, threads=1, mercy=3, name="roll-third")
    first_before, third_before = set(one.worker_pids()), set(three.worker_pids())
    dead = dead_address()
    path = hosts_file(tmp_path, host_entry("web-1", one), host_entry("web-2", stats=dead),
                      host_entry("web-3", three))
    audit = tmp_path / "audit.log"

    proc = run_cli("reload", "--group", "api", "--rolling", "--yes", "--hosts", str(path),
                   "--audit-log", str(audit))

    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("stackmon reload: rolling reload stopped at web-2: reload: host "
                             "unreachable before its reload: "), err[0]
    assert dead in err[0] and "1/3 hosts done; not started: web-3" in err[0]
    assert "[1/3] web-1: reloaded and healthy" in proc.stdout
    assert not set(one.worker_pids()) & first_before  # the first host was reloaded
    assert set(three.worker_pids()) == third_before  # the third was never touched
    records = roll_records(AuditLog(audit))
    assert records[-2:] == [("web-2", "host", "started"), ("web-2", "reload", "failed")]
    assert ("web-1", "host", "ok") in records
    assert not any(host == "web-3" for host, _, _ in records)
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert not any(e["host"] == "web-3" for e in entries)


def test_a_health_check_that_fails_after_the_reload_stops_the_roll(fresh_stack, tmp_path):
    st = fresh_stack(workers=1, threads=1, mercy=2, name="roll-health")
    other = dead_address()
    # The health URL answers 404: the LB (threshold 1) would take the host out at once.
    path = hosts_file(tmp_path, host_entry("web-1", st, health_path="/not-a-health-check"),
                      host_entry("web-2", stats=other), defaults="unhealthy_threshold = 1\n")
    audit = AuditLog(tmp_path / "audit.log")

    result, steps = roll(select_group(load_hosts_file(path), "api"), audit,
                         RollPolicy(settle_timeout=20))

    assert not result.ok and result.done == () and result.not_started == ("web-2",)
    host, reason = result.failed[0]
    assert host == "web-1"
    assert reason.startswith("health: the load balancer would take it out: health check "
                             "failing (HTTP 404"), reason
    assert "stopped at web-1: health: " in result.message
    assert steps[-1].phase == "failed" and steps[-1].host == "web-1"
    assert roll_records(audit)[-1] == ("web-1", "health", "failed")


def test_read_only_hosts_refuse_the_whole_roll_before_anything(fresh_stack, tmp_path):
    st = fresh_stack(workers=1, threads=1, nginx=False, name="roll-ro")
    pids = st.worker_pids()
    path = tmp_path / "hosts.toml"
    path.write_text(f'[[host]]\nname = "a"\ngroup = "api"\nuwsgi = ["{st.stats_address}"]\n'
                    f'[[host]]\nname = "b"\ngroup = "api"\nread_only = true\n'
                    f'uwsgi = ["{st.stats_address}"]\n')
    audit = AuditLog(tmp_path / "audit.log")
    with pytest.raises(ActionError) as info:
        roll(load_hosts_file(path), audit)
    assert info.value.kind == "read_only" and "b cannot be reloaded" in info.value.message
    assert audit.entries()[-1]["outcome"] == "refused: read_only"
    assert st.worker_pids() == pids


@pytest.mark.parametrize(("args", "words"), [
    (["--group", "api"], "--group reloads a whole group: add --rolling"),
    (["--rolling"], "--rolling needs --group G"),
    (["web-1", "--group", "api", "--rolling"], "give HOST (web-1) or --group G --rolling"),
    (["--group", "api", "--rolling", "--max-unavailable", "0"], "--max-unavailable 0"),
    (["--group", "nope", "--rolling"], "no host in group 'nope'"),
    (["--group", "api", "--rolling", "--no-follow"], "--no-follow do not apply"),
])
def test_rolling_usage_errors_are_one_line(tmp_path, args, words):
    path = hosts_file(tmp_path, host_entry("web-1", stats="127.0.0.1:1"))
    proc = run_cli("reload", *args, "--hosts", str(path), "--audit-log",
                   str(tmp_path / "a.log"))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert not (tmp_path / "a.log").exists()


def test_without_yes_and_without_a_terminal_the_roll_is_refused_and_audited(tmp_path):
    path = hosts_file(tmp_path, host_entry("web-1", stats="127.0.0.1:1"))
    audit = tmp_path / "a.log"
    proc = run_cli("reload", "--group", "api", "--rolling", "--hosts", str(path),
                   "--audit-log", str(audit))
    assert proc.returncode == 1
    assert "1. web-1  (no health URL)" in proc.stdout
    assert proc.stderr.strip() == ("stackmon reload: no terminal to confirm on: pass --yes to "
                                   "act without asking")
    assert [e["outcome"] for e in AuditLog(audit).entries()] == ["refused: bad_request"]

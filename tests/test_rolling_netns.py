"""A rolling reload across three real hosts, each in its own network namespace.

tests/test_rolling.py rolls stacks that all share this machine's loopback. Here each "host" is
a network namespace joined to this one by a veth pair (its own 10.232.X.0/24), and inside it
run a real uWSGI + nginx stack (the project's launcher) and `stackmon agent`, bound to the
namespace's address with a token, as on a real fleet. The hosts file names the three agents in
one group, and `stackmon reload --group fleet --rolling` runs from this namespace as an
operator's would.

What the roll did is checked against what stackmon does not produce itself:
- each agent's own audit log (on its host): when that host's reload was asked for;
- the uWSGI workers' pids, read from /proc (children of the host's master whose network
  namespace is the host's), before and after;
- a sampler inside each namespace (the process that holds the stack): every change of the
  worker pids and a probe of the host's nginx /healthz every 0.1 s, with their times;
- `ss` inside the namespace: which listeners are there (the agent's, nginx's, uWSGI's).

Needs root and `ip netns` (skipped with the reason otherwise); a missing nginx or uWSGI is a
skip locally and a failure with CI=true, as everywhere. Every namespace, veth and process made
here is removed by name and pid even when a test fails (the module fixture's finalizer).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_nginx, require_uwsgi

ROOT = Path(__file__).resolve().parent.parent
AGENT_PORT = 9300
GROUP = "fleet"
HOSTS = 3
WORKERS = 2
MERCY = 2  # worker-reload-mercy: how long a held request keeps its host draining

# The fleet's tests carry the netns and stack markers (`-m "not stack"` leaves them out).


# --------------------------------------------------------------------------- /proc truth


def children_of(ppid: int) -> set[int]:
    """Pids whose parent is `ppid`, from /proc/PID/stat (no /proc/PID/task/*/children here)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(ppid) and fields[0] != "Z":
            found.add(int(entry))
    return found


def net_namespace_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


# --------------------------------------------------------------------------- in the namespace


def hold_stack() -> None:
    """Run inside a namespace (argv: workdir name samples_file): start a real uWSGI + nginx
    stack, print its addresses as one JSON line, sample it (see Sampler) and answer commands
    on stdin ("hang": hold one request in the app; "release": let it go) until stdin closes
    or SIGTERM; the stack is stopped on the way out."""
    from stackmon.demo.launcher import Stack, StackError

    workdir, name, samples = sys.argv[1:4]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        stack = Stack.start(Path(workdir), workers=WORKERS, threads=1, mercy=MERCY, name=name)
    except StackError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return
    held: list[socket.socket] = []
    sampler = Sampler(stack.master_pid, stack.base_url or "", Path(samples))
    try:
        if not stack.has_nginx:
            print(json.dumps({"error": stack.nginx_skipped_reason}), flush=True)
            return
        sampler.start()
        print(json.dumps({"stats": stack.stats_address, "nginx": stack.nginx_status_url,
                          "base": stack.base_url, "master_pid": stack.master_pid}), flush=True)
        for line in sys.stdin:
            if line.strip() == "hang":
                held.append(_hold_request(stack))
            elif line.strip() == "release":
                for sock in held:
                    sock.close()
                held.clear()
                stack.release_hangs()
            print("ok", flush=True)
    finally:
        sampler.stop()
        for sock in held:
            sock.close()
        stack.stop()


def _hold_request(stack: Any) -> socket.socket:
    """GET /hang/roll through nginx, left in flight (its worker busy until mercy runs out)."""
    host, _, port = stack.nginx_base_url.removeprefix("http://").rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(b"GET /hang/roll HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(w.get("status") == "busy" for w in stack.stats().get("workers", [])):
            return sock
        time.sleep(0.05)
    raise RuntimeError("the held request never reached a worker")


class Sampler:
    """Inside the namespace: every change of the master's children (pids, from /proc) and a
    health probe of nginx every 0.1 s, each a JSON line with its time, appended to a file."""

    def __init__(self, master_pid: int, base_url: str, path: Path) -> None:
        self.master_pid = master_pid
        self.url = base_url + "/healthz"
        self.out = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.pids, daemon=True),
                        threading.Thread(target=self.health, daemon=True)]

    def write(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.out.write(json.dumps(record) + "\n")
            self.out.flush()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(5)
        self.out.close()

    def pids(self) -> None:
        last: set[int] | None = None
        while not self.done.wait(0.05):
            now = children_of(self.master_pid)
            if now != last:
                self.write({"t": time.time(), "pids": sorted(now)})
                last = now

    def health(self) -> None:
        from stackmon.demo.launcher import http_get

        while not self.done.wait(0.1):
            started = time.time()
            try:
                status = http_get(self.url, timeout=1.0)[0]
            except Exception:  # refused, reset, timed out: all "not healthy"
                status = -1
            self.write({"t0": started, "t1": time.time(), "status": status})


# --------------------------------------------------------------------------- the fleet


def _need_netns() -> None:
    """Skip (with why) without root or `ip netns`: both are properties of the machine."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("needs the `ip` command (iproute2)")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"`ip netns` does not work here: {probe.stderr.strip()}")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _free_octets(count: int) -> list[int]:
    text = ip("-4", "addr").stdout + ip("-4", "route").stdout
    used = {part.split(".")[2] for part in text.split() if part.startswith("10.232.")}
    start = random.randrange(1, 250 - count)
    return [o for o in itertools.chain(range(start, 250), range(1, start))
            if str(o) not in used][:count]


def _wait_for_line(path: Path, word: str, proc: subprocess.Popen[Any], what: str,
                   timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and word in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    text = path.read_text(errors="replace") if path.exists() else ""
    raise RuntimeError(f"{what} did not say {word!r}:\n{text[-3000:]}")


@dataclass
class NsHost:
    """One host: its namespace, link, stack holder and agent, and where their evidence is."""

    name: str
    ns: str
    host_dev: str
    peer_dev: str
    octet: int
    dir: Path  # tokens, hosts files, logs, samples (0700)
    workdir: Path  # the stack's (traversable by nginx's `nobody`)
    holder: subprocess.Popen[str] | None = None
    agent: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    ns_inode: int = 0

    @property
    def address(self) -> str:
        return f"10.232.{self.octet}.2"

    @property
    def token_file(self) -> Path:
        return self.dir / "token"

    @property
    def agent_audit(self) -> Path:
        return self.dir / "agent-audit.log"

    @property
    def samples_file(self) -> Path:
        return self.dir / "samples.jsonl"

    # --- evidence ---------------------------------------------------------------------------

    def workers(self) -> set[int]:
        """The uWSGI workers now: the master's children that live in this host's namespace."""
        pids = children_of(self.info["master_pid"])
        assert all(net_namespace_of(p) == self.ns_inode for p in pids), (self.name, pids)
        return pids

    def agent_records(self) -> list[dict[str, Any]]:
        if not self.agent_audit.exists():
            return []
        return [json.loads(line) for line in self.agent_audit.read_text().splitlines() if line]

    def samples(self) -> tuple[list[tuple[float, set[int]]], list[tuple[float, float, int]]]:
        """(every change of the worker pids, every health probe) the sampler has written."""
        changes, probes = [], []
        for line in self.samples_file.read_text().splitlines():
            rec = json.loads(line)
            if "pids" in rec:
                changes.append((rec["t"], set(rec["pids"])))
            else:
                probes.append((rec["t0"], rec["t1"], rec["status"]))
        return changes, probes

    def listeners(self) -> str:
        """`ss -Hltn` inside the namespace: its TCP listeners (Recv-Q is the accept queue)."""
        out = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-Hltn"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout

    def command(self, word: str) -> None:
        """A command to the stack holder in the namespace ("hang", "release")."""
        assert self.holder is not None and self.holder.stdin and self.holder.stdout
        self.holder.stdin.write(word + "\n")
        self.holder.stdin.flush()
        assert self.holder.stdout.readline().strip() == "ok", f"{word} on {self.name}"


class Fleet:
    """Creates the namespaces, links, stacks and agents; `close()` removes every one."""

    def __init__(self) -> None:
        run = secrets.token_hex(3)
        self.run_id = run
        self.tmp = Path(tempfile.mkdtemp(prefix="stackmon-roll-"))
        self.hosts: list[NsHost] = []
        for i, octet in enumerate(_free_octets(HOSTS)):
            d = self.tmp / f"host-{i}"
            d.mkdir()
            self.hosts.append(NsHost(
                name=f"ns-web-{i}", ns=f"smroll-{run}-{i}", host_dev=f"smr{run}h{i}",
                peer_dev=f"smr{run}p{i}", octet=octet, dir=d,
                workdir=Path(tempfile.mkdtemp(prefix="stackmon-rt-"))))

    def create(self) -> None:
        for h in self.hosts:
            ip("netns", "add", h.ns)
            h.ns_inode = os.stat(f"/run/netns/{h.ns}").st_ino
            ip("link", "add", h.host_dev, "type", "veth", "peer", "name", h.peer_dev,
               "netns", h.ns)
            ip("addr", "add", f"10.232.{h.octet}.1/24", "dev", h.host_dev)
            ip("link", "set", h.host_dev, "up")
            ip("-n", h.ns, "addr", "add", f"{h.address}/24", "dev", h.peer_dev)
            ip("-n", h.ns, "link", "set", h.peer_dev, "up")
            ip("-n", h.ns, "link", "set", "lo", "up")

    def start(self) -> None:
        code = "from tests.test_rolling_netns import hold_stack; hold_stack()"
        for h in self.hosts:  # all three stacks start at once
            with (h.dir / "holder.err").open("w") as err:
                h.holder = subprocess.Popen(
                    ["ip", "netns", "exec", h.ns, sys.executable, "-c", code, str(h.workdir),
                     h.name, str(h.samples_file)],
                    cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                    text=True)
        for h in self.hosts:
            assert h.holder is not None and h.holder.stdout is not None
            line = h.holder.stdout.readline()
            h.info = json.loads(line) if line.startswith("{") else {"error": line}
            if "error" in h.info or not line:
                raise RuntimeError(f"the stack of {h.name} did not start: {h.info}\n"
                                   f"{(h.dir / 'holder.err').read_text()[-3000:]}")
            self.write_agent_config(h)
        for h in self.hosts:
            self.start_agent(h, wait=False)
        for h in self.hosts:
            assert h.agent is not None
            _wait_for_line(h.dir / "agent.err", "serving", h.agent, f"the agent of {h.name}")

    def write_agent_config(self, h: NsHost) -> None:
        h.token_file.write_text(secrets.token_hex(24))
        h.token_file.chmod(0o600)
        base = h.info["base"]
        (h.dir / "agent-hosts.toml").write_text(
            '[defaults]\ntimeout = "1s"\nhealth_interval = "1s"\n'
            f'[[host]]\nname = "{h.name}"\nuwsgi = ["{h.info["stats"]}"]\n'
            f'nginx = "{h.info["nginx"]}"\nhealth = "{base}/healthz"\n')

    def start_agent(self, h: NsHost, wait: bool = True) -> None:
        """`stackmon agent` in the host's namespace, on its veth address, with its token and
        its own audit log; its pid is the process's (`ip netns exec` execs)."""
        with (h.dir / "agent.err").open("w") as err:
            h.agent = subprocess.Popen(
                ["ip", "netns", "exec", h.ns, sys.executable, "-m", "stackmon.cli", "agent",
                 str(h.dir / "agent-hosts.toml"), "--listen", f"{h.address}:{AGENT_PORT}",
                 "--token-file", str(h.token_file), "--audit-log", str(h.agent_audit)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        if wait:
            _wait_for_line(h.dir / "agent.err", "serving", h.agent, f"the agent of {h.name}")

    def hosts_file(self) -> Path:
        """The operator's hosts file: the three agents by their namespace addresses."""
        lines = ['[defaults]\ntimeout = "1s"\n']
        for h in self.hosts:
            lines.append(f'[[host]]\nname = "{h.name}"\ngroup = "{GROUP}"\n'
                         f'agent = "http://{h.address}:{AGENT_PORT}"\n'
                         f'token_file = "{h.token_file}"\n')
        path = self.tmp / "hosts.toml"
        path.write_text("\n".join(lines))
        return path

    def close(self) -> None:
        """Agents and holders by their pids (a holder stops its stack), then anything still
        in OUR namespaces by the pids `ip netns pids` gives, then the namespaces and links."""
        for h in self.hosts:
            for proc in (h.agent, h.holder):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        for h in self.hosts:
            for proc in (h.agent, h.holder):
                if proc is None:
                    continue
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        errors = []
        for h in self.hosts:
            for pid in ip("netns", "pids", h.ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", h.ns, check=False)
            ip("link", "del", h.host_dev, check=False)  # normally gone with the namespace
            if h.ns in ip("netns", "list", check=False).stdout:
                errors.append(f"netns {h.ns} not deleted")
            shutil.rmtree(h.workdir, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    _need_netns()
    require_uwsgi()
    require_nginx()
    hosts = Fleet()
    try:
        hosts.create()
        hosts.start()
        yield hosts
    finally:
        hosts.close()
    assert hosts.run_id not in ip("netns", "list").stdout
    assert hosts.run_id not in ip("link").stdout


# --------------------------------------------------------------------------- the roll


def roll_command(fleet: Fleet, audit: Path, max_unavailable: int) -> list[str]:
    return [sys.executable, "-m", "stackmon.cli", "reload", "--group", GROUP, "--rolling",
            "--yes", "--max-unavailable", str(max_unavailable), "--settle-timeout", "20s",
            "--hosts", str(fleet.hosts_file()), "--audit-log", str(audit)]


def run_roll(fleet: Fleet, audit: Path, max_unavailable: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(roll_command(fleet, audit, max_unavailable), capture_output=True,
                          text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)


@dataclass(frozen=True)
class Turn:
    """One host's part of a roll, from evidence stackmon did not write on this side."""

    asked: float  # the agent's audit: "reload graceful" started
    replaced: float  # /proc: first moment every worker had a new pid
    healthy: float  # the first 200 from a probe started after that


def turn_of(h: NsHost, before: set[int], since: float) -> Turn:
    reloads = [r for r in h.agent_records()
               if r["epoch"] >= since and r["action"] == "reload graceful"]
    assert [r["outcome"] for r in reloads] == ["started", "sent"], (h.name, reloads)
    asked = reloads[0]["epoch"]
    changes, probes = h.samples()
    replaced = next((t for t, pids in changes
                     if t >= asked and len(pids) == WORKERS and not pids & before), None)
    assert replaced is not None, (h.name, before, changes[-5:])
    healthy = next((t1 for t0, t1, status in probes if t0 >= replaced and status == 200), None)
    assert healthy is not None, (h.name, probes[-5:])
    return Turn(asked, replaced, healthy)


def untouched_until(h: NsHost, since: float, until: float) -> None:
    """No worker of `h` changed pid between `since` and `until` (the sampler's record)."""
    changes = [(round(t - since, 2), pids) for t, pids in h.samples()[0] if since <= t < until]
    assert not changes, (h.name, changes)


def roll_records(audit: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit.read_text().splitlines()
            if '"rolling reload"' in line]


@pytest.mark.netns
@pytest.mark.stack
def test_one_host_at_a_time_each_replaced_and_healthy_before_the_next(fleet, tmp_path):
    before = {h.name: h.workers() for h in fleet.hosts}
    since = time.time()
    audit = tmp_path / "audit.log"

    proc = run_roll(fleet, audit, max_unavailable=1)

    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "rolling reload done: 3 hosts reloaded" in proc.stdout, proc.stdout
    turns = []
    for h in fleet.hosts:
        after = h.workers()
        assert len(after) == WORKERS and not after & before[h.name], (h.name, before, after)
        turns.append(turn_of(h, before[h.name], since))
    # In order, never two at once: host i's workers were all replaced and its nginx answered
    # /healthz with 200 before host i+1's agent was even asked; and until it was asked, host
    # i+1's workers kept their pids.
    for i, (this, nxt) in enumerate(itertools.pairwise(turns)):
        assert this.asked < this.replaced <= this.healthy < nxt.asked, (i, turns)
        untouched_until(fleet.hosts[i + 1], since, nxt.asked)
    # This side's audit: each host's span (started .. ok) ends before the next one's begins.
    records = roll_records(audit)
    assert [(r["host"], r["step"], r["outcome"]) for r in records] == [
        (h.name, step, outcome) for h in fleet.hosts
        for step, outcome in (("host", "started"), ("drain", "ok"), ("settle", "ok"),
                              ("host", "ok"))]
    spans = [(r["epoch"], s["epoch"]) for r, s in zip(records[::4], records[3::4], strict=True)]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    # `ss` in each namespace: the agent, nginx and uWSGI listen again, nothing queued.
    for h in fleet.hosts:
        rows = [line.split() for line in h.listeners().splitlines()]
        local = {row[3]: int(row[1]) for row in rows}
        assert f"{h.address}:{AGENT_PORT}" in local, (h.name, rows)
        for addr in (h.info["stats"], h.info["base"].removeprefix("http://")):
            assert local.get(addr) == 0, (h.name, addr, rows)


@pytest.mark.netns
@pytest.mark.stack
def test_two_at_a_time_drain_together_and_the_third_waits(fleet, tmp_path):
    first, second, third = fleet.hosts
    first.command("hang")  # the first host drains for its whole mercy
    try:
        before = {h.name: h.workers() for h in fleet.hosts}
        since = time.time()
        audit = tmp_path / "audit.log"

        proc = run_roll(fleet, audit, max_unavailable=2)

        assert proc.returncode == 0, (proc.stdout, proc.stderr)
    finally:
        first.command("release")
    turns = [turn_of(h, before[h.name], since) for h in fleet.hosts]
    for h in fleet.hosts:
        after = h.workers()
        assert len(after) == WORKERS and not after & before[h.name], (h.name, before, after)
    one, two, three = turns
    # Both drained at once: the second was asked while the first still had old workers.
    assert two.asked < one.replaced, turns
    assert one.replaced - one.asked >= MERCY - 0.5, turns  # the held request kept it draining
    # The third waited for one of them to be done (replaced, healthy, and ended its turn on
    # this side) and was untouched until then.
    records = roll_records(audit)
    ok_at = {r["host"]: r["epoch"] for r in records if (r["step"], r["outcome"]) == ("host", "ok")}
    assert set(ok_at) == {h.name for h in fleet.hosts}, records
    assert three.asked > min(ok_at[first.name], ok_at[second.name]), (turns, ok_at)
    assert three.asked > min(one.healthy, two.healthy), turns
    untouched_until(third, since, three.asked)
    started = [r["host"] for r in records if (r["step"], r["outcome"]) == ("host", "started")]
    assert started == [first.name, second.name, third.name]


@pytest.mark.netns
@pytest.mark.stack
def test_an_agent_killed_mid_roll_stops_it_and_the_rest_is_untouched(fleet, tmp_path):
    first, victim, last = fleet.hosts
    before = {h.name: h.workers() for h in fleet.hosts}
    last_records = len(last.agent_records())
    victim.command("hang")  # its drain lasts its mercy: time to kill its agent in the middle
    since = time.time()
    audit = tmp_path / "audit.log"
    proc = subprocess.Popen(roll_command(fleet, audit, 1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not any(r["epoch"] >= since and r["outcome"] == "sent"
                      for r in victim.agent_records()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        assert victim.agent is not None
        victim.agent.kill()  # by its pid: the agent only, the stack keeps running
        victim.agent.wait(5)
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=45)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        victim.command("release")
        victim_listeners = victim.listeners()
        fleet.start_agent(victim)  # for whatever runs after

    assert proc.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith(f"stackmon reload: rolling reload stopped at {victim.name}: "), line
    # The cause, named: the agent no longer answers (not "the master is re-executing").
    assert (f"{victim.name}: drain: host unreachable for 10 s during its drain: agent "
            f"http://{victim.address}:{AGENT_PORT}: cannot connect: ") in line, line
    assert "refused" in line.lower(), line
    assert line.endswith(f"(1/3 hosts done; not started: {last.name})"), line
    assert took < 20, f"the roll took {took:.0f} s to notice its host was gone: {line}"
    assert f"[1/3] {first.name}: reloaded and healthy" in out
    # The first host was reloaded; the last one was never touched: same workers, no record.
    assert not first.workers() & before[first.name]
    assert last.workers() == before[last.name]
    untouched_until(last, since, time.time())
    assert len(last.agent_records()) == last_records
    # `ss` in the victim's namespace: its agent's listener gone, its stack still listening.
    assert f"{victim.address}:{AGENT_PORT}" not in victim_listeners, victim_listeners
    assert victim.info["stats"] in victim_listeners, victim_listeners


def test_only_uwsgi_away_is_the_reload_itself_not_a_lost_host():
    """The roll's "host lost" rule: a host none of whose sources answers is lost, unless what
    is away is only uWSGI's stats (its master re-execs during the reload, for as long as the
    app takes to load); an agent that does not answer is always lost."""
    from stackmon.actions.rolling import _lost
    from stackmon.model import HostSnapshot, SourceError

    def snap(*errors: SourceError, reachable: bool = False) -> HostSnapshot:
        return HostSnapshot(name="h", taken_at=0.0, reachable=reachable, errors=errors)

    stats = SourceError("uwsgi 127.0.0.1:9002", "uwsgi stats 127.0.0.1:9002: refused")
    agent = SourceError("agent http://10.0.0.2:9300", "cannot connect: Connection refused")
    nginx = SourceError("nginx http://127.0.0.1/nginx_status", "refused")
    assert not _lost(snap(stats))
    assert _lost(snap(agent)) and _lost(snap(stats, nginx))
    assert not _lost(snap(agent, reachable=True))

"""A fleet of real hosts as network namespaces: one real uWSGI + one real agent in each.

Each "host" is a namespace joined to this one by a veth pair in its own private /24 (10.231.X.0,
X picked free per run); inside it run a real uWSGI (the launcher, nginx off) and `stackmon
agent` bound to the namespace's veth address with a token. What is checked is what an on-call
engineer relies on: every host is seen; cutting one host's link (its veth set down: packets are
silently lost, the hard case, not a quick "connection refused") makes that host unreachable
within its own timeout while the others keep updating every interval; bringing the link back
recovers it; the TUI shows a tab per host; `stackmon kill` acts through an agent.

Needs root and `ip` (skipped otherwise locally; with CI=true as root they run). Names are unique
per run, and every namespace, link and process created here is removed even when a test fails
(only those: processes by the pids `ip netns pids` lists for our own namespaces).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stackmon.config import HostConfig, Settings, Targets
from stackmon.model import HostSnapshot
from stackmon.poller import Fleet
from tests.conftest import IN_CI, require_uwsgi

ROOT = Path(__file__).resolve().parent.parent
AGENT_PORT = 9300
HOSTS = 3

pytestmark = [pytest.mark.netns, pytest.mark.stack]


def _need_root() -> None:
    why = None
    if os.geteuid() != 0:
        why = "needs root (network namespaces)"
    elif shutil.which("ip") is None:
        why = "needs the `ip` command (iproute2)"
    if why:
        if IN_CI:
            pytest.fail(f"{why} (CI=true: namespace tests must run)", pytrace=False)
        pytest.skip(why)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _used_third_octets() -> set[int]:
    text = ip("-4", "addr").stdout + ip("-4", "route").stdout
    return {int(m) for m in
            (part.split(".")[2] for part in text.split() if part.startswith("10.231."))
            if m.isdigit()}


@dataclass
class NsHost:
    name: str  # the host name in the hosts file
    ns: str
    host_dev: str
    peer_dev: str
    address: str  # the agent's address inside the namespace
    workdir: Path
    token_file: Path
    proc: subprocess.Popen[str] | None = None
    info: dict | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{AGENT_PORT}"

    def config(self) -> HostConfig:
        return HostConfig(name=self.name, agent=self.url, token_file=self.token_file)

    def cut(self) -> None:
        """Lose every packet to and from the host (no RST, no ICMP): its veth goes down."""
        ip("-n", self.ns, "link", "set", self.peer_dev, "down")

    def restore(self) -> None:
        ip("-n", self.ns, "link", "set", self.peer_dev, "up")


def serve_in_namespace() -> None:
    """Run inside a namespace (argv: name address token_file workdir): a real uWSGI with nginx
    off, then `stackmon agent` in the foreground until SIGTERM; the stack stops on the way out."""
    name, address, token_file, workdir = sys.argv[1:5]
    from stackmon.cli import main
    from stackmon.demo.launcher import Stack

    stack = Stack.start(Path(workdir), workers=2, threads=1, nginx=False, mercy=2, name=name)
    try:
        print(json.dumps({"stats": stack.stats_address, "master_pid": stack.master_pid,
                          "workers": stack.worker_pids()}), flush=True)
        main(["agent", "--listen", f"{address}:{AGENT_PORT}", "--token-file", token_file,
              "--uwsgi", stack.stats_address, "--name", name, "--timeout", "1s"])
    finally:
        stack.stop()


class Namespaces:
    """Creates the namespaces, links and agent processes; `close()` removes all of them."""

    def __init__(self, count: int) -> None:
        self.run_id = secrets.token_hex(3)
        self.hosts: list[NsHost] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="stackmon-ns-"))
        used = _used_third_octets()
        start = random.randrange(1, 250 - count)
        octets = [o for o in itertools.chain(range(start, 250), range(1, start))
                  if o not in used][:count]
        for i, octet in enumerate(octets):
            token_file = self.tmp / f"token-{i}"
            token_file.write_text(secrets.token_hex(24))
            token_file.chmod(0o600)
            self.hosts.append(NsHost(
                name=f"ns-web-{i}", ns=f"smon-{self.run_id}-{i}",
                host_dev=f"smv{self.run_id}h{i}", peer_dev=f"smv{self.run_id}p{i}",
                address=f"10.231.{octet}.2", workdir=self.tmp / f"stack-{i}",
                token_file=token_file))
        self._octets = octets

    def create(self) -> None:
        for h, octet in zip(self.hosts, self._octets, strict=True):
            ip("netns", "add", h.ns)
            ip("link", "add", h.host_dev, "type", "veth", "peer", "name", h.peer_dev,
               "netns", h.ns)
            ip("addr", "add", f"10.231.{octet}.1/24", "dev", h.host_dev)
            ip("link", "set", h.host_dev, "up")
            ip("-n", h.ns, "addr", "add", f"{h.address}/24", "dev", h.peer_dev)
            ip("-n", h.ns, "link", "set", h.peer_dev, "up")
            ip("-n", h.ns, "link", "set", "lo", "up")

    def start_agents(self) -> None:
        code = "from tests.test_netns import serve_in_namespace; serve_in_namespace()"
        for h in self.hosts:
            h.proc = subprocess.Popen(
                ["ip", "netns", "exec", h.ns, sys.executable, "-c", code, h.name, h.address,
                 str(h.token_file), str(h.workdir)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for h in self.hosts:
            assert h.proc is not None and h.proc.stdout is not None
            line = h.proc.stdout.readline()
            if not line:
                err = h.proc.stderr.read() if h.proc.stderr is not None else ""
                raise RuntimeError(f"host {h.name} did not start:\n{err}")
            h.info = json.loads(line)
        for h in self.hosts:  # the agent's "serving ..." line on stderr means it listens
            assert h.proc is not None and h.proc.stderr is not None
            line = h.proc.stderr.readline()
            if "serving" not in line:
                raise RuntimeError(f"agent of {h.name} did not start: {line}"
                                   f"{h.proc.stderr.read()}")

    def close(self) -> None:
        errors: list[str] = []
        for h in self.hosts:
            if h.proc is not None and h.proc.poll() is None:
                h.proc.send_signal(signal.SIGTERM)
        for h in self.hosts:
            if h.proc is not None:
                try:
                    h.proc.wait(15)
                except subprocess.TimeoutExpired:
                    h.proc.kill()
                    h.proc.wait(5)
        for h in self.hosts:
            # Anything still running in OUR namespace was started by this test: end it by pid.
            pids = ip("netns", "pids", h.ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            if ip("netns", "del", h.ns, check=False).returncode != 0 and \
                    h.ns in ip("netns", "list", check=False).stdout:
                errors.append(f"netns {h.ns} not deleted")
            ip("link", "del", h.host_dev, check=False)  # gone with the namespace normally
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))


@pytest.fixture(scope="module")
def fleet_hosts() -> Iterator[list[NsHost]]:
    _need_root()
    require_uwsgi()
    spaces = Namespaces(HOSTS)
    try:
        spaces.create()
        spaces.start_agents()
        yield spaces.hosts
    finally:
        spaces.close()
    leftover = ip("netns", "list").stdout
    assert spaces.run_id not in leftover, leftover


def hosts_file(hosts: list[NsHost], path: Path, interval: str = "0.5s",
               timeout: str = "1s") -> Path:
    lines = [f'[defaults]\ninterval = "{interval}"\ntimeout = "{timeout}"\n']
    for h in hosts:
        lines.append(f'[[host]]\nname = "{h.name}"\nagent = "{h.url}"\n'
                     f'token_file = "{h.token_file}"\n')
    path.write_text("\n".join(lines))
    return path


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackmon.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_snapshot_sees_every_namespace_host(fleet_hosts, tmp_path):
    path = hosts_file(fleet_hosts, tmp_path / "hosts.toml")
    result = run_cli("snapshot", str(path), "--json")
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    doc = json.loads(result.stdout)
    assert [h["name"] for h in doc["hosts"]] == [h.name for h in fleet_hosts]
    for got, h in zip(doc["hosts"], fleet_hosts, strict=True):
        assert got["reachable"] and not got["errors"], got["errors"]
        assert got["uwsgi"][0]["master_pid"] == h.info["master_pid"]
        assert len(got["uwsgi"][0]["workers"]) == 2
    # Each namespace has its own kernel view: each agent reports its own listeners.
    stats_ports = {h.info["stats"] for h in fleet_hosts}
    assert len(stats_ports) >= 1


async def test_cut_link_makes_one_host_unreachable_and_the_others_keep_updating(fleet_hosts):
    interval, timeout = 0.5, 1.0
    targets = Targets(hosts=tuple(h.config() for h in fleet_hosts),
                      settings=Settings(interval=interval, timeout=timeout))
    got: dict[int, list[tuple[float, HostSnapshot]]] = {i: [] for i in range(HOSTS)}
    fleet = Fleet(targets, lambda i, s: got[i].append((time.monotonic(), s)))
    task = asyncio.create_task(fleet.run())
    victim = fleet_hosts[1]
    try:
        # Everyone answers.
        for _ in range(100):
            await asyncio.sleep(0.1)
            if all(got[i] and got[i][-1][1].reachable for i in got):
                break
        assert all(got[i][-1][1].reachable for i in got), {
            i: got[i][-1][1].errors if got[i] else None for i in got}

        victim.cut()
        cut_at = time.monotonic()
        await asyncio.sleep(2 * timeout + 2 * interval + 1.0)
        down = [(t, s) for t, s in got[1] if t > cut_at and not s.reachable]
        assert down, [(round(t - cut_at, 2), s.reachable) for t, s in got[1][-5:]]
        # Unreachable within its own timeout (2 x timeout for the whole exchange) + one slot.
        assert down[0][0] - cut_at <= 2 * timeout + interval + 0.5, down[0][0] - cut_at
        assert down[0][1].uwsgi, "the last good data is carried"
        first_age, last_age = down[0][1].stale_s, down[-1][1].stale_s
        assert first_age is not None and last_age is not None and last_age > first_age
        # Meanwhile the others kept updating every interval.
        for i in (0, 2):
            window = [(t, s) for t, s in got[i] if t > cut_at]
            assert len(window) >= int((2 * timeout + 2 * interval + 1.0) / interval) - 1
            assert all(s.reachable for _, s in window)
            taken = [s.taken_at for _, s in window]
            assert taken == sorted(taken) and len(set(taken)) == len(taken)
            gaps = [b - a for (a, _), (b, _) in itertools.pairwise(window)]
            assert max(gaps) < interval + 0.35, gaps

        victim.restore()
        back_at = time.monotonic()
        for _ in range(100):
            await asyncio.sleep(0.1)
            recent = [s for t, s in got[1] if t > back_at]
            if recent and recent[-1].reachable:
                break
        recovered = [t for t, s in got[1] if t > back_at and s.reachable]
        assert recovered, "the host came back"
        # Backoff is capped at 4 x interval; plus one exchange.
        assert recovered[0] - back_at <= 4 * interval + 2 * timeout + 0.5
        assert got[1][-1][1].stale_s is None
    finally:
        with contextlib.suppress(Exception):
            victim.restore()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_tui_shows_a_tab_per_namespace_host(fleet_hosts):
    pytest.importorskip("textual")
    from tui.app import StackmonApp

    targets = Targets(hosts=tuple(h.config() for h in fleet_hosts),
                      settings=Settings(interval=0.5, timeout=1.0))
    app = StackmonApp(targets)
    async with app.run_test(size=(120, 36)) as pilot:
        labels: list[str] = []
        for _ in range(80):
            await pilot.pause(0.1)
            labels = [app._tabs.get_tab(f"host-{i}").label.plain for i in range(HOSTS)]
            if all("connecting" not in lab and "UNREACHABLE" not in lab for lab in labels):
                break
        for label, h in zip(labels, fleet_hosts, strict=True):
            assert h.name in label and "connecting" not in label, labels
            assert "UNREACHABLE" not in label, labels
        # Every tab has its host's workers: switch through them.
        for i in range(HOSTS):
            app._tabs.active = f"host-{i}"
            await pilot.pause(0.3)
            pane = app.active_pane()
            assert pane.host.name == fleet_hosts[i].name


def test_kill_command_acts_through_a_namespace_agent(fleet_hosts, tmp_path):
    path = hosts_file(fleet_hosts, tmp_path / "hosts.toml")
    target = fleet_hosts[2]
    before = json.loads(run_cli("snapshot", str(path), "--json").stdout)["hosts"][2]
    worker = before["uwsgi"][0]["workers"][0]
    result = run_cli("kill", target.name, str(worker["id"]), "--yes", "--hosts", str(path))
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"pid {worker['pid']} killed" in result.stdout
    after = json.loads(run_cli("snapshot", str(path), "--json").stdout)["hosts"][2]
    new = next(w for w in after["uwsgi"][0]["workers"] if w["id"] == worker["id"])
    assert new["pid"] != worker["pid"]
    # The pid it had is stale now: refused by the agent, and the client says so in kind.
    from stackmon.actions.base import ActionError
    from stackmon.agent.client import remote_kill

    with pytest.raises(ActionError) as err:
        asyncio.run(remote_kill(target.config(), 0, worker["id"], worker["pid"]))
    assert err.value.kind == "stale"

"""Hostile paths and peers, end to end through the real command line: every one gives a clear
line fast, with bounded memory, no traceback and the documented exit code.

Before the bounded reads, each of these hung `stackmon` (a FIFO as hosts file, an nginx include
of /proc/self/fd/*) or grew it to gigabytes (/dev/zero, an agent streaming an endless body).
Each command runs in a child Python that reports its own peak RSS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_agent_client import HostileAgent, hostile_agent  # noqa: F401 (fixture)

# What a snapshot or doctor run may cost in memory, whatever it is fed: an interpreter with
# httpx and the 64 MiB reply cap fits well under it; the unbounded reads reached 2-10 GB.
RSS_LIMIT_KB = 256 * 1024
FAST_S = 20.0

_RUN = """\
import resource, sys
from stackmon.cli import main
try:
    rc = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as fh:
        fh.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.exit(rc)
"""


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_kb: int


@pytest.fixture
def stackmon(tmp_path: Path) -> Callable[..., Run]:
    def run(*args: str, timeout: float = 60) -> Run:
        rss = tmp_path / "rss"
        started = time.monotonic()
        # Limit the address space too: a regression fails with MemoryError, not an OOM kill.
        proc = subprocess.run([sys.executable, "-c", _RUN, str(rss), *args],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, preexec_fn=_cap_memory)
        took = time.monotonic() - started
        return Run(proc.returncode, proc.stdout, proc.stderr, took,
                   int(rss.read_text() or 0) if rss.exists() else 0)
    return run


def _cap_memory() -> None:
    import resource

    gib = 2 * 1024 ** 3
    resource.setrlimit(resource.RLIMIT_AS, (gib, gib))


def assert_clean(run: Run, code: int) -> None:
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    assert run.seconds < FAST_S, run.seconds
    assert 0 < run.peak_rss_kb < RSS_LIMIT_KB, run.peak_rss_kb
    print(f"peak RSS {run.peak_rss_kb} KB in {run.seconds:.1f} s")


def one_line(run: Run) -> str:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


# --- the hosts file ----------------------------------------------------------------------------

def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.toml"
    os.mkfifo(path)
    return path


def _big(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.toml"
    with path.open("wb") as fh:  # 100 MB of real bytes: a read-it-all would cost as much
        block = b"# " + b"x" * (1024 * 1024 - 3) + b"\n"
        for _ in range(100):
            fh.write(block)
    return path


def _deep(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    return path


@pytest.mark.parametrize(("make", "words"), [
    (_fifo, "hosts file is a FIFO, not a regular file; refusing to read it"),
    (lambda _: Path("/dev/zero"), "hosts file is a character device, not a regular file; "
                                  "refusing to read it"),
    (_big, "hosts file is 104857600 bytes, over the 4194304-byte limit"),
    (_deep, "invalid TOML: arrays or tables nested too deeply"),
], ids=["fifo", "dev-zero", "100MB", "deep-toml"])
def test_hostile_hosts_files(stackmon: Callable[..., Run], tmp_path: Path,
                             make: Callable[[Path], Path], words: str) -> None:
    path = make(tmp_path)
    run = stackmon("snapshot", str(path))
    assert_clean(run, 2)
    assert one_line(run) == f"stackmon: {path}: {words}"


# --- an agent that streams forever or nests deep -----------------------------------------------

@pytest.mark.parametrize(("behaviour", "words"), [
    ("endless", "refused the agent's answer: the answer is over the 67108864-byte limit"),
    ("deep", "refused the agent's answer: the answer is JSON nested too deeply"),
])
def test_hostile_agents(stackmon: Callable[..., Run], tmp_path: Path, hostile_agent: Any,  # noqa: F811
                        behaviour: str, words: str) -> None:
    agent: HostileAgent = hostile_agent(behaviour)
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(f'[defaults]\ntimeout = "5s"\n[[host]]\nname = "remote"\n'
                     f'agent = "{agent.url}"\n')
    run = stackmon("snapshot", str(hosts), "--json")
    assert_clean(run, 3)
    assert words in run.stdout, run.stdout
    if behaviour == "endless":
        assert agent.sent >= 64 * 1024 * 1024  # the cap was reached, memory stayed bounded


# --- the doctor's nginx includes ---------------------------------------------------------------

@pytest.mark.parametrize(("include", "words"), [
    ("/proc/self/fd/*", "not a regular file; refusing to read it"),
    ("/dev/zero", "included file is a character device, not a regular file"),
    ("fifo", "included file is a FIFO, not a regular file"),
])
def test_doctor_hostile_includes(stackmon: Callable[..., Run], tmp_path: Path, include: str,
                                 words: str) -> None:
    os.mkfifo(tmp_path / "fifo")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"events {{}}\nhttp {{\n    include {include};\n}}\n")
    run = stackmon("doctor", "--nginx-conf", str(conf))
    assert_clean(run, 2)
    line = one_line(run)
    assert line.startswith(f"stackmon: {conf}:3: include "), line
    assert words in line

"""CPU cost of the TUI in a real terminal, side by side with two references, in one run.

Starts the demo stack (real uWSGI + nginx, with its traffic), then three programs in their own
tmux panes (120x36) against the same uWSGI stats server, each refreshing every second:
  - stackmon (everything: workers and requests, queues, fds, nginx, history),
  - uwsgitop (PyPI `uwsgitop`, the curses floor),
  - bench/simple_table.py (the simplest Textual table: a DataTable refilled every second),
and reports each one's CPU (user+system of its whole process tree, % of one core) over the same
window, with the ratios stackmon/simple-table and simple-table/uwsgitop.

    .venv/bin/python bench/bench_tui_cpu.py [--seconds 60] [--warmup 8]

Needs tmux and `pip install uwsgitop` (the script says so if either is missing).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from stackmon.demo.launcher import Stack
from stackmon.demo.traffic import TrafficThread

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SOCK = "stackmon-bench"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", SOCK, *args], check=True, capture_output=True,
                          text=True).stdout


def tree_cpu(pid: int) -> float:
    """user+system seconds of a process and its descendants."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=8.0)
    args = ap.parse_args()
    if shutil.which("tmux") is None:
        print("bench_tui_cpu: tmux is not installed (apt-get install tmux)")
        return 2
    uwsgitop = BIN / "uwsgitop"
    if not uwsgitop.exists():
        print(f"bench_tui_cpu: uwsgitop is missing ({BIN}/pip install uwsgitop)")
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="stackmon-bench-"))
    stack = Stack.start(workdir, workers=8, threads=2, listen=32, mercy=5, name="bench")
    traffic = TrafficThread(stack.base_url, capacity=stack.capacity, listen=32,
                            stats_address=stack.stats_address).start() \
        if stack.base_url else None
    programs = {
        "stackmon": f"{BIN}/stackmon --uwsgi {stack.stats_address} --nginx "
                    f"{stack.nginx_status_url} --interval 1s",
        "uwsgitop": f"{uwsgitop} --frequency 1 {stack.stats_address}",
        "simple-table": f"{sys.executable} {ROOT}/bench/simple_table.py {stack.stats_address}",
    }
    try:
        pids = {}
        for name, command in programs.items():
            tmux("new-session", "-d", "-s", name, "-x", "120", "-y", "36", command)
            pids[name] = int(tmux("list-panes", "-t", name, "-F", "#{pane_pid}").split()[0])
        time.sleep(args.warmup)
        alive = {n: psutil.pid_exists(p) for n, p in pids.items()}
        if not all(alive.values()):
            print(f"bench_tui_cpu: a program exited early: {alive}")
            return 1
        start = {n: tree_cpu(p) for n, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - t0
        used = {n: tree_cpu(p) - start[n] for n, p in pids.items()}
        screen = tmux("capture-pane", "-p", "-t", "stackmon")
    finally:
        subprocess.run(["tmux", "-L", SOCK, "kill-server"], capture_output=True)
        if traffic is not None:
            traffic.stop()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    pct = {n: 100 * s / elapsed for n, s in used.items()}
    print(f"CPU over {elapsed:.0f} s, 120x36 tmux panes, 1 s refresh, 8 workers x 2 threads "
          "with demo traffic")
    for name in programs:
        print(f"  {name:<13} {pct[name]:6.2f} % of one core")
    floor = max(pct["uwsgitop"], 1e-9)
    simple = max(pct["simple-table"], 1e-9)
    print(f"  simple-table / uwsgitop = {pct['simple-table'] / floor:5.1f}x")
    print(f"  stackmon / uwsgitop     = {pct['stackmon'] / floor:5.1f}x")
    print(f"  stackmon / simple-table = {pct['stackmon'] / simple:5.2f}  (target <= 1.0)")
    if "uWSGI" not in screen:
        print("  warning: stackmon's screen did not show uWSGI data; figures may be off")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

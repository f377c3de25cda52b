"""Timing of the kernel-facts source, on this machine, with a realistic load.

Run: .venv/bin/python bench/bench_kernel.py [--listeners 300] [--procs 20] [--fds 60]

It opens N extra listeners (half TCP, half UNIX, each with a few unaccepted connections) and
starts P `sleep` children that each inherit F sockets, then times each call the poller makes
once a second. Everything it starts is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stackmon.model import SourceError
from stackmon.sources import kernel


def timeit(label: str, fn: Callable[[], object], n: int) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    print(f"{label:58s} {best * 1e3:8.3f} ms")
    return best


def readlink_full_paths(pids: list[int]) -> None:
    """The obvious alternative to dir_fd: readlink on "/proc/PID/fd/N" each time."""
    for pid in pids:
        base = f"/proc/{pid}/fd/"
        for name in os.listdir(base):
            with contextlib.suppress(FileNotFoundError):
                os.readlink(base + name)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listeners", type=int, default=300)
    ap.add_argument("--procs", type=int, default=20)
    ap.add_argument("--fds", type=int, default=60)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="smk-bench-", dir="/tmp"))
    socks: list[socket.socket] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(args.listeners):
            if i % 2:
                s = socket.socket(socket.AF_UNIX)
                s.bind(str(tmp / f"{i}.sock"))
                addr: Any = str(tmp / f"{i}.sock")
                fam = socket.AF_UNIX
            else:
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                addr, fam = s.getsockname(), socket.AF_INET
            s.listen(16)
            socks.append(s)
            for _ in range(3):
                c = socket.socket(fam)
                c.setblocking(False)
                c.connect_ex(addr)
                socks.append(c)
        held = [s.fileno() for s in socks[: args.fds]]
        for _ in range(args.procs):
            children.append(subprocess.Popen(["sleep", "600"], pass_fds=held))
        time.sleep(0.2)
        pids = [p.pid for p in children]
        roles = {pid: "uwsgi-worker" for pid in pids}
        roles[pids[0]] = "uwsgi-master"

        raw = kernel.listening_sockets()
        assert not isinstance(raw, SourceError), raw
        print(f"{len(raw)} listeners in this namespace; {args.procs} processes with "
              f"~{args.fds + 3} fds each\n")
        timeit("listening_sockets()", kernel.listening_sockets, 200)
        if shutil.which("ss"):
            timeit("for comparison: subprocess `ss -ltnx` (fork+exec)",
                   lambda: subprocess.run(["ss", "-ltnxH"], capture_output=True), 20)
        timeit(f"scan_processes({args.procs} pids): fds+limits+inodes+system",
               lambda: kernel.scan_processes(roles), 100)
        timeit(f"scan_processes({args.procs} pids, sockets=False)",
               lambda: kernel.scan_processes(roles, sockets=False), 100)
        timeit(f"scan_processes({args.procs} pids, sockets=masters(roles))",
               lambda: kernel.scan_processes(roles, sockets=kernel.masters(roles)), 100)
        timeit("for comparison: bare listdir+readlink, full paths",
               lambda: readlink_full_paths(pids), 100)
        inode_pids = kernel.scan_processes(roles).inode_pids
        timeit("listeners_for(raw, inode_pids, roles) alone",
               lambda: kernel.listeners_for(raw, inode_pids, roles), 500)
        timeit(f"kernel_facts({args.procs} pids): everything for one poll",
               lambda: kernel.kernel_facts(roles), 50)
        timeit("kernel_counters()", kernel.kernel_counters, 500)
        timeit("system_fds()", kernel.system_fds, 500)
        n = sum(1 for e in os.listdir("/proc") if e.isdigit())
        timeit(f"processes_named('nginx') over {n} processes",
               lambda: kernel.processes_named("nginx"), 100)
    finally:
        for p in children:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        for s in socks:
            s.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

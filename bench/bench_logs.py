"""How much log reading costs: lines parsed and classified per second, the first poll of a
2 GB log, and the CPU of following a log written at 200 requests/s.

    .venv/bin/python bench/bench_logs.py [--lines 200000] [--big-gb 2] [--seconds 10]

Rows (CPU seconds of this process, one core; the machine is shared, so the best of 3 runs):
- access (combined) / access (timed format): nginx access-log lines through the log_format
  parser and the 60 s window (status classes, histogram, folded endpoints). Aim: 100,000/s.
- error log: nginx error-log lines (every one an upstream failure) classified by cause.
- uwsgi log: uWSGI request-log lines scanned for events (the common case: no event).
- first poll of a BIG log: a sparse file of --big-gb GB whose last 8 MB are real lines of the
  last 3 minutes; the first poll must read only the window's end (bytes read is printed).
- follow at 200 req/s: a writer thread appends 200 lines a second, HostLogs polls once a
  second; the CPU of the polls as a share of one core. Aim: < 0.5 %.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stackmon.logs.access import AccessWindow  # noqa: E402
from stackmon.logs.host import HostLogs, LogSpec  # noqa: E402
from stackmon.logs.nginx_errors import ErrorWindow  # noqa: E402
from stackmon.logs.nginx_format import COMBINED, compile_format  # noqa: E402
from stackmon.logs.uwsgi_events import EventLog  # noqa: E402

TIMED = compile_format('$remote_addr - $remote_user [$time_local] "$request" $status '
                       '$body_bytes_sent "$http_referer" "$http_user_agent" '
                       'rt=$request_time urt="$upstream_response_time"', name="timed")
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0"
PATHS = ["/", "/api/users/{n}", "/api/orders/{n}/items", "/static/app.{h}.js",
         "/report?from=2024-01-01&token=abc{n}", "/healthz", "/u/{u}/avatar"]
STATUSES = [200] * 85 + [301, 304, 404, 404, 499, 500, 502, 502, 503, 504] + [200] * 5


def access_line(at: float, rng: random.Random, timed: bool) -> str:
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(at))
    path = rng.choice(PATHS).format(n=rng.randint(1, 10**6), h=f"{rng.getrandbits(32):08x}",
                                    u=f"{rng.getrandbits(64):016x}")
    line = (f'10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)} - - [{stamp}] "GET {path} '
            f'HTTP/1.1" {rng.choice(STATUSES)} {rng.randint(0, 50000)} "-" "{UA}"')
    if timed:
        t = rng.expovariate(1 / 0.05)
        line += f' rt={t + 0.001:.3f} urt="{t:.3f}"'
    return line


def error_line(at: float, rng: random.Random) -> str:
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(at))
    message = rng.choice([
        "connect() to unix:/run/app.sock failed (11: Resource temporarily unavailable) while "
        "connecting to upstream",
        "upstream timed out (110: Connection timed out) while reading response header from "
        "upstream",
        "upstream prematurely closed connection while reading response header from upstream",
    ])
    return (f"{stamp} [error] 1234#1234: *{rng.randint(1, 10**6)} {message}, client: 10.0.0.1, "
            f'server: x, request: "GET /api/users/{rng.randint(1, 999)} HTTP/1.1", '
            'upstream: "uwsgi://unix:/run/app.sock:", host: "example.com"')


def uwsgi_line(rng: random.Random) -> str:
    return (f"[pid: 1234|app: 0|req: {rng.randint(1, 10**6)}/{rng.randint(1, 10**6)}] 10.0.0.1 "
            "() {34 vars in 456 bytes} [Tue May  7 10:00:00 2024] GET /api/users/1 => "
            "generated 5 bytes in 3 msecs (HTTP/1.1 200) 3 headers in 100 bytes (1 switches on "
            "core 0)")


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def rate_rows(n: int) -> None:
    rng = random.Random(1)
    now = time.time()
    combined = [access_line(now - rng.random() * 60, rng, False) for _ in range(n)]
    timed = [access_line(now - rng.random() * 60, rng, True) for _ in range(n)]
    errors = [error_line(now - rng.random() * 60, rng) for _ in range(n)]
    uwsgi = [uwsgi_line(rng) for _ in range(n)]
    rows: list[tuple[str, Callable[[], object]]] = [
        ("access (combined)", lambda: AccessWindow(COMBINED).add_lines(combined, now)),
        ("access (timed format)", lambda: AccessWindow(TIMED).add_lines(timed, now)),
        ("error log (all upstream errors)", lambda: ErrorWindow().add_lines(errors, now)),
        ("uwsgi log (request lines)", lambda: EventLog().add_uwsgi_lines(uwsgi, now)),
    ]
    print(f"{'lines parsed and classified, one core':<40} {'lines/s':>12} {'us/line':>8}")
    for name, fn in rows:
        cpu = best_of(3, fn)
        print(f"{name:<40} {n / cpu:>12,.0f} {cpu / n * 1e6:>8.2f}")
    window = AccessWindow(TIMED)
    window.add_lines(timed, now)
    cpu = best_of(3, lambda: window.summary(now))
    print(f"{'summary of a full 60 s window':<40} {cpu * 1000:>10.2f} ms")


def big_row(gb: float) -> None:
    rng = random.Random(2)
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="stackmon-bench-") as tmp:
        path = Path(tmp) / "access.log"
        tail_bytes = 8 * 1024 * 1024
        lines: list[str] = []
        size = 0
        while size < tail_bytes:
            lines.append("")
            size += 260
        count = len(lines)
        text = "\n".join(access_line(now - 180 + 180 * i / count, rng, True)
                         for i in range(count)) + "\n"
        data = text.encode()
        total = int(gb * 1024**3)
        with path.open("wb") as fh:
            fh.truncate(total - len(data))
            fh.seek(total - len(data))
            fh.write(data)
        spec = LogSpec("nginx_access", str(path), log_format=TIMED)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        with HostLogs([spec]) as logs:
            summary = logs.poll()
        wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
        assert summary.http is not None
        read = summary.sources[0]
        print(f"first poll of a {os.path.getsize(path) / 1024**3:.1f} GB log: {wall * 1000:.0f} ms "
              f"wall, {cpu * 1000:.0f} ms CPU; {summary.http.requests:,} requests in the 60 s "
              f"window (of {count:,} lines in the last 3 min); error={read.error}")
        probe = HostLogs([spec])
        tail = probe._sources[0].tail
        assert tail is not None
        got = tail.poll()
        probe.close()
        print(f"  bytes read: {got.bytes_read:,} ({got.bytes_read / total * 100:.3f} % of the "
              "file)")


def follow_row(seconds: int) -> None:
    rng = random.Random(3)
    with tempfile.TemporaryDirectory(prefix="stackmon-bench-") as tmp:
        path = Path(tmp) / "access.log"
        path.write_bytes(b"")
        stop = threading.Event()

        def writer() -> None:
            with path.open("a") as fh:
                while not stop.is_set():
                    at = time.time()
                    fh.write("".join(access_line(at, rng, True) + "\n" for _ in range(20)))
                    fh.flush()
                    stop.wait(0.1)

        thread = threading.Thread(target=writer)
        thread.start()
        cpu = 0.0
        try:
            with HostLogs([LogSpec("nginx_access", str(path), log_format=TIMED)]) as logs:
                for _ in range(seconds):
                    time.sleep(1.0)
                    start = time.thread_time()
                    summary = logs.poll()
                    cpu += time.thread_time() - start
        finally:
            stop.set()
            thread.join()
        assert summary.http is not None
        print(f"follow at 200 req/s for {seconds} s: {cpu / seconds * 1000:.2f} ms CPU per 1 s "
              f"poll = {cpu / seconds * 100:.2f} % of a core; window shows "
              f"{summary.http.per_s:.0f} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--big-gb", type=float, default=2.0)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    rate_rows(args.lines)
    big_row(args.big_gb)
    follow_row(args.seconds)


if __name__ == "__main__":
    main()

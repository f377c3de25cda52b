"""How long the uWSGI stats source takes, on a real stack and on a huge synthetic instance.

    .venv/bin/python bench/bench_uwsgi_parse.py [-n ITERATIONS] [--no-real]

Rows (milliseconds, wall clock, median / p95 / min over the iterations):
- real 8 workers: a real uWSGI (8 workers x 2 threads, 4 requests stuck with realistic
  headers) polled over TCP: fetch alone, parse+model alone, and fetch+parse+model (poll_stats).
- 512x8 synthetic: bench/make_big_doc.py's document (~1.6 MB, 4096 cores, ~10% busy with ~25
  variables each). "json.loads" is the floor set by the stdlib parser; "cold" starts every
  iteration with empty memos (every request new, the first poll), "warm" is the steady state
  of polling an instance whose stuck requests stay stuck.
- 512x8 over a unix socket: the same bytes served by a local unix-socket server: fetch alone,
  and poll_stats (which parses a document this big in a worker thread).

The parser uses orjson when it is importable (not a dependency); the header says which. To see
both: run once as is, once with orjson on PYTHONPATH.

The machine is shared and noisy: read the median, and the min as the undisturbed cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from make_big_doc import make_big_doc  # noqa: E402

from stackmon.addresses import parse_stats_address  # noqa: E402
from stackmon.model import Thresholds, UwsgiInstance  # noqa: E402
from stackmon.sources.uwsgi_stats import (  # noqa: E402
    clear_caches,
    fetch_stats,
    parse_stats,
    poll_stats,
)

TH = Thresholds()
HEADERS = {
    "Cookie": "session=FAKE-0123456789abcdef; csrftoken=FAKE-abcdef",
    "Authorization": "Bearer FAKE-TOKEN-0123456789",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.9",
    "Accept-Encoding": "gzip, deflate, br",
    "X-Request-Id": "4b1f0c2e9d8a4f7e9c3b2a1d0e9f8a7b",
    "X-Forwarded-For": "203.0.113.7, 10.0.0.2",
    "X-Forwarded-Proto": "https",
    "Referer": "https://shop.example/cart?step=2",
}

Row = tuple[str, int, float, float, float]


def summarize(name: str, samples: list[float]) -> Row:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return name, len(samples), statistics.median(ordered) * 1e3, p95 * 1e3, ordered[0] * 1e3


def time_sync(name: str, n: int, fn: Callable[[], object],
              before: Callable[[], None] | None = None) -> Row:
    fn()  # warm-up (imports, first-use setup)
    samples = []
    for _ in range(n):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return summarize(name, samples)


def time_async(name: str, n: int, fn: Callable[[], Awaitable[object]],
               before: Callable[[], None] | None = None) -> Row:
    async def run() -> list[float]:
        await fn()
        samples = []
        for _ in range(n):
            if before:
                before()
            t0 = time.perf_counter()
            result = await fn()
            samples.append(time.perf_counter() - t0)
            assert not hasattr(result, "message"), result  # a SourceError would be cheating
        return samples

    return summarize(name, asyncio.run(run()))


def bench_real(n: int) -> list[Row]:
    from tests.test_uwsgi_stats import HungRequests, UwsgiProcess, find_uwsgi, free_port

    binary = find_uwsgi()
    if binary is None:
        print("(no uwsgi binary: real-stack rows skipped)", file=sys.stderr)
        return []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="stackmon-bench-") as tmp:
        inst = UwsgiProcess.configure(binary, Path(tmp), "bench", f"127.0.0.1:{free_port()}",
                                      workers=8, threads=2, http=True)
        inst.start()
        hung = HungRequests(inst)
        try:
            inst.wait_ready()
            for i in range(4):
                hung.send(f"/hang/b{i}/api/orders/{1000 + i}?page={i}&sort=desc", HEADERS)
            hung.wait_in_flight(4)
            addr = parse_stats_address(inst.stats)
            raw = asyncio.run(fetch_stats(addr))
            assert isinstance(raw, bytes), raw
            parsed = parse_stats(raw, inst.stats, time.time(), TH)
            assert isinstance(parsed, UwsgiInstance), parsed
            busy = sum(len(w.requests_in_flight) for w in parsed.workers)
            label = f"real 8x2 ({len(raw) // 1024} KB, {busy} busy)"
            rows.append(time_async(f"{label}: fetch", n, lambda: fetch_stats(addr)))
            rows.append(time_sync(f"{label}: parse+model", n,
                                  lambda: parse_stats(raw, inst.stats, time.time(), TH)))
            rows.append(time_async(f"{label}: fetch+parse+model", n,
                                   lambda: poll_stats(addr, TH)))
        finally:
            hung.release()
            inst.stop()
    return rows


@contextlib.contextmanager
def unix_server(data: bytes) -> Iterator[str]:
    """A stats-like server in a thread: accept, send everything, close."""
    path = os.path.join(tempfile.mkdtemp(prefix="stackmon-bench-"), "stats.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(os.path.dirname(path))


def bench_big(n: int) -> list[Row]:
    raw = make_big_doc()
    doc = json.loads(raw)
    cores = sum(len(w["cores"]) for w in doc["workers"])
    busy = sum(c["in_request"] for w in doc["workers"] for c in w["cores"])
    label = f"512x8 ({len(raw) // 1024} KB, {cores} cores, {busy} busy)"
    del doc
    now = 1_800_000_000.0
    rows = [
        time_sync(f"{label}: json.loads only", n,
                  lambda: json.loads(raw.decode("utf-8"), strict=False)),
        time_sync(f"{label}: parse+model cold", n, lambda: parse_stats(raw, "big", now, TH),
                  before=clear_caches),
        time_sync(f"{label}: parse+model warm", n, lambda: parse_stats(raw, "big", now, TH)),
    ]
    with unix_server(raw) as path:
        addr = parse_stats_address(path)
        rows.append(time_async(f"{label} via unix socket: fetch", n,
                               lambda: fetch_stats(addr)))
        rows.append(time_async(f"{label} via unix socket: fetch+parse+model cold", n,
                               lambda: poll_stats(addr, TH), before=clear_caches))
        rows.append(time_async(f"{label} via unix socket: fetch+parse+model warm", n,
                               lambda: poll_stats(addr, TH)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--iterations", type=int, default=60)
    parser.add_argument("--no-real", action="store_true", help="skip the real uWSGI rows")
    args = parser.parse_args()
    load = os.getloadavg()
    from stackmon.sources import uwsgi_stats

    loader = (f"orjson {uwsgi_stats._orjson.__version__}" if uwsgi_stats._orjson
              else "stdlib json (orjson not installed)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average"
          f" {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {args.iterations} iterations,"
          f" parser: {loader}")
    rows = ([] if args.no_real else bench_real(args.iterations)) + bench_big(args.iterations)
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'n':>4}  {'median':>8}  {'p95':>8}  {'min':>8}   (ms)")
    for name, count, med, p95, low in rows:
        print(f"{name:{width}}  {count:>4}  {med:>8.2f}  {p95:>8.2f}  {low:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

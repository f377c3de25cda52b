"""Benchmark: what the flight recorder costs, in bytes per poll and CPU per poll.

    .venv/bin/python bench/bench_record.py [--polls 300] [--keyframe 60]

Two hosts, each recorded for --polls polls one second apart (what `stackmon record` stores):
- small: the recorded demo host (tests/fixtures/snapshots/demo-hangs.json: 4 workers x 2
  threads, 8 requests in flight), request ages and counters moving every poll;
- big: 64 workers x 8 threads, half the cores busy (256 requests with ~25 variables each,
  bench/make_big_doc.py), parsed by the real uWSGI parser every poll with ages growing, and an
  eighth of the workers starting new requests each poll (every request lives ~8 s).

Reported per host: bytes per poll (the file's size after a checkpoint / polls) and per hour at
1 s, and the recorder's CPU per poll (process time of Recorder.write: host_to_dict, JSON,
zstd against the previous poll, the SQLite commit), split into serialising and storing.
Aims (issue 14): under 50 MB per hour for the big host; under 1 ms of CPU per poll.

Measured on the development machine (2 cores, shared), 300 polls, keyframe every 60:
    small:  0.31 KB/poll (1.1 MB/h);  CPU 0.24 ms/poll (host_to_dict 0.07 ms, store 0.17 ms)
    big:    5.3 KB/poll (19.7 MB/h);  CPU 10.7 ms/poll: host_to_dict (the redacted snapshot
            JSON, the same the agent serves) 8.5 ms; encode (orjson) + zstd against the
            previous poll + the SQLite commit 2.2 ms
The 1 ms aim holds for a normal host; for the 512-request host the snapshot's own conversion
to JSON dominates, and the recorder runs it in its own thread (ThreadedRecorder), off the TUI's
event loop. Without deltas (zlib or zstd per poll) the big host took ~29 KB/poll (>100 MB/h);
with the stdlib's json instead of orjson the store part was ~10 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from make_big_doc import make_big_doc  # noqa: E402

from stackmon.model import HostSnapshot, Thresholds  # noqa: E402
from stackmon.record.store import Recorder  # noqa: E402
from stackmon.snapshot_json import host_from_dict, host_to_dict  # noqa: E402
from stackmon.sources.uwsgi_stats import parse_stats  # noqa: E402

T0 = 1_800_000_000.0


def small_polls(n: int) -> list[HostSnapshot]:
    doc = json.loads((ROOT / "tests/fixtures/snapshots/demo-hangs.json").read_text())
    base = host_from_dict(doc["hosts"][0])
    out = []
    for i in range(n):
        inst = base.uwsgi[0]
        workers = tuple(replace(w, requests=w.requests + i, rss=w.rss + 4096 * (i % 7))
                        for w in inst.workers)
        out.append(replace(base, taken_at=T0 + i, uwsgi=(replace(inst, workers=workers),)))
    return out


def big_polls(n: int) -> list[HostSnapshot]:
    """64 x 8, half busy; worker w's requests change every 8 polls, staggered by w."""
    docs: dict[int, list[dict[str, object]]] = {}

    def workers_of(seed: int) -> list[dict[str, object]]:
        if seed not in docs:
            raw = make_big_doc(workers=64, cores=8, busy_ratio=0.5, now=int(T0), seed=seed)
            docs[seed] = json.loads(raw)["workers"]
        return docs[seed]

    template = json.loads(make_big_doc(workers=64, cores=8, busy_ratio=0.5, now=int(T0)))
    out = []
    for i in range(n):
        doc = dict(template)
        doc["workers"] = [workers_of(7 + (w + i) // 8)[w] for w in range(64)]
        inst = parse_stats(json.dumps(doc).encode(), "127.0.0.1:9002", T0 + i, Thresholds())
        assert not isinstance(inst, Exception) and hasattr(inst, "workers"), inst
        out.append(HostSnapshot(name="big", taken_at=T0 + i, reachable=True,
                                uwsgi=(inst,)))  # type: ignore[arg-type]
    return out


def measure(name: str, polls: list[HostSnapshot], keyframe: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        rec = Recorder(path, keyframe_every=keyframe)
        serialise = 0.0
        for snap in polls[:3]:
            host_to_dict(snap)
        started = time.process_time()
        for snap in polls:
            rec.write(snap)
        total = time.process_time() - started
        started = time.process_time()
        for snap in polls:
            host_to_dict(snap)
        serialise = time.process_time() - started
        rec.close()
        size = path.stat().st_size
    n = len(polls)
    result = {"bytes_per_poll": size / n, "mb_per_hour": size / n * 3600 / 1e6,
              "cpu_ms_per_poll": total / n * 1000, "serialise_ms": serialise / n * 1000}
    print(f"{name:6} {result['bytes_per_poll'] / 1024:8.2f} KB/poll "
          f"{result['mb_per_hour']:8.1f} MB/h   CPU {result['cpu_ms_per_poll']:6.2f} ms/poll "
          f"(host_to_dict {result['serialise_ms']:.2f} ms, store "
          f"{result['cpu_ms_per_poll'] - result['serialise_ms']:.2f} ms)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--keyframe", type=int, default=60)
    args = parser.parse_args(argv)
    measure("small", small_polls(args.polls), args.keyframe)
    print("(building the big host's polls...)", file=sys.stderr)
    big = measure("big", big_polls(args.polls), args.keyframe)
    return 0 if big["mb_per_hour"] < 50 else 1


if __name__ == "__main__":
    raise SystemExit(main())

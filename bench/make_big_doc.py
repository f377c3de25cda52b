"""A synthetic stats document of a big instance, built from a real recorded one.

    .venv/bin/python bench/make_big_doc.py [OUT.json]   (default: print size, write nothing)

The structure (top-level keys, socket and worker fields, app entries, the shape of idle and busy
cores, the order of request variables) is copied from tests/fixtures/uwsgi/busy.json, recorded
from a real uWSGI 2.0.31; only the counts and values are synthetic: 512 workers x 8 cores, about
10% of cores busy with ~25 variables each, values varied the way a real site varies them (one
session, request id and client address per request, a handful of endpoints, shared headers).

The result is ~1.6 MB, so it is generated on the fly by the benchmark and not committed.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "uwsgi" / "busy.json"

ENDPOINTS = [
    "/api/v1/orders/{id}", "/api/v1/orders/{id}/items", "/api/v1/search?q=shoes&page={n}",
    "/account/settings", "/checkout/confirm?cart={id}", "/reports/monthly.csv?month=2024-{n}",
    "/api/v1/users/{id}/avatar", "/static-proxy/img/{id}.png", "/graphql", "/healthz",
]
EXTRA_HEADERS = [
    ("HTTP_ACCEPT_ENCODING", "gzip, deflate, br"),
    ("HTTP_CONNECTION", "close"),
    ("HTTP_X_REAL_IP", "{ip}"),
    ("HTTP_X_FORWARDED_PROTO", "https"),
    ("HTTP_SEC_FETCH_MODE", "navigate"),
    ("HTTP_SEC_FETCH_SITE", "same-origin"),
    ("CONTENT_TYPE", ""),
    ("CONTENT_LENGTH", ""),
    ("REQUEST_SCHEME", "https"),
]


def _template() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(document, worker, idle core, busy core) taken from the real recording."""
    doc = json.loads(RECORDED.read_bytes().decode("utf-8", "replace"), strict=False)
    cores = [c for w in doc["workers"] for c in w["cores"]]
    idle = next(c for c in cores if not c["in_request"])
    busy = max((c for c in cores if c["in_request"]), key=lambda c: len(c["vars"]))
    return doc, doc["workers"][0], idle, busy


def _vars(template: list[str], rng: random.Random, serial: int) -> list[str]:
    """One request's vars in the recorded order, values varied, padded to ~25 entries."""
    ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    uri = rng.choice(ENDPOINTS).format(id=rng.randrange(100000), n=rng.randrange(1, 13))
    path, _, query = uri.partition("?")
    values = {
        "REQUEST_METHOD": rng.choice(["GET"] * 8 + ["POST", "PUT"]),
        "REQUEST_URI": uri, "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "web-1", "SERVER_PORT": "443", "REMOTE_ADDR": ip,
        "HTTP_HOST": "shop.example",
        "HTTP_COOKIE": f"session=FAKE-{rng.getrandbits(64):016x}; theme=dark",
        "HTTP_AUTHORIZATION": f"Bearer FAKE-{rng.getrandbits(96):024x}",
        "HTTP_X_REQUEST_ID": f"{rng.getrandbits(128):032x}",
        "HTTP_X_FORWARDED_FOR": f"203.0.113.{rng.randrange(1, 255)}, {ip}",
        "HTTP_REFERER": f"https://shop.example{rng.choice(ENDPOINTS).format(id=serial, n=1)}",
    }
    out = []
    for item in template:
        key, sep, value = item.partition("=")
        if not sep:
            continue
        out.append(f"{key}={values.get(key, value)}")
    out += [f"{k}={v.format(ip=ip)}" for k, v in EXTRA_HEADERS]
    out.append("")
    return out


def make_big_doc(workers: int = 512, cores: int = 8, busy_ratio: float = 0.1,
                 now: int = 1_800_000_000, seed: int = 7) -> bytes:
    """The document as uWSGI would print it (tab-indented), deterministic for a seed."""
    rng = random.Random(seed)
    doc, worker_t, idle_t, busy_t = _template()
    out_workers = []
    serial = 0
    for wid in range(1, workers + 1):
        worker = {k: v for k, v in worker_t.items() if k != "cores"}
        worker.update(
            id=wid, pid=100000 + wid, requests=rng.randrange(10**6),
            delta_requests=rng.randrange(10**4), exceptions=rng.randrange(50),
            rss=rng.randrange(80, 400) * 2**20, vsz=rng.randrange(400, 900) * 2**20,
            running_time=rng.randrange(10**12), last_spawn=now - rng.randrange(86400),
            respawn_count=rng.randrange(1, 5), tx=rng.randrange(10**10),
            avg_rt=rng.randrange(2000, 900000), apps=copy.deepcopy(worker_t["apps"]),
        )
        worker_cores = []
        for cid in range(cores):
            if rng.random() < busy_ratio:
                serial += 1
                core = dict(busy_t, id=cid, requests=rng.randrange(10**5),
                            vars=_vars(busy_t["vars"], rng, serial),
                            req_info={"request_start": now - rng.randrange(0, 120)})
            else:
                core = dict(idle_t, id=cid, requests=rng.randrange(10**5), vars=[],
                            req_info={})
            worker_cores.append(core)
        worker["status"] = "busy" if any(c["in_request"] for c in worker_cores) else "idle"
        worker["cores"] = worker_cores
        out_workers.append(worker)
    doc["workers"] = out_workers
    return json.dumps(doc, indent="\t", separators=(",", ":")).encode()


def main(argv: list[str]) -> int:
    data = make_big_doc()
    if len(argv) > 1:
        Path(argv[1]).write_bytes(data)
        print(f"wrote {argv[1]} ({len(data)} bytes)")
    else:
        print(f"{len(data)} bytes (give a path to write it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

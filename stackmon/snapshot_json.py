"""The snapshot JSON contract (DESIGN.md, schema 1), both ways.

`stackmon snapshot --json`, the agent's GET /v1/snapshot and recorded fixtures all go through
here, so the names in the contract live in exactly one place. Fields may be added, never
renamed. Reading is lenient about missing optional fields so that an older agent still works.
"""

from __future__ import annotations

from typing import Any

from stackmon.model import (
    Core,
    FdReport,
    HostSnapshot,
    KernelCounters,
    Listener,
    NginxStatus,
    ProcessFds,
    Request,
    Snapshot,
    Socket,
    SourceError,
    SystemFds,
    UwsgiInstance,
    Worker,
)
from stackmon.redact import clean, redact_pair

SCHEMA = 1


def request_to_dict(r: Request) -> dict[str, Any]:
    return {
        "core": r.core, "method": r.method, "uri": r.uri, "remote_addr": r.remote_addr,
        "host": r.host, "started_at": r.started_at, "running_s": r.running_s, "level": r.level,
        "vars": [[k, v] for k, v in r.vars],
    }


def worker_to_dict(w: Worker) -> dict[str, Any]:
    return {
        "id": w.id, "pid": w.pid, "status": w.status, "accepting": w.accepting,
        "requests": w.requests, "exceptions": w.exceptions, "harakiri_count": w.harakiri_count,
        "respawn_count": w.respawn_count, "avg_rt_ms": w.avg_rt_ms, "rss": w.rss, "vsz": w.vsz,
        "last_spawn": w.last_spawn, "running_time_s": w.running_time_s, "tx": w.tx,
        "cores": [{"id": c.id, "requests": c.requests, "in_request": c.in_request}
                  for c in w.cores],
        "requests_in_flight": [request_to_dict(r) for r in w.requests_in_flight],
    }


def instance_to_dict(u: UwsgiInstance) -> dict[str, Any]:
    return {
        "address": u.address, "index": u.index, "version": u.version,
        "master_pid": u.master_pid,
        "listen_queue": u.listen_queue, "listen_queue_max": u.listen_queue_max,
        "signal_queue": u.signal_queue, "uid": u.uid, "gid": u.gid, "cwd": u.cwd,
        "warnings": list(u.warnings),
        "sockets": [{"name": s.name, "proto": s.proto, "queue": s.queue,
                     "max_queue": s.max_queue, "shared": s.shared, "source": s.source}
                    for s in u.sockets],
        "workers": [worker_to_dict(w) for w in u.workers],
    }


def nginx_to_dict(n: NginxStatus) -> dict[str, Any]:
    return {
        "url": n.url, "active": n.active, "accepts": n.accepts, "handled": n.handled,
        "dropped": n.dropped, "requests": n.requests, "reading": n.reading,
        "writing": n.writing, "waiting": n.waiting, "requests_per_s": n.requests_per_s,
        "sampled_at": n.sampled_at,
    }


def host_to_dict(h: HostSnapshot) -> dict[str, Any]:
    fds = h.fds
    return {
        "name": h.name, "taken_at": h.taken_at, "reachable": h.reachable, "stale_s": h.stale_s,
        "errors": [{"source": e.source, "message": e.message} for e in h.errors],
        "uwsgi": [instance_to_dict(u) for u in h.uwsgi],
        "nginx": nginx_to_dict(h.nginx) if h.nginx else None,
        "listeners": [{"address": li.address, "kind": li.kind, "owner": li.owner,
                       "queue": li.queue, "backlog": li.backlog, "inode": li.inode,
                       "pids": list(li.pids)} for li in h.listeners],
        "fds": {
            "system": ({"open": fds.system.open, "max": fds.system.max,
                        "nr_open": fds.system.nr_open} if fds.system else None),
            "processes": [{"pid": p.pid, "role": p.role, "open": p.open, "limit": p.limit,
                           "hard_limit": p.hard_limit} for p in fds.processes],
        },
        "kernel": {"somaxconn": h.kernel.somaxconn,
                   "listen_overflows": h.kernel.listen_overflows,
                   "listen_drops": h.kernel.listen_drops},
    }


def snapshot_to_dict(s: Snapshot) -> dict[str, Any]:
    return {"schema": SCHEMA, "taken_at": s.taken_at, "hosts": [host_to_dict(h) for h in s.hosts]}


# --- reading back (agent client, recorded fixtures) -------------------------------------------
#
# A document read back comes from another process, usually an agent on another host, so its text
# is treated like any text from outside: every string field passes through redact.clean once
# (control characters made visible, anything that looks like a secret redacted), request
# variables through redact.redact_pair, the parser's fast path for exactly that. An agent of this
# version has done so already and cleaning is idempotent, so a well-behaved document loads
# unchanged; an older, foreign or hostile one cannot put terminal escapes on this screen.


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _text(d: dict[str, Any], key: str) -> str:
    """d[key] as text fit to show, "" when absent."""
    value = d.get(key, "")
    return clean(value if type(value) is str else str(value))


# Shown request variables memoised by hash((key, value)), never by the text (an older or
# foreign agent may send a cookie in clear): the same headers repeat across requests and the
# same stuck requests across polls, and a client of a fleet of agents reads thousands of them
# every second. A 64-bit collision would show one variable in place of another, both cleaned.
# Cleared wholesale past the cap, as the uWSGI parser's memo is.
_PAIR_MEMO: dict[int, tuple[str, str]] = {}
_PAIR_MEMO_CAP = 32768


def _vars(raw: Any) -> tuple[tuple[str, str], ...]:
    memo = _PAIR_MEMO
    out: list[tuple[str, str]] = []
    for key, value in raw:
        if type(key) is not str:
            key = str(key)
        if type(value) is not str:
            value = str(value)
        h = hash((key, value))
        pair = memo.get(h)
        if pair is None:
            if len(memo) >= _PAIR_MEMO_CAP:
                memo.clear()
            pair = memo[h] = redact_pair(key, value)
        out.append(pair)
    return tuple(out)


def _request(d: dict[str, Any]) -> Request:
    return Request(
        core=int(d.get("core", 0)), method=_text(d, "method"), uri=_text(d, "uri"),
        remote_addr=_text(d, "remote_addr"), host=_text(d, "host"),
        started_at=_opt_float(d.get("started_at")), running_s=_opt_float(d.get("running_s")),
        level=d.get("level", "ok") if d.get("level") in ("ok", "slow", "critical") else "ok",
        vars=_vars(d.get("vars", ())),
    )


def _worker(d: dict[str, Any]) -> Worker:
    in_flight = {r.core: r for r in map(_request, d.get("requests_in_flight", []))}
    cores = tuple(
        Core(id=int(c.get("id", 0)), requests=int(c.get("requests", 0)),
             in_request=bool(c.get("in_request")), request=in_flight.pop(int(c.get("id", 0)), None))
        for c in d.get("cores", [])
    ) + tuple(Core(id=r.core, requests=0, in_request=True, request=r)
              for r in in_flight.values())
    return Worker(
        id=int(d["id"]), pid=int(d.get("pid", 0)), status=_text(d, "status"),
        accepting=bool(d.get("accepting", True)), requests=int(d.get("requests", 0)),
        exceptions=int(d.get("exceptions", 0)), harakiri_count=int(d.get("harakiri_count", 0)),
        respawn_count=int(d.get("respawn_count", 0)), avg_rt_ms=float(d.get("avg_rt_ms", 0)),
        rss=int(d.get("rss", 0)), vsz=int(d.get("vsz", 0)),
        last_spawn=float(d.get("last_spawn", 0)),
        running_time_s=float(d.get("running_time_s", 0)), tx=int(d.get("tx", 0)), cores=cores,
    )


def _instance(d: dict[str, Any]) -> UwsgiInstance:
    return UwsgiInstance(
        address=_text(d, "address"), version=_text(d, "version"),
        master_pid=int(d.get("master_pid", 0)), listen_queue=int(d.get("listen_queue", 0)),
        listen_queue_max=int(d.get("listen_queue_max", 0)),
        signal_queue=int(d.get("signal_queue", 0)), uid=_opt_int(d.get("uid")),
        gid=_opt_int(d.get("gid")), cwd=_text(d, "cwd"),
        warnings=tuple(clean(str(w)) for w in d.get("warnings", [])),
        index=int(d.get("index", 0)),
        sockets=tuple(Socket(name=_text(s, "name"), proto=_text(s, "proto"),
                             queue=int(s.get("queue", 0)), max_queue=int(s.get("max_queue", 0)),
                             shared=bool(s.get("shared", False)),
                             source="kernel" if s.get("source") == "kernel" else "stats")
                      for s in d.get("sockets", [])),
        workers=tuple(_worker(w) for w in d.get("workers", [])),
    )


def host_from_dict(d: dict[str, Any]) -> HostSnapshot:
    n = d.get("nginx")
    fds = d.get("fds") or {}
    system = fds.get("system")
    kernel = d.get("kernel") or {}
    return HostSnapshot(
        name=clean(str(d["name"])), taken_at=float(d.get("taken_at", 0)),
        reachable=bool(d.get("reachable", False)), stale_s=_opt_float(d.get("stale_s")),
        errors=tuple(SourceError(_text(e, "source"), _text(e, "message"))
                     for e in d.get("errors", [])),
        uwsgi=tuple(_instance(u) for u in d.get("uwsgi", [])),
        nginx=None if not n else NginxStatus(
            url=_text(n, "url"), active=int(n["active"]), accepts=int(n["accepts"]),
            handled=int(n["handled"]), requests=int(n["requests"]), reading=int(n["reading"]),
            writing=int(n["writing"]), waiting=int(n["waiting"]),
            sampled_at=float(n.get("sampled_at", d.get("taken_at", 0))),
            requests_per_s=_opt_float(n.get("requests_per_s"))),
        listeners=tuple(Listener(address=_text(li, "address"),
                                 kind="unix" if li.get("kind") == "unix" else "tcp",
                                 owner=_text(li, "owner"), queue=int(li.get("queue", 0)),
                                 backlog=int(li.get("backlog", 0)), inode=int(li.get("inode", 0)),
                                 pids=tuple(int(p) for p in li.get("pids", [])))
                        for li in d.get("listeners", [])),
        fds=FdReport(
            system=SystemFds(open=int(system["open"]), max=int(system["max"]),
                             nr_open=int(system.get("nr_open", 0))) if system else None,
            processes=tuple(ProcessFds(pid=int(p["pid"]), role=_text(p, "role"),
                                       open=int(p.get("open", 0)), limit=int(p.get("limit", 0)),
                                       hard_limit=int(p.get("hard_limit", 0)))
                            for p in fds.get("processes", [])),
        ),
        kernel=KernelCounters(somaxconn=_opt_int(kernel.get("somaxconn")),
                              listen_overflows=_opt_int(kernel.get("listen_overflows")),
                              listen_drops=_opt_int(kernel.get("listen_drops"))),
    )


def snapshot_from_dict(d: dict[str, Any]) -> Snapshot:
    if d.get("schema") != SCHEMA:
        raise ValueError(f"unsupported snapshot schema {d.get('schema')!r} (expected {SCHEMA})")
    return Snapshot(taken_at=float(d.get("taken_at", 0)),
                    hosts=tuple(host_from_dict(h) for h in d.get("hosts", [])))

"""The snapshot JSON contract (docs/contracts.md, schema 1), both ways.

`stackmon snapshot --json`, the agent's GET /v1/snapshot and recorded fixtures all go through
here, so the names in the contract live in exactly one place. Fields may be added, never
renamed. Reading is lenient about missing optional fields so that an older agent still works.

Writing: text parsed from a stats document is already visible (redact.visible); text from
configuration or the kernel (host names, addresses, URLs, socket paths) and error messages pass
through visible() here, so that a host named "\x1b]52;..." reads literally in `snapshot --json`
piped to a terminal, and no string can hold a lone surrogate that would make the dump raise.
"""

from __future__ import annotations

import math
from typing import Any

from stackmon.health import assess
from stackmon.logs.access import EndpointStat, HttpSummary, Percentiles
from stackmon.logs.host import LogSummary, SourceStatus
from stackmon.logs.nginx_errors import UpstreamError
from stackmon.logs.uwsgi_events import Event
from stackmon.model import (
    DEADLINE_NAMES,
    Core,
    Deadline,
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
    Vassal,
    Worker,
)
from stackmon.redact import clean, redact_pair, visible
from stackmon.sources.lb_probe import HealthCheck, ProbeEpisode

# The bounds the uWSGI parser applies (stackmon.sources.uwsgi_stats), for documents read back.
PID_MAX = 4_194_304
COUNT_LIMIT = 2**63

SCHEMA = 1


def request_to_dict(r: Request) -> dict[str, Any]:
    return {
        "core": r.core, "method": r.method, "uri": r.uri, "remote_addr": r.remote_addr,
        "host": r.host, "started_at": r.started_at, "running_s": r.running_s, "level": r.level,
        "vars": [[k, v] for k, v in r.vars],
        "deadlines": [deadline_to_dict(d) for d in r.deadlines],
    }


def deadline_to_dict(d: Deadline) -> dict[str, Any]:
    """The contract's {"name", "after_s"} (docs/contracts.md), plus the limit and where it
    was set."""
    return {"name": d.name, "after_s": round(d.after_s, 3), "limit_s": d.limit_s,
            "source": visible(d.source)}


def worker_to_dict(w: Worker) -> dict[str, Any]:
    return {
        "id": w.id, "pid": w.pid, "status": w.status, "accepting": w.accepting,
        "requests": w.requests, "exceptions": w.exceptions, "harakiri_count": w.harakiri_count,
        "respawn_count": w.respawn_count, "avg_rt_ms": w.avg_rt_ms, "rss": w.rss, "vsz": w.vsz,
        "last_spawn": w.last_spawn, "running_time_s": w.running_time_s, "tx": w.tx,
        "cheap": w.cheap,
        "cores": [{"id": c.id, "requests": c.requests, "in_request": c.in_request}
                  for c in w.cores],
        "requests_in_flight": [request_to_dict(r) for r in w.requests_in_flight],
    }


def instance_to_dict(u: UwsgiInstance) -> dict[str, Any]:
    return {
        "address": visible(u.address), "index": u.index, "version": u.version,
        "master_pid": u.master_pid,
        "listen_queue": u.listen_queue, "listen_queue_max": u.listen_queue_max,
        "signal_queue": u.signal_queue, "uid": u.uid, "gid": u.gid, "cwd": u.cwd,
        "warnings": list(u.warnings),
        "sockets": [{"name": s.name, "proto": s.proto, "queue": s.queue,
                     "max_queue": s.max_queue, "shared": s.shared, "source": s.source}
                    for s in u.sockets],
        "workers": [worker_to_dict(w) for w in u.workers],
        "stale_s": u.stale_s,
        "kind": u.kind,
        **({"vassals": [vassal_to_dict(v) for v in u.vassals]} if u.kind == "emperor" else {}),
    }


def vassal_to_dict(v: Vassal) -> dict[str, Any]:
    return {"name": v.name, "pid": v.pid, "ready": v.ready, "accepting": v.accepting,
            "respawns": v.respawns, "born": v.born, "last_run": v.last_run, "uid": v.uid,
            "gid": v.gid, "monitor": visible(v.monitor), "config": visible(v.config),
            "stats": visible(v.stats) or None, "stats_note": visible(v.stats_note)}


def nginx_to_dict(n: NginxStatus) -> dict[str, Any]:
    return {
        "url": visible(n.url), "active": n.active, "accepts": n.accepts, "handled": n.handled,
        "dropped": n.dropped, "requests": n.requests, "reading": n.reading,
        "writing": n.writing, "waiting": n.waiting, "requests_per_s": n.requests_per_s,
        "sampled_at": n.sampled_at,
    }


def health_to_dict(c: HealthCheck) -> dict[str, Any]:
    return {"url": visible(c.url), "ok": c.ok, "last_ms": c.last_ms, "max_ms": c.max_ms,
            "failures_in_row": c.failures_in_row, "out_of_service": c.out_of_service,
            "last_error": visible(c.last_error), "checked_at": c.checked_at,
            "in_flight_s": c.in_flight_s, "timeout_s": c.timeout_s,
            "failing_since": c.failing_since, "out_in_s": c.out_in_s,
            # the latest failing streak: an agent host's panel and health model need it too
            "episode": _episode_to_dict(c.episode) if c.episode is not None else None}


def _episode_to_dict(e: ProbeEpisode) -> dict[str, Any]:
    return {"start": e.start, "end": e.end, "failures": e.failures,
            "last_error": visible(e.last_error), "interval": e.interval,
            "threshold": e.threshold, "out_at": e.out_at}


def clients_to_dict(h: HostSnapshot) -> dict[str, Any]:
    """The contract's `http`, `upstream_errors`, `events` (from the logs), `log_sources` and
    `health` (the LB probe); every key present, null or empty when there is no source."""
    out: dict[str, Any] = {"http": None, "upstream_errors": [], "events": [],
                           "log_sources": []}
    if h.logs is not None:
        out.update(h.logs.as_json())
    out["health"] = health_to_dict(h.health) if h.health is not None else None
    return out


def host_to_dict(h: HostSnapshot) -> dict[str, Any]:
    fds = h.fds
    state = assess(h)
    return {
        "name": visible(h.name), "group": visible(h.group) if h.group else None,
        "taken_at": h.taken_at, "reachable": h.reachable,
        "stale_s": h.stale_s,
        "state": {"severity": state.severity, "label": visible(state.label),
                  "reasons": [visible(r.text) for r in state.reasons]},
        "errors": [{"source": visible(e.source), "message": visible(e.message)}
                   for e in h.errors],
        "uwsgi": [instance_to_dict(u) for u in h.uwsgi],
        "nginx": nginx_to_dict(h.nginx) if h.nginx else None,
        "listeners": [{"address": visible(li.address), "kind": li.kind, "owner": li.owner,
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
        **clients_to_dict(h),
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


def _int(value: Any, high: int = COUNT_LIMIT) -> int:
    """A number of the document: within [0, high) or 0 (unknown), like the uWSGI parser's
    bounds; not a number at all is a ValueError (the document is refused)."""
    if type(value) is float and not math.isfinite(value):
        raise ValueError("a number is not finite")
    n = int(value)
    return n if 0 <= n < high else 0


def _pid(value: Any) -> int:
    return _int(value, PID_MAX + 1)


def _float(value: Any) -> float:
    """A time or a rate: finite, or 0 (unknown)."""
    f = float(value)
    return f if math.isfinite(f) else 0.0


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _opt_id(value: Any) -> int | None:
    """uid/gid: None when absent or out of range (never 0, which would claim root)."""
    n = None if value is None else _int(value, 2**32)
    return n if n or value == 0 else None


def _text(d: dict[str, Any], key: str) -> str:
    """d[key] as text fit to show, "" when absent or null. Memoised like _vars below (by
    hash, never by the text): statuses, methods, URIs and addresses repeat poll after poll,
    and cleaning each again was a tenth of a fleet client's CPU (bench/bench_fleet.py)."""
    value = d.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        value = str(value)
    h = hash(value)
    shown = _TEXT_MEMO.get(h)
    if shown is None:
        if len(_TEXT_MEMO) >= _PAIR_MEMO_CAP:
            _TEXT_MEMO.clear()
        shown = _TEXT_MEMO[h] = clean(value)
    return shown


_TEXT_MEMO: dict[int, str] = {}


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
        core=_int(d.get("core", 0)), method=_text(d, "method"), uri=_text(d, "uri"),
        remote_addr=_text(d, "remote_addr"), host=_text(d, "host"),
        started_at=_opt_float(d.get("started_at")), running_s=_opt_float(d.get("running_s")),
        level=d.get("level", "ok") if d.get("level") in ("ok", "slow", "critical") else "ok",
        vars=_vars(d.get("vars", ())),
        deadlines=_deadlines(d.get("deadlines")),
    )


_MAX_DEADLINES = 8  # three kinds today; a hostile document gets no more than this


def _deadlines(raw: Any) -> tuple[Deadline, ...]:
    """A request's deadlines read back; entries with an unknown name or a non-finite time are
    skipped (a newer agent may add kinds this version cannot describe)."""
    if not isinstance(raw, list):
        return ()
    out = []
    for d in raw[:_MAX_DEADLINES]:
        if not isinstance(d, dict):
            continue
        name = next((n for n in DEADLINE_NAMES if n == d.get("name")), None)
        try:
            after, limit = _opt_float(d.get("after_s")), _opt_float(d.get("limit_s", 0))
        except (TypeError, ValueError):
            continue
        if name is None or after is None:
            continue
        out.append(Deadline(name=name, after_s=after, limit_s=limit or 0.0,
                            source=_text(d, "source") or "default"))
    return tuple(sorted(out, key=lambda x: x.after_s))


def _worker(d: dict[str, Any]) -> Worker:
    in_flight = {r.core: r for r in map(_request, d.get("requests_in_flight", []))}
    cores = tuple(
        Core(id=_int(c.get("id", 0)), requests=_int(c.get("requests", 0)),
             in_request=bool(c.get("in_request")),
             request=in_flight.pop(_int(c.get("id", 0)), None))
        for c in d.get("cores", [])
    ) + tuple(Core(id=r.core, requests=0, in_request=True, request=r)
              for r in in_flight.values())
    return Worker(
        id=_int(d["id"]), pid=_pid(d.get("pid", 0)), status=_text(d, "status"),
        accepting=bool(d.get("accepting", True)), requests=_int(d.get("requests", 0)),
        exceptions=_int(d.get("exceptions", 0)), harakiri_count=_int(d.get("harakiri_count", 0)),
        respawn_count=_int(d.get("respawn_count", 0)), avg_rt_ms=_float(d.get("avg_rt_ms", 0)),
        rss=_int(d.get("rss", 0)), vsz=_int(d.get("vsz", 0)),
        last_spawn=_float(d.get("last_spawn", 0)),
        running_time_s=_float(d.get("running_time_s", 0)), tx=_int(d.get("tx", 0)), cores=cores,
    )


def _instance(d: dict[str, Any]) -> UwsgiInstance:
    return UwsgiInstance(
        address=_text(d, "address"), version=_text(d, "version"),
        master_pid=_pid(d.get("master_pid", 0)), listen_queue=_int(d.get("listen_queue", 0)),
        listen_queue_max=_int(d.get("listen_queue_max", 0)),
        signal_queue=_int(d.get("signal_queue", 0)), uid=_opt_id(d.get("uid")),
        gid=_opt_id(d.get("gid")), cwd=_text(d, "cwd"),
        warnings=tuple(clean(str(w)) for w in d.get("warnings", [])),
        index=_int(d.get("index", 0)),
        sockets=tuple(Socket(name=_text(s, "name"), proto=_text(s, "proto"),
                             queue=_int(s.get("queue", 0)), max_queue=_int(s.get("max_queue", 0)),
                             shared=bool(s.get("shared", False)),
                             source="kernel" if s.get("source") == "kernel" else "stats")
                      for s in d.get("sockets", [])),
        workers=tuple(_worker(w) for w in d.get("workers", [])),
        stale_s=_opt_float(d.get("stale_s")),
        kind="emperor" if d.get("kind") == "emperor" else "instance",
        vassals=tuple(_vassal(v) for v in d.get("vassals", []) or []),
    )


def _vassal(d: dict[str, Any]) -> Vassal:
    return Vassal(
        name=_text(d, "name"), pid=_pid(d.get("pid", 0)), ready=bool(d.get("ready", False)),
        accepting=bool(d.get("accepting", False)), respawns=_int(d.get("respawns", 0)),
        born=_float(d.get("born", 0)), last_run=_float(d.get("last_run", 0)),
        uid=_opt_id(d.get("uid")), gid=_opt_id(d.get("gid")), monitor=_text(d, "monitor"),
        config=_text(d, "config"), stats=_text(d, "stats") if d.get("stats") else "",
        stats_note=_text(d, "stats_note"))


def host_from_dict(d: dict[str, Any]) -> HostSnapshot:
    n = d.get("nginx")
    fds = d.get("fds") or {}
    system = fds.get("system")
    kernel = d.get("kernel") or {}
    return HostSnapshot(
        name=clean(str(d["name"])), taken_at=_float(d.get("taken_at", 0)),
        reachable=bool(d.get("reachable", False)), stale_s=_opt_float(d.get("stale_s")),
        errors=tuple(SourceError(_text(e, "source"), _text(e, "message"))
                     for e in d.get("errors", [])),
        uwsgi=tuple(_instance(u) for u in d.get("uwsgi", [])),
        nginx=None if not n else NginxStatus(
            url=_text(n, "url"), active=_int(n["active"]), accepts=_int(n["accepts"]),
            handled=_int(n["handled"]), requests=_int(n["requests"]), reading=_int(n["reading"]),
            writing=_int(n["writing"]), waiting=_int(n["waiting"]),
            sampled_at=_float(n.get("sampled_at", d.get("taken_at", 0))),
            requests_per_s=_opt_float(n.get("requests_per_s"))),
        listeners=tuple(Listener(address=_text(li, "address"),
                                 kind="unix" if li.get("kind") == "unix" else "tcp",
                                 owner=_text(li, "owner"), queue=_int(li.get("queue", 0)),
                                 backlog=_int(li.get("backlog", 0)), inode=_int(li.get("inode", 0)),
                                 pids=tuple(_pid(p) for p in li.get("pids", [])))
                        for li in d.get("listeners", [])),
        fds=FdReport(
            system=SystemFds(open=_int(system["open"]), max=_int(system["max"]),
                             nr_open=_int(system.get("nr_open", 0))) if system else None,
            processes=tuple(ProcessFds(pid=_pid(p["pid"]), role=_text(p, "role"),
                                       open=_int(p.get("open", 0)), limit=_int(p.get("limit", 0)),
                                       hard_limit=_int(p.get("hard_limit", 0)))
                            for p in fds.get("processes", [])),
        ),
        kernel=KernelCounters(somaxconn=_opt_int(kernel.get("somaxconn")),
                              listen_overflows=_opt_int(kernel.get("listen_overflows")),
                              listen_drops=_opt_int(kernel.get("listen_drops"))),
        group=_text(d, "group") or None if d.get("group") is not None else None,
        logs=_logs(d, _float(d.get("taken_at", 0))), health=_health(d.get("health")),
    )


def _percentiles(d: Any) -> Percentiles | None:
    if not isinstance(d, dict):
        return None
    return Percentiles(p50=_float(d.get("p50", 0)), p95=_float(d.get("p95", 0)),
                       p99=_float(d.get("p99", 0)))


def _endpoint(d: dict[str, Any]) -> EndpointStat:
    requests = _int(d.get("requests", 0))
    return EndpointStat(endpoint=_text(d, "endpoint"), requests=requests,
                        errors_5xx=_int(d.get("5xx", 0)),
                        total_ms=_float(d.get("mean_ms", 0)) * requests,
                        max_ms=_float(d.get("max_ms", 0)))


def _http(d: Any) -> HttpSummary | None:
    if not isinstance(d, dict):
        return None
    status = d.get("status") or {}
    return HttpSummary(
        window_s=_float(d.get("window_s", 60)), source=_text(d, "source"),
        requests=_int(d.get("requests", 0)), per_s=_float(d.get("per_s", 0)),
        covered_s=_float(d.get("covered_s", d.get("window_s", 60))),
        status={clean(str(k)): _int(v) for k, v in status.items()},
        upstream_ms=_percentiles(d.get("upstream_ms")),
        timing=_text(d, "timing") or None,
        top_5xx=tuple(_endpoint(e) for e in d.get("top_5xx", [])),
        top_slow=tuple(_endpoint(e) for e in d.get("top_slow", [])),
        unparsed=_int(d.get("unparsed", 0)), log_format=_text(d, "log_format"),
        missing=tuple(clean(str(m)) for m in d.get("missing", [])),
        advice=_text(d, "advice") or None)


def _logs(d: dict[str, Any], taken_at: float) -> LogSummary | None:
    """The log-derived keys of a host object, or None when the agent has no log source."""
    if d.get("http") is None and not d.get("upstream_errors") and not d.get("events") \
            and not d.get("log_sources"):
        return None
    http = _http(d.get("http"))
    return LogSummary(
        taken_at=taken_at, window_s=http.window_s if http else 60.0, http=http,
        upstream_errors=tuple(
            UpstreamError(cause=_text(e, "cause"), upstream=_text(e, "upstream"),
                          count=_int(e.get("count", 0)), first_at=_float(e.get("first_at", 0)),
                          last_at=_float(e.get("last_at", 0)), sample=_text(e, "sample"))
            for e in d.get("upstream_errors", [])),
        events=tuple(
            Event(at=_float(e.get("at", 0)), source=_text(e, "source"), kind=_text(e, "kind"),
                  worker=_opt_int(e.get("worker")), pid=None if e.get("pid") is None
                  else _pid(e["pid"]), uri=_text(e, "uri") or None, text=_text(e, "text"))
            for e in d.get("events", [])),
        sources=tuple(
            SourceStatus(kind=_text(s, "kind"), path=_text(s, "path") or None,
                         label=_text(s, "label") or None, error=_text(s, "error") or None,
                         lines=_int(s.get("lines", 0)),
                         skipped_bytes=_int(s.get("skipped_bytes", 0)),
                         cut_lines=_int(s.get("cut_lines", 0)),
                         notes=tuple(clean(str(n)) for n in s.get("notes", [])))
            for s in d.get("log_sources", [])),
        status_totals=tuple((clean(str(k)), _int(v))
                            for k, v in (d.get("status_totals") or {}).items()),
        upstream_totals=tuple((_text(e, "cause"), _text(e, "upstream"), _int(e.get("count", 0)))
                              for e in d.get("upstream_totals", [])))


def _health(d: Any) -> HealthCheck | None:
    if not isinstance(d, dict):
        return None
    ok = d.get("ok")
    return HealthCheck(
        url=_text(d, "url"), ok=ok if isinstance(ok, bool) else None,
        last_ms=_opt_float(d.get("last_ms")), max_ms=_opt_float(d.get("max_ms")),
        failures_in_row=_int(d.get("failures_in_row", 0)),
        out_of_service=bool(d.get("out_of_service", False)), last_error=_text(d, "last_error"),
        checked_at=_opt_float(d.get("checked_at")), in_flight_s=_opt_float(d.get("in_flight_s")),
        timeout_s=_float(d.get("timeout_s", 5.0)), failing_since=_opt_float(d.get("failing_since")),
        out_in_s=_opt_float(d.get("out_in_s")), episode=_episode(d.get("episode")))


def _episode(d: Any) -> ProbeEpisode | None:
    """A failing streak from a document (an older agent sends none: None)."""
    if not isinstance(d, dict) or _opt_float(d.get("start")) is None:
        return None
    return ProbeEpisode(start=_float(d.get("start", 0.0)), end=_opt_float(d.get("end")),
                        failures=_int(d.get("failures", 0)), last_error=_text(d, "last_error"),
                        interval=max(1.0, _float(d.get("interval", 30.0))),
                        threshold=max(1, _int(d.get("threshold", 2))),
                        out_at=_opt_float(d.get("out_at")))


def snapshot_from_dict(d: dict[str, Any]) -> Snapshot:
    if d.get("schema") != SCHEMA:
        raise ValueError(f"unsupported snapshot schema {d.get('schema')!r} (expected {SCHEMA})")
    return Snapshot(taken_at=_float(d.get("taken_at", 0)),
                    hosts=tuple(host_from_dict(h) for h in d.get("hosts", [])))

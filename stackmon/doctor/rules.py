"""The doctor's rules: small pure functions from Facts to Findings.

Each rule is registered with its id and yields zero or more findings; none does I/O, so a test
builds a Facts (real files parsed, or objects by hand) and calls one rule. The facts behind each
rule, and the wording of its "why", come from docs/reference.md §2-4 and §7: the kernel caps
every backlog at somaxconn; uWSGI refuses to start above it; the LB's idle timeout must be
shorter than nginx's keep-alive and longer than uwsgi_read_timeout, which must be longer than
harakiri; a graceful reload holds the listen queue for worker-reload-mercy; and so on.

Where a directive is unset, its documented default is used and the evidence says so ("not set:
nginx default"), because the default is what the running server does.

Live rules grade with the health model's thresholds (stackmon.health.DEFAULT_POLICY: queues
70/90 %, fds 80/95 %, 5xx rates, the LB's health check), so the doctor never calls a figure
critical that the TUI shows as fine, or the reverse. The `logs.*` rules read what the clients got
from the polls' log summaries (nginx's error and access logs, uWSGI's log): the cause of each
upstream failure, its count in the window and a redacted sample line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from stackmon.doctor.facts import (
    SEVERITIES,
    Evidence,
    Facts,
    Finding,
    HostFacts,
    NginxFacts,
    Severity,
    UwsgiFacts,
)
from stackmon.doctor.nginx_conf import (
    DEFAULT_BACKLOG,
    DEFAULTS,
    Block,
    Directive,
    Listen,
    NginxConf,
    effective,
    parse_listen,
    parse_number,
    parse_time,
)
from stackmon.health import DEFAULT_POLICY, fd_severity, queue_severity
from stackmon.health import reasons as health_reasons
from stackmon.logs.host import LogSummary
from stackmon.logs.nginx_errors import UpstreamError
from stackmon.model import Listener
from stackmon.redact import clean
from stackmon.uwsgi_ini import CMDLINE, ENVIRON, Option, all_values, last, parse_int

RuleFn = Callable[[Facts], Iterable[Finding]]

UWSGI_DEFAULT_LISTEN = 100
UWSGI_DEFAULT_MERCY = 60
SOMAXCONN = "/proc/sys/net/core/somaxconn"
NETSTAT = "/proc/net/netstat"
FILE_NR = "/proc/sys/fs/file-nr"
NR_OPEN = "/proc/sys/fs/nr_open"
# Queue and fd thresholds are the health model's (stackmon.health.DEFAULT_POLICY), so the
# doctor, the TUI's gauges and badges, `snapshot` and /metrics grade the same figure alike.
POLICY = DEFAULT_POLICY


@dataclass(frozen=True)
class Rule:
    id: str
    fn: RuleFn
    summary: str


RULES: list[Rule] = []


def rule(rule_id: str, summary: str) -> Callable[[RuleFn], RuleFn]:
    """Register a rule; the id is stable (scripts filter on it), the summary is for --help
    style listings."""

    def register(fn: RuleFn) -> RuleFn:
        RULES.append(Rule(rule_id, fn, summary))
        return fn

    return register


def run_rules(facts: Facts, rules: Sequence[Rule] | None = None) -> list[Finding]:
    """Every finding of every rule, most severe first, then by rule order."""
    out: list[Finding] = []
    for r in rules if rules is not None else RULES:
        out.extend(r.fn(facts))
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    order = {r.id: i for i, r in enumerate(RULES)}
    return sorted(out, key=lambda f: (rank[f.severity], order.get(f.id, 99)))


# ------------------------------------------------------------------ evidence helpers


def _dedupe(evidence: Iterable[Evidence]) -> tuple[Evidence, ...]:
    seen: set[tuple[str, int, str]] = set()
    out = []
    for e in evidence:
        key = (e.file, e.line, repr(sorted(e.values.items())))
        if key not in seen:
            seen.add(key)
            out.append(e)
    return tuple(out)


def _finding(rule_id: str, severity: Severity, title: str, evidence: Iterable[Evidence],
             why: str, fix: str, host: HostFacts | None = None) -> Finding:
    return Finding(rule_id, severity, title, _dedupe(evidence), why, fix,
                   host.name if host is not None else None)


def config_file(u: UwsgiFacts) -> str:
    """Where an unset uWSGI option would go: the instance's first ini file, else its name."""
    for opt in u.options:
        if opt.file not in (CMDLINE, ENVIRON, "<default>"):
            return opt.file
    return u.name


def ev_option(opt: Option, **more: Any) -> Evidence:
    return Evidence(opt.file, opt.line, {opt.key: opt.value, **more})


def uwsgi_int(u: UwsgiFacts, key: str, default: int | None) -> tuple[int | None, Evidence]:
    """A uWSGI integer option as uWSGI reads it (atoi), with its evidence; unset -> default."""
    opt = last(u.options, key)
    if opt is None:
        shown: Any = default if default is not None else "unset"
        note = "not set: uWSGI default" if default is not None else "not set"
        return default, Evidence(config_file(u), 0, {key: shown, "note": note})
    return parse_int(opt.value)[0], ev_option(opt)


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:g}s"


def nginx_time(path: Sequence[Block], name: str,
               conf: NginxConf) -> tuple[float | None, Evidence]:
    """The effective nginx time directive in the innermost block of `path`, with evidence; the
    default (and where it applies) when no enclosing block sets it."""
    d = effective(path, name)
    if d is None:
        default = DEFAULTS[name]
        where = next((b for b in path if b.kind == "http"), path[-1])
        file = where.file if where.line else conf.path
        return parse_time(default), Evidence(file, where.line,
                                             {name: default, "note": "not set: nginx default"})
    return parse_time(d.args[0] if d.args else ""), Evidence(d.file, d.line, {name: d.value})


def _scopes(conf: NginxConf, name: str) -> list[Sequence[Block]]:
    """Where an http-level directive decides behaviour: every server, plus every deeper block
    that sets it explicitly."""
    paths: list[Sequence[Block]] = list(conf.servers())
    for _d, path in conf.directives(name):
        if path[-1].kind not in ("http", "server", "main") and any(b.kind == "http" for b in path):
            paths.append(path)
    return paths


def uwsgi_pass_locations(conf: NginxConf) -> list[tuple[Directive, Sequence[Block]]]:
    return [(d, p) for d, p in conf.directives("uwsgi_pass") if d.args]


def _pass_targets(conf: NginxConf, d: Directive) -> list[str]:
    """The addresses a uwsgi_pass sends to: itself, or its upstream block's servers."""
    target = d.args[0]
    if target.startswith("uwsgi://"):
        target = target[8:]
    ups = conf.upstreams().get(target)
    if ups is not None:
        return [s.args[0] for s in ups.all("server") if s.args]
    return [target]


def _norm_host(host: str) -> str:
    host = host.strip("[]")
    return "127.0.0.1" if host in ("localhost", "::1") else host


def address_matches(nginx_target: str, uwsgi_socket: str) -> bool:
    """Does nginx's `uwsgi_pass` target reach this uWSGI socket option value?"""
    if nginx_target.startswith("unix:"):
        path = nginx_target[5:]
        return (not uwsgi_socket.startswith("@") and ":" not in uwsgi_socket
                and os.path.normpath(path) == os.path.normpath(uwsgi_socket))
    if ":" not in uwsgi_socket or uwsgi_socket.startswith("/"):
        return False
    nhost, _, nport = nginx_target.rpartition(":")
    uhost, _, uport = uwsgi_socket.rpartition(":")
    if nport != uport:
        return False
    uhost = _norm_host(uhost)
    return uhost in ("", "0.0.0.0", "*", "::") or uhost == _norm_host(nhost)


UWSGI_SOCKET_KEYS = ("socket", "uwsgi-socket", "suwsgi-socket", "shared-socket")


def uwsgi_sockets(u: UwsgiFacts) -> list[str]:
    names = [o.value for k in UWSGI_SOCKET_KEYS for o in all_values(u.options, k)]
    if u.live is not None:
        names += [s.name for s in u.live.sockets]
    return names


def locations_for(host: HostFacts, u: UwsgiFacts) -> list[tuple[NginxFacts, Directive,
                                                                 Sequence[Block]]]:
    """The nginx locations that pass to this uWSGI. When no location of the host can be tied to
    any of its uWSGI configs (files given without matching addresses), all of them: the doctor
    then assumes the one nginx serves the one uWSGI, and says so in the evidence."""
    all_locs = [(n, d, p) for n in host.nginx for d, p in uwsgi_pass_locations(n.conf)]
    socks = uwsgi_sockets(u)

    def reaches(n: NginxFacts, d: Directive, sockets: list[str]) -> bool:
        return any(address_matches(t, s) for t in _pass_targets(n.conf, d) for s in sockets)

    mine = [(n, d, p) for n, d, p in all_locs if reaches(n, d, socks)]
    if mine:
        return mine
    anyone = any(reaches(n, d, uwsgi_sockets(other)) for other in host.uwsgi
                 for n, d, p in all_locs)
    return [] if anyone else all_locs


def _nginx_proxies(conf: NginxConf) -> bool:
    return any(True for name in ("uwsgi_pass", "proxy_pass", "fastcgi_pass", "grpc_pass")
               for _ in conf.directives(name))


def _listens(conf: NginxConf) -> list[Listen]:
    out = []
    for d, path in conf.directives("listen"):
        if path[-1].kind == "server":
            parsed = parse_listen(d)
            if parsed is not None:
                out.append(parsed)
    return out


def _worker_count(host: HostFacts, worker_processes: str) -> int:
    """worker_processes as a number: "auto" is the live worker count when polled, else the
    CPU count (what nginx would start here)."""
    if worker_processes != "auto":
        return parse_number(worker_processes) or 1
    if host.live is not None:
        n = sum(1 for p in host.live.latest.fds.processes if p.role == "nginx-worker")
        if n:
            return n
    return os.cpu_count() or 1


def _worker_fd_limit(host: HostFacts) -> tuple[int | None, Evidence | None]:
    """The soft fd limit of the monitored nginx's workers, from the live poll."""
    if host.live is None:
        return None, None
    procs = [p for p in host.live.latest.fds.processes if p.role == "nginx-worker" and p.limit]
    if not procs:
        return None, None
    worst = min(procs, key=lambda p: p.limit)
    return worst.limit, Evidence(f"/proc/{worst.pid}/limits", 0,
                                 {"max_open_files": worst.limit, "role": "nginx-worker",
                                  "host": host.name})


# ------------------------------------------------------------------ uWSGI vs the kernel


@rule("uwsgi.listen-vs-somaxconn", "uWSGI listen larger than net.core.somaxconn")
def listen_vs_somaxconn(facts: Facts) -> Iterator[Finding]:
    smax = facts.system.somaxconn
    if smax is None:
        return
    for host in facts.hosts:
        for u in host.uwsgi:
            listen, ev = uwsgi_int(u, "listen", UWSGI_DEFAULT_LISTEN)
            if listen is None or listen <= smax:
                continue
            yield _finding(
                "uwsgi.listen-vs-somaxconn", "critical",
                f"uWSGI listen {listen} is above net.core.somaxconn {smax}",
                [ev, Evidence(SOMAXCONN, 0, {"somaxconn": smax})],
                "The kernel caps every listen() backlog at net.core.somaxconn, and uWSGI "
                "refuses to start when `listen` is larger (\"Listen queue size is greater "
                "than the system max net.core.somaxconn\"): the next restart fails.",
                f"sysctl -w net.core.somaxconn={listen} (persist it in /etc/sysctl.d/), or "
                f"set listen = {smax} or less in {os.path.basename(config_file(u))}.",
                host)


@rule("nginx.backlog-vs-somaxconn", "nginx listen backlog larger than net.core.somaxconn")
def backlog_vs_somaxconn(facts: Facts) -> Iterator[Finding]:
    smax = facts.system.somaxconn
    if smax is None:
        return
    for host in facts.hosts:
        for n in host.nginx:
            over = []
            for li in _listens(n.conf):
                backlog = li.backlog if li.backlog is not None else DEFAULT_BACKLOG
                if backlog > smax:
                    values: dict[str, Any] = {"listen": li.directive.value}
                    if li.backlog is None:
                        values["backlog"] = DEFAULT_BACKLOG
                        values["note"] = "backlog not set: nginx default"
                    over.append((backlog, Evidence(li.directive.file, li.directive.line,
                                                   values)))
            if not over:
                continue
            want = max(b for b, _ in over)
            yield _finding(
                "nginx.backlog-vs-somaxconn", "warn",
                f"nginx listen backlog {want} is above net.core.somaxconn {smax}",
                [*(e for _, e in over), Evidence(SOMAXCONN, 0, {"somaxconn": smax})],
                "The kernel silently caps a listen() backlog at net.core.somaxconn, so "
                "nginx's accept queue is shorter than configured; a raised somaxconn only "
                "applies when nginx calls listen() again (restart).",
                f"sysctl -w net.core.somaxconn={want} (persist it in /etc/sysctl.d/), then "
                "restart nginx; or lower backlog= to the somaxconn value.",
                host)


def _configured_backlog(n: NginxFacts, listener: Listener) -> tuple[int, Evidence] | None:
    lhost, _, lport = listener.address.rpartition(":")
    for li in _listens(n.conf):
        if li.host.startswith("unix:"):
            if listener.kind == "unix" and li.host[5:] == listener.address:
                break
            continue
        if listener.kind != "tcp" or str(li.port) != lport:
            continue
        if li.host and _norm_host(li.host) != _norm_host(lhost.strip("[]")):
            continue
        break
    else:
        return None
    backlog = li.backlog if li.backlog is not None else DEFAULT_BACKLOG
    values: dict[str, Any] = {"listen": li.directive.value}
    if li.backlog is None:
        values["backlog"] = DEFAULT_BACKLOG
        values["note"] = "backlog not set: nginx default"
    return backlog, Evidence(li.directive.file, li.directive.line, values)


@rule("live.backlog-capped", "a live listener got a smaller backlog than configured")
def backlog_capped(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        if host.live is None:
            continue
        snap = host.live.latest
        for u in host.uwsgi:
            if u.live is None:
                continue
            listen, ev = uwsgi_int(u, "listen", UWSGI_DEFAULT_LISTEN)
            if listen is None:
                continue
            short = [s for s in u.live.sockets if 0 < s.max_queue < listen]
            if not short:
                continue
            got = min(s.max_queue for s in short)
            yield _finding(
                "live.backlog-capped", "warn",
                f"uWSGI sockets run with backlog {got}, configured listen {listen}",
                [ev, *(Evidence(f"live {u.stats_address or u.name}", 0,
                                {"socket": s.name, "backlog": s.max_queue, "source": s.source})
                       for s in short),
                 Evidence(SOMAXCONN, 0, {"somaxconn": facts.system.somaxconn})],
                "A backlog is fixed when the socket calls listen(): the kernel capped it at "
                "the net.core.somaxconn of that moment, so the queue in front of the workers "
                "is shorter than configured.",
                f"sysctl -w net.core.somaxconn={listen}, then restart uWSGI (stop and start: "
                "a reload keeps the old listening sockets).",
                host)
        for n in host.nginx:
            rows = []
            for li in snap.listeners:
                if li.owner != "nginx":
                    continue
                conf = _configured_backlog(n, li)
                if conf is None or not 0 < li.backlog < conf[0]:
                    continue
                smax = facts.system.somaxconn
                if smax is not None and conf[0] > smax:
                    continue  # the config itself asks too much: nginx.backlog-vs-somaxconn
                rows.append((conf, li))
            if not rows:
                continue
            want = max(c[0] for c, _ in rows)
            evidence = []
            for (_, cev), li in rows:
                evidence += [cev, Evidence(f"live {host.name}", 0,
                                           {"listener": li.address, "backlog": li.backlog})]
            yield _finding(
                "live.backlog-capped", "warn",
                f"nginx listeners run with a smaller backlog than configured ({want})",
                evidence,
                "A backlog is fixed when the socket calls listen(): the kernel capped it at "
                "the net.core.somaxconn of that moment (lower than today's), so nginx's "
                "accept queue is shorter than configured until it listens again.",
                "Restart nginx (the current net.core.somaxconn allows the configured "
                "backlog); persist the sysctl in /etc/sysctl.d/ so a reboot keeps it.",
                host)


@rule("live.listen-queue-full", "a listen queue is full (or nearly) right now")
def listen_queue_full(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        if host.live is None:
            continue
        snaps = [s for s in (host.live.first, host.live.second) if s is not None]
        worst: dict[str, tuple[int, int, str, str]] = {}
        for snap in snaps:
            for li in snap.listeners:
                key = f"{li.kind}:{li.address}"
                if li.backlog > 0 and (key not in worst or li.queue > worst[key][0]):
                    worst[key] = (li.queue, li.backlog, li.owner or "?", "kernel")
            for inst in snap.uwsgi:
                for s in inst.sockets:
                    key = f"{'unix' if s.name.startswith('/') else 'tcp'}:{s.name}"
                    if s.max_queue > 0 and key not in worst:
                        worst[key] = (s.queue, s.max_queue, "uwsgi", s.source)
        for key, (queue, backlog, owner, source) in worst.items():
            severity = queue_severity(queue, backlog, POLICY)
            if severity not in ("warn", "critical"):
                continue
            address = key.split(":", 1)[1]
            full = queue >= backlog
            unix = key.startswith("unix:")
            if owner == "nginx":
                why = ("nginx is not accepting as fast as clients connect (workers out of "
                       "connections or fds, or blocked): the kernel drops new connections "
                       "once the queue is full.")
                fix = ("Check nginx's worker_connections and fd limits (findings above), and "
                       "the accepts/handled counters.")
            else:
                why = ("Every uWSGI worker is busy and requests wait in the socket's backlog; "
                       "once it is full, new connections fail: over a unix socket nginx's "
                       "connect() gets EAGAIN and answers 502 at once, over TCP it waits "
                       "until uwsgi_connect_timeout (504).")
                fix = ("Find what holds the workers (stuck requests and their ages: "
                       "`stackmon`), bound them with harakiri, add workers or threads; raise "
                       "listen only together with net.core.somaxconn.")
            yield _finding(
                "live.listen-queue-full", severity,
                f"{owner} listen queue {'full' if full else 'nearly full'}: "
                f"{queue}/{backlog} on {address}",
                [Evidence(f"live {host.name}", 0,
                          {"address": address, "queue": queue, "backlog": backlog,
                           "kind": "unix" if unix else "tcp", "source": source})],
                why, fix, host)


@rule("kernel.listen-overflows", "TcpExt ListenOverflows rising between two samples")
def listen_overflows(facts: Facts) -> Iterator[Finding]:
    first, second = facts.system.listen_overflows
    if first is None or second is None or second <= first:
        return
    delta = second - first
    yield _finding(
        "kernel.listen-overflows", "critical",
        f"ListenOverflows rose by {delta} in {facts.system.overflow_interval:.1f} s",
        [Evidence(NETSTAT, 0, {"ListenOverflows_before": first, "ListenOverflows_after": second,
                               "interval_s": round(facts.system.overflow_interval, 2)})],
        "TcpExt ListenOverflows counts TCP connections dropped because an accept queue was "
        "full (all listeners in this network namespace); it rose during the check, so "
        "clients are being refused now.",
        "Find the full queue (live.listen-queue-full above, or `ss -ltn`: Recv-Q vs Send-Q) "
        "and free its workers; raise its backlog together with net.core.somaxconn.")


# ------------------------------------------------------------------ fds


@rule("nginx.worker-connections-vs-fd-limit", "worker_connections above the workers' fd limit")
def worker_connections_vs_fds(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        for n in host.nginx:
            conf = n.conf
            events = conf.block("events")
            wc_dir = events.get("worker_connections") if events else None
            wc = parse_number(wc_dir.args[0]) if wc_dir and wc_dir.args else 512
            if wc is None:
                continue
            wc_ev = (Evidence(wc_dir.file, wc_dir.line, {"worker_connections": wc})
                     if wc_dir else Evidence(conf.path, events.line if events else 0,
                                             {"worker_connections": 512,
                                              "note": "not set: nginx default"}))
            limit, limit_ev = _worker_fd_limit(host)
            rl = conf.main("worker_rlimit_nofile")
            if limit is None and rl is not None and rl.args:
                limit = parse_number(rl.args[0])
                limit_ev = Evidence(rl.file, rl.line, {"worker_rlimit_nofile": rl.value})
            if limit is None or limit_ev is None:
                continue
            wp = conf.main("worker_processes")
            procs = wp.args[0] if wp and wp.args else "1"
            nproc = _worker_count(host, procs)
            capacity = nproc * wc // 2
            if limit < wc:
                yield _finding(
                    "nginx.worker-connections-vs-fd-limit", "warn",
                    f"nginx workers may open {limit} fds but allow {wc} connections",
                    [wc_ev, limit_ev],
                    "Every connection is a file descriptor: when fds run out first, accept() "
                    "fails, nginx's accepts stop growing and its own listen queue fills, "
                    "instead of the clear \"worker_connections are not enough\".",
                    f"worker_rlimit_nofile {2 * wc}; in the main context of nginx.conf (and "
                    "keep it within fs.nr_open).",
                    host)
            elif limit < 2 * wc and _nginx_proxies(conf):
                yield _finding(
                    "nginx.fd-limit-vs-proxying", "info",
                    f"nginx fd limit {limit} is under 2 x worker_connections ({2 * wc})",
                    [wc_ev, limit_ev, Evidence(conf.path, wp.line if wp else 0,
                                               {"worker_processes": procs,
                                                "proxied_clients_capacity": capacity})],
                    "A proxied request holds two connections (client and upstream; "
                    "uwsgi_pass has no upstream keep-alive), and buffered bodies open temp "
                    f"files too: about {capacity} concurrent clients fit, and fds can run out "
                    "before connections do.",
                    f"worker_rlimit_nofile {2 * wc}; (main context).",
                    host)


@rule("nginx.rlimit-vs-nr-open", "worker_rlimit_nofile above fs.nr_open")
def rlimit_vs_nr_open(facts: Facts) -> Iterator[Finding]:
    nr_open = facts.system.nr_open
    if not nr_open:
        return
    for host in facts.hosts:
        for n in host.nginx:
            rl = n.conf.main("worker_rlimit_nofile")
            value = parse_number(rl.args[0]) if rl and rl.args else None
            if rl is None or value is None or value <= nr_open:
                continue
            yield _finding(
                "nginx.rlimit-vs-nr-open", "warn",
                f"worker_rlimit_nofile {value} is above fs.nr_open {nr_open}",
                [Evidence(rl.file, rl.line, {"worker_rlimit_nofile": value}),
                 Evidence(NR_OPEN, 0, {"nr_open": nr_open})],
                "No process may raise its fd limit above fs.nr_open: nginx's setrlimit() "
                "fails (\"Operation not permitted\" in the error log) and the workers keep "
                "the limit they inherited.",
                f"sysctl -w fs.nr_open={value} (persist it), or worker_rlimit_nofile "
                f"{nr_open};",
                host)


@rule("kernel.file-nr-near-max", "system-wide open files near fs.file-max")
def file_nr_near_max(facts: Facts) -> Iterator[Finding]:
    used, maximum = facts.system.file_nr, facts.system.file_max
    if not used or not maximum:
        return
    severity = fd_severity(used, maximum, POLICY)
    if severity not in ("warn", "critical"):
        return
    ratio = used / maximum
    yield _finding(
        "kernel.file-nr-near-max", severity,
        f"{used} of {maximum} system file handles in use ({ratio:.0%})",
        [Evidence(FILE_NR, 0, {"allocated": used, "file_max": maximum})],
        "When fs.file-max is reached every process's open() and accept() fail with ENFILE, "
        "whatever its own limit.",
        f"sysctl -w fs.file-max={maximum * 2} (persist it), and find the process holding "
        "the fds (stackmon's fd gauges).")


@rule("live.fds-near-limit", "a monitored process is close to its fd limit")
def fds_near_limit(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        if host.live is None:
            continue
        for p in host.live.latest.fds.processes:
            severity = fd_severity(p.open, p.limit, POLICY)
            if severity not in ("warn", "critical"):
                continue
            ratio = p.open / p.limit
            yield _finding(
                "live.fds-near-limit", severity,
                f"{p.role} {p.pid} has {p.open} of {p.limit} fds open ({ratio:.0%})",
                [Evidence(f"/proc/{p.pid}/limits", 0,
                          {"open": p.open, "max_open_files": p.limit, "role": p.role})],
                "At the limit accept() fails with EMFILE: nginx stops accepting (its queue "
                "fills), a uWSGI worker cannot open files or sockets.",
                "Raise the limit (worker_rlimit_nofile for nginx; LimitNOFILE= in the "
                "systemd unit or max-fd for uWSGI) and look for leaked connections.",
                host)


@rule("nginx.accepts-not-handled", "nginx accepted connections it could not handle")
def accepts_not_handled(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        if host.live is None:
            continue
        first = host.live.first.nginx
        second = host.live.second.nginx if host.live.second is not None else None
        latest = second or first
        if latest is None or latest.dropped <= 0:
            continue
        rising = first is not None and second is not None and second.dropped > first.dropped
        values: dict[str, Any] = {"accepts": latest.accepts, "handled": latest.handled,
                                  "dropped": latest.dropped}
        if rising and first is not None:
            values["dropped_before"] = first.dropped
            values["interval_s"] = round(host.live.interval, 2)
        yield _finding(
            "nginx.accepts-not-handled", "critical" if rising else "warn",
            f"nginx dropped {latest.dropped} accepted connections"
            + (" (rising now)" if rising else " (since start)"),
            [Evidence(latest.url, 0, values)],
            "accepts - handled grows only when a worker has no free worker_connections: "
            "those clients were accepted and closed at once.",
            "Raise worker_connections (and worker_rlimit_nofile to 2x it), or add "
            "worker_processes.",
            host)


# ------------------------------------------------------------------ the LB's timeouts


def _lb_time_rule(facts: Facts, rule_id: str, names: Sequence[str], title: str, why: str,
                  fix: str, compare: Callable[[float, float], bool],
                  scopes: Callable[[NginxConf, str], list[Sequence[Block]]]
                  ) -> Iterator[Finding]:
    idle = facts.lb.idle_timeout
    for host in facts.hosts:
        for n in host.nginx:
            evidence: list[Evidence] = []
            for name in names:
                for path in scopes(n.conf, name):
                    value, ev = nginx_time(path, name, n.conf)
                    if value is None or value == 0 or not compare(value, idle):
                        continue
                    evidence.append(ev)
            if evidence:
                evidence.append(Evidence("load balancer", 0, {"idle_timeout": _seconds(idle)}))
                yield _finding(rule_id, "warn", title.format(idle=_seconds(idle)), evidence,
                               why, fix.format(idle=idle, longer=int(idle) + 15,
                                               shorter=max(1, int(idle) - 5)), host)


def _location_scopes(conf: NginxConf, name: str) -> list[Sequence[Block]]:
    del name
    return [p for _, p in uwsgi_pass_locations(conf)]


@rule("nginx.keepalive-vs-lb-idle", "keepalive_timeout not longer than the LB idle timeout")
def keepalive_vs_idle(facts: Facts) -> Iterator[Finding]:
    yield from _lb_time_rule(
        facts, "nginx.keepalive-vs-lb-idle", ["keepalive_timeout"],
        "nginx keepalive_timeout is not longer than the LB idle timeout {idle}",
        "The backend's keep-alive must outlast the LB's idle timeout: otherwise nginx closes "
        "an idle connection the LB still thinks is open, the LB sends the next request on it "
        "and answers 502.",
        "keepalive_timeout {longer}s; (in http {{}}: longer than the LB idle timeout).",
        lambda v, idle: v <= idle, _scopes)


@rule("nginx.client-timeouts-vs-lb-idle",
      "client_header_timeout / client_body_timeout not longer than the LB idle timeout")
def client_timeouts_vs_idle(facts: Facts) -> Iterator[Finding]:
    yield from _lb_time_rule(
        facts, "nginx.client-timeouts-vs-lb-idle",
        ["client_header_timeout", "client_body_timeout"],
        "nginx client timeouts are not longer than the LB idle timeout {idle}",
        "A connection the LB opened but has not used yet (or a body it is still relaying) is "
        "closed by nginx after these timeouts; when they are not longer than the LB's idle "
        "timeout the LB can send on a connection nginx is closing: 502. The defaults (60 s) "
        "equal the LB's 60 s.",
        "client_header_timeout {longer}s; client_body_timeout {longer}s; (in http {{}}).",
        lambda v, idle: v <= idle, _scopes)


@rule("nginx.read-timeout-vs-lb-idle", "uwsgi_read_timeout at or past the LB idle timeout")
def read_timeout_vs_idle(facts: Facts) -> Iterator[Finding]:
    yield from _lb_time_rule(
        facts, "nginx.read-timeout-vs-lb-idle", ["uwsgi_read_timeout"],
        "uwsgi_read_timeout is at or past the LB idle timeout {idle}",
        "The LB answers 504 when no response comes within its idle timeout. With "
        "uwsgi_read_timeout at or above it the LB gives up first: the client gets the LB's "
        "504 while nginx and the worker keep going, and nothing in nginx's log says why.",
        "uwsgi_read_timeout {shorter}s; (below the LB idle timeout, above harakiri), or "
        "raise the LB idle timeout.",
        lambda v, idle: v >= idle, _location_scopes)


@rule("nginx.connect-timeout-over-75s", "uwsgi_connect_timeout over 75 s")
def connect_timeout_over_75(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        for n in host.nginx:
            evidence = []
            for d, _path in n.conf.directives("uwsgi_connect_timeout"):
                value = parse_time(d.args[0]) if d.args else None
                if value is not None and value > 75:
                    evidence.append(Evidence(d.file, d.line, {"uwsgi_connect_timeout": d.value}))
            if evidence:
                yield _finding(
                    "nginx.connect-timeout-over-75s", "warn",
                    "uwsgi_connect_timeout is over 75 s",
                    evidence,
                    "nginx documents that a connect timeout usually cannot exceed 75 s (the "
                    "kernel gives up on the SYN first); with a full TCP queue nginx waits that "
                    "long before its 504, long after the LB gave up.",
                    "uwsgi_connect_timeout 10s; (a local uWSGI accepts in milliseconds when it "
                    "can).",
                    host)


# ------------------------------------------------------------------ uWSGI workers and reloads


def _read_timeouts(host: HostFacts, u: UwsgiFacts) -> list[tuple[float, Evidence]]:
    out = []
    for n, _d, path in locations_for(host, u):
        value, ev = nginx_time(path, "uwsgi_read_timeout", n.conf)
        if value is not None:
            out.append((value, ev))
    return out


@rule("uwsgi.harakiri-unset", "no harakiri: a stuck request holds its worker forever")
def harakiri_unset(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        for u in host.uwsgi:
            harakiri, ev = uwsgi_int(u, "harakiri", None)
            if harakiri:
                continue
            timeouts = _read_timeouts(host, u)
            ceiling = min([t for t, _ in timeouts] + [facts.lb.idle_timeout])
            suggest = max(1, int(ceiling) - 10)
            if harakiri == 0 and ev.line:
                ev = Evidence(ev.file, ev.line, {**ev.values, "note": "0 disables harakiri"})
            else:
                ev = Evidence(ev.file, ev.line, {"harakiri": "unset",
                                                 "note": "not set: off by default"})
            yield _finding(
                "uwsgi.harakiri-unset", "warn",
                f"harakiri is off in {u.name}",
                [ev, *(e for _, e in timeouts)],
                "Without harakiri nothing bounds a request: a stuck one holds its worker "
                "until someone kills it, and enough of them fill the listen queue. "
                "nginx's timeout only drops the client side.",
                f"harakiri = {suggest} (shorter than uwsgi_read_timeout, which is shorter "
                "than the LB idle timeout).",
                host)


@rule("uwsgi.harakiri-vs-read-timeout", "harakiri not shorter than uwsgi_read_timeout")
def harakiri_vs_read_timeout(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        for u in host.uwsgi:
            harakiri, ev = uwsgi_int(u, "harakiri", None)
            if not harakiri:
                continue
            longer = [(t, e) for t, e in _read_timeouts(host, u) if harakiri >= t]
            if not longer:
                continue
            shortest = min(t for t, _ in longer)
            yield _finding(
                "uwsgi.harakiri-vs-read-timeout", "warn",
                f"harakiri {harakiri}s is not shorter than uwsgi_read_timeout "
                f"{_seconds(shortest)}",
                [ev, *(e for _, e in longer)],
                "nginx gives up first (504) while the worker keeps running the request until "
                "harakiri: the client has its error, the worker stays busy for nothing. "
                "The order to keep: harakiri < uwsgi_read_timeout < LB idle timeout.",
                f"harakiri = {max(1, int(shortest) - 5)} in "
                f"{os.path.basename(config_file(u))}, or raise uwsgi_read_timeout (while "
                "keeping it below the LB idle timeout).",
                host)


@rule("uwsgi.reload-mercy-vs-health-check",
      "a graceful reload can outlast the LB health check's window")
def mercy_vs_health(facts: Facts) -> Iterator[Finding]:
    lb = facts.lb
    window = lb.health_window
    for host in facts.hosts:
        for u in host.uwsgi:
            mercy, ev = uwsgi_int(u, "worker-reload-mercy", UWSGI_DEFAULT_MERCY)
            if mercy is None or mercy < window:
                continue
            yield _finding(
                "uwsgi.reload-mercy-vs-health-check", "warn",
                f"a reload may hold requests {mercy}s + app start-up; the LB allows "
                f"{_seconds(window)}",
                [ev, Evidence("load balancer", 0,
                              {"health_timeout": _seconds(lb.health_timeout),
                               "health_interval": _seconds(lb.health_interval),
                               "unhealthy_threshold": lb.unhealthy_threshold,
                               "window": _seconds(window)})],
                "During a graceful reload busy workers get worker-reload-mercy to finish while "
                "new requests (health checks too) wait in the listen queue; the LB marks the "
                f"host out after {lb.unhealthy_threshold} failed checks "
                f"{_seconds(lb.health_interval)} apart, so a reload with a stuck request takes "
                "the host out of service.",
                f"worker-reload-mercy = {max(5, int(window / 2))} with harakiri bounding "
                "requests, or reload with a chain reload (master FIFO `c`), which keeps other "
                "workers accepting.",
                host)


@rule("uwsgi.max-requests-without-delta", "max-requests without max-requests-delta")
def max_requests_without_delta(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        for u in host.uwsgi:
            mr, ev = uwsgi_int(u, "max-requests", None)
            if not mr or last(u.options, "max-requests-delta") is not None:
                continue
            yield _finding(
                "uwsgi.max-requests-without-delta", "warn",
                f"max-requests {mr} without max-requests-delta",
                [ev],
                "Workers started together reach max-requests together and recycle at the "
                "same moment, each reloading the app: capacity drops to zero for the start-up "
                "time and the listen queue fills.",
                f"max-requests-delta = {max(1, mr // 20)} (worker N recycles after "
                "max-requests + N x delta).",
                host)


_INT_OPTIONS = ("listen", "harakiri", "worker-reload-mercy", "reload-mercy", "max-requests",
                "max-requests-delta", "processes", "workers", "threads", "socket-timeout",
                "max-fd", "reload-on-rss", "evil-reload-on-rss")


@rule("uwsgi.number-with-text", "an integer option with text uWSGI ignores")
def number_with_text(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        for u in host.uwsgi:
            for key in _INT_OPTIONS:
                for opt in all_values(u.options, key):
                    number, clean = parse_int(opt.value)
                    if clean:
                        continue
                    yield _finding(
                        "uwsgi.number-with-text", "warn",
                        f"uWSGI reads {key} = {opt.value!r} as {number}",
                        [ev_option(opt, read_as=number)],
                        "uWSGI reads integer options with atoi(): it stops at the first "
                        "non-digit, so units and trailing comments are silently dropped "
                        "(\"2m\" is 2 seconds) and there are no inline comments in ini files.",
                        f"{key} = <plain number> (seconds for timeouts), with any comment on "
                        "its own line.",
                        host)


@rule("uwsgi.no-stats", "no stats server")
def no_stats(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        for u in host.uwsgi:
            if last(u.options, "stats") is not None or u.stats_address:
                continue
            yield _finding(
                "uwsgi.no-stats", "warn",
                f"no stats server in {u.name}",
                [Evidence(config_file(u), 0, {"stats": "unset"})],
                "Without `stats` nothing (stackmon, uwsgitop, exporters) can see the workers, "
                "the requests in flight or their ages, which is what an outage needs first.",
                "stats = 127.0.0.1:9002 (loopback; add stats-http = true to serve it as HTTP).",
                host)


@rule("nginx.unix-upstream", "uwsgi_pass over a unix socket: only the kernel sees its queue")
def unix_upstream(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        for n in host.nginx:
            evidence = []
            for d, _path in uwsgi_pass_locations(n.conf):
                for target in _pass_targets(n.conf, d):
                    if target.startswith("unix:"):
                        evidence.append(Evidence(d.file, d.line, {"uwsgi_pass": d.value,
                                                                  "socket": target[5:]}))
            if evidence:
                yield _finding(
                    "nginx.unix-upstream", "info",
                    "nginx reaches uWSGI over a unix socket",
                    evidence,
                    "uWSGI's stats report queue 0/0 for unix sockets, so the backlog in front "
                    "of the workers is visible only to the kernel (stackmon reads it through "
                    "sock_diag); when it is full nginx's connect() fails at once: 502, not a "
                    "wait.",
                    "Nothing to change: watch the socket's queue in stackmon (source: kernel) "
                    "or with `ss -lx`.",
                    host)


# ------------------------------------------------------------------ what the clients got (logs)
#
# The live polls carry the host's log summary (stackmon.logs): nginx's upstream failures by
# cause and upstream over the last window, the access log's status counts, uWSGI's events. A
# cause is graded like the health model grades 5xx (POLICY: a rate of errors_critical_per_s,
# or errors_critical_share of the requests with at least errors_critical_min, is critical;
# anything less a warning), except a full unix-socket queue, which is always critical: the
# kernel refused those clients at once, and nothing else on the host records it.

SAMPLE_CHARS = 240


def host_logs(host: HostFacts) -> LogSummary | None:
    """The newest log summary of a polled host (the second poll's window includes the
    first's)."""
    if host.live is None:
        return None
    for snap in (host.live.latest, host.live.first):
        if snap.logs is not None:
            return snap.logs
    return None


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _log_path(logs: LogSummary, kind: str) -> str:
    paths = [s.path for s in logs.sources if s.kind == kind and s.path and not s.error]
    return ", ".join(paths) or f"{kind.replace('_', ' ')} log"


def _error_evidence(logs: LogSummary, err: UpstreamError) -> Evidence:
    sample = err.sample if len(err.sample) <= SAMPLE_CHARS else \
        err.sample[:SAMPLE_CHARS - 1] + "…"
    return Evidence(_log_path(logs, "nginx_error"), 0,
                    {"cause": err.cause, "upstream": err.upstream, "count": err.count,
                     "first": _clock(err.first_at), "last": _clock(err.last_at),
                     "window_s": round(logs.window_s), "sample": sample})


def _window_span(logs: LogSummary) -> float:
    http = logs.http
    span = min(http.covered_s, http.window_s) if http is not None else logs.window_s
    return max(span, 1.0)


def errors_severity(count: int, logs: LogSummary) -> Severity:
    """The health model's 5xx grading applied to one cause's count."""
    requests = logs.http.requests if logs.http is not None else 0
    if count / _window_span(logs) >= POLICY.errors_critical_per_s:
        return "critical"
    if requests and count >= POLICY.errors_critical_min \
            and count >= POLICY.errors_critical_share * requests:
        return "critical"
    return "warn"


def _status_evidence(logs: LogSummary, *codes: str) -> list[Evidence]:
    http = logs.http
    if http is None:
        return []
    values: dict[str, Any] = {code: http.status.get(code, 0) for code in codes}
    values["requests"] = http.requests
    return [Evidence(_log_path(logs, "nginx_access"), 0, values)]


def _event_evidence(logs: LogSummary, kinds: Sequence[str]) -> list[Evidence]:
    """uWSGI (and stackmon) events of these kinds in the window: count per kind and the
    newest one's line, redacted."""
    found = [e for e in logs.events if e.kind in kinds]
    if not found:
        return []
    counts: dict[str, Any] = {}
    for e in found:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    newest = max(found, key=lambda e: e.at)
    return [Evidence(_log_path(logs, "uwsgi") if newest.source == "uwsgi" else newest.source,
                     0, {**counts, "newest": f"{_clock(newest.at)} {clean(newest.text)}"
                         [:SAMPLE_CHARS]})]


def _owner_of(host: HostFacts, upstream: str) -> UwsgiFacts | None:
    """The uWSGI config whose socket nginx names as this upstream (`unix:/run/app.sock`,
    `127.0.0.1:3031`)."""
    for u in host.uwsgi:
        if any(address_matches(upstream, s) for s in uwsgi_sockets(u)):
            return u
    return None


def _live_backlog(host: HostFacts, upstream: str) -> Evidence | None:
    if host.live is None:
        return None
    address = upstream.removeprefix("unix:")
    snap = host.live.latest
    for li in snap.listeners:
        if li.address == address:
            return Evidence(f"live {host.name}", 0, {"socket": address, "queue": li.queue,
                                                     "backlog": li.backlog, "source": "kernel"})
    for inst in snap.uwsgi:
        for sock in inst.sockets:
            if sock.name == address:
                return Evidence(f"live {host.name}", 0,
                                {"socket": address, "queue": sock.queue,
                                 "backlog": sock.max_queue, "source": sock.source})
    return None


def _causes(facts: Facts, cause: str) -> Iterator[tuple[HostFacts, LogSummary, UpstreamError]]:
    for host in facts.hosts:
        logs = host_logs(host)
        if logs is None:
            continue
        for err in logs.upstream_errors:
            if err.cause == cause:
                yield host, logs, err


# A graceful reload's no-service window ends when uWSGI logs its master respawned; its new
# workers take a moment more to accept. Without that line (the window cut it, the reload is
# still going) it ends when worker-reload-mercy would have run out.
RELOAD_REOPEN_S = 3.0


@dataclass(frozen=True)
class ReloadSpan:
    """A graceful (or brutal) reload during which no worker served: from its start (uWSGI's
    "...gracefully killing workers..." line, or stackmon's own reload) to the respawned
    master's line plus RELOAD_REOPEN_S. `by` says where its start was read."""

    start: float
    end: float
    by: str


def reload_spans(host: HostFacts, mercy: float) -> list[ReloadSpan]:
    """The reloads in the polls' logs that left no worker serving, oldest first."""
    if host.live is None:
        return []
    events = {(e.at, e.source, e.kind, e.text): e
              for snap in (host.live.first, host.live.latest)
              if snap is not None and snap.logs is not None for e in snap.logs.events}
    spans: list[ReloadSpan] = []
    start: float | None = None
    by = ""
    for e in sorted(events.values(), key=lambda e: e.at):
        if e.kind != "reload":
            continue
        if e.source == "uwsgi" and "(RE)spawned" in e.text:
            if start is not None:
                spans.append(ReloadSpan(start, e.at + RELOAD_REOPEN_S, by))
                start = None
        elif start is None and (e.source == "stackmon" or "killing workers" in e.text):
            start = e.at
            by = "stackmon's reload" if e.source == "stackmon" else "uWSGI's log"
    if start is not None:
        spans.append(ReloadSpan(start, start + mercy + RELOAD_REOPEN_S, by))
    return spans


def _during_reloads(times: Sequence[float], spans: Sequence[ReloadSpan]
                    ) -> list[tuple[ReloadSpan, int]]:
    """How many of `times` fell in each span (nginx's times are whole seconds: a second of
    slack before the start)."""
    out = []
    for span in spans:
        n = sum(1 for t in times if span.start - 1 <= t <= span.end)
        if n:
            out.append((span, n))
    return out


@rule("logs.upstream-queue-full", "a unix-socket listen queue overflowed (nginx's error log)")
def upstream_queue_full(facts: Facts) -> Iterator[Finding]:
    for host, logs, err in _causes(facts, "queue_full"):
        socket = err.upstream.removeprefix("unix:")
        evidence = [_error_evidence(logs, err), *_status_evidence(logs, "502")]
        owner = _owner_of(host, err.upstream)
        listen: int | None = None
        mercy: int | None = UWSGI_DEFAULT_MERCY
        where = "the uWSGI ini"
        if owner is not None:
            listen, ev = uwsgi_int(owner, "listen", UWSGI_DEFAULT_LISTEN)
            evidence.append(ev)
            mercy, _ = uwsgi_int(owner, "worker-reload-mercy", UWSGI_DEFAULT_MERCY)
            where = os.path.basename(config_file(owner))
        live = _live_backlog(host, err.upstream)
        if live is not None:
            evidence.append(live)
            listen = listen or live.values.get("backlog")
        smax = facts.system.somaxconn
        if smax is not None:
            evidence.append(Evidence(SOMAXCONN, 0, {"somaxconn": smax}))
        times = [at for up, at in host.queue_full_at if up == err.upstream]
        during = _during_reloads(times, reload_spans(host, mercy or UWSGI_DEFAULT_MERCY))
        in_reload = min(sum(n for _, n in during), err.count)
        evidence.extend(Evidence(f"reload {_clock(span.start)}", 0, {
            "from": _clock(span.start), "to": _clock(span.end), "overflows": n,
            "seen_in": span.by}) for span, n in during)
        title = (f"the listen queue of {socket} overflowed {err.count}x in the last "
                 f"{logs.window_s:.0f} s (502 at once), last at {_clock(err.last_at)}")
        if in_reload:
            title += (f"; {in_reload} of them during the graceful reload at "
                      f"{', '.join(_clock(span.start) for span, _ in during)}")
        yield _finding(
            "logs.upstream-queue-full", "critical", title, evidence,
            _queue_full_why(in_reload, err.count - in_reload, during, mercy),
            _queue_full_fix(in_reload, err.count - in_reload, listen, where, smax),
            host)


def _queue_full_why(in_reload: int, rest: int, during: Sequence[tuple[ReloadSpan, int]],
                    mercy: int | None) -> str:
    kernel = ("Linux refuses a connect() to a full unix socket at once (EAGAIN), so nginx "
              "answered 502 without waiting. Nothing else records it: uWSGI's stats show 0/0 "
              "for unix sockets and the kernel's ListenOverflows counts TCP only.")
    busy = "Every worker was busy and the socket's backlog was full: "
    if not in_reload:
        return busy + kernel
    spans = ", ".join(f"{_clock(s.start)} to {_clock(s.end)}" for s, _ in during)
    text = (f"{in_reload} overflow(s) came during a graceful reload with no worker serving "
            f"({spans}): a graceful reload stops every worker and starts the new ones only "
            f"when the last has finished or worker-reload-mercy ({mercy or '?'} s) runs out, "
            "so the queue fills whatever the number of workers. That is the reload, not a "
            "lack of capacity. ")
    if rest > 0:
        text += f"The other {rest}: every worker was busy and the backlog was full. "
    return text + kernel


def _queue_full_fix(in_reload: int, rest: int, listen: int | None, where: str,
                    smax: int | None) -> str:
    reload_fix = ("Reload with a chain reload (stackmon `C`, master FIFO `c`): workers are "
                  "replaced one at a time while the others keep accepting; bound requests "
                  "with harakiri so that no reload waits out worker-reload-mercy.")
    if in_reload and rest <= 0:
        return reload_fix
    want = max(4 * (listen or 32), 128)
    sysctl = (f"within net.core.somaxconn ({smax})" if smax is not None and smax >= want
              else f"together with net.core.somaxconn (sysctl -w net.core.somaxconn="
                   f"{want}, persisted in /etc/sysctl.d/)")
    capacity = (f"Find the stuck requests holding the workers (stackmon: the oldest requests "
                f"per worker; bound them with harakiri); add workers (processes/threads) if "
                f"they are busy with ordinary traffic; raise listen (now "
                f"{listen if listen else '?'}) to {want} in {where} {sysctl}, then restart "
                "uWSGI (a reload keeps the old socket's backlog).")
    if not in_reload:
        return capacity
    return f"{reload_fix} For the other {rest} (outside the reload): {capacity}"


def _read_timeout_evidence(host: HostFacts, upstream: str) -> list[Evidence]:
    """uwsgi_read_timeout of the locations that pass to this upstream."""
    out = []
    for n in host.nginx:
        for d, path in uwsgi_pass_locations(n.conf):
            if upstream in _pass_targets(n.conf, d):
                out.append(nginx_time(path, "uwsgi_read_timeout", n.conf)[1])
    return out


@rule("logs.read-timeout", "upstream read timeouts (504) in nginx's error log")
def logs_read_timeout(facts: Facts) -> Iterator[Finding]:
    for host, logs, err in _causes(facts, "read_timeout"):
        evidence = [_error_evidence(logs, err), *_status_evidence(logs, "504"),
                    *_read_timeout_evidence(host, err.upstream)]
        owner = _owner_of(host, err.upstream)
        if owner is not None:
            evidence.append(uwsgi_int(owner, "harakiri", None)[1])
        yield _finding(
            "logs.read-timeout", errors_severity(err.count, logs),
            f"{err.count} request(s) to {err.upstream} timed out waiting for the response "
            f"(504) in the last {logs.window_s:.0f} s",
            evidence,
            "nginx waited uwsgi_read_timeout for the response and gave up with 504, while the "
            "worker went on running the request (until harakiri, if set), busy for nothing.",
            "Find the slow requests (stackmon: requests past --slow; `stackmon stack` shows "
            "where they are), bound them with harakiri shorter than uwsgi_read_timeout, and "
            "raise uwsgi_read_timeout only for requests that are meant to be slow (keeping it "
            "below the LB idle timeout).",
            host)


@rule("logs.refused", "connections refused by the upstream (nothing listening)")
def logs_refused(facts: Facts) -> Iterator[Finding]:
    for host, logs, err in _causes(facts, "refused"):
        evidence = [_error_evidence(logs, err), *_status_evidence(logs, "502"),
                    *_event_evidence(logs, ("reload", "chain_reload", "worker_died"))]
        yield _finding(
            "logs.refused", errors_severity(err.count, logs),
            f"{err.count} connection(s) to {err.upstream} refused in the last "
            f"{logs.window_s:.0f} s: nothing was listening (502)",
            evidence,
            "connect() found no listening socket (ECONNREFUSED, or ENOENT for a removed unix "
            "socket): uWSGI was down or restarting (a stop/start, a deploy re-creating the "
            "socket, a crash), or uwsgi_pass names an address uWSGI does not bind.",
            "Reload instead of restarting (a graceful or chain reload keeps the listening "
            "socket: `stackmon reload --chain`); check that uWSGI is running and that "
            "uwsgi_pass names the socket it binds.",
            host)


@rule("logs.closed-mid-request", "workers died mid-request (premature close / reset)")
def logs_closed_mid_request(facts: Facts) -> Iterator[Finding]:
    for host, logs, err in _causes(facts, "closed_mid_request"):
        evidence = [_error_evidence(logs, err), *_status_evidence(logs, "502"),
                    *_event_evidence(logs, ("harakiri", "worker_died", "no_mercy", "killed"))]
        yield _finding(
            "logs.closed-mid-request", errors_severity(err.count, logs),
            f"{err.count} request(s) to {err.upstream} lost in the last "
            f"{logs.window_s:.0f} s: the worker closed the connection mid-request (502)",
            evidence,
            "The worker died while nginx was reading its response: harakiri (a request longer "
            "than harakiri), a kill (stackmon's, the OOM killer's, a signal), a crash, or NO "
            "MERCY at the end of a reload.",
            "Read the uWSGI events above: for harakiri fix or bound the slow request; for "
            "kills and OOM cap memory (reload-on-rss); for NO MERCY give worker-reload-mercy "
            "more than the longest request, or use a chain reload.",
            host)


_OTHER_CAUSES = {
    "connect_timeout": ("timed out connecting (a full TCP listen queue drops the SYN; 504 "
                        "after uwsgi_connect_timeout)",
                        "Free the workers (stuck requests, harakiri), add workers, and raise "
                        "listen together with net.core.somaxconn."),
    "no_live_upstreams": ("had no live server (every server of the upstream group was "
                          "marked failed)",
                          "Fix the failures that marked the servers down (other findings), "
                          "or relax max_fails/fail_timeout."),
    "other": ("failed for another reason (see the sample)",
              "Read the sample line: permissions on the socket, a protocol mismatch..."),
}


@rule("logs.upstream-errors", "other upstream failures in nginx's error log")
def logs_other_upstream_errors(facts: Facts) -> Iterator[Finding]:
    for cause, (what, fix) in _OTHER_CAUSES.items():
        for host, logs, err in _causes(facts, cause):
            yield _finding(
                "logs.upstream-errors", errors_severity(err.count, logs),
                f"{err.count} request(s) to {err.upstream} {what.split(' (')[0]} in the last "
                f"{logs.window_s:.0f} s",
                [_error_evidence(logs, err), *_status_evidence(logs, "502", "504")],
                f"nginx's connection to the upstream {what}.", fix, host)


def _log_format_evidence(host: HostFacts, source: str, name: str) -> list[Evidence]:
    """Where the access log's format is defined and where the log is declared."""
    out = []
    for n in host.nginx:
        for d, _path in n.conf.directives("log_format"):
            if d.args and d.args[0] == name:
                out.append(Evidence(d.file, d.line, {"log_format": name}))
        for d, _path in n.conf.directives("access_log"):
            if d.args and d.args[0] in source.split(", "):
                out.append(Evidence(d.file, d.line, {"access_log": d.value}))
    return out


@rule("logs.format-without-timing", "the access log records no response time")
def format_without_timing(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        logs = host_logs(host)
        http = logs.http if logs is not None else None
        if http is None or http.timing is not None:
            continue
        missing = [v for v in http.missing if "time" in v] or ["$upstream_response_time"]
        if http.log_format == "combined":  # built into nginx: it cannot be edited
            fix = (f"Define a log_format with {' and '.join(missing)}, e.g. log_format timed "
                   "'$remote_addr - $remote_user [$time_local] \"$request\" $status "
                   "$body_bytes_sent \"$http_referer\" \"$http_user_agent\" "
                   "urt=$upstream_response_time rt=$request_time'; name it in access_log "
                   "(access_log PATH timed;), then reload nginx.")
        else:
            fix = (f"Add {' and '.join(missing)} to log_format {http.log_format}, then "
                   "reload nginx.")
        yield _finding(
            "logs.format-without-timing", "info",
            f"the access log's format {http.log_format} records no response time",
            [Evidence(http.source, 0, {"log_format": http.log_format,
                                       "missing": " ".join(missing)}),
             *_log_format_evidence(host, http.source, http.log_format)],
            "Without $upstream_response_time (or $request_time) nobody can say from the log "
            "how slow the upstream is: no percentiles, no slowest endpoints.",
            fix, host)


@rule("live.lb-health-check", "the load balancer's health check fails (or would take the host "
                              "out of service)")
def lb_health_check(facts: Facts) -> Iterator[Finding]:
    for host in facts.hosts:
        if host.live is None:
            continue
        snap = host.live.latest
        check = snap.health
        if check is None:
            continue
        for reason in health_reasons(snap, POLICY):
            if reason.kind != "health" or reason.severity not in ("warn", "critical"):
                continue
            values: dict[str, Any] = {
                "ok": check.ok, "failures_in_row": check.failures_in_row,
                "out_of_service": check.out_of_service, "timeout_s": check.timeout_s}
            if check.last_error:
                values["last_error"] = check.last_error
            if check.last_ms is not None:
                values["last_ms"] = round(check.last_ms)
            if check.max_ms is not None:
                values["max_ms"] = round(check.max_ms)
            yield _finding(
                "live.lb-health-check", "critical" if reason.severity == "critical" else "warn",
                reason.text,
                [Evidence(check.url, 0, values),
                 Evidence("load balancer", 0,
                          {"health_timeout": _seconds(facts.lb.health_timeout),
                           "health_interval": _seconds(facts.lb.health_interval),
                           "unhealthy_threshold": facts.lb.unhealthy_threshold})],
                "The load balancer probes this URL and stops sending traffic to the host "
                "after unhealthy_threshold failures in a row; stackmon probes it the same way "
                "(through nginx, the LB's timeout, 200 only).",
                "Free the workers the probe waits behind (a full listen queue, stuck requests: "
                "other findings), and keep the health URL cheap (no database, no upstream "
                "calls).",
                host)

"""The deadlines each request in flight runs into, and when: harakiri, nginx's read timeout, the
load balancer's idle timeout.

Why: a request's age means little on its own. At 58 s it may have 2 s left before nginx gives
its client a 504 (the worker then keeps working for nobody), or it may already be past it, and
then killing the worker loses nothing a client is waiting for. So every request carries its
deadlines (`Request.deadlines`, soonest first; `deadlines` in the snapshot JSON), each with
`after_s`, the seconds from the snapshot until the request hits it (negative once past).

Where each limit comes from:
- harakiri: the instance's own configuration (stackmon.uwsgi_ini.instance_options), read only
  for a kernel-confirmed master (stackmon.trust.confirm_master: a stats document can name any
  pid, and its command line names the files root would read). uWSGI's master checks harakiri
  about once a second, so the kill comes up to a second after `after_s` reaches 0.
- nginx: `uwsgi_read_timeout` of the location that serves the request, resolved like nginx
  (server by listen port and Host against server_name, else the port's default server;
  location: exact `=`, longest prefix, `^~` stops regexes, then `~`/`~*` in config order,
  nested locations too). A location that does not `uwsgi_pass` (a `try_files ... @app`) gives
  way to the server's one location that does, if there is exactly one; otherwise the
  server-level, then http-level value applies, else nginx's default 60 s. The config is the
  running master's (-c/-p, else its binary's compiled defaults, as stackmon.logs.discover
  finds it), parsed by stackmon.doctor.nginx_conf with that master's rights.
  The timeout is between two successive reads from uWSGI, not for the whole response: for a
  request that has sent nothing yet it is the time to the response header, and that is what
  is computed here, counted from when uWSGI started the request (`running_s`). Two ways it
  can be early or late: time the request waited in uWSGI's listen queue counts for nginx but
  not in `running_s` (the 504 can come sooner than shown), and a response already streaming
  restarts nginx's timer at every write (the 504 may never come). The config file is read
  as it is now: edited and not yet reloaded, it may differ from what nginx runs.
- the load balancer: its idle timeout from the hosts file (Settings.lb_idle_timeout, the ELB
  default 60 s otherwise), counted the same way.

Reading configs every poll would cost too much (the ini files, the nginx config and its
includes, /proc), so `plan_for` reads them once into a `DeadlinePlan` and `annotate` only does
arithmetic. The caller keeps the plan and asks for a new one when `plan.due(...)` says so (a
master changed, or REFRESH_S passed). plan_for does blocking reads (and may run `nginx -V`):
call it from a worker thread, like the other local facts. Nothing here raises: what could not
be read becomes a note on the plan and the deadline is left out.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from typing import Any, TypeVar

from stackmon.addresses import AddressError, StatsAddress, parse_stats_address
from stackmon.bounded_io import BoundedReadError, User
from stackmon.config import HostConfig, Settings
from stackmon.doctor.nginx_conf import (
    DEFAULTS,
    Block,
    BlockPath,
    NginxConf,
    NginxConfError,
    effective,
    load,
    parse_listen,
    parse_time,
)
from stackmon.model import (
    Core,
    Deadline,
    HostSnapshot,
    Request,
    SourceError,
    UwsgiInstance,
    Worker,
)
from stackmon.nginx_master import nginx_conf_path
from stackmon.trust import Refusal, confirm_master
from stackmon.uwsgi_ini import get_int, instance_options, last

__all__ = [
    "REFRESH_S",
    "Deadline",
    "DeadlinePlan",
    "NginxRoutes",
    "annotate",
    "deadlines_for",
    "describe",
    "nearest",
    "nginx_conf_path",
    "plan_for",
    "routes_from_conf",
]

REFRESH_S = 60.0  # how old a plan may get before its configs are read again
NGINX_DEFAULT_READ_TIMEOUT = parse_time(DEFAULTS["uwsgi_read_timeout"]) or 60.0
_DEFAULT_PORTS = frozenset({80, 8000})  # a server without `listen`: *:80 as root, else *:8000
_MEMO_CAP = 4096
T = TypeVar("T")


# ------------------------------------------------------------------ nginx routes


@dataclass(frozen=True, slots=True)
class _Location:
    modifier: str  # "=", "^~", "" (prefix), "~", "~*", "@" (named)
    pattern: str
    regex: re.Pattern[str] | None
    path: BlockPath  # root ... server ... this location
    children: tuple[_Location, ...]
    passes: bool  # has its own uwsgi_pass (not inherited in nginx)


@dataclass(frozen=True, slots=True)
class _Server:
    path: BlockPath  # root, http, server
    exact: frozenset[str]
    head_wild: tuple[str, ...]  # "*.example.com" / ".example.com"
    tail_wild: tuple[str, ...]  # "www.example.*"
    regexes: tuple[re.Pattern[str], ...]
    ports: frozenset[int]
    default_ports: frozenset[int]
    locations: tuple[_Location, ...]

    def all_locations(self) -> Iterable[_Location]:
        stack = list(self.locations)
        while stack:
            loc = stack.pop(0)
            yield loc
            stack.extend(loc.children)


@dataclass(frozen=True)
class NginxRoutes:
    """An nginx config reduced to what picks a request's `uwsgi_read_timeout`."""

    conf: str
    servers: tuple[_Server, ...]
    http: BlockPath  # (root, http) or (root,) when the config has no http block
    notes: tuple[str, ...] = ()
    _memo: dict[tuple[str, str, int | None], tuple[float, str]] = field(
        default_factory=dict, compare=False, repr=False)

    def read_timeout(self, host: str, uri: str, port: int | None = None) -> tuple[float, str]:
        """(seconds, source) of `uwsgi_read_timeout` for a request to `host` (a Host header
        value, port allowed) and `uri` (its path; a query string is ignored) that came in
        on `port` (None: unknown). source is "FILE:LINE" or "default"."""
        key = (host, uri, port)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= _MEMO_CAP:
                self._memo.clear()
            found = self._memo[key] = self._resolve(host, uri, port)
        return found

    def _resolve(self, host: str, uri: str, port: int | None) -> tuple[float, str]:
        server = select_server(self.servers, host, port)
        path: BlockPath = self.http
        if server is not None:
            loc = serving_location(server, uri.split("?", 1)[0])
            path = loc.path if loc is not None else server.path
        d = effective(path, "uwsgi_read_timeout")
        seconds = parse_time(d.value) if d is not None else None
        if d is None or seconds is None:
            return NGINX_DEFAULT_READ_TIMEOUT, "default"
        return seconds, d.where


def _pcre(pattern: str, flags: int = 0) -> re.Pattern[str] | None:
    """An nginx (PCRE) regex in Python's dialect: `(?<name>` is `(?P<name>`. None when
    Python cannot compile it (that location or name is then never matched)."""
    text = re.sub(r"\(\?<(?![=!])", "(?P<", pattern)
    try:
        return re.compile(text, flags)
    except (re.error, RecursionError, OverflowError):
        return None


def _split_location(args: Sequence[str]) -> tuple[str, str] | None:
    if len(args) == 2 and args[0] in ("=", "^~", "~", "~*"):
        return args[0], args[1]
    if len(args) != 1:
        return None
    arg = args[0]
    for mod in ("=", "^~", "~*", "~", "@"):
        if arg.startswith(mod):
            return mod, arg if mod == "@" else arg[len(mod):]
    return "", arg


def _passes(block: Block) -> bool:
    if block.get("uwsgi_pass") is not None:
        return True
    return any(c.kind == "if" and c.get("uwsgi_pass") is not None for c in block.children)


def _locations(parent: BlockPath, notes: list[str]) -> tuple[_Location, ...]:
    out = []
    for block in parent[-1].children:
        if block.kind != "location":
            continue
        split = _split_location(block.args)
        if split is None:
            continue
        mod, pattern = split
        regex = None
        if mod in ("~", "~*"):
            regex = _pcre(pattern, re.IGNORECASE if mod == "~*" else 0)
            if regex is None:
                notes.append(f"{block.file}:{block.line}: location regex {pattern!r} is not "
                             "readable here; never matched")
        path = (*parent, block)
        out.append(_Location(mod, pattern, regex, path, _locations(path, notes),
                             _passes(block)))
    return tuple(out)


def _server(path: BlockPath, notes: list[str]) -> _Server:
    block = path[-1]
    exact: set[str] = set()
    head: list[str] = []
    tail: list[str] = []
    regexes = []
    for d in block.all("server_name"):
        for name in d.args:
            if name.startswith("~"):
                rx = _pcre(name[1:], re.IGNORECASE)
                if rx is not None:
                    regexes.append(rx)
            elif name.startswith(("*.", ".")):
                head.append(name.lower())
            elif name.endswith(".*"):
                tail.append(name.lower())
            else:
                exact.add(name.lower().rstrip("."))
    ports: set[int] = set()
    defaults: set[int] = set()
    listens = block.all("listen")
    for d in listens:
        listen = parse_listen(d)
        if listen is None or listen.host.startswith("unix:"):
            continue
        ports.add(listen.port)
        if any(a in ("default_server", "default") for a in d.args[1:]):
            defaults.add(listen.port)
    return _Server(path, frozenset(exact), tuple(head), tuple(tail), tuple(regexes),
                   frozenset(ports) if listens else _DEFAULT_PORTS, frozenset(defaults),
                   _locations(path, notes))


def routes_from_conf(conf: NginxConf) -> NginxRoutes:
    """The servers and locations of a parsed config, ready for lookups."""
    notes: list[str] = []
    servers = tuple(_server(p, notes) for p in conf.servers())
    http = next((p for p in conf.walk("http")), (conf.root,))
    return NginxRoutes(conf.path, servers, http, tuple(notes))


def _host_name(host: str) -> str:
    """A Host header as nginx compares it: lowercase, no port, no trailing dot."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[: name.find("]") + 1]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    return name.rstrip(".")


def _wild_hit(name: str, wild: str, head: bool) -> bool:
    if not head:  # "www.example.*"
        return name.startswith(wild[:-1]) and len(name) > len(wild) - 1
    if wild.startswith("*"):  # "*.example.com": a subdomain only
        return name.endswith(wild[1:]) and len(name) > len(wild) - 1
    return name == wild[1:] or name.endswith(wild)  # ".example.com": both


def _wild_match(name: str, servers: Sequence[_Server], head: bool) -> _Server | None:
    """The server with the longest matching leading (head) or trailing wildcard name."""
    best, best_len = None, 0
    for s in servers:
        for w in (s.head_wild if head else s.tail_wild):
            if len(w) > best_len and _wild_hit(name, w, head):
                best, best_len = s, len(w)
    return best


def select_server(servers: Sequence[_Server], host: str, port: int | None) -> _Server | None:
    """The server nginx picks: among those listening on `port` (all when unknown or none
    does), the exact name, the longest leading wildcard, the longest trailing wildcard, the
    first matching regex in config order, else the port's default server (`default_server`,
    else the first one)."""
    candidates = [s for s in servers if port in s.ports] if port is not None else []
    if not candidates:
        candidates = list(servers)
    if not candidates:
        return None
    name = _host_name(host)
    if name:
        found = next((s for s in candidates if name in s.exact), None)
        found = found or _wild_match(name, candidates, True) or _wild_match(name, candidates,
                                                                            False)
        found = found or next((s for s in candidates
                               if any(rx.search(name) for rx in s.regexes)), None)
        if found is not None:
            return found
    if port is not None:
        marked = next((s for s in candidates if port in s.default_ports), None)
    else:
        marked = next((s for s in candidates if s.default_ports), None)
    return marked or candidates[0]


def find_location(locations: Sequence[_Location], uri: str) -> tuple[_Location | None, bool]:
    """nginx's location lookup (ngx_http_core_find_location) at one level: (location, final).
    `=` exact wins at once; else the longest prefix is remembered and its nested locations
    searched; unless that prefix is `^~`, regexes of this level are then tried in order (the
    first match, with its own nested locations, is final); else the longest prefix."""
    for loc in locations:
        if loc.modifier == "=" and loc.pattern == uri:
            return loc, True
    best = None
    for loc in locations:
        if loc.modifier in ("", "^~") and uri.startswith(loc.pattern) and (
                best is None or len(loc.pattern) > len(best.pattern)):
            best = loc
    found, noregex = best, False
    if best is not None:
        noregex = best.modifier == "^~"
        nested, final = find_location(best.children, uri)
        if final:
            return nested, True
        found = nested or best
    if not noregex:
        for loc in locations:
            if loc.regex is not None and loc.regex.search(uri):
                nested, _ = find_location(loc.children, uri)
                return nested or loc, True
    return found, False


def serving_location(server: _Server, uri: str) -> _Location | None:
    """The location that hands `uri` to uWSGI: nginx's pick when it uwsgi_passes; else the
    server's only location that does (a `try_files ... @app` route); else None (the server's
    own value applies)."""
    loc, _ = find_location(server.locations, uri)
    if loc is not None and loc.passes:
        return loc
    passing = [x for x in server.all_locations() if x.passes]
    return passing[0] if len(passing) == 1 else None


def _nginx_routes(master_pid: int) -> NginxRoutes | SourceError:
    path = nginx_conf_path(master_pid)
    if isinstance(path, SourceError):
        return path
    try:
        user = User.of_process(master_pid)
        return routes_from_conf(load(path, as_user=user))
    except (BoundedReadError, ValueError) as exc:  # NginxConfError is a ValueError
        where = "" if isinstance(exc, NginxConfError) else f"{path}: "
        return SourceError("nginx", f"nginx config not read ({where}{exc}): no nginx deadline")


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True, slots=True)
class Limit:
    """A configured limit and where it was set ("FILE:LINE", "settings")."""

    seconds: float
    source: str


@dataclass(frozen=True)
class DeadlinePlan:
    """What the configs say, read once (plan_for); annotate() applies it to every poll.

    `harakiri`: per uWSGI master pid (only confirmed masters with harakiri on); `masters`: the
    master pids this plan looked at; `nginx`: the routes of nginx_pid's config, None when there
    is no nginx or its config could not be read; `lb`: the LB's idle timeout; `notes`: why a
    deadline is missing, one line each."""

    made_at: float  # time.monotonic()
    lb: Limit | None = None
    harakiri: Mapping[int, Limit] = field(default_factory=dict)
    masters: frozenset[int] = frozenset()
    nginx_pid: int | None = None
    nginx: NginxRoutes | None = None
    notes: tuple[str, ...] = ()

    def due(self, instances: Iterable[UwsgiInstance], nginx_master_pid: int | None,
            now: float | None = None) -> bool:
        """Whether to call plan_for again: REFRESH_S passed (configs change on reload), a
        uWSGI master or the nginx master is not the one this plan read."""
        now = time.monotonic() if now is None else now
        pids = frozenset(i.master_pid for i in instances
                         if i.kind == "instance" and i.master_pid > 0)
        return (now - self.made_at >= REFRESH_S or not pids <= self.masters
                or nginx_master_pid != self.nginx_pid)


def _address_of(inst: UwsgiInstance, host_config: HostConfig,
                addresses: Mapping[int, StatsAddress] | None) -> StatsAddress | None:
    if addresses is not None and inst.index in addresses:
        return addresses[inst.index]
    if inst.index < len(host_config.uwsgi):
        return host_config.uwsgi[inst.index]
    try:
        return parse_stats_address(inst.address)
    except AddressError:
        return None


def _harakiri(address: StatsAddress, master_pid: int) -> Limit | str | None:
    """The instance's harakiri (None: off), or why it could not be known."""
    master = confirm_master(address, master_pid)
    if isinstance(master, Refusal):
        return f"harakiri of {address}: not read ({master.message})"
    options = instance_options(master.pid)
    if isinstance(options, SourceError):
        return f"harakiri of {address}: not read ({options.message})"
    seconds = get_int(options, "harakiri")
    opt = last(options, "harakiri")
    if not seconds or seconds <= 0 or opt is None:
        return None
    return Limit(float(seconds), opt.where)


def plan_for(host_config: HostConfig, settings: Settings, instances: Sequence[UwsgiInstance],
             nginx_master_pid: int | None, *,
             addresses: Mapping[int, StatsAddress] | None = None,
             previous: DeadlinePlan | None = None) -> DeadlinePlan:
    """Read what the deadlines need: each instance's harakiri (through its kernel-confirmed
    master), the running nginx's config, the LB idle timeout of the host's settings.

    `settings`: the ones that apply to this host (Targets.settings_for); `addresses`: each
    instance's stats address by index when the caller knows more than the hosts file (an
    emperor's vassals), else the hosts file's, else the instance's own `address`.
    `nginx_master_pid`: the nginx master the collector found behind the status URL.
    `previous`: a plan whose nginx routes are reused when the nginx master is the same and the
    plan is younger than REFRESH_S (e.g. a re-plan because a uWSGI master changed)."""
    notes: list[str] = []
    harakiri: dict[int, Limit] = {}
    masters = set()
    for inst in instances:
        if inst.kind != "instance" or inst.master_pid <= 0:
            continue
        masters.add(inst.master_pid)
        address = _address_of(inst, host_config, addresses)
        if address is None:
            notes.append(f"harakiri of {inst.address}: not read (unknown stats address)")
            continue
        got = _harakiri(address, inst.master_pid)
        if isinstance(got, Limit):
            harakiri[inst.master_pid] = got
        elif got is not None:
            notes.append(got)
    nginx: NginxRoutes | None = None
    now = time.monotonic()
    if nginx_master_pid is not None:
        if (previous is not None and previous.nginx_pid == nginx_master_pid
                and previous.nginx is not None and now - previous.made_at < REFRESH_S):
            nginx = previous.nginx
        else:
            routes = _nginx_routes(nginx_master_pid)
            if isinstance(routes, SourceError):
                notes.append(routes.message)
            else:
                nginx = routes
                notes.extend(routes.notes)
    lb = Limit(settings.lb_idle_timeout, "settings")
    return DeadlinePlan(made_at=now, lb=lb, harakiri=harakiri, masters=frozenset(masters),
                        nginx_pid=nginx_master_pid, nginx=nginx, notes=tuple(notes))


# ------------------------------------------------------------------ applying it


def _port_and_path(request: Request) -> tuple[int | None, str]:
    """SERVER_PORT (which server block may have taken it) and PATH_INFO (nginx's normalised
    $document_uri, what locations match) from the request's variables, in one pass."""
    port_text = path = None
    for k, v in request.vars:
        if k == "SERVER_PORT" and port_text is None:
            port_text = v
        elif k == "PATH_INFO" and path is None:
            path = v
        if port_text is not None and path is not None:
            break
    port = int(port_text) if port_text and port_text.isdigit() and len(port_text) < 6 else None
    return port, path or request.uri


def _age(request: Request, now: float | None) -> float | None:
    if request.running_s is not None:
        return request.running_s
    if request.started_at is not None and now is not None:
        return max(0.0, now - request.started_at)
    return None


def deadlines_for(request: Request, master_pid: int, plan: DeadlinePlan,
                  now: float | None = None) -> tuple[Deadline, ...]:
    """The request's deadlines, soonest first (past ones are negative and come first)."""
    age = _age(request, now)
    if age is None or not math.isfinite(age):
        return ()
    out = []
    h = plan.harakiri.get(master_pid)
    if h is not None:
        out.append(Deadline("harakiri", h.seconds - age, h.seconds, h.source))
    if plan.nginx is not None:
        port, path = _port_and_path(request)
        limit, source = plan.nginx.read_timeout(request.host, path, port)
        out.append(Deadline("nginx_read_timeout", limit - age, limit, source))
    if plan.lb is not None:
        out.append(Deadline("lb_idle_timeout", plan.lb.seconds - age, plan.lb.seconds,
                            plan.lb.source))
    return tuple(sorted(out, key=lambda d: d.after_s))


def _replace_last(cls: Callable[..., T], name: str) -> Callable[[T, Any], T]:
    """A faster dataclasses.replace(obj, name=value) for `cls`'s last field (replace()
    costs ~5 us; a 64x8 instance has 512 requests to annotate every poll), falling back to
    replace() should the field ever not be the last one."""
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    if names[-1] != name:
        return lambda obj, value: replace(obj, **{name: value})  # type: ignore[type-var]
    head = attrgetter(*names[:-1])
    return lambda obj, value: cls(*head(obj), value)


_with_deadlines = _replace_last(Request, "deadlines")
_with_request = _replace_last(Core, "request")


def _worker(w: Worker, master_pid: int, plan: DeadlinePlan, now: float | None) -> Worker:
    if not any(c.request is not None for c in w.cores):
        return w
    cores = tuple(
        c if c.request is None else _with_request(c, _with_deadlines(
            c.request, deadlines_for(c.request, master_pid, plan, now)))
        for c in w.cores)
    return replace(w, cores=cores)


def annotate(snapshot: HostSnapshot, plan: DeadlinePlan,
             now: float | None = None) -> HostSnapshot:
    """`snapshot` with every request in flight carrying its deadlines (arithmetic only; the
    configs were read by plan_for). `now`: the time to count from for a request without
    running_s (default: the snapshot's taken_at)."""
    now = snapshot.taken_at if now is None else now
    instances = tuple(
        inst if inst.kind != "instance" else replace(
            inst, workers=tuple(_worker(w, inst.master_pid, plan, now) for w in inst.workers))
        for inst in snapshot.uwsgi)
    return replace(snapshot, uwsgi=instances)


# ------------------------------------------------------------------ words


_CLIENT_FACING = ("nginx_read_timeout", "lb_idle_timeout")


def nearest(deadlines: Iterable[Deadline]) -> Deadline | None:
    """The one deadline to show beside a request: one the client is already past (the first
    passed: that is what the client got), else the soonest to come, else a harakiri passed."""
    items = list(deadlines)
    gone = [d for d in items if d.past and d.name in _CLIENT_FACING]
    if gone:
        return min(gone, key=lambda d: d.after_s)
    coming = [d for d in items if not d.past]
    if coming:
        return min(coming, key=lambda d: d.after_s)
    return min(items, key=lambda d: d.after_s, default=None)


def _seconds(value: float) -> str:
    if value < 1:
        return "<1 s"
    return f"{int(value)} s"


def _limit(value: float) -> str:
    return f"{value:g} s"


def describe(d: Deadline) -> str:
    """One phrase: "nginx 504 in 2 s", "past nginx's 60 s: the client already has a 504"."""
    if not d.past:
        what = {"harakiri": "harakiri", "nginx_read_timeout": "nginx 504",
                "lb_idle_timeout": "LB 504"}[d.name]
        return f"{what} in {_seconds(d.after_s)}"
    if d.name == "nginx_read_timeout":
        return f"past nginx's {_limit(d.limit_s)}: the client already has a 504"
    if d.name == "lb_idle_timeout":
        return f"past the LB's {_limit(d.limit_s)} idle timeout: the client already has a 504"
    return f"past harakiri's {_limit(d.limit_s)}: uWSGI has not killed it yet"

"""Immutable snapshots of what one poll saw.

Every layer above the sources (poller, TUI, agent, doctor) receives these frozen objects and
never a raw stats document, so a widget can keep a snapshot as long as it likes and compare it
with the next one without anything changing underneath it. Text fields that come from a stats
document (URIs, headers, socket names) are already redacted and stripped of control characters
by the sources; they are still untrusted and must be displayed as plain text, never as markup.

Units: times are seconds (float), sizes are bytes, epochs are Unix time in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from stackmon.logs.host import LogSummary
from stackmon.sources.lb_probe import HealthCheck

Level = Literal["ok", "slow", "critical"]
LEVELS: tuple[Level, ...] = ("ok", "slow", "critical")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How long a request may run before it is highlighted (slow) or alarming (critical)."""

    slow: float = 10.0
    critical: float = 60.0

    def level(self, running_s: float | None) -> Level:
        if running_s is None:
            return "ok"
        if running_s >= self.critical:
            return "critical"
        if running_s >= self.slow:
            return "slow"
        return "ok"


@dataclass(frozen=True, slots=True)
class SourceError:
    """A source that could not give a usable sample, and why, in words a user can act on."""

    source: str
    message: str


DeadlineName = Literal["harakiri", "nginx_read_timeout", "lb_idle_timeout"]
DEADLINE_NAMES: tuple[DeadlineName, ...] = ("harakiri", "nginx_read_timeout", "lb_idle_timeout")


@dataclass(frozen=True, slots=True)
class Deadline:
    """A limit a request in flight runs into (stackmon.deadlines computes them).

    `after_s`: seconds from the snapshot until the request hits it, negative once past (a
    request past nginx's read timeout is one whose client already has a 504). `limit_s`: the
    configured limit; `source`: where it was set ("uwsgi.ini:12", "nginx.conf:40"), "default"
    when nothing sets it, or "settings" for the hosts file's lb_idle_timeout.
    """

    name: DeadlineName
    after_s: float
    limit_s: float
    source: str = "default"

    @property
    def past(self) -> bool:
        return self.after_s < 0


@dataclass(frozen=True, slots=True)
class Request:
    """A request in flight on one core of one worker (from the stats document's vars)."""

    core: int
    method: str
    uri: str
    remote_addr: str
    host: str
    started_at: float | None
    running_s: float | None
    level: Level
    # Every KEY=VALUE the stats server sent, secrets already redacted, in its order.
    vars: tuple[tuple[str, str], ...] = ()
    # The deadlines it runs into, soonest first (empty until stackmon.deadlines.annotate).
    deadlines: tuple[Deadline, ...] = ()


# A request's identity across polls: (core, the core's request count, start time). uWSGI
# counts a core's request when it ends, so a new request on the same core has a new count even
# with the same URI in the same second; the URI is left out, it can be missing in one poll (the
# vars copy raced) and not the next. A kill carries the keys the user confirmed and is refused
# when one of them has ended by the kill's own stats read (stackmon.actions.kill).
RequestKey = tuple[int, int, float | None]


@dataclass(frozen=True, slots=True)
class Core:
    id: int
    requests: int
    in_request: bool
    request: Request | None


@dataclass(frozen=True, slots=True)
class Worker:
    """One worker of a uWSGI instance, as the stats document lists it.

    `id` is the worker's POSITION in the document's `workers` list, counted from 1: uWSGI
    numbers its workers 1..N in that order, and the position is the only identity every
    worker has. The document's own `id` field is not: in cheaper mode the workers not spawned
    yet all say `"id": 0` (several rows with one id would collapse into one in any table keyed
    by it), and some producers omit it. For a spawned worker of a real uWSGI both agree; when
    they do not, the parser keeps the position and adds a warning to the instance. So the id a
    user reads in a row, types in `stackmon kill HOST ID`, and the agent's URL carries are the
    same number, and it is uWSGI's own worker number ("worker 3" in its log).

    A worker without a process has `pid` 0: `cheap` (not spawned by cheaper mode: status
    "cheap"), or dead and waiting for its respawn (status "idle"). `spawned` tells them from
    live workers; actions refuse them with that reason.
    """

    id: int
    pid: int
    status: str  # open-ended: idle, busy, cheap, pause, sig<N>, ...
    accepting: bool
    requests: int
    exceptions: int
    harakiri_count: int
    respawn_count: int
    avg_rt_ms: float
    rss: int
    vsz: int
    last_spawn: float
    running_time_s: float
    tx: int
    cores: tuple[Core, ...] = ()

    @property
    def requests_in_flight(self) -> tuple[Request, ...]:
        return tuple(c.request for c in self.cores if c.request is not None)

    def requests_by_key(self) -> dict[RequestKey, Request]:
        """Its requests in flight by identity (RequestKey)."""
        return {(c.id, c.requests, c.request.started_at): c.request for c in self.cores
                if c.request is not None}

    @property
    def busy(self) -> bool:
        return self.status == "busy" or any(c.in_request for c in self.cores)

    @property
    def cheap(self) -> bool:
        """Not spawned yet (cheaper mode): a slot the master may fill under load."""
        return self.status == "cheap"

    @property
    def spawned(self) -> bool:
        """Whether a process stands behind this worker (a pid): false for cheap workers and
        for a dead worker waiting for its respawn."""
        return self.pid > 0

    @property
    def level(self) -> Level:
        """The worst level of the requests it is running."""
        worst = 0
        for r in self.requests_in_flight:
            worst = max(worst, LEVELS.index(r.level))
        return LEVELS[worst]


@dataclass(frozen=True, slots=True)
class Socket:
    """A uWSGI listening socket; queue figures from the stats server or, for unix sockets
    (where uWSGI always reports 0), from the kernel."""

    name: str
    proto: str
    queue: int
    max_queue: int
    shared: bool = False
    source: Literal["stats", "kernel"] = "stats"


@dataclass(frozen=True, slots=True)
class Vassal:
    """One vassal of a uWSGI emperor, from the emperor's stats document (`vassals[]`), plus
    where its own stats server is when its config names one.

    `name` is the document's `id`: the vassal's config file name as the emperor's monitor
    found it (`app1.ini`); `monitor` is that monitor's argument (the vassals directory, or a
    glob). `config` is the config file's path on this host ("" when not located) and `stats`
    its `stats` option as an address stackmon can poll (`http://...` when the config sets
    `stats-http`), "" when it has none or the config could not be read (`stats_note` says why).
    """

    name: str
    pid: int
    ready: bool = False
    accepting: bool = False
    respawns: int = 0
    born: float = 0.0
    last_run: float = 0.0
    uid: int | None = None
    gid: int | None = None
    monitor: str = ""
    config: str = ""
    stats: str = ""
    stats_note: str = ""


@dataclass(frozen=True, slots=True)
class UwsgiInstance:
    """One uWSGI stats server's document.

    `kind` is "instance" for a uWSGI master with workers, "emperor" for an emperor's stats
    server (`emperor-stats`): its document has `emperor` and `vassals` and no `workers`, and an
    emperor is never reported as an instance without workers. Its vassals are in `vassals`;
    each is a uWSGI instance of its own, polled at its own stats address.
    """

    address: str
    version: str
    master_pid: int
    listen_queue: int
    listen_queue_max: int
    sockets: tuple[Socket, ...]
    workers: tuple[Worker, ...]
    uid: int | None = None
    gid: int | None = None
    cwd: str = ""
    signal_queue: int = 0
    # Non-fatal oddities found while parsing (e.g. "3 bytes of invalid UTF-8 replaced").
    warnings: tuple[str, ...] = ()
    # Position of this instance in its host's configured `uwsgi` list: what actions name. An
    # instance that failed its poll is missing from HostSnapshot.uwsgi, so the position in
    # that tuple is not this.
    index: int = 0
    # Seconds since this instance's stats last answered, when they stopped answering (a hung
    # master): its last good workers and requests are carried as they were (ages not grown).
    stale_s: float | None = None
    kind: Literal["instance", "emperor"] = "instance"
    vassals: tuple[Vassal, ...] = ()

    @property
    def busy_workers(self) -> int:
        return sum(1 for w in self.workers if w.busy)

    @property
    def cheap_workers(self) -> int:
        """Workers cheaper mode has not spawned (listed by uWSGI, no process)."""
        return sum(1 for w in self.workers if w.cheap)

    def ages_measured_at(self) -> float | None:
        """When its request ages were measured (epoch s): a request's start plus its age is
        the parse's clock (the earliest such sum, in case one start lay ahead of that clock
        and its age was clamped to 0). Stale data is shown as of this moment: measured from
        `stale_s`, the screen added the stats' timeout (2 s) to every age. None: no request
        has both figures."""
        return min((r.started_at + r.running_s for w in self.workers
                    for r in w.requests_in_flight
                    if r.started_at is not None and r.running_s is not None), default=None)


@dataclass(frozen=True, slots=True)
class NginxStatus:
    url: str
    active: int
    accepts: int
    handled: int
    requests: int
    reading: int
    writing: int
    waiting: int
    sampled_at: float
    # Requests per second since the previous sample of the same URL; None on the first.
    requests_per_s: float | None = None

    @property
    def dropped(self) -> int:
        """Connections accepted but not handled: nginx ran out of worker_connections."""
        return self.accepts - self.handled


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening socket as the kernel sees it (sock_diag): current accept queue and backlog."""

    address: str
    kind: Literal["tcp", "unix"]
    owner: str  # "uwsgi", "nginx" or "" when no monitored process holds it
    queue: int
    backlog: int
    inode: int = 0
    pids: tuple[int, ...] = ()
    # The stats address of the monitored uWSGI instance whose master holds it ("" for nginx's,
    # or when not known): set by stackmon.collect, whatever pid namespace the master runs in.
    instance: str = ""


@dataclass(frozen=True, slots=True)
class ProcessFds:
    pid: int
    role: str  # uwsgi-master, uwsgi-worker, nginx-master, nginx-worker
    open: int
    limit: int  # soft "Max open files"; 0 when unknown
    hard_limit: int = 0


@dataclass(frozen=True, slots=True)
class SystemFds:
    open: int
    max: int
    nr_open: int = 0


@dataclass(frozen=True, slots=True)
class FdReport:
    system: SystemFds | None
    processes: tuple[ProcessFds, ...] = ()


@dataclass(frozen=True, slots=True)
class KernelCounters:
    somaxconn: int | None
    listen_overflows: int | None
    listen_drops: int | None


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    name: str
    taken_at: float
    reachable: bool
    # Seconds since the last good sample when this one is older data carried forward; else None.
    stale_s: float | None = None
    errors: tuple[SourceError, ...] = ()
    uwsgi: tuple[UwsgiInstance, ...] = ()
    nginx: NginxStatus | None = None
    listeners: tuple[Listener, ...] = ()
    fds: FdReport = field(default_factory=lambda: FdReport(system=None))
    kernel: KernelCounters = field(
        default_factory=lambda: KernelCounters(somaxconn=None, listen_overflows=None,
                                               listen_drops=None)
    )
    group: str | None = None
    # What the clients get, from the logs over the last window (None: no log source).
    logs: LogSummary | None = None
    # The load balancer's health check as stackmon probes it (None: no `health` URL).
    health: HealthCheck | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    taken_at: float
    hosts: tuple[HostSnapshot, ...]

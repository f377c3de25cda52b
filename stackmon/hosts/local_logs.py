"""Which logs a local host follows: named in the hosts file, or found from the running masters.

Runs as root, on paths that configuration owned by other users names, so every path is
checked before it is followed:
- a uWSGI instance's log is looked up only through its kernel-confirmed master (the holder of
  its stats listener, stackmon.trust), never through the pid a stats document claims, and it is
  read only if that master's user could read it (root must not read /etc/shadow because a uWSGI
  config says `logto = /etc/shadow`);
- nginx's logs are looked up through the nginx master that holds the stub_status listener
  (found from the kernel by the collector), and its config and logs are read with the rights of
  that master's user.
A log that is refused, or that is not a file (syslog, journald, stderr to a terminal), becomes a
LogSpec with a reason, which the UI shows instead of zeros.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from stackmon.addresses import StatsAddress
from stackmon.bounded_io import BoundedReadError, User, may_read
from stackmon.config import HostConfig
from stackmon.logs.discover import LogTarget, nginx_logs, uwsgi_log
from stackmon.logs.host import LogSpec
from stackmon.model import UwsgiInstance
from stackmon.trust import Refusal, confirm_master


def _readable_by(path: str, user: User | None) -> str | None:
    """None when `user` (None: anyone; we are the one configured to read it) may read `path`,
    else the reason it is not followed."""
    if user is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # not there yet: the tail says "does not exist" and picks it up later
    if may_read(st, user):
        return None
    return (f"{path} is not readable by uid {user.uid}, whose configuration names it; not "
            "read on its behalf")


def _spec(target: LogTarget, user: User | None, label: str | None = None) -> LogSpec:
    if target.path is not None and (why := _readable_by(target.path, user)):
        return LogSpec(kind=target.kind, path=None, not_file=why, where=target.where,
                       label=label)
    return LogSpec.from_target(target, label)


def uwsgi_specs(config: HostConfig, instances: Sequence[UwsgiInstance],
                addresses: Mapping[int, StatsAddress]) -> list[LogSpec]:
    """One spec per instance: the hosts file's `uwsgi_log` entry, else its master's config.
    `addresses`: each instance's stats address by its index (configured ones and vassals)."""
    specs = []
    for inst in instances:
        label = str(inst.index)
        if inst.index < len(config.uwsgi_log):
            specs.append(LogSpec(kind="uwsgi", path=config.uwsgi_log[inst.index],
                                 where="hosts file", label=label))
            continue
        address = addresses.get(inst.index)
        if address is None:
            continue
        master = confirm_master(address, inst.master_pid)
        if isinstance(master, Refusal):
            specs.append(LogSpec(kind="uwsgi", path=None, label=label, where="uWSGI master",
                                 not_file=f"not looked up: {master.message}"))
            continue
        user = User(master.uid, master.gids)
        specs.append(_spec(uwsgi_log(master.pid), user, label))
    return specs


def nginx_specs(config: HostConfig, nginx_roles: dict[int, str]) -> list[LogSpec]:
    """The access and error logs: from the hosts file, else from the running master."""
    specs: list[LogSpec] = []
    masters = sorted(pid for pid, role in nginx_roles.items() if role == "nginx-master")
    found_access: tuple[LogTarget, ...] = ()
    found_errors: tuple[LogTarget, ...] = ()
    user: User | None = None
    problem = "no nginx master found behind the nginx status URL" if config.nginx else \
        "no nginx status URL configured for this host"
    if masters:
        try:
            user = User.of_process(masters[0])
        except (BoundedReadError, ValueError) as exc:
            problem = f"nginx master {masters[0]}: {exc}"
        else:
            logs = nginx_logs(masters[0], as_user=user)
            found_access, found_errors = logs.access, logs.errors
            problem = logs.error or ""
    if config.nginx_access_log:
        fmt = next((t.log_format for t in found_access if t.path == config.nginx_access_log),
                   None)
        specs.append(LogSpec(kind="nginx_access", path=config.nginx_access_log,
                             log_format=fmt, where="hosts file"))
    else:
        specs.extend(_spec(t, user) for t in found_access)
    if config.nginx_error_log:
        specs.append(LogSpec(kind="nginx_error", path=config.nginx_error_log,
                             where="hosts file"))
    else:
        specs.extend(_spec(t, user) for t in found_errors)
    kinds = {s.kind for s in specs}
    for kind in ("nginx_access", "nginx_error"):
        if kind not in kinds and (config.nginx or masters):
            specs.append(LogSpec(kind=kind, path=None, where="nginx",
                                 not_file=f"not found: {problem or 'no such log configured'}"))
    return specs

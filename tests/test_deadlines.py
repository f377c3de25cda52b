"""Deadlines of requests in flight (stackmon.deadlines): nginx's location and server
selection on real configs parsed by the doctor's parser, the arithmetic, the words, and a real
stack with `harakiri = 30` and `uwsgi_read_timeout 20s` read from the running processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings
from stackmon.deadlines import (
    REFRESH_S,
    DeadlinePlan,
    Limit,
    NginxRoutes,
    annotate,
    deadlines_for,
    describe,
    nearest,
    nginx_conf_path,
    plan_for,
    routes_from_conf,
)
from stackmon.demo.launcher import Stack, server_name
from stackmon.doctor.nginx_conf import load
from stackmon.hosts.local import LocalHost
from stackmon.model import Core, Deadline, HostSnapshot, Request, UwsgiInstance, Worker
from stackmon.render_text import render_host

# ------------------------------------------------------------------ helpers


def routes(tmp_path: Path, http_body: str) -> NginxRoutes:
    conf = tmp_path / "nginx.conf"
    conf.write_text("events {}\nhttp {\n" + http_body + "\n}\n")
    return routes_from_conf(load(conf))


def timeout_line(tmp_path: Path, r: NginxRoutes, host: str, uri: str,
                 port: int | None = None) -> tuple[float, int | str]:
    """(seconds, line number in nginx.conf or "default") of the request's read timeout."""
    seconds, source = r.read_timeout(host, uri, port)
    if source == "default":
        return seconds, source
    file, _, line = source.rpartition(":")
    assert file == str(tmp_path / "nginx.conf")
    return seconds, int(line)


def request(running_s: float | None, *, host: str = "", uri: str = "/",
            vars: tuple[tuple[str, str], ...] = ()) -> Request:
    return Request(core=0, method="GET", uri=uri, remote_addr="127.0.0.1", host=host,
                   started_at=None, running_s=running_s, level="ok", vars=vars)


# ------------------------------------------------------------------ locations

LOCATIONS = """\
    uwsgi_read_timeout 11s;
    server {
        listen 8080;
        server_name app.test;
        uwsgi_read_timeout 12s;
        location = /exact { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 1s; }
        location / { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 2s; }
        location /api/ { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 3s; }
        location /api/long/ { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 4s; }
        location ^~ /static/ { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 5s; }
        location ~ \\.csv$ { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 6s; }
        location ~* \\.(CSV|xls)$ { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 7s; }
        location /inherit/ { uwsgi_pass unix:/x.sock; }
        location /nested/ {
            uwsgi_pass unix:/x.sock;
            uwsgi_read_timeout 8s;
            location /nested/deep/ { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 9s; }
            location ~ \\.pdf$ { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 10s; }
        }
    }
"""


@pytest.mark.parametrize(("uri", "seconds"), [
    ("/exact", 1),                 # = wins over the / prefix
    ("/exact/more", 2),            # = is exact only
    ("/", 2),
    ("/anything", 2),
    ("/api/users", 3),             # longest prefix
    ("/api/long/x", 4),            # the longer of two prefixes
    ("/api/report.csv", 6),        # a regex beats the longest prefix
    ("/api/report.CSV", 7),        # ~ is case-sensitive, ~* is not: the second one matches
    ("/static/report.csv", 5),     # ^~ stops the regexes
    ("/x.csv?format=.xls", 6),     # the query string is not matched
    ("/inherit/x", 12),            # unset in the location: the server's value
    ("/nested/x", 8),
    ("/nested/deep/x", 9),         # a nested prefix
    ("/nested/a.pdf", 10),         # a nested regex is tried before the outer ones
    ("/nested/a.csv", 6),          # ...and the outer regexes after it
])
def test_location_resolution(tmp_path: Path, uri: str, seconds: int) -> None:
    r = routes(tmp_path, LOCATIONS)
    assert r.read_timeout("app.test", uri, 8080)[0] == seconds


def test_regexes_are_tried_in_config_order(tmp_path: Path) -> None:
    r = routes(tmp_path, """\
    server {
        location ~ /a { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 1s; }
        location ~ /ab { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 2s; }
    }""")
    assert r.read_timeout("", "/abc")[0] == 1  # first match, not longest


def test_source_names_the_directive_and_default_applies(tmp_path: Path) -> None:
    r = routes(tmp_path, """\
    server {
        location / { uwsgi_pass unix:/x.sock; }
    }
    server {
        server_name slow.test;
        location / {
            uwsgi_pass unix:/x.sock;
            uwsgi_read_timeout 2m;
        }
    }""")
    assert timeout_line(tmp_path, r, "x.test", "/") == (60.0, "default")
    assert timeout_line(tmp_path, r, "slow.test", "/") == (120.0, 10)


def test_http_value_applies_without_a_location_value(tmp_path: Path) -> None:
    r = routes(tmp_path, """\
    uwsgi_read_timeout 45s;
    server { location / { uwsgi_pass unix:/x.sock; } }""")
    assert timeout_line(tmp_path, r, "", "/") == (45.0, 3)


def test_a_location_that_does_not_pass_gives_way_to_the_one_that_does(tmp_path: Path) -> None:
    r = routes(tmp_path, """\
    server {
        uwsgi_read_timeout 30s;
        location / { try_files $uri @app; uwsgi_read_timeout 5s; }
        location @app { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 25s; }
    }""")
    assert r.read_timeout("", "/page")[0] == 25


def test_without_one_passing_location_the_server_value_applies(tmp_path: Path) -> None:
    r = routes(tmp_path, """\
    server {
        uwsgi_read_timeout 30s;
        location / { root /srv; uwsgi_read_timeout 5s; }
        location /a/ { uwsgi_pass unix:/a.sock; uwsgi_read_timeout 1s; }
        location /b/ { uwsgi_pass unix:/b.sock; uwsgi_read_timeout 2s; }
    }""")
    assert r.read_timeout("", "/page")[0] == 30
    assert r.read_timeout("", "/b/x")[0] == 2


# ------------------------------------------------------------------ servers

SERVERS = """\
    server {
        listen 80;
        server_name first.test;
        uwsgi_read_timeout 1s;
        location / { uwsgi_pass unix:/x.sock; }
    }
    server {
        listen 80 default_server;
        server_name _;
        uwsgi_read_timeout 2s;
        location / { uwsgi_pass unix:/x.sock; }
    }
    server {
        listen 80;
        server_name exact.example.com;
        uwsgi_read_timeout 3s;
        location / { uwsgi_pass unix:/x.sock; }
    }
    server {
        listen 80;
        server_name *.example.com;
        uwsgi_read_timeout 4s;
        location / { uwsgi_pass unix:/x.sock; }
    }
    server {
        listen 80;
        server_name *.deep.example.com;
        uwsgi_read_timeout 5s;
        location / { uwsgi_pass unix:/x.sock; }
    }
    server {
        listen 80;
        server_name www.example.*;
        uwsgi_read_timeout 6s;
        location / { uwsgi_pass unix:/x.sock; }
    }
    server {
        listen 80;
        server_name ~^api(?<n>\\d+)\\.test$ ~^api\\d;
        uwsgi_read_timeout 7s;
        location / { uwsgi_pass unix:/x.sock; }
    }
    server {
        listen 80;
        server_name .dot.test;
        uwsgi_read_timeout 8s;
        location / { uwsgi_pass unix:/x.sock; }
    }
    server {
        listen 8081;
        server_name exact.example.com;
        uwsgi_read_timeout 9s;
        location / { uwsgi_pass unix:/x.sock; }
    }
"""


@pytest.mark.parametrize(("host", "port", "seconds"), [
    ("first.test", 80, 1),
    ("FIRST.test:80", 80, 1),           # case and port ignored
    ("nobody.test", 80, 2),             # the port's default_server, not the first server
    ("", 80, 2),                        # no Host header
    ("exact.example.com", 80, 3),       # exact beats *.example.com
    ("a.example.com", 80, 4),
    ("a.deep.example.com", 80, 5),      # the longest leading wildcard
    ("www.example.org", 80, 6),         # trailing wildcard
    ("www.example.com", 80, 4),         # leading wildcards before trailing ones
    ("api12.test", 80, 7),              # regex (PCRE named group)
    ("dot.test", 80, 8),                # .dot.test is dot.test too
    ("x.dot.test", 80, 8),
    ("exact.example.com", 8081, 9),     # servers listening on another port are not candidates
    ("other.test", 8081, 9),            # the only server on 8081 is its default
    ("exact.example.com", None, 3),     # unknown port: every server
])
def test_server_selection(tmp_path: Path, host: str, port: int | None, seconds: int) -> None:
    r = routes(tmp_path, SERVERS)
    assert r.read_timeout(host, "/", port)[0] == seconds


def test_without_default_server_the_first_on_the_port_is_the_default(tmp_path: Path) -> None:
    r = routes(tmp_path, """\
    server { listen 9000; server_name a.test; uwsgi_read_timeout 1s;
             location / { uwsgi_pass unix:/x.sock; } }
    server { listen 9001; server_name b.test; uwsgi_read_timeout 2s;
             location / { uwsgi_pass unix:/x.sock; } }
    server { listen 9001; server_name c.test; uwsgi_read_timeout 3s;
             location / { uwsgi_pass unix:/x.sock; } }""")
    assert r.read_timeout("zzz.test", "/", 9001)[0] == 2
    assert r.read_timeout("c.test", "/", 9001)[0] == 3


# ------------------------------------------------------------------ arithmetic and words


def plan(*, harakiri: float | None = 30.0, nginx: NginxRoutes | None = None,
         lb: float | None = 60.0) -> DeadlinePlan:
    return DeadlinePlan(
        made_at=time.monotonic(), lb=Limit(lb, "settings") if lb else None,
        harakiri={100: Limit(harakiri, "/srv/uwsgi.ini:7")} if harakiri else {},
        masters=frozenset({100}), nginx=nginx)


def test_deadlines_count_down_from_the_request_age(tmp_path: Path) -> None:
    r = routes(tmp_path, """\
    server { listen 8080; server_name app.test;
             location / { uwsgi_pass unix:/x.sock; uwsgi_read_timeout 20s; } }
    server { listen 8080; server_name other.test;
             location / { uwsgi_pass unix:/x.sock; } }""")
    req = request(12.5, host="app.test", uri="/x?y=1",
                  vars=(("SERVER_PORT", "8080"), ("PATH_INFO", "/x")))
    got = deadlines_for(req, 100, plan(nginx=r))
    assert [(d.name, d.after_s, d.limit_s) for d in got] == [
        ("nginx_read_timeout", 7.5, 20.0), ("harakiri", 17.5, 30.0),
        ("lb_idle_timeout", 47.5, 60.0)]
    assert got[1].source == "/srv/uwsgi.ini:7"
    other = deadlines_for(request(12.5, host="other.test"), 100, plan(nginx=r, lb=90.0))
    assert [(d.name, d.after_s, d.source) for d in other] == [
        ("harakiri", 17.5, "/srv/uwsgi.ini:7"), ("nginx_read_timeout", 47.5, "default"),
        ("lb_idle_timeout", 77.5, "settings")]
    # another master's requests have no harakiri; no age, no deadlines
    assert [d.name for d in deadlines_for(req, 999, plan(nginx=r))] == [
        "nginx_read_timeout", "lb_idle_timeout"]
    assert deadlines_for(request(None), 100, plan()) == ()


def test_started_at_counts_when_running_s_is_missing() -> None:
    req = Request(core=0, method="GET", uri="/", remote_addr="", host="", started_at=1000.0,
                  running_s=None, level="ok")
    got = deadlines_for(req, 100, plan(lb=None), now=1010.0)
    assert [(d.name, d.after_s) for d in got] == [("harakiri", 20.0)]


def test_nearest_and_its_words() -> None:
    nginx_past = Deadline("nginx_read_timeout", -3.0, 60.0, "default")
    lb_past = Deadline("lb_idle_timeout", -1.0, 62.0, "settings")
    harakiri_soon = Deadline("harakiri", 2.4, 65.0, "uwsgi.ini:3")
    assert nearest([harakiri_soon, lb_past, nginx_past]) is nginx_past  # the client's 504
    assert describe(nginx_past) == "past nginx's 60 s: the client already has a 504"
    assert describe(lb_past) == "past the LB's 62 s idle timeout: the client already has a 504"
    soon = Deadline("nginx_read_timeout", 2.9, 60.0, "default")
    assert nearest([harakiri_soon, soon]) is harakiri_soon
    assert describe(soon) == "nginx 504 in 2 s"
    assert describe(harakiri_soon) == "harakiri in 2 s"
    assert describe(Deadline("lb_idle_timeout", 0.2, 60.0)) == "LB 504 in <1 s"
    gone = Deadline("harakiri", -2.0, 30.0, "uwsgi.ini:3")
    assert nearest([gone]) is gone
    assert describe(gone) == "past harakiri's 30 s: uWSGI has not killed it yet"
    assert nearest([]) is None


def snapshot_with(*requests: Request, master_pid: int = 100) -> HostSnapshot:
    busy = [Core(i, 1, True, replace(r, core=i)) for i, r in enumerate(requests)]
    cores = (*busy, Core(len(requests), 0, False, None))
    worker = Worker(id=1, pid=200, status="busy", accepting=True, requests=1, exceptions=0,
                    harakiri_count=0, respawn_count=0, avg_rt_ms=0, rss=0, vsz=0, last_spawn=0,
                    running_time_s=0, tx=0, cores=cores)
    inst = UwsgiInstance(address="127.0.0.1:1", version="2.0", master_pid=master_pid,
                         listen_queue=0, listen_queue_max=100, sockets=(), workers=(worker,))
    return HostSnapshot(name="h", taken_at=1000.0, reachable=True, uwsgi=(inst,))


def test_annotate_fills_every_request_and_keeps_the_rest() -> None:
    snap = snapshot_with(request(40.0), request(5.0))
    out = annotate(snap, plan())
    reqs = out.uwsgi[0].workers[0].requests_in_flight
    assert [[(d.name, d.after_s) for d in r.deadlines] for r in reqs] == [
        [("harakiri", -10.0), ("lb_idle_timeout", 20.0)],
        [("harakiri", 25.0), ("lb_idle_timeout", 55.0)]]
    assert out.uwsgi[0].workers[0].cores[2].request is None
    assert snap.uwsgi[0].workers[0].requests_in_flight[0].deadlines == ()  # frozen input
    text = "\n".join(render_host(out))
    # a passed harakiri gives way to what the client runs into next
    assert "running 40s  · LB 504 in 20 s" in text
    assert "core 1: GET /  from 127.0.0.1  running 5s  · harakiri in 25 s" in text


def test_plan_is_due_when_a_master_changes_or_it_is_old() -> None:
    snap = snapshot_with(request(1.0))
    p = plan()
    assert not p.due(snap.uwsgi, None)
    assert p.due(snapshot_with(request(1.0), master_pid=101).uwsgi, None)
    assert p.due(snap.uwsgi, 4242)  # an nginx master appeared
    assert p.due(snap.uwsgi, None, now=p.made_at + REFRESH_S)
    # a stats document without a master pid is no reason to read every config each poll
    assert not p.due(snap.uwsgi + snapshot_with(request(1.0), master_pid=0).uwsgi, None)


def test_plan_for_notes_what_it_could_not_read() -> None:
    """A master that the kernel does not confirm gives no harakiri and says why; a pid that is
    not nginx gives no nginx deadline; the LB's comes from the host's settings."""
    inst = snapshot_with(request(1.0), master_pid=1).uwsgi[0]
    cfg = HostConfig(name="h", uwsgi=(parse_stats_address("127.0.0.1:1"),))
    p = plan_for(cfg, Settings(lb_idle_timeout=350.0), [inst], 1)
    assert p.harakiri == {}
    assert p.nginx is None
    assert p.lb == Limit(350.0, "settings")
    assert any("harakiri of 127.0.0.1:1: not read" in n for n in p.notes)
    assert any("not an nginx master" in n for n in p.notes)


# ------------------------------------------------------------------ a real stack


def _poll(host: LocalHost) -> HostSnapshot:
    async def once() -> HostSnapshot:
        try:
            return await host.poll()
        finally:
            await host.aclose()
    return asyncio.run(once())


def test_deadlines_from_the_running_processes_configs(
        fresh_stack: Callable[..., Stack], hang: Callable[..., Any]) -> None:
    """harakiri = 30 in the instance's ini and uwsgi_read_timeout 20s in nginx's server block,
    both read from the running processes (command lines, confirmed master); a request hung
    through nginx gets harakiri ~30-age, nginx ~20-age, LB 60-age, each with its source."""
    st = fresh_stack(workers=2, threads=1, harakiri=30,
                     extra_nginx=["uwsgi_read_timeout 20s;"])
    assert st.nginx_master_pid is not None
    hang(st, "/hang/deadline", via="nginx")
    cfg = HostConfig(name="h", uwsgi=(parse_stats_address(st.stats_address),),
                     nginx=st.nginx_status_url)
    snap = _poll(LocalHost(cfg, Settings()))
    assert nginx_conf_path(st.nginx_master_pid) == str(st.nginx_conf_path)
    p = plan_for(cfg, Settings(), snap.uwsgi, st.nginx_master_pid)
    assert p.notes == ()
    out = annotate(snap, p)
    (req,) = [r for w in out.uwsgi[0].workers for r in w.requests_in_flight]
    assert req.host == server_name(st.config.name)
    age = req.running_s
    assert age is not None and age < 15
    got = {d.name: d for d in req.deadlines}
    assert got["harakiri"].limit_s == 30 and got["harakiri"].after_s == pytest.approx(30 - age)
    assert got["nginx_read_timeout"].limit_s == 20
    assert got["nginx_read_timeout"].after_s == pytest.approx(20 - age)
    assert got["lb_idle_timeout"].after_s == pytest.approx(60 - age)
    ini_file, _, ini_line = got["harakiri"].source.rpartition(":")
    assert ini_file == str(st.ini_path)
    assert st.ini_path.read_text().splitlines()[int(ini_line) - 1].startswith("harakiri")
    conf_file, _, conf_line = got["nginx_read_timeout"].source.rpartition(":")
    assert conf_file == str(st.nginx_conf_path)
    assert "uwsgi_read_timeout 20s" in st.nginx_conf_path.read_text().splitlines()[
        int(conf_line) - 1]
    assert [d.name for d in req.deadlines] == [
        "nginx_read_timeout", "harakiri", "lb_idle_timeout"]
    text = "\n".join(render_host(out))
    assert f"· nginx 504 in {int(20 - age)} s" in text

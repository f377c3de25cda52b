"""Reading the snapshot JSON back (agent answers, recorded fixtures): text from the other side
is neutralised (control characters visible, secrets redacted) and clean documents load exactly
as written."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from stackmon.redact import REDACTED
from stackmon.snapshot_json import host_from_dict, host_to_dict

SNAPSHOTS = Path(__file__).parent / "fixtures" / "snapshots"
ESC = "\x1b[2J"
SHOWN = "\\x1b[2J"


def _subset(written: Any, read: Any) -> bool:
    """`read` holds everything `written` does, unchanged (it may add newer fields)."""
    if isinstance(written, dict):
        return isinstance(read, dict) and all(k in read and _subset(v, read[k])
                                              for k, v in written.items())
    if isinstance(written, list):
        return (isinstance(read, list) and len(read) == len(written)
                and all(_subset(a, b) for a, b in zip(written, read, strict=True)))
    return written == read and type(written) is type(read)


@pytest.mark.parametrize("name", ["demo-hangs.json", "demo-burst.json"])
def test_recorded_fixtures_load_exactly_as_written(name):
    doc = json.loads((SNAPSHOTS / name).read_text())["hosts"][0]
    assert _subset(doc, host_to_dict(host_from_dict(copy.deepcopy(doc))))


def hostile_document() -> dict[str, Any]:
    return {
        "name": f"web{ESC}", "taken_at": 100.0, "reachable": True, "stale_s": None,
        "errors": [{"source": f"nginx{ESC}", "message": f"refused{ESC}"}],
        "uwsgi": [{
            "address": f"127.0.0.1:1{ESC}", "version": f"2.0{ESC}", "master_pid": 1,
            "cwd": f"/srv{ESC}", "warnings": [f"odd{ESC}"],
            "sockets": [{"name": f"/run/x{ESC}.sock", "proto": f"uwsgi{ESC}", "queue": 0,
                         "max_queue": 100}],
            "workers": [{
                "id": 1, "pid": 10, "status": f"busy{ESC}",
                "cores": [{"id": 0, "requests": 1, "in_request": True}],
                "requests_in_flight": [{
                    "core": 0, "method": f"GET{ESC}", "uri": f"/x{ESC}?session=S3CRET",
                    "remote_addr": f"10.0.0.1{ESC}", "host": f"example{ESC}",
                    "started_at": 90.0, "running_s": 10.0, "level": "slow",
                    "vars": [[f"HTTP_X{ESC}", f"v{ESC}"], ["HTTP_COOKIE", "sid=S3CRET"]],
                }],
            }],
        }],
        "nginx": {"url": f"http://127.0.0.1/s?token=S3CRET{ESC}", "active": 1, "accepts": 1,
                  "handled": 1, "requests": 1, "reading": 0, "writing": 1, "waiting": 0},
        "listeners": [{"address": f"127.0.0.1:80{ESC}", "kind": f"tcp{ESC}",
                       "owner": f"nginx{ESC}", "queue": 0, "backlog": 511}],
        "fds": {"system": None,
                "processes": [{"pid": 1, "role": f"nginx-master{ESC}", "open": 5, "limit": 9}]},
        "kernel": {},
    }


def test_agent_text_with_control_characters_is_made_visible():
    snap = host_from_dict(hostile_document())
    inst = snap.uwsgi[0]
    req = inst.workers[0].cores[0].request
    assert req is not None
    assert req.uri.startswith(f"/x{SHOWN}?session=")
    assert snap.errors[0].message == f"refused{SHOWN}"
    assert snap.errors[0].source == f"nginx{SHOWN}"
    assert snap.name == f"web{SHOWN}"
    assert (req.method, req.remote_addr, req.host) == (f"GET{SHOWN}", f"10.0.0.1{SHOWN}",
                                                       f"example{SHOWN}")
    assert req.vars[0] == (f"HTTP_X{SHOWN}", f"v{SHOWN}")
    assert (inst.address, inst.version, inst.cwd, inst.warnings) == (
        f"127.0.0.1:1{SHOWN}", f"2.0{SHOWN}", f"/srv{SHOWN}", (f"odd{SHOWN}",))
    assert inst.sockets[0].name == f"/run/x{SHOWN}.sock"
    assert inst.workers[0].status == f"busy{SHOWN}"
    assert snap.listeners[0].address == f"127.0.0.1:80{SHOWN}"
    assert snap.listeners[0].owner == f"nginx{SHOWN}"
    assert snap.listeners[0].kind == "tcp"  # not one of the two kinds: the default
    assert snap.fds.processes[0].role == f"nginx-master{SHOWN}"
    assert snap.nginx is not None and snap.nginx.url == f"http://127.0.0.1/s?token={REDACTED}"
    # nothing anywhere still holds the escape
    assert "\x1b" not in json.dumps(host_to_dict(snap))


def test_secrets_from_an_older_or_foreign_agent_are_redacted():
    snap = host_from_dict(hostile_document())
    text = json.dumps(host_to_dict(snap))
    assert "S3CRET" not in text
    req = snap.uwsgi[0].workers[0].cores[0].request
    assert req is not None and ("HTTP_COOKIE", REDACTED) in req.vars


def test_absurd_numbers_from_an_agent_are_bounded():
    """A foreign agent's 401-digit pid or infinite time reads as unknown, as the uWSGI parser
    treats them; it must not reach os.kill, float() or a formatter."""
    doc = hostile_document()
    worker = doc["uwsgi"][0]["workers"][0]
    worker.update(pid=int("7" * 401), requests=-5, rss=2**70, last_spawn=float("inf"))
    worker["requests_in_flight"][0]["running_s"] = float("nan")
    doc["uwsgi"][0].update(master_pid=4_194_305, uid=2**40, gid=0)
    snap = host_from_dict(doc)
    inst = snap.uwsgi[0]
    w = inst.workers[0]
    assert (inst.master_pid, inst.uid, inst.gid) == (0, None, 0)
    assert (w.pid, w.requests, w.rss, w.last_spawn) == (0, 0, 0, 0.0)
    assert w.requests_in_flight[0].running_s is None
    doc["uwsgi"][0]["master_pid"] = "9" * 5000  # int() refuses it: the agent client's
    with pytest.raises(ValueError):  # "cannot be read", never a traceback
        host_from_dict(doc)


def test_configuration_text_is_written_visible():
    """Host names and addresses come from the hosts file or argv, not from a parser: the JSON
    carries them with controls visible and no lone surrogate (json.dump would raise)."""
    from dataclasses import replace

    snap = host_from_dict(hostile_document())
    snap = replace(snap, name="web\x1b]52;c;x\x07\udcff",
                   uwsgi=(replace(snap.uwsgi[0], address="/run/\x9b2J\ud800.sock"),))
    doc = host_to_dict(snap)
    assert doc["name"] == "web\\x1b]52;c;x\\x07\ufffd"
    assert doc["uwsgi"][0]["address"] == "/run/\\x9b2J\ufffd.sock"
    json.dumps(doc, ensure_ascii=False).encode("utf-8")


def test_emperor_and_cheap_workers_round_trip():
    """An emperor is written as kind "emperor" with its vassals (never as an instance with 0
    workers) and read back as one; cheap workers keep their position ids and their flag."""
    from stackmon.model import HostSnapshot, UwsgiInstance, Vassal, Worker

    def worker(i: int, pid: int, status: str) -> Worker:
        return Worker(id=i, pid=pid, status=status, accepting=bool(pid), requests=0,
                      exceptions=0, harakiri_count=0, respawn_count=0, avg_rt_ms=0.0, rss=0,
                      vsz=0, last_spawn=0.0, running_time_s=0.0, tx=0)

    cheap = UwsgiInstance(address="/run/a.stats", version="2.0.31", master_pid=10,
                          listen_queue=0, listen_queue_max=100, sockets=(),
                          workers=(worker(1, 11, "idle"), worker(2, 0, "cheap"),
                                   worker(3, 0, "cheap")))
    emperor = UwsgiInstance(address="/run/emperor.stats", version="2.0.31", master_pid=20,
                            listen_queue=0, listen_queue_max=0, sockets=(), workers=(),
                            kind="emperor", index=1,
                            vassals=(Vassal(name="app1.ini", pid=21, ready=True,
                                            monitor="/etc/uwsgi/vassals",
                                            config="/etc/uwsgi/vassals/app1.ini",
                                            stats="/run/app1.stats"),
                                     Vassal(name="app2.ini", pid=22,
                                            stats_note="its config sets no stats server")))
    host = HostSnapshot(name="h", taken_at=1.0, reachable=True, uwsgi=(cheap, emperor))
    written = host_to_dict(host)
    a, e = written["uwsgi"]
    assert a["kind"] == "instance" and "vassals" not in a
    assert [(w["id"], w["cheap"]) for w in a["workers"]] == [(1, False), (2, True), (3, True)]
    assert e["kind"] == "emperor" and e["workers"] == []
    assert [(v["name"], v["pid"], v["stats"]) for v in e["vassals"]] == \
        [("app1.ini", 21, "/run/app1.stats"), ("app2.ini", 22, None)]
    back = host_from_dict(json.loads(json.dumps(written)))
    assert back.uwsgi[1] == emperor
    assert back.uwsgi[0].cheap_workers == 2
    assert host_to_dict(back) == written


def test_deadlines_round_trip_and_a_foreign_list_is_bounded():
    """Each request's deadlines are written as the contract's {"name", "after_s"}
    (docs/contracts.md), plus limit and source, and read back equal; unknown names,
    non-numbers and absurd lists are dropped."""
    from stackmon.model import Deadline

    doc = hostile_document()
    req = doc["uwsgi"][0]["workers"][0]["requests_in_flight"][0]
    req["deadlines"] = [
        {"name": "nginx_read_timeout", "after_s": -2.5, "limit_s": 20.0,
         "source": f"/etc/nginx/nginx.conf:12{ESC}"},
        {"name": "harakiri", "after_s": 20.0, "limit_s": 30.0, "source": "/srv/u.ini:3"},
        {"name": "lb_idle_timeout", "after_s": 50.0},  # the contract's minimum: name and after_s
        {"name": "coffee_break", "after_s": 1.0},
        {"name": "harakiri", "after_s": "soon"},
        {"name": "harakiri", "after_s": float("nan")},
        "not an object",
    ]
    (r,) = host_from_dict(doc).uwsgi[0].workers[0].requests_in_flight
    assert r.deadlines == (
        Deadline("nginx_read_timeout", -2.5, 20.0, f"/etc/nginx/nginx.conf:12{SHOWN}"),
        Deadline("harakiri", 20.0, 30.0, "/srv/u.ini:3"),
        Deadline("lb_idle_timeout", 50.0, 0.0, "default"))
    written = host_to_dict(host_from_dict(doc))
    out = written["uwsgi"][0]["workers"][0]["requests_in_flight"][0]["deadlines"]
    assert [(d["name"], d["after_s"]) for d in out] == [
        ("nginx_read_timeout", -2.5), ("harakiri", 20.0), ("lb_idle_timeout", 50.0)]
    back = host_from_dict(json.loads(json.dumps(written)))
    assert back.uwsgi[0].workers[0].requests_in_flight[0].deadlines == r.deadlines
    req["deadlines"] = [{"name": "harakiri", "after_s": float(i)} for i in range(10_000)]
    (r,) = host_from_dict(doc).uwsgi[0].workers[0].requests_in_flight
    assert len(r.deadlines) == 8
    req["deadlines"] = {"name": "harakiri"}
    assert host_from_dict(doc).uwsgi[0].workers[0].requests_in_flight[0].deadlines == ()


def test_the_lb_probes_latest_failing_streak_round_trips() -> None:
    """An agent host's panel ('LB OUT for 8 s at …') and health model ('LB WAS OUT') need the
    episode: it was not in the document, so only a local host had it. An older agent sends
    none (None), and a foreign one's text is made visible."""
    from dataclasses import replace

    from stackmon.sources.lb_probe import HealthCheck, ProbeEpisode
    from tests.tui_support import recorded

    episode = ProbeEpisode(start=1000.0, end=1008.0, failures=8, last_error="HTTP 502\x1b[2J",
                           interval=2.0, threshold=2, out_at=1002.0)
    check = HealthCheck(url="http://127.0.0.1/health", ok=True, last_ms=3.0, max_ms=5.0,
                        failures_in_row=0, out_of_service=False, episode=episode)
    doc = json.loads(json.dumps(host_to_dict(replace(recorded(), health=check))))
    back = host_from_dict(doc).health
    assert back is not None and back.episode is not None
    assert (back.episode.start, back.episode.end, back.episode.failures, back.episode.out_at,
            back.episode.interval, back.episode.threshold) == (1000.0, 1008.0, 8, 1002.0,
                                                               2.0, 2)
    assert "\x1b" not in back.episode.last_error and "HTTP 502" in back.episode.last_error
    assert back.episode.out_for_s == episode.out_for_s
    del doc["health"]["episode"]
    older = host_from_dict(doc).health
    assert older is not None and older.episode is None

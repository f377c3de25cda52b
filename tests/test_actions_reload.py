"""Graceful and chain reloads on the real stack, followed worker by worker."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace

import pytest

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError, ActionTarget
from stackmon.actions.reload import plan_for, reload_uwsgi
from stackmon.actions.reload_progress import ReloadProgress, ReloadTracker, follow_reload
from stackmon.addresses import parse_stats_address
from stackmon.model import Core, Request, Thresholds, UwsgiInstance, Worker
from stackmon.sources.uwsgi_stats import poll_stats
from tests.conftest import uwsgi_packet, wait_until


def target_of(stack, read_only: bool = False) -> ActionTarget:
    return ActionTarget(host="local", address=parse_stats_address(stack.stats_address),
                        read_only=read_only)


def instance(stack) -> UwsgiInstance:
    inst = asyncio.run(poll_stats(parse_stats_address(stack.stats_address), Thresholds()))
    assert isinstance(inst, UwsgiInstance)
    return inst


def test_plan_reads_fifo_and_mercy_from_the_instance_config(fresh_stack):
    st = fresh_stack(workers=2, threads=1, mercy=7, nginx=False)
    plan = plan_for(instance(st))
    assert plan.fifo == str(st.fifo_path)
    assert plan.mercy == 7.0
    assert plan.mercy_source.startswith(str(st.ini_path) + ":")


def test_graceful_reload_drains_a_hung_worker_then_replaces_all(fresh_stack, hang, tmp_path):
    mercy = 4
    st = fresh_stack(workers=3, threads=1, mercy=mercy, nginx=False)
    hang(st, "/hang/during-reload", n=1, via="unix")
    before = {w["id"]: w["pid"] for w in st.stats()["workers"]}
    audit = AuditLog(tmp_path / "audit.log")
    target = target_of(st)
    seen: list[ReloadProgress] = []

    async def go():
        result = await reload_uwsgi(target, "graceful", audit=audit, actor="t")
        assert result.data["mercy"] == mercy and "FIFO" in result.data["method"]
        return result, await follow_reload(target, result, seen.append, audit=audit,
                                           interval=0.25, margin=10)

    started = time.monotonic()
    _result, final = asyncio.run(go())
    took = time.monotonic() - started
    assert final.done, final.message
    assert took <= mercy + 6  # within mercy plus a small margin
    draining = [w for p in seen for w in p.workers if w.state in ("draining", "killing")]
    assert draining and draining[0].request is not None
    assert draining[0].request.uri == "/hang/during-reload"
    assert {w.id for w in final.workers} == set(before)
    assert all(w.state == "replaced" and w.pid not in before.values() for w in final.workers)
    outcomes = [e["outcome"] for e in audit.entries()]
    assert outcomes == ["started", "sent", "ok"]


def test_chain_reload_replaces_workers_one_at_a_time(fresh_stack, tmp_path):
    st = fresh_stack(workers=3, threads=1, mercy=5, nginx=False)
    target = target_of(st)
    seen: list[ReloadProgress] = []

    async def go():
        result = await reload_uwsgi(target, "chain", audit=AuditLog(tmp_path / "a.log"))
        return await follow_reload(target, result, seen.append, interval=0.1, margin=20)

    final = asyncio.run(go())
    assert final.done, final.message
    order = sorted(final.workers, key=lambda w: w.replaced_after or 0)
    times = [w.replaced_after for w in order]
    assert [w.id for w in order] == [1, 2, 3]  # in id order
    assert len(set(times)) == 3  # never all at once
    # At no sample was a later worker replaced before an earlier one.
    for p in seen:
        states = [w.state == "replaced" for w in sorted(p.workers, key=lambda w: w.id)]
        assert states == sorted(states, reverse=True), states


def test_read_only_and_missing_fifo_refusals(fresh_stack, tmp_path):
    st = fresh_stack(workers=1, threads=1, nginx=False)
    audit = AuditLog(tmp_path / "audit.log")
    with pytest.raises(ActionError) as info:
        asyncio.run(reload_uwsgi(target_of(st, read_only=True), "graceful", audit=audit))
    assert info.value.kind == "read_only"
    assert audit.entries()[-1]["outcome"] == "refused: read_only"
    pids = [w["pid"] for w in st.stats()["workers"]]
    time.sleep(0.5)
    assert [w["pid"] for w in st.stats()["workers"]] == pids  # nothing happened


# --- the tracker's logic, on constructed samples -------------------------------------------

def _worker(wid: int, pid: int, uri: str | None = None, started: float = 0.0) -> Worker:
    cores: tuple[Core, ...] = ()
    if uri is not None:
        req = Request(core=0, method="GET", uri=uri, remote_addr="1.2.3.4", host="h",
                      started_at=started, running_s=1.0, level="ok")
        cores = (Core(id=0, requests=0, in_request=True, request=req),)
    return Worker(id=wid, pid=pid, status="busy" if uri else "idle", accepting=True,
                  requests=0, exceptions=0, harakiri_count=0, respawn_count=1, avg_rt_ms=0,
                  rss=0, vsz=0, last_spawn=0, running_time_s=0, tx=0, cores=cores)


def _inst(*workers: Worker) -> UwsgiInstance:
    return UwsgiInstance(address="a", version="2", master_pid=1, listen_queue=0,
                         listen_queue_max=100, sockets=(), workers=workers)


def test_tracker_states_and_countdown():
    t = ReloadTracker({1: 101, 2: 102}, "graceful", mercy=10, started_at=1000.0)
    p = t.update(_inst(_worker(1, 0), _worker(2, 102, "/slow", 995.0)), 1002.0)
    assert [w.state for w in p.workers] == ["exited", "draining"]
    assert p.workers[1].countdown == 8.0
    assert p.workers[1].request is not None and p.workers[1].request.uri == "/slow"
    p = t.update(None, 1005.0)  # the master re-execs: no stats
    assert not p.stats_available and not p.done
    p = t.update(_inst(_worker(1, 0), _worker(2, 102, "/slow", 995.0)), 1008.5)
    assert p.workers[1].state == "killing"
    p = t.update(_inst(_worker(1, 201), _worker(2, 202)), 1010.8)
    assert p.done and p.replaced == 2 and "10.8 s" in p.message


def test_reload_refused_when_the_master_changed_since_the_user_looked(fresh_stack, tmp_path):
    st = fresh_stack(workers=1, threads=1, nginx=False)
    with pytest.raises(ActionError) as info:
        asyncio.run(reload_uwsgi(target_of(st), "graceful", audit=AuditLog(tmp_path / "a.log"),
                                 expect_master=st.master_pid + 100000))
    assert info.value.kind == "stale"


# --- what mercy cuts: only a running clock predicts, only a look at its end counts ----------

def _tracker(mode: str, mercy: float, *wids: int) -> ReloadTracker:
    return ReloadTracker({w: 100 + w for w in wids}, mode, mercy=mercy, started_at=1000.0)


def test_graceful_idle_workers_are_asked_to_stop_not_waiting_their_turn():
    """The review at 1 s: `1  waits its turn` in a graceful reload, where every worker is
    asked to stop at once."""
    t = _tracker("graceful", 10, 1, 2)
    p = t.update(_inst(_worker(1, 101), _worker(2, 102, "/slow", 999.0)), 1000.5)
    assert [w.state for w in p.workers] == ["stopping", "draining"]
    assert p.workers[0].countdown is None and p.workers[1].countdown == 9.5


def test_chain_only_the_worker_whose_turn_it_is_has_a_mercy_clock():
    """The review at 18 s: a short /slow in a chain reload; its worker's clock starts at its
    turn, it ends long before, and the summary must not count it as cut."""
    t = _tracker("chain", 15, 1, 2, 3)
    p = t.update(_inst(_worker(1, 101), _worker(2, 102), _worker(3, 103, "/slow?s=0.6")), 1000.5)
    assert [w.state for w in p.workers] == ["stopping", "waiting", "waiting"]
    assert [w.countdown for w in p.workers] == [None, None, None]
    assert p.workers[2].request is not None  # what it serves, without a prediction
    t.update(_inst(_worker(1, 201), _worker(2, 102), _worker(3, 103, "/slow?s=0.6")), 1001.0)
    p = t.update(_inst(_worker(1, 201), _worker(2, 202), _worker(3, 103, "/slow?s=0.6")), 1017.0)
    assert p.workers[2].state == "draining" and p.workers[2].countdown == 15.0  # its turn now
    p = t.update(_inst(_worker(1, 201), _worker(2, 202), _worker(3, 103, "/slow?s=0.6")), 1018.0)
    assert p.workers[2].countdown == 14.0
    p = t.update(_inst(_worker(1, 201), _worker(2, 202), _worker(3, 203)), 1018.5)
    assert p.done and p.cut == 0
    assert p.message == ("chain reload done: 3 workers replaced in 18.5 s; no request was cut "
                         "at mercy")


def test_chain_counts_the_request_still_in_flight_when_its_workers_mercy_ran_out():
    t = _tracker("chain", 2, 1, 2)
    for now in (1000.5, 1001.0, 1001.5, 1002.0):  # worker 1 stuck to its mercy's end
        p = t.update(_inst(_worker(1, 101, "/hang"), _worker(2, 102, "/slow")), now)
    assert p.workers[0].state == "killing" and p.workers[1].countdown is None
    p = t.update(_inst(_worker(1, 201), _worker(2, 102, "/slow")), 1002.5)  # NO MERCY
    assert p.workers[0].cut == 1 and p.workers[1].countdown == 2.0  # worker 2's turn now
    p = t.update(_inst(_worker(1, 201), _worker(2, 202)), 1003.0)  # its /slow ended: exited
    assert p.done and p.cut == 1 and [w.cut for w in p.workers] == [1, 0]
    assert p.message.endswith("; 1 request was in flight when its worker's mercy ran out "
                              "(worker 1)")


def test_graceful_cuts_are_judged_across_the_masters_re_exec():
    """Graceful: the stats vanish once every old worker has exited (the master re-execs). A
    request that ended before the mercy is not cut, even if the new pids show up after it."""
    ended = _tracker("graceful", 4, 1)
    ended.update(_inst(_worker(1, 101, "/slow")), 1003.5)
    ended.update(None, 1003.8)  # the worker exited when its request ended: re-exec
    p = ended.update(_inst(_worker(1, 201)), 1004.6)
    assert p.done and p.cut == 0 and "no request was cut at mercy" in p.message
    killed = _tracker("graceful", 4, 1, 2)
    killed.update(_inst(_worker(1, 101, "/hang"), _worker(2, 102, "/hang")), 1003.5)
    killed.update(_inst(_worker(1, 101, "/hang"), _worker(2, 102, "/hang")), 1003.9)
    killed.update(None, 1004.4)
    p = killed.update(_inst(_worker(1, 201), _worker(2, 202)), 1005.0)
    assert p.done and p.cut == 2
    assert "2 requests were in flight when their worker's mercy ran out (workers 1, 2)" in \
        p.message


def test_a_cut_that_was_not_seen_near_the_mercy_is_unknown_not_counted():
    t = _tracker("chain", 10, 1)
    t.update(_inst(_worker(1, 101, "/slow")), 1001.0)
    p = t.update(_inst(_worker(1, 201)), 1012.0)  # the follow was away for 11 s
    assert p.done and p.cut == 0 and p.workers[0].unsure
    assert "whether worker 1 was cut is unknown" in p.message


def _send_slow(stack, seconds: float) -> socket.socket:
    """A /slow?s=N request straight to uWSGI's unix socket, left to finish on its own."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(stack.uwsgi_socket_path))
    sock.sendall(uwsgi_packet({"REQUEST_METHOD": "GET", "REQUEST_URI": f"/slow?s={seconds}",
                               "PATH_INFO": "/slow", "QUERY_STRING": f"s={seconds}",
                               "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "t",
                               "SERVER_PORT": "80", "REMOTE_ADDR": "127.0.0.1"}))
    return sock


def test_a_chain_reload_counts_the_stuck_request_cut_and_not_the_short_one(fresh_stack, hang,
                                                                           tmp_path):
    """Real uWSGI: one worker stuck, the other finishing a 1 s /slow. Whatever their order in
    the chain, only the stuck one is cut (uWSGI logs NO MERCY for it alone), only the worker
    whose turn it is has a countdown, and the summary says 1 request."""
    st = fresh_stack(workers=2, threads=1, mercy=3, nginx=False)
    hang(st, "/hang/cut-me", n=1, via="unix")
    stuck = next(w for w in st.stats()["workers"] if w["status"] == "busy")
    slow = _send_slow(st, 1.0)
    try:
        wait_until(lambda: all(w["status"] == "busy" for w in st.stats()["workers"]), 5)
        target = target_of(st)
        seen: list[ReloadProgress] = []

        async def go() -> ReloadProgress:
            result = await reload_uwsgi(target, "chain", audit=AuditLog(tmp_path / "a.log"))
            return await follow_reload(target, result, seen.append, interval=0.2, margin=20)

        final = asyncio.run(go())
    finally:
        slow.close()
    assert final.done, final.message
    assert all(sum(w.countdown is not None for w in p.workers) <= 1 for p in seen)
    assert [(w.id, w.cut) for w in final.workers if w.cut] == [(stuck["id"], 1)]
    assert final.message.endswith("; 1 request was in flight when its worker's mercy ran out "
                                  f"(worker {stuck['id']})")
    no_mercy = [line for line in st.uwsgi_log_path.read_text(errors="replace").splitlines()
                if "NO MERCY" in line]
    assert len(no_mercy) == 1 and f"worker {stuck['id']} (pid: {stuck['pid']})" in no_mercy[0]


# --- a chain turn begins when uWSGI's does: the previous worker's new process accepts --------

def _loading(wid: int, pid: int) -> Worker:
    """A new process still importing the app (lazy-apps): a pid, not accepting yet."""
    return replace(_worker(wid, pid), accepting=False)


def test_chain_waits_for_the_new_process_to_accept_before_the_next_turn():
    """uWSGI asks the next worker to stop only once the previous one's new process accepts
    (uwsgi_master_check_chain): with an app that loads for 8 s, the countdown started 8 s
    early and predicted a cut that never came."""
    t = _tracker("chain", 10, 1, 2)
    t.update(_inst(_worker(1, 101), _worker(2, 102, "/report")), 1000.5)
    p = t.update(_inst(_loading(1, 201), _worker(2, 102, "/report")), 1001.0)
    assert [w.state for w in p.workers] == ["replaced", "waiting"]
    assert p.workers[1].countdown is None
    assert "worker 1's new process is loading the app" in p.message
    p = t.update(_inst(_loading(1, 201), _worker(2, 102, "/report")), 1009.0)
    assert p.workers[1].countdown is None  # still loading: uWSGI has not asked worker 2
    p = t.update(_inst(_worker(1, 201), _worker(2, 102, "/report")), 1009.5)  # accepting
    assert p.workers[1].state == "draining" and p.workers[1].countdown == 10.0
    assert "loading" not in p.message
    # the report ends at 1015: before worker 2's mercy (1019.5), so nothing was cut
    p = t.update(_inst(_worker(1, 201), _worker(2, 202)), 1015.5)
    assert p.done and p.cut == 0 and not p.workers[1].unsure


def test_a_new_process_that_dies_while_loading_does_not_hold_the_chain():
    t = _tracker("chain", 10, 1, 2)
    t.update(_inst(_loading(1, 201), _worker(2, 102, "/report")), 1001.0)
    p = t.update(_inst(_worker(1, 0), _worker(2, 102, "/report")), 1002.0)  # died: pid 0
    assert p.workers[1].countdown == 10.0  # uWSGI does not wait for a dead worker either


def _log_time(line: str) -> float:
    """The wall-clock second of a uWSGI log_verbose line ("Fri Nov 27 14:02:03 2026 - ...")."""
    return time.mktime(time.strptime(line.split(" - ", 1)[0].strip(), "%a %b %d %H:%M:%S %Y"))


def test_a_chain_reload_starts_each_countdown_when_uwsgi_curses_the_worker(fresh_stack, hang,
                                                                          tmp_path):
    """Real uWSGI with lazy-apps and an app that takes 4 s to load, both workers stuck: worker
    2's countdown starts once worker 1's new process accepts, and runs out when uWSGI's own
    NO MERCY for it comes (its log, to the second), not 4 s before."""
    load_s = 4  # the old rule's error is this plus ~0.6 s: clear of the bounds below
    st = fresh_stack(workers=2, threads=1, mercy=3, nginx=False, lazy_apps=True,
                     extra_uwsgi={"env": f"STACKMON_DEMO_LOAD_S={load_s}"},
                     startup_timeout=30.0)
    hang(st, "/hang/stuck", n=2, via="unix")
    target = target_of(st)
    seen: list[tuple[float, ReloadProgress]] = []

    async def go() -> ReloadProgress:
        result = await reload_uwsgi(target, "chain", audit=AuditLog(tmp_path / "a.log"))
        return await follow_reload(target, result, lambda p: seen.append((time.time(), p)),
                                   interval=0.2, margin=20)

    final = asyncio.run(go())
    assert final.done, final.message
    assert final.cut == 2 and [w.cut for w in final.workers] == [1, 1]
    replaced_1 = min(at for at, p in seen if p.workers[0].state == "replaced")
    counted_2 = [(at, p.workers[1].countdown) for at, p in seen
                 if p.workers[1].countdown is not None]
    assert counted_2 and counted_2[0][0] - replaced_1 >= load_s - 1, (replaced_1, counted_2)
    assert any("loading the app" in p.message for _, p in seen)
    log = st.uwsgi_log_path.read_text(errors="replace").splitlines()
    no_mercy = [_log_time(line) for line in log if "NO MERCY" in line and "worker 2 " in line]
    assert len(no_mercy) == 1, log[-30:]
    at, countdown = counted_2[0]
    # uWSGI kills in the first second past its whole-second deadline: the countdown runs out
    # up to ~2 s before its log line (whole seconds, a once-a-second master check), or a
    # little after it when a loaded machine delayed the sample that saw the new process.
    assert -1.5 <= no_mercy[0] - (at + countdown) <= 3.0, (no_mercy[0], at + countdown)


# --- every request a draining worker holds, and how long no worker served -------------------

def _two_cores(wid: int, pid: int, *ages: float, uri: str = "/hang/export.csv") -> Worker:
    """A worker with one core per age, each busy with a GET `uri` that old (2 threads/cores:
    mercy cuts every one still running)."""
    cores = tuple(Core(id=i, requests=0, in_request=True, request=Request(
        core=i, method="GET", uri=uri, remote_addr="1.2.3.4", host="h", started_at=None,
        running_s=age, level="critical")) for i, age in enumerate(ages))
    return replace(_worker(wid, pid), status="busy", cores=cores)


def test_a_draining_worker_lists_every_request_it_holds_oldest_first():
    """The review: worker 4's row showed one /hang/export.csv, mercy then cut 2 (nginx logged
    two 502s). Both must be in the progress, the oldest first, and counted in its message."""
    t = _tracker("graceful", 15, 1, 2)
    p = t.update(_inst(_worker(1, 0), _two_cores(2, 102, 40.0, 42.0)), 1002.0)
    w = p.workers[1]
    assert w.state == "draining" and [r.running_s for r in w.in_flight] == [42.0, 40.0]
    assert w.request is w.requests[0]  # `request` is still the oldest
    assert p.message.endswith("; 1 finishing 2 requests, mercy runs out in 13 s")
    p = t.update(_inst(_worker(1, 0), _two_cores(2, 102, 53.0, 55.0)), 1014.5)
    assert p.workers[1].state == "killing" and len(p.workers[1].in_flight) == 2
    p = t.update(_inst(_worker(1, 201), _worker(2, 202)), 1015.5)
    assert p.done and p.cut == 2 and p.workers[1].cut == 2


def test_a_chain_worker_waiting_its_turn_lists_its_requests_too():
    t = _tracker("chain", 15, 1, 2)
    p = t.update(_inst(_worker(1, 101, "/a"), _two_cores(2, 102, 3.0, 9.0)), 1001.0)
    assert p.workers[1].state == "waiting"
    assert [r.running_s for r in p.workers[1].in_flight] == [9.0, 3.0]
    assert p.message.endswith("; 1 finishing a request, mercy runs out in 14 s")


def test_the_done_line_says_how_long_no_worker_was_serving():
    """Graceful: every old worker exited or draining from 1002 (none serving), the master
    re-execs at 1010 (no stats), new workers at 1014: 12 s with no worker, as the view's
    NO WORKER SERVING banner counted them."""
    t = _tracker("graceful", 15, 1, 2)
    first = t.update(None, 1000.1)  # follow_reload's first look, before any stats: nothing
    assert first.none_serving_since is None and first.none_serving_s == 0
    p = t.update(_inst(_worker(1, 0), _two_cores(2, 102, 30.0)), 1002.0)
    assert p.none_serving_since == 2.0 and p.none_serving_s == 0.0
    p = t.update(None, 1010.0)
    assert p.none_serving_since == 2.0 and p.none_serving_s == 8.0
    p = t.update(_inst(_worker(1, 201), _worker(2, 202)), 1014.0)
    assert p.done and p.none_serving_since is None and p.none_serving_s == 12.0
    assert p.message == ("graceful reload done: 2 workers replaced in 14.0 s; no worker was "
                         "serving for 12.0 s; no request was cut at mercy")


def test_stretches_with_no_worker_serving_add_up_and_a_chain_that_always_served_says_none():
    t = _tracker("chain", 10, 1)  # one worker: nobody serves while it drains
    t.update(_inst(_worker(1, 101, "/a")), 1001.0)
    p = t.update(_inst(_worker(1, 101, "/a")), 1004.0)
    assert p.none_serving_s == 3.0
    p = t.update(_inst(_worker(1, 201)), 1005.5)
    assert p.done and "no worker was serving for 4.5 s;" in p.message
    chain = _tracker("chain", 10, 1, 2)
    chain.update(_inst(_worker(1, 101, "/a"), _worker(2, 102)), 1001.0)
    chain.update(_inst(_worker(1, 201), _worker(2, 102)), 1002.0)
    p = chain.update(_inst(_worker(1, 201), _worker(2, 202)), 1003.0)
    assert p.done and p.none_serving_s == 0 and "serving" not in p.message
    short = _tracker("graceful", 10, 1)
    short.update(_inst(_worker(1, 0)), 1000.5)
    p = short.update(_inst(_worker(1, 201)), 1000.9)
    assert "no worker was serving for 0.4 s" in p.message


def test_a_graceful_reload_of_a_worker_holding_two_requests_cuts_and_lists_both(fresh_stack,
                                                                              hang, tmp_path):
    """Real uWSGI: one worker, 2 threads, both stuck, mercy 3 s. The progress lists both
    requests while it drains, the summary counts 2 cut (uWSGI logs one NO MERCY, for the worker
    holding the 2 requests), and says how long no worker was serving (the whole drain)."""
    mercy = 3
    st = fresh_stack(workers=1, threads=2, mercy=mercy, nginx=False)
    held = hang(st, "/hang/x", n=2, via="unix")
    worker = st.stats()["workers"][0]
    sent = len(held.matching())
    assert sent == 2
    target = target_of(st)
    seen: list[ReloadProgress] = []

    async def go() -> ReloadProgress:
        result = await reload_uwsgi(target, "graceful", audit=AuditLog(tmp_path / "a.log"))
        return await follow_reload(target, result, seen.append, interval=0.2, margin=10)

    final = asyncio.run(go())
    assert final.done, final.message
    draining = [w for p in seen for w in p.workers if w.state in ("draining", "killing")]
    assert draining and all(len(w.in_flight) == 2 for w in draining)
    assert all(r.uri == "/hang/x" for w in draining for r in w.in_flight)
    no_mercy = [line for line in st.uwsgi_log_path.read_text(errors="replace").splitlines()
                if "NO MERCY" in line]
    assert len(no_mercy) == 1 and f"(pid: {worker['pid']})" in no_mercy[0], no_mercy
    assert final.cut == sent  # every request the worker held was cut
    assert "2 requests were in flight when their worker's mercy ran out (worker 1)" in \
        final.message
    assert mercy - 1 <= final.none_serving_s <= mercy + 3, final.none_serving_s
    assert f"no worker was serving for {final.none_serving_s:.1f} s;" in final.message

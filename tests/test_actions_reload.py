"""Graceful and chain reloads on the real stack, followed worker by worker."""

from __future__ import annotations

import asyncio
import time

import pytest

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionError, ActionTarget
from stackmon.actions.reload import plan_for, reload_uwsgi
from stackmon.actions.reload_progress import ReloadProgress, ReloadTracker, follow_reload
from stackmon.addresses import parse_stats_address
from stackmon.model import Core, Request, Thresholds, UwsgiInstance, Worker
from stackmon.sources.uwsgi_stats import poll_stats


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

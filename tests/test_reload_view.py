"""The reload flow a new user met on the live demo: a chain reload followed to its end, a
follow that stops saying so, the confirmation and the progress table at 80x24.

The follow tests run a real uWSGI (fresh_stack) with requests stuck in every worker (hang):
a chain reload then takes workers x mercy, each worker cut at its own mercy in turn.
"""

from __future__ import annotations

import asyncio
import time

from stackmon.actions.audit import AuditLog
from stackmon.actions.base import ActionTarget
from stackmon.actions.reload import reload_uwsgi
from stackmon.actions.reload_progress import (
    ReloadProgress,
    follow_deadline,
    follow_reload,
)
from stackmon.addresses import parse_stats_address


def target_of(stack) -> ActionTarget:
    return ActionTarget(host="local", address=parse_stats_address(stack.stats_address))


def test_a_chain_reload_with_every_worker_stuck_is_followed_to_its_end(fresh_stack, hang,
                                                                        tmp_path):
    """3 workers, each holding a request that never ends, mercy 2 s: the chain cuts them one
    after the other, ~3 x 2 s. A follow that stopped after mercy + margin (the bug: 2 + 3 s
    here) returned with a worker still "KILL SOON"; it must see every worker replaced."""
    mercy, margin = 2, 3
    st = fresh_stack(workers=3, threads=1, mercy=mercy, nginx=False)
    hang(st, "/hang/chain-stuck", n=3, via="unix")
    before = {w["id"]: w["pid"] for w in st.stats()["workers"]}
    audit = AuditLog(tmp_path / "audit.log")
    target = target_of(st)
    seen: list[ReloadProgress] = []

    async def go() -> ReloadProgress:
        result = await reload_uwsgi(target, "chain", audit=audit, actor="t")
        return await follow_reload(target, result, seen.append, audit=audit, interval=0.2,
                                   margin=margin)

    started = time.monotonic()
    final = asyncio.run(go())
    took = time.monotonic() - started
    assert final.done and not final.stopped, final.message
    assert took > mercy + margin  # longer than the old deadline: it was really needed
    assert all(w.state == "replaced" and w.pid not in before.values() for w in final.workers)
    order = sorted(final.workers, key=lambda w: w.replaced_after or 0)
    assert [w.id for w in order] == [1, 2, 3]
    # each worker was cut at its own mercy, in turn: the last one well after one mercy
    assert (order[-1].replaced_after or 0) >= 3 * mercy - 0.5
    assert seen[-1] == final
    assert [e["outcome"] for e in audit.entries()] == ["started", "sent", "ok"]


def test_a_follow_that_stops_early_says_so(fresh_stack, hang, tmp_path):
    """Margin below zero: following stops before the reload ends. The last progress must say
    it stopped, how far it got and where to look, with no countdown left running."""
    st = fresh_stack(workers=2, threads=1, mercy=3, nginx=False)
    hang(st, "/hang/early-stop", n=2, via="unix")
    audit = AuditLog(tmp_path / "audit.log")
    target = target_of(st)
    seen: list[ReloadProgress] = []

    async def go() -> ReloadProgress:
        result = await reload_uwsgi(target, "chain", audit=audit, actor="t")
        return await follow_reload(target, result, seen.append, audit=audit, interval=0.2,
                                   margin=-(follow_deadline("chain", 3, 2, 0) - 1))

    final = asyncio.run(go())
    assert final.stopped and not final.done
    assert final.message.startswith("stopped following after 1 s")
    assert f"{final.replaced} of 2 workers replaced; check" in final.message
    assert all(w.countdown is None and w.state != "killing" for w in final.workers)
    assert seen[-1] is final  # the screen is told, not left on the previous countdown
    last = audit.entries()[-1]
    assert last["outcome"] == "timed out" and "stopped following" in last["message"]


def test_follow_deadline_fits_the_mode():
    assert follow_deadline("graceful", 15, 4, 30) == 45
    assert follow_deadline("chain", 15, 4, 30) >= 4 * 15 + 30

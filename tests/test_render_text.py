"""`stackmon snapshot`'s text: figures a person reads literally."""

from __future__ import annotations

from stackmon.model import HostSnapshot, UwsgiInstance, Worker
from stackmon.render_text import render_host


def _host(respawn_count: int, rss: int) -> HostSnapshot:
    w = Worker(id=1, pid=42, status="idle", accepting=True, requests=3, exceptions=0,
               harakiri_count=0, respawn_count=respawn_count, avg_rt_ms=1.0, rss=rss, vsz=0,
               last_spawn=1.0, running_time_s=0.0, tx=0)
    inst = UwsgiInstance(address="a", version="2.0.31", master_pid=7, listen_queue=0,
                         listen_queue_max=100, sockets=(), workers=(w,))
    return HostSnapshot(name="h", taken_at=0.0, reachable=True, uwsgi=(inst,))


def test_the_first_spawn_is_not_a_respawn_and_unknown_memory_is_not_zero() -> None:
    fresh = next(x for x in render_host(_host(1, 0)) if x.lstrip().startswith("worker 1"))
    assert "respawn 0 " in fresh and "rss ?" in fresh and "0B" not in fresh
    again = next(x for x in render_host(_host(3, 12 * 1024 * 1024))
                 if x.lstrip().startswith("worker 1"))
    assert "respawn 2 " in again and "rss 12M" in again

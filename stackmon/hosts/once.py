"""One poll of every host, for `stackmon snapshot` and other one-shot commands."""

from __future__ import annotations

import asyncio
import time

from stackmon.config import Targets
from stackmon.hosts.base import open_host
from stackmon.model import Snapshot


async def poll_once(targets: Targets, rate_window: float = 0.5) -> Snapshot:
    """Every host polled concurrently; primed `rate_window` seconds before so that rates
    (nginx requests/s) have two samples."""
    hosts = [open_host(h, targets.settings) for h in targets.hosts]
    try:
        if rate_window > 0:
            await asyncio.gather(*(h.prime() for h in hosts))
            await asyncio.sleep(rate_window)
        snaps = await asyncio.gather(*(h.poll() for h in hosts))
    finally:
        await asyncio.gather(*(h.aclose() for h in hosts))
    return Snapshot(taken_at=time.time(), hosts=tuple(snaps))

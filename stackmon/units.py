"""Numbers as a person reads them at 3 a.m.: ages and sizes, short and never raising."""

from __future__ import annotations

import math


def human_bytes(n: int) -> str:
    if not 0 <= n < 2**63:  # not a size (a foreign agent's document): say so, do not crash
        return "?"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


def human_age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"

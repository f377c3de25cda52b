"""`stackmon stack HOST WORKER_ID`: the Python stack of a worker, now (being built)."""

from __future__ import annotations

import argparse
import sys


def configure(name: str, p: argparse.ArgumentParser) -> None:
    p.description = "The Python stack of every thread of a uWSGI worker, now (py-spy)."
    p.add_argument("host")
    p.add_argument("worker_id", type=int)


def run(name: str, args: argparse.Namespace) -> int:
    print("stackmon stack: not available yet", file=sys.stderr)
    return 2

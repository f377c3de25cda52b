"""`stackmon record` (being built)."""

from __future__ import annotations

import argparse
import sys


def configure(name: str, p: argparse.ArgumentParser) -> None:
    p.description = "not available yet"


def run(name: str, args: argparse.Namespace) -> int:
    print(f"stackmon {name}: not available yet", file=sys.stderr)
    return 2

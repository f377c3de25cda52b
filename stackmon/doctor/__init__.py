"""`stackmon doctor`: configuration and live-state checks for nginx + uWSGI behind an LB.

Layout: nginx_conf (crossplane -> block tree with file:line), facts (frozen inputs and results),
gather (files, /proc, live polls -> Facts), rules (pure functions Facts -> Findings), render
(text at 80 columns, JSON), api (diagnose for the CLI, diagnose_host for the TUI), command
(the CLI plug-in). Names are exported lazily so that importing the command module for the CLI's
parser does not load crossplane or the pollers.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "diagnose": "stackmon.doctor.api",
    "diagnose_host": "stackmon.doctor.api",
    "Diagnosis": "stackmon.doctor.api",
    "Report": "stackmon.doctor.facts",
    "Finding": "stackmon.doctor.facts",
    "Evidence": "stackmon.doctor.facts",
    "Input": "stackmon.doctor.facts",
    "Facts": "stackmon.doctor.facts",
    "LbSettings": "stackmon.doctor.facts",
    "RULES": "stackmon.doctor.rules",
    "run_rules": "stackmon.doctor.rules",
    "render_text": "stackmon.doctor.render",
    "render_json": "stackmon.doctor.render",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stackmon.doctor' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

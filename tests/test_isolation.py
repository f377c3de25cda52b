"""The suite's own hygiene: it must never write into the user's real config or state."""

from __future__ import annotations

import os
from pathlib import Path

from stackmon.actions.audit import default_audit_path
from stackmon.config import default_hosts_file


def test_xdg_directories_point_away_from_home() -> None:
    home = Path.home().resolve()
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        value = Path(os.environ[name]).resolve()
        assert home not in value.parents and value != home, name
    assert "stackmon-test-xdg-" in str(default_audit_path())
    assert "stackmon-test-xdg-" in str(default_hosts_file())

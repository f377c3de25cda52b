"""`stackmon doctor` as a user runs it: a subprocess, its exit code, stdout and stderr.

0 no warn/critical finding, 1 problems found, 2 unreadable input (one line naming file and
line, never a traceback), 3 nothing found but a target could not be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"
CLEAN = FIXTURES / "clean"
MISTUNED = FIXTURES / "mistuned"
MALFORMED = FIXTURES / "malformed"


def squeeze(text: str) -> str:
    """Text without its white space: what a reader sees, wherever the 80-column wrap fell
    (a checkout's path, and so every evidence line, can be of any length)."""
    return "".join(text.split())


def doctor(*args: str, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    # From "/" so that paths print in full (under the current directory they are relative).
    return subprocess.run([sys.executable, "-m", "stackmon.cli", "doctor", *args],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          check=False, cwd="/")


def test_clean_files_exit_0() -> None:
    got = doctor("--uwsgi-ini", str(CLEAN / "uwsgi.ini"), "--nginx-conf",
                 str(CLEAN / "nginx.conf"), "--sample", "0")
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.startswith("stackmon doctor: no findings\n")
    assert squeeze(f"uwsgi-ini: {CLEAN / 'uwsgi.ini'}") in squeeze(got.stdout)
    assert got.stderr == ""


def test_mistuned_files_exit_1_with_text_at_80_columns() -> None:
    got = doctor("--uwsgi-ini", str(MISTUNED / "uwsgi.ini"), "--nginx-conf",
                 str(MISTUNED / "nginx.conf"), "--sample", "0")
    assert got.returncode == 1, got.stderr
    lines = got.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    for rule_id in ("uwsgi.listen-vs-somaxconn", "uwsgi.harakiri-unset",
                    "nginx.read-timeout-vs-lb-idle", "nginx.keepalive-vs-lb-idle"):
        assert any(rule_id in line for line in lines), rule_id
    # The evidence names the included file and its line (wrapped when the clone's path is long).
    assert squeeze(f"{MISTUNED / 'app.conf'}:7  uwsgi_read_timeout=75s") in squeeze(got.stdout)
    # Relative to the current directory when under it.
    got = subprocess.run([sys.executable, "-m", "stackmon.cli", "doctor", "--nginx-conf",
                          "nginx.conf", "--sample", "0"], cwd=MISTUNED, capture_output=True,
                         text=True, timeout=60, check=False)
    assert "    app.conf:7  uwsgi_read_timeout=75s" in got.stdout.splitlines()


def test_json_report() -> None:
    got = doctor("--uwsgi-ini", f"{MISTUNED / 'harakiri-long.ini'}:uwsgi", "--nginx-conf",
                 str(MISTUNED / "nginx.conf"), "--sample", "0", "--json",
                 "--lb-idle-timeout", "120s", "--lb-health-interval", "10s",
                 "--lb-unhealthy-threshold", "3")
    assert got.returncode == 1, got.stderr
    doc = json.loads(got.stdout)
    assert doc["schema"] == 1
    by_id = {f["id"]: f for f in doc["findings"]}
    # LB idle 120 s: keepalive 60 s is too short, uwsgi_read_timeout 75 s is fine now.
    assert "nginx.keepalive-vs-lb-idle" in by_id
    assert "nginx.read-timeout-vs-lb-idle" not in by_id
    mercy = by_id["uwsgi.reload-mercy-vs-health-check"]
    assert mercy["evidence"][-1]["values"]["window"] == "30s"
    hara = by_id["uwsgi.harakiri-vs-read-timeout"]
    assert hara["evidence"][0] == {"file": str(MISTUNED / "harakiri-long.ini"), "line": 4,
                                   "values": {"harakiri": "90"}}
    kinds = [i["kind"] for i in doc["inputs"]]
    assert kinds == ["uwsgi-ini", "nginx-conf", "kernel"]


@pytest.mark.parametrize(("option", "name", "where"), [
    ("--uwsgi-ini", "no-equals.ini", "no-equals.ini:3"),
    ("--uwsgi-ini", "no-section.ini", "no-section.ini"),
    ("--uwsgi-ini", "latin1.ini", "latin1.ini:3"),
    ("--uwsgi-ini", "does-not-exist.ini", "does-not-exist.ini"),
    ("--nginx-conf", "extra-brace.conf", "extra-brace.conf:7"),
    ("--nginx-conf", "unclosed.conf", "unclosed.conf:4"),
    ("--nginx-conf", "missing-include.conf", "missing-include.conf:3"),
    ("--nginx-conf", "broken-include.conf", "sub/broken.conf:4"),
    ("--nginx-conf", "no-semicolon.conf", "no-semicolon.conf:4"),
    ("--nginx-conf", "does-not-exist.conf", "does-not-exist.conf"),
])
def test_unreadable_input_exits_2_with_file_and_line(option: str, name: str,
                                                     where: str) -> None:
    got = doctor(option, str(MALFORMED / name), "--sample", "0")
    assert got.returncode == 2
    assert got.stdout == ""
    assert "Traceback" not in got.stderr
    lines = got.stderr.splitlines()
    assert len(lines) == 1, got.stderr
    assert lines[0].startswith(f"stackmon: {MALFORMED / where}: ")


def test_a_malformed_file_fails_before_any_polling() -> None:
    """Files are read first: no waiting on hosts to learn that a file is broken."""
    got = doctor("--uwsgi", "127.0.0.1:1", "--uwsgi-ini", str(MALFORMED / "no-equals.ini"))
    assert got.returncode == 2
    assert got.stderr.startswith(f"stackmon: {MALFORMED / 'no-equals.ini'}:3: ")


@pytest.mark.parametrize(("args", "message"), [
    (["--lb-idle-timeout", "soon"], "--lb-idle-timeout"),
    (["--lb-unhealthy-threshold", "0"], "--lb-unhealthy-threshold"),
    (["--sample", "-1"], "--sample"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_usage_exits_2(args: list[str], message: str) -> None:
    got = doctor("--uwsgi-ini", str(CLEAN / "uwsgi.ini"), *args)
    assert got.returncode == 2
    assert message in got.stderr and "Traceback" not in got.stderr


def test_nothing_to_check(tmp_path: Path) -> None:
    got = doctor(env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert got.returncode == 2
    assert "nothing to check" in got.stderr


def test_unreachable_target_exits_3(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('[[host]]\nname = "gone"\nuwsgi = ["127.0.0.1:1"]\n'
                     '[[host]]\nname = "far"\nagent = "http://127.0.0.1:1"\n')
    got = doctor(str(hosts), "--sample", "0", "--json")
    assert got.returncode == 3, got.stdout + got.stderr
    doc = json.loads(got.stdout)
    errors = {i["host"]: i["error"] for i in doc["inputs"] if "error" in i}
    assert "connection refused" in errors["gone"]
    assert "run `stackmon doctor` there" in errors["far"]


def test_help_lists_the_options() -> None:
    got = subprocess.run([sys.executable, "-m", "stackmon.cli", "doctor", "--help"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert got.returncode == 0
    for option in ("--uwsgi-ini", "--nginx-conf", "--lb-idle-timeout", "--lb-health-timeout",
                   "--lb-health-interval", "--lb-unhealthy-threshold", "--json", "--uwsgi"):
        assert option in got.stdout

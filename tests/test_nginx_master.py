"""Where a running nginx keeps its files, found as nginx resolves them, and the one rule about
running its binary as root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stackmon.model import SourceError
from stackmon.nginx_master import (
    compiled_paths,
    master_paths,
    nginx_conf_path,
    parse_master_flags,
    trusted_binary,
)


@pytest.mark.parametrize(("title", "expected"), [
    ("nginx: master process /usr/sbin/nginx -g daemon on; master_process on;", {}),
    ("nginx: master process /usr/sbin/nginx -p /srv/x/ -c /srv/x/nginx.conf -e /srv/x/e.log "
     "-g daemon off;", {"-p": "/srv/x/", "-c": "/srv/x/nginx.conf", "-e": "/srv/x/e.log"}),
    ("nginx: master process nginx -cconf/site.conf -p/opt/ng",
     {"-c": "conf/site.conf", "-p": "/opt/ng"}),
    ("nginx: master process nginx -g pid /run/-c.pid; -c a.conf", {"-c": "a.conf"}),
    ("nginx: worker process", None),
    ("/usr/bin/python3 -c master process", None),
])
def test_master_title(title: str, expected: dict[str, str] | None) -> None:
    assert parse_master_flags(title) == expected


def test_compiled_paths_of_the_real_nginx(nginx_bin: str) -> None:
    paths = compiled_paths(nginx_bin)
    assert paths.get("conf-path", "").endswith("nginx.conf")
    assert "prefix" in paths


def test_the_running_masters_files(stack) -> None:
    assert stack.nginx_master_pid is not None
    paths = master_paths(stack.nginx_master_pid)
    assert not isinstance(paths, SourceError), paths
    assert paths.conf == str(stack.nginx_conf_path)
    assert nginx_conf_path(stack.nginx_master_pid) == str(stack.nginx_conf_path)
    not_nginx = nginx_conf_path(stack.master_pid)  # a uWSGI master
    assert isinstance(not_nginx, SourceError) and "not an nginx master" in not_nginx.message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a process of another user)")
def test_a_binary_another_user_could_have_planted_is_never_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process titled like an nginx master, run by nobody from a binary nobody owns: root
    must not execute that binary for `-V` (it would run the attacker's code as root)."""
    import tempfile
    import time

    import stackmon.nginx_master as nm

    tmp_path = Path(tempfile.mkdtemp(prefix="sm-fake-nginx-", dir="/tmp"))
    os.chmod(tmp_path, 0o755)
    fake = tmp_path / "nginx"
    shutil.copy("/bin/sleep", fake)  # any program: what matters is whose it is
    os.chown(fake, 65534, 65534)
    ran: list[str] = []

    def spy(exe: str) -> dict[str, str]:
        ran.append(exe)
        return {}

    monkeypatch.setattr(nm, "compiled_paths", spy)
    proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "bash", "-c", f"exec -a 'nginx: master process {fake}' {fake} 30"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.path.exists(f"/proc/{proc.pid}") and \
                not Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"nginx:"):
            time.sleep(0.05)
        assert os.readlink(f"/proc/{proc.pid}/exe") == str(fake)
        assert not trusted_binary(str(fake), proc.pid)
        paths = master_paths(proc.pid)  # nginx's stock defaults instead of `-V`
        assert not isinstance(paths, SourceError), paths
        assert ran == []  # the planted binary was never run
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_root_owned_binary_of_a_root_process_is_trusted() -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if os.geteuid() != 0 or not os.path.exists(nginx):
        pytest.skip("needs root and Debian's nginx")
    assert trusted_binary(nginx, os.getpid())

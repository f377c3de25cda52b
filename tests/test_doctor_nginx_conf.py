"""stackmon.doctor.nginx_conf: nginx's grammar via crossplane, with every directive keeping its
own file and line through includes, nginx's inheritance, units and listen syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackmon.doctor.nginx_conf import (
    Block,
    Directive,
    NginxConf,
    NginxConfError,
    effective,
    load,
    parse_listen,
    parse_time,
)

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"


def got(d: Directive | None) -> Directive:
    assert d is not None
    return d


def http(conf: NginxConf) -> Block:
    block = conf.block("http")
    assert block is not None
    return block


def test_includes_keep_each_directives_own_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("server {\n  listen 81;\n}\n")
    (tmp_path / "conf.d" / "b.conf").write_text("\n\nserver {\n  listen 82;\n}\n")
    (tmp_path / "nginx.conf").write_text(
        "events {}\n"
        "http {\n"
        "    include conf.d/*.conf;\n"
        "    keepalive_timeout 80s;\n"
        "}\n")
    conf = load(tmp_path / "nginx.conf")
    listens = [(Path(d.file).name, d.line, d.value) for d, _ in conf.directives("listen")]
    assert listens == [("a.conf", 2, "81"), ("b.conf", 4, "82")]
    # crossplane's combine=True would put this one in b.conf.
    keep = got(http(conf).get("keepalive_timeout"))
    assert (Path(keep.file).name, keep.line) == ("nginx.conf", 4)
    assert [Path(f).name for f in conf.files] == ["nginx.conf", "a.conf", "b.conf"]
    servers = conf.servers()
    assert [Path(p[-1].file).name for p in servers] == ["a.conf", "b.conf"]
    assert servers[1][-1].label == "server (b.conf:3)"


def test_same_file_included_twice_and_relative_to_the_main_file(tmp_path: Path) -> None:
    (tmp_path / "params").write_text("uwsgi_param A b;\n")
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp {\n server {\n"
        "  location /a { include params; uwsgi_pass unix:/a.sock; }\n"
        "  location /b { include params; uwsgi_pass unix:/b.sock; }\n"
        " }\n}\n")
    conf = load(tmp_path / "nginx.conf")
    params = [(Path(d.file).name, [b.args for b in p][-1]) for d, p in
              conf.directives("uwsgi_param")]
    assert params == [("params", ("/a",)), ("params", ("/b",))]


def test_effective_follows_nginx_inheritance() -> None:
    conf = load(FIXTURES / "mistuned" / "nginx.conf")
    ((_, path),) = list(conf.directives("uwsgi_pass"))
    assert [b.kind for b in path] == ["main", "http", "server", "location"]
    assert got(effective(path, "uwsgi_read_timeout")).value == "75s"
    assert got(effective(path, "client_header_timeout")).value == "30s"  # from the server
    assert got(effective(path, "keepalive_timeout")).value == "60s"  # from http
    assert effective(path, "client_body_timeout") is None  # nginx's default applies
    assert got(conf.main("worker_rlimit_nofile")).value == "100000000"


@pytest.mark.parametrize(("text", "seconds"), [
    ("75", 75.0), ("75s", 75.0), ("1m", 60.0), ("1m30s", 90.0), ("500ms", 0.5),
    ("1h", 3600.0), ("2d", 172800.0), ("", None), ("abc", None), ("5x", None), ("s", None),
])
def test_parse_time(text: str, seconds: float | None) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize(("args", "address", "backlog"), [
    (("80",), "*:80", None),
    (("127.0.0.1:8080", "backlog=1024"), "127.0.0.1:8080", 1024),
    (("*:443", "ssl", "backlog=4096", "reuseport"), "*:443", 4096),
    (("[::]:80", "default_server"), "*:80", None),
    (("[::1]:8080",), "[::1]:8080", None),
    (("localhost",), "localhost:80", None),
    (("unix:/run/nginx.sock", "backlog=64"), "unix:/run/nginx.sock", 64),
])
def test_parse_listen(args: tuple[str, ...], address: str, backlog: int | None) -> None:
    from stackmon.doctor.nginx_conf import Directive

    li = parse_listen(Directive("listen", args, "f", 1))
    assert li is not None
    assert (li.address, li.backlog) == (address, backlog)


@pytest.mark.parametrize(("name", "where", "message"), [
    ("extra-brace.conf", "extra-brace.conf:7", 'unexpected "}"'),
    ("unclosed.conf", "unclosed.conf:4", 'unexpected end of file, expecting "}"'),
    ("no-semicolon.conf", "no-semicolon.conf:4", "unexpected end of file"),
    ("missing-include.conf", "missing-include.conf:3", "missing-site.conf: no such file"),
    ("bad-args.conf", "bad-args.conf:3", 'invalid number of arguments in "keepalive_timeout"'),
    ("broken-include.conf", "sub/broken.conf:4", 'directive "uwsgi_pass" is not terminated'),
])
def test_errors_name_file_and_line(name: str, where: str, message: str) -> None:
    with pytest.raises(NginxConfError) as info:
        load(FIXTURES / "malformed" / name)
    text = str(info.value)
    assert text.startswith(str(FIXTURES / "malformed" / where) + ": "), text
    assert message in text
    assert " in /" not in text  # crossplane's own "in FILE:LINE" suffix is gone


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(NginxConfError, match="no such file"):
        load(tmp_path / "nope.conf")
    with pytest.raises(NginxConfError, match="is a directory"):
        load(tmp_path)


def test_invalid_utf8_is_read_like_nginx_does(tmp_path: Path) -> None:
    """nginx reads bytes: a Latin-1 comment is not an error."""
    (tmp_path / "n.conf").write_bytes(b"# caf\xe9\nevents {}\nhttp { keepalive_timeout 5s; }\n")
    conf = load(tmp_path / "n.conf")
    assert got(http(conf).get("keepalive_timeout")).line == 3


@pytest.mark.skipif(not Path("/etc/nginx/nginx.conf").exists(), reason="no system nginx.conf")
def test_the_distributions_config_parses() -> None:
    conf = load("/etc/nginx/nginx.conf")
    assert conf.block("events") is not None
    assert conf.block("http") is not None


# --- hostile includes: every file read bounded, nothing blocks -------------------------------

def _conf(tmp_path: Path, include: str) -> Path:
    path = tmp_path / "nginx.conf"
    path.write_text(f"events {{}}\nhttp {{\n    include {include};\n}}\n")
    return path


def test_include_of_proc_self_fd_glob_is_refused_without_hanging(tmp_path: Path) -> None:
    import os
    import time

    r, w = os.pipe()  # an fd that is a pipe with no writer closing: open() of it would block
    try:
        path = _conf(tmp_path, "/proc/self/fd/*")
        started = time.monotonic()
        with pytest.raises(NginxConfError) as info:
            load(path)
        assert time.monotonic() - started < 5
    finally:
        os.close(r)
        os.close(w)
    text = str(info.value)
    assert text.startswith(f"{path}:3: include /proc/self/fd/"), text
    assert "not a regular file; refusing to read it" in text


@pytest.mark.parametrize(("target", "words"), [
    ("fifo", "included file is a FIFO, not a regular file"),
    ("/dev/zero", "included file is a character device, not a regular file"),
    ("big", "included file is 104857600 bytes, over the 4194304-byte limit"),
    ("dir/*", "included file is a directory, not a regular file"),
])
def test_hostile_includes_are_refused_at_their_line(tmp_path: Path, target: str,
                                                    words: str) -> None:
    import os

    os.mkfifo(tmp_path / "fifo")
    with (tmp_path / "big").open("wb") as fh:
        fh.truncate(100 * 1024 * 1024)
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    path = _conf(tmp_path, target)
    with pytest.raises(NginxConfError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}:3: include "), str(info.value)
    assert words in str(info.value)


def test_a_fifo_as_the_main_config_is_refused(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "nginx.conf")
    with pytest.raises(NginxConfError, match="nginx config is a FIFO, not a regular file"):
        load(tmp_path / "nginx.conf")


def test_include_chains_and_file_counts_are_bounded(tmp_path: Path) -> None:
    from stackmon.doctor import nginx_conf

    for i in range(40):  # a chain deeper than nginx configs ever go
        (tmp_path / f"c{i}.conf").write_text(f"include c{i + 1}.conf;\n")
    (tmp_path / "c40.conf").write_text("")
    with pytest.raises(NginxConfError, match=r"includes nested more than 32 deep"):
        load(tmp_path / "c0.conf")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(nginx_conf.MAX_FILES + 1):
        (many / f"{i}.conf").write_text("")
    with pytest.raises(NginxConfError, match=r"matches more than 1000 files"):
        load(_conf(tmp_path, "many/*.conf"))


def test_blocks_nested_deep_are_a_conf_error_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "nginx.conf"
    path.write_text("events {}\nhttp { server { " + "location / { " * 100_000
                    + "}" * 100_002 + "\n")
    with pytest.raises(NginxConfError, match=r"blocks nested more than 64 deep"):
        load(path)


def test_an_include_cycle_is_parsed_once(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("keepalive_timeout 5s;\ninclude b.conf;\n")
    (tmp_path / "b.conf").write_text("include a.conf;\n")
    conf = load(_conf(tmp_path, "a.conf"))
    assert [Path(f).name for f in conf.files] == ["nginx.conf", "a.conf", "b.conf"]
    assert got(http(conf).get("keepalive_timeout")).value == "5s"


def test_as_user_refuses_a_file_that_user_cannot_read(tmp_path: Path) -> None:
    from stackmon.bounded_io import User

    (tmp_path / "secret.conf").write_text("keepalive_timeout 5s;\n")
    (tmp_path / "secret.conf").chmod(0o600)
    path = _conf(tmp_path, "secret.conf")
    path.chmod(0o644)
    nobody = User(65534, frozenset({65534}))
    if Path(path).stat().st_uid == nobody.uid:
        pytest.skip("running as nobody")
    with pytest.raises(NginxConfError, match=r":3: include .*secret.conf: included file is not "
                                             r"readable by uid 65534"):
        load(path, as_user=nobody)

"""stackmon.doctor.nginx_conf: nginx's grammar via crossplane, with every directive keeping its
own file and line through includes, nginx's inheritance, units and listen syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackmon.doctor.nginx_conf import (
    NginxConfError,
    effective,
    load,
    parse_listen,
    parse_time,
)

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"


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
    keep = conf.block("http").get("keepalive_timeout")
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
    assert effective(path, "uwsgi_read_timeout").value == "75s"
    assert effective(path, "client_header_timeout").value == "30s"  # from the server
    assert effective(path, "keepalive_timeout").value == "60s"  # from http
    assert effective(path, "client_body_timeout") is None  # nginx's default applies
    assert conf.main("worker_rlimit_nofile").value == "100000000"


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
    assert conf.block("http").get("keepalive_timeout").line == 3


@pytest.mark.skipif(not Path("/etc/nginx/nginx.conf").exists(), reason="no system nginx.conf")
def test_the_distributions_config_parses() -> None:
    conf = load("/etc/nginx/nginx.conf")
    assert conf.block("events") is not None
    assert conf.block("http") is not None


@pytest.mark.parametrize(("title", "expected"), [
    ("nginx: master process /usr/sbin/nginx -g daemon on; master_process on;", (None, None)),
    ("nginx: master process /usr/sbin/nginx -p /srv/x/ -c /srv/x/nginx.conf -e /srv/x/e.log "
     "-g daemon off;", ("/srv/x/nginx.conf", "/srv/x/")),
    ("nginx: master process nginx -cconf/site.conf -p/opt/ng", ("conf/site.conf", "/opt/ng")),
    ("nginx: master process nginx -g pid /run/-c.pid; -c a.conf", ("a.conf", None)),
    ("nginx: worker process", None),
    ("/usr/bin/python3 -c master process", None),
])
def test_master_title(title: str, expected: tuple[str | None, str | None] | None) -> None:
    from stackmon.doctor.gather import parse_master_title

    assert parse_master_title(title) == expected


def test_resolve_conf_follows_nginx() -> None:
    from stackmon.doctor.gather import resolve_conf

    debian = {"prefix": "/usr/share/nginx", "conf-path": "/etc/nginx/nginx.conf"}
    assert resolve_conf(None, None, "/", debian) == "/etc/nginx/nginx.conf"
    assert resolve_conf("site.conf", None, "/", debian) == "/usr/share/nginx/site.conf"
    assert resolve_conf("conf/n.conf", "run/", "/srv", {}) == "/srv/run/conf/n.conf"
    assert resolve_conf("/abs.conf", "/x", "/", {}) == "/abs.conf"
    assert resolve_conf(None, "/x", "/", {}) is None


def test_compiled_paths_of_the_real_nginx(nginx_bin: str) -> None:
    from stackmon.doctor.gather import _compiled_paths

    paths = _compiled_paths(nginx_bin)
    assert paths.get("conf-path", "").endswith("nginx.conf")
    assert "prefix" in paths

"""The hosts file and address forms: good files load, bad ones name the file and line."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from stackmon.addresses import AddressError, parse_nginx_url, parse_stats_address
from stackmon.config import ConfigError, load_hosts_file, parse_duration

GOOD = """\
[defaults]
interval = "2s"
slow = "5s"
critical = "1m"

[[host]]
name = "web-1"
uwsgi = ["127.0.0.1:9002", "/run/uwsgi/api.stats.sock", "@abs", "http://127.0.0.1:9003"]
nginx = "http://127.0.0.1/nginx_status"

[[host]]
name = "web-2"
agent = "http://10.0.0.12:9300"
token_file = "~/.config/stackmon/web-2.token"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "hosts.toml"
    p.write_text(text)
    return p


def test_good_file(tmp_path):
    t = load_hosts_file(write(tmp_path, GOOD))
    assert [h.name for h in t.hosts] == ["web-1", "web-2"]
    assert t.settings.interval == 2.0 and t.settings.slow == 5.0 and t.settings.critical == 60.0
    kinds = [a.kind for a in t.hosts[0].uwsgi]
    assert kinds == ["tcp", "unix", "abstract", "http"]
    assert t.hosts[1].token_file == Path("~/.config/stackmon/web-2.token").expanduser()


def test_overrides_win(tmp_path):
    t = load_hosts_file(write(tmp_path, GOOD), {"slow": "1s"})
    assert t.settings.slow == 1.0 and t.settings.interval == 2.0


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (GOOD.replace('"127.0.0.1:9002"', '"nonsense"'), 8, "unknown address form"),
        (GOOD.replace('slow = "5s"', 'slow = "fast"'), 3, "expected a duration"),
        (GOOD.replace('name = "web-2"', 'nme = "web-2"'), 12, "unknown key 'nme'"),
        (GOOD.replace('interval = "2s"', 'interval = '), 2, "invalid TOML"),
        (GOOD.replace('name = "web-2"', 'name = "web-1"'), 12, "appears twice"),
        (GOOD.replace('agent = "http://10.0.0.12:9300"', 'agent = "10.0.0.12"'), 13, "agent"),
        (GOOD.replace('nginx = "http://127.0.0.1/nginx_status"', 'nginx = 80'), 9, "string"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_hosts_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert words in message


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="no such hosts file"):
        load_hosts_file(tmp_path / "absent.toml")
    p = tmp_path / "bad.toml"
    p.write_bytes(b'[[host]]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match=r":2: not valid UTF-8"):
        load_hosts_file(p)


def test_critical_shorter_than_slow_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="shorter than slow"):
        load_hosts_file(write(tmp_path, GOOD.replace('critical = "1m"', 'critical = "1s"')))


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("500ms", 0.5), ("2m", 120), (3, 3)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["host", "127.0.0.1:99999", "ftp://x", "@", "x:y"])
def test_bad_addresses(bad):
    with pytest.raises(AddressError):
        parse_stats_address(bad)


# --- URLs: credentials refused, malformed ones a one-line error --------------------------------

SECRET_URL = "http://user:s3cretpw@127.0.0.1:1/nginx_status?token=abc123"


def test_nginx_url_with_credentials_is_refused_without_echoing_them():
    with pytest.raises(AddressError) as info:
        parse_nginx_url(SECRET_URL)
    message = str(info.value)
    assert "credentials in the URL are not supported" in message
    assert "s3cretpw" not in message and "abc123" not in message


def test_nginx_url_keeps_a_query_token():
    # nginx may need it; it is redacted where shown (tests/test_nginx_status.py)
    url = "http://127.0.0.1/nginx_status?token=abc123"
    assert parse_nginx_url(url) == url


@pytest.mark.parametrize(
    ("agent", "words"),
    [
        ("http://admin:hunter2pw@10.0.0.12:9300", "credentials in the URL are not supported"),
        ("http://admin:hunter2pw@10.0.0.12:9300", "token_file"),
        ("http://[::1", "bad agent URL"),
        ("http://10.0.0.12:99999", "bad port in agent URL"),
        ("http://:9300", "no host in agent URL"),
        ("http://10.0.0.12:9300/?token=hunter2pw", "query"),
    ],
)
def test_bad_agent_urls_name_the_line(tmp_path, agent, words):
    path = write(tmp_path, GOOD.replace("http://10.0.0.12:9300", agent))
    with pytest.raises(ConfigError) as info:
        load_hosts_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:13: host 'web-2': "), message
    assert words in message
    assert "hunter2pw" not in message


def test_nginx_url_with_credentials_in_a_hosts_file(tmp_path):
    path = write(tmp_path, GOOD.replace("http://127.0.0.1/nginx_status", SECRET_URL))
    with pytest.raises(ConfigError) as info:
        load_hosts_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:9: host 'web-1': credentials in the URL"), message
    assert "s3cretpw" not in message and "abc123" not in message


def test_agent_url_is_kept_without_trailing_slash(tmp_path):
    t = load_hosts_file(write(tmp_path, GOOD.replace("10.0.0.12:9300", "10.0.0.12:9300/")))
    assert t.hosts[1].agent == "http://10.0.0.12:9300"


@pytest.mark.parametrize("bad", ["http://[::1", "http://[::1]:x", "http://u:p@127.0.0.1:9003",
                                 "http://127.0.0.1:0x50"])
def test_bad_stats_urls_are_address_errors(bad):
    with pytest.raises(AddressError):
        parse_stats_address(bad)


@pytest.mark.parametrize("bad", ["http://[::1", "http://[::1]:x/s", "http://h:99999/s",
                                 "https://a@h/s"])
def test_bad_nginx_urls_are_address_errors(bad):
    with pytest.raises(AddressError):
        parse_nginx_url(bad)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackmon.cli", *args], capture_output=True,
                          text=True, timeout=60)


def assert_one_line_usage_error(proc: subprocess.CompletedProcess[str], words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--uwsgi", "http://[::1"], "bad stats address"),
        (["--nginx", "http://[::1"], "bad nginx status URL"),
        (["--uwsgi", "127.0.0.1:1", "--nginx", SECRET_URL], "credentials in the URL"),
    ],
)
def test_cli_bad_urls_exit_2_with_one_line(args, words):
    line = assert_one_line_usage_error(run_cli("snapshot", *args), words)
    assert "s3cretpw" not in line and "abc123" not in line


def test_cli_hosts_file_with_a_malformed_agent_url_exits_2(tmp_path):
    path = write(tmp_path, '[[host]]\nname = "r"\nagent = "http://[::1"\n')
    line = assert_one_line_usage_error(run_cli("snapshot", str(path)), "bad agent URL")
    assert line.startswith(f"stackmon: {path}:3: host 'r': ")


# --- durations: TOML's nan and inf are not durations ------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf,
                                 pytest.param("1" + "0" * 400 + "s", id="1e400s"), 0, -1])
def test_durations_must_be_finite_and_positive(bad):
    with pytest.raises(ConfigError):
        parse_duration(bad)


@pytest.mark.parametrize("literal", ["nan", "inf", "+inf", "-nan"])
def test_nan_and_inf_timeouts_in_a_hosts_file_are_refused(tmp_path, literal):
    path = write(tmp_path, GOOD.replace('critical = "1m"', f'critical = "1m"\ntimeout = {literal}'))
    with pytest.raises(ConfigError) as info:
        load_hosts_file(path)
    assert str(info.value).startswith(f"{path}:5: "), str(info.value)
    assert "timeout" in str(info.value)


# --- hostile hosts-file paths: bounded, non-blocking reads -----------------------------------

def test_a_fifo_as_hosts_file_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "hosts.toml"
    os.mkfifo(fifo)  # no writer: a plain open() would block forever
    with pytest.raises(ConfigError) as info:
        load_hosts_file(fifo)
    assert str(info.value) == (f"{fifo}: hosts file is a FIFO, not a regular file; refusing to "
                               "read it")


def test_dev_zero_as_hosts_file_is_refused():
    with pytest.raises(ConfigError, match=r"^/dev/zero: hosts file is a character device"):
        load_hosts_file(Path("/dev/zero"))


def test_a_huge_hosts_file_is_refused_by_its_size(tmp_path):
    path = tmp_path / "hosts.toml"
    with path.open("wb") as fh:
        fh.truncate(100 * 1024 * 1024)  # sparse: 100 MB without writing them
    with pytest.raises(ConfigError, match=r"hosts file is 104857600 bytes, over the "
                                          r"4194304-byte limit"):
        load_hosts_file(path)


@pytest.mark.parametrize("deep", [
    pytest.param('x = ' + '[' * 100_000 + ']' * 100_000 + '\n', id="arrays"),
    pytest.param('x = ' + '{a = ' * 100_000 + '1' + '}' * 100_000 + '\n', id="inline-tables"),
])
def test_toml_nested_100000_deep_is_a_config_error(tmp_path, deep):
    path = write(tmp_path, deep)
    with pytest.raises(ConfigError, match=r"invalid TOML: arrays or tables nested too deeply$"):
        load_hosts_file(path)


def test_toml_nested_deep_but_parseable_is_refused_before_use(tmp_path):
    """tomllib takes ~900 levels; the rest of stackmon (repr in an error, JSON) must not see
    them either."""
    path = write(tmp_path, GOOD.replace('nginx = "http://127.0.0.1/nginx_status"',
                                        'nginx = ' + '[' * 200 + ']' * 200))
    with pytest.raises(ConfigError, match=r"nested more than 16 deep"):
        load_hosts_file(path)


def test_cli_hosts_file_fifo_and_deep_toml_exit_2_with_one_line(tmp_path):
    import os

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    line = assert_one_line_usage_error(run_cli("snapshot", str(fifo)), "a FIFO")
    assert line == f"stackmon: {fifo}: hosts file is a FIFO, not a regular file; refusing to " \
                   "read it"
    deep = write(tmp_path, 'x = ' + '[' * 100_000 + ']' * 100_000 + '\n')
    assert_one_line_usage_error(run_cli("snapshot", str(deep)), "nested too deeply")


def test_lb_health_group_and_log_keys(tmp_path: Path) -> None:
    f = tmp_path / "hosts.toml"
    f.write_text(
        '[defaults]\nlb_idle_timeout = "50s"\nhealth_timeout = "3s"\nhealth_interval = "10s"\n'
        'unhealthy_threshold = 3\nwindow = "2m"\n'
        '[[host]]\nname = "web-1"\ngroup = "api"\nuwsgi = ["127.0.0.1:9002", "/run/b.sock"]\n'
        'health = "http://127.0.0.1/healthz"\nnginx_access_log = "/var/log/nginx/a.log"\n'
        'nginx_error_log = "/var/log/nginx/e.log"\nuwsgi_log = ["/var/log/uwsgi/a.log"]\n')
    t = load_hosts_file(f)
    s, h = t.settings, t.hosts[0]
    assert (s.lb_idle_timeout, s.health_timeout, s.health_interval) == (50.0, 3.0, 10.0)
    assert (s.unhealthy_threshold, s.window) == (3, 120.0)
    assert h.group == "api" and h.health == "http://127.0.0.1/healthz"
    assert h.nginx_access_log == "/var/log/nginx/a.log"
    assert h.nginx_error_log == "/var/log/nginx/e.log"
    assert h.uwsgi_log == ("/var/log/uwsgi/a.log",)


@pytest.mark.parametrize("snippet,expect", [
    ('[defaults]\nunhealthy_threshold = 0\n', ":2: defaults: unhealthy_threshold"),
    ('[defaults]\nunhealthy_threshold = "2"\n', "unhealthy_threshold must be a whole number"),
    ('[defaults]\nhealth_timeout = "soon"\n', ":2: defaults: health_timeout"),
])
def test_bad_lb_settings_name_the_line(tmp_path: Path, snippet: str, expect: str) -> None:
    f = tmp_path / "hosts.toml"
    f.write_text(snippet + '[[host]]\nname = "a"\nuwsgi = ["127.0.0.1:1"]\n')
    with pytest.raises(ConfigError, match=expect):
        load_hosts_file(f)


def test_health_url_and_uwsgi_log_count_are_checked(tmp_path: Path) -> None:
    f = tmp_path / "hosts.toml"
    f.write_text('[[host]]\nname = "a"\nuwsgi = ["127.0.0.1:1"]\nhealth = "healthz"\n')
    with pytest.raises(ConfigError, match=r":4: host 'a': health must be a URL"):
        load_hosts_file(f)
    f.write_text('[[host]]\nname = "a"\nuwsgi = ["127.0.0.1:1"]\nuwsgi_log = ["/a", "/b"]\n')
    with pytest.raises(ConfigError, match="2 uwsgi_log paths for 1 uwsgi entries"):
        load_hosts_file(f)


# --- include = [...] and [groups.NAME] (issue 15: large hosts files) ---------------------------

MAIN = """\
include = ["hosts.d/*.toml"]
[defaults]
slow = "5s"
critical = "1m"

[groups.api]
slow = "2s"
timeout = "1s"

[[host]]
name = "edge-1"
uwsgi = ["127.0.0.1:9002"]
"""


def host_toml(name: str, group: str | None = None, port: int = 9002) -> str:
    grp = f'group = "{group}"\n' if group else ""
    return f'[[host]]\nname = "{name}"\n{grp}uwsgi = ["127.0.0.1:{port}"]\n'


def fleet_dir(tmp_path: Path, main: str = MAIN, **files: str) -> Path:
    (tmp_path / "hosts.d").mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / "hosts.d" / f"{name}.toml").write_text(text)
    return write(tmp_path, main)


def test_include_reads_matches_in_order_relative_to_the_including_file(tmp_path, monkeypatch):
    path = fleet_dir(tmp_path, b=host_toml("api-2", "api"), a=host_toml("api-1", "api"),
                     c=host_toml("batch-1", "batch"))
    (tmp_path / "hosts.d" / "notes.txt").write_text("not toml at all [[[")  # not matched
    monkeypatch.chdir("/")  # relative to the file, not to the working directory
    t = load_hosts_file(path)
    assert [h.name for h in t.hosts] == ["edge-1", "api-1", "api-2", "batch-1"]
    assert t.hosts[1].group == "api"


def test_group_settings_layer_over_defaults_and_under_the_command_line(tmp_path):
    path = fleet_dir(tmp_path, a=host_toml("api-1", "api"), c=host_toml("batch-1", "batch"))
    t = load_hosts_file(path, {"timeout": "3s"})
    edge, api, batch = t.hosts
    assert t.settings_for(edge).slow == 5.0 and t.settings_for(batch).slow == 5.0
    api_s = t.settings_for(api)
    assert (api_s.slow, api_s.critical) == (2.0, 60.0)  # its own, then the file's defaults
    assert api_s.timeout == 3.0  # the command line wins over the group
    assert edge.settings is None and api.settings == api_s


def test_a_grouped_host_is_polled_and_acted_on_with_its_group_settings(tmp_path):
    from stackmon.hosts import open_host
    from stackmon.poller import HostPoller

    path = fleet_dir(tmp_path, a=host_toml("api-1", "api"))
    t = load_hosts_file(path)
    api = t.hosts[1]
    assert open_host(api, t.settings).settings.slow == 2.0
    assert HostPoller(1, api, t.settings).deadline == 1.0 * 2 + 1  # the group's 1 s timeout


@pytest.mark.parametrize(("files", "main", "where", "words"), [
    ({"a": "[[host]]\nname = \"x\"\nuwsgi = [\"nonsense\"]\n"}, MAIN, "hosts.d/a.toml:3",
     "unknown address form"),
    ({"a": host_toml("edge-1")}, MAIN, "hosts.d/a.toml:2", "appears twice (also at "),
    ({"a": "[defaults]\nslow = \"1s\"\n" + host_toml("a")}, MAIN, "hosts.d/a.toml:1",
     "[defaults] belongs in the main hosts file"),
    ({}, MAIN.replace('"hosts.d/*.toml"', '"hosts.d/missing.toml"'), "hosts.toml:1",
     "include"),
    ({}, MAIN.replace('["hosts.d/*.toml"]', "3"), "hosts.toml:1",
     "include must be a list of paths"),
    ({"a": host_toml("a", "api")}, MAIN.replace('slow = "2s"', 'slow = "soon"'), "hosts.toml:7",
     "[groups.api]: slow"),
    ({"a": host_toml("a", "api")}, MAIN.replace('timeout = "1s"', 'colour = "red"'),
     "hosts.toml:8", "unknown key 'colour'"),
    ({"a": host_toml("a", "apj")}, MAIN, "hosts.toml:6",
     "[groups.api] names a group no host is in (groups of the hosts: apj)"),
    ({"a": host_toml("a", "api") + "[groups.api]\nslow = \"1s\"\n"}, MAIN, "hosts.d/a.toml:5",
     "[groups.api] is defined twice"),
])
def test_include_and_group_errors_name_file_and_line(tmp_path, files, main, where, words):
    path = fleet_dir(tmp_path, main, **files)
    with pytest.raises(ConfigError) as info:
        load_hosts_file(path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/{where}: "), message
    assert words in message, message


def test_include_cycles_are_refused(tmp_path):
    path = fleet_dir(tmp_path, MAIN.replace("hosts.d/*.toml", "hosts.d/a.toml"),
                     a='include = ["b.toml"]\n' + host_toml("a"),
                     b='include = ["../hosts.toml"]\n' + host_toml("b"))
    with pytest.raises(ConfigError) as info:
        load_hosts_file(path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/hosts.d/b.toml:1: include cycle: "), message
    assert message.endswith(f"{path} -> {tmp_path}/hosts.d/a.toml -> "
                            f"{tmp_path}/hosts.d/b.toml -> {path}"), message


def test_a_file_included_itself_and_twice(tmp_path):
    path = fleet_dir(tmp_path, 'include = ["hosts.toml"]\n' + host_toml("a"))
    with pytest.raises(ConfigError, match=r"hosts.toml:1: include cycle: "):
        load_hosts_file(path)
    path = fleet_dir(tmp_path, 'include = ["hosts.d/a.toml", "hosts.d/*.toml"]\n'
                               + host_toml("m"), a=host_toml("a"))
    with pytest.raises(ConfigError, match=r"hosts.toml:1: .*a.toml is included twice"):
        load_hosts_file(path)


def test_included_fifo_and_directory_are_refused_without_blocking(tmp_path):
    import os

    path = fleet_dir(tmp_path)
    os.mkfifo(tmp_path / "hosts.d" / "pipe.toml")
    with pytest.raises(ConfigError) as info:
        load_hosts_file(path)
    assert str(info.value) == (f"{path}:1: include {tmp_path}/hosts.d/pipe.toml: included file "
                               "is a FIFO, not a regular file; refusing to read it")
    (tmp_path / "hosts.d" / "pipe.toml").unlink()
    (tmp_path / "hosts.d" / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match=r"dir.toml: included file is a directory"):
        load_hosts_file(path)


def test_include_after_a_table_says_where_it_belongs(tmp_path):
    path = write(tmp_path, '[defaults]\nslow = "5s"\ninclude = ["x/*.toml"]\n' + host_toml("a"))
    with pytest.raises(ConfigError, match=r"hosts.toml:1: defaults: include must come before "
                                          r"the first \[table\]"):
        load_hosts_file(path)


def test_include_bounds_depth_and_file_count(tmp_path, monkeypatch):
    import stackmon.config as config

    chain = {f"f{i}": f'include = ["f{i + 1}.toml"]\n' for i in range(12)}
    path = fleet_dir(tmp_path, MAIN.replace("hosts.d/*.toml", "hosts.d/f0.toml"), **chain)
    (tmp_path / "hosts.d" / "f12.toml").write_text(host_toml("deep"))
    with pytest.raises(ConfigError, match=rf"includes nested more than "
                                          rf"{config.MAX_INCLUDE_DEPTH} deep"):
        load_hosts_file(path)
    monkeypatch.setattr(config, "MAX_INCLUDE_FILES", 5)
    files = {f"h{i:02d}": host_toml(f"h{i}") for i in range(8)}
    path = fleet_dir(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path, **files)
    with pytest.raises(ConfigError, match=r"matches 8 files, over the limit of 5|more than 5 "
                                          r"files included"):
        load_hosts_file(path)


def test_a_fleet_of_500_hosts_in_files_of_one_host_loads(tmp_path):
    files = {f"web-{i:03d}": host_toml(f"web-{i:03d}", "api" if i % 2 else "batch")
             for i in range(500)}
    t = load_hosts_file(fleet_dir(tmp_path, **files))
    assert len(t.hosts) == 501 and t.hosts[-1].name == "web-499"


def test_select_group_and_the_cli_group_option(tmp_path):
    from stackmon.config import select_group

    path = fleet_dir(tmp_path, a=host_toml("api-1", "api"), c=host_toml("batch-1", "batch"))
    t = load_hosts_file(path)
    assert [h.name for h in select_group(t, "api").hosts] == ["api-1"]
    with pytest.raises(ConfigError, match=r"no host in group 'web' in .*\(groups: api, batch\)"):
        select_group(t, "web")
    proc = run_cli("snapshot", str(path), "--group", "nope")
    assert_one_line_usage_error(proc, "no host in group 'nope'")
    proc = run_cli("snapshot", "--uwsgi", "127.0.0.1:1", "--group", "api")
    assert_one_line_usage_error(proc, "--group selects hosts of a hosts file")


def test_cli_group_narrows_the_snapshot(tmp_path):
    import json

    path = fleet_dir(tmp_path, a=host_toml("api-1", "api", port=1),
                     c=host_toml("batch-1", "batch", port=1))
    proc = run_cli("snapshot", str(path), "--group", "batch", "--json", "--rate-window", "0",
                   "--timeout", "0.5s")
    doc = json.loads(proc.stdout)
    assert [(h["name"], h["group"]) for h in doc["hosts"]] == [("batch-1", "batch")]


def test_an_agent_host_is_grouped_by_the_hosts_file_not_by_its_agent(tmp_path):
    from stackmon.agent.client import AgentSource
    from stackmon.config import HostConfig, Settings
    from stackmon.model import HostSnapshot

    src = AgentSource(HostConfig(name="web-9", agent="http://127.0.0.1:1", group="api"),
                      Settings())
    snap = src.to_snapshot({"name": "agent-name", "group": "other", "taken_at": 1.0,
                            "reachable": True}, 1.0)
    assert isinstance(snap, HostSnapshot)
    assert (snap.name, snap.group) == ("web-9", "api")

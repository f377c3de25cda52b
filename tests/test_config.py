"""The hosts file and address forms: good files load, bad ones name the file and line."""

from pathlib import Path

import pytest

from stackmon.addresses import AddressError, parse_stats_address
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

"""Secrets are redacted at the source and control characters made visible."""

import pytest

from stackmon.redact import REDACTED, clean, redact_var, visible


@pytest.mark.parametrize(
    "key",
    ["HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION", "HTTP_X_AUTH_TOKEN",
     "HTTP_X_API_KEY", "HTTP_X_CSRF_TOKEN", "HTTP_X_SESSION_ID", "DB_PASSWORD"],
)
def test_secret_headers_are_redacted_whole(key):
    assert redact_var(key, "s3cr3t-value") == REDACTED


def test_ordinary_headers_are_kept():
    assert redact_var("HTTP_USER_AGENT", "curl/8.1") == "curl/8.1"
    assert redact_var("REQUEST_URI", "/report?id=42&page=2") == "/report?id=42&page=2"


@pytest.mark.parametrize(
    ("uri", "secret"),
    [("/cb?code=abc123&state=x", "abc123"), ("/a?access_token=tok999", "tok999"),
     ("/login?user=bob&password=hunter2", "hunter2"), ("/x?sessionid=S1&y=1", "S1"),
     ("/x?api_key=K9", "K9")],
)
def test_secret_query_parameters_are_redacted(uri, secret):
    out = clean(uri)
    assert secret not in out
    assert REDACTED in out


def test_bearer_jwt_and_userinfo_in_free_text():
    assert "abcdefghijkl" not in clean("Bearer abcdefghijkl")
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sgnature_x"
    assert jwt not in clean(f"ref {jwt}")
    assert "pa55" not in clean("https://bob:pa55@example.com/x")


def test_control_characters_become_visible_text():
    assert visible("/x\x1b[2J\x07y\x9b") == "/x\\x1b[2J\\x07y\\x9b"
    assert visible("/plain/path") == "/plain/path"

"""Secrets are redacted at the source and control characters made visible."""

import pytest

from stackmon.redact import REDACTED, clean, redact_var, visible


@pytest.mark.parametrize(
    "key",
    ["HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION", "HTTP_X_AUTH_TOKEN",
     "HTTP_X_API_KEY", "HTTP_X_CSRF_TOKEN", "HTTP_X_SESSION_ID", "DB_PASSWORD",
     # AUTH as a whole word anywhere, *AUTHENTICAT*, access keys, names ending in KEY
     "HTTP_X_AUTH_KEY", "HTTP_X_ACCESS_KEY", "HTTP_X_UPSTREAM_AUTHENTICATION", "HTTP_X_AUTH",
     "HTTP_X_AUTH_USER_KEY", "HTTP_X_LICENSE_KEY", "HTTP_X_ACCESSKEY"],
)
def test_secret_headers_are_redacted_whole(key):
    assert redact_var(key, "s3cr3t-value") == REDACTED


def test_ordinary_headers_are_kept():
    assert redact_var("HTTP_USER_AGENT", "curl/8.1") == "curl/8.1"
    assert redact_var("REQUEST_URI", "/report?id=42&page=2") == "/report?id=42&page=2"


@pytest.mark.parametrize(
    "key",
    ["HTTP_USER_AGENT", "HTTP_ACCEPT", "HTTP_X_REQUEST_ID", "HTTP_ACCEPT_LANGUAGE",
     "HTTP_X_AUTHOR", "HTTP_KEYBOARD_LAYOUT", "HTTP_ACCESS_CONTROL_REQUEST_METHOD",
     "HTTP_X_MONKEYS"],
)
def test_ordinary_header_names_stay(key):
    assert redact_var(key, "plain-value") == "plain-value"


@pytest.mark.parametrize(
    ("uri", "secret"),
    [("/cb?code=abc123&state=x", "abc123"), ("/a?access_token=tok999", "tok999"),
     ("/login?user=bob&password=hunter2", "hunter2"), ("/x?sessionid=S1&y=1", "S1"),
     ("/x?api_key=K9", "K9"), ("/login?user=bob&pass=hunter2", "hunter2"),
     ("/cas/validate?service=x&ticket=ST-1234-abcd", "ST-1234-abcd"), ("/2fa?otp=918273", "918273"),
     ("/card?pin=4321", "4321"), ("/x?user_pass=pw77", "pw77"), ("/x?service-ticket=T9", "T9"),
     ("/x?sms_otp=5566", "5566"), ("/x?card_pin=8080", "8080")],
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


@pytest.mark.parametrize(
    "uri",
    ["/list?page=2&id=42&q=shoes", "/x?spin=1&passenger=2&ticketing=open&pinned=1&otpx=1",
     "/search?q=pass+the+ticket"],
)
def test_ordinary_query_parameters_stay(uri):
    assert clean(uri) == uri


def test_lone_surrogates_become_replacement_characters():
    """JSON can spell a lone surrogate ("\\ud800") and a non-UTF-8 argv decodes to them: either
    would make the write to a UTF-8 terminal, socket or log raise."""
    shown = visible("a\ud800b\udcff\x1b")
    assert shown == "a\ufffdb\ufffd\\x1b"
    shown.encode("utf-8")
    assert clean("/x?token=abc\udfff") == "/x?token=<redacted>"
    assert visible(shown) == shown  # idempotent, as the agent's readers rely on

"""stub_status parsing: the exact format, dropped connections and the request rate."""

import asyncio
from pathlib import Path

from stackmon.model import NginxStatus, SourceError
from stackmon.sources.nginx_status import fetch_stub_status, parse_stub_status

FIXTURE = Path(__file__).parent / "fixtures" / "nginx" / "stub_status.txt"


def test_parses_recorded_page():
    n = parse_stub_status(FIXTURE.read_text(), "http://x/s", 100.0)
    assert isinstance(n, NginxStatus)
    assert (n.active, n.accepts, n.handled, n.requests) == (291, 16630948, 16630948, 31070465)
    assert (n.reading, n.writing, n.waiting) == (6, 179, 106)
    assert n.dropped == 0
    assert n.requests_per_s is None


def test_dropped_and_rate_from_two_samples():
    page = "Active connections: 3 \nserver accepts handled requests\n {a} {h} {r} \n" \
           "Reading: 0 Writing: 1 Waiting: 2 \n"
    first = parse_stub_status(page.format(a=100, h=100, r=1000), "u", 10.0)
    assert isinstance(first, NginxStatus)
    second = parse_stub_status(page.format(a=130, h=120, r=1250), "u", 12.0, first)
    assert isinstance(second, NginxStatus)
    assert second.dropped == 10
    assert second.requests_per_s == 125.0


def test_counter_reset_gives_no_rate():
    page = "Active connections: 1 \nserver accepts handled requests\n {r} {r} {r} \n" \
           "Reading: 0 Writing: 1 Waiting: 0 \n"
    first = parse_stub_status(page.format(r=500), "u", 1.0)
    assert isinstance(first, NginxStatus)
    second = parse_stub_status(page.format(r=5), "u", 2.0, first)
    assert isinstance(second, NginxStatus) and second.requests_per_s is None


def test_not_a_stub_status_page():
    for body in ("<html><body>502 Bad Gateway</body></html>", "", "Active connections: 3\n"):
        err = parse_stub_status(body, "http://x/s", 1.0)
        assert isinstance(err, SourceError)
        assert "not a stub_status page" in err.message


# --- a URL's secrets never reach what is shown ------------------------------------------------

TOKEN_URL = "http://127.0.0.1:1/nginx_status?token=abc123"


def test_a_token_in_the_url_is_redacted_in_the_status_and_its_errors():
    page = FIXTURE.read_text()
    first = parse_stub_status(page, TOKEN_URL, 1.0)
    assert isinstance(first, NginxStatus)
    assert "abc123" not in first.url and "token=<redacted>" in first.url
    second = parse_stub_status(page, TOKEN_URL, 2.0, first)
    assert isinstance(second, NginxStatus) and second.requests_per_s == 0.0  # same URL still
    err = parse_stub_status("<html>token=abc123</html>", TOKEN_URL, 1.0)
    assert isinstance(err, SourceError)
    assert "abc123" not in err.source and "abc123" not in err.message


def test_fetch_errors_never_show_the_urls_secrets():
    # parse_nginx_url refuses user:password@; a URL built in code still must not leak it
    for url in (TOKEN_URL, "http://user:s3cretpw@127.0.0.1:1/nginx_status?token=abc123",
                "http://user:s3cretpw@[::1/nginx_status?token=abc123"):
        err = asyncio.run(fetch_stub_status(url, timeout=2.0))
        assert isinstance(err, SourceError), err
        shown = f"{err.source} {err.message}"
        assert err.source.startswith("nginx http://")
        assert "s3cretpw" not in shown and "abc123" not in shown, shown


def _page(requests: str) -> str:
    return ("Active connections: 1 \nserver accepts handled requests\n 5 5 " + requests
            + " \nReading: 0 Writing: 1 Waiting: 0 \n")


def test_absurd_counters_are_a_clear_error_not_a_crash():
    """int() refuses more than 4,300 digits with a ValueError; nginx's counters are 64-bit."""
    for digits in ("9" * 5000, str(2**63)):
        result = parse_stub_status(_page(digits), "http://127.0.0.1/s", 1.0)
        assert isinstance(result, SourceError)
        assert f"stub_status counter 'requests' is out of range ({len(digits)} digits)" \
            in result.message
    largest = parse_stub_status(_page(str(2**63 - 1)), "http://127.0.0.1/s", 1.0)
    assert isinstance(largest, NginxStatus) and largest.requests == 2**63 - 1

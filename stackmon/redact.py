"""Redaction of secrets and neutralising of control characters, applied at the source.

uWSGI's stats server hands out every header of every request in flight, Cookie and
Authorization included. stackmon redacts them where the document is parsed, so that no later
layer (TUI, JSON, agent, recordings, audit log) ever holds a secret it could leak. Redaction errs
on the side of hiding: a false positive costs a little context, a false negative leaks a session.
"""

from __future__ import annotations

import functools
import re

REDACTED = "<redacted>"

# Header / variable names whose whole value is a secret. AUTH counts as a whole word of the
# name wherever it sits (HTTP_X_AUTH_KEY: `_AUTH\b` missed it, `_` being a word character), and
# so does a name ending in KEY or naming an access key (Cloudflare's X-Auth-Key, X-Access-Key):
# vendors' key headers are rarely called API_KEY.
_SECRET_KEYS = re.compile(
    r"(COOKIE|AUTHORI[SZ]ATION|AUTHENTICAT|TOKEN|PASSW|SECRET|SESSION|API[_-]?KEY|"
    r"ACCESS[_-]?KEY|CSRF|XSRF|CREDENTIAL|SIGNATURE|PRIVATE|^HTTP_AUTH|"
    r"(?:^|[_-])AUTH(?:[^A-Z0-9]|$)|(?:^|[_-])KEY$)",
    re.IGNORECASE,
)

# key=value pairs inside a URI, query string or referer; the key decides (see _redact_param).
# Short words only count as the whole name or its last -/_ part (pin=, user_pass=, ticket= of
# CAS, otp=), so that ordinary parameters containing them (spin=, passenger=) stay readable.
_PARAM = re.compile(r"(?P<key>[^=&;?#/\s]+)=(?P<val>[^&;#\s]*)")
_SECRET_PARAM_WORDS = re.compile(
    r"(?i)token|passw|secret|session|sessid|auth|api[_-]?key|apikey|csrf|xsrf|signature|"
    r"credential|(?:^|[_-])(?:code|sid|key|sig|pw|pwd|pass|ticket|otp|pin)$"
)

# Bearer-like values that give themselves away whatever header carries them.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}")
# user:password@ in a URL
_URL_USERINFO = re.compile(r"(?i)(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+:[^/@\s]*@")

# What every pattern of redact_text needs to match at all: values without any of these (most of
# them: paths, user agents, addresses) are returned untouched without running four passes.
_MAY_CHANGE = re.compile(r"=|://|eyJ|(?i:bearer|basic|token)")

# C0 and C1 controls, DEL: a stats document may carry raw terminal escapes in a URI. Lone
# surrogates too: JSON can spell one ("\\ud800"), a command-line argument that is not UTF-8
# decodes to them, and any of them makes the write to a UTF-8 stdout or socket raise.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEYS.search(key))


def redact_text(value: str) -> str:
    """Redact secrets that may sit inside free text: query parameters, bearer values, JWTs."""
    if not value or not _MAY_CHANGE.search(value):
        return value
    out = _PARAM.sub(_redact_param, value) if "=" in value else value
    out = _JWT.sub(REDACTED, out)
    out = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", out)
    out = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", out)
    return out


def _redact_param(m: re.Match[str]) -> str:
    if m.group("val") and _SECRET_PARAM_WORDS.search(m.group("key")):
        return f"{m.group('key')}={REDACTED}"
    return m.group()


def redact_var(key: str, value: str) -> str:
    """The value of one request variable as it may be shown anywhere."""
    if is_secret_key(key):
        return REDACTED if value else value
    return redact_text(value)


def _shown_char(m: re.Match[str]) -> str:
    char = m.group()
    return "\ufffd" if char >= "\ud800" else f"\\x{ord(char):02x}"


def visible(text: str) -> str:
    """Make control characters visible (``\\x1b`` -> ``\\x1b`` literally) so that a URI cannot
    move the cursor, change colours or clear the screen of the terminal showing it; a lone
    surrogate becomes U+FFFD, so that the text can always be encoded (printed, sent, logged)."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(_shown_char, text)


def clean(text: str) -> str:
    """Redacted and visible: what a source stores for any text that came from outside."""
    return visible(redact_text(text))


@functools.lru_cache(maxsize=4096)
def _key_info(key: str) -> tuple[bool, str]:
    """Per header name, once: is it a secret, and how is the name shown. Bounded, since names
    come from requests."""
    return is_secret_key(key), visible(key)


def redact_pair(key: str, value: str) -> tuple[str, str]:
    """(visible(key), visible(redact_var(key, value))), fast: the parser calls this for every
    variable of every request in flight, thousands per poll on a big instance."""
    secret, shown_key = _key_info(key)
    shown = (REDACTED if value else value) if secret else redact_text(value)
    return shown_key, shown if shown.isprintable() else visible(shown)

"""Who may do what: bearer tokens for the API, a signed session cookie and CSRF tokens for the pages.

Writes always need a token from ``settings.api_tokens()`` (compared in constant time); reads need one
only when ``settings.read_auth`` is on. A person signs in to the pages by pasting a token once: the
session cookie holds a keyed fingerprint of the token, never the token, so rotating the token ends
the session. Every HTML form carries a CSRF token bound to that session (signed double submit).

The signing key is the secret named by ``settings.csrf_secret_name``; without it a random key per
process is used (fine for one process; set CSRF_SECRET when running several gunicorn workers).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from orchestrator.config import Settings
from orchestrator.errors import Forbidden, Unauthorized

SESSION_COOKIE = "mlship_session"
SESSION_MAX_AGE = 12 * 3600
_PROCESS_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``name`` is the secret name of its token, never its value."""

    name: str


def _key(settings: Settings) -> bytes:
    configured = settings.secrets.get(settings.csrf_secret_name)
    return configured.encode() if configured else _PROCESS_KEY


def signing_key(settings: Settings) -> bytes:
    """A key derived from the signing secret, for Flask's session (flash messages)."""
    return hmac.new(_key(settings), b"flask-session", hashlib.sha256).digest()


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def check_token(settings: Settings, token: str | None) -> Principal:
    """The principal a token belongs to; Unauthorized without one, Forbidden for a wrong one."""
    if not token:
        raise Unauthorized("this needs an API token: send 'Authorization: Bearer <token>'")
    tokens = _tokens(settings)
    if not tokens:
        raise Forbidden(
            "no API tokens are configured on this server: set "
            + " or ".join(settings.api_token_names)
            + " and restart"
        )
    match = None
    # Compare against every token (no early exit) so timing does not tell which one nearly matched.
    for name, known in tokens:
        if hmac.compare_digest(token.encode(), known.encode()):
            match = name
    if match is None:
        raise Forbidden("the API token is not valid (check MLSHIP_TOKEN or the token you pasted)")
    return Principal(name=match)


def _tokens(settings: Settings) -> list[tuple[str, str]]:
    """(secret name, value) of every configured API token; the name identifies who acted."""
    pairs = ((n, settings.secrets.get(n)) for n in settings.api_token_names)
    return [(n, v) for n, v in pairs if v]


# -- sessions for the HTML pages -------------------------------------------------------------------


def _fingerprint(settings: Settings, token: str) -> str:
    return _mac(_key(settings), "token", token)[:32]


def session_value(settings: Settings, token: str, nonce: str | None = None) -> str:
    """The cookie for a signed-in person: nonce, token fingerprint and a MAC over both."""
    nonce = nonce or secrets.token_hex(16)
    fp = _fingerprint(settings, token)
    return f"{nonce}.{fp}.{_mac(_key(settings), 'session', nonce, fp)}"


def check_session(settings: Settings, cookie: str | None) -> Principal | None:
    """The principal of a valid session cookie (its token still configured), else None."""
    if not cookie or cookie.count(".") != 2:
        return None
    nonce, fp, mac = cookie.split(".")
    if not hmac.compare_digest(mac, _mac(_key(settings), "session", nonce, fp)):
        return None
    found = None
    for name, token in _tokens(settings):
        if hmac.compare_digest(fp, _fingerprint(settings, token)):
            found = name
    return Principal(name=found) if found is not None else None


def csrf_token(settings: Settings, cookie: str) -> str:
    """The CSRF token the forms of this session carry."""
    nonce = cookie.split(".", 1)[0]
    return _mac(_key(settings), "csrf", nonce)


def check_csrf(settings: Settings, cookie: str | None, submitted: str | None) -> None:
    """Forbidden unless ``submitted`` is this session's CSRF token."""
    if not cookie or not submitted or not hmac.compare_digest(submitted, csrf_token(settings, cookie)):
        raise Forbidden("the form's CSRF token is missing or stale: reload the page and try again")

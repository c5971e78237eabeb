"""Pure logic, table-driven: ref validation, the ls-remote argv, bearer parsing, tokens, sessions, CSRF."""

from __future__ import annotations

import pytest

from orchestrator.actions import ls_remote_argv, normalize_ref
from orchestrator.config import Secrets, Settings
from orchestrator.errors import Forbidden, PayloadError, Unauthorized
from orchestrator.web import auth


@pytest.mark.parametrize(
    "ref, full, branch",
    [
        ("main", "refs/heads/main", "main"),
        ("refs/heads/main", "refs/heads/main", "main"),
        ("feature/x-1.2_b+c", "refs/heads/feature/x-1.2_b+c", "feature/x-1.2_b+c"),
    ],
)
def test_valid_refs(ref, full, branch):
    assert normalize_ref(ref) == (full, branch)


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "-x",
        "--upload-pack=sh",
        "a..b",
        "a//b",
        "a/",
        "a.",
        "a.lock",
        "a@{1}",
        "a b",
        "a;rm -rf /",
        "$(id)",
        "a\nb",
        "x" * 256,
        "refs/heads/",
        "a/.b",
        "ü",
    ],
)
def test_invalid_refs(ref):
    with pytest.raises(PayloadError):
        normalize_ref(ref)


def test_ls_remote_argv_puts_the_ref_after_double_dash():
    assert ls_remote_argv("file:///srv/o.git", "refs/heads/main") == [
        "git",
        "ls-remote",
        "file:///srv/o.git",
        "--",
        "refs/heads/main",
    ]


@pytest.mark.parametrize(
    "header, token",
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
    ],
)
def test_bearer(header, token):
    assert auth.bearer(header) == token


def settings(**secrets: str) -> Settings:
    return Settings(secrets=Secrets(env=secrets), api_token_names=("API_TOKEN", "CI_TOKEN"))


def test_check_token():
    s = settings(API_TOKEN="a" * 20, CI_TOKEN="b" * 20, CSRF_SECRET="k")
    assert auth.check_token(s, "a" * 20).name == "API_TOKEN"
    assert auth.check_token(s, "b" * 20).name == "CI_TOKEN"
    with pytest.raises(Unauthorized):
        auth.check_token(s, None)
    with pytest.raises(Forbidden) as exc:
        auth.check_token(s, "a" * 19)
    assert "a" * 19 not in str(exc.value)


def test_sessions_and_csrf():
    s = settings(API_TOKEN="tok", CSRF_SECRET="k")
    cookie = auth.session_value(s, "tok")
    assert "tok" not in cookie.split(".")
    assert auth.check_session(s, cookie) == auth.Principal("API_TOKEN")
    nonce, fp, mac = cookie.split(".")
    assert auth.check_session(s, f"{nonce}.{fp}.{'0' * len(mac)}") is None  # forged MAC
    assert auth.check_session(s, "garbage") is None
    assert auth.check_session(settings(API_TOKEN="other", CSRF_SECRET="k"), cookie) is None  # rotated
    assert auth.check_session(settings(API_TOKEN="tok", CSRF_SECRET="other-key"), cookie) is None
    token = auth.csrf_token(s, cookie)
    auth.check_csrf(s, cookie, token)
    flipped = token[:-1] + ("1" if token[-1] == "0" else "0")
    for bad_cookie, bad_token in [
        (cookie, None),
        (cookie, flipped),
        (None, token),
        (auth.session_value(s, "tok"), token),
    ]:
        with pytest.raises(Forbidden):
            auth.check_csrf(s, bad_cookie, bad_token)

"""github.py, pure: signatures, headers, payload parsing and trigger decisions, table-driven."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import pytest

from orchestrator.config import RepoConfig, Triggers
from orchestrator.errors import ConfigError, PayloadError, SignatureError
from orchestrator.intake.github import (
    Meta,
    branch_matches,
    decide,
    parse_body,
    parse_meta,
    repository_of,
    sign,
    verify_signature,
)

from .helpers import MERGE_SHA, REPO, merged_pr, payload, push_to

# -- signature --------------------------------------------------------------------------------------

# GitHub's documented test vector (docs: "Validating webhook deliveries").
GITHUB_VECTOR = (
    "It's a Secret to Everybody",
    b"Hello, World!",
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
)


def test_github_documented_test_vector() -> None:
    secret, body, expected = GITHUB_VECTOR
    assert sign(secret.encode(), body) == expected
    assert verify_signature(body, expected, [secret.encode()]) == 0


BODY = b'{"zen": "Design for failure."}'
GOOD = sign(b"s1", BODY)


@pytest.mark.parametrize(
    ("header", "secrets", "expected"),
    [
        (GOOD, [b"s1"], 0),
        (GOOD, [b"s0", b"s1"], 1),  # rotation: the second secret signed it
        (GOOD, [b"s1", b"s1-new"], 0),
        ("  " + GOOD[:7] + GOOD[7:] + " ", [b"s1"], SignatureError),  # prefix must come first
        (GOOD + " ", [b"s1"], 0),  # trailing whitespace tolerated
        (GOOD.upper().replace("SHA256=", "sha256="), [b"s1"], SignatureError),  # hex is lower-case
        (None, [b"s1"], SignatureError),
        ("", [b"s1"], SignatureError),
        ("sha1=" + "0" * 40, [b"s1"], SignatureError),  # the legacy SHA-1 header format
        ("sha256=", [b"s1"], SignatureError),
        ("sha256=" + "0" * 64, [b"s1"], SignatureError),
        (GOOD[:-1], [b"s1"], SignatureError),  # truncated
        (GOOD + "00", [b"s1"], SignatureError),  # extended
        (sign(b"s2", BODY), [b"s1"], SignatureError),
        (sign(b"s1", BODY + b" "), [b"s1"], SignatureError),  # body changed after signing
        ("sha256=\u00e9\u00e9", [b"s1"], SignatureError),  # non-ASCII does not crash the compare
        (GOOD, [], ConfigError),
        (GOOD, [b"s1", b""], ConfigError),  # an empty secret is never "accept all"
    ],
)
def test_verify_signature(header: str | None, secrets: list[bytes], expected: Any) -> None:
    if isinstance(expected, int):
        assert verify_signature(BODY, header, secrets) == expected
    else:
        with pytest.raises(expected):
            verify_signature(BODY, header, secrets)


@pytest.mark.parametrize("header", [None, "sha256=" + "a" * 64, "sha256=nothex", GOOD[:-2] + "ff"])
def test_signature_errors_never_reveal_the_expected_mac(header: str | None) -> None:
    secrets = [b"s1", b"s2"]
    expected_macs = [hmac.new(s, BODY, hashlib.sha256).hexdigest() for s in secrets]
    with pytest.raises(SignatureError) as err:
        verify_signature(BODY, header, secrets)
    text = str(err.value) + repr(err.value.context)
    for mac in expected_macs:
        assert mac not in text and mac[:16] not in text
    assert not re.search(r"[0-9a-f]{32}", text)
    assert "s1" not in text and "s2" not in text


# -- headers and body -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "X-GitHub-Event": "push"},
            Meta("72d3162e-cc78-11e3-81ab-4c9367dc0958", "push"),
        ),
        ({"X-GitHub-Delivery": "d1", "X-GitHub-Event": "pull_request"}, Meta("d1", "pull_request")),
        ({"X-GitHub-Event": "push"}, "missing X-GitHub-Delivery"),
        ({"X-GitHub-Delivery": "", "X-GitHub-Event": "push"}, "missing X-GitHub-Delivery"),
        ({"X-GitHub-Delivery": "d1"}, "missing X-GitHub-Event"),
        ({"X-GitHub-Delivery": "a b", "X-GitHub-Event": "push"}, "must be 1-100 characters"),
        ({"X-GitHub-Delivery": "x" * 101, "X-GitHub-Event": "push"}, "must be 1-100 characters"),
        ({"X-GitHub-Delivery": "../../etc", "X-GitHub-Event": "push"}, "must be 1-100 characters"),
        ({"X-GitHub-Delivery": "d1", "X-GitHub-Event": "Push; rm"}, "lower-case event name"),
    ],
)
def test_parse_meta(headers: dict[str, str], expected: Meta | str) -> None:
    if isinstance(expected, Meta):
        assert parse_meta(headers) == expected
    else:
        with pytest.raises(PayloadError, match=expected):
            parse_meta(headers)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{}", None),
        (b'{"a": 1}', None),
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"payload=%7B%7D", "not valid JSON"),  # a form-encoded body
    ],
)
def test_parse_body(body: bytes, error: str | None) -> None:
    if error is None:
        assert isinstance(parse_body(body), dict)
    else:
        with pytest.raises(PayloadError, match=error):
            parse_body(body)


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        ({"repository": {"full_name": "acme/x"}}, "acme/x"),
        ({"zen": "z"}, None),
        ({"repository": {"full_name": ""}}, PayloadError),
        ({"repository": {"full_name": 7}}, PayloadError),
        ({"repository": "acme/x"}, PayloadError),
    ],
)
def test_repository_of(p: dict[str, Any], expected: Any) -> None:
    if expected is PayloadError:
        with pytest.raises(PayloadError):
            repository_of(p)
    else:
        assert repository_of(p) == expected


# -- decisions --------------------------------------------------------------------------------------

DEFAULT = RepoConfig(full_name=REPO, clone_url="git@github.com:acme/house-price.git")
PUSH_MAIN = RepoConfig(full_name=REPO, clone_url="x", triggers=Triggers(push=("main",)))
GLOBS = RepoConfig(
    full_name=REPO,
    clone_url="x",
    triggers=Triggers(pull_request_merged=("release/*",), push=("release/*", "main")),
)


def _with(p: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    obj = p
    for key in parents:
        obj = obj[key]
    if value is _DELETE:
        del obj[last]
    else:
        obj[last] = value
    return p


_DELETE = object()

# (name, event, payload, repo, expected): expected is ("build", kind, branch, sha) or ("ignored", reason
# fragment) or an error message fragment for PayloadError.
CASES: list[tuple[str, str, dict[str, Any], RepoConfig, tuple[str, ...]]] = [
    ("ping", "ping", payload("ping"), DEFAULT, ("ignored", "ping: webhook 109948940 is set up")),
    (
        "merged into main",
        "pull_request",
        payload("pull_request.closed.merged"),
        DEFAULT,
        ("build", "pull_request_merged", "main", MERGE_SHA),
    ),
    (
        "merged into master",
        "pull_request",
        merged_pr(MERGE_SHA, base="master"),
        DEFAULT,
        ("build", "pull_request_merged", "master", MERGE_SHA),
    ),
    (
        "merged into an untracked branch",
        "pull_request",
        merged_pr(MERGE_SHA, base="develop"),
        DEFAULT,
        ("ignored", "merged into 'develop', which is not tracked (tracked: main, master)"),
    ),
    (
        "merged into a glob-tracked branch",
        "pull_request",
        merged_pr(MERGE_SHA, base="release/1.2"),
        GLOBS,
        ("build", "pull_request_merged", "release/1.2", MERGE_SHA),
    ),
    (
        "closed unmerged",
        "pull_request",
        payload("pull_request.closed.unmerged"),
        DEFAULT,
        ("ignored", "pull request #42 was closed without merging"),
    ),
    (
        "opened",
        "pull_request",
        payload("pull_request.opened"),
        DEFAULT,
        ("ignored", "pull request #42 opened: only merged pull requests start builds"),
    ),
    (
        "synchronize",
        "pull_request",
        payload("pull_request.synchronize"),
        DEFAULT,
        ("ignored", "pull request #42 synchronize: only merged"),
    ),
    (
        "merged with upper-case sha",
        "pull_request",
        merged_pr(MERGE_SHA.upper()),
        DEFAULT,
        ("build", "pull_request_merged", "main", MERGE_SHA),
    ),
    (
        "merged without merge sha",
        "pull_request",
        _with(payload("pull_request.closed.merged"), "pull_request.merge_commit_sha", None),
        DEFAULT,
        ("pull_request.merge_commit_sha",),
    ),
    ("merged with a short sha", "pull_request", merged_pr("c4295bd"), DEFAULT, ("40 hex characters",)),
    (
        "merged with a hostile sha",
        "pull_request",
        merged_pr("--upload-pack=touch /tmp/x" + "a" * 14),
        DEFAULT,
        ("40 hex characters",),
    ),
    (
        "no action",
        "pull_request",
        _with(payload("pull_request.opened"), "action", _DELETE),
        DEFAULT,
        ("'action' must be a non-empty string",),
    ),
    (
        "no pull_request object",
        "pull_request",
        _with(payload("pull_request.opened"), "pull_request", None),
        DEFAULT,
        ("'pull_request' must be a JSON object",),
    ),
    (
        "base ref not a string",
        "pull_request",
        _with(payload("pull_request.opened"), "pull_request.base.ref", ["main"]),
        DEFAULT,
        ("pull_request.base.ref",),
    ),
    (
        "push to main, no push triggers",
        "push",
        payload("push.branch"),
        DEFAULT,
        ("ignored", "push triggers are not configured for acme/house-price"),
    ),
    (
        "push to main, push triggers for main",
        "push",
        payload("push.branch"),
        PUSH_MAIN,
        ("build", "push", "main", MERGE_SHA),
    ),
    (
        "push to another branch",
        "push",
        push_to("feature", "a" * 40),
        PUSH_MAIN,
        ("ignored", "push to 'feature', which is not tracked for pushes (tracked: main)"),
    ),
    (
        "push to a glob-tracked branch",
        "push",
        push_to("release/2.0", "b" * 40),
        GLOBS,
        ("build", "push", "release/2.0", "b" * 40),
    ),
    ("tag push", "push", payload("push.tag"), PUSH_MAIN, ("ignored", "tag push (refs/tags/v1.4.0)")),
    (
        "branch deletion",
        "push",
        payload("push.deleted"),
        PUSH_MAIN,
        ("ignored", "branch deletion (refs/heads/retrain-2024)"),
    ),
    (
        "deletion flagged by after only",
        "push",
        push_to("main", "0" * 40),
        PUSH_MAIN,
        ("ignored", "branch deletion"),
    ),
    (
        "push to a non-branch ref",
        "push",
        _with(payload("push.branch"), "ref", "refs/notes/commits"),
        PUSH_MAIN,
        ("ignored", "not a branch"),
    ),
    (
        "push without ref",
        "push",
        _with(payload("push.branch"), "ref", _DELETE),
        PUSH_MAIN,
        ("'ref' must be a non-empty string",),
    ),
    (
        "push with a bad after",
        "push",
        push_to("main", "zz" * 20),
        PUSH_MAIN,
        ("'after' must be a commit sha",),
    ),
    (
        "unknown event",
        "issues",
        {"action": "opened", "repository": {"full_name": REPO}},
        DEFAULT,
        ("ignored", "event 'issues' does not start builds"),
    ),
    ("release event", "release", {"action": "published"}, DEFAULT, ("ignored", "event 'release'")),
]


@pytest.mark.parametrize(
    ("event", "p", "repo", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(event: str, p: dict[str, Any], repo: RepoConfig, expected: tuple[str, ...]) -> None:
    if expected[0] == "build":
        d = decide(event, p, repo)
        assert d.trigger is not None, d.reason
        _, kind, branch, sha = expected
        assert (d.trigger.kind, d.trigger.branch, d.trigger.sha, d.sha) == (kind, branch, sha, sha)
        assert d.trigger.ref == "refs/heads/" + branch and d.trigger.repo == REPO
    elif expected[0] == "ignored":
        d = decide(event, p, repo)
        assert d.trigger is None
        assert expected[1] in d.reason
    else:
        with pytest.raises(PayloadError, match=re.escape(expected[0])):
            decide(event, p, repo)


def test_merged_pr_trigger_carries_who_what_where() -> None:
    d = decide("pull_request", payload("pull_request.closed.merged"), DEFAULT)
    t = d.trigger
    assert t is not None
    assert (t.author, t.message, t.url, t.pr_number) == (
        "octocat",
        "Retrain with the 2024 listings",
        "https://github.com/acme/house-price/pull/42",
        42,
    )
    assert d.action == "closed" and d.ref == "refs/heads/main"


def test_push_trigger_carries_commit_message_and_author() -> None:
    t = decide("push", payload("push.branch"), PUSH_MAIN).trigger
    assert t is not None
    assert t.author == "octocat" and t.message.startswith("Merge pull request #42")
    assert t.url == f"https://github.com/acme/house-price/commit/{MERGE_SHA}"


def test_ping_echoes_zen() -> None:
    assert decide("ping", payload("ping"), DEFAULT).zen == "Design for failure."


HOSTILE = [
    "$(touch /tmp/x)",
    "--upload-pack=touch /tmp/pwned",
    "`id`; rm -rf /",
    "ветка/功能/🚀",
    "b" * 300,
    "main\nINJECTED: yes",
    "-",
    "a'b\"c",
]


@pytest.mark.parametrize("branch", HOSTILE)
def test_hostile_branch_names_never_become_a_build(branch: str) -> None:
    """The API's branch-name check (``normalize_ref``) runs before a trigger exists: PayloadError
    naming the field, so the name never reaches git or ``${BRANCH}``."""
    every = RepoConfig(
        full_name=REPO, clone_url="x", triggers=Triggers(pull_request_merged=("*",), push=("*",))
    )
    with pytest.raises(PayloadError, match=r"'ref': .*(branch name|not a valid)"):
        decide("push", push_to(branch, "c" * 40), every)
    with pytest.raises(PayloadError, match=r"'pull_request.base.ref': .*branch"):
        decide("pull_request", merged_pr("d" * 40, base=branch), every)
    # Exact names only match themselves: a hostile name is never "tracked" by accident.
    assert decide("push", push_to(branch, "c" * 40), PUSH_MAIN).trigger is None


@pytest.mark.parametrize("branch", ["main", "feature/x", "release/1.2", "a_b+c-d", "UPPER/9"])
def test_ordinary_branch_names_build_verbatim(branch: str) -> None:
    every = RepoConfig(
        full_name=REPO, clone_url="x", triggers=Triggers(pull_request_merged=("*",), push=("*",))
    )
    t = decide("push", push_to(branch, "c" * 40), every).trigger
    assert t is not None and t.branch == branch and t.ref == "refs/heads/" + branch
    t = decide("pull_request", merged_pr("d" * 40, base=branch), every).trigger
    assert t is not None and t.branch == branch


@pytest.mark.parametrize(
    ("branch", "patterns", "expected"),
    [
        ("main", ("main",), True),
        ("main", ("master",), False),
        ("release/1.0", ("release/*",), True),
        ("release", ("release/*",), False),
        ("feature/x", ("*",), True),
        ("[abc]", ("[abc]",), True),  # equality first: a literal name with glob characters
        ("a", ("[abc]",), True),
        ("main", (), False),
    ],
)
def test_branch_matches(branch: str, patterns: tuple[str, ...], expected: bool) -> None:
    assert branch_matches(branch, patterns) is expected

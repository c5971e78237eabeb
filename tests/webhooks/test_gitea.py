"""Gitea and Forgejo: the pure module (signature, headers, decisions; table-driven) and
POST /webhooks/gitea with the documented payloads through Flask's test client against a real Redis."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

import pytest

from orchestrator import create_app
from orchestrator.config import RepoConfig, Triggers
from orchestrator.errors import ConfigError, PayloadError, SignatureError
from orchestrator.intake import forge, gitea

from .forge_helpers import (
    GITEA_MERGE_SHA,
    GITEA_PUSH_REPO,
    GITEA_REPO,
    GITEA_SECRET,
    GITLAB_TOKEN,
    Forge,
    forge_settings,
    gitea_headers,
    payload,
)
from .test_endpoint import builds_queued, jobs_in_queue

PUSHED = "bffeb74224043ba2feb48d137756c8a9331c449a"  # "after" of Gitea's documented push example
BODY = b'{"ref": "refs/heads/main"}'


def repo(
    name: str = GITEA_REPO, merged: tuple[str, ...] = ("main",), push: tuple[str, ...] = ()
) -> RepoConfig:
    return RepoConfig(
        full_name=name,
        clone_url="https://gitea.example.com/x.git",
        forge="gitea",
        api_url="https://gitea.example.com/api/v1",
        triggers=Triggers(pull_request_merged=merged, push=push),
    )


def merged(**pr: Any) -> dict[str, Any]:
    p = payload("gitea/pull_request.closed.merged")
    p["pull_request"].update(pr)
    return p


# -- signature --------------------------------------------------------------------------------------

SECRETS = [b"the secret before rotation", GITEA_SECRET.encode()]
GOOD = hmac.new(GITEA_SECRET.encode(), BODY, hashlib.sha256).hexdigest()


def test_sign_is_hex_hmac_sha256_of_the_raw_body() -> None:
    assert gitea.sign(GITEA_SECRET.encode(), BODY) == GOOD and re.fullmatch(r"[0-9a-f]{64}", GOOD)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Gitea-Signature": GOOD}, 1),
        ({"X-Forgejo-Signature": GOOD}, 1),
        ({"X-Forgejo-Signature": GOOD, "X-Gitea-Signature": GOOD}, 1),
        ({"X-Gitea-Signature": GOOD.upper()}, 1),  # hex digits, either case
        ({"X-Gitea-Signature": gitea.sign(SECRETS[0], BODY)}, 0),  # rotation: the old secret
        ({}, SignatureError("missing X-Gitea-Signature (or X-Forgejo-Signature) header")),
        ({"X-Hub-Signature-256": "sha256=" + GOOD}, SignatureError("missing X-Gitea-Signature")),  # not ours
        ({"X-Gitea-Signature": "sha256=" + GOOD}, SignatureError("X-Gitea-Signature must be 64 hex digits")),
        ({"X-Gitea-Signature": GOOD[:-1]}, SignatureError("must be 64 hex digits")),
        (
            {"X-Gitea-Signature": "0" * 64},
            SignatureError("X-Gitea-Signature does not match any configured secret"),
        ),
        (
            {"X-Forgejo-Signature": gitea.sign(b"guess", BODY)},
            SignatureError("X-Forgejo-Signature does not match"),
        ),
        (
            {"X-Gitea-Signature": gitea.sign(GITEA_SECRET.encode(), BODY + b" ")},
            SignatureError("does not match"),
        ),
    ],
)
def test_verify(headers: dict[str, str], expected: int | Exception) -> None:
    if isinstance(expected, Exception):
        with pytest.raises(SignatureError, match=re.escape(str(expected))) as err:
            gitea.verify(BODY, headers, SECRETS)
        assert GOOD not in str(err.value) and GOOD[:16] not in str(err.value)
    else:
        assert gitea.verify(BODY, headers, SECRETS) == expected


def test_verify_needs_real_secrets() -> None:
    with pytest.raises(ConfigError, match="no webhook secret is configured"):
        gitea.verify(BODY, {"X-Gitea-Signature": GOOD}, [])
    with pytest.raises(ConfigError, match="an empty webhook secret"):
        gitea.verify(BODY, {"X-Gitea-Signature": GOOD}, [b""])


def test_every_secret_is_compared_in_constant_time(monkeypatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = forge.hmac.compare_digest
    monkeypatch.setattr(forge.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert gitea.verify(BODY, {"X-Gitea-Signature": GOOD}, SECRETS) == 1
    assert len(calls) == 2


# -- headers ----------------------------------------------------------------------------------------

GUID = "f6266f16-1bf3-46a5-9ea4-602e06ead473"  # Gitea's documented example


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Gitea-Delivery": GUID, "X-Gitea-Event": "push"}, gitea.Meta(GUID, "push")),
        ({"X-Forgejo-Delivery": GUID, "X-Forgejo-Event": "pull_request"}, gitea.Meta(GUID, "pull_request")),
        (
            {"X-Forgejo-Delivery": GUID, "X-Gitea-Delivery": "other", "X-Gitea-Event": "push"},
            gitea.Meta(GUID, "push"),
        ),
        ({"X-Gitea-Event": "push"}, "missing X-Gitea-Delivery header: is this a Gitea webhook delivery?"),
        ({"X-Gitea-Delivery": "a b", "X-Gitea-Event": "push"}, "X-Gitea-Delivery must be 1-100 characters"),
        ({"X-Gitea-Delivery": GUID}, "missing X-Gitea-Event header"),
        (
            {"X-Gitea-Delivery": GUID, "X-Gitea-Event": "Push Hook"},
            "X-Gitea-Event must be a lower-case event",
        ),
        ({"X-GitHub-Delivery": GUID, "X-GitHub-Event": "push"}, "missing X-Gitea-Delivery header"),
    ],
)
def test_parse_meta(headers: dict[str, str], expected: gitea.Meta | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(PayloadError, match=re.escape(expected)):
            gitea.parse_meta(headers)
    else:
        assert gitea.parse_meta(headers) == expected


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (payload("gitea/push"), GITEA_PUSH_REPO),
        (payload("gitea/pull_request.closed.merged"), GITEA_REPO),
        ({"ref": "refs/heads/main"}, None),
        ({"repository": {"full_name": 7}}, PayloadError("'repository.full_name' must be a non-empty string")),
    ],
)
def test_repository_of(p: dict[str, Any], expected: str | Exception | None) -> None:
    if isinstance(expected, Exception):
        with pytest.raises(PayloadError, match=re.escape(str(expected))):
            gitea.repository_of(p)
    else:
        assert gitea.repository_of(p) == expected


# -- decisions --------------------------------------------------------------------------------------


def push_without_head_commit(**kw: Any) -> dict[str, Any]:
    p = payload("gitea/push")  # the documented example has no head_commit: the listed commit is used
    p.update(kw)
    return p


DECISIONS = [
    # (name, event, payload, repo, expected): ("build", kind, branch, sha) or ("ignored", reason) or (error,)
    ("merged", "pull_request", merged(), repo(), ("build", "pull_request_merged", "main", GITEA_MERGE_SHA)),
    (
        "merged into a glob",
        "pull_request",
        merged(base={"ref": "release/2"}),
        repo(merged=("release/*",)),
        ("build", "pull_request_merged", "release/2", GITEA_MERGE_SHA),
    ),
    (
        "closed unmerged",
        "pull_request",
        payload("gitea/pull_request.closed.unmerged"),
        repo(),
        ("ignored", "pull request #12 was closed without merging"),
    ),
    (
        "opened",
        "pull_request",
        payload("gitea/pull_request.opened"),
        repo(),
        ("ignored", "pull request #12 opened: only merged pull requests start builds"),
    ),
    (
        "label updated",
        "pull_request",
        {**payload("gitea/pull_request.opened"), "action": "label_updated"},
        repo(),
        ("ignored", "pull request #12 label_updated: only merged"),
    ),
    (
        "untracked base",
        "pull_request",
        merged(),
        repo(merged=("master",)),
        ("ignored", "pull request #12 was merged into 'main', which is not tracked (tracked: master)"),
    ),
    (
        "merged without a merge sha",
        "pull_request",
        merged(merge_commit_sha=None),
        repo(),
        ("'pull_request.merge_commit_sha' must be a commit sha of 40 hex characters",),
    ),
    (
        "push",
        "push",
        payload("gitea/push"),
        repo(GITEA_PUSH_REPO, push=("develop",)),
        ("build", "push", "develop", PUSHED),
    ),
    (
        "push, no push triggers",
        "push",
        payload("gitea/push"),
        repo(GITEA_PUSH_REPO),
        ("ignored", "push to 'develop': push triggers are not configured for gitea/webhooks"),
    ),
    (
        "push, untracked",
        "push",
        payload("gitea/push"),
        repo(GITEA_PUSH_REPO, push=("main",)),
        ("ignored", "push to 'develop', which is not tracked for pushes (tracked: main)"),
    ),
    (
        "tag push",
        "push",
        push_without_head_commit(ref="refs/tags/v1.0"),
        repo(push=("*",)),
        ("ignored", "tag push (refs/tags/v1.0) does not start builds"),
    ),
    (
        "branch deletion",
        "push",
        push_without_head_commit(after=forge.ZERO_SHA, commits=[]),
        repo(push=("*",)),
        ("ignored", "branch deletion (refs/heads/develop) does not start builds"),
    ),
    (
        "issues",
        "issues",
        payload("gitea/push"),
        repo(),
        ("ignored", "event 'issues' does not start builds; in the webhook settings, trigger on Push events"),
    ),
    (
        "push with a bad sha",
        "push",
        push_without_head_commit(after="xyz"),
        repo(push=("*",)),
        ("'after' must be a commit sha",),
    ),
    (
        "pull request without base",
        "pull_request",
        merged(base=None),
        repo(),
        ("'pull_request.base' must be a JSON object",),
    ),
]


@pytest.mark.parametrize(("name", "event", "p", "cfg", "expected"), DECISIONS, ids=[c[0] for c in DECISIONS])
def test_decide(name: str, event: str, p: dict[str, Any], cfg: RepoConfig, expected: tuple[str, ...]) -> None:
    if expected[0] == "build":
        d = gitea.decide(event, p, cfg)
        _, kind, branch, sha = expected
        assert d.trigger is not None, d.reason
        assert (d.trigger.kind, d.trigger.branch, d.trigger.sha, d.sha) == (kind, branch, sha, sha)
        assert d.trigger.ref == d.ref == "refs/heads/" + branch and d.trigger.repo == cfg.full_name
    elif expected[0] == "ignored":
        d = gitea.decide(event, p, cfg)
        assert d.trigger is None and expected[1] in d.reason, d.reason
    else:
        with pytest.raises(PayloadError, match=re.escape(expected[0])):
            gitea.decide(event, p, cfg)


def test_triggers_carry_who_what_and_where() -> None:
    d = gitea.decide("pull_request", merged(), repo())
    assert d.trigger is not None and d.reason == "pull request #12 merged into 'main'"
    assert (d.trigger.author, d.trigger.message, d.trigger.url, d.trigger.pr_number) == (
        "user1",
        "Fix bug",
        "http://localhost:3000/test/repo/pulls/12",
        12,
    )
    d = gitea.decide("push", payload("gitea/push"), repo(GITEA_PUSH_REPO, push=("develop",)))
    assert d.trigger is not None
    assert (d.trigger.author, d.trigger.message) == ("gitea", "Webhooks Yay!")
    assert d.trigger.url == f"http://localhost:3000/gitea/webhooks/commit/{PUSHED}"


# -- the endpoint -----------------------------------------------------------------------------------


@pytest.fixture
def ge(redis_url: str) -> Forge:
    return Forge(create_app(forge_settings(redis_url)).test_client(), "gitea")


@pytest.mark.parametrize("forgejo", [False, True], ids=["gitea", "forgejo"])
def test_documented_merge_builds_exactly_once(ge: Forge, store, redis_url, forgejo: bool) -> None:
    r = ge.send("pull_request", payload("gitea/pull_request.closed.merged"), forgejo=forgejo)
    assert (r.status, r.body["verdict"], r.body["number"]) == (202, "queued", 1), r.body
    b = store.get_build(r.body["build"])
    assert (b.repo, b.sha, b.branch, b.trigger, b.author, b.message) == (
        GITEA_REPO,
        GITEA_MERGE_SHA,
        "main",
        "pull_request_merged",
        "user1",
        "Fix bug",
    )
    assert builds_queued(store, redis_url) == [b.id]
    d = store.get_delivery(r.delivery)
    assert d is not None
    assert (d.verdict, d.status_code, d.event, d.action, d.repo, d.build_id) == (
        "queued",
        202,
        "pull_request",
        "closed",
        GITEA_REPO,
        b.id,
    )
    again = ge.send(
        "pull_request", payload("gitea/pull_request.closed.merged"), delivery=r.delivery, forgejo=forgejo
    )
    assert (again.status, again.body) == (r.status, r.body)
    assert store.latest_build_id() == 1 and len(jobs_in_queue(redis_url)) == 1


def test_merge_and_its_push_give_one_build(redis_url, store) -> None:
    ge = Forge(create_app(forge_settings(redis_url, push=("main",))).test_client(), "gitea")
    first = ge.send("pull_request", payload("gitea/pull_request.closed.merged"))
    push = payload("gitea/push")
    push.update(ref="refs/heads/main", after=GITEA_MERGE_SHA)
    push["repository"]["full_name"] = GITEA_REPO
    second = ge.send("push", push)
    assert (first.status, second.status, second.body["verdict"]) == (202, 200, "duplicate")
    assert second.body["build"] == first.body["build"] and builds_queued(store, redis_url) == [
        first.body["build"]
    ]


def test_documented_push_builds_when_configured(redis_url, store) -> None:
    ge = Forge(create_app(forge_settings(redis_url, push=("develop",))).test_client(), "gitea")
    r = ge.send("push", payload("gitea/push"))
    assert (r.status, r.body["verdict"]) == (202, "queued"), r.body
    b = store.get_build(r.body["build"])
    assert (b.repo, b.trigger, b.branch, b.sha, b.author) == (
        GITEA_PUSH_REPO,
        "push",
        "develop",
        PUSHED,
        "gitea",
    )


@pytest.mark.parametrize(
    ("event", "name", "reason"),
    [
        ("pull_request", "pull_request.closed.unmerged", "pull request #12 was closed without merging"),
        (
            "pull_request",
            "pull_request.opened",
            "pull request #12 opened: only merged pull requests start builds",
        ),
        ("push", "push", "push to 'develop': push triggers are not configured for gitea/webhooks"),
        ("issues", "pull_request.opened", "event 'issues' does not start builds"),
    ],
)
def test_ignored_deliveries_answer_200_with_the_reason(
    ge: Forge, store, redis_url, event, name, reason
) -> None:
    r = ge.send(event, payload(f"gitea/{name}"))
    assert (r.status, r.body["verdict"]) == (200, "ignored") and reason in r.body["reason"], r.body
    d = store.get_delivery(r.delivery)
    assert d is not None and (d.verdict, d.status_code) == ("ignored", 200) and reason in d.reason
    assert store.latest_build_id() == 0 and jobs_in_queue(redis_url) == []


@pytest.mark.parametrize(
    ("secret", "fragment"),
    [
        (None, "missing X-Gitea-Signature (or X-Forgejo-Signature) header"),
        ("wrong", "X-Gitea-Signature does not match any configured secret"),
        (GITLAB_TOKEN, "X-Gitea-Signature does not match a webhook secret of test/repo"),  # another repo's
    ],
)
def test_bad_signature_is_401_and_creates_nothing(ge: Forge, store, redis_url, secret, fragment) -> None:
    r = ge.send("pull_request", payload("gitea/pull_request.closed.merged"), secret=secret)
    assert (r.status, r.body["verdict"], r.body["error"]) == (401, "rejected", "bad_signature")
    assert fragment in r.body["reason"]
    assert store.latest_build_id() == 0 and jobs_in_queue(redis_url) == []
    # Unverified: counted and sampled, not recorded; verified but another repository's: recorded.
    sampled = [x for x in store.rejected_sample() if x.id == r.delivery]
    d = store.get_delivery(r.delivery) or (sampled[0] if sampled else None)
    assert d is not None and (d.verdict, d.status_code) == ("rejected", 401)


def test_a_tampered_body_is_401(ge: Forge, store) -> None:
    body = json.dumps(payload("gitea/pull_request.closed.merged")).encode()
    h = gitea_headers("pull_request", body)
    resp = ge.client.post("/webhooks/gitea", data=body.replace(b"Fix bug", b"Fix bux"), headers=h)
    assert resp.status_code == 401 and store.latest_build_id() == 0


def test_per_repository_url(ge: Forge, store) -> None:
    r = ge.send(
        "pull_request", payload("gitea/pull_request.closed.merged"), path=f"/webhooks/gitea/{GITEA_REPO}"
    )
    assert (r.status, r.body["verdict"]) == (202, "queued")
    wrong = ge.send("push", payload("gitea/push"), path=f"/webhooks/gitea/{GITEA_REPO}")
    assert (
        wrong.status == 400
        and "is about gitea/webhooks but was sent to the URL of test/repo" in wrong.body["reason"]
    )


def test_a_gitea_delivery_to_the_github_url_is_refused(ge: Forge, store) -> None:
    """Gitea also sends X-GitHub-* and X-Hub-Signature-256: at /webhooks/github it authenticates, but
    the repository is configured as forge: gitea, so it is refused with the URL to use."""
    body = json.dumps(payload("gitea/pull_request.closed.merged")).encode()
    resp = ge.client.post("/webhooks/github", data=body, headers=gitea_headers("pull_request", body))
    reply = json.loads(resp.data)
    assert (resp.status_code, reply["verdict"]) == (400, "rejected")
    assert "send it to /webhooks/gitea" in reply["reason"] and store.latest_build_id() == 0


def test_form_encoded_webhook_is_told_to_switch_to_json(ge: Forge, store) -> None:
    """Gitea can POST application/x-www-form-urlencoded; the answer says where to change it."""
    body = b"payload=%7B%7D"
    h = {**gitea_headers("push", body), "Content-Type": "application/x-www-form-urlencoded"}
    resp = ge.client.post("/webhooks/gitea", data=body, headers=h)
    assert resp.status_code == 415
    assert (
        "in the Gitea webhook settings, set Content type to application/json"
        in json.loads(resp.data)["reason"]
    )

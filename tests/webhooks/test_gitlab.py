"""GitLab: the pure module (token, headers, decisions; table-driven) and POST /webhooks/gitlab with the
documented example payloads through Flask's test client against a real Redis."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from orchestrator import create_app
from orchestrator.config import RepoConfig, Triggers
from orchestrator.errors import ConfigError, PayloadError, SignatureError
from orchestrator.intake import forge, gitlab

from .forge_helpers import (
    GITHUB_REPO,
    GITLAB_MERGE_SHA,
    GITLAB_OLD_TOKEN,
    GITLAB_PUSH_REPO,
    GITLAB_REPO,
    GITLAB_TOKEN,
    Forge,
    forge_settings,
    payload,
)
from .helpers import merged_pr
from .test_endpoint import builds_queued, jobs_in_queue

MR = "Merge Request Hook"
PUSH = "Push Hook"
PUSHED = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"  # "after" of GitLab's push example


def merge_request(action: str | None = "merge", **attrs: Any) -> dict[str, Any]:
    """GitLab's merge request example with ``action`` (the merged one for "merge", else the open one)."""
    p = payload("gitlab/merge_request." + ("merge" if action == "merge" else "open"))
    p["object_attributes"]["action"] = action
    p["object_attributes"].update(attrs)
    return p


def repo(
    name: str = GITLAB_REPO, merged: tuple[str, ...] = ("master",), push: tuple[str, ...] = ()
) -> RepoConfig:
    return RepoConfig(
        full_name=name,
        clone_url="https://gitlab.example.com/x.git",
        forge="gitlab",
        triggers=Triggers(pull_request_merged=merged, push=push),
    )


# -- token ------------------------------------------------------------------------------------------

SECRETS = [GITLAB_OLD_TOKEN.encode(), GITLAB_TOKEN.encode()]


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (GITLAB_TOKEN, 1),
        (GITLAB_OLD_TOKEN, 0),
        (f"  {GITLAB_TOKEN} ", 1),  # surrounding whitespace is not part of a token
        (None, SignatureError("missing X-Gitlab-Token header: set a Secret token on the GitLab webhook")),
        ("", SignatureError("missing X-Gitlab-Token header")),
        ("wrong", SignatureError("X-Gitlab-Token does not match any configured secret")),
        (GITLAB_TOKEN[:-1], SignatureError("does not match any configured secret")),
        (GITLAB_TOKEN + "x", SignatureError("does not match any configured secret")),
        (GITLAB_TOKEN.upper(), SignatureError("does not match any configured secret")),
    ],
)
def test_verify(token: str | None, expected: int | Exception) -> None:
    headers = {} if token is None else {"X-Gitlab-Token": token}
    if isinstance(expected, Exception):
        with pytest.raises(type(expected), match=re.escape(str(expected))) as err:
            gitlab.verify(b"{}", headers, SECRETS)
        assert GITLAB_TOKEN not in str(err.value) and GITLAB_OLD_TOKEN not in str(err.value)
    else:
        assert gitlab.verify(b"{}", headers, SECRETS) == expected


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ([], "no webhook secret is configured"),
        ([b"ok", b""], "an empty webhook secret would accept anything"),
    ],
)
def test_verify_needs_real_secrets(secrets: list[bytes], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        gitlab.verify(b"{}", {"X-Gitlab-Token": "x"}, secrets)


def test_every_secret_is_compared_in_constant_time(monkeypatch) -> None:
    """A match on the first secret still compares the others, with hmac.compare_digest."""
    calls: list[tuple[bytes, bytes]] = []
    real = forge.hmac.compare_digest
    monkeypatch.setattr(forge.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert gitlab.verify(b"{}", {"X-Gitlab-Token": GITLAB_OLD_TOKEN}, SECRETS) == 0
    assert len(calls) == 2
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: lengths tell nothing


# -- headers ----------------------------------------------------------------------------------------

UUID_A, UUID_B, UUID_C = (f"{c * 8}-1111-2222-3333-444455556666" for c in "abc")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {
                "Idempotency-Key": UUID_A,
                "X-Gitlab-Event-UUID": UUID_B,
                "X-Gitlab-Webhook-UUID": UUID_C,
                "X-Gitlab-Event": MR,
            },
            gitlab.Meta(UUID_A, MR),
        ),
        (
            {"X-Gitlab-Event-UUID": UUID_B, "X-Gitlab-Webhook-UUID": UUID_C, "X-Gitlab-Event": PUSH},
            gitlab.Meta(UUID_B, PUSH),
        ),
        (
            {"X-Gitlab-Webhook-UUID": UUID_C, "X-Gitlab-Event": "Tag Push Hook"},
            gitlab.Meta(UUID_C, "Tag Push Hook"),
        ),
        (
            {"Idempotency-Key": " ", "X-Gitlab-Event-UUID": UUID_B, "X-Gitlab-Event": MR},
            gitlab.Meta(UUID_B, MR),
        ),
        ({"X-Gitlab-Event": MR}, "missing X-Gitlab-Event-UUID header: is this a GitLab webhook delivery?"),
        (
            {"X-Gitlab-Event-UUID": "../../etc", "X-Gitlab-Event": MR},
            "X-Gitlab-Event-UUID must be 1-100 characters",
        ),
        ({"X-Gitlab-Event-UUID": UUID_B}, "missing X-Gitlab-Event header"),
        (
            {"X-Gitlab-Event-UUID": UUID_B, "X-Gitlab-Event": "push"},
            "X-Gitlab-Event must be a GitLab event name",
        ),
        ({"X-Gitlab-Event-UUID": UUID_B, "X-Gitlab-Event": "Push Hook\n"}, None),  # stripped, like GitHub's
    ],
)
def test_parse_meta(headers: dict[str, str], expected: gitlab.Meta | str | None) -> None:
    if isinstance(expected, str):
        with pytest.raises(PayloadError, match=re.escape(expected)):
            gitlab.parse_meta(headers)
    elif expected is None:
        assert gitlab.parse_meta(headers).event == PUSH
    else:
        assert gitlab.parse_meta(headers) == expected


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (payload("gitlab/merge_request.merge"), GITLAB_REPO),
        (payload("gitlab/push"), GITLAB_PUSH_REPO),
        ({"project": {"path_with_namespace": "group/sub/project"}}, "group/sub/project"),
        ({"object_kind": "push"}, None),
        ({"project": "mike/diaspora"}, PayloadError("'project' must be a JSON object")),
        ({"project": {"path_with_namespace": ""}}, PayloadError("'project.path_with_namespace' must be")),
    ],
)
def test_repository_of(p: dict[str, Any], expected: str | Exception | None) -> None:
    if isinstance(expected, Exception):
        with pytest.raises(PayloadError, match=re.escape(str(expected))):
            gitlab.repository_of(p)
    else:
        assert gitlab.repository_of(p) == expected


# -- decisions --------------------------------------------------------------------------------------


def deleted_push() -> dict[str, Any]:
    p = payload("gitlab/push")
    p.update(after=forge.ZERO_SHA, checkout_sha=None, commits=[])
    return p


DECISIONS = [
    # (name, event, payload, repo, expected): ("build", kind, branch, sha) or ("ignored", reason) or (error,)
    ("merged", MR, merge_request(), repo(), ("build", "pull_request_merged", "master", GITLAB_MERGE_SHA)),
    (
        "merged, upper-case sha",
        MR,
        merge_request(merge_commit_sha=GITLAB_MERGE_SHA.upper()),
        repo(),
        ("build", "pull_request_merged", "master", GITLAB_MERGE_SHA),
    ),
    (
        "squash merge",
        MR,
        merge_request(merge_commit_sha=None, squash_commit_sha="b" * 40),
        repo(),
        ("build", "pull_request_merged", "master", "b" * 40),
    ),
    (
        "fast-forward merge: the source's last commit",
        MR,
        merge_request(merge_commit_sha=None),
        repo(),
        ("build", "pull_request_merged", "master", PUSHED),
    ),
    (
        "glob",
        MR,
        merge_request(target_branch="release/1.2"),
        repo(merged=("release/*",)),
        ("build", "pull_request_merged", "release/1.2", GITLAB_MERGE_SHA),
    ),
    (
        "opened",
        MR,
        payload("gitlab/merge_request.open"),
        repo(),
        ("ignored", "merge request !1 open: only merged merge requests start builds"),
    ),
    (
        "closed",
        MR,
        payload("gitlab/merge_request.close"),
        repo(),
        ("ignored", "merge request !1 close: only merged"),
    ),
    (
        "approved",
        MR,
        merge_request("approved"),
        repo(),
        ("ignored", "merge request !1 approved: only merged"),
    ),
    ("update", MR, merge_request("update"), repo(), ("ignored", "!1 update")),
    (
        "no action (old GitLab)",
        MR,
        merge_request(action=None),
        repo(),
        ("ignored", "merge request !1 updated: only merged"),
    ),
    (
        "untracked branch",
        MR,
        merge_request(),
        repo(merged=("main",)),
        ("ignored", "merge request !1 was merged into 'master', which is not tracked (tracked: main)"),
    ),
    (
        "no merge commit at all",
        MR,
        merge_request(merge_commit_sha=None, last_commit=None),
        repo(),
        ("'object_attributes.merge_commit_sha' must be a commit sha",),
    ),
    (
        "bad merge sha",
        MR,
        merge_request(merge_commit_sha="nope"),
        repo(),
        ("'object_attributes.merge_commit_sha' must be a commit sha",),
    ),
    ("no attributes", MR, {"project": {}}, repo(), ("'object_attributes' must be a JSON object",)),
    (
        "no target branch",
        MR,
        merge_request(target_branch=""),
        repo(),
        ("'object_attributes.target_branch' must be a non-empty string",),
    ),
    (
        "push",
        PUSH,
        payload("gitlab/push"),
        repo(GITLAB_PUSH_REPO, push=("master",)),
        ("build", "push", "master", PUSHED),
    ),
    (
        "push, no push triggers",
        PUSH,
        payload("gitlab/push"),
        repo(GITLAB_PUSH_REPO),
        ("ignored", "push to 'master': push triggers are not configured for mike/diaspora"),
    ),
    (
        "push, untracked",
        PUSH,
        payload("gitlab/push"),
        repo(GITLAB_PUSH_REPO, push=("main",)),
        ("ignored", "push to 'master', which is not tracked for pushes (tracked: main)"),
    ),
    (
        "tag push",
        "Tag Push Hook",
        payload("gitlab/tag_push"),
        repo(push=("*",)),
        ("ignored", "tag push (refs/tags/v1.0.0) does not start builds"),
    ),
    (
        "branch deletion",
        PUSH,
        deleted_push(),
        repo(push=("*",)),
        ("ignored", "branch deletion (refs/heads/master) does not start builds"),
    ),
    (
        "issue",
        "Issue Hook",
        payload("gitlab/push"),
        repo(),
        (
            "ignored",
            "event 'Issue Hook' does not start builds; in the GitLab webhook settings, "
            "enable only Push events and Merge request events",
        ),
    ),
    ("pipeline", "Pipeline Hook", {}, repo(), ("ignored", "event 'Pipeline Hook' does not start builds")),
    ("push without ref", PUSH, {"after": PUSHED}, repo(push=("*",)), ("'ref' must be a non-empty string",)),
]


@pytest.mark.parametrize(("name", "event", "p", "cfg", "expected"), DECISIONS, ids=[c[0] for c in DECISIONS])
def test_decide(name: str, event: str, p: dict[str, Any], cfg: RepoConfig, expected: tuple[str, ...]) -> None:
    if expected[0] == "build":
        d = gitlab.decide(event, p, cfg)
        _, kind, branch, sha = expected
        assert d.trigger is not None, d.reason
        assert (d.trigger.kind, d.trigger.branch, d.trigger.sha, d.sha) == (kind, branch, sha, sha)
        assert d.trigger.ref == d.ref == "refs/heads/" + branch and d.trigger.repo == cfg.full_name
    elif expected[0] == "ignored":
        d = gitlab.decide(event, p, cfg)
        assert d.trigger is None and expected[1] in d.reason, d.reason
    else:
        with pytest.raises(PayloadError, match=re.escape(expected[0])):
            gitlab.decide(event, p, cfg)


def test_merge_trigger_carries_who_what_and_where() -> None:
    d = gitlab.decide(MR, merge_request(), repo())
    assert (
        d.trigger is not None and d.action == "merge" and d.reason == "merge request !1 merged into 'master'"
    )
    t = d.trigger
    assert (t.author, t.message, t.url, t.pr_number) == (
        "root",
        "MS-Viewport",
        "http://example.com/diaspora/merge_requests/1",
        1,
    )


def test_push_trigger_carries_the_head_commit() -> None:
    d = gitlab.decide(PUSH, payload("gitlab/push"), repo(GITLAB_PUSH_REPO, push=("master",)))
    assert d.trigger is not None
    assert (d.trigger.author, d.trigger.message) == ("jsmith", "fixed readme")
    assert d.trigger.url == f"http://example.com/mike/diaspora/commit/{PUSHED}"


# -- the endpoint -----------------------------------------------------------------------------------


@pytest.fixture
def gl(redis_url: str) -> Forge:
    return Forge(create_app(forge_settings(redis_url)).test_client(), "gitlab")


def test_documented_merge_builds_exactly_once(gl: Forge, store, redis_url) -> None:
    r = gl.send(MR, payload("gitlab/merge_request.merge"))
    assert (r.status, r.body["verdict"], r.body["number"]) == (202, "queued", 1), r.body
    assert r.body["url"] == f"http://ci.example.com/builds/{r.body['build']}"
    b = store.get_build(r.body["build"])
    assert (b.repo, b.sha, b.branch, b.ref, b.trigger, b.author, b.message) == (
        GITLAB_REPO,
        GITLAB_MERGE_SHA,
        "master",
        "refs/heads/master",
        "pull_request_merged",
        "root",
        "MS-Viewport",
    )
    assert b.triggered_by == r.delivery
    assert builds_queued(store, redis_url) == [b.id]
    d = store.get_delivery(r.delivery)
    assert d is not None
    assert (d.verdict, d.status_code, d.event, d.action, d.repo, d.sha, d.build_id) == (
        "queued",
        202,
        MR,
        "merge",
        GITLAB_REPO,
        GITLAB_MERGE_SHA,
        b.id,
    )
    # GitLab's "Resend request" keeps the Idempotency-Key: answered from the record, nothing new.
    again = gl.send(MR, payload("gitlab/merge_request.merge"), delivery=r.delivery)
    assert (again.status, again.body) == (r.status, r.body)
    assert store.latest_build_id() == 1 and len(jobs_in_queue(redis_url)) == 1
    assert store.counters("deliveries") == {"queued": 1}


def test_merge_and_its_push_give_one_build(redis_url, store) -> None:
    """GitLab sends a Merge Request Hook and a Push Hook for the same merge commit."""
    gl = Forge(create_app(forge_settings(redis_url, push=("master",))).test_client(), "gitlab")
    first = gl.send(MR, payload("gitlab/merge_request.merge"))
    push = payload("gitlab/push")
    push["project"]["path_with_namespace"] = GITLAB_REPO
    push["after"] = push["checkout_sha"] = GITLAB_MERGE_SHA
    second = gl.send(PUSH, push)
    assert (first.status, first.body["verdict"]) == (202, "queued")
    assert (second.status, second.body["verdict"], second.body["build"]) == (
        200,
        "duplicate",
        first.body["build"],
    )
    assert builds_queued(store, redis_url) == [first.body["build"]]


def test_documented_push_builds_when_configured(redis_url, store) -> None:
    gl = Forge(create_app(forge_settings(redis_url, push=("master",))).test_client(), "gitlab")
    r = gl.send(PUSH, payload("gitlab/push"))
    assert (r.status, r.body["verdict"]) == (202, "queued"), r.body
    b = store.get_build(r.body["build"])
    assert (b.repo, b.trigger, b.branch, b.sha, b.author) == (
        GITLAB_PUSH_REPO,
        "push",
        "master",
        PUSHED,
        "jsmith",
    )


@pytest.mark.parametrize(
    ("event", "name", "reason"),
    [
        (MR, "merge_request.open", "merge request !1 open: only merged merge requests start builds"),
        (MR, "merge_request.close", "merge request !1 close: only merged merge requests start builds"),
        (PUSH, "push", "push to 'master': push triggers are not configured for mike/diaspora"),
        ("Tag Push Hook", "tag_push", "repository jsmith/example is not allow-listed"),
        ("Tag Push Hook", "tag_push@mike/diaspora", "tag push (refs/tags/v1.0.0) does not start builds"),
        ("Note Hook", "merge_request.open", "event 'Note Hook' does not start builds"),
    ],
)
def test_ignored_deliveries_answer_200_with_the_reason(
    gl: Forge, store, redis_url, event, name, reason
) -> None:
    name, _, project = name.partition("@")  # "@group/project": the example re-addressed to that project
    p = payload(f"gitlab/{name}")
    if project:
        p["project"]["path_with_namespace"] = project
    r = gl.send(event, p)
    assert (r.status, r.body["verdict"]) == (200, "ignored") and reason in r.body["reason"], r.body
    d = store.get_delivery(r.delivery)
    assert d is not None and (d.verdict, d.status_code) == ("ignored", 200) and reason in d.reason
    assert store.latest_build_id() == 0 and jobs_in_queue(redis_url) == []
    again = gl.send(event, p, delivery=r.delivery)
    assert (again.status, again.body) == (r.status, r.body)


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        (None, "missing X-Gitlab-Token header"),
        ("wrong", "X-Gitlab-Token does not match any configured secret"),
        (GITLAB_TOKEN[:-1], "does not match any configured secret"),
        ("It's a Secret to Everybody", "does not match a webhook secret of gitlabhq/gitlab-test"),
    ],
)
def test_bad_token_is_401_and_creates_nothing(gl: Forge, store, redis_url, token, fragment) -> None:
    """The last case is the GitHub repository's secret: valid, but not for this project."""
    r = gl.send(MR, payload("gitlab/merge_request.merge"), secret=token)
    assert (r.status, r.body["verdict"], r.body["error"]) == (401, "rejected", "bad_signature")
    assert fragment in r.body["reason"] and GITLAB_TOKEN not in str(r.body)
    assert store.latest_build_id() == 0 and jobs_in_queue(redis_url) == []
    # Unverified: counted and sampled, not recorded; verified but another repository's: recorded.
    sampled = [x for x in store.rejected_sample() if x.id == r.delivery]
    d = store.get_delivery(r.delivery) or (sampled[0] if sampled else None)
    assert d is not None and (d.verdict, d.status_code) == ("rejected", 401)
    # The genuine delivery of that id is processed afterwards (a failure is not replayed).
    good = gl.send(MR, payload("gitlab/merge_request.merge"), delivery=r.delivery)
    assert (good.status, good.body["verdict"]) == (202, "queued")


def test_per_project_urls_including_nested_groups(redis_url, store) -> None:
    gl = Forge(create_app(forge_settings(redis_url)).test_client(), "gitlab")
    r = gl.send(MR, payload("gitlab/merge_request.merge"), path=f"/webhooks/gitlab/{GITLAB_REPO}")
    assert (r.status, r.body["verdict"]) == (202, "queued")
    nested = merge_request(merge_commit_sha="c" * 40)
    nested["project"]["path_with_namespace"] = "group/sub/project"
    r = gl.send(MR, nested, path="/webhooks/gitlab/group/sub/project")
    assert (r.status, r.body["verdict"]) == (202, "queued")
    assert store.get_build(r.body["build"]).repo == "group/sub/project"
    wrong = gl.send(MR, payload("gitlab/merge_request.merge"), path="/webhooks/gitlab/group/sub/project")
    assert (
        wrong.status == 400
        and "is about gitlabhq/gitlab-test but was sent to the URL of group/sub/project"
        in wrong.body["reason"]
    )
    unknown = gl.send(MR, payload("gitlab/merge_request.merge"), path="/webhooks/gitlab/nobody/nothing")
    assert (unknown.status, unknown.body["verdict"]) == (404, "rejected")


def test_a_github_repository_is_not_built_from_the_gitlab_url(gl: Forge, store) -> None:
    """A GitLab-shaped delivery naming a repository configured as forge: github is refused."""
    p = payload("gitlab/merge_request.merge")
    p["project"]["path_with_namespace"] = GITHUB_REPO
    r = gl.send(MR, p, secret="It's a Secret to Everybody")
    assert (r.status, r.body["verdict"]) == (400, "rejected")
    assert "acme/house-price is configured with forge: github" in r.body["reason"]
    assert "send it to /webhooks/github" in r.body["reason"] and store.latest_build_id() == 0


def test_a_gitlab_project_is_not_built_from_the_github_url(gl: Forge, store) -> None:
    from .helpers import headers

    body = merged_pr("d" * 40, repo=GITLAB_REPO)
    raw = json.dumps(body).encode()
    resp = gl.client.post(
        "/webhooks/github", data=raw, headers=headers("pull_request", raw, secret=GITLAB_TOKEN)
    )
    assert resp.status_code == 400 and b"configured with forge: gitlab" in resp.data
    assert store.latest_build_id() == 0


def test_missing_headers_are_400(gl: Forge) -> None:
    resp = gl.client.post(
        "/webhooks/gitlab",
        data=b"{}",
        headers={"Content-Type": "application/json", "X-Gitlab-Token": GITLAB_TOKEN},
    )
    assert resp.status_code == 400 and b"missing X-Gitlab-Event-UUID header" in resp.data

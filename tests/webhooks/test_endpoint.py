"""POST /webhooks/github through Flask's test client against a real Redis."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from orchestrator import create_app
from orchestrator.build.queue import RUN_BUILD, rq_connection
from orchestrator.config import RepoConfig, Secrets, Settings
from orchestrator.errors import ConfigError
from orchestrator.models import BuildStatus
from tests.store_helpers import record_delivery

from .conftest import GitHub, lines_of
from .helpers import (
    MERGE_SHA,
    OLD_SECRET,
    OTHER_REPO,
    OTHER_SECRET,
    REPO,
    SECRET,
    encode,
    headers,
    merged_pr,
    payload,
    push_to,
)


def jobs_in_queue(redis_url: str) -> list:  # type: ignore[type-arg]
    return Queue(
        "builds", connection=rq_connection(Settings(redis_url=redis_url)), serializer=JSONSerializer
    ).jobs


def builds_queued(store, redis_url: str) -> list[int]:  # type: ignore[no-untyped-def]
    """Build ids that queued jobs resolve to (a duplicate's job resolves to nothing; the worker drops it)."""
    ids = [store.resolve_ticket(j.args[0]) for j in jobs_in_queue(redis_url)]
    return [i for i in ids if i is not None]


# -- the verdicts -----------------------------------------------------------------------------------


def test_merged_pull_request_queues_one_build_with_its_job(github: GitHub, store, redis_url) -> None:
    r = github.send("pull_request", payload("pull_request.closed.merged"))
    assert r.status == 202, r.body
    assert r.body["verdict"] == "queued" and r.body["number"] == 1
    assert r.body["url"] == f"http://ci.example.com/builds/{r.body['build']}"
    build = store.get_build(r.body["build"])
    assert (build.repo, build.sha, build.branch, build.ref, build.trigger) == (
        REPO,
        MERGE_SHA,
        "main",
        "refs/heads/main",
        "pull_request_merged",
    )
    assert build.status is BuildStatus.QUEUED and build.triggered_by == r.delivery
    assert build.author == "octocat" and build.message == "Retrain with the 2024 listings"
    (job,) = jobs_in_queue(redis_url)
    assert job.func_name == RUN_BUILD and store.resolve_ticket(job.args[0]) == build.id
    d = store.get_delivery(r.delivery)
    assert d is not None
    assert (d.verdict, d.status_code, d.build_id, d.event, d.action, d.repo, d.sha, d.ref) == (
        "queued",
        202,
        build.id,
        "pull_request",
        "closed",
        REPO,
        MERGE_SHA,
        "refs/heads/main",
    )
    assert d.duration_ms > 0 and "queued as build #1" in d.reason
    assert store.counters("deliveries") == {"queued": 1}


def test_ping_answers_200_with_the_zen(github: GitHub, store) -> None:
    r = github.send("ping", payload("ping"))
    assert r.status == 200
    assert r.body["zen"] == "Design for failure." and r.body["verdict"] == "ignored"
    assert "ping" in r.body["reason"]
    d = store.get_delivery(r.delivery)
    assert d is not None and d.event == "ping" and d.repo == REPO
    assert store.latest_build_id() == 0


def test_organization_ping_without_repository(github: GitHub) -> None:
    p = payload("ping")
    del p["repository"]
    r = github.send("ping", p)
    assert r.status == 200 and r.body["zen"] == "Design for failure."


@pytest.mark.parametrize(
    ("event", "name", "reason"),
    [
        ("pull_request", "pull_request.closed.unmerged", "closed without merging"),
        ("pull_request", "pull_request.opened", "opened: only merged pull requests start builds"),
        ("pull_request", "pull_request.synchronize", "synchronize: only merged pull requests"),
        ("push", "push.branch", "push triggers are not configured"),
        ("push", "push.tag", "tag push (refs/tags/v1.4.0)"),
        ("push", "push.deleted", "branch deletion (refs/heads/retrain-2024)"),
        ("issues", "pull_request.opened", "event 'issues' does not start builds"),
    ],
)
def test_ignored_deliveries_answer_200_with_the_reason(
    github: GitHub, store, redis_url, event: str, name: str, reason: str
) -> None:
    r = github.send(event, payload(name))
    assert r.status == 200, r.body
    assert r.body["verdict"] == "ignored" and reason in r.body["reason"]
    d = store.get_delivery(r.delivery)
    assert d is not None and d.verdict == "ignored" and reason in d.reason and d.status_code == 200
    assert store.latest_build_id() == 0 and jobs_in_queue(redis_url) == []


def test_push_builds_when_push_triggers_are_configured(make_app, store) -> None:
    gh = GitHub(make_app(push=("main",)).test_client())
    r = gh.send("push", payload("push.branch"))
    assert r.status == 202 and r.body["verdict"] == "queued"
    b = store.get_build(r.body["build"])
    assert (b.trigger, b.branch, b.sha) == ("push", "main", MERGE_SHA)
    assert gh.send("push", push_to("feature", "e" * 40)).body["verdict"] == "ignored"


def test_merge_pair_gives_one_build(make_app, store, redis_url) -> None:
    """GitHub sends pull_request (closed, merged) and push for the same merge commit."""
    gh = GitHub(make_app(push=("main",)).test_client())
    first = gh.send("pull_request", payload("pull_request.closed.merged"))
    second = gh.send("push", payload("push.branch"))
    assert (first.status, second.status) == (202, 200)
    assert second.body["verdict"] == "duplicate" and second.body["build"] == first.body["build"]
    assert second.body["number"] == 1 and "already build #1" in second.body["reason"]
    assert store.latest_build_id() == 1 and builds_queued(store, redis_url) == [first.body["build"]]
    d = store.get_delivery(second.delivery)
    assert d is not None and d.verdict == "duplicate" and d.build_id == first.body["build"]
    # And the other order: push first, then the pull request.
    third = gh.send("push", push_to("main", "f" * 40))
    fourth = gh.send("pull_request", merged_pr("f" * 40, number=43))
    assert (third.status, fourth.status) == (202, 200) and fourth.body["build"] == third.body["build"]


def test_numbers_count_per_repository(make_app, store) -> None:
    gh = GitHub(make_app().test_client())
    a = gh.send("pull_request", merged_pr("1" * 40))
    b = gh.send("pull_request", merged_pr("2" * 40, repo=OTHER_REPO), secret=OTHER_SECRET)
    c = gh.send("pull_request", merged_pr("3" * 40))
    assert [x.body["number"] for x in (a, b, c)] == [1, 1, 2]
    assert len({x.body["build"] for x in (a, b, c)}) == 3


# -- redelivery -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pull_request.closed.merged", "pull_request.opened"])
def test_redelivery_after_success_gets_the_same_answer_and_no_new_build(
    github: GitHub, store, redis_url, name: str
) -> None:
    first = github.send("pull_request", payload(name))
    again = github.send("pull_request", payload(name), delivery=first.delivery)
    assert (again.status, again.body) == (first.status, first.body)
    assert len(jobs_in_queue(redis_url)) == store.latest_build_id() == (1 if "merged" in name else 0)


def test_duplicate_redelivered_keeps_its_answer(make_app, store, redis_url) -> None:
    gh = GitHub(make_app(push=("main",)).test_client())
    gh.send("pull_request", payload("pull_request.closed.merged"))
    dup = gh.send("push", payload("push.branch"))
    again = gh.send("push", payload("push.branch"), delivery=dup.delivery)
    assert (again.status, again.body) == (dup.status, dup.body) == (200, dup.body)
    assert builds_queued(store, redis_url) == [1]


def test_redelivery_after_a_failure_is_processed(github: GitHub, store) -> None:
    bad = github.send("pull_request", payload("pull_request.closed.merged"), secret="wrong secret")
    assert bad.status == 401
    good = github.send("pull_request", payload("pull_request.closed.merged"), delivery=bad.delivery)
    assert good.status == 202 and store.latest_build_id() == 1
    d = store.get_delivery(bad.delivery)
    assert d is not None and d.verdict == "queued"


def test_received_but_never_finished_is_processed_again(github: GitHub, store) -> None:
    """A worker that died after recording 'received' left no answer: the redelivery builds."""
    from orchestrator.models import Delivery

    record_delivery(store, Delivery(id="crashed-1", event="pull_request", repo=REPO))
    r = github.send("pull_request", payload("pull_request.closed.merged"), delivery="crashed-1")
    assert r.status == 202 and store.latest_build_id() == 1


def test_same_delivery_twice_at_once_builds_once(make_app, store, redis_url) -> None:
    app = make_app()
    body = encode(payload("pull_request.closed.merged"))
    h = headers("pull_request", body, delivery="same-guid")
    replies: list[tuple[int, dict]] = []  # type: ignore[type-arg]
    barrier = threading.Barrier(8)

    def send() -> None:
        client = app.test_client()
        barrier.wait()
        resp = client.post("/webhooks/github", data=body, headers=h)
        replies.append((resp.status_code, json.loads(resp.data)))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {s for s, _ in replies} == {202}
    assert {b["build"] for _, b in replies} == {1}
    assert store.latest_build_id() == 1 and builds_queued(store, redis_url) == [1]


# -- rejections -------------------------------------------------------------------------------------


def test_rotation_accepts_old_and_new_secret(github: GitHub) -> None:
    assert github.send("pull_request", merged_pr("1" * 40), secret=SECRET).status == 202
    assert github.send("pull_request", merged_pr("2" * 40), secret=OLD_SECRET).status == 202


@pytest.mark.parametrize("secret", [None, "wrong", ""])
def test_bad_or_missing_signature_is_401_and_reveals_nothing(github: GitHub, store, secret) -> None:
    p = payload("pull_request.closed.merged")
    r = github.send("pull_request", p, secret=secret)
    assert r.status == 401 and r.body["verdict"] == "rejected" and r.body["error"] == "bad_signature"
    import hashlib
    import hmac

    for s in (SECRET, OLD_SECRET, OTHER_SECRET):
        mac = hmac.new(s.encode(), encode(p), hashlib.sha256).hexdigest()
        assert mac[:12] not in json.dumps(r.body) and s not in json.dumps(r.body)
    assert store.get_delivery(r.delivery) is None  # unauthenticated: no record of its own (issue 19)
    (d,) = store.rejected_sample()  # counted and kept in the bounded sample instead
    assert (d.id, d.verdict, d.status_code) == (r.delivery, "rejected", 401)
    assert store.counters("deliveries") == {"rejected": 1}
    assert store.latest_build_id() == 0


def test_another_repositorys_secret_does_not_sign_for_this_one(github: GitHub, store) -> None:
    r = github.send("pull_request", payload("pull_request.closed.merged"), secret=OTHER_SECRET)
    assert r.status == 401 and f"secret of {REPO}" in r.body["reason"]
    assert store.latest_build_id() == 0


def test_repository_not_allow_listed_is_ignored_and_payload_clone_url_unused(github: GitHub, store) -> None:
    r = github.send("pull_request", merged_pr(MERGE_SHA, repo="mallory/evil"))
    assert r.status == 200 and r.body["verdict"] == "ignored"
    assert "mallory/evil is not allow-listed" in r.body["reason"]
    assert store.latest_build_id() == 0


def test_unauthenticated_request_cannot_overwrite_a_recorded_delivery(github: GitHub, store) -> None:
    ok = github.send("pull_request", payload("pull_request.closed.merged"))
    forged = github.send("pull_request", payload("pull_request.opened"), secret="guess", delivery=ok.delivery)
    assert forged.status == 401
    d = store.get_delivery(ok.delivery)
    assert d is not None and d.verdict == "queued"
    again = github.send("pull_request", payload("pull_request.closed.merged"), delivery=ok.delivery)
    assert (again.status, again.body) == (ok.status, ok.body)


@pytest.mark.parametrize("missing", ["X-GitHub-Delivery", "X-GitHub-Event"])
def test_missing_github_headers_are_400(make_app, missing: str) -> None:
    client = make_app().test_client()
    body = encode(payload("pull_request.closed.merged"))
    h = headers("pull_request", body)
    del h[missing]
    resp = client.post("/webhooks/github", data=body, headers=h)
    assert resp.status_code == 400 and missing in resp.get_json()["reason"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"{not json", "not valid JSON"), (b"[]", "JSON object"), (b'{"action": "closed"}', "pull_request")],
)
def test_malformed_signed_bodies_are_400(github: GitHub, store, body: bytes, fragment: str) -> None:
    if fragment == "pull_request":
        body = json.dumps({"action": "closed", "repository": {"full_name": REPO}}).encode()
    r = github.send("pull_request", body)
    assert r.status == 400 and fragment in r.body["reason"] and r.body["error"] == "bad_payload"
    d = store.get_delivery(r.delivery)
    assert d is not None and d.verdict == "rejected" and d.status_code == 400


def test_invalid_merge_sha_is_400(github: GitHub, store) -> None:
    r = github.send("pull_request", merged_pr("$(touch /tmp/x)"))
    assert r.status == 400 and "40 hex characters" in r.body["reason"]
    assert store.latest_build_id() == 0


def test_form_encoded_webhook_is_told_to_switch_to_json(github: GitHub) -> None:
    body = b"payload=" + encode(payload("ping"))
    r = github.send("ping", body, content_type="application/x-www-form-urlencoded")
    assert r.status == 415 and "set Content type to application/json" in r.body["reason"]
    r = github.send("ping", encode(payload("ping")), content_type="text/plain")
    assert r.status == 415 and "must be application/json" in r.body["reason"]


def test_json_with_charset_is_accepted(github: GitHub) -> None:
    r = github.send("ping", payload("ping"), content_type="application/json; charset=utf-8")
    assert r.status == 200


def test_body_just_under_and_over_the_limit(make_app, store) -> None:
    limit = 8192
    gh = GitHub(make_app(max_body_bytes=limit).test_client())

    def sized(n: int, sha: str) -> bytes:
        p = merged_pr(sha)
        p["pull_request"]["body"] = ""
        base = len(encode(p))
        p["pull_request"]["body"] = "x" * (n - base)
        out = encode(p)
        assert len(out) == n
        return out

    at = gh.send("pull_request", sized(limit, "1" * 40))
    assert at.status == 202, at.body
    under = gh.send("pull_request", sized(limit - 1, "2" * 40))
    assert under.status == 202
    over = gh.send("pull_request", sized(limit + 1, "3" * 40))
    assert over.status == 413 and over.body["error"] == "payload_too_large"
    assert str(limit) in over.body["reason"]
    assert store.latest_build_id() == 2


# -- hostile data -----------------------------------------------------------------------------------

HOSTILE = [
    "$(touch /tmp/mlship-pwned)",
    "--upload-pack=touch /tmp/mlship-pwned",
    "ветка/功能/🚀",
    "b" * 300,
    'x\n{"verdict": "forged"}',
]


@pytest.mark.parametrize("branch", HOSTILE)
def test_hostile_branch_names_are_recorded_as_data(make_app, store, service_log, branch: str) -> None:
    """A branch that fails the API's branch-name check never becomes a build (so never ``${BRANCH}``):
    400 with the reason; the name is still recorded as data."""
    marker = Path("/tmp/mlship-pwned")
    marker.unlink(missing_ok=True)
    gh = GitHub(make_app(push=("*",), merged=("*",)).test_client())
    r = gh.send("push", push_to(branch, "a" * 40))
    assert r.status == 400 and r.body["error"] == "bad_payload" and "branch" in r.body["reason"], r.body
    r2 = gh.send("pull_request", merged_pr("b" * 40, base=branch))
    assert r2.status == 400 and "pull_request.base.ref" in r2.body["reason"]
    assert store.latest_build_id() == 0
    ignored = GitHub(make_app().test_client()).send("push", push_to(branch, "c" * 40))
    assert ignored.status == 200 and store.get_delivery(ignored.delivery).ref == "refs/heads/" + branch
    assert not marker.exists()
    lines = lines_of(service_log)
    assert all(line["event"] in ("delivery", "config") for line in lines)  # no forged line
    assert "refs/heads/" + branch in [x["ref"] for x in lines if x.get("event") == "delivery"]


# -- logs, metrics, configuration -------------------------------------------------------------------


def test_one_log_line_per_delivery_and_never_a_secret(make_app, service_log) -> None:
    gh = GitHub(make_app().test_client())
    ok = gh.send("pull_request", payload("pull_request.closed.merged"))
    bad = gh.send("pull_request", payload("pull_request.closed.merged"), secret="wrong")
    ignored = gh.send("push", payload("push.tag"))
    text = service_log.getvalue()
    lines = [line for line in lines_of(service_log) if line["event"] == "delivery"]
    assert [(x["delivery"], x["verdict"], x["status"]) for x in lines] == [
        (ok.delivery, "queued", 202),
        (bad.delivery, "rejected", 401),
        (ignored.delivery, "ignored", 200),
    ]
    assert lines[0]["build"] == ok.body["build"] and lines[0]["duration_ms"] > 0
    for secret in (SECRET, OLD_SECRET, OTHER_SECRET):
        assert secret not in text
    assert "sha256=" not in text


def test_counters_for_metrics(github: GitHub, store) -> None:
    github.send("pull_request", payload("pull_request.closed.merged"))
    github.send("pull_request", payload("pull_request.opened"))
    github.send("pull_request", payload("pull_request.opened"), secret="nope")
    assert store.counters("deliveries") == {"queued": 1, "ignored": 1, "rejected": 1}


def test_per_repository_url(make_app, store) -> None:
    gh = GitHub(make_app().test_client())
    r = gh.send("pull_request", payload("pull_request.closed.merged"), path=f"/webhooks/github/{REPO}")
    assert r.status == 202
    wrong = gh.send(
        "pull_request",
        merged_pr("1" * 40, repo=OTHER_REPO),
        secret=OTHER_SECRET,
        path=f"/webhooks/github/{REPO}",
    )
    assert wrong.status == 401  # only acme/house-price's secrets are tried at its URL
    unknown = gh.send("ping", payload("ping"), path="/webhooks/github/mallory/evil")
    assert unknown.status == 404 and "not allow-listed" in unknown.body["reason"]


@pytest.mark.parametrize("value", ["", "\n"])
def test_empty_webhook_secret_fails_at_start(redis_url, tmp_path, value: str) -> None:
    repo = RepoConfig(full_name=REPO, clone_url="x")
    env = {"GITHUB_WEBHOOK_SECRET": value}
    with pytest.raises(ConfigError, match="GITHUB_WEBHOOK_SECRET"):
        create_app(Settings(redis_url=redis_url, repositories={REPO: repo}, secrets=Secrets(env=env)))
    (tmp_path / "GITHUB_WEBHOOK_SECRET").write_text(value)
    with pytest.raises(ConfigError, match="GITHUB_WEBHOOK_SECRET"):
        create_app(
            Settings(
                redis_url=redis_url, repositories={REPO: repo}, secrets=Secrets(env={}, directory=tmp_path)
            )
        )


def test_blank_secret_fails_at_start(redis_url) -> None:
    repo = RepoConfig(full_name=REPO, clone_url="x")
    with pytest.raises(ConfigError, match="blank"):
        create_app(
            Settings(
                redis_url=redis_url,
                repositories={REPO: repo},
                secrets=Secrets(env={"GITHUB_WEBHOOK_SECRET": "   "}),
            )
        )


def test_get_is_not_allowed(github: GitHub) -> None:
    assert github.client.get("/webhooks/github").status_code == 405

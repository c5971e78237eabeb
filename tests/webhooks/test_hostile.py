"""Hostile or surprising deliveries (issue 18's intake findings, issue 19's delivery records), each
against a real Redis through the app: every one of these failed on the code before the fix."""

from __future__ import annotations

import uuid

import pytest
import redis

from orchestrator import actions
from orchestrator.intake import forge
from orchestrator.store.deliveries import REJECTED_SAMPLE

from .conftest import GitHub
from .helpers import REPO, encode, headers, merged_pr, payload, push_to

SHA = "5" * 40


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"repository": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    ],
    ids=["objects", "arrays", "inside-a-field"],
)
def test_deeply_nested_json_with_a_valid_signature_is_400(make_app, store, body: bytes) -> None:
    github = GitHub(make_app(max_body_bytes=1 << 20).test_client())
    r = github.send("pull_request", body)
    assert r.status == 400 and r.body["verdict"] == "rejected" and r.body["error"] == "bad_payload", r.body
    assert "JSON" in r.body["reason"] or "repository" in r.body["reason"]
    assert store.latest_build_id() == 0


@pytest.mark.parametrize("secret", [None, "a guess"])
def test_per_repository_url_is_no_repository_oracle(github: GitHub, secret: str | None) -> None:
    """Unsigned or badly signed: the URL of a configured repository and of an unknown one answer alike."""
    configured = github.send("pull_request", merged_pr(SHA), secret=secret, path=f"/webhooks/github/{REPO}")
    unknown = github.send("pull_request", merged_pr(SHA), secret=secret, path="/webhooks/github/mallory/evil")
    assert configured.status == unknown.status == 401
    strip = lambda body: {k: v for k, v in body.items() if k != "delivery"}  # noqa: E731
    assert strip(configured.body) == strip(unknown.body)


@pytest.mark.parametrize(
    "branch", ["release/a..b", "release/$(touch pwned)", "release/x@{1}", "release/x.lock", "release/ x"]
)
def test_webhook_branch_names_are_checked_like_the_apis(make_app, store, branch: str) -> None:
    github = GitHub(make_app(push=("release/*",)).test_client())
    r = github.send("push", push_to(branch, SHA))
    assert r.status == 400 and r.body["verdict"] == "rejected", r.body
    assert "not a valid branch name" in r.body["reason"] and "'ref'" in r.body["reason"]
    assert store.latest_build_id() == 0
    with pytest.raises(Exception, match="not a valid branch name"):
        actions.normalize_ref(branch)
    assert actions.normalize_ref is forge.normalize_ref  # one function for the API and every forge


def test_same_sha_on_another_branch_builds_for_that_branch(make_app, store) -> None:
    """A merge into main fast-forwarded onto release/x: release/x gets its own build (its ``when:``
    steps run); the same push again, and a redelivery, are still one build."""
    github = GitHub(make_app(push=("release/*",)).test_client())
    main = github.send("pull_request", merged_pr(SHA))
    release = github.send("push", push_to("release/x", SHA))
    assert (main.status, release.status) == (202, 202), release.body
    assert store.get_build(release.body["build"]).branch == "release/x"
    assert store.get_build(main.body["build"]).branch == "main"
    again = github.send("push", push_to("release/x", SHA))
    assert again.status == 200 and again.body["verdict"] == "duplicate"
    assert again.body["build"] == release.body["build"]
    redelivered = github.send("push", push_to("release/x", SHA), delivery=release.delivery)
    assert (redelivered.status, redelivered.body) == (release.status, release.body)
    assert store.latest_build_id() == 2


def test_forms_and_api_bodies_are_capped_but_the_webhook_keeps_its_own_limit(make_app, store) -> None:
    app = make_app(max_body_bytes=512 * 1024)
    client = app.test_client()
    big = b"token=" + b"x" * (300 * 1024)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert client.post("/login", data=big, headers=form).status_code == 413
    doc = merged_pr(SHA)
    doc["pull_request"]["title"] = "x" * (300 * 1024)  # 300 KiB: over the form cap, under the webhook's
    r = GitHub(client).send("pull_request", doc)
    assert r.status == 202, r.body
    body = encode(merged_pr("6" * 40))
    h = headers("pull_request", body + b" " * (600 * 1024))
    over = client.post("/webhooks/github", data=body + b" " * (600 * 1024), headers=h)
    assert over.status_code == 413 and over.get_json()["error"] == "payload_too_large"


def test_unsigned_deliveries_are_counted_and_sampled_not_recorded_one_by_one(
    github: GitHub, redis_url
) -> None:
    """2,000 unsigned POSTs with fresh ids: a counter and a bounded sample, not 2,000 keys."""
    client = redis.Redis.from_url(redis_url)
    signed = github.send("pull_request", payload("pull_request.opened"))  # ignored: has its record
    before = set(client.keys("*"))
    ids = [str(uuid.uuid4()) for _ in range(2000)]
    for i in ids:
        r = github.send("pull_request", merged_pr(SHA), secret=None, delivery=i)
        assert r.status == 401
    store = github.client.application.extensions["mlship"].store
    new = {k.decode() for k in set(client.keys("*")) - before}
    bounded = {store.k.rejected_sample(), store.k.counter("http_requests"), store.k.counter("http_duration")}
    assert new <= bounded, new  # the sample and request metrics: a fixed number of keys, none per id
    assert store.counters("deliveries") == {"ignored": 1, "rejected": 2000}
    sample = store.rejected_sample()
    assert len(sample) == REJECTED_SAMPLE and [d.id for d in sample] == ids[::-1][:REJECTED_SAMPLE]
    assert {d.verdict for d in sample} == {"rejected"} and {d.status_code for d in sample} == {401}
    # accepted and ignored deliveries keep their record for the redelivery window
    record = store.get_delivery(signed.delivery)
    assert record is not None and record.verdict == "ignored"
    assert client.ttl(store.k.delivery(signed.delivery)) > 7 * 86400


def test_the_deliveries_page_and_api_show_the_rejected_sample(github: GitHub) -> None:
    bad = github.send("pull_request", merged_pr(SHA), secret=None)
    assert bad.status == 401
    doc = github.client.get("/api/v1/deliveries").get_json()
    assert doc["rejected_unverified"]["count"] >= 1
    assert bad.delivery in [d["id"] for d in doc["rejected_unverified"]["sample"]]
    page = github.client.get("/deliveries").get_data(as_text=True)
    assert bad.delivery in page and "missing X-Hub-Signature-256" in page

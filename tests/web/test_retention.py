"""Retention: the rules (pure, exact reasons), then pruning against a real Redis through the app:
what goes, what never goes (unfinished, deployed, in history), what pages and the API then say."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from orchestrator import Runtime
from orchestrator.build import retention
from orchestrator.build.queue import enqueuer
from orchestrator.build.retention import Plan, Rules, plan
from orchestrator.intake.github import sign
from orchestrator.models import Deployment, Trigger
from orchestrator.store.notifications import Notification
from orchestrator.store.retention import BuildMeta

from .conftest import REPO, Seed, make_settings

NOW = 1_800_000_000.0
DAY = 86400.0


def meta(
    i: int, repo: str = "a/x", status: str = "success", age_days: float | None = 1.0, log_pruned: bool = False
):
    return BuildMeta(i, repo, status, None if age_days is None else NOW - age_days * DAY, log_pruned)


NEWEST = "not among the newest {n} builds of {repo} (retention_builds)"


@pytest.mark.parametrize(
    ("builds", "protected", "rules", "expected"),
    [
        # newest 2 per repository stay, counted per repository
        (
            [meta(1), meta(2), meta(3), meta(4, "b/y"), meta(5, "b/y")],
            set(),
            Rules(builds=2),
            Plan(builds=[(1, NEWEST.format(n=2, repo="a/x"))]),
        ),
        # unfinished and protected ones never go, but still count among the newest
        (
            [meta(1, status="running"), meta(2), meta(3), meta(4), meta(5)],
            {2},
            Rules(builds=2),
            Plan(builds=[(3, NEWEST.format(n=2, repo="a/x"))]),
        ),
        # days: finished more than 30 days ago
        (
            [meta(1, age_days=31), meta(2, age_days=29), meta(3, status="queued", age_days=None)],
            set(),
            Rules(days=30),
            Plan(builds=[(1, "finished more than 30 days ago (retention_days)")]),
        ),
        # both rules: the count rule is named first
        (
            [meta(1, age_days=40), meta(2, age_days=40), meta(3, age_days=1)],
            set(),
            Rules(days=30, builds=2),
            Plan(
                builds=[
                    (1, NEWEST.format(n=2, repo="a/x")),
                    (2, "finished more than 30 days ago (retention_days)"),
                ]
            ),
        ),
        # logs: a kept build's log goes after log_days, once; a protected build keeps its log
        (
            [
                meta(1, age_days=10),
                meta(2, age_days=10, log_pruned=True),
                meta(3, age_days=10),
                meta(4, age_days=1),
            ],
            {3},
            Rules(days=30, log_days=7),
            Plan(logs=[(1, "finished more than 7 days ago (log_retention_days)")]),
        ),
        # everything off
        ([meta(1, age_days=400)], set(), Rules(), Plan()),
        # a status this version does not know is kept
        ([meta(1, status="paused", age_days=400)], set(), Rules(days=1, builds=0), Plan()),
    ],
)
def test_rules(builds: list[BuildMeta], protected: set[int], rules: Rules, expected: Plan) -> None:
    assert plan(builds, protected, rules, NOW) == expected


# -- against Redis, through the app ---------------------------------------------------------------


def _deploy(rt: Runtime, build_id: int, env: str = "qa") -> None:
    b = rt.store.get_build(build_id)
    rt.store.set_deployment(Deployment(b.repo, env, b.id, b.number, f"img:{b.id}", b.sha))


def _settings(redis_url: str, **kw: Any):
    return make_settings(redis_url, **kw)


def test_newest_n_per_repository_pruned_with_everything_of_theirs(
    rt: Runtime, seed: Seed, client: Any
) -> None:
    old_running = seed.build("running", log=[("build", "stdout", "still going")])
    in_history = seed.build("success", log=[("build", "stdout", "deployed once")])
    _deploy(rt, in_history.id)
    ids = [seed.build("success", log=[("build", "stdout", f"build {i}")]).id for i in range(5)]
    _deploy(rt, ids[-1])  # now in_history is only in qa's history: still kept
    rt.store.notifications.add([Notification(ids[0], "build.failed", "build", "ops", "webhook")])
    settings = _settings(rt.settings.redis_url, retention_builds=3, retention_days=0)

    done = retention.prune_once(settings, rt.store)

    reason = f"not among the newest 3 builds of {REPO} (retention_builds)"
    assert done.builds == [(ids[0], reason), (ids[1], reason)]
    listed = [b["id"] for b in client.get("/api/v1/builds").get_json()["builds"]]
    assert listed == [*reversed(ids[2:]), in_history.id, old_running.id]
    resp = client.get(f"/api/v1/builds/{ids[0]}")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["message"] == (
        f"build {ids[0]} ({REPO} #{ids[0]}) was pruned by retention: {reason}"
    )
    page = client.get(f"/builds/{ids[1]}")
    assert page.status_code == 404 and "was pruned by retention" in page.get_data(as_text=True)
    k, r = rt.store.k, rt.store.r
    assert not r.exists(
        k.build(ids[0]), k.build_log(ids[0]), k.notifications(ids[0]), k.build_log_cap(ids[0])
    )
    assert r.zcard(k.notifications_due()) == 0  # its outbox entry went with it
    assert rt.store.log_text(in_history.id) == "[build] deployed once\n"
    assert rt.store.get_build(old_running.id).status == "running"
    assert retention.prune_once(settings, rt.store) == Plan()  # idempotent: nothing more to do


def test_days_and_a_never_created_id(rt: Runtime, seed: Seed, client: Any) -> None:
    old = seed.build("failed", ago=40 * DAY)
    recent = seed.build("success", ago=10 * DAY)
    settings = _settings(rt.settings.redis_url, retention_days=30, retention_builds=0)
    assert retention.prune_once(settings, rt.store).builds == [
        (old.id, "finished more than 30 days ago (retention_days)")
    ]
    assert client.get(f"/api/v1/builds/{recent.id}").status_code == 200
    # no tombstone (expired): still told it was pruned, since only retention deletes a build
    rt.store.r.delete(rt.store.k.build_pruned(old.id))
    msg = client.get(f"/api/v1/builds/{old.id}").get_json()["error"]["message"]
    assert msg == f"build {old.id} was pruned by retention (its record and log are gone)"
    msg = client.get("/api/v1/builds/999").get_json()["error"]["message"]
    assert msg == "build 999 does not exist"


def test_log_retention_keeps_the_build_and_says_so(rt: Runtime, seed: Seed, client: Any) -> None:
    b = seed.build("success", ago=10 * DAY, log=[("build", "stdout", "compiling")])
    settings = _settings(rt.settings.redis_url, retention_days=30, retention_builds=0, log_retention_days=7)
    assert retention.prune_once(settings, rt.store).logs == [
        (b.id, "finished more than 7 days ago (log_retention_days)")
    ]
    page = client.get(f"/builds/{b.id}").get_data(as_text=True)
    assert "log was pruned by retention: finished more than 7 days ago (log_retention_days)" in page
    assert "compiling" not in page
    resp = client.get(f"/api/v1/builds/{b.id}/log")
    assert resp.status_code == 410 and resp.get_json()["error"]["code"] == "log_pruned"
    assert client.get(f"/api/v1/builds/{b.id}").get_json()["log_pruned"].startswith("finished more than 7")


def test_the_script_rechecks_deployed_and_unfinished(rt: Runtime, seed: Seed) -> None:
    """A plan made before a deploy (or a re-queue) cannot remove that build: the script checks again."""
    deployed = seed.build("success")
    running = seed.build("success")
    plain = seed.build("success")
    _deploy(rt, deployed.id, "prod")
    rt.store.update_build(running.id, status="running")
    items = [(i, "test") for i in (deployed.id, running.id, plain.id)]
    assert rt.store.prune_builds(items, time.time()) == [plain.id]
    assert rt.store.get_build(deployed.id).id == deployed.id


def test_a_pruned_builds_dedup_key_goes_and_the_commit_builds_again(rt: Runtime) -> None:
    trigger = Trigger(repo=REPO, sha="ab" * 20, ref="refs/heads/main", branch="main", kind="push")

    def create():
        return rt.store.create_build(
            trigger, pipeline="pipeline.yaml", triggered_by="api", enqueue=enqueuer(rt.queue, 600)
        )

    first, created = create()
    assert created and create() == (first, False)  # a duplicate while it exists
    rt.store.update_build(first.id, status="success", finished_at=time.time())
    assert rt.store.prune_builds([(first.id, "test")], time.time()) == [first.id]
    assert not rt.store.r.exists(rt.store.k.dedup(REPO, trigger.sha, "pipeline.yaml", "main"))
    again, created = create()
    assert created and again.id == first.id + 1


def test_a_dangling_dedup_key_does_not_block_a_build(rt: Runtime) -> None:
    """A dedup key that outlived its build (written before builds recorded their dedup key)."""
    trigger = Trigger(repo=REPO, sha="cd" * 20, ref="refs/heads/main", branch="main", kind="push")
    rt.store.r.set(rt.store.k.dedup(REPO, trigger.sha, "pipeline.yaml", "main"), "41")
    build, created = rt.store.create_build(
        trigger, pipeline="pipeline.yaml", triggered_by="api", enqueue=enqueuer(rt.queue, 600)
    )
    assert created and build.sha == trigger.sha


def test_a_redelivery_whose_build_was_pruned_is_answered_from_its_record(redis_url: str) -> None:
    from tests.reliability.workload import SECRET, Workload, settings

    w = Workload(settings(redis_url))
    p = w._merged
    p["pull_request"]["merge_commit_sha"] = "ef" * 20
    body = json.dumps(p).encode()
    headers = {
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": "d-pruned-1",
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(SECRET.encode(), body),
    }
    first = w.client.post("/webhooks/github", data=body, headers=headers)
    assert first.status_code == 202
    build_id = first.get_json()["build"]
    w.finish(build_id, 1000)
    assert w.rt.store.prune_builds([(build_id, "test rule")], time.time()) == [build_id]
    again = w.client.post("/webhooks/github", data=body, headers=headers)
    assert again.status_code == 202
    got = again.get_json()
    assert got["build"] == build_id and got["verdict"] == "queued"
    assert got["pruned"].endswith("was pruned by retention: test rule")
    assert w.rt.store.latest_build_id() == build_id  # nothing built twice

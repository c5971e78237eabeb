"""``redis_wait_replicas``: a write is acknowledged only once that many replicas hold it.

Real Redis: a primary of the test's own without a replica (every WAIT 1 falls short), then with a real
replica attached (``--replicaof``). The webhook answers 503 ``not_replicated`` while the build exists
on the primary only, and a redelivery never makes a second build; a worker that cannot get its claim
confirmed runs no step. The failover itself: tests/reliability/test_sentinel.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import create_app
from orchestrator.build import runner
from orchestrator.build.queue import build_queue, enqueuer
from orchestrator.config import Allow, RepoConfig, Secrets, Settings
from orchestrator.devstack.sentinel import replica_acks
from orchestrator.devstack.services import GitOrigin, RedisServer
from orchestrator.intake.github import sign
from orchestrator.models import BuildStatus, Trigger
from orchestrator.store import Store

REPO = "acme/house-price"
SECRET = "wait-secret-" + "9" * 20
PAYLOAD = Path(__file__).resolve().parent / "payloads" / "pull_request.closed.merged.json"


def _settings(redis_url: str, tmp_path: Path, clone_url: str = "file:///nowhere.git", **kw: Any) -> Settings:
    repo = RepoConfig(
        full_name=REPO,
        clone_url=clone_url,
        webhook_secrets=("WEBHOOK_SECRET",),
        allow=Allow(shell=True),  # noqa: S604 - the fake engine's shell steps, never run here
    )
    return Settings(
        redis_url=redis_url,
        repositories={REPO: repo},
        secrets=Secrets(env={"WEBHOOK_SECRET": SECRET}),
        workspace=tmp_path / "ws",
        redis_wait_timeout=50,
        **kw,
    )


@pytest.fixture
def replica(own_redis: RedisServer, tmp_path: Path) -> Iterator[Any]:
    """Starts a replica of ``own_redis`` on demand; returns once its first sync is done."""
    started: list[RedisServer] = []

    def start() -> RedisServer:
        own_redis.client().config_set("repl-diskless-sync-delay", 0)  # sync at once, not after 5 s
        r = RedisServer(tmp_path / "replica", args=("--replicaof", "127.0.0.1", str(own_redis.port)))
        started.append(r.start())
        deadline = time.monotonic() + 15
        while not replica_acks(own_redis):
            assert time.monotonic() < deadline, "the replica did not sync"
        return r

    yield start
    for r in started:
        r.kill()  # scratch data; a SIGTERM during its first AOF rewrite would be refused ("can't exit")


def _post(client: Any, delivery: str, body: bytes) -> Any:
    headers = {
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": delivery,
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(SECRET.encode(), body),
    }
    return client.post("/webhooks/github", data=body, headers=headers)


def test_without_its_replica_a_delivery_is_503_and_its_redelivery_makes_no_second_build(
    own_redis: RedisServer, replica: Any, tmp_path: Path
) -> None:
    app = create_app(_settings(own_redis.url, tmp_path, redis_wait_replicas=1))
    client = app.test_client()
    store = Store.from_url(own_redis.url)
    payload = json.loads(PAYLOAD.read_text())
    payload["repository"]["full_name"] = REPO
    body = json.dumps(payload).encode()
    delivery = str(uuid.uuid4())

    first = _post(client, delivery, body)
    assert first.status_code == 503, first.get_json()
    answer = first.get_json()
    assert answer["error"] == "not_replicated"
    assert answer["reason"] == (
        "build 1 is on the Redis primary but only 0 of 1 replicas confirmed it within 50 ms "
        "(redis_wait_replicas): a failover now could lose it; redeliver it: no second build is made"
    )
    again = _post(client, delivery, body)  # the forge redelivers while the replica is still missing
    assert (again.status_code, again.get_json()["error"]) == (503, "not_replicated")
    assert store.latest_build_id() == 1

    replica()
    ok = _post(client, delivery, body)
    assert ok.status_code == 202, ok.get_json()
    assert ok.get_json()["build"] == 1  # the build recorded before the first 503, answered from its record
    assert store.latest_build_id() == 1
    assert store.get_build(1).status is BuildStatus.QUEUED
    fresh = _post(client, str(uuid.uuid4()), body.replace(b'"number": 42', b'"number": 43'))
    assert fresh.status_code in (200, 202), fresh.get_json()  # the same commit: a duplicate verdict
    assert store.latest_build_id() == 1
    assert store.counters("redis_waits") == {"total": 4, "short": 2}


def test_a_claim_no_replica_confirmed_runs_no_step_and_with_a_replica_it_runs(
    own_redis: RedisServer, replica: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = GitOrigin(tmp_path / "git").create(copy_example=False)
    pipeline = 'version: 1\nname: w\nimage: r/w\nsteps:\n  - {name: a, shell: {command: ["ok"]}}\n'
    sha = origin.commit("main", {"pipeline.yaml": pipeline})
    settings = _settings(own_redis.url, tmp_path, origin.url, redis_wait_replicas=1, lease_seconds=3.0)
    store = Store.from_settings(settings)
    ran: list[str] = []
    steps = {"shell": lambda ctx: ran.append(ctx.step.name)}
    monkeypatch.setattr(runner, "CLAIM_CONFIRM_TIMEOUT", 0.5)

    def build() -> int:
        trig = Trigger(repo=REPO, sha=sha, ref="refs/heads/main", branch="main", kind="push")
        enqueue = enqueuer(build_queue(settings), settings.build_timeout)
        plain = Store.from_url(own_redis.url)  # creating it is not what is under test: no WAIT
        b, _ = plain.create_build(
            trig, pipeline="pipeline.yaml", triggered_by="t", enqueue=enqueue, dedup=False
        )
        return b.id

    lonely = build()
    runner.run_build(settings, store, lonely, worker_name="w", steps=steps)
    b = store.get_build(lonely)
    assert ran == []
    assert b.status is BuildStatus.ERROR
    assert b.error == (
        "this worker's claim of the build was not confirmed by 1 Redis replicas within 0.5 s "
        "(redis_wait_replicas): not run, so that a failover cannot run it twice; re-run it once the "
        "replicas are back"
    )

    replica()
    confirmed = build()
    runner.run_build(settings, store, confirmed, worker_name="w", steps=steps)
    assert ran == ["a"]
    assert store.get_build(confirmed).status is BuildStatus.SUCCESS

"""Store against a real Redis: atomic build creation with its RQ job, dedup, numbering, locks, leases."""

from __future__ import annotations

import threading
import time

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from orchestrator.build.queue import build_queue, enqueuer
from orchestrator.config import Settings
from orchestrator.devstack.services import wait_for
from orchestrator.errors import NotFound, StoreUnavailable
from orchestrator.models import BuildStatus, Delivery, Deployment, Trigger
from orchestrator.store import Store
from tests.store_helpers import record_delivery


def trig(sha: str = "a" * 40, repo: str = "acme/house-price") -> Trigger:
    return Trigger(
        repo=repo,
        sha=sha,
        ref="refs/heads/main",
        branch="main",
        kind="pull_request_merged",
        author="dev",
        message="Merge pull request #1",
    )


@pytest.fixture
def store(redis_url):
    return Store.from_url(redis_url)


@pytest.fixture
def queue(redis_url) -> Queue:
    return build_queue(Settings(redis_url=redis_url))


def test_create_build_writes_build_and_json_job_in_one_go(store, queue):
    build, created = store.create_build(
        trig(), pipeline="pipeline.yaml", triggered_by="d1", enqueue=enqueuer(queue, 60)
    )
    assert created and build.id == 1 and build.number == 1 and build.status is BuildStatus.QUEUED
    assert queue.count == 1
    job = queue.jobs[0]
    assert job.func_name == "orchestrator.build.worker.run_build"
    assert store.resolve_ticket(job.args[0]) == build.id
    data = queue.connection.hget(f"rq:job:{job.id}", "data")
    assert data is not None
    assert queue.serializer is JSONSerializer


def test_same_commit_twice_is_one_build(store, queue):
    enq = enqueuer(queue, 60)
    b1, c1 = store.create_build(trig(), pipeline="p", triggered_by="pr", enqueue=enq)
    b2, c2 = store.create_build(trig(), pipeline="p", triggered_by="push", enqueue=enq)
    assert (c1, c2) == (True, False) and b1.id == b2.id
    assert store.latest_build_id() == 1


def test_delivery_id_maps_to_one_build(store, queue):
    enq = enqueuer(queue, 60)
    d = Delivery(id="guid-1", event="pull_request")
    record_delivery(store, d)
    b1, _ = store.create_build(trig("b" * 40), pipeline="p", triggered_by="guid-1", enqueue=enq, delivery=d)
    b2, created = store.create_build(
        trig("c" * 40), pipeline="p", triggered_by="guid-1", enqueue=enq, delivery=d
    )
    assert not created and b2.id == b1.id
    got = store.get_delivery("guid-1")
    assert got is not None and got.verdict == "queued" and got.build_id == b1.id


def test_fifty_concurrent_creations_get_gap_free_numbers(store, queue):
    enq = enqueuer(queue, 60)
    ids: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        b, created = store.create_build(trig(f"{i:040x}"), pipeline="p", triggered_by=str(i), enqueue=enq)
        assert created
        with lock:
            ids.append(b.number)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ids) == list(range(1, 51))
    assert queue.count == 50


def test_numbers_are_per_repository(store, queue):
    enq = enqueuer(queue, 60)
    a, _ = store.create_build(trig("1" * 40, "acme/a"), pipeline="p", triggered_by="x", enqueue=enq)
    b, _ = store.create_build(trig("2" * 40, "acme/b"), pipeline="p", triggered_by="x", enqueue=enq)
    c, _ = store.create_build(trig("3" * 40, "acme/a"), pipeline="p", triggered_by="x", enqueue=enq)
    assert [(a.id, a.number), (b.id, b.number), (c.id, c.number)] == [(1, 1), (2, 1), (3, 2)]


def test_missing_build_is_not_found(store):
    with pytest.raises(NotFound, match="build 42 does not exist"):
        store.get_build(42)


def test_set_status_if_only_from_expected(store, queue):
    b, _ = store.create_build(trig(), pipeline="p", triggered_by="x", enqueue=enqueuer(queue, 60))
    assert store.set_status_if(b.id, [BuildStatus.QUEUED], status=BuildStatus.RUNNING)
    assert not store.set_status_if(b.id, [BuildStatus.QUEUED], status=BuildStatus.CANCELLED)
    assert store.get_build(b.id).status is BuildStatus.RUNNING


def test_log_stream_keeps_every_line_in_order(store):
    store.append_log(7, [("build", "stdout", f"line {i}") for i in range(2500)])
    text = store.log_text(7)
    assert text.count("\n") == 2500 and text.startswith("[build] line 0\n") and "line 2499" in text


def test_locks_are_owned_and_expire(store):
    assert store.acquire_lock("env:qa", "1", ttl=0.3, build_id=1)
    assert not store.acquire_lock("env:qa", "2", ttl=5)
    assert not store.release_lock("env:qa", "2")
    assert store.lock_owner("env:qa") == "1"
    # Redis expires the first owner's lock after its 0.3 s TTL: wait for that, with a deadline.
    wait_for(lambda: store.acquire_lock("env:qa", "2", ttl=5), 10, "the expired lock to be free")
    assert store.lock_owner("env:qa") == "2"
    assert store.release_lock("env:qa", "2")


def test_expired_lease_is_claimed_once(store):
    store.start_lease(5, "tok", seconds=-1)
    assert store.expired_leases() == [5]
    assert store.claim_expired(5)
    assert not store.claim_expired(5)
    assert not store.r.exists(store.k.lease(5))  # the token goes with it: its holder is fenced


def test_lease_is_renewed_only_by_its_holder_before_it_expires(store):
    store.start_lease(7, "holder", seconds=30)
    before = store.r.zscore(store.k.running(), "7")
    assert store.renew_lease(7, "holder", 60)
    assert store.r.zscore(store.k.running(), "7") > before + 25
    assert not store.renew_lease(7, "someone-else", 60)
    assert not store.renew_lease(7, "", 60)
    assert store.r.get(store.k.lease(7)) == "holder"


def test_an_expired_lease_is_not_renewed_even_by_its_holder(store):
    store.start_lease(8, "holder", seconds=-1)  # ran out (the worker stalled past it)
    assert not store.renew_lease(8, "holder", 60)
    assert store.expired_leases() == [8]  # still the janitor's to claim
    assert store.claim_expired(8)
    assert not store.renew_lease(8, "holder", 60)  # and no renewal brings it back
    assert store.r.zscore(store.k.running(), "8") is None


def test_lease_deadlines_are_on_redis_clock_not_the_workers(store, monkeypatch):
    """Workers on machines whose clocks disagree: one running an hour ahead neither expires its own
    lease nor lets its janitor reap another worker's live one."""
    store.start_lease(12, "holder", seconds=30)
    monkeypatch.setattr(time, "time", lambda: time.monotonic() + 10_000_000_000)
    assert store.expired_leases() == [] and not store.claim_expired(12)
    assert store.fence_check(12, "holder", []) == "ok"
    assert store.renew_lease(12, "holder", 30)
    monkeypatch.undo()
    deadline = store.r.zscore(store.k.running(), "12")
    assert abs(deadline - (store.clock() + 30)) < 5  # from Redis's TIME, not the skewed clock


def test_fence_check_in_one_round_trip(store):
    store.start_lease(9, "holder", seconds=30)
    assert store.acquire_lock("deploy:acme/a:qa", "9", ttl=30, build_id=9)
    lock = [("deploy:acme/a:qa", "9")]
    assert store.fence_check(9, "holder", lock) == "ok"
    assert store.fence_check(9, "intruder", lock) == "the build lease was taken over"
    assert store.fence_check(9, "holder", lock, now=time.time() + 31) == "the build lease expired"
    assert store.fence_check(9, "holder", [("deploy:acme/a:qa", "10")]) == "lost the lock deploy:acme/a:qa"
    assert store.fence_check(9, "", lock) == "ok"  # no lease to check: the lock only
    assert store.release_build_locks(9) == ["deploy:acme/a:qa"]  # the janitor frees it ...
    assert store.acquire_lock("deploy:acme/a:qa", "10", ttl=30, build_id=10)  # ... the next deploy
    assert store.fence_check(9, "holder", lock) == "lost the lock deploy:acme/a:qa"
    assert store.claim_expired(9, now=time.time() + 31)
    assert store.fence_check(9, "holder", lock) == "the build lease was taken over"
    assert store.fence_check(10, "", [("deploy:acme/a:qa", "10")]) == "ok"


def test_fence_counts_checks_and_stays_fenced(store):
    from orchestrator.deploy.fence import Fence
    from orchestrator.errors import Fenced

    store.start_lease(11, "holder", seconds=30)
    fence = Fence(store, 11, "holder", [])
    fence.check("starting hp-b1")
    assert fence.checks == 1 and fence.holds() and fence.checks == 2
    store.release_lease(11)
    with pytest.raises(Fenced, match="fenced before starting hp-b2 on h:22: the build lease was taken"):
        fence.check("starting hp-b2 on h:22")
    store.start_lease(11, "holder", seconds=30)  # even if it came back: once fenced, always fenced
    with pytest.raises(Fenced):
        fence.check("the edge change")
    assert fence.checks == 3 and not fence.holds()
    assert Fenced.step_status == "error" and Fenced.code == "fenced"


def test_deployment_record_and_history(store):
    for n in (1, 2):
        store.set_deployment(
            Deployment(repo="acme/a", environment="qa", build_id=n, build_number=n, image=f"img:{n}", sha="s")
        )
    current = store.get_deployment("acme/a", "qa")
    assert current is not None and current.build_id == 2
    assert [d.build_id for d in store.deployment_history("acme/a", "qa")] == [2, 1]
    assert store.environments() == [("acme/a", "qa")]


def test_store_down_raises_store_unavailable(own_redis):
    s = Store.from_url(own_redis.url)
    own_redis.stop()
    with pytest.raises(StoreUnavailable):
        s.get_build(1)


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"status": "failed"},
        {"branch": "main"},
        {"repo": "acme/b"},
        {"status": "success", "branch": "main"},
        {"status": "success", "branch": "dev", "repo": "acme/a"},
        {"status": "cancelled"},
        {"branch": "nope"},
    ],
)
def test_filtered_build_lists_match_every_field_and_page(store, queue, filters):
    enqueue = enqueuer(queue, 60)
    made = []
    for i in range(23):
        repo, branch = ("acme/a", "acme/b")[i % 2], ("main", "dev", "main")[i % 3]
        status = ("success", "failed", "running", "success")[i % 4]
        t = Trigger(repo=repo, sha=f"{i:040x}", ref=f"refs/heads/{branch}", branch=branch, kind="push")
        b, _ = store.create_build(t, pipeline="p", triggered_by=f"d{i}", enqueue=enqueue)
        store.update_build(b.id, status=status)
        made.append((b.id, status, branch, repo))
    want = [
        i
        for i, s, br, r in reversed(made)
        if all(filters.get(k) in (None, v) for k, v in (("status", s), ("branch", br), ("repo", r)))
    ]
    seen = []
    for offset in range(0, 30, 4):
        page, total = store.list_builds(offset=offset, limit=4, **filters)
        assert total == len(want)
        seen += [b.id for b in page]
        assert all(b.steps is not None and b.sha for b in page)  # whole builds on the page
    assert seen == want

"""Soak: deliveries (30% unsigned or badly signed junk) through the real Flask app, builds with
1 MB logs through the real LogWriter, retention pruning concurrently in its background thread, on a
Redis of the test's own. Redis memory stays under a derived bound; every acknowledged build is
readable or pruned by the rules (tombstone naming the rule; never an unfinished one, nor a deployed
one while an environment's history, its last ``HISTORY`` records, names it).

Bounded in CI: 2,000 deliveries, 50 big builds (a few minutes at most). The full run (issue 19:
20,000 deliveries, 500 builds with 1 MB logs): ``MLSHIP_SOAK=full`` or ``bench/soak.py``.

The bound (figures from bench/memory_bench.py, docs/reliability.md "Redis sizing"):

    used_memory <= baseline + accepted x RECORD + kept_small x SMALL + kept_big x BIG + SLACK

- RECORD (6 KB): what an accepted delivery leaves for delivery_ttl_days whatever retention does
  (its record, and for a queued one the RQ job, ticket and tombstone; measured 4.3 KB queued);
- kept_small x SMALL: builds retention must keep — unfinished, deployed, the newest
  ``RETENTION_BUILDS`` per repository — plus those finished within one pass (WINDOW), each with a
  small log (SMALL 48 KB: fields, pipeline, steps, 2 KB log; measured 22 KB with a 10 KB log);
- kept_big x BIG: big builds that can be alive at once: every BIG_EVERY-th queued build is big, so
  at most ceil(kept / BIG_EVERY) + 2 of the kept are (BIG 1.5 MB: the log capped at 512 KB of text
  is ~0.9 MB in a stream of 100-byte lines);
- SLACK (8 MB): AOF and client buffers, allocator rounding.
Without retention the big logs alone (50 x ~0.9 MB) exceed this bound: the test fails then.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field

import pytest
import redis

from orchestrator.build import retention
from orchestrator.devstack.services import RedisServer
from orchestrator.models import BuildStatus, Deployment
from orchestrator.store import Store
from orchestrator.store.deployments import HISTORY

from .workload import REPOS, Workload, settings

FULL = os.environ.get("MLSHIP_SOAK", "") == "full"
DELIVERIES = 20_000 if FULL else 2_000
BIG_BUILDS = 500 if FULL else 50
BIG_LOG = 1024 * 1024
SMALL_LOG = 2 * 1024
MAX_LOG_BYTES = 512 * 1024
RETENTION_BUILDS = 10
RETENTION_DAYS = 30
BIG_EVERY = 24  # 60% of deliveries are queued builds: 2,000 → 1,200 builds, 50 of them big
UNFINISHED_EVERY, DEPLOY_EVERY, OLD_EVERY = 97, 50, 200
PASS_INTERVAL = 0.2
WINDOW = 20  # builds that can finish between two retention passes (one is ~5-50 ms here)
RECORD, SMALL, BIG, SLACK = 6 * 1024, 48 * 1024, 1536 * 1024, 8 * 1024 * 1024
MB = 1024 * 1024
WARMUP = 5


@dataclass
class Tally:
    accepted: int = 0
    junk: int = 0
    builds: dict[int, str] = field(default_factory=dict)  # acknowledged build id → repository
    big: set[int] = field(default_factory=set)
    unfinished: set[int] = field(default_factory=set)
    deployed: set[int] = field(default_factory=set)
    deploys: dict[str, list[tuple[int, float]]] = field(
        default_factory=dict
    )  # repo → (build, when), in order
    old: set[int] = field(default_factory=set)


class Peak:
    """Samples Redis used_memory every 50 ms on its own connection; keeps the highest."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, int(self.client.info("memory")["used_memory"]))

    def __enter__(self) -> Peak:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.close()


def _run_build(w: Workload, t: Tally, build_id: int, q: int) -> None:
    """The q-th queued build: left unfinished, or run (big log, or small and maybe deployed/old)."""
    big = q % BIG_EVERY == 0 and len(t.big) < BIG_BUILDS
    if q % UNFINISHED_EVERY == 5 and not big:
        t.unfinished.add(build_id)
        return
    w.finish(build_id, BIG_LOG if big else SMALL_LOG)
    if big:
        t.big.add(build_id)
    elif q % DEPLOY_EVERY == 7:
        b = w.rt.store.get_build(build_id)
        w.rt.store.set_deployment(Deployment(b.repo, "qa", b.id, b.number, b.image, b.sha))
        t.deployed.add(build_id)
        t.deploys.setdefault(b.repo, []).append((build_id, time.time()))
    elif q % OLD_EVERY == 11:  # finished long ago: the days rule prunes it even among the newest
        w.rt.store.update_build(build_id, finished_at=time.time() - (RETENTION_DAYS + 10) * 86400)
        t.old.add(build_id)


def _drive(w: Workload) -> Tally:
    t = Tally()
    q = 0
    for i in range(DELIVERIES):
        if i % 10 < 3:
            assert w.junk(i).status == 401
            t.junk += 1
            continue
        answer = w.ignored(i) if i % 10 == 3 else w.merged(i)
        assert answer.status in (200, 202), answer.body
        t.accepted += 1
        if "build" in answer.body:
            t.builds[answer.body["build"]] = REPOS[i % len(REPOS)]
            _run_build(w, t, answer.body["build"], q)
            q += 1
    return t


def _bound(baseline: int, t: Tally) -> int:
    kept = len(t.unfinished) + len(t.deployed) + RETENTION_BUILDS * len(REPOS) + WINDOW
    kept_big = math.ceil(kept / BIG_EVERY) + 2
    return baseline + t.accepted * RECORD + kept * SMALL + kept_big * BIG + SLACK


def _allowed_reasons(repo: str) -> set[str]:
    return {
        f"not among the newest {RETENTION_BUILDS} builds of {repo} (retention_builds)",
        f"finished more than {RETENTION_DAYS:g} days ago (retention_days)",
    }


def _check_every_build(store: Store, t: Tally) -> tuple[int, int]:
    """Each acknowledged build is readable, or pruned by a rule that applies to it."""
    kept = pruned = 0
    newest = {repo: sorted((i for i, r in t.builds.items() if r == repo), reverse=True) for repo in REPOS}
    for build_id, repo in t.builds.items():
        rank = newest[repo].index(build_id)
        if store.r.exists(store.k.build(build_id)):
            kept += 1
            assert rank < RETENTION_BUILDS + 2 * WINDOW or build_id in t.unfinished | t.deployed, build_id
            continue
        stone = store.tombstone(build_id)
        assert stone is not None, f"build {build_id} is neither readable nor pruned: lost"
        assert stone.reason in _allowed_reasons(repo), stone
        assert build_id not in t.unfinished, stone
        if build_id in t.deployed:  # only once HISTORY later deploys pushed it out of qa's history
            order = [b for b, _ in t.deploys[repo]]
            later = order.index(build_id) + HISTORY
            assert later < len(order) and stone.pruned_at >= t.deploys[repo][later][1] - 0.01, stone
        if stone.reason.startswith("not among"):
            assert rank >= RETENTION_BUILDS, (build_id, rank)
        else:
            assert build_id in t.old, stone
        pruned += 1
    for repo, ids in newest.items():  # the newest N of each repository are all there (or old)
        assert all(store.r.exists(store.k.build(i)) or i in t.old for i in ids[:RETENTION_BUILDS]), repo
    for build_id in t.unfinished | {d.build_id for d in store.deployment_records()}:
        assert store.get_build(build_id).id == build_id
    return kept, pruned


@pytest.mark.slow
def test_soak_memory_stays_bounded_and_no_build_is_lost(tmp_path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        s = settings(
            server.url,
            retention_builds=RETENTION_BUILDS,
            retention_days=RETENTION_DAYS,
            max_log_bytes=MAX_LOG_BYTES,
        )
        w = Workload(s)
        store = w.rt.store
        for i in range(WARMUP):  # warm-up, not counted: scripts loaded, first keys of each kind
            w.junk(i)
        baseline = store.memory()["used_memory"]
        stop = retention.start(s, store, interval=PASS_INTERVAL)
        t0 = time.monotonic()
        try:
            with Peak(server.url) as peak:
                t = _drive(w)
                retention.prune_once(s, store)
                time.sleep(0.5)  # UNLINK frees in the background; the sampler sees the end state
        finally:
            stop.set()
        seconds = time.monotonic() - t0
        bound = _bound(baseline, t)
        kept, pruned = _check_every_build(store, t)
        print(
            f"soak: {DELIVERIES} deliveries ({t.junk} junk), {len(t.builds)} builds "
            f"({len(t.big)} with 1 MB logs) in {seconds:.0f} s; kept {kept}, pruned {pruned}; "
            f"peak used_memory {peak.peak / MB:.1f} MB, "
            f"bound {bound / MB:.1f} MB (baseline {baseline / MB:.1f} MB)"
        )
        assert len(t.big) == BIG_BUILDS
        assert peak.peak <= bound, (
            f"peak used_memory {peak.peak / MB:.1f} MB over the bound {bound / MB:.1f} MB"
        )
        # junk left a count and the bounded sample, no key of its own
        assert store.counters("deliveries")["rejected"] == t.junk + WARMUP
        assert len(store.rejected_sample()) == 200
        assert store.r.zcard(store.k.deliveries()) == t.accepted
        # a kept big build's log is capped: within max_log_bytes, ending with the one marker
        for build_id in t.big:
            if store.r.exists(store.k.build(build_id)):
                texts = [f["text"] for _, f in store.read_log(build_id, count=100_000)]
                assert sum(len(x) for x in texts[:-1]) <= MAX_LOG_BYTES
                assert texts[-1].startswith(f"log cap reached (max_log_bytes={MAX_LOG_BYTES}): ")
                assert store.get_build(build_id).status is BuildStatus.SUCCESS
    finally:
        server.stop()

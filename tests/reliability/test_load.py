"""Load with faults: thousands of signed deliveries sent concurrently to a real ``orchestrator web``
(gunicorn) while its Redis (AOF on) is restarted once midway. Nothing accepted may be lost or
doubled.

Mix: 80% distinct merges (distinct delivery ids and merge shas), 5% pull requests opened (answered
"ignored"), 10% redeliveries of earlier delivery ids (same body), 5% bad signatures.
``MLSHIP_LOAD_DELIVERIES`` sets the count (CI: 2,000; long variant: ``MLSHIP_LOAD_DELIVERIES=10000``).
No worker runs: builds stay queued, so the RQ queue must hold exactly one resolvable job per build.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from orchestrator.build.queue import JOB_PREFIX
from orchestrator.devstack.services import RedisServer
from orchestrator.intake.github import sign
from orchestrator.store import Store
from tests.webhooks.helpers import encode, headers, merged_pr
from tests.webhooks.test_gunicorn import start_web, stop_web

pytestmark = pytest.mark.slow

DELIVERIES = int(os.environ.get("MLSHIP_LOAD_DELIVERIES", "2000"))
THREADS = 16
OUTAGE_SECONDS = 1.5


@dataclass(frozen=True)
class Delivery:
    id: str
    body: bytes
    kind: str  # merge | ignored | redelivery | bad_signature
    sha: str
    verdict: str  # what a genuine delivery of this id should end as: queued | ignored | rejected


@dataclass
class Outcome:
    answers: dict[int, list[tuple[int, dict]]] = field(default_factory=dict)  # index → (status, body)
    errors: list[tuple[int, str]] = field(default_factory=list)  # index → transport error
    lock: threading.Lock = field(default_factory=threading.Lock)


def plan(n: int, seed: int = 9) -> list[Delivery]:
    """The delivery mix, in send order; redeliveries repeat an earlier merge's id and body."""
    rng = random.Random(seed)
    out: list[Delivery] = []
    merges: list[Delivery] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.10 and merges:
            out.append(Delivery(**{**rng.choice(merges).__dict__, "kind": "redelivery"}))
            continue
        sha = f"{i + 1:040x}"
        p = merged_pr(sha, number=i + 1)
        kind = "bad_signature" if roll < 0.15 else "ignored" if roll < 0.20 else "merge"
        if kind == "ignored":
            p["action"] = "opened"
        verdict = {"bad_signature": "rejected", "ignored": "ignored", "merge": "queued"}[kind]
        d = Delivery(str(uuid.uuid4()), encode(p), kind, sha, verdict)
        out.append(d)
        if d.kind != "bad_signature":
            merges.append(d)
    return out


def send(session: requests.Session, url: str, d: Delivery) -> tuple[int, dict]:
    h = headers("pull_request", d.body, delivery=d.id)
    if d.kind == "bad_signature":
        h["X-Hub-Signature-256"] = sign(b"not the secret", d.body)
    r = session.post(url, data=d.body, headers=h, timeout=15)
    return r.status_code, r.json()


def test_deliveries_survive_a_redis_restart(tmp_path: Path, own_redis: RedisServer) -> None:
    deliveries = plan(DELIVERIES)
    web = start_web(tmp_path, own_redis.url)
    url = web.url + "/webhooks/github"
    out = Outcome()
    sent = Counter[str]()
    local = threading.local()
    outage: dict[str, float] = {}
    restart_at = len(deliveries) // 2

    def restart() -> None:
        outage["down"] = time.monotonic()
        own_redis.stop()  # SIGTERM: Redis fsyncs its AOF on the way down
        time.sleep(OUTAGE_SECONDS)
        own_redis.start()
        outage["up"] = time.monotonic()

    restarter = threading.Thread(target=restart)

    def one(i: int) -> None:
        if i == restart_at:
            restarter.start()
        session = getattr(local, "s", None) or requests.Session()
        local.s = session
        try:
            answer = send(session, url, deliveries[i])
            with out.lock:
                out.answers.setdefault(i, []).append(answer)
        except requests.RequestException as exc:
            with out.lock:
                out.errors.append((i, repr(exc)[:200]))

    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(one, range(len(deliveries))))
        restarter.join(30)
        took = time.monotonic() - t0
        first = Counter(a[0][0] for a in out.answers.values())

        # Redeliver (as GitHub's button does) every delivery that was not answered 2xx or 401.
        retry = sorted(
            {i for i, (st, _) in ((i, a[-1]) for i, a in out.answers.items()) if st not in (200, 202, 401)}
            | {i for i, _ in out.errors}
        )
        redelivered = Counter[int]()
        with requests.Session() as s:
            for i in retry:
                status, body = send(s, url, deliveries[i])
                out.answers.setdefault(i, []).append((status, body))
                redelivered[status] += 1
    finally:
        stop_web(web)

    store = Store.from_url(own_redis.url)
    for d in deliveries:
        sent[d.kind] += 1
    unexpected = {i: a for i, a in out.answers.items() if any(st not in (200, 202, 401, 503) for st, _ in a)}
    assert not unexpected, list(unexpected.items())[:5]
    assert first[503] > 0, f"the restart produced no 503 (answers {dict(first)}): the outage was missed"

    # Bad signatures: 401, and nothing was created from them.
    bad = [i for i, d in enumerate(deliveries) if d.kind == "bad_signature"]
    assert all(st == 401 for i in bad for st, _ in out.answers[i])

    # Every genuine delivery ends 2xx; its record points at the one build of its sha.
    builds = {b.id: b for b in store.list_builds(limit=10**6)[0]}
    by_sha = Counter(b.sha for b in builds.values())
    assert max(by_sha.values()) == 1, "a merge was built twice"
    genuine = {d.id: d for d in deliveries if d.kind in ("merge", "ignored")}
    verdicts = Counter[str]()
    for i, d in enumerate(deliveries):
        if d.kind == "bad_signature":
            continue
        final_status, final_body = out.answers[i][-1]
        assert final_status in (200, 202), (d.id, out.answers[i])
        if d.verdict == "ignored":
            assert final_body["verdict"] == "ignored" and "build" not in final_body, final_body
            continue
        assert final_body["verdict"] in ("queued", "duplicate"), final_body
        assert builds[final_body["build"]].sha == d.sha
    for did, d in genuine.items():
        rec = store.get_delivery(did)
        if d.verdict == "ignored":
            assert rec is not None and rec.verdict == "ignored" and rec.build_id is None, (did, rec)
            assert d.sha not in by_sha
            verdicts[rec.verdict] += 1
            continue
        assert rec is not None and rec.verdict == "queued", (did, rec)
        assert rec.build_id is not None and builds[rec.build_id].sha == d.sha
        assert builds[rec.build_id].triggered_by == did
        verdicts[rec.verdict] += 1
    bad_shas = {deliveries[i].sha for i in bad}
    assert not bad_shas & set(by_sha)
    assert all(
        store.get_delivery(deliveries[i].id) is None
        or store.get_delivery(deliveries[i].id).verdict == "rejected"
        for i in bad
    )  # type: ignore[union-attr]

    # Builds: exactly one per genuine merge, numbers 1..N with no gap or repeat.
    assert len(builds) == sum(1 for d in genuine.values() if d.kind == "merge")
    assert sorted(b.number for b in builds.values()) == list(range(1, len(builds) + 1))
    assert sorted(builds) == list(range(1, len(builds) + 1))

    # The RQ queue: one resolvable job per build (duplicate-ticket jobs resolve to nothing).
    rq = store.r
    queue_key = "rq:queue:builds"
    job_ids = [j.decode() if isinstance(j, bytes) else j for j in rq.lrange(queue_key, 0, -1)]
    resolved = Counter(store.resolve_ticket(j[len(JOB_PREFIX) :]) for j in job_ids)
    noops = resolved.pop(None, 0)
    assert resolved == Counter({bid: 1 for bid in builds}), "a build without its job or with two"

    figures = {
        "deliveries": len(deliveries),
        "sent": dict(sent),
        "seconds": round(took, 1),
        "per_second": round(len(deliveries) / took),
        "first_answers": dict(first),
        "transport_errors": len(out.errors),
        "redelivered": dict(redelivered),
        "outage_s": round(outage["up"] - outage["down"], 2),
        "builds": len(builds),
        "rq_jobs": len(job_ids),
        "rq_noop_jobs": noops,
        "records": dict(verdicts),
    }
    print("\nLOAD", figures)

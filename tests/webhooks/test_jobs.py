"""The build's RQ job as the webhook intake writes it: through RQ's public enqueue, as the API does."""

from __future__ import annotations

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from orchestrator import create_app
from orchestrator.build.queue import JOB_PREFIX, RUN_BUILD, build_queue, enqueuer
from orchestrator.config import Settings
from orchestrator.store import Store

from .conftest import GitHub
from .helpers import merged_pr, settings


def test_the_job_a_delivery_queues_is_the_one_rq_would_queue(redis_url: str) -> None:
    """Through the webhook, against Redis: RQ reads the job back as run_build(ticket), with the same
    hash (timestamps aside) as RQ's own enqueue of the same ticket writes."""
    client = create_app(settings(redis_url)).test_client()
    reply = GitHub(client).send("pull_request", merged_pr("e" * 40))
    assert reply.status == 202
    conn = redis.Redis.from_url(redis_url)
    queued = [j.decode() for j in conn.lrange("rq:queue:builds", 0, -1)]
    job_id = next(j for j in queued if j.startswith(JOB_PREFIX))
    ticket = job_id[len(JOB_PREFIX) :]
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    assert (job.func_name, list(job.args), job.origin) == (RUN_BUILD, [ticket], "builds")
    assert job.get_status() == "queued"
    assert job.timeout == Settings().build_timeout + 120 and job.result_ttl == 86400
    assert Store.from_url(redis_url).resolve_ticket(ticket) == reply.body["build"]

    ours = conn.hgetall(f"rq:job:{job_id}")
    conn.delete(f"rq:job:{job_id}")
    pipe = conn.pipeline(transaction=False)
    enqueuer(build_queue(Settings(redis_url=redis_url), conn), Settings().build_timeout)(pipe, ticket)
    pipe.execute()
    theirs = conn.hgetall(f"rq:job:{job_id}")
    times = {b"created_at", b"enqueued_at"}
    assert set(ours) == set(theirs)
    assert {k: v for k, v in ours.items() if k not in times} == {k: theirs[k] for k in ours if k not in times}

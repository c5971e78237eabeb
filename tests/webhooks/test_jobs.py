"""The build's RQ job as the webhook intake writes it: RQ's own commands, templated once at start."""

from __future__ import annotations

import datetime
import itertools
import zlib
from typing import Any

import pytest
import redis
import rq.job
import rq.queue
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from orchestrator import create_app
from orchestrator.build.queue import JOB_PREFIX, RUN_BUILD, JobTemplate, build_queue, enqueuer, job_commands
from orchestrator.config import Settings
from orchestrator.store import Store

from .conftest import GitHub
from .helpers import merged_pr, settings

FROZEN = datetime.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=datetime.UTC)


def _rq_commands(queue: Queue, ticket: str) -> list[list[Any]]:
    """What RQ itself sends to enqueue the build job for ``ticket`` (recorded, not sent)."""
    queue.redis_server_version = (7, 0, 0)  # RQ would ask the server; this queue never connects
    pipe = queue.connection.pipeline(transaction=False)
    enqueuer(queue, 600)(pipe, ticket)
    commands = [[a.value if hasattr(a, "value") else a for a in c[0]] for c in pipe.command_stack]
    pipe.reset()
    return commands


@pytest.mark.parametrize("ticket", ["0" * 32, "f" * 32, "3b0c4f2ed5a94f5f8b7e2f8f6c0c1d2e", "deadbeef" * 4])
def test_the_template_writes_exactly_what_rq_writes(ticket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = build_queue(Settings(redis_url="redis://127.0.0.1:1/0"))  # recording only: never connects
    template = job_commands(queue, 600)
    monkeypatch.setattr(rq.job, "now", lambda: FROZEN)
    monkeypatch.setattr(rq.queue, "now", lambda: FROZEN)
    assert template.fill(ticket, utcformat(FROZEN)) == _rq_commands(queue, ticket)


def test_each_call_has_its_ticket_and_the_current_time() -> None:
    template = job_commands(build_queue(Settings(redis_url="redis://127.0.0.1:1/0")), 600)
    before = utcformat(datetime.datetime.now(datetime.UTC))
    a, b = template("a" * 32), template("b" * 32)
    flat_a = [x for c in a for x in c]
    assert f"rq:job:{JOB_PREFIX}{'a' * 32}" in flat_a and f"{JOB_PREFIX}{'a' * 32}" in flat_a
    assert not any("b" * 32 in str(x) for x in flat_a)
    assert any("b" * 32 in str(x) for c in b for x in c)
    stamps = [x for c in a for x in c if isinstance(x, str) and x.endswith("Z") and x[:4].isdigit()]
    assert stamps and all(s >= before for s in stamps)


def _nonce_per_call() -> Any:
    calls = itertools.count()
    return lambda ticket: [["HSET", "rq:job:" + ticket, "nonce", str(next(calls))]]


@pytest.mark.parametrize(
    "record, message",
    [
        (_nonce_per_call(), "argument 3 varies in a way the intake cannot template"),
        (
            lambda t: [["HSET", "k", "a"]] if t.endswith("a") else [["HSET", "k", "a", "b"]],
            "differently shaped",
        ),
        (lambda t: [["HSET", "k", "data", zlib.compress(t.upper().encode())]], "cannot template"),
    ],
)
def test_a_job_rq_writes_differently_stops_the_app_at_start(record: Any, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        JobTemplate(record)


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

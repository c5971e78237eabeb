"""The RQ side: the build queue and how a build's job is enqueued (JSON serializer, never pickle)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from orchestrator.config import Settings
from orchestrator.store.clients import WRITE_TIMEOUT, redis_for

RUN_BUILD = "orchestrator.build.worker.run_build"
JOB_PREFIX = "build-"


RQ_TIMEOUT = 10.0  # RQ's blocking dequeue sets its own, longer socket timeout on top of this


def rq_connection(settings: Settings, ride_out: bool = False) -> redis.Redis:
    """RQ needs a bytes (non-decoding) client of its own; it follows a Sentinel failover like the store's."""
    return redis_for(settings, RQ_TIMEOUT, decode=False, ride_out=ride_out)


def build_queue(settings: Settings, connection: redis.Redis | None = None) -> Queue:
    return Queue(
        settings.queue,
        connection=connection or rq_connection(settings),
        serializer=JSONSerializer,
        default_timeout=int(settings.build_timeout) + 120,
    )


def intake_queue(settings: Settings) -> Queue:
    """The build queue as the web intake enqueues on it (jobs go on the store's MULTI pipeline).

    RQ asks the server's version once per queue, on its own connection, before the first enqueue:
    here that connection fails as fast as the store's (a frozen Redis still gets GitHub its 503
    within 2 s), and the question is asked at start when Redis answers.
    """
    queue = build_queue(settings, redis_for(settings, WRITE_TIMEOUT, decode=False))
    with contextlib.suppress(redis.RedisError):
        queue.get_redis_server_version()
    return queue


def enqueuer(queue: Queue, timeout: float) -> Callable[[Any, str], Job]:
    """An ``enqueue(pipe, ticket)`` callable for Store.create_build: RQ's public ``enqueue_call`` on
    the store's MULTI pipeline, so the job is written in the same transaction as its build. The job
    carries only the ticket; the returned Job lets the store delete a duplicate's job."""

    def enqueue(pipe: Any, ticket: str) -> Job:
        return queue.enqueue_call(
            RUN_BUILD,
            args=(ticket,),
            job_id=JOB_PREFIX + ticket,
            timeout=int(timeout) + 120,
            result_ttl=86400,
            failure_ttl=7 * 86400,
            description=f"build ticket {ticket}",
            pipeline=pipe,
        )

    return enqueue

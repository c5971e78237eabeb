"""The RQ side: the build queue and how a build's job is described (JSON serializer, never pickle)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from .config import Settings

RUN_BUILD = "orchestrator.worker.run_build"
JOB_PREFIX = "build-"


def rq_connection(url: str) -> redis.Redis:
    """RQ needs a bytes (non-decoding) client of its own."""
    return redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=10.0)


def build_queue(settings: Settings, connection: redis.Redis | None = None) -> Queue:
    return Queue(
        settings.queue,
        connection=connection or rq_connection(settings.redis_url),
        serializer=JSONSerializer,
        default_timeout=int(settings.build_timeout) + 120,
    )


def enqueuer(queue: Queue, timeout: float) -> Callable[[Any, str], None]:
    """An ``enqueue(pipe, ticket)`` callable for Store.create_build: the job carries only the ticket."""

    def enqueue(pipe: Any, ticket: str) -> None:
        queue.enqueue_call(
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

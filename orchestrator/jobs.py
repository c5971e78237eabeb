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


# RQ writes a queued job with these commands (RQ 2.x/3.x: SADD queues, HSET job, RPUSH queue). The
# webhook intake runs them inside its Lua script, so anything else (e.g. a script) must fail at start.
JOB_COMMANDS = frozenset({"SADD", "HSET", "RPUSH", "LPUSH", "EXPIRE", "PERSIST", "HDEL", "ZADD", "ZREM"})


def job_commands(queue: Queue, timeout: float) -> Callable[[str], list[list[Any]]]:
    """A ``job(ticket)`` callable for Store.intake_build: the Redis commands with which RQ itself
    would enqueue the build's job (same fields, JSON serializer), captured instead of sent.

    The commands are recorded on a pipeline that is never executed, so they can run inside the
    intake's Lua script, only when the build is new (a duplicate no longer leaves a dud job).
    """
    # A private Queue for recording: RQ asks the server version only for LPOS (job positions),
    # which this queue never answers; asking it here would cost a round trip with RQ's own,
    # slow-failing client on the first delivery of every worker.
    recorder = Queue(queue.name, connection=queue.connection, serializer=JSONSerializer,
                     default_timeout=queue._default_timeout)
    recorder.redis_server_version = (7, 0, 0)
    enqueue = enqueuer(recorder, timeout)

    def job(ticket: str) -> list[list[Any]]:
        pipe = queue.connection.pipeline(transaction=False)
        enqueue(pipe, ticket)
        commands = [list(c[0]) for c in pipe.command_stack]
        pipe.reset()
        unknown = {str(c[0]).upper() for c in commands} - JOB_COMMANDS
        if unknown:
            raise RuntimeError(f"RQ enqueues with {sorted(unknown)}, which the webhook intake cannot replay: "
                               "pin rq to a version that writes jobs with plain commands")
        return commands

    job("startup-check")  # the command set is checked once when the app starts
    return job

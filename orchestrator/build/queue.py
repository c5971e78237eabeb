"""The RQ side: the build queue and how a build's job is described (JSON serializer, never pickle)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from enum import Enum
from typing import Any

import redis
from rq import Queue
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat, utcparse

from orchestrator.config import Settings

RUN_BUILD = "orchestrator.build.worker.run_build"
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


def job_commands(queue: Queue, timeout: float) -> JobTemplate:
    """A ``job(ticket)`` callable for Store.intake_build: the Redis commands with which RQ itself
    would enqueue the build's job (same fields, JSON serializer), without running RQ per delivery.

    See JobTemplate: RQ records the commands once at start (on a pipeline that is never executed),
    and each delivery fills in its ticket and time; the result runs inside the intake's Lua script,
    only when the build is new (a duplicate leaves no dud job).
    """
    return JobTemplate(_recorder(queue, timeout))


def _recorder(queue: Queue, timeout: float) -> Callable[[str], list[list[Any]]]:
    """``record(ticket)``: RQ's own enqueue commands for that ticket, captured instead of sent."""
    # A private Queue for recording: RQ asks the server version only for LPOS (job positions),
    # which this queue never answers; asking it here would cost a round trip with RQ's own,
    # slow-failing client on the first delivery of every worker.
    recorder = Queue(
        queue.name,
        connection=queue.connection,
        serializer=JSONSerializer,
        default_timeout=queue._default_timeout,
    )
    recorder.redis_server_version = (7, 0, 0)
    enqueue = enqueuer(recorder, timeout)

    def record(ticket: str) -> list[list[Any]]:
        pipe = queue.connection.pipeline(transaction=False)
        enqueue(pipe, ticket)
        commands = [[a.value if isinstance(a, Enum) else a for a in c[0]] for c in pipe.command_stack]
        pipe.reset()
        unknown = {str(c[0]).upper() for c in commands} - JOB_COMMANDS
        if unknown:
            raise RuntimeError(
                f"RQ enqueues with {sorted(unknown)}, which the webhook intake cannot replay: "
                "pin rq to a version that writes jobs with plain commands"
            )
        return commands

    return record


_PROBES = ("0" * 31 + "a", "0" * 31 + "b")  # two tickets that differ, to tell fixed from variable


class JobTemplate:
    """RQ's enqueue commands for a build job, recorded from RQ once and filled in per ticket.

    Building the job through RQ costs about a tenth of a delivery's CPU (Job object, JSON, zlib,
    two timestamps); the commands differ between tickets only in (a) strings that contain the
    ticket, (b) the zlib-compressed job data, which contains it, and (c) RQ's timestamps. At start,
    RQ records the job for two probe tickets; every argument must be equal in both or explained by
    (a)-(c), and filling in the second probe must reproduce RQ's commands exactly, or the app does
    not start. ``template(ticket)`` then costs a few string replacements and one tiny zlib call.
    """

    def __init__(self, record: Callable[[str], list[list[Any]]]) -> None:
        a, b = (record(p) for p in _PROBES)
        self._commands = a
        # (command, argument, kind, the probe's value; for 'data' decompressed once here)
        self._slots: list[tuple[int, int, str, Any]] = [
            (i, j, kind, zlib.decompress(a[i][j]) if kind == "data" else a[i][j])
            for i, j, kind in _variable_args(a, b)
        ]
        at = "2000-01-01T00:00:00.000000Z"
        expected = [list(c) for c in b]
        for i, j, kind, _ in self._slots:
            if kind == "time":  # RQ takes two timestamps microseconds apart; the template writes one
                expected[i][j] = at
        if self.fill(_PROBES[1], at) != expected:
            raise RuntimeError(
                "the RQ job template does not reproduce RQ's own commands: pin rq to a supported version"
            )

    def __call__(self, ticket: str) -> list[list[Any]]:
        return self.fill(ticket, utcformat(now()))

    def fill(self, ticket: str, at: str) -> list[list[Any]]:
        """The commands for ``ticket``, with RQ's timestamps set to ``at`` (RQ's own format)."""
        commands = [list(c) for c in self._commands]
        probe = _PROBES[0]
        for i, j, kind, original in self._slots:
            if kind == "ticket":
                commands[i][j] = original.replace(probe, ticket)
            elif kind == "data":
                commands[i][j] = zlib.compress(original.replace(probe.encode(), ticket.encode()))
            else:
                commands[i][j] = at
        return commands


def _variable_args(a: list[list[Any]], b: list[list[Any]]) -> list[tuple[int, int, str]]:
    """Where two recordings (probe tickets 0 and 1) differ, and why: 'ticket', 'data' or 'time'."""
    if [len(c) for c in a] != [len(c) for c in b]:
        raise RuntimeError("RQ wrote differently shaped commands for two tickets: cannot template the job")
    slots = []
    for i, (ca, cb) in enumerate(zip(a, b, strict=True)):
        for j, (x, y) in enumerate(zip(ca, cb, strict=True)):
            if isinstance(x, str) and _is_timestamp(x):
                slots.append((i, j, "time"))
            elif x == y:
                continue
            elif isinstance(x, str) and _PROBES[0] in x and x.replace(_PROBES[0], _PROBES[1]) == y:
                slots.append((i, j, "ticket"))
            elif isinstance(x, bytes) and _zlib_with(x, _PROBES[0]) and _zlib_with(y, _PROBES[1]):
                slots.append((i, j, "data"))
            else:
                raise RuntimeError(
                    f"RQ's job command {i} argument {j} varies in a way the intake cannot "
                    f"template ({x!r} vs {y!r}): pin rq to a supported version"
                )
    return slots


def _zlib_with(value: Any, probe: str) -> bool:
    try:
        return isinstance(value, bytes) and probe.encode() in zlib.decompress(value)
    except zlib.error:
        return False


def _is_timestamp(value: str) -> bool:
    try:
        utcparse(value)
    except ValueError:
        return False
    return len(value) == 27 and value.endswith("Z")

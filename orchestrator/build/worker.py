"""The worker process: the RQ job ``run_build(ticket)``, the janitor for lost builds and retention.

RQ runs jobs in this process (SimpleWorker): a build's heartbeat thread then dies with the process,
so a SIGKILL really loses the lease, and the janitor of any surviving worker (or the web process)
marks the build ``error: worker lost`` within seconds of the lease expiring, releases its locks
and removes its containers. RQ's own detection of dead workers takes minutes; we do not wait for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rq.job import Job

from orchestrator import background, defaults
from orchestrator.build import artifacts, retention, schedules
from orchestrator.build.queue import RUN_BUILD, build_queue, rq_connection
from orchestrator.build.runner import docker_factory
from orchestrator.build.runner import run_build as run_one
from orchestrator.config import Settings, load_settings
from orchestrator.errors import InfrastructureError, NotFound
from orchestrator.models import BuildStatus, StepStatus
from orchestrator.notify import commit_status as statuses
from orchestrator.notify import dispatch as notifications
from orchestrator.store import Store

log = logging.getLogger(__name__)
JANITOR_INTERVAL = defaults.JANITOR_INTERVAL
WORKER_LOST = "worker lost"


@dataclass(frozen=True)
class WorkerRuntime:
    """What this worker process's jobs share: settings, the store, one Docker client (made on first use)."""

    settings: Settings
    store: Store
    docker: Callable[[], Any]

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerRuntime:
        store = Store.from_settings(settings, ride_out=True)
        return cls(settings, store, docker_factory(settings))


# RQ calls a job as a plain function by its dotted path, so the process's runtime is the one piece of
# module state: set once by ``configure`` (``work`` does it), read by ``runtime``.
_runtime: list[WorkerRuntime] = []


def configure(settings: Settings) -> WorkerRuntime:
    """Set the runtime this process's jobs use (``work`` does it; tests may too)."""
    _runtime[:] = [WorkerRuntime.from_settings(settings)]
    return _runtime[0]


def runtime() -> WorkerRuntime:
    return _runtime[0] if _runtime else configure(load_settings())


def worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


def run_build(ticket: str) -> str:
    """The RQ job: resolve the ticket to a build and run it. A ticket of a duplicate is dropped."""
    rt = runtime()
    settings, store = rt.settings, rt.store
    build_id = store.resolve_ticket(ticket)
    if build_id is None:
        return "duplicate"
    build = run_one(settings, store, build_id, worker_name=worker_name(), docker=rt.docker)
    try:
        prune_artifacts(settings, store)
    except Exception:  # disk housekeeping never fails a build
        log.exception("pruning artifact directories failed")
    return str(build.status) if build else "not queued"


def prune_artifacts(settings: Settings, store: Store) -> list[int]:
    """Remove the artifact directories of finished builds that are neither among the newest
    ``keep_artifacts`` nor named by a deployment record (current or history); returns their ids."""
    keep = settings.keep_artifacts
    ids = artifacts.build_ids(settings.workspace)
    if len(ids) <= keep:
        return []
    pruned = []
    for build_id in artifacts.prune_candidates(
        ids, keep, {i for d in store.deployment_records() for i in d.build_ids()}
    ):
        with contextlib.suppress(NotFound):  # a build Redis no longer knows: nothing can deploy it
            if not store.get_build(build_id).status.finished:
                continue
        artifacts.prune(
            settings.workspace,
            build_id,
            f"not among the newest {keep} builds (keep_artifacts) and never deployed",
        )
        pruned.append(build_id)
    if pruned:
        log.info("pruned the artifacts of builds %s (keep_artifacts=%s)", pruned, keep)
    return pruned


def janitor_once(
    store: Store, docker: Any = None, now: float | None = None, settings: Settings | None = None
) -> list[int]:
    """Mark every build whose lease expired as error "worker lost"; release its locks; remove its
    containers (if a Docker client is given). Safe to run in many processes: one claim wins."""
    lost: list[int] = []
    for build_id in store.expired_leases(now):
        if not store.claim_expired(build_id, now):
            continue
        try:
            build = store.get_build(build_id)
        except NotFound:
            store.release_build_locks(build_id)
            continue
        finished = time.time()
        steps = build.steps
        for rec in steps:
            if rec.status is StepStatus.RUNNING:
                rec.status, rec.error, rec.finished_at = StepStatus.ERROR, WORKER_LOST, finished
            elif rec.status is StepStatus.PENDING:
                rec.status, rec.error = StepStatus.SKIPPED, f"not run: {WORKER_LOST}"
        error = f"{WORKER_LOST}: its lease expired (worker {build.worker or 'unknown'} stopped renewing it)"
        if not store.set_status_if(
            build_id,
            [BuildStatus.RUNNING, BuildStatus.QUEUED],
            status=str(BuildStatus.ERROR),
            finished_at=finished,
            error=error,
            steps=steps,
        ):
            continue
        lost.append(build_id)
        if settings is not None:  # a canary half-way: traffic back to stable before its lock goes
            _reset_canary(settings, store, build_id)
        released = store.release_build_locks(build_id)
        store.incr_counter("builds", str(BuildStatus.ERROR))
        with contextlib.suppress(Exception):  # its writer died: the cap's marker line, if it dropped lines
            store.close_log(build_id, settings.max_log_bytes if settings else 0)
        with contextlib.suppress(Exception):
            store.append_log(
                build_id,
                [("janitor", "stderr", error + (f"; released locks {released}" if released else ""))],
            )
        if docker is not None:
            from orchestrator.steps.docker import remove_build_containers

            with contextlib.suppress(Exception):
                removed = remove_build_containers(docker, build_id)
                if removed:
                    store.append_log(build_id, [("janitor", "stderr", f"removed containers {removed}")])
        if settings is not None:
            with contextlib.suppress(Exception):
                build.status, build.error = BuildStatus.ERROR, error
                statuses.report(settings, build, "error", WORKER_LOST)
            notifications.notify_finished(settings, store, build)
        log.warning("build %s: %s", build_id, error)
    return lost


def _reset_canary(settings: Settings, store: Store, build_id: int) -> None:
    from orchestrator.deploy.lost import reset_lost

    try:
        done = reset_lost(settings, store, build_id)
    except Exception as exc:  # never keep the janitor from marking the rest
        done = [f"could not return its canary to the stable version: {exc}"]
    if done:
        with contextlib.suppress(Exception):
            store.append_log(
                build_id, [("janitor", "stderr", f"canary returned to stable: {line}") for line in done]
            )


def start_janitor(settings: Settings, store: Store, interval: float = JANITOR_INTERVAL) -> threading.Event:
    """Run janitor_once every ``interval`` seconds in a daemon thread; set the returned event to stop."""
    make_docker = docker_factory(settings)

    def once() -> None:
        try:
            client = make_docker()
        except InfrastructureError:  # no daemon: still mark lost builds, leave their containers
            client = None
        janitor_once(store, client, settings=settings)

    return background.every(interval, once, "janitor")


class RefusedJob(Exception):
    """A job in the build queue that names anything but the build entry point."""


class BuildJob(Job):
    """The only job this worker runs: ``run_build(ticket)``, without callbacks.

    A job in Redis is data that anyone who can write to Redis could have put there, naming any
    importable callable (this process is root with the Docker socket). RQ loads jobs as this class
    (``job_class``): the function is checked by name before anything is imported, and callbacks,
    which builds never set, are never looked up. The job fails with the reason; nothing runs.
    """

    def perform(self) -> Any:
        name = (self.func_name or "")[:200]
        if name != RUN_BUILD:
            log.error("refused job %s: it names %r, not %s", self.id, name, RUN_BUILD)
            raise RefusedJob(f"refused: this worker runs only {RUN_BUILD}, not {name!r}")
        return super().perform()

    @property
    def success_callback(self) -> Any:
        return None

    @property
    def failure_callback(self) -> Any:
        return None

    @property
    def stopped_callback(self) -> Any:
        return None


def work(settings: Settings, burst: bool = False) -> bool:
    """Start an RQ worker on ``settings.queue`` (JSON serializer) with the janitor beside it."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    store = configure(settings).store
    connection = rq_connection(settings, ride_out=True)
    queue = build_queue(settings, connection)
    stop = start_janitor(settings, store)
    stop_notify = notifications.start(settings, store)
    stop_schedules = schedules.start(settings, store, queue, owner=worker_name())
    stop_retention = retention.start(settings, store)
    try:
        with contextlib.suppress(Exception):
            janitor_once(store, None, settings=settings)
        worker = SimpleWorker(
            [queue], connection=connection, serializer=JSONSerializer, name=worker_name(), job_class=BuildJob
        )
        return bool(worker.work(burst=burst, logging_level="INFO", with_scheduler=False))
    finally:
        stop.set()
        stop_notify.set()
        stop_schedules.set()
        stop_retention.set()

"""Cancel and re-run: the helpers the API and the CLI call (no Flask; any process with a Runtime).

Cancel of a queued build removes its job from the queue and marks it cancelled at once; cancel of a
running build sets the store's cancel flag, which the build's heartbeat sees within 0.5 s and turns
into a kill of the current container or process group.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Protocol

from rq import Queue

from orchestrator.build.queue import JOB_PREFIX, enqueuer
from orchestrator.config import Settings
from orchestrator.errors import Conflict, NotFound
from orchestrator.models import Build, BuildStatus, Trigger
from orchestrator.notify import commit_status as statuses
from orchestrator.store import Store


class HasQueue(Protocol):
    store: Store
    queue: Queue


class HasRuntime(HasQueue, Protocol):
    settings: Settings


def _remove_job(store: Store, queue: Queue, build_id: int) -> bool:
    """Remove the queued RQ job whose ticket resolves to ``build_id`` (the worker would drop it anyway)."""
    for job_id in queue.get_job_ids():
        if not job_id.startswith(JOB_PREFIX):
            continue
        if store.resolve_ticket(job_id[len(JOB_PREFIX) :]) == build_id:
            queue.remove(job_id)
            with contextlib.suppress(Exception):
                job = queue.fetch_job(job_id)
                if job is not None:
                    job.cancel()
            return True
    return False


def cancel_build(rt: HasQueue, build_id: int, by: str = "") -> Build:
    """Cancel a queued or running build; Conflict if it already finished, NotFound if unknown."""
    store, queue = rt.store, rt.queue
    build = store.get_build(build_id)
    who = f" by {by}" if by else ""
    if build.status is BuildStatus.QUEUED:
        if store.set_status_if(
            build_id,
            [BuildStatus.QUEUED],
            status=str(BuildStatus.CANCELLED),
            finished_at=time.time(),
            error=f"cancelled{who} before it started",
        ):
            _remove_job(store, queue, build_id)
            store.incr_counter("builds", str(BuildStatus.CANCELLED))
            cancelled = store.get_build(build_id)
            with contextlib.suppress(Exception):
                settings = getattr(rt, "settings", None)
                if settings is not None:
                    statuses.report(settings, cancelled, "error", "cancelled")
            return cancelled
        build = store.get_build(build_id)  # it started meanwhile
    if build.status is BuildStatus.RUNNING:
        store.request_cancel(build_id)
        return build
    raise Conflict(f"build {build_id} already finished ({build.status}); nothing to cancel", build=build_id)


def rerun_build(rt: HasRuntime, build_id: int, by: str = "") -> Build:
    """A new build of the same commit (new number, ``rerun_of`` = original); its pipeline is read at
    that commit again. Promote/rollback builds are re-run with the pipeline they carried."""
    original = rt.store.get_build(build_id)
    repo = rt.settings.repo(original.repo)
    if repo is None:
        raise NotFound(f"repository {original.repo} is not configured on this server", repo=original.repo)
    if not original.status.finished:
        raise Conflict(f"build {build_id} is still {original.status}; cancel it or wait", build=build_id)
    deploy_like = original.trigger in ("promote", "rollback")
    trigger = Trigger(
        repo=original.repo,
        sha=original.sha,
        ref=original.ref,
        branch=original.branch,
        kind=original.trigger if deploy_like else "rerun",
        author=original.author,
        message=original.message,
        url=original.url,
    )
    extra: dict[str, Any] = {}
    if deploy_like:
        extra = {
            "pipeline_yaml": original.pipeline_yaml,
            "image": original.image,
            "digest": original.digest,
            "deploys": original.deploys,
        }
    build, _ = rt.store.create_build(
        trigger,
        pipeline=repo.pipeline,
        triggered_by=f"rerun of #{original.number}" + (f" by {by}" if by else ""),
        enqueue=enqueuer(rt.queue, rt.settings.build_timeout),
        rerun_of=original.id,
        dedup=False,
        extra=extra or None,
    )
    return build

"""Deployments: who may deploy to an environment now, in what order, and what a rollback goes back to.

- One deploy per (repository, environment) at a time: the store lock ``deploy:{repo}:{env}``, owned
  by the build id, with a lease that a background thread renews. A worker that dies stops renewing,
  so its lock expires after ``LOCK_TTL`` seconds (and the janitor releases it sooner).
- Build order: a build older (lower number) than the one deployed is *superseded*, not deployed;
  an explicit rollback is the exception.
- Promote and rollback are new builds (trigger "promote"/"rollback") that run one deploy step with
  the image of an earlier build, created here (see schema.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator import defaults
from orchestrator.errors import Cancelled, Conflict, DeployError, NotFound
from orchestrator.models import Build, BuildStatus, Deployment, Trigger

if TYPE_CHECKING:
    from orchestrator import Runtime
    from orchestrator.store import Store

LOCK_TTL = defaults.LOCK_TTL
LOCK_POLL = defaults.LOCK_POLL
KEEP_DEPLOYMENTS = 3  # images of the newest deployments are never pruned from a host


def lock_name(repo: str, env: str) -> str:
    return f"deploy:{repo}:{env}"


class EnvironmentLock:
    """The per-environment deploy lock with a renewed lease. ``lost`` is set if a renewal fails."""

    def __init__(self, store: Store, repo: str, env: str, build_id: int, ttl: float = LOCK_TTL) -> None:
        self.store = store
        self.name = lock_name(repo, env)
        self.owner = str(build_id)
        self.build_id = build_id
        self.ttl = ttl
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(
        self, deadline: float, cancel: Any = None, on_wait: Callable[[str | None], None] | None = None
    ) -> None:
        """Wait for the lock until ``deadline`` (monotonic); DeployError on timeout, Cancelled on cancel."""
        told = False
        while not self.store.acquire_lock(self.name, self.owner, self.ttl, build_id=self.build_id):
            holder = self.store.lock_owner(self.name)
            if holder == self.owner:  # ours already (a retried step of the same build)
                break
            if not told and on_wait is not None:
                on_wait(holder)
                told = True
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled while waiting for the deploy lock")
            if time.monotonic() >= deadline:
                raise DeployError(
                    f"the environment is locked by build id {holder} (lock {self.name}); it is released when "
                    f"that deploy ends, or expires {self.ttl:g}s after its worker stops",
                    lock=self.name,
                )
            time.sleep(LOCK_POLL)
        self._thread = threading.Thread(target=self._renew, name=f"lock-{self.name}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                ok = self.store.renew_lock(self.name, self.owner, self.ttl)
            except Exception:
                ok = False
            if not ok:
                self.lost.set()
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        with contextlib.suppress(Exception):  # if Redis is away, the lease expires on its own
            self.store.release_lock(self.name, self.owner, self.build_id)


def source_number(build: Build) -> int:
    """The number of the build whose image this build deploys (itself, or promote/rollback's source)."""
    return int(build.deploys.get("source_number") or build.number)


def source_id(build: Build) -> int:
    return int(build.deploys.get("source_build") or build.id)


def superseded_by(current: Deployment | None, number: int, action: str) -> Deployment | None:
    """The deployment that makes deploying build ``number`` pointless, if any (rollbacks never are)."""
    if action == "rollback" or current is None:
        return None
    return current if current.build_number > number else None


def rollback_target(
    history: Sequence[Deployment], current: Deployment | None, to_build: int | None = None
) -> Deployment | None:
    """The deployment a rollback goes back to: the newest one older than the current deployment
    (or the newest of build id ``to_build``). History is newest first. A mixed fleet (a rollout that
    stopped between batches) goes back to the build the whole environment ran: the record's own."""
    if to_build is not None:
        return next((d for d in history if d.build_id == to_build), None)
    if current is None:
        return None
    if current.mixed:
        return next((d for d in history if d.build_id == current.build_id), None)
    return next((d for d in history if d.build_number < current.build_number), None)


def after_batch(
    current: Deployment | None, new: Deployment, switched: Mapping[str, str]
) -> tuple[Deployment, bool]:
    """The record once the hosts ``switched`` (so far, in this rollout: host → its new container)
    serve ``new`` (the record of the whole deployment: every host of the environment), and whether
    it is complete.

    Until every host switched, the record is ``mixed``: each host's ``runs`` entry says what it runs
    (new, or what it ran before; a host with nothing recorded is left out), and the top-level fields
    keep naming the environment's build from before (the new one if nothing was deployed yet).
    """
    fresh = {h: new.run() | {"container": c} for h, c in switched.items()}
    if all(h in switched for h in new.hosts):
        return dataclasses.replace(new, runs={h: fresh[h] for h in new.hosts}, mixed=False), True
    prior = current.host_runs() if current is not None else {}
    runs = {h: fresh.get(h) or prior[h] for h in new.hosts if h in fresh or h in prior}
    builds = {int(r["build_id"]) for r in runs.values()}
    base = current if current is not None else new
    mixed = len(builds) > 1 or len(runs) < len(new.hosts)
    return dataclasses.replace(base, hosts=list(new.hosts), runs=runs, mixed=mixed), False


def images_to_keep(history: Sequence[Deployment], new_image: str, keep: int = KEEP_DEPLOYMENTS) -> set[str]:
    """Images that must stay on the hosts: the new one, the rollback target and the recent ones."""
    kept = {new_image}
    for d in history:
        if len(kept) > keep:
            break
        kept.add(d.image)
    return kept


def images_to_prune(history: Sequence[Deployment], new_image: str, keep: int = KEEP_DEPLOYMENTS) -> list[str]:
    """Images of older deployments that may be removed from the hosts (never one in ``images_to_keep``)."""
    kept = images_to_keep(history, new_image, keep)
    return list(dict.fromkeys(d.image for d in history if d.image not in kept))


# -- promote and rollback requests (new builds) -------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    build: Build
    image: str
    digest: str


def _environments_of(build: Build) -> list[str]:
    from orchestrator.pipeline import load_pipeline

    if not build.pipeline_yaml:
        return []
    return list(load_pipeline(build.pipeline_yaml, "pipeline.yaml (as built)").environments)


def _create(
    rt: Runtime, src: _Source, env: str, kind: str, user: str, message: str, source: Deployment | None = None
) -> Build:
    from orchestrator.build.queue import enqueuer

    repo = rt.settings.repo(src.build.repo)
    if repo is None:
        raise NotFound(f"repository {src.build.repo} is not configured on this server", repo=src.build.repo)
    if env not in _environments_of(src.build):
        raise NotFound(
            f"build #{src.build.number} has no environment '{env}' in its pipeline.yaml", environment=env
        )
    trigger = Trigger(
        repo=src.build.repo,
        sha=src.build.sha,
        ref=src.build.ref,
        branch=src.build.branch,
        kind=kind,
        author=user,
        message=message,
        url=src.build.url,
    )
    deploys = {
        "environment": env,
        "source_build": src.build.id,
        "source_number": source.build_number if source else src.build.number,
    }
    build, _ = rt.store.create_build(
        trigger,
        pipeline=repo.pipeline,
        triggered_by=f"{kind} by {user}" if user else kind,
        enqueue=enqueuer(rt.queue, rt.settings.build_timeout),
        dedup=False,
        extra={
            "pipeline_yaml": src.build.pipeline_yaml,
            "image": src.image,
            "digest": src.digest,
            "deploys": deploys,
        },
    )
    return build


def request_promote(rt: Runtime, build_id: int, env: str, user: str) -> Build:
    """Queue a build that deploys build ``build_id``'s image to ``env`` (trigger "promote")."""
    src = rt.store.get_build(build_id)
    if src.trigger in ("promote", "rollback"):
        src = rt.store.get_build(source_id(src))
    if src.status is not BuildStatus.SUCCESS or not src.image:
        raise Conflict(
            f"build #{src.number} cannot be promoted: it is {src.status}"
            + ("" if src.image else " and pushed no image")
            + "; promote a successful build",
            build=src.id,
        )
    return _create(
        rt, _Source(src, src.image, src.digest), env, "promote", user, f"promote #{src.number} to {env}"
    )


def request_rollback(rt: Runtime, repo: str, env: str, user: str, to_build: int | None = None) -> Build:
    """Queue a build that puts the previous deployment of ``repo`` in ``env`` back (trigger "rollback")."""
    current = rt.store.get_deployment(repo, env)
    if current is None:
        raise NotFound(
            f"nothing is deployed to {env} for {repo}: there is nothing to roll back",
            repo=repo,
            environment=env,
        )
    history = rt.store.deployment_history(repo, env, limit=100)
    target = rollback_target(history, current, to_build)
    if target is None:
        what = (
            f"build id {to_build}" if to_build is not None else f"a build older than #{current.build_number}"
        )
        raise Conflict(
            f"cannot roll back {repo} in {env}: no earlier deployment of {what} is recorded",
            repo=repo,
            environment=env,
        )
    src = rt.store.get_build(target.build_id)
    # The target's image as it was deployed (a digest ref when one was known), so it is exact.
    return _create(
        rt,
        _Source(src, target.image, ""),
        env,
        "rollback",
        user,
        f"roll back {env} from #{current.build_number} to #{target.build_number}",
        source=target,
    )

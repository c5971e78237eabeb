"""Scheduled builds: ``schedules:`` in the server configuration, run by a thread in every worker.

Each tick computes, per schedule, the latest cron slot at or before now (UTC) and claims it in
Redis (store.schedules: one Lua call with a SET NX lock per slot), so with several workers a slot
fires once. A claimed slot becomes a build of the head of the schedule's branch, created as a
manual build is (Store.create_build + the RQ job in one transaction) with trigger ``schedule``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from croniter import croniter
from rq import Queue

from orchestrator import background
from orchestrator.build.queue import enqueuer
from orchestrator.config import RepoConfig, Schedule, Settings
from orchestrator.errors import OrchestratorError
from orchestrator.models import Build, Trigger
from orchestrator.store import Store

log = logging.getLogger(__name__)
POLL = 5.0  # seconds between ticks; slots are minutes apart


def latest_slot(cron: str, now: float) -> int:
    """The latest time (Unix seconds, UTC) at or before ``now`` that ``cron`` names."""
    after = datetime.fromtimestamp(math.floor(now) + 1, tz=UTC)  # get_prev is strict: include now itself
    return int(croniter(cron, after).get_prev(datetime).timestamp())


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


class Scheduler:
    """Fires due schedules (``tick``); ``clock`` and ``resolve`` are injectable for tests."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: Queue,
        *,
        owner: str = "",
        clock: Callable[[], float] = time.time,
        resolve: Callable[[RepoConfig, str], str] | None = None,
    ) -> None:
        from orchestrator.actions import resolve_branch

        self.settings = settings
        self.store = store
        self.queue = queue
        self.owner = owner or f"scheduler-{id(self)}"
        self.clock = clock
        self.resolve = resolve or resolve_branch

    def tick(self, now: float | None = None) -> list[Build]:
        """Claim and fire every schedule whose latest slot has not fired yet; returns the builds."""
        now = self.clock() if now is None else now
        built = []
        for name, sched in sorted(self.settings.schedules.items()):
            slot = latest_slot(sched.cron, now)
            if self.store.schedules.claim_slot(name, slot, self.owner) != "claimed":
                continue
            build = self.fire(name, sched, slot)
            if build is not None:
                built.append(build)
        return built

    def fire(self, name: str, sched: Schedule, slot: int) -> Build | None:
        """Build the head of the schedule's branch for ``slot``; an error is logged and recorded."""
        from orchestrator.actions import normalize_ref

        try:
            repo = self.settings.repo(sched.repo)
            if repo is None:
                raise OrchestratorError(f"repository {sched.repo} is not in the server configuration")
            full_ref, branch = normalize_ref(sched.branch)
            sha = self.resolve(repo, full_ref)
            trigger = Trigger(
                repo=repo.full_name,
                sha=sha,
                ref=full_ref,
                branch=branch,
                kind="schedule",
                message=f"scheduled build of {branch} ({name}: {sched.cron})",
            )
            build, _ = self.store.create_build(
                trigger,
                pipeline=repo.pipeline,
                triggered_by=f"schedule {name} at {iso(slot)}",
                enqueue=enqueuer(self.queue, self.settings.build_timeout),
                dedup=False,  # retraining on an unchanged commit is the point of a schedule
            )
        except OrchestratorError as exc:
            log.warning("schedule %s: slot %s not built: %s", name, iso(slot), exc)
            self.store.schedules.record(name, error=f"slot {iso(slot)}: {exc}")
            return None
        log.info("schedule %s: slot %s → build %s (#%s)", name, iso(slot), build.id, build.number)
        self.store.schedules.record(name, build_id=build.id)
        return build


def start(
    settings: Settings, store: Store, queue: Queue, owner: str = "", interval: float = POLL
) -> threading.Event:
    """Run the scheduler in a daemon thread (when schedules are configured); set the event to stop."""
    stop = threading.Event()
    if not settings.schedules:
        return stop
    scheduler = Scheduler(settings, store, queue, owner=owner)
    return background.every(interval, scheduler.tick, "schedules")

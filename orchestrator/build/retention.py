"""Retention: which finished builds and logs go, and the worker's background pass that prunes them.

Rules (settings; 0 turns one off), applied per repository:
- ``retention_builds``: a repository's newest N builds stay (counting every build, kept or not);
  older finished ones go.
- ``retention_days``: a finished build that finished more than N days ago goes.
- ``log_retention_days``: the log of a build that stays goes N days after it finished.
Never pruned: a build that is not finished, or that any deployment record (an environment's current
one or its history, which rollback and promote deploy from) names — nor its log. The store re-checks
both atomically when it prunes (``Store.prune_builds``), so a deploy racing the pass is safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator import background, defaults
from orchestrator.config import Settings
from orchestrator.models import BuildStatus
from orchestrator.store import Store
from orchestrator.store.retention import BuildMeta

log = logging.getLogger(__name__)
RETENTION_INTERVAL = defaults.RETENTION_INTERVAL
DAY = 86400.0


@dataclass(frozen=True)
class Rules:
    days: float = 0.0
    builds: int = 0
    log_days: float = 0.0

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        return cls(settings.retention_days, settings.retention_builds, settings.log_retention_days)


@dataclass
class Plan:
    """(build id, reason) pairs: builds to prune whole, and builds whose log alone goes."""

    builds: list[tuple[int, str]] = field(default_factory=list)
    logs: list[tuple[int, str]] = field(default_factory=list)


def _finished(m: BuildMeta) -> bool:
    try:
        return BuildStatus(m.status).finished
    except ValueError:  # a status this version does not know: keep the build
        return False


def build_reason(m: BuildMeta, rank: int, rules: Rules, now: float) -> str | None:
    """Why build ``m`` (the ``rank``-th newest of its repository, from 0) goes, or None."""
    if rules.builds and rank >= rules.builds:
        return f"not among the newest {rules.builds} builds of {m.repo} (retention_builds)"
    if rules.days and m.finished_at is not None and now - m.finished_at > rules.days * DAY:
        return f"finished more than {rules.days:g} days ago (retention_days)"
    return None


def plan(builds: Iterable[BuildMeta], protected: set[int], rules: Rules, now: float) -> Plan:
    """What the rules prune of ``builds`` (any order), never an unfinished or ``protected`` one."""
    out = Plan()
    per_repo: dict[str, list[BuildMeta]] = defaultdict(list)
    for m in builds:
        per_repo[m.repo].append(m)
    for metas in per_repo.values():
        for rank, m in enumerate(sorted(metas, key=lambda b: b.id, reverse=True)):
            if not _finished(m) or m.id in protected:
                continue
            reason = build_reason(m, rank, rules, now)
            if reason is not None:
                out.builds.append((m.id, reason))
            elif (
                rules.log_days
                and not m.log_pruned
                and m.finished_at is not None
                and now - m.finished_at > rules.log_days * DAY
            ):
                out.logs.append(
                    (m.id, f"finished more than {rules.log_days:g} days ago (log_retention_days)")
                )
    out.builds.sort()
    out.logs.sort()
    return out


def prune_once(settings: Settings, store: Store, now: float | None = None) -> Plan:
    """One pass: plan from the store's builds and deployment records, then prune. Returns what was
    pruned (the store skips a build that was deployed or re-run meanwhile)."""
    rules = Rules.of(settings)
    if not (rules.days or rules.builds or rules.log_days):
        return Plan()
    now = time.time() if now is None else now
    protected = {d.build_id for d in store.deployment_records()}
    todo = plan(store.build_meta(), protected, rules, now)
    done = Plan()
    if todo.builds:
        gone = set(store.prune_builds(todo.builds, now))
        done.builds = [item for item in todo.builds if item[0] in gone]
    if todo.logs:
        store.prune_logs(todo.logs)
        done.logs = todo.logs
    if done.builds or done.logs:
        log.info("retention pruned %d builds and %d logs", len(done.builds), len(done.logs))
    return done


def start(settings: Settings, store: Store, interval: float = RETENTION_INTERVAL) -> threading.Event:
    """Prune every ``interval`` seconds in a daemon thread (every worker; the store's scripts make
    concurrent passes safe); set the returned event to stop."""
    return background.every(interval, lambda: prune_once(settings, store), "retention")

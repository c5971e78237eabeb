"""Retention in the store: what the pruner needs to plan (every build's repo, status and age), and
the two atomic scripts that carry the plan out (``prune_builds``, ``prune_logs``); tombstones say
why a build went. The rules themselves are in ``orchestrator.build.retention``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator import defaults
from orchestrator.models import BuildStatus
from orchestrator.store.clients import StoreBase
from orchestrator.store.scripts import lua

FINAL = json.dumps(sorted(str(s) for s in BuildStatus if s.finished))
PRUNED_TOMBSTONE_TTL = defaults.PRUNED_TOMBSTONE_TTL
CHUNK = 200  # builds per script call: each call is short, so intake is never held up for long


@dataclass(frozen=True)
class BuildMeta:
    """What retention decides on: one build's repository, status, age and whether its log is there."""

    id: int
    repo: str
    status: str
    finished_at: float | None
    log_pruned: bool


@dataclass(frozen=True)
class Tombstone:
    """A pruned build: what it was and the retention rule that removed it."""

    id: int
    repo: str
    number: int
    status: str
    reason: str
    pruned_at: float


class Retention(StoreBase):
    def build_meta(self) -> list[BuildMeta]:
        """Every indexed build's retention facts, oldest first (pipelined, 500 a round trip)."""
        with self.available():
            ids = [int(i) for i in self.r.zrange(self.k.builds(), 0, -1)]
            out: list[BuildMeta] = []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                pipe = self.r.pipeline(transaction=False)
                for i in chunk:
                    pipe.hmget(self.k.build(i), "repo", "status", "finished_at", "log_pruned")
                for i, (repo, status, finished, log_pruned) in zip(chunk, pipe.execute(), strict=True):
                    if status is not None:
                        out.append(
                            BuildMeta(
                                i, repo or "", status, float(finished) if finished else None, bool(log_pruned)
                            )
                        )
        return out

    def prune_builds(self, items: list[tuple[int, str]], now: float) -> list[int]:
        """Remove builds (id, reason) with their log, locks, cancel flag, notifications, index entry
        and dedup key, leaving a tombstone; one that is unfinished or deployed meanwhile is kept.
        Returns the ids removed."""
        pruned: list[int] = []
        for start in range(0, len(items), CHUNK):
            pruned += self._prune_chunk(items[start : start + CHUNK], now)
        return pruned

    def _prune_chunk(self, items: list[tuple[int, str]], now: float) -> list[int]:
        while True:
            envs = self._environment_members()
            env_keys = [
                k
                for repo, env in envs
                for k in (self.k.deployment(repo, env), self.k.deployment_history(repo, env))
            ]
            keys = [self.k.builds(), self.k.environments(), self.k.notifications_due(), *env_keys]
            args: list[Any] = [len(env_keys), len(envs), PRUNED_TOMBSTONE_TTL, now, FINAL]
            for build_id, reason in items:
                keys += [
                    self.k.build(build_id),
                    self.k.build_log(build_id),
                    self.k.build_locks(build_id),
                    self.k.cancel(build_id),
                    self.k.notifications(build_id),
                    self.k.build_log_cap(build_id),
                    self.k.build_pruned(build_id),
                ]
                args += [build_id, reason]
            with self.available():
                got = self.r.eval(lua("prune_builds"), len(keys), *keys, *args)
            if got != [-1]:  # -1: an environment appeared since we listed them; list again
                return [int(i) for i in got]

    def _environment_members(self) -> list[tuple[str, str]]:
        with self.available():
            members = self.r.smembers(self.k.environments())
        return [(str(a), str(b)) for a, b in (json.loads(m) for m in members)]

    def prune_logs(self, items: list[tuple[int, str]]) -> int:
        """Remove the logs of finished builds (id, reason) that stay; the build records the reason."""
        n = 0
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            keys = [k for build_id, _ in chunk for k in (self.k.build(build_id), self.k.build_log(build_id))]
            with self.available():
                n += int(self.r.eval(lua("prune_logs"), len(keys), *keys, FINAL, *(r for _, r in chunk)))
        return n

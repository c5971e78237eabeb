"""Deployment records: what runs in each (repository, environment) now, and its history."""

from __future__ import annotations

import json

from orchestrator.models import Deployment
from orchestrator.store.clients import StoreBase

HISTORY = 100  # records kept per environment (rollback and promote deploy from them)


class Deployments(StoreBase):
    def get_deployment(self, repo: str, env: str) -> Deployment | None:
        with self.available():
            raw = self.r.get(self.k.deployment(repo, env))
        return Deployment(**json.loads(raw)) if raw else None

    def set_deployment(self, dep: Deployment, complete: bool = True) -> None:
        """Record what runs in the environment now; a ``complete`` deployment (every host runs its
        build) also enters the history that rollback and promote deploy from."""
        raw = json.dumps(dep.to_dict())
        history = self.k.deployment_history(dep.repo, dep.environment)
        with self.available():
            pipe = self.r.pipeline(transaction=True)
            pipe.set(self.k.deployment(dep.repo, dep.environment), raw)
            if complete:
                pipe.lpush(history, raw)
                pipe.ltrim(history, 0, HISTORY - 1)
            pipe.sadd(self.k.environments(), json.dumps([dep.repo, dep.environment]))
            pipe.execute()

    def deployment_history(self, repo: str, env: str, limit: int = 20) -> list[Deployment]:
        with self.available():
            raws = self.r.lrange(self.k.deployment_history(repo, env), 0, limit - 1)
        return [Deployment(**json.loads(r)) for r in raws]

    def deployment_records(self) -> list[Deployment]:
        """Every deployment record of every environment: the current one and its history (which
        rollback and promote deploy from)."""
        envs = self.environments()
        with self.available():
            pipe = self.r.pipeline(transaction=False)
            for repo, env in envs:
                pipe.get(self.k.deployment(repo, env))
                pipe.lrange(self.k.deployment_history(repo, env), 0, -1)
            replies = pipe.execute()
        raws = [r for reply in replies for r in (reply if isinstance(reply, list) else [reply]) if r]
        return [Deployment(**json.loads(r)) for r in raws]

    def environments(self) -> list[tuple[str, str]]:
        with self.available():
            members = self.r.smembers(self.k.environments())
        return sorted((str(a), str(b)) for a, b in (json.loads(m) for m in members))

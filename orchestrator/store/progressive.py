"""A progressive deploy's state in Redis: manual commands (pause, resume, abort, promote) for a
running canary, the marker of a canary in progress (what the janitor resets if its worker is lost),
the latest interval's numbers per environment (for /metrics), and restoring a deployment record."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.models import Deployment
from orchestrator.store.clients import StoreBase

COMMANDS = ("pause", "resume", "abort", "promote")
CONTROL_TTL = 86400


def _field(repo: str, env: str) -> str:
    return json.dumps([repo, env])


class Progressive(StoreBase):
    def push_deploy_command(self, build_id: int, command: str, by: str = "") -> None:
        if command not in COMMANDS:
            raise ValueError(f"unknown deploy command {command!r}: one of {', '.join(COMMANDS)}")
        key = self.k.deploy_control(build_id)
        with self.available():
            pipe = self.r.pipeline(transaction=True)
            pipe.rpush(key, json.dumps({"command": command, "by": by}))
            pipe.expire(key, CONTROL_TTL)
            pipe.execute()

    def pop_deploy_command(self, build_id: int) -> tuple[str, str] | None:
        """The oldest command not yet read: (command, who sent it)."""
        with self.available():
            raw = self.r.lpop(self.k.deploy_control(build_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return str(data["command"]), str(data.get("by") or "")

    def set_rollout_marker(self, repo: str, env: str, marker: dict[str, Any]) -> None:
        with self.available():
            self.r.hset(self.k.rollouts(), _field(repo, env), json.dumps(marker))

    def clear_rollout_marker(self, repo: str, env: str) -> None:
        with self.available():
            self.r.hdel(self.k.rollouts(), _field(repo, env))

    def rollout_markers(self) -> list[dict[str, Any]]:
        """Every progressive deploy in progress: {repo, environment, build_id, edge, hosts, ...}."""
        with self.available():
            raw = self.r.hgetall(self.k.rollouts())
        return [json.loads(v) for v in raw.values()]

    def set_analysis(self, repo: str, env: str, row: dict[str, Any]) -> None:
        """The latest interval of ``repo``/``env`` (stable vs candidate numbers), for /metrics."""
        with self.available():
            self.r.hset(self.k.analysis(), _field(repo, env), json.dumps(row))

    def analyses(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self.available():
            raw = self.r.hgetall(self.k.analysis())
        out = {}
        for k, v in raw.items():
            repo, env = json.loads(k)
            out[(str(repo), str(env))] = json.loads(v)
        return out

    def restore_deployment(self, previous: Deployment | None, replaced: Deployment) -> None:
        """Undo ``set_deployment(replaced)`` after a rollback during a watch: ``previous`` is current
        again and ``replaced`` leaves the history (rollback must not step back onto it)."""
        history = self.k.deployment_history(replaced.repo, replaced.environment)
        with self.available():
            pipe = self.r.pipeline(transaction=True)
            if previous is None:
                pipe.delete(self.k.deployment(replaced.repo, replaced.environment))
            else:
                pipe.set(
                    self.k.deployment(replaced.repo, replaced.environment), json.dumps(previous.to_dict())
                )
            pipe.lrem(history, 1, json.dumps(replaced.to_dict()))
            pipe.execute()

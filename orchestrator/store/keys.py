"""Every Redis key name: the only place that builds a key string (everything under ``prefix``)."""

from __future__ import annotations


class Keys:
    """One method per kind of key. The full list, with what each holds, is in docs/architecture.md."""

    def __init__(self, prefix: str = "mlship") -> None:
        self.p = prefix + ":"

    def build_seq(self) -> str:
        return self.p + "seq:build"

    def repo_seq(self, repo: str) -> str:
        return self.p + f"seq:repo:{repo}"

    def build_prefix(self) -> str:
        return self.p + "build:"

    def build(self, build_id: int) -> str:
        return self.p + f"build:{build_id}"

    def build_log(self, build_id: int) -> str:
        return self.p + f"build:{build_id}:log"

    def build_log_cap(self, build_id: int) -> str:
        """Hash of a build's log size and what its cap dropped (bytes, dropped_lines/_bytes, marker)."""
        return self.p + f"build:{build_id}:logcap"

    def build_pruned(self, build_id: int) -> str:
        """Tombstone of a build pruned by retention: why and when (JSON), kept ``PRUNED_TOMBSTONE_TTL``."""
        return self.p + f"build:{build_id}:pruned"

    def build_locks(self, build_id: int) -> str:
        return self.p + f"build:{build_id}:locks"

    def builds(self) -> str:
        return self.p + "builds"

    def ticket(self, ticket: str) -> str:
        return self.p + f"ticket:{ticket}"

    def dedup(self, repo: str, sha: str, pipeline: str, branch: str) -> str:
        return self.p + f"dedup:{repo}:{sha}:{pipeline}:{branch}"

    def delivery(self, delivery_id: str) -> str:
        return self.p + f"delivery:{delivery_id}"

    def deliveries(self) -> str:
        return self.p + "deliveries"

    def rejected_sample(self) -> str:
        return self.p + "deliveries:rejected"

    def running(self) -> str:
        return self.p + "running"

    def lease(self, build_id: int) -> str:
        """The token of the runner holding a running build's lease (the fence: see leases.py)."""
        return self.p + f"lease:{build_id}"

    def cancel(self, build_id: int) -> str:
        return self.p + f"cancel:{build_id}"

    def deploy_control(self, build_id: int) -> str:
        """List of manual commands (pause, resume, abort, promote) for a build's progressive deploy."""
        return self.p + f"deploy-control:{build_id}"

    def rollouts(self) -> str:
        """Hash of progressive deploys in progress, field ``["repo", "env"]``: what the janitor resets."""
        return self.p + "rollouts"

    def analysis(self) -> str:
        """Hash of the latest analysis interval per environment, field ``["repo", "env"]`` (/metrics)."""
        return self.p + "analysis"

    def lock(self, name: str) -> str:
        return self.p + f"lock:{name}"

    def deployment(self, repo: str, env: str) -> str:
        return self.p + f"env:{repo}:{env}"

    def deployment_history(self, repo: str, env: str) -> str:
        return self.p + f"env:{repo}:{env}:history"

    def environments(self) -> str:
        return self.p + "environments"

    def counter(self, metric: str) -> str:
        return self.p + f"counter:{metric}"

    def notifications(self, build_id: int) -> str:
        """Hash of a build's notification records, field ``{event key}/{target}``."""
        return self.p + f"notify:{build_id}"

    def notifications_due(self) -> str:
        """The outbox: a sorted set of due notification records (score: next attempt time)."""
        return self.p + "notify:due"

    def schedule(self, name: str) -> str:
        return self.p + f"schedule:{name}"

    def schedule_slot(self, name: str, slot: int) -> str:
        """The lock that lets one worker fire a schedule's slot (SET NX with a TTL)."""
        return self.p + f"schedule:{name}:slot:{slot}"

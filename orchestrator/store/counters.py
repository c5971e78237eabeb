"""Counters for /metrics, shared by every process: one Redis hash per metric, label → count."""

from __future__ import annotations

from orchestrator.store.clients import StoreBase


class Counters(StoreBase):
    def incr_counter(self, metric: str, label: str, amount: int = 1) -> None:
        with self.available():
            self.r.hincrby(self.k.counter(metric), label, amount)

    def counters(self, metric: str) -> dict[str, int]:
        with self.available():
            return {k: int(v) for k, v in self.r.hgetall(self.k.counter(metric)).items()}

    def incr_counters(self, amounts: dict[str, dict[str, int]]) -> None:
        """Several counter increments ({metric: {label: amount}}) in one round trip (request metrics)."""
        with self.available():
            pipe = self.r.pipeline(transaction=False)
            for metric, labels in amounts.items():
                for label, amount in labels.items():
                    pipe.hincrby(self.k.counter(metric), label, amount)
            pipe.execute()

"""All state in Redis, behind one facade: ``Store``.

One module per concern, each a part of ``Store``: ``keys`` (every key name; nothing else builds one),
``clients`` (the Redis clients and the failure rule), ``builds`` (created atomically with their RQ
job), ``deliveries`` (webhook delivery records, the rejected sample), ``logs`` (build log streams),
``leases`` (running-build leases, cancel requests, locks), ``deployments`` (deployment records),
``progressive`` (canary commands, markers, analysis numbers), ``counters`` (for /metrics),
``retention`` (pruning old builds and logs). Lua scripts are ``lua/*.lua``, loaded by name (``scripts.lua``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.store.builds import TICKET_TTL, Builds
from orchestrator.store.clients import READ_TIMEOUT, WRITE_TIMEOUT, client, redis_for
from orchestrator.store.counters import Counters
from orchestrator.store.deliveries import FINAL, BuildRef, Deliveries, Replay
from orchestrator.store.deployments import Deployments
from orchestrator.store.keys import Keys
from orchestrator.store.leases import Leases, Locks
from orchestrator.store.logs import Logs
from orchestrator.store.notifications import NotificationStore
from orchestrator.store.progressive import Progressive
from orchestrator.store.retention import Retention
from orchestrator.store.schedules import ScheduleStore

if TYPE_CHECKING:
    from orchestrator.config import Settings

__all__ = ["FINAL", "TICKET_TTL", "BuildRef", "Keys", "Replay", "Store"]


class Store(Builds, Deliveries, Logs, Leases, Locks, Deployments, Progressive, Counters, Retention):
    """Typed access to the orchestrator's Redis state."""

    def __init__(
        self, client: Any, prefix: str = "mlship", delivery_ttl_days: float = 8.0, **wait: Any
    ) -> None:
        super().__init__(client, prefix, delivery_ttl_days, **wait)
        self.notifications = NotificationStore(client, self.k, self.available)
        self.schedules = ScheduleStore(client, self.k, self.available)

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> Store:
        store = cls(client(url, READ_TIMEOUT), **kw)
        store.w = client(url, WRITE_TIMEOUT)
        return store

    @classmethod
    def from_settings(cls, settings: Settings, ride_out: bool = False) -> Store:
        """The store every process uses: ``redis_url`` or the Sentinel primary, WAIT as configured;
        ``ride_out`` for workers (``clients.redis_for``: a running build waits out a failover)."""
        store = cls(
            redis_for(settings, READ_TIMEOUT, ride_out=ride_out),
            delivery_ttl_days=settings.delivery_ttl_days,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout,
        )
        store.w = redis_for(settings, WRITE_TIMEOUT, ride_out=ride_out)
        return store

    def ping(self) -> bool:
        with self.available():
            return bool(self.r.ping())

    def memory(self) -> dict[str, int]:
        """Redis's ``used_memory`` and ``maxmemory`` in bytes (INFO memory; maxmemory 0: no limit)."""
        with self.available():
            info = self.r.info("memory")
        return {"used_memory": int(info["used_memory"]), "maxmemory": int(info.get("maxmemory", 0))}

"""Store operations only tests need (the product writes delivery records through the intake)."""

from __future__ import annotations

import time

from orchestrator.models import Delivery
from orchestrator.store import Store


def record_delivery(store: Store, d: Delivery) -> None:
    """Write ``d`` as a delivery record (indexed, with the record TTL), as the intake would leave it."""
    key = store.k.delivery(d.id)
    pipe = store.r.pipeline(transaction=True)
    pipe.hset(key, mapping={k: ("" if v is None else str(v)) for k, v in d.to_dict().items()})
    pipe.expire(key, store.delivery_ttl)
    pipe.zadd(store.k.deliveries(), {d.id: d.received_at})
    pipe.zremrangebyscore(store.k.deliveries(), "-inf", time.time() - store.delivery_ttl)
    pipe.execute()

"""The store's Redis clients and the one rule for their failures (→ StoreUnavailable, a 503)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator import defaults
from orchestrator.errors import StoreUnavailable
from orchestrator.store.keys import Keys

WRITE_TIMEOUT = defaults.INTAKE_TIMEOUT  # GitHub must get its 503 within 2 s when Redis is stopped or frozen
READ_TIMEOUT = 5.0  # room for XREAD blocks of up to a second


def client(url: str, timeout: float = READ_TIMEOUT, decode: bool = True) -> redis.Redis:
    """A client (decoding replies unless ``decode`` is False) that fails fast instead of hanging.

    redis-py retries timeouts 10 times with backoff by default; a frozen (SIGSTOPped, swapping) Redis
    would hold a request for a minute. Here a timeout is final (one attempt of ``timeout``), and a
    connection error is retried once at once (a pooled socket that died with a Redis restart).
    """
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_connect_timeout=1.0,
        socket_timeout=timeout,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )


class StoreBase:
    """What every part of the store shares: the clients, the key names, the failure rule.

    ``r`` serves reads and the worker; ``w`` (``WRITE_TIMEOUT``) serves build creation and the webhook's
    delivery records, whose single round trip is atomic: a timed-out call happened in full (a
    redelivery is answered from its record) or not at all (a redelivery is processed).
    """

    def __init__(self, client: redis.Redis, prefix: str = "mlship", delivery_ttl_days: float = 8.0) -> None:
        # redis-py's stubs type every reply as bytes | str; the store is the typed facade over it.
        self.r: Any = client
        self.w: Any = client
        self.k = Keys(prefix)
        self.delivery_ttl = int(delivery_ttl_days * 86400)

    @contextmanager
    def available(self) -> Iterator[None]:
        """Turn Redis connection failures into StoreUnavailable (→ 503)."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError) as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc

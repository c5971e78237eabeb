"""The Redis clients (every process builds them here, ``redis_for``) and the one rule for their failures
(→ StoreUnavailable, a 503).

With ``redis_sentinels`` set, a client talks to the primary the sentinels name (redis-py's
``Sentinel.master_for``): after a failover its next connection goes to the new primary, so web app
and workers follow it without a restart. Until the sentinels have promoted one, calls fail fast
(→ 503). ``redis_url`` then gives only the password, user and database number.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from orchestrator import defaults
from orchestrator.errors import NotReplicated, StoreUnavailable
from orchestrator.store.keys import Keys

if TYPE_CHECKING:
    from orchestrator.config import Settings

WRITE_TIMEOUT = defaults.INTAKE_TIMEOUT  # GitHub must get its 503 within 2 s when Redis is stopped or frozen
READ_TIMEOUT = 5.0  # room for XREAD blocks of up to a second


# 0.2, 0.4, 0.8, 1, 1 s between tries, for a call and (nested in redis-py) for each of its connects:
# 2.4 s at least, about 15 s at most before StoreUnavailable. Sentinel's down-after-milliseconds plus
# its election must fit (docs/reliability.md: 5000 ms is a good production value; the test bed's is 1000).
def ride_out_retry() -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.1), 4, supported_errors=(redis.ConnectionError,))


SENTINEL_TIMEOUT = 0.5  # one question to one sentinel (which is the primary?); three fit in 2 s


def _fail_fast(timeout: float, decode: bool, ride_out: bool = False) -> dict[str, Any]:
    """redis-py retries timeouts 10 times with backoff by default; a frozen (SIGSTOPped, swapping) Redis
    would hold a request for a minute. Here a timeout is final (one attempt of ``timeout``), and a
    connection error is retried once at once (a pooled socket that died with a Redis restart, or the
    old primary's after a failover: the retry asks the sentinels again).

    ``ride_out`` (a worker's clients under Sentinel): refused connections and "no primary yet" are
    retried with backoff for several seconds (``ride_out_retry``), long enough for the sentinels to promote a
    replica, so a running build carries on instead of failing; timeouts stay final.
    """
    retry = ride_out_retry() if ride_out else Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    return {
        "decode_responses": decode,
        "socket_connect_timeout": 1.0,
        "socket_timeout": timeout,
        "health_check_interval": 10,
        "retry": retry,
    }


def client(url: str, timeout: float = READ_TIMEOUT, decode: bool = True) -> redis.Redis:
    """A client of the server at ``url`` (decoding replies unless ``decode`` is False) that fails fast."""
    return redis.Redis.from_url(url, **_fail_fast(timeout, decode))


def master_for(
    sentinels: list[tuple[str, int]],
    service: str,
    url: str = "redis://",
    sentinel_password: str | None = None,
    timeout: float = READ_TIMEOUT,
    decode: bool = True,
    ride_out: bool = False,
) -> redis.Redis:
    """A client of the primary that ``sentinels`` name for ``service``, with ``client``'s failure rule.

    ``url`` gives the primary's password, user and database (its host and port are not used).
    """
    parts = urlsplit(url)
    auth = {
        "password": unquote(parts.password) if parts.password else None,
        "username": unquote(parts.username) if parts.username else None,
        "db": int(parts.path.strip("/") or 0),
    }
    asked = {
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "socket_timeout": SENTINEL_TIMEOUT,
        "password": sentinel_password,
    }
    sentinel = Sentinel(sentinels, sentinel_kwargs=asked)
    return sentinel.master_for(service, **auth, **_fail_fast(timeout, decode, ride_out))


def redis_for(
    settings: Settings, timeout: float = READ_TIMEOUT, decode: bool = True, ride_out: bool = False
) -> redis.Redis:
    """The one factory every process uses: Sentinel's primary if ``redis_sentinels``, else ``redis_url``.

    ``ride_out`` (workers): under Sentinel, wait out a failover instead of failing at once (a plain
    ``redis_url`` that refuses connections is down, not failing over: it fails fast as before).
    """
    if not settings.redis_sentinels:
        return client(settings.redis_url, timeout, decode)
    return master_for(
        settings.sentinel_addresses(),
        settings.redis_sentinel_service,
        settings.redis_url,
        settings.sentinel_password(),
        timeout,
        decode,
        ride_out,
    )


class StoreBase:
    """What every part of the store shares: the clients, the key names, the failure rule.

    ``r`` serves reads and the worker; ``w`` (``WRITE_TIMEOUT``) serves build creation and the webhook's
    delivery records, whose single round trip is atomic: a timed-out call happened in full (a
    redelivery is answered from its record) or not at all (a redelivery is processed).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "mlship",
        delivery_ttl_days: float = 8.0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        # redis-py's stubs type every reply as bytes | str; the store is the typed facade over it.
        self.r: Any = client
        self.w: Any = client
        self.k = Keys(prefix)
        self.delivery_ttl = int(delivery_ttl_days * 86400)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms

    def replicas_acked(self, client: Any = None) -> int:
        """``WAIT wait_replicas wait_timeout_ms``: how many replicas hold every write made so far.

        WAIT counts the writes of its own connection, and the writes before it may have gone over
        another pooled one: so one write of its own (a counter) goes first, on the same connection
        (one pipeline). The replication stream is ordered: a replica that acknowledged that write
        holds every write this process finished before it. One round trip, plus the replicas' ack.
        """
        c = client or self.w
        with self.available():
            pipe = c.pipeline(transaction=False)
            pipe.hincrby(self.k.counter("redis_waits"), "total", 1)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            acked = int(pipe.execute()[1])
            if acked < self.wait_replicas:
                c.hincrby(self.k.counter("redis_waits"), "short", 1)
        return acked

    def require_replicas(self, what: str, client: Any = None) -> None:
        """With ``wait_replicas``: NotReplicated (→ 503) unless that many replicas hold ``what``."""
        if self.wait_replicas <= 0:
            return
        acked = self.replicas_acked(client)
        if acked < self.wait_replicas:
            raise NotReplicated(
                f"{what} is on the Redis primary but only {acked} of {self.wait_replicas} replicas "
                f"confirmed it within {self.wait_timeout_ms} ms (redis_wait_replicas): a failover now "
                "could lose it"
            )

    @contextmanager
    def available(self) -> Iterator[None]:
        """Turn Redis connection failures into StoreUnavailable (→ 503)."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError) as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc

"""Prometheus metrics, computed from Redis at scrape time so every gunicorn worker and build worker
contributes and any web process answers the same numbers.

- ``mlship_builds_total{status}``: builds that reached a final status (runner/janitor/cancel count them)
- ``mlship_webhook_deliveries_total{verdict}``: deliveries by verdict (the webhook endpoint counts them)
- ``mlship_queue_depth``: jobs waiting in the RQ build queue
- ``mlship_step_duration_seconds{kind}``: gauge histogram over the steps of the most recent builds
- ``mlship_http_requests_total{method,endpoint,status}`` and ``mlship_http_request_duration_seconds``
- ``mlship_store_up``: 1 when Redis answered this scrape
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .errors import StoreUnavailable

log = logging.getLogger("orchestrator.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
RECENT_BUILDS = 200
_METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
_SEP = "|"


def request_increments(method: str, endpoint: str, status: int, seconds: float) -> dict[str, dict[str, int]]:
    """The counter increments that record one HTTP request (pure; see Store.incr_counters)."""
    method = method if method in _METHODS else "OTHER"
    endpoint = endpoint.replace(_SEP, "_")
    buckets = {f"{endpoint}{_SEP}{le}": 1 for le in HTTP_BUCKETS if seconds <= le}
    return {
        "http_requests": {_SEP.join((method, endpoint, str(status))): 1},
        "http_duration": {**buckets, f"{endpoint}{_SEP}+Inf": 1,
                          f"{endpoint}{_SEP}sum_us": int(seconds * 1e6)},
    }


def _http_histogram(raw: dict[str, int]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily("mlship_http_request_duration_seconds",
                                "Time to produce a response (streams: until the first byte)",
                                labels=["endpoint"])
    per: dict[str, dict[str, int]] = {}
    for key, value in raw.items():
        endpoint, _, le = key.rpartition(_SEP)
        per.setdefault(endpoint, {})[le] = value
    for endpoint, values in sorted(per.items()):
        buckets = [(str(le), float(values.get(str(le), 0))) for le in HTTP_BUCKETS]
        buckets.append(("+Inf", float(values.get("+Inf", 0))))
        fam.add_metric([endpoint], buckets, values.get("sum_us", 0) / 1e6)
    return fam


def _step_histogram(builds: list[Any]) -> GaugeHistogramMetricFamily:
    fam = GaugeHistogramMetricFamily(
        "mlship_step_duration_seconds",
        f"Durations of the finished steps of the {RECENT_BUILDS} most recent builds, by step kind",
        labels=["kind"],
    )
    per: dict[str, list[float]] = {}
    for b in builds:
        for s in b.steps:
            if s.started_at is not None and s.finished_at is not None:
                per.setdefault(s.kind, []).append(max(0.0, s.finished_at - s.started_at))
    for kind, values in sorted(per.items()):
        buckets = [(str(le), float(sum(v <= le for v in values))) for le in STEP_BUCKETS]
        buckets.append(("+Inf", float(len(values))))
        fam.add_metric([kind], buckets, gsum_value=sum(values))
    return fam


class RedisCollector:
    """Reads every metric from the store (and the RQ queue) when Prometheus scrapes."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mlship_store_up", "1 if Redis answered this scrape")
        try:
            families = list(self._families())
        except (StoreUnavailable, OSError) as exc:
            log.warning("metrics: the store is unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        except Exception as exc:  # redis-py errors from the RQ client
            log.warning("metrics: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        store = self.rt.store
        builds = CounterMetricFamily("mlship_builds", "Builds that reached a final status", labels=["status"])
        for status, n in sorted(store.counters("builds").items()):
            builds.add_metric([status], n)
        yield builds
        deliveries = CounterMetricFamily("mlship_webhook_deliveries", "Webhook deliveries by verdict",
                                         labels=["verdict"])
        for verdict, n in sorted(store.counters("deliveries").items()):
            deliveries.add_metric([verdict], n)
        yield deliveries
        yield GaugeMetricFamily("mlship_queue_depth", "Build jobs waiting in the queue",
                                value=self.rt.queue.count)
        recent, _ = store.list_builds(limit=RECENT_BUILDS)
        yield _step_histogram(recent)
        requests = CounterMetricFamily("mlship_http_requests", "HTTP requests answered",
                                       labels=["method", "endpoint", "status"])
        for key, n in sorted(store.counters("http_requests").items()):
            parts = key.split(_SEP)
            if len(parts) == 3:
                requests.add_metric(parts, n)
        yield requests
        yield _http_histogram(store.counters("http_duration"))


def render(rt: Any) -> bytes:
    """The exposition text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(rt))
    return generate_latest(registry)


_paused_until = [0.0]
PAUSE_AFTER_FAILURE = 5.0


def record_request(rt: Any, method: str, endpoint: str, status: int, started: float) -> None:
    """Count one request in Redis; never fails the request if Redis is down.

    After a failure, counting pauses for a few seconds so an unreachable Redis does not add its
    connect timeout to every answer (the webhook's 503 must stay fast).
    """
    if time.monotonic() < _paused_until[0]:
        return
    try:
        rt.store.incr_counters(request_increments(method, endpoint, status, time.perf_counter() - started))
    except Exception:  # metrics are best effort
        _paused_until[0] = time.monotonic() + PAUSE_AFTER_FAILURE
        log.debug("could not record request metrics", exc_info=True)

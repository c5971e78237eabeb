"""Prometheus metrics, computed from Redis at scrape time so every gunicorn worker and build worker
contributes and any web process answers the same numbers.

- ``mlship_builds_total{status}``: builds that reached a final status (runner/janitor/cancel count them)
- ``mlship_webhook_deliveries_total{verdict}``: deliveries by verdict (the webhook endpoint counts them)
- ``mlship_model_gates_total{verdict}``: model gate verdicts, passed or failed (the model_check step)
- ``mlship_queue_depth``: jobs waiting in the RQ build queue
- ``mlship_step_duration_seconds{kind}``: gauge histogram over the steps of the most recent builds
- ``mlship_http_requests_total{method,endpoint,status}`` and ``mlship_http_request_duration_seconds``
- ``mlship_deploy_analysis_{requests,errors,error_rate,p99_seconds}{repo,environment,side}``: the
  latest interval a progressive deploy judged (side ``stable`` or ``candidate``), and
  ``mlship_deploy_analysis_pass{repo,environment,phase}`` (1 passed, 0 failed or too little traffic)
- ``mlship_redis_used_memory_bytes`` and ``mlship_redis_maxmemory_bytes``: Redis memory against its limit
- ``mlship_redis_waits_total{result}``: WAITs for replicas (``redis_wait_replicas``): ``total``, ``short``
- ``mlship_store_up``: 1 when Redis answered this scrape
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from bisect import bisect_left
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

from orchestrator import defaults
from orchestrator.errors import StoreUnavailable

log = logging.getLogger("orchestrator.web.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
RECENT_BUILDS = 200
_METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
_SEP = "|"


def _http_histogram(raw: dict[str, int]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(
        "mlship_http_request_duration_seconds",
        "Time to produce a response (streams: until the first byte)",
        labels=["endpoint"],
    )
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


def _analysis(rows: dict[tuple[str, str], dict[str, Any]]) -> Iterator[Metric]:
    """The latest analysis interval of each environment (Store.set_analysis)."""
    labels = ["repo", "environment", "side"]
    fams = {
        "requests": GaugeMetricFamily(
            "mlship_deploy_analysis_requests", "Requests in the latest analysis interval", labels=labels
        ),
        "errors": GaugeMetricFamily(
            "mlship_deploy_analysis_errors", "5xx answers in the latest analysis interval", labels=labels
        ),
        "error_rate": GaugeMetricFamily(
            "mlship_deploy_analysis_error_rate", "5xx share of the latest analysis interval", labels=labels
        ),
        "p99_ms": GaugeMetricFamily(
            "mlship_deploy_analysis_p99_seconds",
            "p99 server response time at the edge in the latest analysis interval",
            labels=labels,
        ),
    }
    verdict = GaugeMetricFamily(
        "mlship_deploy_analysis_pass",
        "1 if the latest analysis interval passed, else 0",
        labels=["repo", "environment", "phase"],
    )
    for (repo, env), row in sorted(rows.items()):
        for side in ("stable", "candidate"):
            numbers = row.get(side) or {}
            for key, fam in fams.items():
                value = numbers.get(key)
                if isinstance(value, (int, float)):
                    fam.add_metric([repo, env, side], value / 1000 if key == "p99_ms" else value)
        verdict.add_metric([repo, env, str(row.get("phase", ""))], 1 if row.get("verdict") == "pass" else 0)
    yield from fams.values()
    yield verdict


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
        deliveries = CounterMetricFamily(
            "mlship_webhook_deliveries", "Webhook deliveries by verdict", labels=["verdict"]
        )
        for verdict, n in sorted(store.counters("deliveries").items()):
            deliveries.add_metric([verdict], n)
        yield deliveries
        gates = CounterMetricFamily("mlship_model_gates", "Model gate verdicts", labels=["verdict"])
        for verdict, n in sorted(store.counters("gates").items()):
            gates.add_metric([verdict], n)
        yield gates
        memory = store.memory()
        yield GaugeMetricFamily(
            "mlship_redis_used_memory_bytes", "Redis used_memory", value=memory["used_memory"]
        )
        yield GaugeMetricFamily(
            "mlship_redis_maxmemory_bytes",
            "Redis maxmemory (0: no limit); with noeviction, writes fail past it",
            value=memory["maxmemory"],
        )
        waits = CounterMetricFamily(
            "mlship_redis_waits",
            "WAITs for redis_wait_replicas replicas (total) and those fewer replicas confirmed (short)",
            labels=["result"],
        )
        for result, n in sorted(store.counters("redis_waits").items()):
            waits.add_metric([result], n)
        yield waits
        yield GaugeMetricFamily(
            "mlship_queue_depth", "Build jobs waiting in the queue", value=self.rt.queue.count
        )
        recent, _ = store.list_builds(limit=RECENT_BUILDS)
        yield _step_histogram(recent)
        requests = CounterMetricFamily(
            "mlship_http_requests", "HTTP requests answered", labels=["method", "endpoint", "status"]
        )
        for key, n in sorted(store.counters("http_requests").items()):
            parts = key.split(_SEP)
            if len(parts) == 3:
                requests.add_metric(parts, n)
        yield requests
        yield _http_histogram(store.counters("http_duration"))
        yield from _analysis(store.analyses())


def render(rt: Any) -> bytes:
    """The exposition text for one scrape (this process's request counts are flushed first)."""
    TALLY.flush()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(rt))
    return generate_latest(registry)


PAUSE_AFTER_FAILURE = defaults.METRICS_PAUSE_AFTER_FAILURE
FLUSH_INTERVAL = defaults.METRICS_FLUSH_INTERVAL


class RequestTally:
    """This process's HTTP request counts, added to Redis about once a second (and before each scrape)
    in one pipeline, instead of ~15 HINCRBY round-trip work on every request.

    Recording a request is a few dict operations under a lock; a daemon thread (one per process,
    started on first use, restarted after fork) flushes. Trade-offs: another process's requests
    reach /metrics up to ``FLUSH_INTERVAL`` late, and a worker killed with SIGKILL loses at most that
    second of request counts. Webhook verdicts are not counted here: they are counted in the same
    Redis script that records the delivery.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.lock = threading.Lock()
        # store → ({(method, endpoint, status): n}, {endpoint: [n per bucket..., n over, sum_us]})
        self.pending: dict[Any, tuple[dict[tuple[str, str, int], int], dict[str, list[int]]]] = {}
        self.thread: threading.Thread | None = None
        self.paused_until: dict[Any, float] = {}  # store → when to try it again after a failure

    def add(self, store: Any, method: str, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            per = self.pending.get(store)
            if per is None:
                per = self.pending[store] = ({}, {})
            key = (method, endpoint, status)
            per[0][key] = per[0].get(key, 0) + 1
            hist = per[1].get(endpoint)
            if hist is None:
                hist = per[1][endpoint] = [0] * (len(HTTP_BUCKETS) + 2)
            hist[bisect_left(HTTP_BUCKETS, seconds)] += 1  # the first bucket whose le >= seconds
            hist[-1] += int(seconds * 1e6)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="mlship-metrics", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            self.flush()

    def flush(self) -> None:
        """Add every pending count to Redis; on failure keep them and leave that store alone for a
        few seconds (its Redis may be down: no point in waiting for its timeouts every second)."""
        now = time.monotonic()
        with self.lock:
            due = [s for s in self.pending if self.paused_until.get(s, 0.0) <= now]
            pending = {s: self.pending.pop(s) for s in due}
        for store, (requests, durations) in pending.items():
            try:
                store.incr_counters(_increments(requests, durations))
                self.paused_until.pop(store, None)
            except Exception:  # metrics are best effort; keep the counts for the next flush
                self.paused_until[store] = time.monotonic() + PAUSE_AFTER_FAILURE
                log.debug("could not record request metrics", exc_info=True)
                with self.lock:
                    self._merge(store, requests, durations)

    def _merge(
        self, store: Any, requests: dict[tuple[str, str, int], int], durations: dict[str, list[int]]
    ) -> None:
        per = self.pending.setdefault(store, ({}, {}))
        for key, n in requests.items():
            per[0][key] = per[0].get(key, 0) + n
        for endpoint, hist in durations.items():
            mine = per[1].setdefault(endpoint, [0] * len(hist))
            per[1][endpoint] = [a + b for a, b in zip(mine, hist, strict=True)]


def _increments(
    requests: dict[tuple[str, str, int], int], durations: dict[str, list[int]]
) -> dict[str, dict[str, int]]:
    """The counter increments for tallied requests: cumulative histogram buckets per endpoint."""
    out: dict[str, dict[str, int]] = {"http_requests": {}, "http_duration": {}}
    for (method, endpoint, status), n in requests.items():
        method = method if method in _METHODS else "OTHER"
        key = _SEP.join((method, endpoint.replace(_SEP, "_"), str(status)))
        out["http_requests"][key] = out["http_requests"].get(key, 0) + n
    for endpoint, hist in durations.items():
        endpoint = endpoint.replace(_SEP, "_")
        below = 0
        for le, n in zip(HTTP_BUCKETS, hist, strict=False):
            below += n
            if below:
                out["http_duration"][f"{endpoint}{_SEP}{le}"] = below
        out["http_duration"][f"{endpoint}{_SEP}+Inf"] = sum(hist[:-1])
        out["http_duration"][f"{endpoint}{_SEP}sum_us"] = hist[-1]
    return out


TALLY = RequestTally()
os.register_at_fork(after_in_child=TALLY._reset)  # a gunicorn worker starts with its own lock and thread
atexit.register(TALLY.flush)


def record_request(rt: Any, method: str, endpoint: str, status: int, started: float) -> None:
    """Count one request (in this process; see RequestTally). Never touches Redis on the request path,
    so neither a slow nor an unreachable Redis delays any answer (the webhook's 503 stays fast)."""
    TALLY.add(rt.store, method, endpoint, status, time.perf_counter() - started)

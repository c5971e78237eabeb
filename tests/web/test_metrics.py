"""/metrics: computed from Redis at scrape time, so every process's work is counted."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from orchestrator import create_app

from .conftest import Seed, make_settings


def scrape(client) -> dict[str, dict[tuple, float]]:
    text = client.get("/metrics").get_data(as_text=True)
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_from_the_store(client, seed, rt):
    rt.store.incr_counter("builds", "success", 3)  # as runners in other processes do
    rt.store.incr_counter("builds", "failed")
    rt.store.incr_counter("deliveries", "queued", 4)
    seed.build("queued")
    seed.build("success")
    client.get("/api/v1/builds")
    m = scrape(client)
    assert m["mlship_store_up"][()] == 1
    assert m["mlship_builds_total"][(("status", "success"),)] == 3
    assert m["mlship_builds_total"][(("status", "failed"),)] == 1
    assert m["mlship_webhook_deliveries_total"][(("verdict", "queued"),)] == 4
    assert m["mlship_queue_depth"][()] == 2  # both seeded builds enqueued a job
    assert m["mlship_step_duration_seconds_gcount"][(("kind", "docker_build"),)] == 1
    assert (
        m["mlship_http_requests_total"][
            (("endpoint", "api.list_builds"), ("method", "GET"), ("status", "200"))
        ]
        == 1
    )
    assert m["mlship_http_request_duration_seconds_count"][(("endpoint", "api.list_builds"),)] == 1


def test_request_counts_are_shared_between_processes(redis_url):
    a = create_app(make_settings(redis_url)).test_client()
    b = create_app(make_settings(redis_url)).test_client()
    a.get("/healthz")
    b.get("/healthz")
    key = (("endpoint", "views.healthz"), ("method", "GET"), ("status", "200"))
    assert scrape(a)["mlship_http_requests_total"][key] == 2


def test_metrics_answer_when_redis_is_down(own_redis):
    app = create_app(make_settings(own_redis.url))
    Seed(app.extensions["mlship"]).build("success")
    own_redis.stop()
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 200
    assert "mlship_store_up 0.0" in resp.get_data(as_text=True)

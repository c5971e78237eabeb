"""The intake against a real Redis and gunicorn: a frozen Redis still gives a fast 503; a merged
delivery is one round trip (MULTI/EXEC); the routes."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

from orchestrator import create_app
from orchestrator.devstack.services import RedisServer
from orchestrator.store import Store

from .conftest import GitHub
from .helpers import REPO, counting_sends, encode, headers, merged_pr, payload, settings
from .test_gunicorn import start_web, stop_web


def test_frozen_redis_is_503_within_2_seconds_and_the_redelivery_is_accepted(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    web = start_web(tmp_path, own_redis.url)
    assert own_redis.proc is not None
    try:
        assert web.send("ping", payload("ping"))[0] == 200  # pooled connections are warm
        delivery = str(uuid.uuid4())
        merged = merged_pr("d" * 40)
        os.kill(own_redis.proc.pid, signal.SIGSTOP)  # accepts connections, never answers
        try:
            status, body, took = web.send("pull_request", merged, delivery=delivery)
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        assert status == 503 and body["error"] == "store_unavailable", body
        assert took < 2.0
        status, body, _ = web.send("pull_request", merged, delivery=delivery)
        assert status == 202 and body["number"] == 1
        d = Store.from_url(own_redis.url).get_delivery(delivery)
        assert d is not None and d.verdict == "queued"
    finally:
        stop_web(web)


def test_a_merged_delivery_is_one_round_trip(redis_url: str) -> None:
    client = create_app(settings(redis_url)).test_client()
    GitHub(client).send("pull_request", merged_pr("a" * 40))  # scripts loaded, pool warm
    with counting_sends() as sends:
        reply = GitHub(client).send("pull_request", merged_pr("b" * 40, number=7))
    assert reply.status == 202 and reply.body["number"] == 2
    assert len(sends) == 1  # request metrics are tallied in-process, not sent on the request path


def test_the_routes(redis_url: str) -> None:
    """The general and the per-repository URL answer alike; other paths are 404, GET is 405."""
    app = create_app(settings(redis_url))
    body = encode(merged_pr("c" * 40))
    h = headers("pull_request", body, delivery="alike-1")
    first = app.test_client().post("/webhooks/github", data=body, headers=h)
    assert first.status_code == 202 and first.headers["Content-Type"] == "application/json"
    scoped = app.test_client().post(f"/webhooks/github/{REPO}", data=body, headers=h)  # a redelivery
    assert scoped.status_code == 202 and json.loads(scoped.data) == json.loads(first.data)
    for path in ("/webhooks/github/", "/webhooks/github/acme", "/webhooks/githubx", "/webhooks/github/a/b/c"):
        assert app.test_client().post(path, data=body, headers=h).status_code == 404, path
    assert app.test_client().get("/webhooks/github").status_code == 405

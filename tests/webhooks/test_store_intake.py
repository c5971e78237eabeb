"""Delivery record TTL and create_build's single round trip, against a real Redis."""

from __future__ import annotations

import dataclasses

import redis
import redis.connection

from orchestrator.build.queue import build_queue, enqueuer
from orchestrator.config import Settings
from orchestrator.models import Delivery, Trigger
from orchestrator.store import Store
from tests.store_helpers import record_delivery

from .helpers import counting_sends

SUCCESS = ("queued", "duplicate", "ignored")


def test_delivery_records_expire_after_the_ttl(redis_url: str) -> None:
    store = Store.from_url(redis_url, delivery_ttl_days=7)
    record_delivery(store, Delivery(id="t1", event="push"))
    ttl = redis.Redis.from_url(redis_url).ttl("mlship:delivery:t1")
    assert 7 * 86400 - 5 <= ttl <= 7 * 86400


def test_create_build_is_one_round_trip(redis_url: str, store: Store) -> None:
    queue = build_queue(Settings(redis_url=redis_url))
    trig = Trigger(repo="acme/x", sha="a" * 40, ref="refs/heads/main", branch="main", kind="push")
    store.create_build(trig, pipeline="p", triggered_by="warm", enqueue=enqueuer(queue, 60))
    with counting_sends() as sends:
        build, created = store.create_build(
            dataclasses.replace(trig, sha="b" * 40),
            pipeline="p",
            triggered_by="d2",
            enqueue=enqueuer(queue, 60),
        )
    assert created and build.number == 2 and build.sha == "b" * 40 and build.triggered_by == "d2"
    assert len(sends) == 1  # MULTI ... EXEC only: no SCRIPT EXISTS before, no read-back after

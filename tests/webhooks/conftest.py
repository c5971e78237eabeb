"""Fixtures for the webhook tests: an app on the session Redis and a client that sends like GitHub."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator import create_app
from orchestrator import servicelog as applog
from orchestrator.store import Store

from .helpers import SECRET, encode, headers, settings


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    delivery: str


class GitHub:
    """Sends signed deliveries to the app through Flask's test client, as GitHub would."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def send(
        self,
        event: str,
        p: dict[str, Any] | bytes,
        *,
        secret: str | None = SECRET,
        delivery: str | None = None,
        path: str = "/webhooks/github",
        **hkw: Any,
    ) -> Reply:
        body = encode(p)
        h = headers(event, body, secret=secret, delivery=delivery, **hkw)
        resp = self.client.post(path, data=body, headers=h)
        return Reply(resp.status_code, json.loads(resp.data), h["X-GitHub-Delivery"])


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """Captures the service's JSON log lines (configured with the webhook secret to mask)."""
    stream = io.StringIO()
    applog.configure([SECRET], stream=stream)
    yield stream
    applog.configure([SECRET])


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def make_app(redis_url: str):  # type: ignore[no-untyped-def]
    def make(**kw: Any):  # type: ignore[no-untyped-def]
        return create_app(settings(redis_url, **kw))

    return make


@pytest.fixture
def github(make_app) -> GitHub:  # type: ignore[no-untyped-def]
    return GitHub(make_app().test_client())


@pytest.fixture
def store(redis_url: str) -> Store:
    return Store.from_url(redis_url)

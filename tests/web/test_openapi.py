"""The OpenAPI document matches the app: every /api/v1 route is documented and every documented
path is routed; schemathesis drives generated requests through the app in-process (no 5xx)."""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from orchestrator import create_app
from orchestrator.models import Delivery
from orchestrator.web.openapi import document
from tests.store_helpers import record_delivery

from .conftest import Seed, auth, make_settings


def routed(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((path, method.lower()))
    return out


def documented() -> set[tuple[str, str]]:
    return {(path, method) for path, ops in document()["paths"].items() for method in ops}


def test_every_route_is_documented_and_every_documented_path_is_routed(app):
    assert routed(app) == documented()


def test_document_is_valid_openapi(app):
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    schema = schemathesis.openapi.from_dict(doc)  # refuses an invalid document
    assert len(list(schema.get_all_operations())) == len(documented())
    op_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(op_ids) == len(set(op_ids))


@pytest.fixture(scope="module")
def fuzz_app(redis_server):
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    app = create_app(make_settings(redis_server.url))
    app.config["MLSHIP_STREAM_SECONDS"] = 1.0  # a running build's stream ends quickly
    seed = Seed(app.extensions["mlship"])
    for status in ("success", "failed", "running", "queued", "cancelled"):
        seed.build(status, log=[("build", "stdout", "hello")])
    record_delivery(app.extensions["mlship"].store, Delivery(id="d1", event="push", verdict="ignored"))
    return app


def cases() -> list[tuple[str, GenerationMode]]:
    """Every operation with valid data; those with parameters or a body also with invalid data."""
    out = []
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            label = f"{method.upper()} {path}"
            out.append((label, GenerationMode.POSITIVE))
            if op.get("parameters") or op.get("requestBody"):
                out.append((label, GenerationMode.NEGATIVE))
    return out


@pytest.mark.parametrize("label, mode", cases(), ids=lambda v: str(v))
def test_generated_requests_never_get_a_5xx(fuzz_app, label, mode):
    op = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app).find_operation_by_label(label)
    assert op is not None, label
    seen: list[int] = []

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:
        # Authenticated, so writes reach the action code instead of stopping at 401.
        response = case.call(headers=auth())
        seen.append(response.status_code)
        case.validate_response(response, checks=[checks.not_a_server_error])
        if mode is GenerationMode.POSITIVE:
            case.validate_response(
                response,
                checks=[
                    checks.status_code_conformance,
                    checks.content_type_conformance,
                    checks.response_schema_conformance,
                ],
            )

    run()
    assert seen

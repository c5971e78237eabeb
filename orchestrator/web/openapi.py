"""The OpenAPI 3 document of /api/v1, served at /api/v1/openapi.json.

Kept beside the routes in orchestrator/api.py; tests/web/test_openapi.py checks that every route is
documented and every documented path is routed, and runs schemathesis against the app.
"""

from __future__ import annotations

from typing import Any

from orchestrator.models import SHA_PATTERN, BuildStatus

VERSION = "1.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed request (bad parameter or body)",
        401: "No bearer token",
        403: "Wrong bearer token",
        404: "No such build, repository or environment",
        409: "The action does not apply to the build's state",
        502: "The repository's origin could not be reached",
        503: "Redis is unreachable; retry later",
    }
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in codes if c in text}


_BUILD_ID = {
    "name": "build_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0, "maximum": 2**53},
}
_PAGE = [
    {
        "name": "offset",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0},
    },
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
]
_READ = (400, 401, 403, 503)
_WRITE = (400, 401, 403, 404, 409, 503)

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "examples": ["not_found"]},
                    "message": {"type": "string"},
                },
            }
        },
    },
    "Step": {
        "type": "object",
        "required": ["name", "kind", "status"],
        "properties": {
            "name": {"type": "string"},
            "kind": {"type": "string"},
            "status": {"type": "string"},
            "started_at": {"type": ["number", "null"]},
            "finished_at": {"type": ["number", "null"]},
            "duration": {"type": ["number", "null"]},
            "exit_code": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
            "details": {"type": "object"},
        },
    },
    "Build": {
        "type": "object",
        "required": ["id", "number", "repo", "sha", "ref", "branch", "trigger", "status", "steps", "links"],
        "properties": {
            "id": {"type": "integer"},
            "number": {"type": "integer"},
            "repo": {"type": "string"},
            "sha": {"type": "string"},
            "short_sha": {"type": "string"},
            "ref": {"type": "string"},
            "branch": {"type": "string"},
            "trigger": {"type": "string"},
            "status": {"type": "string", "enum": [s.value for s in BuildStatus]},
            "created_at": {"type": "number"},
            "started_at": {"type": ["number", "null"]},
            "finished_at": {"type": ["number", "null"]},
            "duration": {"type": ["number", "null"]},
            "author": {"type": "string"},
            "message": {"type": "string"},
            "url": {"type": "string"},
            "triggered_by": {"type": "string"},
            "rerun_of": {"type": ["integer", "null"]},
            "pipeline_yaml": {"type": "string"},
            "image": {"type": "string"},
            "digest": {"type": "string"},
            "model": {
                "type": "object",
                "description": "where docker_push published the build's model (an OCI artifact beside the "
                "image; {} when it wrote none): ref (<registry>/<repo>:model-<number>), manifest (sha256 "
                "digest, what fetches use), sha256 (the model file), files [{path, sha256, size}]",
            },
            "error": {"type": "string"},
            "steps": {"type": "array", "items": _ref("Step")},
            "deploys": {"type": "object"},
            "worker": {"type": "string"},
            "log_pruned": {
                "type": "string",
                "description": "why retention pruned the log ('' while it is there)",
            },
            "gate": {
                "type": "object",
                "description": "model_check results by step name: passed, comparison "
                "[{metric, candidate, deployed, rule, passed}], checks [{name, passed, detail, metric, "
                "rule}], candidate and baseline (ok, error, metrics, latency_ms, sha256), note "
                "(thresholds only, and why), diff {rows, changed, rule, largest [{row, line, candidate, "
                "baseline, difference, label, inputs}]}, mode, task, environment, compare_to, "
                "baseline_policy, baseline_build, golden, target, model, candidate_sha256",
            },
            "notifications": {
                "type": "array",
                "description": "GET /builds/{id} only: one record per event and target: id, event, key, "
                "target, kind, status (pending|retrying|sent|failed), attempts, max_attempts, last_error, "
                "created_at, updated_at, next_attempt_at (docs/notifications.md)",
                "items": {"type": "object"},
            },
            "links": {
                "type": "object",
                "properties": {
                    "self": {"type": "string"},
                    "web": {"type": "string"},
                    "log": {"type": "string"},
                    "log_stream": {"type": "string"},
                },
            },
        },
    },
    "BuildPage": {
        "type": "object",
        "required": ["builds", "total", "offset", "limit"],
        "properties": {
            "builds": {"type": "array", "items": _ref("Build")},
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
        },
    },
    "Delivery": {
        "type": "object",
        "required": ["id", "event", "verdict"],
        "properties": {
            "id": {"type": "string"},
            "event": {"type": "string"},
            "repo": {"type": "string"},
            "verdict": {"type": "string"},
            "reason": {"type": "string"},
            "build_id": {"type": ["integer", "null"]},
            "status_code": {"type": "integer"},
            "received_at": {"type": "number"},
            "duration_ms": {"type": "number"},
            "action": {"type": "string"},
            "ref": {"type": "string"},
            "sha": {"type": "string"},
        },
    },
    "DeliveryPage": {
        "type": "object",
        "required": ["deliveries", "total", "offset", "limit"],
        "properties": {
            "deliveries": {"type": "array", "items": _ref("Delivery")},
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
            "rejected_unverified": {
                "type": "object",
                "description": "Deliveries rejected before their signature was verified: not recorded "
                "one by one, only counted, with a sample of the newest",
                "properties": {
                    "count": {"type": "integer"},
                    "sample": {"type": "array", "items": _ref("Delivery")},
                },
            },
        },
    },
    "Deployment": {
        "type": "object",
        "required": ["repo", "environment", "build_id", "image"],
        "properties": {
            "repo": {"type": "string"},
            "environment": {"type": "string"},
            "build_id": {"type": "integer"},
            "build_number": {"type": "integer"},
            "image": {"type": "string"},
            "sha": {"type": "string"},
            "container": {"type": "string"},
            "deployed_at": {"type": "number"},
            "hosts": {"type": "array", "items": {"type": "string"}},
            "action": {"type": "string"},
            "model_sha256": {"type": "string", "description": "the model shipped ('' = the operator's)"},
            "model_path": {"type": "string", "description": "MODEL_PATH in the container"},
            "runs": {
                "type": "object",
                "description": "what each host runs (host → build_id, build_number, image, container, "
                "model_sha256, model_path), written after every batch of a rollout",
                "additionalProperties": {"type": "object"},
            },
            "mixed": {
                "type": "boolean",
                "description": "hosts run different builds (a rollout stopped between batches); the "
                "top-level fields name the build the whole environment ran before",
            },
        },
    },
    "Environment": {
        "type": "object",
        "required": ["repo", "environment", "current", "history"],
        "properties": {
            "repo": {"type": "string"},
            "environment": {"type": "string"},
            "current": {"oneOf": [_ref("Deployment"), {"type": "null"}]},
            "history": {"type": "array", "items": _ref("Deployment")},
        },
    },
    "LogEvent": {
        "type": "object",
        "description": "One Server-Sent Event: `log` (data: {step, stream, text, ts}; id: log entry id), "
        "then `end` (data: {status, error}) when the build finished; `error` if Redis failed.",
        "properties": {
            "event": {"type": "string", "enum": ["log", "end", "error"]},
            "id": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json"},
            "retry": {"type": "integer"},
        },
    },
    "TriggerRequest": {
        "type": "object",
        "required": ["repo"],
        "description": "Build `repo` at `sha` (exact commit) or at the head of branch `ref`; "
        "give at least one.",
        "properties": {
            "repo": {"type": "string", "description": "allow-listed repository, e.g. acme/house-price"},
            "ref": {"type": "string", "description": "branch name or refs/heads/<branch>"},
            "sha": {"type": "string", "pattern": SHA_PATTERN},
        },
    },
    "PromoteRequest": {
        "type": "object",
        "required": ["environment"],
        "properties": {"environment": {"type": "string", "examples": ["prod"]}},
    },
    "RollbackRequest": {"type": "object", "required": ["repo"], "properties": {"repo": {"type": "string"}}},
}

_RESPONSES = {
    f"E{code}": _json(_ref("Error"), text)
    for code, text in {
        400: "Malformed request",
        401: "No bearer token (WWW-Authenticate: Bearer)",
        403: "Wrong bearer token",
        404: "Not found",
        409: "Conflict with the build's state",
        502: "Origin unreachable",
        503: "Redis unreachable",
    }.items()
}


def _op(
    op_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[Any] | None = None,
    body: str | None = None,
    write: bool = False,
    tag: str = "builds",
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": _ref(body)}}}
    op["security"] = [{"bearer": []}] if write else [{}, {"bearer": []}]
    return op


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict on every call)."""
    build = _json(_ref("Build"), "The build")
    new_build = _json(_ref("Build"), "The new build (queued); Location names it")
    paths: dict[str, Any] = {
        "/api/v1/": {
            "get": _op(
                "apiIndex",
                "Links to the document and the builds",
                {"200": _json({"type": "object"}, "Links")},
                tag="meta",
            )
        },
        "/api/v1/openapi.json": {
            "get": _op(
                "openapi",
                "This document",
                {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
                tag="meta",
            )
        },
        "/api/v1/builds": {
            "get": _op(
                "listBuilds",
                "Builds, newest first",
                {"200": _json(_ref("BuildPage"), "A page of builds"), **_errors(*_READ)},
                params=[
                    *_PAGE,
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": [s.value for s in BuildStatus]},
                    },
                    {"name": "branch", "in": "query", "schema": {"type": "string", "maxLength": 255}},
                    {"name": "repo", "in": "query", "schema": {"type": "string", "maxLength": 255}},
                ],
            ),
            "post": _op(
                "triggerBuild",
                "Build a repository at a branch head or an exact commit",
                {"201": new_build, **_errors(*_WRITE, 502)},
                body="TriggerRequest",
                write=True,
            ),
        },
        "/api/v1/builds/{build_id}": {
            "get": _op(
                "getBuild",
                "One build with its steps",
                {"200": build, **_errors(*_READ, 404)},
                params=[_BUILD_ID],
            )
        },
        "/api/v1/builds/{build_id}/log": {
            "get": _op(
                "getLog",
                "The build's whole log as text",
                {
                    "200": {
                        "description": "One line per entry: [step] text (streamed)",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "410": {
                        "description": "Retention pruned the log (error code log_pruned); the build stays",
                        "content": {"application/json": {"schema": _ref("Error")}},
                    },
                    **_errors(*_READ, 404),
                },
                params=[_BUILD_ID],
                tag="logs",
            )
        },
        "/api/v1/builds/{build_id}/log/stream": {
            "get": _op(
                "streamLog",
                "Follow the log: Server-Sent Events `log` (id = entry id) then `end`",
                {
                    "200": {
                        "description": "text/event-stream; resume with the Last-Event-ID header",
                        "content": {"text/event-stream": {"schema": _ref("LogEvent")}},
                    },
                    **_errors(*_READ, 404),
                },
                params=[
                    _BUILD_ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": {"type": "string", "pattern": r"^\d{1,20}-\d{1,20}$"},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string", "pattern": r"^\d{1,20}-\d{1,20}$"},
                    },
                ],
                tag="logs",
            )
        },
        "/api/v1/builds/{build_id}/rerun": {
            "post": _op(
                "rerunBuild",
                "A new build of the same commit",
                {"201": new_build, **_errors(*_WRITE)},
                params=[_BUILD_ID],
                write=True,
            )
        },
        "/api/v1/builds/{build_id}/cancel": {
            "post": _op(
                "cancelBuild",
                "Cancel a queued build now, or ask a running one to stop (within seconds)",
                {
                    "202": _json(
                        _ref("Build"), "The build (cancelled, or running until its worker stops it)"
                    ),
                    **_errors(*_WRITE),
                },
                params=[_BUILD_ID],
                write=True,
            )
        },
        "/api/v1/builds/{build_id}/deploy/{command}": {
            "post": _op(
                "deployCommand",
                "Pause, resume, abort (roll back to stable) or promote-now the build's running canary",
                {
                    "202": _json(_ref("Build"), "The build; its worker acts within a second"),
                    **_errors(*_WRITE),
                },
                params=[
                    _BUILD_ID,
                    {
                        "name": "command",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["pause", "resume", "abort", "promote"]},
                    },
                ],
                write=True,
            )
        },
        "/api/v1/builds/{build_id}/promote": {
            "post": _op(
                "promoteBuild",
                "Deploy this build's image to an environment",
                {"201": new_build, **_errors(*_WRITE)},
                params=[_BUILD_ID],
                body="PromoteRequest",
                write=True,
            )
        },
        "/api/v1/environments/{env}/rollback": {
            "post": _op(
                "rollbackEnvironment",
                "Put the previous deployment of a repository back",
                {"201": new_build, **_errors(*_WRITE)},
                params=[{"name": "env", "in": "path", "required": True, "schema": {"type": "string"}}],
                body="RollbackRequest",
                write=True,
                tag="environments",
            )
        },
        "/api/v1/environments/{env}/edge": {
            "get": _op(
                "inspectEdge",
                "The environment's HAProxy edge on every host: servers, weights, counters (show stat)",
                {
                    "200": _json({"type": "object"}, "Per host: servers and their show stat counters"),
                    **_errors(*_READ, 404, 502),
                },
                params=[
                    {"name": "env", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "repo", "in": "query", "required": True, "schema": {"type": "string"}},
                ],
                tag="environments",
            )
        },
        "/api/v1/deliveries": {
            "get": _op(
                "listDeliveries",
                "Webhook deliveries and their verdicts",
                {"200": _json(_ref("DeliveryPage"), "A page of deliveries"), **_errors(*_READ)},
                params=_PAGE,
                tag="deliveries",
            )
        },
        "/api/v1/environments": {
            "get": _op(
                "listEnvironments",
                "What runs where now, and history",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["environments"],
                            "properties": {"environments": {"type": "array", "items": _ref("Environment")}},
                        },
                        "Environments",
                    ),
                    **_errors(*_READ),
                },
                tag="environments",
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mlship API",
            "version": VERSION,
            "description": "Builds, logs and deploy actions of the mlship orchestrator. Writes need "
            "`Authorization: Bearer <token>`; reads too when the server sets read_auth.",
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }

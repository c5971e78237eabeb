"""REST API under /api/v1: builds, logs (text and Server-Sent Events), actions, deliveries, environments.

Writes need a bearer token; reads need one (or a signed-in page session) only with read_auth.
Errors are JSON ``{"error": {"code", "message"}}`` with the code of the orchestrator error class.
The OpenAPI document (orchestrator/openapi.py) describes exactly these routes; a test checks both ways.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context, url_for
from werkzeug.exceptions import HTTPException

from orchestrator import actions, defaults
from orchestrator import runtime as get_runtime
from orchestrator.errors import (
    OrchestratorError,
    PayloadError,
    StoreUnavailable,
)
from orchestrator.models import Build, BuildStatus
from orchestrator.web import auth

bp = Blueprint("api", __name__, url_prefix="/api/v1")
log = logging.getLogger("orchestrator.web.api")

PREFIX = "/api/v1"
MAX_LIMIT = 200
STREAM_SECONDS = defaults.STREAM_SECONDS
BLOCK_MS = defaults.STREAM_BLOCK_MS
RETRY_MS = defaults.STREAM_RETRY_MS
MAX_STREAMS = 400  # open live-log streams per web process (MLSHIP_MAX_STREAMS)
MAX_STREAMS_PER_CLIENT = 64  # per client address (MLSHIP_MAX_STREAMS_PER_CLIENT)
STREAM_RETRY_AFTER = 5
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def status_of(exc: OrchestratorError) -> int:
    """The HTTP status for an orchestrator error (its class says; 500 for anything unexpected)."""
    return exc.http_status


def error_response(code: str, message: str, status: int) -> Response:
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="mlship"'
    return resp


@bp.errorhandler(OrchestratorError)
def _orchestrator_error(exc: OrchestratorError) -> Response:
    status = status_of(exc)
    if status >= 500:
        log.warning("API %s %s: %s", request.method, request.path, exc)
    return error_response(exc.code, exc.message, status)


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Any:
    """Routing errors (404, 405) under /api/v1 answer JSON like every other API error."""
    if not request.path.startswith(PREFIX + "/") and request.path != PREFIX:
        return exc
    code = (exc.name or "error").lower().replace(" ", "_")
    resp = error_response(code, exc.description or exc.name, exc.code or 500)
    allowed = getattr(exc, "valid_methods", None)
    if exc.code == 405 and allowed:
        resp.headers["Allow"] = ", ".join(sorted(allowed))
    return resp


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        result: Response = _http_error(exc)
        return result
    log.exception("API %s %s failed", request.method, request.path)
    return error_response("internal_error", "internal error: see the service log", 500)


# -- auth -----------------------------------------------------------------------------------------


def writer() -> auth.Principal:
    """The caller of a write: a valid bearer token is required."""
    return auth.check_token(get_runtime().settings, auth.bearer(request.headers.get("Authorization")))


@bp.before_request
def _read_auth() -> None:
    settings = get_runtime().settings
    if not settings.read_auth or request.method != "GET" or request.endpoint == "api.openapi":
        return
    if auth.check_session(settings, request.cookies.get(auth.SESSION_COOKIE)):
        return
    auth.check_token(settings, auth.bearer(request.headers.get("Authorization")))


# -- helpers --------------------------------------------------------------------------------------


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PayloadError(f"query parameter {name} must be an integer", parameter=name) from None
    if not lo <= value <= hi:
        raise PayloadError(f"query parameter {name} must be between {lo} and {hi}", parameter=name)
    return value


def _body() -> dict[str, Any]:
    """The JSON object of a write request (an empty body counts as {})."""
    if not request.get_data(cache=True):
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise PayloadError("the request body must be a JSON object")
    return data


def build_json(build: Build) -> dict[str, Any]:
    """A build as the API shows it: every field plus links to its page and log."""
    d = build.to_dict()
    d["links"] = {
        "self": url_for("api.get_build", build_id=build.id),
        "web": url_for("views.build_page", build_id=build.id),
        "log": url_for("api.get_log", build_id=build.id),
        "log_stream": url_for("api.stream_log", build_id=build.id),
    }
    return d


def _created(build: Build) -> Response:
    resp = jsonify(build_json(build))
    resp.status_code = 201
    resp.headers["Location"] = url_for("api.get_build", build_id=build.id)
    return resp


# -- builds ---------------------------------------------------------------------------------------


def list_filters() -> dict[str, Any]:
    """status / branch / repo filters of a builds list, validated (shared with the HTML page)."""
    status = request.args.get("status") or None
    if status is not None and status not in {s.value for s in BuildStatus}:
        names = ", ".join(s.value for s in BuildStatus)
        raise PayloadError(f"status must be one of {names}", parameter="status")
    branch = request.args.get("branch") or None
    repo = request.args.get("repo") or None
    for name, value in (("branch", branch), ("repo", repo)):
        if value is not None and len(value) > 255:
            raise PayloadError(f"{name} is longer than 255 characters", parameter=name)
    return {"status": status, "branch": branch, "repo": repo}


@bp.get("/builds")
def list_builds() -> Response:
    rt = get_runtime()
    offset = _int_arg("offset", 0, 0, 10**9)
    limit = _int_arg("limit", rt.settings.max_rows_per_page, 1, MAX_LIMIT)
    builds, total = rt.store.list_builds(offset=offset, limit=limit, **list_filters())
    return jsonify(
        {"builds": [build_json(b) for b in builds], "total": total, "offset": offset, "limit": limit}
    )


@bp.post("/builds")
def trigger_build() -> Response:
    who = writer()
    data = _body()
    build = actions.trigger_build(
        get_runtime(), data.get("repo"), data.get("ref"), data.get("sha"), by=who.name
    )
    return _created(build)


@bp.get("/builds/<int:build_id>")
def get_build(build_id: int) -> Response:
    store = get_runtime().store
    d = build_json(store.get_build(build_id))
    d["notifications"] = [n.public() for n in store.notifications.for_build(build_id)]
    return jsonify(d)


@bp.post("/builds/<int:build_id>/rerun")
def rerun_build(build_id: int) -> Response:
    who = writer()
    return _created(actions.rerun(get_runtime(), build_id, by=who.name))


@bp.post("/builds/<int:build_id>/cancel")
def cancel_build(build_id: int) -> Response:
    who = writer()
    build = actions.cancel(get_runtime(), build_id, by=who.name)
    resp = jsonify(build_json(build))
    resp.status_code = 202
    return resp


@bp.post("/builds/<int:build_id>/deploy/<command>")
def deploy_command(build_id: int, command: str) -> Response:
    """pause | resume | abort | promote a running canary (or watch) of this build."""
    who = writer()
    build = actions.deploy_command(get_runtime(), build_id, command, by=who.name)
    resp = jsonify({**build_json(build), "command": command})
    resp.status_code = 202
    return resp


@bp.post("/builds/<int:build_id>/promote")
def promote_build(build_id: int) -> Response:
    who = writer()
    env = _body().get("environment")
    return _created(actions.promote(get_runtime(), build_id, env, by=who.name))


@bp.post("/environments/<env>/rollback")
def rollback_environment(env: str) -> Response:
    who = writer()
    repo = _body().get("repo")
    return _created(actions.rollback(get_runtime(), repo, env, by=who.name))


# -- logs -----------------------------------------------------------------------------------------


@bp.get("/builds/<int:build_id>/log")
def get_log(build_id: int) -> Response:
    """The whole log as text, streamed a few thousand lines per Redis round trip (a capped log is
    up to max_log_bytes; it is never built as one response). 410 when retention pruned the log."""
    store = get_runtime().store
    build = store.get_build(build_id)
    if build.log_pruned:
        return error_response(
            "log_pruned", f"the log of build {build_id} was pruned by retention: {build.log_pruned}", 410
        )
    return Response(stream_with_context(_log_chunks(store, build_id)), mimetype="text/plain")


def _log_chunks(store: Any, build_id: int) -> Iterator[str]:
    try:
        yield from store.iter_log_text(build_id)
    except StoreUnavailable as exc:  # the status line is sent already: say so in the text
        yield f"[mlship] the rest of the log could not be read: {exc.message}\n"


def _sse(event: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


def log_events(store: Any, build_id: int, after: str, seconds: float = STREAM_SECONDS) -> Iterator[str]:
    """SSE frames: every log line after ``after``, following until the build ends or ``seconds`` pass.

    Ends with an ``end`` event (the build's final status) once the build finished and its log is
    drained; otherwise closes quietly and the client resumes with Last-Event-ID.
    """
    yield f"retry: {RETRY_MS}\n\n"
    deadline = time.monotonic() + seconds
    last = after
    try:
        while time.monotonic() < deadline:
            batch = store.read_log(build_id, after=last, count=500)
            if not batch:
                build = store.get_build(build_id)
                if build.status.finished:
                    # The runner closes its log writer before it sets the final status: drained.
                    yield _sse("end", {"status": str(build.status), "error": build.error}, last)
                    return
                batch = store.read_log(build_id, after=last, count=500, block_ms=BLOCK_MS)
            if not batch:
                yield ": keep-alive\n\n"
                continue
            for entry_id, fields in batch:
                last = entry_id
                yield _sse(
                    "log",
                    {
                        "step": fields.get("step", ""),
                        "stream": fields.get("stream", ""),
                        "text": fields.get("text", ""),
                        "ts": fields.get("ts", ""),
                    },
                    entry_id,
                )
    except StoreUnavailable as exc:
        yield _sse("error", {"code": exc.code, "message": exc.message})


class StreamSlots:
    """Open live-log streams of this process: at most ``total``, and ``per_client`` per address, so
    readers (anonymous by default) cannot hold every connection the server has."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def take(self, client: str, total: int, per_client: int) -> bool:
        with self._lock:
            if sum(self._open.values()) >= total or self._open[client] >= per_client:
                return False
            self._open[client] += 1
            return True

    def give_back(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]


STREAMS = "mlship.streams"  # app.extensions key: each app (gunicorn process) counts its own streams


@bp.record_once
def _stream_slots(state: Any) -> None:
    state.app.extensions[STREAMS] = StreamSlots()


@bp.get("/builds/<int:build_id>/log/stream")
def stream_log(build_id: int) -> Response:
    store = get_runtime().store
    store.get_build(build_id)
    after = request.headers.get("Last-Event-ID") or request.args.get("after") or "0-0"
    if not _STREAM_ID.match(after):
        raise PayloadError("Last-Event-ID / after must be a log entry id like 1700000000000-0")
    seconds = float(current_app.config.get("MLSHIP_STREAM_SECONDS", STREAM_SECONDS))
    client = request.remote_addr or "-"
    total = int(current_app.config.get("MLSHIP_MAX_STREAMS", MAX_STREAMS))
    per_client = int(current_app.config.get("MLSHIP_MAX_STREAMS_PER_CLIENT", MAX_STREAMS_PER_CLIENT))
    slots: StreamSlots = current_app.extensions[STREAMS]
    if not slots.take(client, total, per_client):
        busy = error_response(
            "too_many_streams",
            f"too many open log streams (at most {per_client} per client, {total} per server process); "
            f"retry in {STREAM_RETRY_AFTER} s or read the text log",
            429,
        )
        busy.headers["Retry-After"] = str(STREAM_RETRY_AFTER)
        return busy
    resp = Response(log_events(store, build_id, after, seconds), mimetype="text/event-stream")
    resp.call_on_close(lambda: slots.give_back(client))
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return resp


# -- deliveries, environments ----------------------------------------------------------------------


@bp.get("/deliveries")
def list_deliveries() -> Response:
    rt = get_runtime()
    offset = _int_arg("offset", 0, 0, 10**9)
    limit = _int_arg("limit", rt.settings.max_rows_per_page, 1, MAX_LIMIT)
    items, total = rt.store.list_deliveries(offset=offset, limit=limit)
    # Deliveries rejected before their signature was verified have no records: a count and a sample.
    rejected = {"count": rt.store.counters("deliveries").get("rejected", 0), "sample": []}
    rejected["sample"] = [d.to_dict() for d in rt.store.rejected_sample(limit)]
    return jsonify(
        {
            "deliveries": [d.to_dict() for d in items],
            "total": total,
            "offset": offset,
            "limit": limit,
            "rejected_unverified": rejected,
        }
    )


def environments_view(history: int = 10) -> list[dict[str, Any]]:
    """Every (repo, environment) with what runs there now (``runs``: per host; ``mixed`` when hosts
    run different builds) and its recent history."""
    store = get_runtime().store
    out = []
    for repo, env in store.environments():
        current = store.get_deployment(repo, env)
        out.append(
            {
                "repo": repo,
                "environment": env,
                "current": current.to_dict() | {"runs": current.host_runs()} if current else None,
                "history": [d.to_dict() for d in store.deployment_history(repo, env, limit=history)],
            }
        )
    return out


@bp.get("/environments")
def list_environments() -> Response:
    return jsonify({"environments": environments_view()})


@bp.get("/environments/<env>/edge")
def inspect_edge(env: str) -> Response:
    """The environment's HAProxy edge on every host: per-server state, weight and counters."""
    from orchestrator.deploy.edgectl import inspect

    repo = request.args.get("repo", "")
    if not repo:
        raise PayloadError("add ?repo=owner/name: the repository whose environment to inspect")
    rt = get_runtime()
    return jsonify(inspect(rt.settings, rt.store, repo, env))


@bp.get("/openapi.json")
def openapi() -> Response:
    from orchestrator.web.openapi import document

    return jsonify(document())


@bp.get("/")
def index() -> Response:
    return jsonify({"openapi": url_for("api.openapi"), "builds": url_for("api.list_builds")})

"""POST /webhooks/github: verify → record → match → dedup → build + job in one transaction → 202.

Every delivery gets a verdict (queued, duplicate, ignored, rejected, failed), a record in the store
(kept ``delivery_ttl_days``), a counter for /metrics and one JSON log line. A redelivery of a
delivery that succeeded (queued, duplicate, ignored) gets the same status and body again and no new
build; one that failed (503, or received but never finished) is processed again.

``/webhooks/github/<owner>/<name>`` is the same endpoint scoped to one repository: only that
repository's secrets are tried and the payload must be about it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from flask.blueprints import BlueprintSetupState

from . import applog, github, jobs
from . import runtime as get_runtime
from .config import RepoConfig, Settings
from .errors import (
    ConfigError,
    PayloadError,
    PayloadTooLarge,
    SignatureError,
    StoreUnavailable,
    UnsupportedContentType,
)
from .models import Build, Delivery
from .store import BuildRef, Replay

bp = Blueprint("webhooks", __name__)
log = applog.get("webhooks")

EXTENSION = "mlship.webhooks"
SUCCESS = frozenset({"queued", "duplicate", "ignored"})  # a redelivery of these is answered from the record
_STATUS = {SignatureError: 401, PayloadTooLarge: 413, UnsupportedContentType: 415, PayloadError: 400}
_MAX_REASON = 1000


@dataclass(frozen=True)
class Keyring:
    """Every configured webhook secret (distinct values) and the repositories each belongs to."""

    secrets: tuple[bytes, ...] = ()
    owners: tuple[frozenset[str], ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """Resolve every repository's secrets now, so a missing or empty one fails at start."""
        owners: dict[bytes, set[str]] = {}
        for repo in settings.repositories.values():
            for name, secret in zip(repo.webhook_secrets, settings.webhook_secrets(repo), strict=True):
                if not secret.strip():
                    raise ConfigError(f"secret {name} (webhook secret of {repo.full_name}) is blank: "
                                      "set a non-empty value", secret=name)
                owners.setdefault(secret, set()).add(repo.full_name)
        return cls(tuple(owners), tuple(frozenset(v) for v in owners.values()))

    def only(self, repo: str) -> Keyring:
        pairs = [(s, o) for s, o in zip(self.secrets, self.owners, strict=True) if repo in o]
        return Keyring(tuple(s for s, _ in pairs), tuple(o for _, o in pairs))


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass
class Intake:
    """What the endpoint needs, resolved once per app."""

    settings: Settings
    keyring: Keyring
    job: Any = field(default=None)  # jobs.job_commands: the build's RQ job as commands


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    rt = state.app.extensions["mlship"]
    settings: Settings = rt.settings
    if settings.max_body_bytes <= 0:
        raise ConfigError("max_body_bytes must be positive: set ORCHESTRATOR_MAX_BODY_BYTES")
    keyring = Keyring.from_settings(settings)
    job = jobs.job_commands(rt.queue, settings.build_timeout)
    state.app.extensions[EXTENSION] = Intake(settings, keyring, job)
    if not logging_configured():
        applog.configure(settings.secret_values())
    if not settings.repositories:
        applog.event(log, "config", level=logging.WARNING,
                     reason="no repositories are allow-listed: every delivery will be ignored; "
                     "add them under repositories: in ORCHESTRATOR_CONFIG")


def logging_configured() -> bool:
    return any(getattr(h, "mlship", False) for h in logging.getLogger(applog.LOGGER).handlers)


@bp.post("/webhooks/github")
@bp.post("/webhooks/github/<owner>/<name>")
def receive(owner: str | None = None, name: str | None = None) -> Response:
    g.webhook_start = start = time.perf_counter()
    intake: Intake = current_app.extensions[EXTENSION]
    d = Delivery(id="", event="")
    try:
        answer = _process(intake, d, f"{owner}/{name}" if owner else None)
    except StoreUnavailable as exc:
        answer = _verdict(d, 503, "failed", f"{exc}; the delivery was not processed, redeliver it later")
        answer.body["error"] = exc.code
    except Exception as exc:  # answer GitHub (so it can redeliver) and keep the traceback in the log
        applog.event(log, "error", level=logging.ERROR, delivery=d.id, error=repr(exc)[:300])
        log.exception("webhook delivery %s failed", d.id)
        answer = _verdict(d, 500, "failed", "internal error: see the service log; redeliver after fixing it")
    d.duration_ms = applog.now_ms(start)
    _log(d, answer)
    return Response(json.dumps(answer.body), answer.status, mimetype="application/json")


def _process(intake: Intake, d: Delivery, scope: str | None) -> Answer:
    settings = intake.settings
    rt = get_runtime()
    try:
        meta = github.parse_meta(request.headers)
    except PayloadError as exc:
        return _reject(d, exc)  # no usable id: logged, not recorded
    d.id, d.event = meta.delivery_id, meta.event
    keyring = intake.keyring
    if scope is not None:
        if settings.repo(scope) is None:
            return _recorded(rt, _verdict(d, 404, "rejected", f"repository {scope} is not allow-listed: "
                                          "add it under repositories: in the server configuration"), d)
        keyring = keyring.only(scope)
    try:
        _check_content_type(request.mimetype)
        body = _read_body(settings.max_body_bytes)
        secret = github.verify_signature(body, request.headers.get(github.SIGNATURE_HEADER), keyring.secrets)
    except (PayloadError, SignatureError) as exc:
        return _recorded(rt, _reject(d, exc), d)
    except ConfigError as exc:  # no secret configured at all: nothing can be verified
        return _recorded(rt, _verdict(d, 401, "rejected", str(exc)), d)

    try:
        payload = github.parse_body(body)
        repo_name = github.repository_of(payload)
    except PayloadError as exc:
        return _finish(rt, _reject(d, exc), d)
    d.repo = repo_name or ""
    if repo_name is None:
        if d.event == "ping":  # organization and app hooks ping without a repository
            decision = github.ping(payload)
            return _finish(rt, _ignored(d, decision), d)
        return _finish(rt, _reject(d, PayloadError("the payload has no repository.full_name")), d)
    if scope is not None and repo_name != scope:
        return _finish(rt, _reject(d, PayloadError(
            f"the payload is about {repo_name} but was sent to the URL of {scope}")), d)
    repo = settings.repo(repo_name)
    if repo is None:
        return _finish(rt, _verdict(d, 200, "ignored", f"repository {repo_name} is not allow-listed: add it "
                                    "under repositories: in the server configuration to build it"), d)
    if repo_name not in keyring.owners[secret]:
        return _finish(rt, _reject(d, SignatureError(
            f"{github.SIGNATURE_HEADER} does not match a webhook secret of {repo_name}")), d)

    # From here on, one round trip settles the delivery: if this id already succeeded, its record
    # answers (no new build); otherwise the verdict is recorded — for a build, in the same atomic
    # script as the build and its job, so no crash can leave one without the others. Deciding is
    # pure, so it comes first. Pings are stateless and simply answered again.
    try:
        decision = github.decide(d.event, payload, repo)
    except PayloadError as exc:
        return _finish(rt, _reject(d, exc), d, SUCCESS)
    d.action, d.ref, d.sha = decision.action, decision.ref, decision.sha
    if decision.trigger is None:
        return _finish(rt, _ignored(d, decision), d, SUCCESS if d.event != "ping" else ())
    return _build(rt, intake, repo, decision, d)


def _build(rt: Any, intake: Intake, repo: RepoConfig, decision: github.Decision, d: Delivery) -> Answer:
    assert decision.trigger is not None
    why = decision.reason
    if len(why) > _MAX_REASON - 200:  # leaves room for the number and the first delivery's id
        why = why[:_MAX_REASON - 200] + "…"
    d.duration_ms = applog.now_ms(g.webhook_start)
    build, prior = rt.store.intake_build(
        d, decision.trigger, pipeline=repo.pipeline, job=intake.job, replay=SUCCESS,
        queued_reason=f"{why}: queued as build #",
        duplicate_reason=f"{why}: commit {decision.trigger.sha[:7]} is already build #",
    )
    if prior is not None:
        return _replay(intake.settings, prior, d)
    return _with_build(Answer(d.status_code, _body(d)), build, intake.settings)


# -- verdicts and answers ---------------------------------------------------------------------------


def _verdict(d: Delivery, status: int, verdict: str, reason: str) -> Answer:
    if len(reason) > _MAX_REASON:
        reason = reason[:_MAX_REASON] + "…"
    d.verdict, d.reason, d.status_code = verdict, reason, status
    return Answer(status, _body(d))


def _body(d: Delivery) -> dict[str, Any]:
    return {"delivery": d.id, "verdict": d.verdict, "reason": d.reason}


def _reject(d: Delivery, exc: PayloadError | SignatureError) -> Answer:
    status = next(code for cls, code in _STATUS.items() if isinstance(exc, cls))
    answer = _verdict(d, status, "rejected", str(exc))
    answer.body["error"] = exc.code
    return answer


def _ignored(d: Delivery, decision: github.Decision) -> Answer:
    answer = _verdict(d, 200, "ignored", decision.reason)
    if decision.zen is not None:
        answer.body["zen"] = decision.zen
    return answer


def _with_build(answer: Answer, build: Build | BuildRef, settings: Settings) -> Answer:
    answer.body.update(build=build.id, number=build.number, url=f"{settings.public_url}/builds/{build.id}")
    return answer


def _replay(settings: Settings, prior: Replay, d: Delivery) -> Answer:
    """The answer a successful delivery got, rebuilt from its record (no new build)."""
    d.__dict__.update(prior.delivery.__dict__)
    answer = Answer(prior.delivery.status_code, _body(prior.delivery), replayed=True)
    if prior.build is not None:
        _with_build(answer, prior.build, settings)
    return answer


# -- recording --------------------------------------------------------------------------------------


def _finish(rt: Any, answer: Answer, d: Delivery, replay: frozenset[str] | tuple[()] = ()) -> Answer:
    """Record the verdict (the delivery's final state) and count it, in one round trip; if the record
    of this id already has a verdict in ``replay``, answer from it instead."""
    d.duration_ms = applog.now_ms(g.webhook_start)
    prior = rt.store.settle_delivery(d, replay)
    if prior is not None:
        return _replay(get_runtime().settings, prior, d)
    return answer


def _recorded(rt: Any, answer: Answer, d: Delivery) -> Answer:
    """Record a delivery rejected before its signature was verified, without ever overwriting a record.

    The sender is not authenticated, so it may not replace what a genuine delivery of that id left;
    a store outage must not turn a 4xx into a 503 either.
    """
    with contextlib.suppress(StoreUnavailable):
        rt.store.record_unverified(d)
    return answer


def _log(d: Delivery, answer: Answer) -> None:
    level = logging.INFO if answer.status < 400 else logging.WARNING if answer.status < 500 else logging.ERROR
    applog.event(
        log, "delivery", level=level, delivery=d.id, github_event=d.event, repo=d.repo, action=d.action,
        ref=d.ref, sha=d.sha, verdict=d.verdict, reason=d.reason, status=answer.status, build=d.build_id,
        duration_ms=d.duration_ms, replayed=answer.replayed,
    )


# -- request checks ---------------------------------------------------------------------------------


def _check_content_type(mimetype: str) -> None:
    if mimetype == "application/json":
        return
    if mimetype == "application/x-www-form-urlencoded":
        raise UnsupportedContentType(
            "this webhook sends application/x-www-form-urlencoded: in the GitHub webhook settings, "
            "set Content type to application/json"
        )
    raise UnsupportedContentType(f"Content-Type must be application/json, not '{mimetype or 'none'}'")


def _read_body(limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes (Content-Length checked first; chunked bodies counted)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body has {length} bytes; the limit is {limit} (max_body_bytes)")
    stream = request.stream
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = stream.read(min(1 << 16, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise PayloadTooLarge(f"the body is over the limit of {limit} bytes (max_body_bytes)")
    return b"".join(chunks)


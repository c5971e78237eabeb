"""POST /webhooks/<forge>: verify → record → match → dedup → build + job in one transaction → 202.

Every delivery gets a verdict (queued, duplicate, ignored, rejected, failed), a counter for /metrics
and one JSON log line. A verified delivery gets a record in the store (kept ``delivery_ttl_days``,
the redelivery window); one rejected before its signature was verified is only counted and kept in a
bounded sample (an unauthenticated sender creates no key of its own). A redelivery of a delivery
that succeeded (queued, duplicate, ignored) gets the same status and body again and no new build;
one that failed (503, or rejected) is processed again.

``/webhooks/github/<owner>/<name>`` is the same endpoint scoped to one repository: only that
repository's secrets are tried and the payload must be about it. Whether a repository is
configured is told only to a sender whose signature verified (no repository oracle). The same flow
serves every forge (``intake/forge.py``): the URL names the forge, whose module authenticates and
reads the delivery.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import RequestEntityTooLarge

from orchestrator import servicelog as applog
from orchestrator.build import queue as jobs
from orchestrator.config import RepoConfig, Settings
from orchestrator.errors import (
    ConfigError,
    NotFound,
    NotReplicated,
    PayloadError,
    PayloadTooLarge,
    SignatureError,
    StoreUnavailable,
    UnsupportedContentType,
)
from orchestrator.intake import gitea, github, gitlab
from orchestrator.intake.forge import Decision, Forge
from orchestrator.models import Build, Delivery
from orchestrator.store import FINAL, BuildRef, Replay

bp = Blueprint("webhooks", __name__)
log = applog.get("webhooks")

EXTENSION = "mlship.webhooks"
SUCCESS = frozenset(FINAL)  # a redelivery of these is answered from the record
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
                    raise ConfigError(
                        f"secret {name} (webhook secret of {repo.full_name}) is blank: set a non-empty value",
                        secret=name,
                    )
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
    store: Any
    enqueue: Any  # jobs.enqueuer: adds the build's RQ job to the create_build transaction


@dataclass
class Incoming:
    """One POST to a webhook URL, as the handler needs it."""

    headers: Any  # case-insensitive ``.get``
    mimetype: str
    content_length: int | None
    stream: Any
    scope: str | None  # owner/name of a per-repository URL
    start: float = field(default_factory=time.perf_counter)
    forge: Forge = github  # the forge the URL names


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    rt = state.app.extensions["mlship"]
    settings: Settings = rt.settings
    if settings.max_body_bytes <= 0:
        raise ConfigError("max_body_bytes must be positive: set MLSHIP_MAX_BODY_BYTES")
    keyring = Keyring.from_settings(settings)
    enqueue = jobs.enqueuer(jobs.intake_queue(settings), settings.build_timeout)
    state.app.extensions[EXTENSION] = Intake(settings, keyring, rt.store, enqueue)
    if not logging_configured():
        applog.configure(settings.secret_values())
    if not settings.repositories:
        applog.event(
            log,
            "config",
            level=logging.WARNING,
            reason="no repositories are allow-listed: every delivery will be ignored; "
            "add them under repositories: in MLSHIP_CONFIG",
        )


def logging_configured() -> bool:
    return any(getattr(h, "mlship", False) for h in logging.getLogger(applog.LOGGER).handlers)


@bp.post("/webhooks/github")
@bp.post("/webhooks/github/<owner>/<name>")
def receive(owner: str | None = None, name: str | None = None) -> Response:
    return _receive(github, f"{owner}/{name}" if owner else None)


@bp.post("/webhooks/gitlab")
@bp.post("/webhooks/gitlab/<path:project>")  # nested groups: group/subgroup/project
def receive_gitlab(project: str | None = None) -> Response:
    return _receive(gitlab, project)


@bp.post("/webhooks/gitea")
@bp.post("/webhooks/gitea/<owner>/<name>")
def receive_gitea(owner: str | None = None, name: str | None = None) -> Response:
    return _receive(gitea, f"{owner}/{name}" if owner else None)


def _receive(forge: Forge, scope: str | None) -> Response:
    intake: Intake = current_app.extensions[EXTENSION]
    # The webhook's own cap (GitHub sends up to 25 MB) instead of the app's form cap; one byte more,
    # because _read_body reads limit + 1 bytes to tell a body at the limit from one over it.
    request.max_content_length = intake.settings.max_body_bytes + 1
    try:
        stream = request.stream
    except RequestEntityTooLarge:  # Content-Length over the cap: _read_body says so (a JSON 413)
        stream = None
    inc = Incoming(request.headers, request.mimetype, request.content_length, stream, scope, forge=forge)
    status, body = handle(intake, inc)
    return Response(body, status, mimetype="application/json")


def handle(intake: Intake, inc: Incoming) -> tuple[int, bytes]:
    """Process one delivery: (HTTP status, JSON body). Logs one line; never raises."""
    d = Delivery(id="", event="")
    try:
        answer = _process(intake, d, inc)
    except NotReplicated as exc:  # recorded on the primary only: a redelivery is answered from the record
        answer = _verdict(d, 503, "failed", f"{exc}; redeliver it: no second build is made")
        answer.body["error"] = exc.code
    except StoreUnavailable as exc:
        answer = _verdict(d, 503, "failed", f"{exc}; the delivery was not processed, redeliver it later")
        answer.body["error"] = exc.code
    except Exception as exc:  # answer GitHub (so it can redeliver) and keep the traceback in the log
        applog.event(log, "error", level=logging.ERROR, delivery=d.id, error=repr(exc)[:300])
        log.exception("webhook delivery %s failed", d.id)
        answer = _verdict(d, 500, "failed", "internal error: see the service log; redeliver after fixing it")
    d.duration_ms = applog.now_ms(inc.start)
    _log(d, answer)
    return answer.status, orjson.dumps(answer.body)


def _process(intake: Intake, d: Delivery, inc: Incoming) -> Answer:
    try:
        meta = inc.forge.parse_meta(inc.headers)
    except PayloadError as exc:
        return _reject(d, exc)  # no usable id: logged, not recorded
    d.id, d.event = meta.delivery_id, meta.event
    try:
        body, owners = _verify(intake, inc)
    except (PayloadError, SignatureError) as exc:
        return _unverified(intake.store, _reject(d, exc), d)
    except ConfigError as exc:  # no secret configured at all: nothing can be verified
        return _unverified(intake.store, _verdict(d, 401, "rejected", str(exc)), d)
    return _verified(intake, inc, d, body, owners)


def _verify(intake: Intake, inc: Incoming) -> tuple[bytes, frozenset[str]]:
    """The body and the repositories whose secret signed it.

    At a per-repository URL only that repository's secrets are tried; at the URL of a repository
    that is not configured, every secret is (so an unsigned or badly signed POST is answered the same
    either way, and only a verified sender learns that the repository is unknown)."""
    _check_content_type(inc.mimetype, inc.forge.TITLE)
    body = _read_body(inc, intake.settings.max_body_bytes)
    keyring = intake.keyring
    if inc.scope is not None and intake.settings.repo(inc.scope) is not None:
        keyring = keyring.only(inc.scope)
    secret = inc.forge.verify(body, inc.headers, keyring.secrets)
    return body, keyring.owners[secret]


def _verified(intake: Intake, inc: Incoming, d: Delivery, body: bytes, owners: frozenset[str]) -> Answer:
    """A delivery whose signature verified: recorded, answered from its record if it is a redelivery."""
    try:
        payload = inc.forge.parse_body(body)
        d.repo = inc.forge.repository_of(payload) or ""
        early = _check_repository(intake.settings, inc, d, payload, owners)
    except (PayloadError, SignatureError) as exc:
        return _finish(intake, inc, _reject(d, exc), d)
    if early is not None:
        return _finish(intake, inc, early, d)
    repo = intake.settings.repo(d.repo)
    assert repo is not None  # _check_repository answered otherwise
    # From here on, one round trip settles the delivery: if this id already succeeded, its record
    # answers (no new build); otherwise the verdict is recorded — for a build, in the same transaction
    # as the build and its job, so no crash can leave one without the others. Deciding is pure, so
    # it comes first. Pings are stateless and simply answered again.
    try:
        decision = inc.forge.decide(d.event, payload, repo)
    except PayloadError as exc:
        return _finish(intake, inc, _reject(d, exc), d, SUCCESS)
    d.action, d.ref, d.sha = decision.action, decision.ref, decision.sha
    if decision.trigger is None:
        return _finish(intake, inc, _ignored(d, decision), d, SUCCESS if d.event != "ping" else frozenset())
    return _build(intake, inc, repo, decision, d)


def _check_repository(
    settings: Settings, inc: Incoming, d: Delivery, payload: dict[str, Any], owners: frozenset[str]
) -> Answer | None:
    """The answer for a verified delivery that is not about an allow-listed repository it may speak
    for (None when it is); PayloadError or SignatureError to reject it."""
    scope, forge = inc.scope, inc.forge
    if scope is not None and settings.repo(scope) is None:
        return _verdict(
            d,
            404,
            "rejected",
            f"repository {scope} is not allow-listed: add it under repositories: in the server configuration",
        )
    if not d.repo:
        if d.event == "ping":  # organization and app hooks ping without a repository
            return _ignored(d, forge.ping(payload))
        raise PayloadError(f"the payload has no {forge.REPOSITORY_FIELD}")
    if scope is not None and d.repo != scope:
        raise PayloadError(f"the payload is about {d.repo} but was sent to the URL of {scope}")
    repo = settings.repo(d.repo)
    if repo is None:
        return _verdict(
            d,
            200,
            "ignored",
            f"repository {d.repo} is not allow-listed: add it under repositories: "
            "in the server configuration to build it",
        )
    if d.repo not in owners:
        raise SignatureError(f"{forge.SIGNATURE_HEADER} does not match a webhook secret of {d.repo}")
    if repo.forge != forge.NAME:
        raise PayloadError(
            f"{repo.full_name} is configured with forge: {repo.forge}, but this delivery came to "
            f"/webhooks/{forge.NAME}: send it to /webhooks/{repo.forge} or correct forge: in the server "
            "configuration"
        )
    return None


def _build(intake: Intake, inc: Incoming, repo: RepoConfig, decision: Decision, d: Delivery) -> Answer:
    """Create the build as the API does (Store.create_build), with the delivery's verdict."""
    assert decision.trigger is not None
    why = decision.reason
    if len(why) > _MAX_REASON - 200:  # leaves room for the number and the first delivery's id
        why = why[: _MAX_REASON - 200] + "…"
    d.duration_ms = applog.now_ms(inc.start)
    received = d.received_at
    try:
        build, _ = intake.store.create_build(
            decision.trigger,
            pipeline=repo.pipeline,
            triggered_by=d.id,
            enqueue=intake.enqueue,
            delivery=d,
            reasons=(
                f"{why}: queued as build #",
                f"{why}: commit {decision.trigger.sha[:7]} is already build #",
            ),
        )
    except NotFound as exc:  # a redelivery whose build retention pruned: ``d`` is the earlier record
        answer = Answer(d.status_code, _body(d), replayed=True)
        answer.body.update(build=d.build_id, pruned=exc.message)
        return answer
    # On a redelivery of a queued or duplicate delivery, ``d`` is now the earlier record.
    answer = Answer(d.status_code, _body(d), replayed=d.received_at != received)
    return _with_build(answer, build, intake.settings)


# -- verdicts and answers ---------------------------------------------------------------------------


def _verdict(d: Delivery, status: int, verdict: str, reason: str) -> Answer:
    if len(reason) > _MAX_REASON:
        reason = reason[:_MAX_REASON] + "…"
    d.verdict, d.reason, d.status_code = verdict, reason, status
    return Answer(status, _body(d))


def _body(d: Delivery) -> dict[str, Any]:
    return {"delivery": d.id, "verdict": d.verdict, "reason": d.reason}


def _reject(d: Delivery, exc: PayloadError | SignatureError) -> Answer:
    answer = _verdict(d, exc.http_status, "rejected", str(exc))
    answer.body["error"] = exc.code
    return answer


def _ignored(d: Delivery, decision: Decision) -> Answer:
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


def _finish(
    intake: Intake, inc: Incoming, answer: Answer, d: Delivery, replay: frozenset[str] | tuple[()] = ()
) -> Answer:
    """Record the verdict (the delivery's final state) and count it, in one round trip; if the record
    of this id already has a verdict in ``replay``, answer from it instead."""
    d.duration_ms = applog.now_ms(inc.start)
    prior = intake.store.settle_delivery(d, replay)
    if prior is not None:
        return _replay(intake.settings, prior, d)
    return answer


def _unverified(store: Any, answer: Answer, d: Delivery) -> Answer:
    """Count a delivery rejected before its signature was verified and keep it in the bounded sample.

    The sender is not authenticated: it gets no record of its own (so it can neither fill Redis with
    fresh ids nor touch a genuine delivery's record), and a store outage must not turn a 4xx into a 503.
    """
    with contextlib.suppress(StoreUnavailable):
        store.reject_unverified(d)
    return answer


def _log(d: Delivery, answer: Answer) -> None:
    level = logging.INFO if answer.status < 400 else logging.WARNING if answer.status < 500 else logging.ERROR
    applog.event(
        log,
        "delivery",
        level=level,
        delivery=d.id,
        github_event=d.event,
        repo=d.repo,
        action=d.action,
        ref=d.ref,
        sha=d.sha,
        verdict=d.verdict,
        reason=d.reason,
        status=answer.status,
        build=d.build_id,
        duration_ms=d.duration_ms,
        replayed=answer.replayed,
    )


# -- request checks ---------------------------------------------------------------------------------


def _check_content_type(mimetype: str, forge: str = "GitHub") -> None:
    if mimetype == "application/json":
        return
    if mimetype == "application/x-www-form-urlencoded":
        raise UnsupportedContentType(
            f"this webhook sends application/x-www-form-urlencoded: in the {forge} webhook settings, "
            "set Content type to application/json"
        )
    raise UnsupportedContentType(f"Content-Type must be application/json, not '{mimetype or 'none'}'")


def _read_body(inc: Incoming, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes (Content-Length checked first; chunked bodies counted)."""
    length = inc.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body has {length} bytes; the limit is {limit} (max_body_bytes)")
    chunks: list[bytes] = []
    total = 0
    try:
        while total <= limit:
            chunk = inc.stream.read(min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except RequestEntityTooLarge:  # a chunked body past the cap (werkzeug counts it too)
        total = limit + 1
    if total > limit:
        raise PayloadTooLarge(f"the body is over the limit of {limit} bytes (max_body_bytes)")
    return b"".join(chunks)

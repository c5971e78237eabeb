"""POST /webhooks/<forge>: verify → record → match → dedup → build + job in one transaction → 202.

Every delivery gets a verdict (queued, duplicate, ignored, rejected, failed), a record in the store
(kept ``delivery_ttl_days``), a counter for /metrics and one JSON log line. A redelivery of a
delivery that succeeded (queued, duplicate, ignored) gets the same status and body again and no new
build; one that failed (503, or received but never finished) is processed again.

``/webhooks/github/<owner>/<name>`` is the same endpoint scoped to one repository: only that
repository's secrets are tried and the payload must be about it. The same flow serves every forge
(``intake/forge.py``): the URL names the forge, whose module authenticates and reads the delivery.
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
from werkzeug.datastructures import EnvironHeaders
from werkzeug.http import HTTP_STATUS_CODES, parse_options_header
from werkzeug.wsgi import get_content_length, get_input_stream

from orchestrator import servicelog as applog
from orchestrator.build import queue as jobs
from orchestrator.config import RepoConfig, Settings
from orchestrator.errors import (
    ConfigError,
    PayloadError,
    PayloadTooLarge,
    SignatureError,
    StoreUnavailable,
    UnsupportedContentType,
)
from orchestrator.intake import gitea, github, gitlab
from orchestrator.intake.forge import Decision, Forge
from orchestrator.models import Build, Delivery
from orchestrator.store import BuildRef, Replay
from orchestrator.web import metrics

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
    store: Any = field(default=None)
    job: Any = field(default=None)  # jobs.job_commands: the build's RQ job as commands


@dataclass
class Incoming:
    """One POST to a webhook URL, as the handler needs it: from Flask's request or straight from the
    WSGI environ (``FastPath``), so both run the same code."""

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
    job = jobs.job_commands(rt.queue, settings.build_timeout)
    state.app.extensions[EXTENSION] = Intake(settings, keyring, rt.store, job)
    app: Any = state.app
    app.wsgi_app = FastPath(app.wsgi_app, app.extensions[EXTENSION])
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
    """The Flask route (FastPath answers these POSTs first; this serves apps mounted without it)."""
    inc = Incoming(
        request.headers,
        request.mimetype,
        request.content_length,
        request.stream,
        f"{owner}/{name}" if owner else None,
    )
    status, body = handle(current_app.extensions[EXTENSION], inc)
    return Response(body, status, mimetype="application/json")


@bp.post("/webhooks/gitlab")
@bp.post("/webhooks/gitlab/<path:project>")  # nested groups: group/subgroup/project
def receive_gitlab(project: str | None = None) -> Response:
    return _receive(gitlab, project)


@bp.post("/webhooks/gitea")
@bp.post("/webhooks/gitea/<owner>/<name>")
def receive_gitea(owner: str | None = None, name: str | None = None) -> Response:
    return _receive(gitea, f"{owner}/{name}" if owner else None)


def _receive(forge: Forge, scope: str | None) -> Response:
    inc = Incoming(
        request.headers, request.mimetype, request.content_length, request.stream, scope, forge=forge
    )
    status, body = handle(current_app.extensions[EXTENSION], inc)
    return Response(body, status, mimetype="application/json")


def handle(intake: Intake, inc: Incoming) -> tuple[int, bytes]:
    """Process one delivery: (HTTP status, JSON body). Logs one line; never raises."""
    d = Delivery(id="", event="")
    try:
        answer = _process(intake, d, inc)
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
    settings, scope, store, forge = intake.settings, inc.scope, intake.store, inc.forge
    try:
        meta = forge.parse_meta(inc.headers)
    except PayloadError as exc:
        return _reject(d, exc)  # no usable id: logged, not recorded
    d.id, d.event = meta.delivery_id, meta.event
    keyring = intake.keyring
    if scope is not None:
        if settings.repo(scope) is None:
            return _recorded(
                store,
                _verdict(
                    d,
                    404,
                    "rejected",
                    f"repository {scope} is not allow-listed: "
                    "add it under repositories: in the server configuration",
                ),
                d,
            )
        keyring = keyring.only(scope)
    try:
        _check_content_type(inc.mimetype, forge.TITLE)
        body = _read_body(inc, settings.max_body_bytes)
        secret = forge.verify(body, inc.headers, keyring.secrets)
    except (PayloadError, SignatureError) as exc:
        return _recorded(store, _reject(d, exc), d)
    except ConfigError as exc:  # no secret configured at all: nothing can be verified
        return _recorded(store, _verdict(d, 401, "rejected", str(exc)), d)

    try:
        payload = forge.parse_body(body)
        repo_name = forge.repository_of(payload)
    except PayloadError as exc:
        return _finish(intake, inc, _reject(d, exc), d)
    d.repo = repo_name or ""
    if repo_name is None:
        if d.event == "ping":  # organization and app hooks ping without a repository
            decision = forge.ping(payload)
            return _finish(intake, inc, _ignored(d, decision), d)
        return _finish(
            intake, inc, _reject(d, PayloadError(f"the payload has no {forge.REPOSITORY_FIELD}")), d
        )
    if scope is not None and repo_name != scope:
        return _finish(
            intake,
            inc,
            _reject(d, PayloadError(f"the payload is about {repo_name} but was sent to the URL of {scope}")),
            d,
        )
    repo = settings.repo(repo_name)
    if repo is None:
        return _finish(
            intake,
            inc,
            _verdict(
                d,
                200,
                "ignored",
                f"repository {repo_name} is not allow-listed: add it under repositories: "
                "in the server configuration to build it",
            ),
            d,
        )
    if (wrong := _not_for(forge, repo, keyring, secret)) is not None:
        return _finish(intake, inc, _reject(d, wrong), d)

    # From here on, one round trip settles the delivery: if this id already succeeded, its record
    # answers (no new build); otherwise the verdict is recorded — for a build, in the same atomic
    # script as the build and its job, so no crash can leave one without the others. Deciding is
    # pure, so it comes first. Pings are stateless and simply answered again.
    try:
        decision = forge.decide(d.event, payload, repo)
    except PayloadError as exc:
        return _finish(intake, inc, _reject(d, exc), d, SUCCESS)
    d.action, d.ref, d.sha = decision.action, decision.ref, decision.sha
    if decision.trigger is None:
        return _finish(intake, inc, _ignored(d, decision), d, SUCCESS if d.event != "ping" else ())
    return _build(intake, inc, repo, decision, d)


def _build(intake: Intake, inc: Incoming, repo: RepoConfig, decision: Decision, d: Delivery) -> Answer:
    assert decision.trigger is not None
    why = decision.reason
    if len(why) > _MAX_REASON - 200:  # leaves room for the number and the first delivery's id
        why = why[: _MAX_REASON - 200] + "…"
    d.duration_ms = applog.now_ms(inc.start)
    build, prior = intake.store.intake_build(
        d,
        decision.trigger,
        pipeline=repo.pipeline,
        job=intake.job,
        replay=SUCCESS,
        queued_reason=f"{why}: queued as build #",
        duplicate_reason=f"{why}: commit {decision.trigger.sha[:7]} is already build #",
    )
    if prior is not None:
        return _replay(intake.settings, prior, d)
    return _with_build(Answer(d.status_code, _body(d)), build, intake.settings)


def _not_for(
    forge: Forge, repo: RepoConfig, keyring: Keyring, secret: int
) -> PayloadError | SignatureError | None:
    """Why an authenticated delivery may not act on ``repo``: it was signed with another repository's
    secret, or it came to another forge's URL than the one ``repo`` is configured on."""
    if repo.full_name not in keyring.owners[secret]:
        return SignatureError(f"{forge.SIGNATURE_HEADER} does not match a webhook secret of {repo.full_name}")
    if repo.forge != forge.NAME:
        return PayloadError(
            f"{repo.full_name} is configured with forge: {repo.forge}, but this delivery came to "
            f"/webhooks/{forge.NAME}: send it to /webhooks/{repo.forge} or correct forge: in the server "
            "configuration"
        )
    return None


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


def _recorded(store: Any, answer: Answer, d: Delivery) -> Answer:
    """Record a delivery rejected before its signature was verified, without ever overwriting a record.

    The sender is not authenticated, so it may not replace what a genuine delivery of that id left;
    a store outage must not turn a 4xx into a 503 either.
    """
    with contextlib.suppress(StoreUnavailable):
        store.record_unverified(d)
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
    stream = inc.stream
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


# -- the lean path ----------------------------------------------------------------------------------

PATH = "/webhooks/github"
_STATUS_LINES = {code: f"{code} {name.upper()}" for code, name in HTTP_STATUS_CODES.items()}


class FastPath:
    """WSGI middleware: ``POST /webhooks/github[/<owner>/<name>]`` goes straight to ``handle``;
    everything else (other methods and paths included) goes on to Flask.

    Same handler, same answers, same request metric (endpoint ``webhooks.receive``); what it skips is
    Flask's per-request machinery that a delivery does not use — request context, session cookie
    signing, URL adapter, before/after hooks, the Response object — about a sixth of a delivery's CPU.
    """

    ENDPOINT = "webhooks.receive"

    def __init__(self, app: Any, intake: Intake) -> None:
        self.app = app
        self.intake = intake

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "POST" or not path.startswith(PATH):
            return self.app(environ, start_response)
        scope = _scope(path)
        if scope is None:
            return self.app(environ, start_response)
        inc = Incoming(
            EnvironHeaders(environ),
            parse_options_header(environ.get("CONTENT_TYPE", ""))[0],
            get_content_length(environ),
            get_input_stream(environ, max_content_length=None),
            scope or None,
        )
        status, body = handle(self.intake, inc)
        metrics.record_request(self.intake, "POST", self.ENDPOINT, status, inc.start)
        start_response(
            _STATUS_LINES.get(status) or str(status),
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]


def _scope(path: str) -> str | None:
    """'' for the general URL, 'owner/name' for a per-repository one, None for any other path
    (matching Flask's rule: exactly two non-empty segments, no trailing slash)."""
    if path == PATH:
        return ""
    rest = path[len(PATH) :]
    if not rest.startswith("/"):
        return None
    owner, sep, name = rest[1:].partition("/")
    if not sep or not owner or not name or "/" in name:
        return None
    return f"{owner}/{name}"

"""Status pages (server-rendered, small vanilla JS): builds, one build with its live log, deliveries,
environments; the HTML forms for the actions (signed-in session + CSRF); /healthz and /metrics.

Everything that comes from webhooks is data: Jinja autoescapes it, links are only http(s), and the
page scripts insert text with textContent.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import yaml
from flask import (
    Blueprint,
    Response,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from orchestrator import actions
from orchestrator import runtime as get_runtime
from orchestrator.errors import Forbidden, OrchestratorError, StoreUnavailable, Unauthorized
from orchestrator.models import Build, BuildStatus
from orchestrator.web import auth, metrics
from orchestrator.web.api import environments_view, list_filters, status_of

bp = Blueprint(
    "views", __name__, template_folder="templates", static_folder="static", static_url_path="/static"
)
LOG_PAGE_LINES = 5000
MAX_FORM_BYTES = 64 * 1024  # every form and API body is small; the webhook sets its own cap
_OPEN = {"views.login", "views.healthz", "views.metrics_page", "views.static"}


@bp.record_once
def _setup(state: Any) -> None:
    # flash() needs a session key; derive it from the CSRF secret (or the per-process key).
    app = state.app
    if app.config.get("MAX_CONTENT_LENGTH") is None:  # a bigger body is a 413 before it is read
        app.config["MAX_CONTENT_LENGTH"] = MAX_FORM_BYTES
    if not app.secret_key:
        app.secret_key = auth.signing_key(app.extensions["mlship"].settings)


# -- request hooks: metrics, session, read auth ----------------------------------------------------


@bp.before_app_request
def _start() -> None:
    g.mlship_started = time.perf_counter()


@bp.after_app_request
def _count(resp: BaseResponse) -> BaseResponse:
    endpoint = request.endpoint or "unmatched"
    if endpoint != "views.static" and "mlship_started" in g:
        metrics.record_request(get_runtime(), request.method, endpoint, resp.status_code, g.mlship_started)
    return resp


@bp.before_request
def _session() -> BaseResponse | None:
    settings = get_runtime().settings
    g.user = auth.check_session(settings, request.cookies.get(auth.SESSION_COOKIE))
    if settings.read_auth and g.user is None and request.endpoint not in _OPEN:
        return redirect(url_for("views.login", next=request.full_path))
    return None


@bp.app_context_processor
def _context() -> dict[str, Any]:
    cookie = request.cookies.get(auth.SESSION_COOKIE) if request else None
    user = g.get("user")
    token = auth.csrf_token(get_runtime().settings, cookie) if (user and cookie) else ""
    return {"user": user, "csrf_token": token, "statuses": [s.value for s in BuildStatus]}


@bp.errorhandler(OrchestratorError)
def _error(exc: OrchestratorError) -> tuple[str, int]:
    status = status_of(exc)
    return render_template("error.html", code=exc.code, message=exc.message, status=status), status


# -- template filters -------------------------------------------------------------------------------


@bp.app_template_filter("duration")
def duration(seconds: float | None) -> str:
    """1.2s, 42s, 3m 05s, 1h 02m."""
    if seconds is None:
        return "\u2013"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


@bp.app_template_filter("ago")
def ago(ts: float | None, now: float | None = None) -> str:
    """'just now', '5 min ago', '3 h ago', '2 days ago'."""
    if not ts:
        return "\u2013"
    delta = max(0, int((now or time.time()) - ts))
    if delta < 45:
        return "just now"
    if delta < 3600:
        return f"{max(1, round(delta / 60))} min ago"
    if delta < 86400:
        return f"{round(delta / 3600)} h ago"
    return f"{round(delta / 86400)} days ago"


@bp.app_template_filter("iso")
def iso(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds") if ts else ""


@bp.app_template_filter("http_url")
def http_url(url: str | None) -> str:
    """The URL if it is http(s), else '' (a webhook could send javascript: links)."""
    if not url:
        return ""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return ""
    return url if scheme in ("http", "https") else ""


@bp.app_template_filter("first_line")
def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


# -- pages ------------------------------------------------------------------------------------------


def _page_args(total: int, offset: int, limit: int, **filters: Any) -> dict[str, Any]:
    base = {k: v for k, v in filters.items() if v}

    def link(off: int) -> str:
        return "?" + urlencode({**base, **({"offset": off} if off else {})})

    return {
        "prev": link(max(0, offset - limit)) if offset > 0 else None,
        "next": link(offset + limit) if offset + limit < total else None,
        "first": offset + 1 if total else 0,
        "last": min(total, offset + limit),
        "total": total,
    }


def _offset() -> int:
    try:
        return max(0, int(request.args.get("offset", "0")))
    except ValueError:
        return 0


@bp.get("/")
def builds_page() -> str:
    rt = get_runtime()
    filters = list_filters()
    offset, limit = _offset(), rt.settings.max_rows_per_page
    builds, total = rt.store.list_builds(offset=offset, limit=limit, **filters)
    template = "_build_table.html" if request.args.get("fragment") == "rows" else "builds.html"
    return render_template(
        template, builds=builds, filters=filters, page=_page_args(total, offset, limit, **filters)
    )


def _environments_of(build: Build) -> list[str]:
    """Environment names in the pipeline the build ran with (for the promote form)."""
    try:
        data = yaml.safe_load(build.pipeline_yaml) if build.pipeline_yaml else None
    except yaml.YAMLError:
        return []
    envs = data.get("environments") if isinstance(data, dict) else None
    return sorted(str(e) for e in envs) if isinstance(envs, dict) else []


def _deployed_here(build: Build) -> list[str]:
    """Environments where this build is what runs now and an earlier deployment exists."""
    store = get_runtime().store
    out = []
    for repo, env in store.environments():
        if repo != build.repo:
            continue
        current = store.get_deployment(repo, env)
        if current and current.build_id == build.id and len(store.deployment_history(repo, env, 2)) > 1:
            out.append(env)
    return out


def build_actions(build: Build) -> dict[str, Any]:
    """Which buttons apply to this build now."""
    finished = build.status.finished
    promote_envs = (
        _environments_of(build) if build.status is BuildStatus.SUCCESS and build.trigger != "rollback" else []
    )
    return {
        "rerun": finished,
        "cancel": not finished,
        "canary": _canary_controls(build),
        "promote": promote_envs,
        "rollback": _deployed_here(build),
    }


CONTROLLABLE = ("running", "paused", "watching")


def _canary_controls(build: Build) -> list[str]:
    """The commands that apply to this build's progressive deploy now (none once it finished)."""
    if build.status.finished:
        return []
    for s in build.steps:
        st = (s.details or {}).get("strategy") or {}
        state = st.get("state")
        if state in CONTROLLABLE:
            pause = "resume" if state == "paused" else "pause"
            return [pause, "promote", "abort"]
    return []


def _log_lines(build_id: int) -> tuple[list[tuple[str, dict[str, str]]], bool]:
    store = get_runtime().store
    lines: list[tuple[str, dict[str, str]]] = []
    after = "0-0"
    while len(lines) < LOG_PAGE_LINES:
        batch = store.read_log(build_id, after=after, count=min(1000, LOG_PAGE_LINES - len(lines)))
        if not batch:
            return lines, False
        lines.extend(batch)
        after = batch[-1][0]
    return lines, bool(store.read_log(build_id, after=after, count=1))


@bp.get("/builds/<int:build_id>")
def build_page(build_id: int) -> str:
    build = get_runtime().store.get_build(build_id)
    if request.args.get("fragment") == "summary":
        return render_template("_build_summary.html", build=build, acts=build_actions(build))
    lines, truncated = _log_lines(build_id)
    return render_template(
        "build.html",
        build=build,
        log_cap=get_runtime().store.log_cap(build_id),
        max_log_bytes=get_runtime().settings.max_log_bytes,
        acts=build_actions(build),
        lines=lines,
        truncated=truncated,
        last_id=lines[-1][0] if lines else "0-0",
        notifications=get_runtime().store.notifications.for_build(build_id),
    )


@bp.get("/deliveries")
def deliveries_page() -> str:
    rt = get_runtime()
    offset, limit = _offset(), rt.settings.max_rows_per_page
    items, total = rt.store.list_deliveries(offset=offset, limit=limit)
    return render_template(
        "deliveries.html",
        deliveries=items,
        page=_page_args(total, offset, limit),
        rejected=rt.store.rejected_sample(20),
        rejected_count=rt.store.counters("deliveries").get("rejected", 0),
    )


@bp.get("/environments")
def environments_page() -> str:
    return render_template("environments.html", environments=environments_view(), can_rollback=True)


# -- forms: the same actions as the API, for a signed-in person with a CSRF token -------------------


def _form_user() -> auth.Principal:
    settings = get_runtime().settings
    user = g.get("user")
    if user is None:
        raise Unauthorized("sign in with an API token to do this")
    auth.check_csrf(settings, request.cookies.get(auth.SESSION_COOKIE), request.form.get("csrf_token"))
    principal: auth.Principal = user
    return principal


def _done(build: Build, message: str) -> BaseResponse:
    flash(message)
    return redirect(url_for("views.build_page", build_id=build.id), code=303)


@bp.post("/builds/<int:build_id>/rerun")
def rerun_form(build_id: int) -> BaseResponse:
    user = _form_user()
    new = actions.rerun(get_runtime(), build_id, by=user.name)
    return _done(new, f"Build #{new.number} queued (re-run of build {build_id}).")


@bp.post("/builds/<int:build_id>/cancel")
def cancel_form(build_id: int) -> BaseResponse:
    user = _form_user()
    build = actions.cancel(get_runtime(), build_id, by=user.name)
    done = "Cancelled." if build.status.finished else "Cancel requested; the build stops within seconds."
    return _done(build, done)


@bp.post("/builds/<int:build_id>/promote")
def promote_form(build_id: int) -> BaseResponse:
    user = _form_user()
    new = actions.promote(get_runtime(), build_id, request.form.get("environment"), by=user.name)
    return _done(new, f"Build #{new.number} promotes build {build_id} to {request.form.get('environment')}.")


@bp.post("/builds/<int:build_id>/deploy/<command>")
def deploy_command_form(build_id: int, command: str) -> BaseResponse:
    user = _form_user()
    build = actions.deploy_command(get_runtime(), build_id, command, by=user.name)
    return _done(build, f"{command.capitalize()} sent; the deploy acts within a second.")


@bp.post("/environments/<env>/rollback")
def rollback_form(env: str) -> BaseResponse:
    user = _form_user()
    new = actions.rollback(get_runtime(), request.form.get("repo"), env, by=user.name)
    return _done(new, f"Build #{new.number} rolls {env} back.")


def _safe_next(target: str | None) -> str:
    # Only same-site paths: never redirect to another host after sign-in.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("views.builds_page")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    settings = get_runtime().settings
    if request.method == "GET":
        return render_template("login.html", next=_safe_next(request.args.get("next")), error=None)
    token = request.form.get("token", "").strip()
    try:
        auth.check_token(settings, token)
    except (Unauthorized, Forbidden) as exc:
        page = render_template("login.html", next=_safe_next(request.form.get("next")), error=exc.message)
        return page, 403
    resp = redirect(_safe_next(request.form.get("next")), code=303)
    resp.set_cookie(
        auth.SESSION_COOKIE,
        auth.session_value(settings, token),
        max_age=auth.SESSION_MAX_AGE,
        httponly=True,
        samesite="Strict",
        secure=settings.public_url.startswith("https://"),
    )
    return resp


@bp.post("/logout")
def logout() -> BaseResponse:
    resp = redirect(url_for("views.builds_page"), code=303)
    resp.delete_cookie(auth.SESSION_COOKIE)
    return resp


# -- health and metrics -------------------------------------------------------------------------------


@bp.get("/healthz")
def healthz() -> tuple[dict[str, Any], int]:
    """Liveness plus whether Redis answers (503 when it does not, so a balancer can tell), and its
    memory use against its limit (used_memory, maxmemory in bytes; with noeviction, writes fail at it)."""
    try:
        memory = get_runtime().store.memory()
    except StoreUnavailable as exc:
        return {"status": "degraded", "redis": "unreachable", "error": exc.message}, 503
    return {"status": "ok", "redis": "ok", "redis_memory": memory}, 200


@bp.get("/metrics")
def metrics_page() -> Response:
    return Response(metrics.render(get_runtime()), mimetype=None, content_type=metrics.CONTENT_TYPE)

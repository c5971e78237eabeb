"""The inference HTTP service: ``create_app(model_path=None, settings=None)``.

The model is loaded (and checked) once when the app is created; a model that cannot be
loaded raises ModelLoadError, so gunicorn never starts serving without one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sklearn
from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from inference import fastpath, metrics
from inference.model import LoadedModel, LoadPolicy, load_model
from inference.schema import FEATURES, SEED_EXAMPLE, RequestError, parse_payload
from inference.settings import Settings

log = logging.getLogger(__name__)
EXTENSION = "inference"

INDEX_TEXT = f"""House price inference service.

POST /predict   JSON: one house as {{"bedrooms": 3, ...}} (all {len(FEATURES)} features by name),
                or {{"instances": [...]}}, {{"dataframe_split": {{...}}}}, {{"dataframe_records": [...]}}
GET  /health    alive      GET /ready     model loaded and warmed up
GET  /metadata  model info GET /metrics   Prometheus metrics

Features: {", ".join(FEATURES)}
"""


@dataclass
class ServiceState:
    """The loaded model and how predictions are computed; kept in ``app.extensions``."""

    model: LoadedModel
    settings: Settings
    fast: fastpath.FastPredictor | None = None
    warmed_up: bool = False
    _pool: ThreadPoolExecutor | None = None
    _suffix: str | None = None

    def _predict_large(self, x: np.ndarray) -> np.ndarray:
        threads = self.settings.batch_threads
        if threads < 2 or len(x) < self.settings.batch_parallel_min_rows:
            return self.model.predict(x)
        if self._pool is None:  # created lazily: threads made before gunicorn forks do not survive
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="predict")
        chunks = np.array_split(x, threads)
        return np.concatenate(list(self._pool.map(self.model.predict, chunks)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        path = "fast" if self.fast is not None and len(x) <= self.settings.fastpath_max_rows else "estimator"
        start = time.perf_counter()
        y = self.fast.predict(x) if path == "fast" and self.fast is not None else self._predict_large(x)
        metrics.PREDICT_LATENCY.labels(path).observe(time.perf_counter() - start)
        metrics.PREDICTED_ROWS.inc(len(x))
        return y

    def warm_up(self) -> None:
        """Run the seed example through both paths so the first request pays no first-call costs."""
        x = np.array([[SEED_EXAMPLE[f] for f in FEATURES]], dtype=np.float64)
        y = self.model.predict(x)
        if self.fast is not None and not np.array_equal(self.fast.predict(x), y):
            log.warning("fast path disagrees with the model on the warm-up row; disabled")
            self.fast = None
        if not np.isfinite(y).all():
            raise RuntimeError("warm-up prediction is not finite")
        self.warmed_up = True

    def model_info(self) -> dict[str, Any]:
        return {"name": self.model.name, "version": self.model.version, "sha256": self.model.sha256}

    def answer_suffix(self) -> str:
        """What follows the predictions in every answer (the model's identity), serialised once."""
        if self._suffix is None:
            self._suffix = ',"model":' + json.dumps(self.model_info(), separators=(",", ":")) + "}"
        return self._suffix

    def metadata(self) -> dict[str, Any]:
        m = self.model
        meta = m.metadata
        return {
            "name": m.name,
            "version": m.version,
            "sha256": m.sha256,
            "path": m.path,
            "format": m.format,
            "features": list(m.features),
            "estimator": type(m.estimator).__name__,
            "estimator_params": {k: v for k, v in _params(m.estimator).items()},
            "sklearn_version": {"trained": meta.get("sklearn_version"), "serving": sklearn.__version__},
            "numpy_version": {"trained": meta.get("numpy_version"), "serving": np.__version__},
            "metrics": meta.get("metrics"),
            "trained_at": meta.get("trained_at"),
            "loaded_at": datetime.fromtimestamp(m.loaded_at, UTC).isoformat(timespec="seconds"),
            "fastpath": self.fast.kind if self.fast is not None else None,
            "limits": {"max_rows": self.settings.max_rows, "max_body_bytes": self.settings.max_body_bytes},
        }


def _params(estimator: Any) -> dict[str, Any]:
    try:
        params = estimator.get_params(deep=False)
    except Exception:
        return {}
    return {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None)))}


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": {"code": code, "message": message}}, status)


def create_app(model_path: str | None = None, settings: Settings | None = None) -> Flask:
    """Build the app; loads the model now (ModelLoadError if it cannot be served)."""
    settings = settings or Settings.from_env()
    if model_path is not None:
        settings = dataclasses.replace(settings, model_path=str(model_path))
    model = load_model(
        settings.model_path,
        LoadPolicy(settings.model_sha256, settings.allow_unpinned_pickle, settings.trusted_types),
    )
    state = ServiceState(model=model, settings=settings)
    if settings.fastpath:
        state.fast = fastpath.build(model.estimator, len(model.features))
    if settings.warm_up:
        state.warm_up()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions[EXTENSION] = state
    app.register_blueprint(bp)
    return app


bp = Blueprint("inference", __name__)


def _state() -> ServiceState:
    state: ServiceState = current_app.extensions[EXTENSION]
    return state


@bp.before_app_request
def _start_timer() -> None:
    g.start = time.perf_counter()


@bp.after_app_request
def _observe(response: Response) -> Response:
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    labels = (rule, request.method, str(response.status_code))
    metrics.REQUESTS.labels(*labels).inc()
    metrics.LATENCY.labels(*labels).observe(time.perf_counter() - g.get("start", time.perf_counter()))
    return response


@bp.app_errorhandler(RequestError)
def _request_error(exc: RequestError) -> Response:
    return _json(exc.as_dict(), exc.status)


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    codes = {413: "body_too_large", 404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.code or 500, "http_error")
    limit = _state().settings.max_body_bytes
    message = f"request body exceeds {limit} bytes" if exc.code == 413 else exc.description or exc.name
    return _error(exc.code or 500, code, message)


@bp.app_errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error(500, "internal_error", "internal error; see the service log")


@bp.get("/")
def index() -> Response:
    return Response(INDEX_TEXT, mimetype="text/plain")


@bp.get("/health")
def health() -> Response:
    return _json({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    state = _state()
    if not state.warmed_up:
        return _json({"status": "warming_up", "model": state.model_info()}, 503)
    return _json({"status": "ready", "model": state.model_info()})


@bp.get("/metadata")
def metadata() -> Response:
    return _json(_state().metadata())


@bp.get("/metrics")
def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@bp.post("/predict")
def predict() -> Response:
    state = _state()
    limit = state.settings.max_body_bytes
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise RequestError(
            415, "unsupported_media_type", f"Content-Type must be application/json, got {mimetype or 'none'}"
        )
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(413, "body_too_large", f"request body exceeds {limit} bytes")
    try:
        payload = json.loads(request.get_data(cache=False))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise RequestError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    except RecursionError:  # deeply nested arrays/objects: the client's fault, not a 500
        raise RequestError(400, "invalid_json", "body is nested too deeply") from None
    x = parse_payload(payload, state.model.features, state.settings.max_rows)
    y = state.predict(x)
    body = '{"predictions":' + json.dumps(y.tolist(), separators=(",", ":")) + state.answer_suffix()
    return Response(body, mimetype="application/json")

"""The HTTP surface, through Flask's test client."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from inference.app import EXTENSION, create_app
from inference.schema import FEATURES, SEED_EXAMPLE
from inference.settings import Settings, SettingsError

ROW = [SEED_EXAMPLE[f] for f in FEATURES]


def _post(client: FlaskClient, body: Any, **kw: Any) -> Any:
    return client.post("/predict", data=json.dumps(body), content_type="application/json", **kw)


def test_seed_request_gets_a_king_county_price_as_a_number(client: FlaskClient, trained: Any) -> None:
    r = _post(client, SEED_EXAMPLE)
    assert r.status_code == 200
    body = r.get_json()
    (price,) = body["predictions"]
    assert type(price) is float
    assert 100_000 < price < 600_000
    assert price == trained[1].predict(np.array([ROW], dtype=float))[0]
    assert body["model"]["name"] == "house-price-rf"
    assert len(body["model"]["sha256"]) == 64


@pytest.mark.parametrize(
    "body, n",
    [
        ({"instances": [SEED_EXAMPLE, {**SEED_EXAMPLE, "sqft_living": 3000}]}, 2),
        ({"instances": [ROW, ROW, ROW]}, 3),
        ({"dataframe_records": [SEED_EXAMPLE]}, 1),
        ({"dataframe_split": {"columns": list(FEATURES), "data": [ROW, ROW]}}, 2),
    ],
)
def test_batch_formats(client: FlaskClient, trained: Any, body: Any, n: int) -> None:
    r = _post(client, body)
    assert r.status_code == 200
    preds = r.get_json()["predictions"]
    assert len(preds) == n and all(type(p) is float for p in preds)
    assert preds[0] == trained[1].predict(np.array([ROW], dtype=float))[0]


def test_batch_larger_than_fast_path_uses_the_estimator_and_agrees(client: FlaskClient, trained: Any) -> None:
    from inference import train

    x, _ = train.generate(600, seed=11)
    r = _post(client, {"instances": x.tolist()})
    assert r.status_code == 200
    assert r.get_json()["predictions"] == trained[1].predict(x).tolist()


def test_invalid_fields_are_400_naming_field_and_row_without_traceback(client: FlaskClient) -> None:
    bad = {**SEED_EXAMPLE, "grade": "seven"}
    del bad["lat"]
    r = _post(client, {"instances": [SEED_EXAMPLE, bad]})
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["code"] == "invalid_input"
    assert {(f["field"], f["row"]) for f in err["fields"]} == {("grade", 1), ("lat", 1)}
    assert "Traceback" not in r.get_data(as_text=True)


def test_nan_literal_is_rejected(client: FlaskClient) -> None:
    body = json.dumps(SEED_EXAMPLE).replace("47.5112", "NaN")
    r = client.post("/predict", data=body, content_type="application/json")
    assert r.status_code == 400
    assert r.get_json()["error"]["fields"] == [{"field": "lat", "problem": "must be a finite number"}]


@pytest.mark.parametrize(
    "data, content_type, status, code",
    [
        ("{not json", "application/json", 400, "invalid_json"),
        (json.dumps(SEED_EXAMPLE), "text/plain", 415, "unsupported_media_type"),
        (json.dumps(SEED_EXAMPLE), None, 415, "unsupported_media_type"),
        ("a=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_body_errors(
    client: FlaskClient, data: str, content_type: str | None, status: int, code: str
) -> None:
    r = client.post("/predict", data=data, content_type=content_type)
    assert r.status_code == status
    assert r.get_json()["error"]["code"] == code


def test_json_with_charset_and_vendor_types_accepted(client: FlaskClient) -> None:
    for ct in ("application/json; charset=utf-8", "application/vnd.api+json"):
        assert client.post("/predict", data=json.dumps(SEED_EXAMPLE), content_type=ct).status_code == 200


def test_too_large_body_is_413(client: FlaskClient) -> None:
    r = _post(client, {"instances": [ROW] * 900, "padding": "x" * 600_000})
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "body_too_large"


def test_too_many_rows_is_413(client: FlaskClient) -> None:
    r = _post(client, {"instances": [ROW] * 1001})  # the fixture's app allows 1000
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "too_many_rows"
    assert _post(client, {"instances": [ROW] * 1000}).status_code == 200


def test_default_limits_accept_a_10000_row_batch_of_objects(trained: Any) -> None:
    client = create_app(str(trained[0]), Settings()).test_client()
    from inference import train

    x, _ = train.generate(10_000, seed=12)
    rows = [dict(zip(FEATURES, r, strict=True)) for r in x.tolist()]
    r = _post(client, {"instances": rows})
    assert r.status_code == 200
    assert r.get_json()["predictions"] == trained[1].predict(x).tolist()
    assert _post(client, {"instances": rows + rows[:1]}).status_code == 413


def test_ready_only_after_warm_up(trained: Any) -> None:
    app = create_app(str(trained[0]), Settings(warm_up=False))
    client = app.test_client()
    assert client.get("/health").status_code == 200
    r = client.get("/ready")
    assert r.status_code == 503 and r.get_json()["status"] == "warming_up"
    app.extensions[EXTENSION].warm_up()
    r = client.get("/ready")
    assert r.status_code == 200 and r.get_json()["status"] == "ready"


def test_metadata_describes_model_and_versions(client: FlaskClient, trained: Any) -> None:
    import sklearn

    meta = client.get("/metadata").get_json()
    assert meta["features"] == list(FEATURES)
    assert meta["estimator"] == "RandomForestRegressor"
    assert meta["sklearn_version"] == {"trained": sklearn.__version__, "serving": sklearn.__version__}
    assert meta["sha256"] == json.loads(trained[0].with_suffix(".json").read_text())["sha256"]
    assert meta["metrics"]["r2"] == pytest.approx(trained[2].r2)
    assert meta["loaded_at"].endswith("+00:00")
    assert meta["fastpath"] == "forest"


def _sample(text: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_metrics_count_requests_by_endpoint_and_status(client: FlaskClient) -> None:
    before = client.get("/metrics").get_data(as_text=True)
    _post(client, SEED_EXAMPLE)
    _post(client, SEED_EXAMPLE)
    _post(client, {"bedrooms": 1})
    r = client.get("/metrics")
    assert r.content_type.startswith("text/plain")
    after = r.get_data(as_text=True)
    ok = {"endpoint": "/predict", "method": "POST", "status": "200"}
    bad = {**ok, "status": "400"}
    for name, labels, delta in [
        ("inference_http_requests_total", ok, 2),
        ("inference_http_requests_total", bad, 1),
        ("inference_http_request_duration_seconds_count", ok, 2),
        ("inference_predict_duration_seconds_count", {"path": "fast"}, 2),
    ]:
        assert _sample(after, name, labels) - _sample(before, name, labels) == delta, name


def test_index_page_and_json_404(client: FlaskClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "House price inference" in r.get_data(as_text=True)
    r = client.get("/nope")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    assert client.get("/predict").status_code == 405


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MODEL_SHA256": "abc"}, "64 hex"),
        ({"MAX_ROWS": "ten"}, "MAX_ROWS"),
        ({"MAX_ROWS": "0"}, "at least 1"),
        ({"ALLOW_UNPINNED_PICKLE": "maybe"}, "boolean"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "MODEL_PATH": "/m/x.pkl",
            "MODEL_SHA256": "AB" * 32,
            "ALLOW_UNPINNED_PICKLE": "1",
            "MAX_ROWS": "5",
            "MODEL_TRUSTED_TYPES": "a.B, c.D",
        }
    )
    assert (s.model_path, s.model_sha256, s.allow_unpinned_pickle, s.max_rows, s.trusted_types) == (
        "/m/x.pkl",
        "ab" * 32,
        True,
        5,
        ("a.B", "c.D"),
    )
    assert Settings.from_env({}).model_path == "/models/model.skops"


def test_deeply_nested_json_is_a_400_not_a_500(client: FlaskClient) -> None:
    body = "[" * 100_000 + "]" * 100_000
    r = client.post("/predict", data=body, content_type="application/json")
    assert r.status_code == 400
    assert r.get_json()["error"] == {"code": "invalid_json", "message": "body is nested too deeply"}

"""The numpy tree walk must give exactly what ``estimator.predict`` gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor
from sklearn.tree import DecisionTreeRegressor

from inference import fastpath, train

N_FEATURES = 18


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = train.generate(3000, seed=3)
    x_eval, _ = train.generate(10_000, seed=4)
    return x, y, x_eval


def _max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def test_served_forest_matches_predict_over_10000_rows(trained: Any, data: Any) -> None:
    model = trained[1]
    fast = fastpath.build(model, N_FEATURES)
    assert fast is not None and fast.kind == "forest"
    x = np.vstack([data[2], fastpath.probe_rows(N_FEATURES, model, 2000, seed=9)])
    assert _max_rel_diff(fast.predict(x), model.predict(x)) <= 1e-9
    # Row by row too: that is how the service calls it for the seed's single-object request.
    for row in x[:200]:
        assert fast.predict(row[None, :])[0] == model.predict(row[None, :])[0]


@pytest.mark.parametrize(
    "estimator",
    [
        DecisionTreeRegressor(random_state=0),
        RandomForestRegressor(n_estimators=15, random_state=0),
        ExtraTreesRegressor(n_estimators=15, random_state=0),
        GradientBoostingRegressor(n_estimators=40, random_state=0),
        GradientBoostingRegressor(n_estimators=20, init="zero", learning_rate=0.3, random_state=0),
        LinearRegression(),
        Ridge(alpha=2.0),
    ],
    ids=lambda e: type(e).__name__,
)
def test_supported_estimators_match_predict_over_10000_rows(estimator: Any, data: Any) -> None:
    x, y, x_eval = data
    estimator.fit(x, y)
    fast = fastpath.build(estimator, N_FEATURES)
    assert fast is not None
    assert _max_rel_diff(fast.predict(x_eval), estimator.predict(x_eval)) <= 1e-9


def test_unknown_estimator_has_no_fast_path(data: Any) -> None:
    x, y, _ = data
    assert fastpath.build(KNeighborsRegressor().fit(x, y), N_FEATURES) is None


def test_fast_path_that_disagrees_is_refused(data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, _ = data
    model = RandomForestRegressor(n_estimators=5, random_state=0).fit(x, y)
    # Simulate a subtle arithmetic difference (e.g. a future sklearn change in averaging order).
    monkeypatch.setattr(
        fastpath.ForestPredictor, "predict", lambda self, rows: np.nextafter(model.predict(rows), np.inf)
    )
    assert fastpath.build(model, N_FEATURES) is None

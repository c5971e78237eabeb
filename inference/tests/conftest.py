"""Fixtures for the inference tests: a small model trained once per session in a tmp dir.

These tests run inside the built image too, so they need nothing outside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sklearn.ensemble import RandomForestRegressor

from inference import train
from inference.app import create_app
from inference.schema import SEED_EXAMPLE
from inference.settings import Settings

SMALL_TREES = 20
SMALL_ROWS = 6000


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RandomForestRegressor, train.Metrics]:
    """(model path, estimator, metrics) of a 20-tree forest saved as skops + model.json."""
    out = tmp_path_factory.mktemp("model")
    model, metrics = train.train(seed=7, trees=SMALL_TREES, n_rows=SMALL_ROWS)
    path = train.save(model, metrics, out, seed=7)
    return path, model, metrics


@pytest.fixture
def model_dir(trained: tuple[Path, RandomForestRegressor, train.Metrics], tmp_path: Path) -> Path:
    """A private copy of the model directory (tests may tamper with it)."""
    src = trained[0].parent
    dst = tmp_path / "models"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def app(trained: tuple[Path, RandomForestRegressor, train.Metrics]) -> Flask:
    return create_app(str(trained[0]), Settings(max_rows=1000, max_body_bytes=512 * 1024))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def seed_row() -> dict[str, float]:
    return dict(SEED_EXAMPLE)

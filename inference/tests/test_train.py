"""Training: the CLI's files, deterministic data, and a deliberately bad model on request."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from inference import train
from inference.schema import FEATURES


def test_cli_writes_model_and_metadata(tmp_path: Path) -> None:
    assert train.main(["--out", str(tmp_path), "--trees", "5", "--rows", "2000", "--seed", "3"]) == 0
    meta = json.loads((tmp_path / "model.json").read_text())
    assert (tmp_path / "model.skops").is_file()
    assert meta["features"] == list(FEATURES)
    assert meta["file"] == "model.skops" and meta["format"] == "skops"
    assert meta["name"] == "house-price-rf" and meta["version"] == "1.0.0"
    assert set(meta["metrics"]) == {"mae", "rmse", "r2", "n_test"}
    assert meta["metrics"]["r2"] > 0.7
    assert meta["params"] == {"n_estimators": 5, "seed": 3, "shuffle_labels": False}


def test_pickle_format(tmp_path: Path) -> None:
    train.main(["--out", str(tmp_path), "--trees", "2", "--rows", "500", "--format", "pickle"])
    assert json.loads((tmp_path / "model.json").read_text())["file"] == "model.pkl"


def test_data_is_deterministic_and_king_county_like() -> None:
    x1, y1 = train.generate(2000, seed=5)
    x2, y2 = train.generate(2000, seed=5)
    assert (x1 == x2).all() and (y1 == y2).all()
    assert not (train.generate(2000, seed=6)[1] == y1).all()
    assert 150_000 < float(sorted(y1)[1000]) < 700_000  # median price
    zips = x1[:, FEATURES.index("zipcode")]
    assert zips.min() >= 98001 and zips.max() <= 98199


def test_shuffled_labels_make_a_much_worse_model() -> None:
    _, good = train.train(seed=1, trees=10, n_rows=3000)
    _, bad = train.train(seed=1, trees=10, n_rows=3000, shuffle_labels=True)
    assert good.r2 > 0.8
    assert bad.r2 < 0.1
    assert bad.mae > 2 * good.mae


def test_golden_csv_is_deterministic(tmp_path: Path) -> None:
    a = train.write_golden_csv(tmp_path / "a.csv", n_rows=50)
    train.main(["--golden", str(tmp_path / "b.csv"), "--golden-rows", "50"])
    assert a.read_bytes() == (tmp_path / "b.csv").read_bytes()
    rows = list(csv.reader(a.open()))
    assert rows[0] == [*FEATURES, "price"]
    assert len(rows) == 51
    assert all(float(v) == float(v) for v in rows[1])

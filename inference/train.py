"""Train the example house-price model from deterministically generated King County-like data.

    python -m inference.train --out DIR [--seed N] [--trees N] [--shuffle-labels] [--golden PATH]

Writes ``DIR/model.skops`` (or ``model.pkl`` with ``--format pickle``) and ``DIR/model.json``
(features, versions, sha256, held-out metrics). Nothing is downloaded: the data is
synthesised from a seeded generator whose price formula mimics King County (2014-15).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import pickle
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sklearn
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split

from inference.schema import FEATURES

MODEL_NAME = "house-price-rf"
MODEL_VERSION = "1.0.0"
GOLDEN_SEED = 20141013  # distinct from training seeds so the golden set is truly held out
_DOWNTOWN = (47.61, -122.33)


def _zip_table(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """70 King County-style zip codes with a centroid each (98001..98199)."""
    zips = np.unique(np.concatenate([np.arange(98001, 98060, 2), np.arange(98100, 98200, 3)]))[:70]
    lat = rng.uniform(47.16, 47.77, zips.size)
    lon = rng.uniform(-122.51, -121.32, zips.size)
    # Keep the seed request's zip where it really is (Skyway, south-east of downtown).
    lat[zips == 98178], lon[zips == 98178] = 47.50, -122.25
    return zips, lat, lon


def generate(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X, price)``: ``n_rows`` synthetic houses in FEATURES order, fully determined by ``seed``."""
    zips, zlat, zlon = _zip_table(np.random.default_rng(0))  # the map is the same for every seed
    rng = np.random.default_rng(seed)
    sqft_living = np.clip(rng.lognormal(np.log(1900), 0.42, n_rows), 370, 13000).round(-1)
    bedrooms = np.clip(np.round(sqft_living / 650 + rng.normal(0, 0.7, n_rows)), 1, 8)
    bathrooms = np.clip(np.round((sqft_living / 900 + rng.normal(0, 0.4, n_rows)) * 4) / 4, 0.75, 6)
    sqft_lot = np.clip(rng.lognormal(np.log(7600), 0.8, n_rows), 600, 900000).round()
    floors = rng.choice([1.0, 1.5, 2.0, 2.5, 3.0], n_rows, p=[0.49, 0.09, 0.38, 0.01, 0.03])
    waterfront = (rng.random(n_rows) < 0.0075).astype(float)
    view = np.where(waterfront == 1, 4, rng.choice(5, n_rows, p=[0.9, 0.02, 0.045, 0.025, 0.01]))
    condition = rng.choice([1, 2, 3, 4, 5], n_rows, p=[0.01, 0.01, 0.65, 0.26, 0.07]).astype(float)
    grade = np.clip(
        np.round(7 + 1.6 * np.log(sqft_living / 1900) / 0.42 * 0.6 + rng.normal(0, 0.7, n_rows)), 3, 13
    )
    has_basement = rng.random(n_rows) < 0.39
    sqft_basement = np.where(has_basement, (sqft_living * rng.uniform(0.2, 0.5, n_rows)).round(-1), 0)
    sqft_above = sqft_living - sqft_basement
    yr_built = rng.integers(1900, 2016, n_rows).astype(float)
    renovated = (rng.random(n_rows) < 0.04) & (yr_built < 1995)
    yr_renovated = np.where(renovated, rng.integers(1995, 2016, n_rows), 0).astype(float)
    z = rng.integers(0, zips.size, n_rows)
    lat = (zlat[z] + rng.normal(0, 0.012, n_rows)).round(4)
    lon = (zlon[z] + rng.normal(0, 0.012, n_rows)).round(3)
    sqft_living15 = np.clip(sqft_living * 0.6 + 800 + rng.normal(0, 250, n_rows), 400, 6200).round(-1)
    sqft_lot15 = np.clip(sqft_lot * rng.lognormal(0, 0.3, n_rows), 650, 870000).round()

    # Price: dollars per living square foot by location, quality and age, plus extras.
    km = np.hypot((lat - _DOWNTOWN[0]) * 111.0, (lon - _DOWNTOWN[1]) * 75.0)
    location = 0.6 + 1.3 * np.exp(-km / 14.0)
    age_effect = 1.0 + 0.0015 * np.abs(yr_built - 1960) + np.where(renovated, 0.08, 0.0)
    ppsf = 150.0 * location * 1.13 ** (grade - 7) * (1 + 0.05 * (condition - 3)) * age_effect
    price = sqft_living * ppsf + 25.0 * np.sqrt(sqft_lot) + waterfront * 450_000 + view * 35_000
    price *= rng.lognormal(0, 0.12, n_rows)
    x = np.column_stack(
        [
            bedrooms,
            bathrooms,
            sqft_living,
            sqft_lot,
            floors,
            waterfront,
            view,
            condition,
            grade,
            sqft_above,
            sqft_basement,
            yr_built,
            yr_renovated,
            zips[z].astype(float),
            lat,
            lon,
            sqft_living15,
            sqft_lot15,
        ]
    )
    return x, price.round(-2)


@dataclass
class Metrics:
    mae: float
    rmse: float
    r2: float
    n_test: int


def evaluate(model: object, x: np.ndarray, y: np.ndarray) -> Metrics:
    pred = model.predict(x)  # type: ignore[attr-defined]
    return Metrics(
        mae=float(mean_absolute_error(y, pred)),
        rmse=float(np.sqrt(mean_squared_error(y, pred))),
        r2=float(r2_score(y, pred)),
        n_test=len(y),
    )


def train(
    seed: int = 42, trees: int = 100, shuffle_labels: bool = False, n_rows: int = 21_613
) -> tuple[RandomForestRegressor, Metrics]:
    """Fit the forest on generated data; ``shuffle_labels`` makes a deliberately useless model."""
    x, y = generate(n_rows, seed)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed)
    if shuffle_labels:
        y_train = np.random.default_rng(seed).permutation(y_train)
    # min_samples_leaf bounds tree depth/size (≈ 10 MB for 100 trees) at no cost in accuracy here.
    model = RandomForestRegressor(n_estimators=trees, min_samples_leaf=3, random_state=seed, n_jobs=-1)
    model.fit(x_train, y_train)
    model.set_params(n_jobs=None)  # serving decides its own parallelism (gunicorn workers)
    return model, evaluate(model, x_test, y_test)


def save(
    model: RandomForestRegressor,
    metrics: Metrics,
    out: Path,
    fmt: str = "skops",
    seed: int = 42,
    shuffle_labels: bool = False,
    name: str = MODEL_NAME,
    version: str = MODEL_VERSION,
) -> Path:
    """Write the model and ``model.json`` next to it; return the model path."""
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "skops":
        import skops.io as sio

        data = sio.dumps(model)
        path = out / "model.skops"
    else:
        data = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        path = out / "model.pkl"
    path.write_bytes(data)
    meta = {
        "name": name,
        "version": version,
        "format": fmt,
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "features": list(FEATURES),
        "target": "price",
        "estimator": type(model).__name__,
        "params": {"n_estimators": model.n_estimators, "seed": seed, "shuffle_labels": shuffle_labels},
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "metrics": asdict(metrics),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def write_golden_csv(path: Path, n_rows: int = 1000, seed: int = GOLDEN_SEED) -> Path:
    """A deterministic labelled dataset (features + price) for model quality gates."""
    x, y = generate(n_rows, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*FEATURES, "price"])
        for row, price in zip(x.tolist(), y.tolist(), strict=True):
            w.writerow([_fmt(v) for v in row] + [_fmt(price)])
    return path


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inference.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="directory for model + model.json")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--rows", type=int, default=21_613, help="generated training+test rows")
    p.add_argument("--shuffle-labels", action="store_true", help="train on shuffled prices (a bad model)")
    p.add_argument("--format", choices=["skops", "pickle"], default="skops")
    p.add_argument("--model-version", default=MODEL_VERSION)
    p.add_argument("--golden", type=Path, help="also write the golden CSV dataset here")
    p.add_argument("--golden-rows", type=int, default=1000)
    args = p.parse_args(argv)
    if args.out is None and args.golden is None:
        p.error("give --out DIR and/or --golden PATH")
    if args.golden:
        write_golden_csv(args.golden, args.golden_rows)
        print(f"golden dataset: {args.golden}")
    if args.out:
        model, metrics = train(args.seed, args.trees, args.shuffle_labels, args.rows)
        path = save(
            model, metrics, args.out, args.format, args.seed, args.shuffle_labels, version=args.model_version
        )
        print(f"model: {path}  MAE={metrics.mae:,.0f} RMSE={metrics.rmse:,.0f} R2={metrics.r2:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

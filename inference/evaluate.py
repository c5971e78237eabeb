"""Evaluate model files on a golden dataset, as the serving image would load them.

    python3 -m inference.evaluate --golden FILE.csv --model candidate=PATH [--model baseline=PATH]
                                  [--latency-rows 1000] [--repeat 5]

Prints one JSON document: for each model, whether it loaded under this image's library versions
(and why not), its sha256, regression metrics (MAE, RMSE, R²) on the golden set, whether every
prediction is finite, and the median latency of a one-row and a batch prediction. The orchestrator's
``model_check`` step runs this inside the freshly built image and applies the pipeline's rules.
Exit status 0 when the document was written (verdicts are the caller's business), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import sklearn

from inference.model import LoadPolicy, ModelLoadError, load_model
from inference.schema import FEATURES


def read_golden(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features (in FEATURES order, by column name) and the ``price`` target of a golden CSV."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in (*FEATURES, "price") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: golden set lacks columns {missing}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: golden set has no rows")
    x = np.array([[float(r[f]) for f in FEATURES] for r in rows], dtype=np.float64)
    y = np.array([float(r["price"]) for r in rows], dtype=np.float64)
    return x, y


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = pred - y
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
    }


def _median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def evaluate_model(
    path: Path, x: np.ndarray, y: np.ndarray, latency_rows: int, repeat: int, policy: LoadPolicy
) -> dict[str, Any]:
    """Everything the gate needs to know about one model file."""
    out: dict[str, Any] = {"path": str(path)}
    try:
        model = load_model(path, policy)
    except ModelLoadError as exc:
        return {**out, "loaded": False, "error": str(exc)}
    pred = model.predict(x)
    finite = bool(np.all(np.isfinite(pred)))
    batch = np.resize(x, (max(1, latency_rows), x.shape[1]))
    out.update(
        {
            "loaded": True,
            "sha256": model.sha256,
            "name": model.name,
            "version": model.version,
            "estimator": type(model.estimator).__name__,
            "finite": finite,
            "rows": len(y),
            "metrics": regression_metrics(y, pred) if finite else {},
            "latency_ms": {
                "single": _median_ms(lambda: model.predict(x[:1]), repeat),
                "batch": _median_ms(lambda: model.predict(batch), repeat),
                "batch_rows": len(batch),
            },
        }
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m inference.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--golden", type=Path, required=True, help="CSV with the feature columns and 'price'")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a model to evaluate (repeatable), e.g. candidate=/artifacts/model/model.skops",
    )
    p.add_argument("--latency-rows", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--allow-unpinned-pickle", action="store_true")
    args = p.parse_args(argv)
    models = {}
    for spec in args.model:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            p.error(f"--model takes LABEL=PATH, got {spec!r}")
        models[label] = Path(path)
    if not models:
        p.error("name at least one --model LABEL=PATH")
    try:
        x, y = read_golden(args.golden)
    except (OSError, ValueError) as exc:
        print(json.dumps({"error": f"cannot read golden set: {exc}"}))
        return 0
    policy = LoadPolicy(allow_unpinned_pickle=args.allow_unpinned_pickle)
    report = {
        "golden": {"path": str(args.golden), "rows": len(y)},
        "serving": {
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "models": {
            label: evaluate_model(path, x, y, args.latency_rows, args.repeat, policy)
            for label, path in models.items()
        },
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The in-image evaluator of the model gate (``mode: in_image``): a standalone script.

The ``model_check`` step copies this file, the golden rows and the model files into a container of
the freshly built image (no network) and runs it with the image's ``python3``, so each model is loaded
with exactly the library versions that will serve it. It needs only the standard library and what the
image has (numpy when present). It predicts; the orchestrator computes the metrics and judges.

    python3 evaluate.py --input ROWS.json --model candidate=PATH [--model baseline=PATH]
                        [--loader module:function] [--proba] [--latency-rows 1000] [--repeat 5]

ROWS.json: {"features": [...], "rows": [[...], ...]}. ``--loader``: the image's own loader, called
with the model's path (e.g. ``inference.model:load_model``, which checks what the service checks);
without it, ``.skops`` files load with skops, ``.joblib`` with joblib, anything else with pickle.
Prints one JSON document: per model, whether it loaded (and why not), its sha256, its predictions
(and class probabilities with --proba), and the median time of a one-row and a batch prediction.
Exit status 0 when the document was written, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _default_load(path: Path) -> Any:
    if path.suffix == ".skops":
        import skops.io as sio

        # Isolated container without network, on the build's own model: trust what the file holds.
        return sio.load(path, trusted=sio.get_untrusted_types(file=path))
    if path.suffix == ".joblib":
        import joblib

        return joblib.load(path)
    with path.open("rb") as fh:
        return pickle.load(fh)  # noqa: S301  (the build's own model, in an isolated container)


def _loader(spec: str | None) -> Any:
    if not spec:
        return _default_load
    module, _, name = spec.partition(":")
    sys.path.insert(0, str(Path.cwd()))  # the image's own code, as ``python3 -m`` would find it
    return getattr(importlib.import_module(module), name)


def _matrix(rows: list[list[Any]]) -> Any:
    try:
        import numpy as np

        return np.asarray(rows, dtype=np.float64)
    except (ImportError, ValueError, TypeError):
        return rows


def _plain(values: Any) -> Any:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _proba(model: Any, x: Any) -> tuple[Any, Any]:
    for obj in (model, getattr(model, "estimator", None)):
        if obj is not None and hasattr(obj, "predict_proba"):
            return _plain(obj.predict_proba(x)), _plain(getattr(obj, "classes_", []))
    return None, None


def evaluate_model(path: Path, load: Any, rows: list[list[Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Everything the gate needs to know about one model file."""
    out: dict[str, Any] = {"path": str(path)}
    try:
        model = load(path)
        x = _matrix(rows)
        predicted = _plain(model.predict(x))
    except Exception as exc:  # any failure to load or predict is the verdict, reported as such
        return {**out, "loaded": False, "error": f"{type(exc).__name__}: {exc}"}
    batch = _matrix([rows[i % len(rows)] for i in range(max(1, args.latency_rows))])
    out.update(
        {
            "loaded": True,
            "sha256": getattr(model, "sha256", None) or hashlib.sha256(path.read_bytes()).hexdigest(),
            "estimator": type(getattr(model, "estimator", model)).__name__,
            "predictions": predicted,
            "latency_ms": {
                "single": _median_ms(lambda: model.predict(x[:1]), args.repeat),
                "batch": _median_ms(lambda: model.predict(batch), args.repeat),
                "batch_rows": max(1, args.latency_rows),
            },
        }
    )
    if args.proba:
        out["probabilities"], out["classes"] = _proba(model, x)
    return out


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("sklearn", "numpy"):
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="evaluate.py", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--input", type=Path, required=True, help='JSON {"features": [...], "rows": [[...]]}')
    p.add_argument("--model", action="append", default=[], metavar="LABEL=PATH", help="repeatable")
    p.add_argument("--loader", default=None, metavar="MODULE:FUNCTION")
    p.add_argument("--proba", action="store_true", help="also report predict_proba")
    p.add_argument("--latency-rows", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
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
        rows = json.loads(args.input.read_text())["rows"]
        load = _loader(args.loader)
    except (OSError, ValueError, KeyError, ImportError, AttributeError) as exc:
        print(json.dumps({"error": f"cannot start the evaluation: {type(exc).__name__}: {exc}"}))
        return 0
    report = {
        "serving": _versions(),
        "models": {label: evaluate_model(path, load, rows, args) for label, path in models.items()},
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

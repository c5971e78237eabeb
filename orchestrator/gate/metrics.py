"""The gate's metrics, from scikit-learn (imported here, lazily: only a running gate needs it).

Regression: mae, rmse, r2, mape. Classification: accuracy, precision/recall/f1 (macro), and roc_auc
and log_loss when the service answers class probabilities. Latency: p50/p99 of the gate's requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class MetricError(ValueError):
    """The answers cannot be scored (e.g. probabilities that do not fit the classes)."""


def finite(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def regression(labels: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float]:
    from sklearn import metrics as m

    try:
        y = [float(v) for v in labels]
    except (TypeError, ValueError) as exc:
        raise MetricError(f"task: regression needs numeric labels in the target column ({exc})") from None
    p = [float(v) for v in predicted]
    return {
        "mae": float(m.mean_absolute_error(y, p)),
        "rmse": float(m.root_mean_squared_error(y, p)),
        "r2": float(m.r2_score(y, p)),
        "mape": float(m.mean_absolute_percentage_error(y, p)),
    }


def label(v: Any) -> Any:
    """Labels compared as the same type: 1, 1.0 and "1" are one class; other strings stay strings."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def labels(values: Sequence[Any]) -> list[Any]:
    out = [label(v) for v in values]
    return [str(v) for v in out] if len({type(v) for v in out}) > 1 else out


def classification(
    y_true: Sequence[Any],
    predicted: Sequence[Any],
    proba: list[list[float]] | None = None,
    given: Sequence[Any] | None = None,
) -> dict[str, float]:
    """``given``: the order of the probability columns (``response.classes``; default: sorted labels)."""
    from sklearn import metrics as m

    both = labels([*y_true, *predicted])
    y, p = both[: len(y_true)], both[len(y_true) :]
    out = {
        "accuracy": float(m.accuracy_score(y, p)),
        "precision_macro": float(m.precision_score(y, p, average="macro", zero_division=0)),
        "recall_macro": float(m.recall_score(y, p, average="macro", zero_division=0)),
        "f1_macro": float(m.f1_score(y, p, average="macro", zero_division=0)),
    }
    if proba is not None:
        order = labels(list(given)) if given else sorted(set(y))
        if order and isinstance(y[0], str):
            order = [str(c) for c in order]
        out.update(_probability_metrics(y, proba, order))
    return out


def _probability_metrics(y: list[Any], proba: list[list[float]], order: list[Any]) -> dict[str, float]:
    from sklearn import metrics as m

    widths = {len(r) for r in proba}
    if widths != {len(order)}:
        raise MetricError(
            f"the service answered {sorted(widths)} probabilities per row for {len(order)} classes "
            f"({', '.join(map(str, order))}): set response.classes to the order of its probability columns"
        )
    unknown = sorted({str(v) for v in y} - {str(c) for c in order})
    if unknown:
        raise MetricError(f"golden labels {unknown} are not in response.classes {order}")
    # scikit-learn wants the columns in sorted class order
    ranked = sorted(order)
    cols = [order.index(c) for c in ranked]
    proba, order = [[r[i] for i in cols] for r in proba], ranked
    if len(order) == 2:
        auc = m.roc_auc_score([v == order[1] for v in y], [r[1] for r in proba])
    else:
        auc = m.roc_auc_score(y, proba, multi_class="ovr", labels=order)
    return {"roc_auc": float(auc), "log_loss": float(m.log_loss(y, proba, labels=order))}


def latency(ms: Sequence[float]) -> dict[str, float]:
    """p50 and p99 of the gate's own request times (ms), and how many requests."""
    import numpy as np

    if not ms:
        return {}
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "requests": len(ms),
    }

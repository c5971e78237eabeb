"""Predict small batches by walking fitted trees with numpy instead of ``estimator.predict``.

scikit-learn's forest ``predict`` spends ~10 ms per single row on input validation and
joblib dispatch for 100 trees; the tree walk itself is ~1 ms. Here all trees are packed
into flat arrays once and walked together, level by level, for all rows at once.

Results are bit-identical to ``estimator.predict`` because we copy its arithmetic:
- X is cast to float32 and compared as ``float64(x32) <= threshold`` (what the Cython does);
- forest leaf values are summed tree by tree in estimator order, then divided by the count;
- gradient boosting adds ``learning_rate * value`` stage by stage onto the init prediction.
``build()`` also checks itself against ``estimator.predict`` on probe rows and declines
(returns None) on any difference, so an unknown subtlety means "slow", never "wrong".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _sibling_order(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Node order (old indices) in which every node's right child directly follows its left."""
    order = [0]
    for old in order:  # grows while iterating: a breadth-first walk
        if left[old] != -1:
            order += (int(left[old]), int(right[old]))
    return np.array(order, dtype=np.int64)


@dataclass(frozen=True)
class PackedTrees:
    """Every tree's nodes in one array set, renumbered so that right child == left child + 1.

    One step of the walk is then ``node = left[node] + (x[feature[node]] > threshold[node])``.
    Leaves point to themselves with threshold +inf, so finished walks stay put.
    """

    feature: np.ndarray  # int64, per node (0 for leaves)
    threshold: np.ndarray  # float64, per node (+inf for leaves)
    left: np.ndarray  # int64, per node: left child (right child is left + 1); leaves: itself
    value: np.ndarray  # float64, per node
    roots: np.ndarray  # int64, per tree
    depth: int

    @classmethod
    def from_trees(cls, trees: list[Any]) -> PackedTrees:
        feats, thrs, lefts, vals, roots = [], [], [], [], []
        offset, depth = 0, 0
        for t in trees:
            order = _sibling_order(t.children_left, t.children_right)
            n = len(order)
            new_index = np.empty(t.node_count, dtype=np.int64)
            new_index[order] = np.arange(n) + offset
            old_left = t.children_left[order]
            leaf = old_left == -1
            lefts.append(np.where(leaf, np.arange(n) + offset, new_index[np.where(leaf, 0, old_left)]))
            feats.append(np.where(leaf, 0, t.feature[order]).astype(np.int64))
            thrs.append(np.where(leaf, np.inf, t.threshold[order]).astype(np.float64))
            vals.append(t.value[order, 0, 0].astype(np.float64))
            roots.append(offset)
            offset += n
            depth = max(depth, int(t.max_depth))
        return cls(
            np.concatenate(feats),
            np.concatenate(thrs),
            np.concatenate(lefts),
            np.concatenate(vals),
            np.array(roots, dtype=np.int64),
            depth,
        )

    def leaf_values(self, x: np.ndarray) -> np.ndarray:
        """``(n_trees, n_rows)`` leaf values for float64 rows ``x``."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        n_rows, n_features = x32.shape
        feature, threshold, left = self.feature, self.threshold, self.left
        if n_rows == 1:  # the common single-row request: skip the per-row offsets
            row = x32[0]
            node = self.roots
            for _ in range(self.depth):
                node = left[node] + (row[feature[node]] > threshold[node])
            return self.value[node][:, None]
        flat = x32.reshape(-1)
        row_base = (np.arange(n_rows, dtype=np.int64) * n_features)[None, :]
        node = np.repeat(self.roots[:, None], n_rows, axis=1)
        for _ in range(self.depth):
            node = left[node] + (flat[row_base + feature[node]] > threshold[node])
        return self.value[node]


class FastPredictor:
    """Base: ``predict(x)`` for float64 ``(n_rows, n_features)`` input."""

    kind = "none"

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ForestPredictor(FastPredictor):
    """DecisionTreeRegressor, RandomForestRegressor, ExtraTreesRegressor."""

    kind = "forest"

    def __init__(self, trees: list[Any]):
        self.packed = PackedTrees.from_trees(trees)
        self.n_trees = len(trees)

    def predict(self, x: np.ndarray) -> np.ndarray:
        values = self.packed.leaf_values(x)
        if self.n_trees == 1:
            return values[0].copy()
        # accumulate is sequential, matching sklearn's `y_hat += tree.predict(X)` order.
        total = np.add.accumulate(values, axis=0)[-1]
        return total / self.n_trees


class BoostingPredictor(FastPredictor):
    """GradientBoostingRegressor with a constant (or zero) init estimator."""

    kind = "boosting"

    def __init__(self, trees: list[Any], init: float, learning_rate: float):
        self.packed = PackedTrees.from_trees(trees)
        self.init = init
        self.learning_rate = learning_rate

    def predict(self, x: np.ndarray) -> np.ndarray:
        values = self.packed.leaf_values(x)
        out = np.full(x.shape[0], self.init, dtype=np.float64)
        for stage in values:
            out += self.learning_rate * stage
        return out


class LinearPredictor(FastPredictor):
    """LinearRegression, Ridge, Lasso, ...: the same ``X @ coef_ + intercept_`` without validation."""

    kind = "linear"

    def __init__(self, coef: np.ndarray, intercept: float):
        self.coef = coef
        self.intercept = intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef + self.intercept


def _make(estimator: Any) -> FastPredictor | None:
    from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model._base import LinearModel
    from sklearn.tree import DecisionTreeRegressor

    if getattr(estimator, "n_outputs_", 1) != 1:
        return None
    if type(estimator) is DecisionTreeRegressor:
        return ForestPredictor([estimator.tree_])
    if type(estimator) in (RandomForestRegressor, ExtraTreesRegressor):
        return ForestPredictor([e.tree_ for e in estimator.estimators_])
    if type(estimator) is GradientBoostingRegressor:
        init = estimator.init_
        if init == "zero":
            init_value = 0.0
        elif type(init).__name__ == "DummyRegressor":
            init_value = float(np.asarray(init.constant_).reshape(-1)[0])
        else:
            return None
        return BoostingPredictor(
            [e.tree_ for e in estimator.estimators_[:, 0]], init_value, float(estimator.learning_rate)
        )
    if isinstance(estimator, LinearModel) and np.ndim(estimator.coef_) == 1:
        return LinearPredictor(np.asarray(estimator.coef_, dtype=np.float64), float(estimator.intercept_))
    return None


def probe_rows(n_features: int, estimator: Any, n_rows: int = 512, seed: int = 0) -> np.ndarray:
    """Rows spread over each feature's split range (so probes reach many different leaves)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.full(n_features, -1.0), np.full(n_features, 1.0)
    trees = [e.tree_ for e in np.ravel(getattr(estimator, "estimators_", []))]
    if hasattr(estimator, "tree_"):
        trees.append(estimator.tree_)
    for t in trees:
        inner = t.children_left != -1
        for f, thr in zip(t.feature[inner], t.threshold[inner], strict=True):
            lo[f], hi[f] = min(lo[f], thr), max(hi[f], thr)
    span = hi - lo
    return lo - 0.05 * span + rng.random((n_rows, n_features)) * 1.1 * span


def build(estimator: Any, n_features: int) -> FastPredictor | None:
    """A fast predictor equal to ``estimator.predict``, or None (use ``estimator.predict``)."""
    try:
        fast = _make(estimator)
    except Exception:  # an estimator shaped unlike what we know: just use its own predict
        log.exception("fast path unavailable for %s", type(estimator).__name__)
        return None
    if fast is None:
        return None
    x = probe_rows(n_features, estimator)
    for rows in (x[:1], x[:7], x):
        expected = np.asarray(estimator.predict(rows), dtype=np.float64).reshape(-1)
        if not np.array_equal(fast.predict(rows), expected):
            log.warning("fast path for %s disagrees with predict(); disabled", type(estimator).__name__)
            return None
    return fast

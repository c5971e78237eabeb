"""The model gate's verdicts, table-driven over evaluate-style reports."""

from __future__ import annotations

import pytest

from orchestrator.gate.rules import Bound, GateRules, judge


def report(
    cand_metrics=None,
    base_metrics=None,
    loaded=True,
    finite=True,
    single=1.0,
    batch=10.0,
    base_loaded=True,
    error=None,
):
    models = {
        "candidate": {
            "loaded": loaded,
            "finite": finite,
            "rows": 1000,
            "error": error,
            "metrics": cand_metrics or {},
            "latency_ms": {"single": single, "batch": batch, "batch_rows": 1000},
        }
    }
    if base_metrics is not None or not base_loaded:
        models["baseline"] = {"loaded": base_loaded, "metrics": base_metrics or {}, "error": "gone"}
    return {"serving": {"sklearn": "1.9.1"}, "models": models}


GOOD = {"mae": 30000.0, "rmse": 45000.0, "r2": 0.93}
BAD = {"mae": 128000.0, "rmse": 171000.0, "r2": -0.02}
RULES = GateRules(
    thresholds={"r2": Bound(min=0.8)},
    no_worse_than_deployed={"mae": 0.05, "r2": 0.02},
    single_ms=50,
    batch_ms=2000,
)


@pytest.mark.parametrize(
    ("name", "rep", "passed", "failing"),
    [
        ("improves on deployed", report(GOOD, {"mae": 31000.0, "r2": 0.92}), True, []),
        ("first model, nothing deployed", report(GOOD), True, []),
        (
            "shuffled labels vs good deployed",
            report(BAD, GOOD),
            False,
            ["r2 threshold", "mae vs deployed", "r2 vs deployed"],
        ),
        ("slightly worse within tolerance", report({"mae": 31400.0, "r2": 0.915}, GOOD), True, []),
        ("mae 6% worse", report({"mae": 31800.0, "r2": 0.93}, GOOD), False, ["mae vs deployed"]),
        (
            "does not load",
            report(loaded=False, error="cannot load model: sklearn mismatch"),
            False,
            ["loads"],
        ),
        ("NaN predictions", report(GOOD, finite=False), False, ["finite predictions"]),
        ("too slow one row", report(GOOD, single=80.0), False, ["latency one row"]),
        ("too slow batch", report(GOOD, batch=5000.0), False, ["latency 1000 rows"]),
        ("deployed model unreadable", report(GOOD, base_loaded=False), True, []),
    ],
)
def test_judge(name, rep, passed, failing):
    result = judge(rep, RULES)
    assert result.passed is passed, result.table()
    assert [c.name for c in result.checks if not c.passed] == failing


def test_table_shows_both_models_and_the_rule():
    result = judge(report(BAD, GOOD), RULES)
    text = "\n".join(result.table())
    assert "r2" in text and "-0.0200" in text and "0.9300" in text
    assert "FAIL  mae vs deployed: mae = 128,000.0000, required ≤ deployed 30,000.0000 * (1 + 0.05)" in text


def test_missing_metric_fails_threshold():
    result = judge(report({"mae": 1.0}), GateRules(thresholds={"r2": Bound(min=0.5)}))
    assert not result.passed and result.checks[-1].detail == "r2 was not computed"

"""The model gate's verdicts, table-driven: thresholds, no worse than deployed, latency, and failing
closed when the baseline was not measured (unless ``baseline:`` allows it)."""

# ruff: noqa: E501  (the exact messages read best unbroken)

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.gate.rules import Bound, GateRules, judge

GOOD = {"mae": 30000.0, "rmse": 45000.0, "r2": 0.93}
BAD = {"mae": 128000.0, "rmse": 171000.0, "r2": -0.02}
UNREACHABLE = {"ok": False, "deployed": True, "error": "POST http://127.0.0.1:9/predict: cannot connect"}
NOTHING = {"ok": False, "deployed": False, "error": "nothing is deployed to prod yet"}


def model(metrics: dict[str, float] | None = None, p50: float = 5.0, p99: float = 9.0, **kw: Any) -> dict:
    return {"ok": True, "rows": 200, "metrics": metrics or {}, "latency_ms": {"p50": p50, "p99": p99}, **kw}


def report(cand: dict, base: dict | None = None) -> dict:
    return {"models": {"candidate": cand, "baseline": base}}


def rules(**kw: Any) -> GateRules:
    base = {
        "thresholds": {"r2": Bound(min=0.8)},
        "no_worse_than_deployed": {"mae": 0.05, "r2": 0.02},
        "latency_ms": {"p50_ms": 50, "p99_ms": 200},
        "compare_to": "prod",
    }
    return GateRules(**{**base, **kw})


@pytest.mark.parametrize(
    ("name", "rep", "rules_", "passed", "failing"),
    [
        ("improves on deployed", report(model(GOOD), model({"mae": 31000.0, "r2": 0.92})), rules(), True, []),
        (
            "shuffled labels vs good deployed",
            report(model(BAD), model(GOOD)),
            rules(),
            False,
            ["r2 threshold", "mae vs deployed", "r2 vs deployed"],
        ),
        ("within tolerance", report(model({"mae": 31400.0, "r2": 0.915}), model(GOOD)), rules(), True, []),
        (
            "mae 6% worse",
            report(model({"mae": 31800.0, "r2": 0.93}), model(GOOD)),
            rules(),
            False,
            ["mae vs deployed"],
        ),
        ("does not answer", report({"ok": False, "error": "HTTP 500"}), rules(), False, ["answers"]),
        (
            "NaN predictions",
            report(model(GOOD, finite=False), model(GOOD)),
            rules(),
            False,
            ["finite predictions"],
        ),
        ("slow p50", report(model(GOOD, p50=80.0), model(GOOD)), rules(), False, ["latency p50"]),
        ("slow p99", report(model(GOOD, p99=900.0), model(GOOD)), rules(), False, ["latency p99"]),
        # fail closed
        ("baseline unreachable", report(model(GOOD), UNREACHABLE), rules(), False, ["baseline in prod"]),
        (
            "baseline unreachable, optional",
            report(model(GOOD), UNREACHABLE),
            rules(baseline="optional"),
            True,
            [],
        ),
        (
            "baseline unreachable, if_deployed (it is deployed)",
            report(model(GOOD), UNREACHABLE),
            rules(baseline="if_deployed"),
            False,
            ["baseline in prod"],
        ),
        ("nothing deployed, required", report(model(GOOD), NOTHING), rules(), False, ["baseline in prod"]),
        (
            "nothing deployed, if_deployed",
            report(model(GOOD), NOTHING),
            rules(baseline="if_deployed"),
            True,
            [],
        ),
        ("nothing deployed, optional", report(model(GOOD), NOTHING), rules(baseline="optional"), True, []),
        (
            "no compare_to: thresholds only",
            report(model(GOOD)),
            rules(compare_to=None, no_worse_than_deployed={}),
            True,
            [],
        ),
        (
            "baseline lacks a metric",
            report(model(GOOD), model({"mae": 40000.0})),
            rules(),
            False,
            ["r2 vs deployed"],
        ),
        (
            "classification, higher is better",
            report(model({"accuracy": 0.70, "f1_macro": 0.69}), model({"accuracy": 0.95, "f1_macro": 0.95})),
            rules(thresholds={"accuracy": Bound(min=0.8)}, no_worse_than_deployed={"f1_macro": 0.01}),
            False,
            ["accuracy threshold", "f1_macro vs deployed"],
        ),
        (
            "log_loss, lower is better",
            report(model({"log_loss": 0.30}), model({"log_loss": 0.25})),
            rules(thresholds={}, no_worse_than_deployed={"log_loss": 0.1}),
            False,
            ["log_loss vs deployed"],
        ),
    ],
)
def test_judge(name: str, rep: dict, rules_: GateRules, passed: bool, failing: list[str]) -> None:
    result = judge(rep, rules_)
    assert result.passed is passed, result.table()
    assert [c.name for c in result.checks if not c.passed] == failing


def test_fail_closed_says_why_and_how_to_accept_thresholds_only() -> None:
    closed = judge(report(model(GOOD), UNREACHABLE), rules())
    assert closed.checks[-3].detail == (
        "POST http://127.0.0.1:9/predict: cannot connect; the gate fails closed; "
        "set baseline: optional to accept thresholds only"
    )
    first = judge(report(model(GOOD), NOTHING), rules())
    assert first.checks[-3].detail == (
        "nothing is deployed to prod yet; set baseline: if_deployed (or optional) to accept thresholds "
        "only for a first deploy"
    )
    optional = judge(report(model(GOOD), UNREACHABLE), rules(baseline="optional"))
    assert optional.note == (
        "thresholds only: the baseline was not compared (POST http://127.0.0.1:9/predict: cannot connect); "
        "baseline: optional"
    )
    assert [c.name for c in optional.checks] == [
        "answers",
        "r2 threshold",
        "baseline in prod",
        "latency p50",
        "latency p99",
    ]
    assert "note: thresholds only" in optional.table()[-1]


def test_comparison_table_metric_candidate_deployed_rule_result() -> None:
    result = judge(report(model(BAD), model(GOOD)), rules())
    rows = {r["metric"]: r for r in result.comparison()}
    assert rows["r2"] == {
        "metric": "r2",
        "candidate": -0.02,
        "deployed": 0.93,
        "rule": "≥ 0.8; ≥ deployed - 0.02",
        "passed": False,
    }
    assert rows["rmse"]["rule"] == "" and rows["rmse"]["passed"] is None
    assert rows["latency_p99_ms"] == {
        "metric": "latency_p99_ms",
        "candidate": 9.0,
        "deployed": 9.0,
        "rule": "≤ 200 ms",
        "passed": True,
    }
    text = "\n".join(result.table())
    assert "r2                         -0.0200          0.9300  FAIL    ≥ 0.8; ≥ deployed - 0.02" in text
    assert (
        "FAIL  mae vs deployed: mae = 128,000.0000, required ≤ deployed 30,000.0000 * (1 + 0.05) = 31,500.0000"
        in text
    )
    assert result.to_dict()["comparison"] == result.comparison()


def test_missing_metric_fails_threshold() -> None:
    result = judge(report(model({"mae": 1.0})), GateRules(thresholds={"r2": Bound(min=0.5)}))
    assert not result.passed and result.checks[-1].detail == "r2 was not computed"


def test_in_image_latency_rules() -> None:
    cand = {"ok": True, "metrics": GOOD, "latency_ms": {"single": 3.0, "batch": 40.0, "batch_rows": 500}}
    result = judge(report(cand), GateRules(latency_ms={"single_ms": 2, "batch_ms": 50}, reached="loads"))
    assert [(c.name, c.passed) for c in result.checks] == [
        ("loads", True),
        ("latency one row", False),
        ("latency 500 rows", True),
    ]

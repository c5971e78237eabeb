"""The golden set (columns from the file, CSV and JSON lines), the metrics (scikit-learn, checked
against hand-computed values on tiny sets) and the prediction-diff report."""

# ruff: noqa: E501  (the exact messages read best unbroken)

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.gate import metrics
from orchestrator.gate.diff import diff_lines, prediction_diff
from orchestrator.gate.golden import GoldenError, read_golden


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_features_are_the_header_minus_the_target(tmp_path: Path) -> None:
    g = read_golden(
        write(tmp_path, "g.csv", "species,petal,sepal\nsetosa,1.4,5\nvirginica,5.1,6.5\n"), "species"
    )
    assert g.features == ("petal", "sepal")
    assert g.rows == [{"petal": 1.4, "sepal": 5}, {"petal": 5.1, "sepal": 6.5}]
    assert g.labels == ["setosa", "virginica"] and g.lines == [2, 3]
    assert g.where(1) == "row 1 (g.csv line 3)" and g.matrix() == [[1.4, 5], [5.1, 6.5]]


def test_json_lines_keep_their_types(tmp_path: Path) -> None:
    text = '{"x": 1, "city": "Oslo", "y": 0}\n\n{"x": 2.5, "city": "Rome", "y": 1}\n'
    g = read_golden(write(tmp_path, "g.jsonl", text), "y")
    assert g.features == ("x", "city") and g.rows[1] == {"x": 2.5, "city": "Rome"}
    assert g.labels == [0, 1] and g.lines == [1, 3]


@pytest.mark.parametrize(
    ("name", "text", "target", "message"),
    [
        (
            "g.csv",
            "a,b\n1,2\n",
            "price",
            "g.csv: the target column 'price' is not in the golden set; its columns: a, b",
        ),
        ("g.csv", "price\n1\n", "price", "g.csv: no feature columns besides the target 'price'"),
        ("g.csv", "a,price\n", "price", "g.csv: the golden set has no rows"),
        ("g.csv", "", "price", "g.csv: empty file; the first line names the columns"),
        ("g.csv", "a,price\n1,2\n3\n", "price", "g.csv line 3: 1 values for 2 columns"),
        (
            "g.jsonl",
            '{"a": 1, "y": 2}\n[1]\n',
            "y",
            "g.jsonl line 2: each line must be one JSON object (a row)",
        ),
        (
            "g.jsonl",
            '{"a": 1, "y": 2}\n{"b": 1, "y": 2}\n',
            "y",
            "g.jsonl line 2: columns differ from line 1 (missing ['a'], extra ['b'])",
        ),
        (
            "g.jsonl",
            "{oops\n",
            "y",
            "g.jsonl line 1: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        ),
    ],
)
def test_golden_errors(tmp_path: Path, name: str, text: str, target: str, message: str) -> None:
    with pytest.raises(GoldenError) as exc:
        read_golden(write(tmp_path, name, text), target)
    assert str(exc.value) == message


def test_the_repository_golden_set() -> None:
    g = read_golden(Path(__file__).resolve().parents[2] / "inference" / "golden.csv", "price")
    assert len(g.rows) == 1000 and len(g.features) == 18 and "price" not in g.features


def test_regression_metrics() -> None:
    m = metrics.regression([100, 200, 300], [110, 190, 330])
    assert m["mae"] == pytest.approx(50 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((100 + 100 + 900) / 3))
    assert m["r2"] == pytest.approx(1 - 1100 / 20000)
    assert m["mape"] == pytest.approx((0.1 + 0.05 + 0.1) / 3)
    with pytest.raises(metrics.MetricError, match="numeric labels"):
        metrics.regression(["cat"], [1.0])


def test_classification_metrics_with_probabilities() -> None:
    y = [0, 0, 1, 1]
    m = metrics.classification(y, ["0", "1", "1", "1"], [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    assert m["accuracy"] == 0.75  # the service's "1" and the golden 1 are one class
    assert m["recall_macro"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["precision_macro"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["roc_auc"] == 1.0
    assert m["log_loss"] == pytest.approx(
        -(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.7)) / 4
    )


def test_classification_probabilities_must_fit_the_classes() -> None:
    with pytest.raises(metrics.MetricError) as exc:
        metrics.classification(["a", "b", "c"], ["a", "b", "c"], [[0.5, 0.5]] * 3)
    assert str(exc.value) == (
        "the service answered [2] probabilities per row for 3 classes (a, b, c): set response.classes "
        "to the order of its probability columns"
    )
    m = metrics.classification(
        ["a", "b", "c"], ["a", "b", "c"], [[0, 0, 1], [0, 1, 0], [1, 0, 0]], ["c", "b", "a"]
    )
    assert m["roc_auc"] == 1.0


def test_latency_percentiles() -> None:
    assert metrics.latency([float(i) for i in range(1, 101)]) == {
        "p50": 50.5,
        "p99": pytest.approx(99.01),
        "requests": 100,
    }
    assert metrics.latency([]) == {}


def test_the_gate_imports_scikit_learn_only_when_it_scores() -> None:
    code = (
        "import sys, orchestrator.steps.model_check, orchestrator.pipeline; "
        "print(sorted(m for m in ('sklearn', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_prediction_diff_regression(tmp_path: Path) -> None:
    g = read_golden(write(tmp_path, "g.csv", "x,y\n1,10\n2,20\n3,30\n4,40\n"), "y")
    d = prediction_diff(g, [100.0, 205.0, 330.0, 400.0], [100.0, 200.0, 300.0, 401.0], "regression", 0.01, 2)
    assert d["changed"] == 2 and d["rows"] == 4
    assert [r["row"] for r in d["largest"]] == [2, 1]
    assert d["largest"][0] == {
        "row": 2,
        "line": 4,
        "candidate": 330.0,
        "baseline": 300.0,
        "difference": 30.0,
        "label": 30,
        "inputs": {"x": 3},
    }
    assert diff_lines(d) == [
        "prediction diff: 2 of 4 rows changed (|candidate - baseline| > 0.01 * |baseline|)",
        "  row 2 (line 4): candidate 330.0, baseline 300.0, difference 30.0000, label 30; x=3",
        "  row 1 (line 3): candidate 205.0, baseline 200.0, difference 5.0000, label 20; x=2",
    ]


def test_prediction_diff_classification(tmp_path: Path) -> None:
    g = read_golden(
        write(tmp_path, "g.jsonl", "\n".join(json.dumps({"x": i, "y": i % 2}) for i in range(4))), "y"
    )
    d = prediction_diff(g, [0, 1, 1, 1], ["0", "1", "0", "0"], "classification", 0.0, 5)
    assert d["changed"] == 2 and d["rule"] == "a different label"
    assert [(r["row"], r["candidate"], r["baseline"]) for r in d["largest"]] == [(2, 1, "0"), (3, 1, "0")]


def test_prediction_diff_classification_ranks_by_probability_change(tmp_path: Path) -> None:
    g = read_golden(write(tmp_path, "g.csv", "x,y\n0,a\n1,a\n2,b\n"), "y")
    cand, base = [[0.4, 0.6], [0.1, 0.9], [0.5, 0.5]], [[0.6, 0.4], [0.9, 0.1], [0.5, 0.5]]
    d = prediction_diff(g, ["b", "b", "a"], ["a", "a", "a"], "classification", 0.0, 5, (cand, base))
    assert [(r["row"], r["difference"]) for r in d["largest"]] == [
        (1, pytest.approx(0.8)),
        (0, pytest.approx(0.2)),
    ]

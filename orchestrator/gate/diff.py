"""The prediction-diff report: where candidate and baseline disagree on the same golden rows."""

from __future__ import annotations

from typing import Any

from orchestrator.gate.golden import GoldenSet
from orchestrator.gate.metrics import labels


def prediction_diff(
    golden: GoldenSet,
    cand: list[Any],
    base: list[Any],
    task: str,
    tolerance: float,
    show: int,
    proba: tuple[list[list[float]], list[list[float]]] | None = None,
) -> dict[str, Any]:
    """How many rows changed, and the largest changes with their inputs.

    Regression: a row changed when ``|candidate - baseline| > tolerance * |baseline|``; the largest
    absolute differences are listed. Classification: a row changed when the predicted label differs;
    with both sides' probabilities (``proba``), the largest change of a class probability ranks them.
    """
    diffs: dict[int, Any] = {}
    if task == "classification":
        both = labels(cand + base)
        c, b = both[: len(cand)], both[len(cand) :]
        changed = [i for i in range(len(c)) if c[i] != b[i]]
        rule = "a different label"
        if proba is not None and all(len(p) == len(cand) for p in proba):
            pc, pb = proba
            diffs = {i: max(abs(x - y) for x, y in zip(pc[i], pb[i], strict=False)) for i in changed}
            changed.sort(key=lambda i: -diffs[i])
            rule += "; difference: the largest change of a class probability"
        largest = changed[:show]
    else:
        diffs = {i: abs(float(cand[i]) - float(base[i])) for i in range(len(cand))}
        changed = [i for i, d in diffs.items() if d > tolerance * abs(float(base[i]))]
        rule = f"|candidate - baseline| > {tolerance:g} * |baseline|"
        largest = sorted(changed, key=lambda i: -diffs[i])[:show]
    return {
        "rows": len(cand),
        "changed": len(changed),
        "rule": rule,
        "largest": [
            {
                "row": i,
                "line": golden.lines[i],
                "candidate": cand[i],
                "baseline": base[i],
                **({"difference": diffs[i]} if i in diffs else {}),
                "label": golden.labels[i],
                "inputs": golden.rows[i],
            }
            for i in largest
        ],
    }


def diff_lines(report: dict[str, Any]) -> list[str]:
    """The report for the build log."""
    out = [f"prediction diff: {report['changed']} of {report['rows']} rows changed ({report['rule']})"]
    for r in report["largest"]:
        delta = f", difference {r['difference']:,.4f}" if "difference" in r else ""
        inputs = ", ".join(f"{k}={v}" for k, v in list(r["inputs"].items())[:8])
        more = " …" if len(r["inputs"]) > 8 else ""
        out.append(
            f"  row {r['row']} (line {r['line']}): candidate {r['candidate']}, "
            f"baseline {r['baseline']}{delta}, label {r['label']}; {inputs}{more}"
        )
    return out

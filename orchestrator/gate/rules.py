"""The model gate's verdict: compare a candidate's report with thresholds and with the deployed model.

Pure logic, the same for both modes. The ``model_check`` step measures (over HTTP, or in the image)
and hands a report here::

    {"models": {"candidate": {"ok": true, "rows": 200, "metrics": {...}, "latency_ms": {...}},
                "baseline": {"ok": false, "error": "...", "deployed": true} | null}}

``judge`` returns every check with its numbers and a comparison table (metric, candidate, deployed,
rule, pass/fail), so the build page and the log say exactly why a model was stopped. It fails closed:
a baseline that could not be measured fails the gate unless the pipeline's ``baseline:`` allows it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("mae", "rmse", "r2", "mape"),
    "classification": ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "log_loss"),
}
# Whether a larger value of the metric is better.
HIGHER_IS_BETTER = {
    "r2": True,
    "mae": False,
    "rmse": False,
    "mape": False,
    "accuracy": True,
    "precision_macro": True,
    "recall_macro": True,
    "f1_macro": True,
    "roc_auc": True,
    "log_loss": False,
}
NOT_TIMES = ("batch_rows", "requests")  # latency_ms entries that are counts
LATENCY_LIMITS = (("p50_ms", "p50"), ("p99_ms", "p99"), ("single_ms", "single"), ("batch_ms", "batch"))


@dataclass(frozen=True)
class Bound:
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class GateRules:
    """What the pipeline asks of a candidate model (see docs/pipeline.md, ``model_check``)."""

    thresholds: dict[str, Bound] = field(default_factory=dict)
    # metric -> tolerance: relative for lower-is-better metrics (0.05 = 5 % worse allowed), absolute
    # for higher-is-better ones (r2, accuracy, f1_macro, ...).
    no_worse_than_deployed: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50_ms, p99_ms, single_ms, batch_ms
    baseline: str = "required"  # required | optional | if_deployed
    compare_to: str | None = None
    reached: str = "answers"  # the first check: "answers" (http) or "loads" (in_image)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    metric: str = ""
    rule: str = ""


@dataclass
class GateResult:
    passed: bool
    checks: list[Check]
    candidate: dict[str, Any]
    baseline: dict[str, Any] | None
    note: str = ""  # e.g. "thresholds only: ..." when the baseline was allowed to be missing

    def comparison(self) -> list[dict[str, Any]]:
        """One row per metric: both values, the rules on it, and whether they all held (None: no rule)."""
        cm = self.candidate.get("metrics") or {}
        bm = (self.baseline or {}).get("metrics") or {}
        rows = []
        for m in [*sorted(set(cm) | set(bm)), *_latency_keys(self.candidate, self.baseline)]:
            on = [c for c in self.checks if c.metric == m]
            cand, dep = (cm.get(m), bm.get(m)) if m in cm or m in bm else _latency(self, m)
            rows.append(
                {
                    "metric": m,
                    "candidate": cand,
                    "deployed": dep,
                    "rule": "; ".join(c.rule for c in on),
                    "passed": all(c.passed for c in on) if on else None,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "comparison": self.comparison(),
            "candidate": self.candidate,
            "baseline": self.baseline,
            "note": self.note,
        }

    def table(self) -> list[str]:
        """Human-readable lines: the comparison table, then every check."""
        lines = [f"{'metric':<18}{'candidate':>16}{'deployed':>16}  {'result':<6}  rule"]
        for r in self.comparison():
            verdict = "—" if r["passed"] is None else ("pass" if r["passed"] else "FAIL")
            lines.append(
                f"{r['metric']:<18}{_fmt(r['candidate']):>16}{_fmt(r['deployed']):>16}  {verdict:<6}  "
                f"{r['rule'] or '—'}"
            )
        lines += [f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks]
        if self.note:
            lines.append(f"note: {self.note}")
        return lines


def _latency_keys(cand: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    keys = [*(cand.get("latency_ms") or {}), *((base or {}).get("latency_ms") or {})]
    return [f"latency_{k}_ms" for k in dict.fromkeys(keys) if k not in NOT_TIMES]


def _latency(result: GateResult, metric: str) -> tuple[Any, Any]:
    key = metric.removeprefix("latency_").removesuffix("_ms")
    base = (result.baseline or {}).get("latency_ms") or {}
    return (result.candidate.get("latency_ms") or {}).get(key), base.get(key)


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:,.4f}" if isinstance(v, int | float) else str(v)


def judge(report: dict[str, Any], rules: GateRules) -> GateResult:
    """Apply ``rules`` to a report with models 'candidate' and maybe 'baseline' (module docstring)."""
    models = report.get("models", {})
    cand: dict[str, Any] = models.get("candidate") or {}
    base: dict[str, Any] | None = models.get("baseline")
    if not cand.get("ok"):
        why = cand.get("error") or report.get("error") or "not evaluated"
        return GateResult(False, [Check(rules.reached, False, why)], cand, base)
    checks = [Check(rules.reached, True, cand.get("how") or f"{cand.get('rows', 0)} golden rows")]
    if "finite" in cand:
        finite = bool(cand["finite"])
        detail = f"{cand.get('rows', 0)} golden rows" if finite else "NaN or inf predicted"
        checks.append(Check("finite predictions", finite, detail))
    metrics: dict[str, float] = cand.get("metrics", {})
    for name, bound in sorted(rules.thresholds.items()):
        checks.append(_threshold(name, metrics.get(name), bound))
    note = ""
    if rules.compare_to is not None:
        check, note = _baseline_check(base, rules)
        checks.append(check)
        if base is not None and base.get("ok"):
            checks.extend(_versus_deployed(metrics, base, rules.no_worse_than_deployed))
    checks.extend(_latency_checks(cand.get("latency_ms") or {}, rules.latency_ms))
    return GateResult(all(c.passed for c in checks), checks, cand, base, note)


def _baseline_check(base: dict[str, Any] | None, rules: GateRules) -> tuple[Check, str]:
    """Whether the deployed model was measured; if not, pass only as far as ``baseline:`` allows."""
    name = f"baseline in {rules.compare_to}"
    if base is not None and base.get("ok"):
        return Check(name, True, base.get("how") or "measured on the same rows"), ""
    base = base or {}
    error = base.get("error") or f"nothing measured in {rules.compare_to}"
    if rules.baseline == "optional":
        note = f"thresholds only: the baseline was not compared ({error}); baseline: optional"
        return Check(name, True, note), note
    if rules.baseline == "if_deployed" and not base.get("deployed", True):
        note = f"thresholds only: {error} (first deploy; baseline: if_deployed)"
        return Check(name, True, note), note
    hint = (
        "set baseline: if_deployed (or optional) to accept thresholds only for a first deploy"
        if not base.get("deployed", True)
        else "the gate fails closed; set baseline: optional to accept thresholds only"
    )
    return Check(name, False, f"{error}; {hint}"), ""


def _bounds(bound: Bound) -> str:
    parts = [
        f"≥ {bound.min:g}" if bound.min is not None else "",
        f"≤ {bound.max:g}" if bound.max is not None else "",
    ]
    return " and ".join(x for x in parts if x)


def _threshold(name: str, value: float | None, bound: Bound) -> Check:
    rule = _bounds(bound)
    if value is None:
        return Check(f"{name} threshold", False, f"{name} was not computed", name, rule)
    ok = (bound.min is None or value >= bound.min) and (bound.max is None or value <= bound.max)
    return Check(f"{name} threshold", ok, f"{name} = {value:,.4f}, required {rule}", name, rule)


def _versus_deployed(
    metrics: dict[str, float], base: dict[str, Any], tolerances: dict[str, float]
) -> list[Check]:
    out = []
    for name, tol in sorted(tolerances.items()):
        cand, dep = metrics.get(name), (base.get("metrics") or {}).get(name)
        if cand is None or dep is None:
            out.append(Check(f"{name} vs deployed", False, f"{name} missing", name, "no worse than deployed"))
            continue
        if HIGHER_IS_BETTER.get(name, False):
            limit = dep - tol
            ok = cand >= limit
            rule = f"≥ deployed - {tol:g}"
            shown = f"≥ deployed {dep:,.4f} - {tol:g}"
        else:
            limit = dep * (1 + tol)
            ok = cand <= limit
            rule = f"≤ deployed * (1 + {tol:g})"
            shown = f"≤ deployed {dep:,.4f} * (1 + {tol:g})"
        detail = f"{name} = {cand:,.4f}, required {shown} = {limit:,.4f}"
        out.append(Check(f"{name} vs deployed", ok, detail, name, rule))
    return out


def _latency_checks(measured: dict[str, Any], limits: dict[str, float]) -> list[Check]:
    out = []
    for key, field_ in LATENCY_LIMITS:
        limit = limits.get(key)
        if limit is None:
            continue
        value = float(measured.get(field_, math.inf))
        label = f"{measured.get('batch_rows', '?')} rows" if field_ == "batch" else field_
        label = "one row" if field_ == "single" else label
        detail = f"{value:.2f} ms (limit {limit:g} ms)"
        out.append(
            Check(f"latency {label}", value <= limit, detail, f"latency_{field_}_ms", f"≤ {limit:g} ms")
        )
    return out

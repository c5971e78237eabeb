"""The model gate's verdict: compare a candidate model's report with thresholds and the deployed model.

Pure logic. The ``model_check`` step runs ``python3 -m inference.evaluate`` inside the built image and
hands its JSON report here; ``judge`` returns every check with its numbers, so the build page and the
log can say exactly why a model was stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Whether a larger value of the metric is better.
HIGHER_IS_BETTER = {"r2": True, "mae": False, "rmse": False}


@dataclass(frozen=True)
class Bound:
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class GateRules:
    """What the pipeline asks of a candidate model (see docs/pipeline.md, ``model_check``)."""

    thresholds: dict[str, Bound] = field(default_factory=dict)
    # metric -> tolerance: relative for error metrics (0.05 = 5 % worse allowed), absolute for r2.
    no_worse_than_deployed: dict[str, float] = field(default_factory=dict)
    single_ms: float | None = None
    batch_ms: float | None = None


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class GateResult:
    passed: bool
    checks: list[Check]
    candidate: dict[str, Any]
    baseline: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "candidate": self.candidate,
            "baseline": self.baseline,
        }

    def table(self) -> list[str]:
        """Human-readable lines: metrics side by side, then every check."""
        cm = self.candidate.get("metrics", {})
        bm = (self.baseline or {}).get("metrics", {})
        lines = [f"{'metric':<8}{'candidate':>16}{'deployed':>16}"]
        for m in sorted(set(cm) | set(bm)):
            lines.append(f"{m:<8}{_fmt(cm.get(m)):>16}{_fmt(bm.get(m)):>16}")
        lines += [f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks]
        return lines


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:,.4f}"


def judge(report: dict[str, Any], rules: GateRules) -> GateResult:
    """Apply ``rules`` to an ``inference.evaluate`` report with models 'candidate' and maybe 'baseline'."""
    models = report.get("models", {})
    cand: dict[str, Any] = models.get("candidate", {})
    base: dict[str, Any] | None = models.get("baseline")
    checks: list[Check] = []
    if not cand.get("loaded"):
        checks.append(Check("loads", False, cand.get("error") or report.get("error") or "not evaluated"))
        return GateResult(False, checks, cand, base)
    serving = report.get("serving", {})
    checks.append(Check("loads", True, f"under scikit-learn {serving.get('sklearn', '?')}"))
    finite = bool(cand.get("finite"))
    checks.append(
        Check(
            "finite predictions",
            finite,
            f"{cand.get('rows', 0)} golden rows" if finite else "NaN or inf predicted",
        )
    )
    metrics: dict[str, float] = cand.get("metrics", {})
    for name, bound in sorted(rules.thresholds.items()):
        checks.append(_threshold(name, metrics.get(name), bound))
    if rules.no_worse_than_deployed:
        checks.extend(_versus_deployed(metrics, base, rules.no_worse_than_deployed))
    lat = cand.get("latency_ms", {})
    if rules.single_ms is not None:
        v = float(lat.get("single", math.inf))
        checks.append(
            Check("latency one row", v <= rules.single_ms, f"{v:.2f} ms (limit {rules.single_ms} ms)")
        )
    if rules.batch_ms is not None:
        v = float(lat.get("batch", math.inf))
        checks.append(
            Check(
                f"latency {lat.get('batch_rows', '?')} rows",
                v <= rules.batch_ms,
                f"{v:.1f} ms (limit {rules.batch_ms} ms)",
            )
        )
    return GateResult(all(c.passed for c in checks), checks, cand, base)


def _threshold(name: str, value: float | None, bound: Bound) -> Check:
    if value is None:
        return Check(f"{name} threshold", False, f"{name} was not computed")
    ok = (bound.min is None or value >= bound.min) and (bound.max is None or value <= bound.max)
    limits = " and ".join(
        x
        for x in (
            f"≥ {bound.min:g}" if bound.min is not None else "",
            f"≤ {bound.max:g}" if bound.max is not None else "",
        )
        if x
    )
    return Check(f"{name} threshold", ok, f"{name} = {value:,.4f}, required {limits}")


def _versus_deployed(
    metrics: dict[str, float], base: dict[str, Any] | None, tolerances: dict[str, float]
) -> list[Check]:
    if base is None:
        return [Check("no worse than deployed", True, "nothing deployed with a known model yet: first model")]
    if not base.get("loaded"):
        why = f"deployed model could not be evaluated ({base.get('error')}); compared to thresholds only"
        return [Check("no worse than deployed", True, why)]
    out = []
    for name, tol in sorted(tolerances.items()):
        cand, dep = metrics.get(name), base.get("metrics", {}).get(name)
        if cand is None or dep is None:
            out.append(Check(f"{name} vs deployed", False, f"{name} missing"))
            continue
        if HIGHER_IS_BETTER.get(name, False):
            limit = dep - tol
            ok = cand >= limit
            rule = f"≥ deployed {dep:,.4f} - {tol:g}"
        else:
            limit = dep * (1 + tol)
            ok = cand <= limit
            rule = f"≤ deployed {dep:,.4f} * (1 + {tol:g})"
        out.append(Check(f"{name} vs deployed", ok, f"{name} = {cand:,.4f}, required {rule} = {limit:,.4f}"))
    return out

"""``strategy:`` of a deploy step in pipeline.yaml: how the traffic moves to the new container.

- ``switch`` (the default): all new requests go to the new container once the edge's health check
  passed (docs/deploy.md, "A deploy, step by step");
- ``canary``: the new container gets ``steps`` percent of the requests in turn, each for ``interval``,
  and the edge's numbers of that interval (candidate vs stable) are judged by ``analysis``; a failed
  interval returns all traffic to the stable container;
- ``shadow``: ``percent`` of live requests are copied to the candidate for ``duration`` and its answers
  compared with the stable one's (never sent to a client), then (if they agree) a switch;
- ``watch`` (with any of them): after the switch the old container is kept for ``duration`` while the
  new one is compared with the numbers the old one had before the switch; a regression rolls back.

Pure schema (pydantic), imported by ``orchestrator.pipeline``; docs/pipeline.md documents every key.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
RULES = ("max_error_rate", "max_error_rate_vs_stable", "max_p99_ms", "max_p99_ratio_vs_stable")
SHADOW_RULES = ("max_mean_abs_diff", "max_share_changed")


def parse_duration(v: Any) -> Any:
    """``60``, ``60s``, ``1.5s``, ``500ms``, ``10m``, ``1h`` → seconds (a float)."""
    if isinstance(v, bool):
        raise ValueError("must be a duration such as 60s, 10m or a number of seconds")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        m = _DURATION.match(v)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f"must be a duration such as 60s, 500ms, 10m or 1h (got {v!r})")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=86400)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrometheusSpec(_Spec):
    """The service's own latency histogram: p99 from its buckets' growth over the interval."""

    path: str = Field(default="/metrics", pattern=r"^/[A-Za-z0-9._~/%?=&+-]*$")
    histogram: str = Field(default="http_request_duration_seconds", pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class AnalysisSpec(_Spec):
    """Rules over one interval's edge numbers. Error rate = 5xx answers / requests of that interval;
    p99 = the 99th percentile of the edge's per-request server response time (``%Tr``) in it, or,
    with ``prometheus``, of the service's own histogram (its buckets' growth over the interval)."""

    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_error_rate_vs_stable: float | None = Field(default=None, ge=0, le=1)  # candidate - stable
    max_p99_ms: float | None = Field(default=None, gt=0)
    max_p99_ratio_vs_stable: float | None = Field(default=None, gt=0)  # candidate / stable
    min_requests: int = Field(default=20, ge=0)  # the candidate's requests in one interval
    on_insufficient: Literal["wait", "fail", "proceed"] = "wait"
    max_wait: int = Field(default=3, ge=1, le=100)  # wait: extra intervals, then fail
    prometheus: PrometheusSpec | None = None  # p99 from the service's histogram instead of the edge's

    @model_validator(mode="after")
    def _some_rule(self) -> AnalysisSpec:
        if all(getattr(self, r) is None for r in RULES):
            raise ValueError(
                f"an analysis needs at least one rule: add one of {', '.join(RULES)} "
                "(e.g. analysis: {max_error_rate: 0.01, max_p99_ratio_vs_stable: 2})"
            )
        return self


class CanarySpec(_Spec):
    steps: list[int] = Field(min_length=1, max_length=20)  # percent of the requests, ending with 100
    interval: Duration = 60.0
    analysis: AnalysisSpec

    @model_validator(mode="after")
    def _steps(self) -> CanarySpec:
        s = self.steps
        if any(not 0 < p <= 100 for p in s):
            raise ValueError(f"steps are percentages between 1 and 100, got {s}")
        if any(b <= a for a, b in itertools.pairwise(s)):
            raise ValueError(f"steps must increase, got {s} (e.g. [5, 25, 50, 100])")
        if s[-1] != 100:
            raise ValueError(f"the last step must be 100 (the full switch), got {s}: append 100")
        return self


class ShadowAnalysisSpec(_Spec):
    """Prediction differences between candidate and stable on the same mirrored requests."""

    max_mean_abs_diff: float | None = Field(default=None, ge=0)
    max_share_changed: float | None = Field(default=None, ge=0, le=1)
    tolerance: float = Field(default=1e-9, ge=0)  # |candidate - stable| above this counts as changed
    min_requests: int = Field(default=20, ge=1)  # compared requests before a verdict

    @model_validator(mode="after")
    def _some_rule(self) -> ShadowAnalysisSpec:
        if self.max_mean_abs_diff is None and self.max_share_changed is None:
            raise ValueError(
                f"a shadow analysis needs at least one rule: add {' or '.join(SHADOW_RULES)} "
                "(e.g. analysis: {max_share_changed: 0.05})"
            )
        return self


class ShadowSpec(_Spec):
    percent: int = Field(default=10, ge=1, le=100)  # of live requests copied to the candidate
    duration: Duration = 300.0
    path: str = Field(default="/predict", pattern=r"^/[^\s]*$")  # only requests to this path
    prediction: str = Field(default="/predictions", pattern=r"^(/.*)?$")  # JSON pointer in the answer
    analysis: ShadowAnalysisSpec


class WatchSpec(_Spec):
    duration: Duration = 600.0
    interval: Duration = 30.0
    analysis: AnalysisSpec

    @model_validator(mode="after")
    def _interval(self) -> WatchSpec:
        if self.interval > self.duration:
            raise ValueError(
                f"interval ({self.interval:g}s) is longer than duration ({self.duration:g}s): "
                "a watch judges at least one interval"
            )
        return self


def _strategy_shorthand(v: Any) -> Any:
    """``strategy: switch`` is the default; the other kinds need their settings."""
    if v == "switch" or v is None:
        return {}
    if isinstance(v, str):
        if v in ("canary", "shadow", "watch"):
            raise ValueError(
                f"'{v}' needs its settings: write strategy: {{{v}: {{...}}}}, e.g. "
                "strategy: {canary: {steps: [5, 25, 50, 100], interval: 60s, "
                "analysis: {max_error_rate: 0.01}}}"
            )
        raise ValueError(f"unknown strategy {v!r}: switch, or a mapping with canary, shadow and/or watch")
    return v


class StrategySpec(_Spec):
    canary: CanarySpec | None = None
    shadow: ShadowSpec | None = None
    watch: WatchSpec | None = None

    @model_validator(mode="after")
    def _one(self) -> StrategySpec:
        if self.canary is not None and self.shadow is not None:
            raise ValueError(
                "canary and shadow cannot both be set: shadow first in one deploy step, "
                "or choose one (a watch can follow either)"
            )
        return self

    @property
    def kind(self) -> str:
        return "canary" if self.canary else "shadow" if self.shadow else "switch"


Strategy = Annotated[StrategySpec, BeforeValidator(_strategy_shorthand)]

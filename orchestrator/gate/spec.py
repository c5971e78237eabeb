"""``model_check`` in pipeline.yaml: the schema (pydantic) and the checks across keys.

Two modes: ``http`` (the default) judges the deployed candidate through its own HTTP API, with the
same rows sent to the environment of ``compare_to``; ``in_image`` runs a small evaluator script in
the built image on the model from the build's artifacts. docs/pipeline.md documents every key.

Pure: imported by ``orchestrator.pipeline`` (which owns the rest of the schema), imports nothing of it
at run time (the type names below are for the checker only).
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.gate.rules import HIGHER_IS_BETTER, TASK_METRICS

if TYPE_CHECKING:
    from orchestrator.pipeline import Pipeline, Step

Path_ = tuple[str | int, ...]
PRESETS = ("flat", "instances", "mlflow_split", "mlflow_records", "kserve_v2")
GOLDEN_SUFFIXES = (".csv", ".jsonl", ".ndjson")
LOADER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoundSpec(_Spec):
    min: float | None = None
    max: float | None = None


class LatencySpec(_Spec):
    """``p50_ms``/``p99_ms``: the gate's own requests (http); ``single_ms``/``batch_ms``: in the image."""

    p50_ms: float | None = Field(default=None, gt=0)
    p99_ms: float | None = Field(default=None, gt=0)
    single_ms: float | None = Field(default=None, gt=0)
    batch_ms: float | None = Field(default=None, gt=0)
    batch_rows: int = Field(default=1000, ge=1, le=100_000)


class RequestSpec(_Spec):
    """How one request to the service looks (``preset``), where it goes, and how fast the gate may send."""

    preset: Literal["flat", "instances", "mlflow_split", "mlflow_records", "kserve_v2"] = "flat"
    path: str | None = Field(default=None, pattern=r"^/")  # default: /predict, KServe /v2/models/<m>/infer
    method: Literal["POST", "PUT"] = "POST"
    batch_size: int | None = Field(default=None, ge=1, le=10_000)  # default: 1 for flat, else 100
    rows: Literal["objects", "lists"] = "objects"  # instances: a row as {name: value} or [values]
    model_name: str = Field(default="model", pattern=r"^[A-Za-z0-9_.-]{1,128}$")  # kserve_v2
    input_name: str = Field(default="input-0", min_length=1)  # kserve_v2
    datatype: str = Field(default="FP64", pattern=r"^[A-Z0-9]{2,8}$")  # kserve_v2
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=10.0, gt=0, le=600)  # seconds per request
    rate_limit: float = Field(default=20.0, gt=0, le=10_000)  # requests per second, per environment


class ResponseSpec(_Spec):
    """Where the answers are: JSON pointers (RFC 6901) into the response body."""

    prediction: str | None = None  # default: "" for flat, /predictions, KServe /outputs/0/data
    probabilities: str | None = None  # classification: one list of class probabilities per row
    classes: list[str | int | float] | None = None  # the order of those probabilities (default: sorted)


class DiffSpec(_Spec):
    """The prediction-diff report between candidate and baseline."""

    tolerance: float = Field(default=0.01, ge=0)  # regression: relative to the baseline's prediction
    show: int = Field(default=5, ge=0, le=100)  # how many of the largest differences to list


class ModelCheckSpec(_Spec):
    """The model gate (orchestrator/steps/model_check.py): rules checked against a golden set."""

    mode: Literal["http", "in_image"] = "http"
    golden: str = Field(min_length=1)  # path in the repository checkout (.csv or .jsonl)
    target: str = Field(min_length=1)  # the label column; every other column is a feature
    task: Literal["regression", "classification"] = "regression"
    environment: str | None = None  # http: where the candidate runs (default: the last deploy before)
    compare_to: str | None = None  # environment whose deployed model is the baseline
    baseline: Literal["required", "optional", "if_deployed"] = "required"
    request: RequestSpec = Field(default_factory=RequestSpec)
    response: ResponseSpec = Field(default_factory=ResponseSpec)
    diff: DiffSpec = Field(default_factory=DiffSpec)
    model: str = Field(default="model/model.skops", min_length=1)  # in_image: path in the artifacts
    loader: str | None = None  # in_image: "module:function" in the image that loads a model file
    thresholds: dict[str, BoundSpec] = Field(default_factory=dict)
    no_worse_than_deployed: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    latency: LatencySpec | None = None


def candidate_environment(p: Pipeline, index: int) -> str | None:
    """The environment the http gate judges: ``environment:``, else the last deploy step before it."""
    spec: ModelCheckSpec = p.steps[index].spec
    if spec.environment is not None:
        return spec.environment
    for step in reversed(p.steps[:index]):
        if step.kind == "deploy":
            return str(step.spec.environment)
    return None


def _relative_inside(value: str) -> bool:
    return not value.startswith("/") and ".." not in value.split("/") and "\\" not in value


class _Check:
    """The checks across keys of one model_check step; each method adds its errors to ``errs``."""

    def __init__(self, step: Step, p: Pipeline, index: int, errs: Any) -> None:
        self.step, self.p, self.index, self.errs = step, p, index, errs
        self.spec: ModelCheckSpec = step.spec
        self.at: Path_ = ("steps", index, "model_check")

    def add(self, message: str, *keys: str | int) -> None:
        self.errs.add(message, (*self.at, *keys))

    def paths(self) -> None:
        spec = self.spec
        if not _relative_inside(spec.golden):
            self.add(
                f"golden must be a path inside the repository (relative, no '..'), got {spec.golden!r}",
                "golden",
            )
        elif not spec.golden.endswith(GOLDEN_SUFFIXES):
            self.add(
                f"golden must be a .csv or .jsonl file (JSON lines: one object per row), got {spec.golden!r}",
                "golden",
            )
        if not _relative_inside(spec.model):
            self.add(
                "model must be a path inside the build's artifact directory (relative, no '..'), "
                f"got {spec.model!r}",
                "model",
            )

    def in_image(self, built: bool, artifacts: bool) -> None:
        name = self.step.name
        if not built:
            self.add(
                f"step '{name}' evaluates the model in the image built by an earlier docker_build step, "
                "but none comes before it"
            )
        if not artifacts:
            self.add(
                f"step '{name}' checks a model from the build's artifacts, but no earlier docker_run step "
                f"has artifacts: (add one that writes {self.spec.model} under it)"
            )
        loader = self.spec.loader
        if loader is not None and not LOADER_RE.match(loader):
            self.add(
                f"loader must be module:function in the image (e.g. inference.model:load_model), "
                f"got {loader!r}",
                "loader",
            )
        lat = self.spec.latency
        if lat is not None and (lat.p50_ms or lat.p99_ms):
            self.add("mode: in_image times the model in the image: use single_ms and batch_ms", "latency")

    def http(self) -> None:
        spec = self.spec
        env = candidate_environment(self.p, self.index)
        if env is None:
            self.add(
                f"step '{self.step.name}' judges a deployed service over HTTP, but no deploy step comes "
                "before it: deploy the candidate first (e.g. to qa), set environment:, or use mode: in_image"
            )
        elif spec.environment is not None:
            self.environment(env, "environment")
        lat = spec.latency
        if lat is not None and (lat.single_ms or lat.batch_ms):
            self.add("mode: http times the gate's own requests: use p50_ms and p99_ms", "latency")
        if spec.request.preset == "flat" and (spec.request.batch_size or 1) > 1:
            self.add(
                "preset flat sends one row per request: remove batch_size or choose a batch preset",
                "request",
                "batch_size",
            )
        if env is not None and env == spec.compare_to:
            self.add(
                f"compare_to names the candidate's own environment '{env}': compare with another one",
                "compare_to",
            )
        if spec.response.probabilities is not None:
            return
        for group in ("thresholds", "no_worse_than_deployed"):
            for metric in set(getattr(spec, group)) & {"roc_auc", "log_loss"}:
                self.add(
                    f"{metric} needs the class probabilities: set response.probabilities to where the "
                    "service answers them (a JSON pointer)",
                    group,
                    metric,
                )

    def environment(self, env: str | None, key: str) -> None:
        if env is None:
            return
        if env not in self.p.environments:
            known = ", ".join(sorted(self.p.environments)) or "none defined"
            self.add(f"unknown environment '{env}'; environments: {known}", key)
        elif self.spec.mode == "http" and self.p.environments[env].container.publish is None:
            self.add(
                f"the http gate reaches '{env}' on its published port: set "
                f"environments.{env}.container.publish",
                key,
            )

    def metrics(self) -> None:
        spec = self.spec
        allowed = TASK_METRICS[spec.task]
        known = ", ".join(allowed)
        for group in ("thresholds", "no_worse_than_deployed"):
            for metric in getattr(spec, group):
                if metric in allowed:
                    continue
                if metric in HIGHER_IS_BETTER:
                    why = f"'{metric}' is not a {spec.task} metric"
                else:
                    hint = difflib.get_close_matches(metric, allowed, n=1)
                    why = f"unknown metric '{metric}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                self.add(f"{why}; {spec.task} metrics: {known}", group, metric)
        for metric, bound in spec.thresholds.items():
            if bound.min is None and bound.max is None:
                self.add("a threshold needs min, max or both", "thresholds", metric)
            elif bound.min is not None and bound.max is not None and bound.min > bound.max:
                self.add(f"min {bound.min:g} is greater than max {bound.max:g}", "thresholds", metric)
        if spec.no_worse_than_deployed and spec.compare_to is None:
            self.add(
                "no_worse_than_deployed needs compare_to: the environment whose deployed model is "
                "the baseline",
                "no_worse_than_deployed",
            )
        if spec.task == "regression" and spec.response.probabilities is not None:
            self.add("probabilities are for task: classification", "response", "probabilities")


def check_model_check(step: Step, p: Pipeline, built: bool, artifacts: bool, index: int, errs: Any) -> None:
    """Every cross-key error of the model_check step at ``steps[index]`` (messages say how to fix it)."""
    check = _Check(step, p, index, errs)
    check.paths()
    if check.spec.mode == "in_image":
        check.in_image(built, artifacts)
    else:
        check.http()
    check.environment(check.spec.compare_to, "compare_to")
    check.metrics()

"""model_check in pipeline.yaml: every cross-key check, with its exact message (file:line: key: what to do)."""

# ruff: noqa: E501  (the exact messages read best unbroken)

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.build.artifacts import model_path
from orchestrator.errors import PipelineError
from orchestrator.gate.rules import Bound, GateRules
from orchestrator.gate.spec import candidate_environment
from orchestrator.pipeline import load_pipeline
from orchestrator.steps.model_check import rules

HEAD = "version: 1\nname: app\nimage: reg/app\n"
STEPS = (
    "steps:\n  - name: build\n    docker_build: {}\n"
    "  - name: train\n    docker_run: {command: [train], artifacts: /artifacts}\n"
    "  - name: deploy-qa\n    deploy: {environment: qa}\n"
)
ENVS = (
    "environments:\n  qa:\n    hosts: [{host: 127.0.0.1}]\n    container: {name: q, publish: 8500}\n"
    "  prod:\n    hosts: [{host: 127.0.0.1}]\n    container: {name: p, publish: 8600}\n"
)


def gate(body: str, steps: str = STEPS, envs: str = ENVS) -> str:
    lines = "".join(f"      {line}\n" for line in body.strip().splitlines())
    return HEAD + steps + "  - name: gate\n    model_check:\n" + lines + envs


INVALID = {
    "unknown metric": (
        gate("golden: g.csv\ntarget: y\nthresholds: {accuracy: {min: 0.9}}"),
        "pipeline.yaml:15: steps[3].model_check.thresholds.accuracy: 'accuracy' is not a regression metric; regression metrics: mae, rmse, r2, mape",
    ),
    "close": (
        gate("golden: g.csv\ntarget: y\ncompare_to: prod\nno_worse_than_deployed: {maee: 0.1}"),
        "pipeline.yaml:16: steps[3].model_check.no_worse_than_deployed.maee: unknown metric 'maee' (did you mean 'mae'?); regression metrics: mae, rmse, r2, mape",
    ),
    "cls metric on regression": (
        gate("golden: g.csv\ntarget: y\ntask: classification\nthresholds: {r2: {min: 0.9}}"),
        "pipeline.yaml:16: steps[3].model_check.thresholds.r2: 'r2' is not a classification metric; classification metrics: accuracy, precision_macro, recall_macro, f1_macro, roc_auc, log_loss",
    ),
    "bad preset": (
        gate("golden: g.csv\ntarget: y\nrequest: {preset: tfserving}"),
        "pipeline.yaml:15: steps[3].model_check.request.preset: input should be 'flat', 'instances', 'mlflow_split', 'mlflow_records' or 'kserve_v2'",
    ),
    "flat batch": (
        gate("golden: g.csv\ntarget: y\nrequest: {preset: flat, batch_size: 10}"),
        "pipeline.yaml:15: steps[3].model_check.request.batch_size: preset flat sends one row per request: remove batch_size or choose a batch preset",
    ),
    "no target": (
        gate("golden: g.csv"),
        "pipeline.yaml:13: steps[3].model_check.target: missing required key 'target'",
    ),
    "golden suffix": (
        gate("golden: g.parquet\ntarget: y"),
        "pipeline.yaml:13: steps[3].model_check.golden: golden must be a .csv or .jsonl file (JSON lines: one object per row), got 'g.parquet'",
    ),
    "roc without proba": (
        gate("golden: g.csv\ntarget: y\ntask: classification\nthresholds: {roc_auc: {min: 0.9}}"),
        "pipeline.yaml:16: steps[3].model_check.thresholds.roc_auc: roc_auc needs the class probabilities: set response.probabilities to where the service answers them (a JSON pointer)",
    ),
    "proba regression": (
        gate("golden: g.csv\ntarget: y\nresponse: {probabilities: /p}"),
        "pipeline.yaml:15: steps[3].model_check.response.probabilities: probabilities are for task: classification",
    ),
    "no deploy before": (
        gate("golden: g.csv\ntarget: y", steps="steps:\n  - name: build\n    docker_build: {}\n"),
        "pipeline.yaml:9: steps[1].model_check: step 'gate' judges a deployed service over HTTP, but no deploy step comes before it: deploy the candidate first (e.g. to qa), set environment:, or use mode: in_image",
    ),
    "unpublished": (
        gate("golden: g.csv\ntarget: y\ncompare_to: prod", envs=ENVS.replace(", publish: 8600", "")),
        "pipeline.yaml:15: steps[3].model_check.compare_to: the http gate reaches 'prod' on its published port: set environments.prod.container.publish",
    ),
    "compare self": (
        gate("golden: g.csv\ntarget: y\ncompare_to: qa"),
        "pipeline.yaml:15: steps[3].model_check.compare_to: compare_to names the candidate's own environment 'qa': compare with another one",
    ),
    "latency http keys": (
        gate("golden: g.csv\ntarget: y\nlatency: {single_ms: 5}"),
        "pipeline.yaml:15: steps[3].model_check.latency: mode: http times the gate's own requests: use p50_ms and p99_ms",
    ),
    "latency in_image keys": (
        gate("mode: in_image\ngolden: g.csv\ntarget: y\nlatency: {p99_ms: 5}"),
        "pipeline.yaml:16: steps[3].model_check.latency: mode: in_image times the model in the image: use single_ms and batch_ms",
    ),
    "bad baseline": (
        gate("golden: g.csv\ntarget: y\nbaseline: maybe"),
        "pipeline.yaml:15: steps[3].model_check.baseline: input should be 'required', 'optional' or 'if_deployed'",
    ),
    "bad env": (
        gate("golden: g.csv\ntarget: y\nenvironment: staging"),
        "pipeline.yaml:15: steps[3].model_check.environment: unknown environment 'staging'; environments: prod, qa",
    ),
    "bad loader": (
        gate("mode: in_image\ngolden: g.csv\ntarget: y\nloader: 'inference.model'"),
        "pipeline.yaml:16: steps[3].model_check.loader: loader must be module:function in the image (e.g. inference.model:load_model), got 'inference.model'",
    ),
    "unknown key": (
        gate("golden: g.csv\ntarget: y\nthreshold: {r2: {min: 1}}"),
        "pipeline.yaml:15: steps[3].model_check.threshold: unknown key 'threshold' (did you mean 'thresholds'?); allowed: mode, golden, target, task, environment, compare_to, baseline, request, response, diff, model, loader, thresholds, no_worse_than_deployed, latency",
    ),
    "unknown request key": (
        gate("golden: g.csv\ntarget: y\nrequest: {rate: 5}"),
        "pipeline.yaml:15: steps[3].model_check.request.rate: unknown key 'rate'; allowed: preset, path, method, batch_size, rows, model_name, input_name, datatype, headers, timeout, rate_limit",
    ),
    "rate 0": (
        gate("golden: g.csv\ntarget: y\nrequest: {rate_limit: 0}"),
        "pipeline.yaml:15: steps[3].model_check.request.rate_limit: input should be greater than 0",
    ),
    "in_image no build": (
        gate(
            "mode: in_image\ngolden: g.csv\ntarget: y",
            steps="steps:\n  - name: train\n    docker_run: {command: [t], image: x, artifacts: /a}\n",
        ),
        "pipeline.yaml:9: steps[1].model_check: step 'gate' evaluates the model in the image built by an earlier docker_build step, but none comes before it",
    ),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_model_check_is_refused_with_the_exact_message(name: str) -> None:
    text, message = INVALID[name]
    with pytest.raises(PipelineError) as err:
        load_pipeline(text)
    assert str(err.value) == message


VALID = gate("""
golden: inference/golden.csv
target: price
compare_to: prod
baseline: if_deployed
request: {preset: instances, batch_size: 50, rate_limit: 5, timeout: 3}
thresholds: {r2: {min: 0.8}, mae: {max: 80000}}
no_worse_than_deployed: {mae: 0.05, r2: 0.02}
latency: {p50_ms: 100, p99_ms: 500}
""")


def test_valid_model_check_and_its_rules() -> None:
    p = load_pipeline(VALID)
    spec = p.step("gate").model_check
    assert spec is not None and spec.mode == "http" and spec.request.batch_size == 50
    assert rules(spec) == GateRules(
        thresholds={"r2": Bound(min=0.8), "mae": Bound(max=80000)},
        no_worse_than_deployed={"mae": 0.05, "r2": 0.02},
        latency_ms={"p50_ms": 100, "p99_ms": 500},
        baseline="if_deployed",
        compare_to="prod",
        reached="answers",
    )
    assert candidate_environment(p, 3) == "qa", "the last deploy before the gate"
    assert model_path(p) == "model/model.skops"


def test_explicit_environment_wins_over_the_deploy_before() -> None:
    p = load_pipeline(gate("golden: g.csv\ntarget: y\nenvironment: prod"))
    assert candidate_environment(p, 3) == "prod"


def test_the_example_pipeline_gates_prod_after_qa_over_http() -> None:
    text = (Path(__file__).resolve().parents[2] / "pipeline.yaml").read_text()
    p = load_pipeline(text)
    assert [s.name for s in p.steps] == ["build", "test", "train", "push", "deploy-qa", "gate", "deploy-prod"]
    spec = p.step("gate").model_check
    assert spec is not None and spec.mode == "http" and spec.compare_to == "prod"
    assert candidate_environment(p, 5) == "qa"

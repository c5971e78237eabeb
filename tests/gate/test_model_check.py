"""``mode: in_image`` for real: the example image built from the repository, models trained inside it
into the build's artifacts, the evaluator script copied into a container of that image (no network,
nothing mounted) and run with the image's own loader, through the real runner and Redis."""

from __future__ import annotations

import json

import pytest

from orchestrator.build.artifacts import artifacts_dir
from orchestrator.models import BuildStatus, Deployment, StepStatus
from tests.pipeline.conftest import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TRAIN = "[python3, -m, inference.train, --out, /artifacts/model, --trees, '8', --rows, '5000'{extra}]"
GATE = """\
  - name: gate
    model_check:
      mode: in_image
      golden: inference/golden.csv
      target: price
      model: {model}
      loader: inference.model:load_model
      compare_to: prod
      baseline: if_deployed
      thresholds: {{r2: {{min: 0.8}}}}
      no_worse_than_deployed: {{mae: 0.05, r2: 0.02}}
      latency: {{single_ms: 2000, batch_ms: 30000, batch_rows: 500}}
"""
TAMPER_JSON = (
    "import json, pathlib; p = pathlib.Path('/artifacts/model/model.json'); d = json.loads(p.read_text()); "
    "d['sha256'] = '0' * 64; p.write_text(json.dumps(d))"
)


def pipeline(train_extra: str = "", model: str = "model/model.skops", tamper: str = "") -> str:
    steps = f"""\
  - name: build
    docker_build: {{build_args: {{BASE_IMAGE: "${{BASE_IMAGE}}"}}}}
  - name: train
    docker_run: {{command: {TRAIN.format(extra=train_extra)}, artifacts: /artifacts}}
"""
    if tamper:
        steps += (
            f"  - name: tamper\n    docker_run: {{command: [python3, -c, {json.dumps(tamper)}], "
            "artifacts: /artifacts}\n"
        )
    return (
        'version: 1\nname: gate-test\nimage: "${REGISTRY}/gate-test"\nsteps:\n'
        + steps
        + GATE.format(model=model)
        + "environments:\n  prod:\n    hosts: [{host: 127.0.0.1}]\n    container: {name: gate-prod}\n"
    )


def _deployed_to_prod(builds, build) -> None:
    """Record ``build`` as Prod's deployment (what the deploy step writes after a successful swap)."""
    gate = build.gate["gate"]
    builds.store.set_deployment(
        Deployment(
            repo=REPO,
            environment="prod",
            build_id=build.id,
            build_number=build.number,
            image=build.image,
            sha=build.sha,
            model_sha256=gate["candidate_sha256"],
        )
    )


def test_good_model_passes_then_shuffled_labels_is_stopped_with_the_comparison(gate_builds, github) -> None:
    good = gate_builds.commit_and_run(pipeline())
    log = gate_builds.store.log_text(good.id)
    assert good.status is BuildStatus.SUCCESS, f"{good.error}\n{log[-3000:]}"
    gate = good.gate["gate"]
    assert gate["passed"] is True and gate["baseline"]["deployed"] is False
    assert (
        gate["note"]
        == "thresholds only: nothing is deployed to prod yet (first deploy; baseline: if_deployed)"
    )
    assert gate["candidate"]["metrics"]["r2"] > 0.8
    model = artifacts_dir(gate_builds.settings.workspace, good.id) / "model" / "model.skops"
    assert model.is_file(), "the artifact directory outlives the build's workspace"
    assert gate["candidate_sha256"] == gate["candidate"]["sha256"]
    assert "PASS  r2 threshold" in log and "PASS  loads: under scikit-learn 1.9.1" in log
    assert {s.name: s.status for s in good.steps}["gate"] is StepStatus.SUCCESS

    _deployed_to_prod(gate_builds, good)
    bad = gate_builds.commit_and_run(pipeline(", --shuffle-labels"))
    log = gate_builds.store.log_text(bad.id)
    assert bad.status is BuildStatus.FAILED, log[-3000:]
    step = {s.name: s for s in bad.steps}["gate"]
    assert step.status is StepStatus.FAILED
    assert step.error == "model gate failed: r2 threshold, mae vs deployed, r2 vs deployed"
    gate = bad.gate["gate"]
    assert gate["passed"] is False and gate["baseline_build"] == good.number
    assert gate["baseline"]["sha256"] == good.gate["gate"]["candidate_sha256"]
    assert gate["candidate"]["metrics"]["r2"] < 0.2 < gate["baseline"]["metrics"]["r2"]
    assert step.details["gate"] == gate
    # the comparison, in the log: both models side by side and every rule with its numbers
    assert "metric                   candidate        deployed  result  rule" in log
    assert "prediction diff: " in log
    assert "FAIL  mae vs deployed: mae = " in log and "FAIL  r2 threshold: r2 = " in log
    assert f"baseline: build #{good.number} (deployed to prod)" in log
    final = [c.body for c in github.calls if c.path.endswith(bad.sha)][-1]
    assert final["state"] == "failure"
    assert final["description"] == "model gate failed: r2 threshold, mae vs deployed, r2 vs deployed"


@pytest.mark.parametrize(
    ("name", "kw", "reason"),
    [
        ("model.json does not match the model", {"tamper": TAMPER_JSON}, "sha256 mismatch"),
        ("an unpinned pickle", {"train_extra": ", --format, pickle", "model": "model/model.pkl"}, "pickle"),
    ],
)
def test_a_model_the_serving_image_cannot_load_is_stopped(gate_builds, name, kw, reason) -> None:
    build = gate_builds.commit_and_run(pipeline(**kw))
    log = gate_builds.store.log_text(build.id)
    assert build.status is BuildStatus.FAILED, log[-3000:]
    step = {s.name: s for s in build.steps}["gate"]
    assert step.error is not None
    assert step.error.startswith("model gate failed: loads (ModelLoadError: cannot load model"), step.error
    assert reason in step.error.lower(), step.error
    assert build.gate["gate"]["checks"][0]["name"] == "loads"
    assert "FAIL  loads: ModelLoadError: cannot load model" in log

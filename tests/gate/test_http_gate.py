"""The http gate for real: a user's service (Flask + scikit-learn, nothing of mlship in its image) runs
in containers published on loopback ports as "qa" and "prod"; the gate step runs in the real runner
with Redis, sends the golden rows to both over HTTP and judges."""

# ruff: noqa: E501  (the exact messages read best unbroken)

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from orchestrator.models import Build, BuildStatus, Deployment, StepStatus
from tests.gate.conftest import GOLDEN_CLS, GOLDEN_REG
from tests.pipeline.conftest import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPORTS = Path("/tmp/mlship-gate-reports")  # the comparison of a stopped model, for people

CLASSIFY = """\
golden: golden_cls.csv
target: species
task: classification
environment: qa
compare_to: prod
baseline: {baseline}
request: {{preset: instances, batch_size: 50, rate_limit: 50, timeout: 5}}
response: {{prediction: /predictions, probabilities: /probabilities}}
thresholds: {{accuracy: {{min: 0.8}}, f1_macro: {{min: 0.8}}, roc_auc: {{min: 0.85}}}}
no_worse_than_deployed: {{accuracy: 0.01, f1_macro: 0.01}}
latency: {{p99_ms: 5000}}
"""
REGRESS = """\
golden: golden_reg.csv
target: y
environment: qa
compare_to: prod
baseline: {baseline}
request: {{preset: flat, rate_limit: 100, timeout: 5}}
thresholds: {{r2: {{min: 0.9}}, mape: {{max: 0.1}}}}
no_worse_than_deployed: {{mae: 0.05}}
diff: {{tolerance: 0.001, show: 3}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pipeline(gate: str, qa: int, prod: int, baseline: str = "required") -> str:
    body = "".join(f"      {line}\n" for line in gate.format(baseline=baseline).splitlines())
    return (
        'version: 1\nname: user-model\nimage: "${REGISTRY}/user-model"\nsteps:\n'
        "  - name: gate\n    model_check:\n" + body + "environments:\n"
        f"  qa:\n    hosts: [{{host: 127.0.0.1}}]\n    container: {{name: svc-qa, publish: {qa}}}\n"
        f"  prod:\n    hosts: [{{host: 127.0.0.1}}]\n    container: {{name: svc-prod, publish: {prod}}}\n"
    )


def run_gate(builds, text: str, prod_deployed: bool = True) -> Build:
    """Run a build whose QA deployment is this build (what deploy-qa records) and Prod runs build #41."""
    build = builds.create(builds.commit(text, {"golden_cls.csv": GOLDEN_CLS, "golden_reg.csv": GOLDEN_REG}))
    deployed = {"repo": REPO, "image": "reg/user-model:1", "sha": build.sha, "model_sha256": "c" * 64}
    builds.store.set_deployment(
        Deployment(environment="qa", build_id=build.id, build_number=build.number, **deployed)
    )
    if prod_deployed:
        base = {**deployed, "model_sha256": "b" * 64}
        builds.store.set_deployment(Deployment(environment="prod", build_id=10_000, build_number=41, **base))
    return builds.run(build)


def gate_of(build: Build) -> dict:
    return build.gate["gate"]


def step_of(build: Build):  # type: ignore[no-untyped-def]
    return {s.name: s for s in build.steps}["gate"]


def test_a_better_classifier_passes(gate_builds, services) -> None:
    qa, prod = services.start("classifier"), services.start("classifier-weak")
    build = run_gate(gate_builds, pipeline(CLASSIFY, qa, prod))
    log = gate_builds.store.log_text(build.id)
    assert build.status is BuildStatus.SUCCESS, log[-3000:]
    g = gate_of(build)
    cm, bm = g["candidate"]["metrics"], g["baseline"]["metrics"]
    assert set(cm) == {"accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "log_loss"}
    assert cm["accuracy"] > 0.8 > bm["accuracy"] and cm["f1_macro"] > bm["f1_macro"]
    assert g["baseline_build"] == 41 and g["baseline"]["sha256"] == "b" * 64
    assert g["candidate"]["how"] == f"200 rows, 4 request(s) to http://127.0.0.1:{qa}/predict"
    assert g["candidate"]["latency_ms"]["requests"] == 4
    assert 0 < g["diff"]["changed"] < 200 and g["diff"]["rule"].startswith("a different label; ")
    assert {r["metric"]: r["passed"] for r in g["comparison"]}["accuracy"] is True
    assert f"candidate: POST http://127.0.0.1:{qa}/predict (instances, 50 row(s) per request)" in log
    assert "model gate passed (baseline: build #41 in prod)" in log
    assert gate_builds.store.counters("gates") == {"passed": 1}, "counted for /metrics"


def test_a_label_shuffled_classifier_is_stopped_with_accuracy_and_f1(gate_builds, services) -> None:
    qa, prod = services.start("classifier-shuffled"), services.start("classifier")
    build = run_gate(gate_builds, pipeline(CLASSIFY, qa, prod))
    log = gate_builds.store.log_text(build.id)
    assert build.status is BuildStatus.FAILED, log[-3000:]
    assert step_of(build).status is StepStatus.FAILED
    assert step_of(build).error == (
        "model gate failed: accuracy threshold, f1_macro threshold, roc_auc threshold, accuracy vs deployed, "
        "f1_macro vs deployed"
    )
    g = gate_of(build)
    rows = {r["metric"]: r for r in g["comparison"]}
    assert (
        rows["accuracy"]["passed"] is False
        and rows["accuracy"]["candidate"] < 0.6 < rows["accuracy"]["deployed"]
    )
    assert rows["f1_macro"]["rule"] == "≥ 0.8; ≥ deployed - 0.01" and rows["f1_macro"]["passed"] is False
    assert g["diff"]["changed"] > 50 and len(g["diff"]["largest"]) == 5
    assert set(g["diff"]["largest"][0]["inputs"]) == {"f0", "f1", "f2", "f3"}
    start = log.rindex("\n", 0, log.index("metric            ")) + 1
    end = log.index("\n", log.index("model gate FAILED"))
    excerpt = log[start:end]
    assert "FAIL  accuracy vs deployed: accuracy = " in excerpt and "prediction diff: " in excerpt
    assert gate_builds.store.counters("gates") == {"failed": 1}
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "shuffled-classifier.txt").write_text(excerpt)
    print("\n--- the gate's comparison for the label-shuffled classifier ---\n" + excerpt)


def test_a_regression_service_answering_numpy_strings(gate_builds, services) -> None:
    qa, prod = services.start("regressor"), services.start("regressor")
    build = run_gate(gate_builds, pipeline(REGRESS, qa, prod))
    log = gate_builds.store.log_text(build.id)
    assert build.status is BuildStatus.SUCCESS, log[-3000:]
    g = gate_of(build)
    assert g["candidate"]["metrics"]["r2"] > 0.9 and g["candidate"]["metrics"]["mape"] < 0.1
    assert g["candidate"]["metrics"] == g["baseline"]["metrics"], "the same model in both"
    assert g["candidate"]["latency_ms"]["requests"] == 80, "flat: one request per row"
    assert g["diff"] == {
        "rows": 80,
        "changed": 0,
        "rule": "|candidate - baseline| > 0.001 * |baseline|",
        "largest": [],
    }


@pytest.mark.parametrize("baseline", ["required", "if_deployed"])
def test_an_unreachable_baseline_fails_the_gate(gate_builds, services, baseline: str) -> None:
    qa, nothing = services.start("regressor"), free_port()
    build = run_gate(gate_builds, pipeline(REGRESS, qa, nothing, baseline))
    log = gate_builds.store.log_text(build.id)
    assert build.status is BuildStatus.FAILED, log[-3000:]
    error = step_of(build).error
    assert error.startswith(
        f"model gate failed: baseline in prod (POST http://127.0.0.1:{nothing}/predict: cannot connect (ConnectionError"
    ), error
    assert error.endswith("the gate fails closed; set baseline: optional to accept thresholds only)")
    assert gate_of(build)["candidate"]["metrics"]["r2"] > 0.9, "the candidate itself was fine"


def test_with_baseline_optional_an_unreachable_baseline_passes_on_thresholds_and_says_so(
    gate_builds, services
) -> None:
    qa, nothing = services.start("regressor"), free_port()
    build = run_gate(gate_builds, pipeline(REGRESS, qa, nothing, "optional"), prod_deployed=True)
    log = gate_builds.store.log_text(build.id)
    assert build.status is BuildStatus.SUCCESS, log[-3000:]
    g = gate_of(build)
    assert g["note"].startswith("thresholds only: the baseline was not compared (POST http://127.0.0.1:")
    assert g["note"].endswith("; baseline: optional")
    assert "note: thresholds only" in log and g["diff"] is None


def test_first_deploy_with_if_deployed_passes_on_thresholds(gate_builds, services) -> None:
    qa = services.start("regressor")
    build = run_gate(gate_builds, pipeline(REGRESS, qa, free_port(), "if_deployed"), prod_deployed=False)
    assert build.status is BuildStatus.SUCCESS, gate_builds.store.log_text(build.id)[-3000:]
    assert (
        gate_of(build)["note"]
        == "thresholds only: nothing is deployed to prod yet (first deploy; baseline: if_deployed)"
    )


def test_malformed_answers_name_the_row_and_show_the_response(gate_builds, services) -> None:
    qa, prod = services.start("regressor-malformed"), services.start("regressor")
    build = run_gate(gate_builds, pipeline(REGRESS, qa, prod))
    assert build.status is BuildStatus.FAILED
    rows = GOLDEN_REG.splitlines()[1:]
    bad = next(i for i, r in enumerate(rows) if float(r.split(",")[1]) < 0)
    assert step_of(build).error == (
        f"model gate failed: answers (POST http://127.0.0.1:{qa}/predict for row {bad} (golden_reg.csv line "
        f'{bad + 2}): prediction 0: expected a number or a label, got {{"oops": "no model"}}; the response: '
        '{"oops": "no model"})'
    )

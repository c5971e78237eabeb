"""The model gate end to end: a merge that improves the model reaches Prod; one that degrades it is stopped
after QA, with the comparison in the log, on the build page and in the API, and Prod keeps its model.
The gate is the repository's pipeline.yaml as it stands: the http gate, which sends the golden rows to
QA and to Prod through their published ports (deploy-qa → gate → deploy-prod).

The whole system runs as real processes (``Stack``: web under gunicorn, an RQ worker, Redis, registry,
two sshd hosts). The model is a build artifact: nobody seeds the model volumes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from orchestrator.devstack.demo import SEED_REQUEST
from orchestrator.devstack.stack import Stack
from tests.e2e.test_merge_to_prod import Client, why

pytestmark = [pytest.mark.docker, pytest.mark.ssh, pytest.mark.slow]
TRAIN = '--trees, "30"]'


def _served_model(port: int) -> str:
    r = requests.post(f"http://127.0.0.1:{port}/predict", json=SEED_REQUEST, timeout=10)
    assert r.status_code == 200, r.text
    assert 50_000 < r.json()["predictions"][0] < 2_000_000
    return str(r.json()["model"]["sha256"])


def _log_tail(c: Client, build: dict) -> str:
    return str(c.api("GET", f"/builds/{build['id']}/log").text[-4000:])


def _merge_train(c: Client, stack: Stack, branch: str, train: str, title: str) -> dict:
    pipeline = (Path(stack.origin.work) / "pipeline.yaml").read_text()  # type: ignore[union-attr]
    changed = re.sub(r'--trees, "\d+"(, --shuffle-labels)?\]', train, pipeline)
    assert changed != pipeline or train == TRAIN
    pr, _, _ = c.merge(branch, {"pipeline.yaml": changed}, title)
    assert pr.status == 202, pr.body
    return c.wait(pr.body["build"], timeout=600)


def test_better_model_reaches_prod_worse_model_is_stopped_after_qa(stack) -> None:
    c = Client(stack)
    envs_port = {"qa": 8500, "prod": 8600}  # the example pipeline's publish ports

    # 0. The first gated build: nothing deployed yet, so the gate checks thresholds only.
    b0 = _merge_train(c, stack, "first-model", TRAIN, "Train the first model")
    assert b0["status"] == "success", why(b0) + "\n" + _log_tail(c, b0)
    assert [s["name"] for s in b0["steps"]] == [
        "build",
        "test",
        "train",
        "push",
        "deploy-qa",
        "gate",
        "deploy-prod",
    ]
    g0 = b0["gate"]["gate"]
    assert g0["passed"] is True and g0["baseline"]["deployed"] is False
    assert (
        g0["note"] == "thresholds only: nothing is deployed to prod yet (first deploy; baseline: if_deployed)"
    )
    assert g0["candidate"]["url"] == f"http://127.0.0.1:{envs_port['qa']}/predict", "judged through QA's port"
    assert _served_model(envs_port["prod"]) == g0["candidate_sha256"]

    # 1. More trees: compared with build 0 in Prod, no worse (here: better) → Prod serves the new model.
    b1 = _merge_train(c, stack, "more-trees", '--trees, "60"]', "Use more trees")
    assert b1["status"] == "success", why(b1) + "\n" + _log_tail(c, b1)
    g1 = b1["gate"]["gate"]
    assert g1["passed"] is True and g1["baseline_build"] == b0["number"]
    assert g1["baseline"]["sha256"] == g0["candidate_sha256"]
    assert g1["candidate"]["metrics"]["mae"] < g1["baseline"]["metrics"]["mae"]
    assert g1["baseline"]["url"] == f"http://127.0.0.1:{envs_port['prod']}/predict"
    assert g1["diff"]["rows"] == 1000 and g1["note"] == ""
    prod_model = g1["candidate_sha256"]
    assert _served_model(envs_port["prod"]) == prod_model
    envs = {e["environment"]: e for e in c.api("GET", "/environments").json()["environments"]}
    assert envs["prod"]["current"]["model_sha256"] == prod_model, "the deployment records its model"
    # every recorded model stays on the volume: the prune after the swap removes none of them
    assert "removed 0 unrecorded model(s)" in c.api("GET", f"/builds/{b1['id']}/log").text

    # 2. Shuffled labels: deployed to QA, stopped by the gate, Prod untouched.
    b2 = _merge_train(c, stack, "shuffled", '--trees, "30", --shuffle-labels]', "Retrain (shuffled labels)")
    assert b2["status"] == "failed", why(b2)
    steps = {s["name"]: s for s in b2["steps"]}
    assert steps["deploy-qa"]["status"] == "success"
    assert steps["gate"]["status"] == "failed"
    assert steps["gate"]["error"] == (
        "model gate failed: mae threshold, r2 threshold, mae vs deployed, r2 vs deployed"
    )
    assert steps["deploy-prod"]["status"] == "skipped"
    g2 = b2["gate"]["gate"]
    assert g2["passed"] is False and g2["baseline"]["sha256"] == prod_model
    assert g2["diff"]["changed"] > 500 and len(g2["diff"]["largest"]) == 5
    assert {r["metric"]: r["passed"] for r in g2["comparison"]}["r2"] is False
    assert _served_model(envs_port["prod"]) == prod_model, "Prod still serves the previous model"
    assert _served_model(envs_port["qa"]) == g2["candidate_sha256"], "QA got the candidate before the gate"

    log = c.api("GET", f"/builds/{b2['id']}/log").text
    start = next(i for i, line in enumerate(log.splitlines()) if "metric" in line and "candidate" in line)
    excerpt = log.splitlines()[start - 3 : start + 25]
    print("\n--- gate log of the degraded build ---\n" + "\n".join(excerpt))
    assert any("FAIL  mae vs deployed: mae = " in line for line in excerpt), excerpt
    assert any("FAIL  r2 threshold" in line for line in excerpt)

    html = requests.get(f"{stack.url}/builds/{b2['id']}", timeout=5).text
    assert 'data-passed="no"' in html and "the candidate model was stopped" in html
    assert "mae vs deployed" in html and f"build #{b1['number']}, deployed to <strong>prod</strong>" in html
    assert "measured in <strong>qa</strong> over HTTP" in html and "<strong>Prediction diff:</strong>" in html
    metrics = requests.get(f"{stack.url}/metrics", timeout=5).text
    assert 'mlship_model_gates_total{verdict="passed"} 2.0' in metrics
    assert 'mlship_model_gates_total{verdict="failed"} 1.0' in metrics

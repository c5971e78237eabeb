"""The gate on the build page and in the API: the comparison table (metric, candidate, deployed, rule,
result), each check, the thresholds-only note, the prediction diff, escaped; /metrics counts verdicts."""

# ruff: noqa: E501  (the exact messages read best unbroken)

from __future__ import annotations

import re

from orchestrator.gate.rules import Bound, GateRules, judge
from orchestrator.models import StepRecord, StepStatus
from tests.web.conftest import app, client, rt, seed, settings  # noqa: F401  (fixtures)
from tests.web.test_metrics import scrape

GOOD = {"accuracy": 0.83, "f1_macro": 0.8281, "roc_auc": 0.9617}
BAD = {"accuracy": 0.275, "f1_macro": 0.2427, "roc_auc": 0.415}
RULES = GateRules(
    thresholds={"accuracy": Bound(min=0.8), "f1_macro": Bound(min=0.8)},
    no_worse_than_deployed={"accuracy": 0.01, "f1_macro": 0.01},
    latency_ms={"p99_ms": 5000},
    compare_to="prod",
)
DIFF = {
    "rows": 200,
    "changed": 145,
    "rule": "a different label",
    "largest": [
        {
            "row": 4,
            "line": 6,
            "candidate": "versicolor",
            "baseline": "setosa",
            "label": "setosa",
            "inputs": {"f0": -1.522, "f1": 1.748},
        }
    ],
}


def _model(metrics: dict[str, float], sha: str) -> dict:
    return {
        "ok": True,
        "rows": 200,
        "sha256": sha,
        "metrics": metrics,
        "latency_ms": {"p50": 15.1, "p99": 46.9},
    }


def gate_dict(candidate: dict[str, float], baseline: dict | None = None, **extra: object) -> dict:
    base = _model(GOOD, "2d27c9d85b3822fd" * 4) if baseline is None else baseline
    report = {"models": {"candidate": _model(candidate, "3f792c1ad4f09d7d" * 4), "baseline": base}}
    return {
        **judge(report, RULES).to_dict(),
        "mode": "http",
        "environment": "qa",
        "compare_to": "prod",
        "baseline_build": 4,
        "golden": "golden_cls.csv",
        "diff": DIFF,
        **extra,
    }


def _card(html: str) -> str:
    card = html[html.index('class="card gate"') :]
    return re.split(r"<h2>|</section>", card)[0]


def test_failed_gate_on_the_page_and_in_the_api(client, seed) -> None:  # noqa: F811
    g = gate_dict(BAD)
    error = "model gate failed: accuracy threshold, f1_macro threshold, accuracy vs deployed, f1_macro vs deployed"
    steps = [StepRecord("gate", "model_check", StepStatus.FAILED, 1.0, 9.0, error=error, details={"gate": g})]
    b = seed.build("failed", steps=steps, gate={"gate": g}, error="step 'gate' failed: " + error)  # type: ignore[operator]
    card = _card(client.get(f"/builds/{b.id}").get_data(as_text=True))
    assert 'data-passed="no"' in card and "the candidate model was stopped" in card
    assert (
        "measured in <strong>qa</strong> over HTTP, compared with build #4, deployed to <strong>prod</strong>"
        in card
    )
    row = re.search(r'<tr class="metric fail" data-metric="accuracy">(.*?)</tr>', card, re.S)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert cells[:4] == ["accuracy", "0.2750", "0.8300", "≥ 0.8; ≥ deployed - 0.01"] and "fail" in cells[4]
    assert 'data-metric="latency_p99_ms"' in card and "≤ 5000 ms" in card
    fails = re.findall(r'<tr class="check fail">.*?<td>([^<]+)</td><td class="small">', card, re.S)
    assert fails == [
        "accuracy threshold",
        "f1_macro threshold",
        "accuracy vs deployed",
        "f1_macro vs deployed",
    ]
    assert "<strong>Prediction diff:</strong> 145 of 200 rows changed (a different label)" in card
    assert "<code>f0=-1.522, f1=1.748</code>" in card and "(line 6)" in card
    api = client.get(f"/api/v1/builds/{b.id}").get_json()["gate"]["gate"]
    assert api["passed"] is False and api["diff"] == DIFF
    assert {r["metric"]: r["passed"] for r in api["comparison"]}["f1_macro"] is False


def test_thresholds_only_is_stated_on_the_page(client, seed) -> None:  # noqa: F811
    unreachable = {"ok": False, "deployed": True, "error": "POST http://127.0.0.1:9/predict: cannot connect"}
    g = judge(
        {"models": {"candidate": _model(GOOD, "a" * 64), "baseline": unreachable}},
        GateRules(thresholds={"accuracy": Bound(min=0.8)}, compare_to="prod", baseline="optional"),
    ).to_dict()
    b = seed.build("success", gate={"gate": {**g, "compare_to": "prod", "diff": None}})
    card = _card(client.get(f"/builds/{b.id}").get_data(as_text=True))
    assert 'data-passed="yes"' in card
    assert (
        '<p class="gate-note" data-note="thresholds-only"><strong>thresholds only: the baseline was not '
        "compared (POST http://127.0.0.1:9/predict: cannot connect); baseline: optional</strong></p>"
    ) in card


def test_gate_values_are_escaped(client, seed) -> None:  # noqa: F811
    xss = "<script>window.__gate=1</script>"
    g = gate_dict(GOOD, golden=xss, compare_to=xss)
    g["checks"][0]["detail"] = xss
    g["comparison"][0]["rule"] = xss
    g["diff"] = {**DIFF, "largest": [{**DIFF["largest"][0], "inputs": {xss: xss}}]}  # type: ignore[dict-item]
    b = seed.build("success", gate={xss: g})
    for path in (f"/builds/{b.id}", f"/builds/{b.id}?fragment=summary"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>window.__gate" not in html
        assert "&lt;script&gt;window.__gate=1&lt;/script&gt;" in html


def test_metrics_count_gate_verdicts(client, rt) -> None:  # noqa: F811
    rt.store.incr_counter("gates", "passed", 2)  # as the model_check step does, in a worker
    rt.store.incr_counter("gates", "failed")
    m = scrape(client)
    assert m["mlship_model_gates_total"][(("verdict", "passed"),)] == 2
    assert m["mlship_model_gates_total"][(("verdict", "failed"),)] == 1

"""The gate on the build page and in the API: both models side by side, each rule, the verdict, escaped."""

from __future__ import annotations

import re

from orchestrator.gate.rules import Bound, GateRules, judge
from orchestrator.models import StepRecord, StepStatus
from tests.web.conftest import app, client, rt, seed, settings  # noqa: F401  (fixtures)

GOOD = {"mae": 29871.7, "rmse": 45768.1, "r2": 0.9277}
BAD = {"mae": 133083.2, "rmse": 181289.4, "r2": -0.0171}
RULES = GateRules(
    thresholds={"r2": Bound(min=0.8)},
    no_worse_than_deployed={"mae": 0.05, "r2": 0.02},
    single_ms=100,
    batch_ms=3000,
)


def _model(metrics: dict[str, float], sha: str) -> dict:
    return {
        "loaded": True,
        "finite": True,
        "rows": 1000,
        "sha256": sha,
        "metrics": metrics,
        "latency_ms": {"single": 1.3, "batch": 6.0, "batch_rows": 1000},
    }


def gate_dict(candidate: dict[str, float], **extra: object) -> dict:
    report = {
        "serving": {"sklearn": "1.9.1"},
        "models": {
            "candidate": _model(candidate, "3f792c1ad4f09d7d" * 4),
            "baseline": _model(GOOD, "2d27c9d85b3822fd" * 4),
        },
    }
    return {
        **judge(report, RULES).to_dict(),
        "compare_to": "prod",
        "baseline_build": 4,
        "golden": "inference/golden.csv",
        **extra,
    }


def test_failed_gate_on_the_page_and_in_the_api(client, seed) -> None:  # noqa: F811
    g = gate_dict(BAD)
    steps = [
        StepRecord(
            "gate",
            "model_check",
            StepStatus.FAILED,
            1.0,
            9.0,
            error="model gate failed: r2 threshold, mae vs deployed, r2 vs deployed",
            details={"gate": g, "container": "abc123"},
        )
    ]
    b = seed.build("failed", steps=steps, gate={"gate": g}, error="step 'gate' failed: " + steps[0].error)  # type: ignore[operator]
    html = client.get(f"/builds/{b.id}").get_data(as_text=True)
    card = html[html.index('class="card gate"') :]
    card = card[: card.index("</div>")]
    assert 'data-passed="no"' in card and "the candidate model was stopped" in card
    assert "build #4, deployed to <strong>prod</strong>" in card
    num = r'<td class="num">([^<]*)</td>'
    rows = re.findall(r"<tr><td>(r2|mae|rmse)</td>" + num + num, card)
    assert ("mae", "133,083.2000", "29,871.7000") in rows and ("r2", "-0.0171", "0.9277") in rows
    fails = re.findall(r'<tr class="check fail">.*?<td>([^<]+)</td><td class="small">', card, re.S)
    assert fails == ["r2 threshold", "mae vs deployed", "r2 vs deployed"]
    assert html.count('<tr class="check pass">') == 4  # loads, finite, 2 latencies
    api = client.get(f"/api/v1/builds/{b.id}").get_json()
    assert api["gate"]["gate"]["passed"] is False
    assert api["gate"]["gate"]["baseline"]["metrics"]["mae"] == GOOD["mae"]


def test_gate_values_are_escaped(client, seed) -> None:  # noqa: F811
    xss = "<script>window.__gate=1</script>"
    g = gate_dict(GOOD, golden=xss, compare_to=xss)
    g["checks"][0]["detail"] = xss
    g["candidate"]["metrics"][xss] = 1.0
    b = seed.build("success", gate={xss: g})
    for path in (f"/builds/{b.id}", f"/builds/{b.id}?fragment=summary"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>window.__gate" not in html
        assert "&lt;script&gt;window.__gate=1&lt;/script&gt;" in html

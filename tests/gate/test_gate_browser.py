"""The gate section in headless Chromium (as tests/web/test_browser.py drives it); saves gate.png to
docs/screenshots/ when MLSHIP_SCREENSHOTS=1 (else to a temporary directory, like the other screenshots)."""

from __future__ import annotations

from orchestrator.models import StepRecord, StepStatus
from tests.gate.test_gate_page import BAD, gate_dict
from tests.web.conftest import app, live_server, rt, seed, settings  # noqa: F401  (fixtures)
from tests.web.test_browser import SHOTS, browser, page  # noqa: F401  (fixtures)

ERROR = (
    "model gate failed: accuracy threshold, f1_macro threshold, accuracy vs deployed, f1_macro vs deployed"
)


def test_gate_section_screenshot(page, seed) -> None:  # noqa: F811
    g = gate_dict(BAD)
    steps = [
        StepRecord("build", "docker_build", StepStatus.SUCCESS, 100.0, 104.2),
        StepRecord("test", "docker_run", StepStatus.SUCCESS, 104.2, 121.9, exit_code=0),
        StepRecord("train", "docker_run", StepStatus.SUCCESS, 121.9, 127.4, exit_code=0),
        StepRecord("push", "docker_push", StepStatus.SUCCESS, 127.4, 129.0),
        StepRecord("deploy-qa", "deploy", StepStatus.SUCCESS, 129.0, 141.3, details={"environment": "qa"}),
        StepRecord("gate", "model_check", StepStatus.FAILED, 141.3, 145.0, error=ERROR, details={"gate": g}),
        StepRecord(
            "deploy-prod", "deploy", StepStatus.SKIPPED, error="not run: an earlier step did not succeed"
        ),
    ]
    log = [
        ("gate", "stdout", line)
        for line in (
            "metric                   candidate        deployed  result  rule",
            "accuracy                    0.2750          0.8300  FAIL    ≥ 0.8; ≥ deployed - 0.01",
            "FAIL  accuracy vs deployed: accuracy = 0.2750, required ≥ deployed 0.8300 - 0.01 = 0.8200",
        )
    ]
    b = seed.build(
        "failed",
        message="Retrain the classifier (shuffled labels)",
        steps=steps,
        gate={"gate": g},
        error=f"step 'gate' failed: {ERROR}",
        log=log,
    )
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"/builds/{b.id}")
    card = page.locator(".card.gate")
    assert card.get_attribute("data-passed") == "no"
    assert card.locator("tr.check.fail").count() == 4
    assert card.locator("tr.metric.fail").count() == 2
    assert "145 of 200 rows changed" in card.inner_text()
    assert "the candidate model was stopped" in card.inner_text()
    page.locator("h2", has_text="Model gate").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "gate.png"), full_page=True)

"""Manual control of a progressive deploy (API, form buttons), its interval table and its /metrics."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.models import StepRecord, StepStatus

from .conftest import REPO, auth
from .test_pages import csrf_of, sign_in

ROW = {
    "phase": "canary 10%",
    "at": 1796209265.0,
    "seconds": 2.0,
    "stable": {"requests": 144, "errors": 0, "p99_ms": 31.0, "timed": 144, "error_rate": 0.0},
    "candidate": {"requests": 16, "errors": 2, "p99_ms": 33.0, "timed": 16, "error_rate": 0.125},
    "verdict": "fail",
    "reasons": ["error rate 12.50% (2/16) > max_error_rate 2.00%"],
}


def _canary_build(seed: Any, state: str = "running") -> Any:
    strategy = {"kind": "canary", "state": state, "steps": [10, 50, 100], "percent": 10, "intervals": [ROW]}
    step = StepRecord(
        "deploy-qa", "deploy", StepStatus.RUNNING, started_at=time.time(), details={"strategy": strategy}
    )
    return seed.build("running", steps=[step])


def test_commands_reach_the_worker_in_order(client: Any, seed: Any, rt: Any) -> None:
    b = _canary_build(seed)
    for cmd in ("pause", "resume", "promote", "abort"):
        resp = client.post(f"/api/v1/builds/{b.id}/deploy/{cmd}", headers=auth())
        assert resp.status_code == 202 and resp.get_json()["command"] == cmd
    got = [rt.store.pop_deploy_command(b.id) for _ in range(5)]
    assert got == [
        ("pause", "API_TOKEN"),
        ("resume", "API_TOKEN"),
        ("promote", "API_TOKEN"),
        ("abort", "API_TOKEN"),
        None,
    ]


def test_commands_are_writes_and_are_checked(client: Any, seed: Any, rt: Any) -> None:
    b = _canary_build(seed)
    assert client.post(f"/api/v1/builds/{b.id}/deploy/abort").status_code == 401
    bad = client.post(f"/api/v1/builds/{b.id}/deploy/explode", headers=auth())
    assert bad.status_code == 400
    assert (
        "unknown deploy command 'explode': one of pause, resume, abort, promote"
        in bad.get_json()["error"]["message"]
    )
    done = seed.build("success")
    late = client.post(f"/api/v1/builds/{done.id}/deploy/abort", headers=auth())
    assert late.status_code == 409 and "there is no deploy to abort" in late.get_json()["error"]["message"]
    assert rt.store.pop_deploy_command(b.id) is None


def test_build_page_shows_the_interval_table_and_the_buttons(client: Any, seed: Any, rt: Any) -> None:
    b = _canary_build(seed)
    sign_in(client)
    html = client.get(f"/builds/{b.id}").get_data(as_text=True)
    assert "Progressive delivery" in html and 'data-phase="canary 10%"' in html
    for cell in (
        "144",
        "16",
        "12.50%",
        "31 ms",
        "33 ms",
        "error rate 12.50% (2/16) &gt; max_error_rate 2.00%",
    ):
        assert cell in html, cell
    for btn in ("canary-pause-btn", "canary-promote-btn", "canary-abort-btn"):
        assert btn in html
    resp = client.post(f"/builds/{b.id}/deploy/abort", data={"csrf_token": csrf_of(html)})
    assert resp.status_code == 303
    assert rt.store.pop_deploy_command(b.id) == ("abort", "API_TOKEN")
    paused = _canary_build(seed, "paused")
    assert "canary-resume-btn" in client.get(f"/builds/{paused.id}").get_data(as_text=True)
    finished = client.get(f"/builds/{seed.build('success').id}").get_data(as_text=True)
    assert "canary-abort-btn" not in finished


def test_build_page_shows_the_shadow_diff(client: Any, seed: Any) -> None:
    diff = {
        "requests": 60,
        "failed": 0,
        "rows": 60,
        "changed": 18,
        "share_changed": 0.3,
        "mean_abs_diff": 1.5,
        "max_abs_diff": 5.0,
        "largest": [{"request": '{"rows": [[0, 1]]}', "stable": 1.0, "candidate": 6.0}],
    }
    st = {"kind": "shadow", "state": "rolled back", "intervals": [], "diff": diff}
    step = StepRecord("deploy-qa", "deploy", StepStatus.FAILED, details={"strategy": st})
    html = client.get(f"/builds/{seed.build('failed', steps=[step]).id}").get_data(as_text=True)
    assert "60 mirrored requests, 60 rows compared, 18 changed (30.00%)" in html
    assert "<code>{&#34;rows&#34;: [[0, 1]]}</code>" in html and ">6.0<" in html


def test_metrics_show_the_latest_interval(client: Any, rt: Any) -> None:
    rt.store.set_analysis(REPO, "qa", ROW)
    text = client.get("/metrics").get_data(as_text=True)
    labels = f'environment="qa",repo="{REPO}"'
    assert f'mlship_deploy_analysis_requests{{{labels},side="candidate"}} 16.0' in text
    assert f'mlship_deploy_analysis_error_rate{{{labels},side="candidate"}} 0.125' in text
    assert f'mlship_deploy_analysis_p99_seconds{{{labels},side="stable"}} 0.031' in text
    assert f'mlship_deploy_analysis_pass{{environment="qa",phase="canary 10%",repo="{REPO}"}} 0.0' in text


def test_cli_sends_the_command(live_server: Any, seed: Any, rt: Any) -> None:
    from .test_real_worker import cli

    b = _canary_build(seed)
    done = cli(live_server.url, "canary", str(b.id), "pause")
    assert done.returncode == 0, done.stderr
    assert "pause: sent; the deploy acts within a second" in done.stderr
    bad = cli(live_server.url, "canary", str(b.id), "explode")
    assert bad.returncode == 2 and "invalid choice: 'explode'" in bad.stderr
    assert rt.store.pop_deploy_command(b.id) == ("pause", "API_TOKEN")

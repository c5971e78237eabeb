"""``strategy:`` on a deploy step: defaults, durations, and errors that say what to fix."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from orchestrator.errors import PipelineError
from orchestrator.pipeline import load_pipeline
from orchestrator.pipeline.strategy import parse_duration


def _pipeline(strategy: Any = None) -> str:
    deploy: dict[str, Any] = {"environment": "qa"}
    if strategy is not None:
        deploy["strategy"] = strategy
    doc = {
        "version": 1,
        "name": "svc",
        "image": "reg.example.com/svc",
        "steps": [{"name": "deploy-qa", "deploy": deploy}],
        "environments": {"qa": {"hosts": [{"host": "qa.example.com"}], "container": {"name": "svc"}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _strategy(strategy: Any = None) -> Any:
    return load_pipeline(_pipeline(strategy)).step("deploy-qa").spec.strategy


def _error(strategy: Any) -> str:
    with pytest.raises(PipelineError) as e:
        load_pipeline(_pipeline(strategy))
    return str(e.value)


def test_no_strategy_and_switch_are_todays_behaviour() -> None:
    for s in (None, "switch"):
        st = _strategy(s)
        assert (st.kind, st.canary, st.shadow, st.watch) == ("switch", None, None, None)


def test_canary_with_analysis_and_watch() -> None:
    st = _strategy(
        {
            "canary": {
                "steps": [5, 25, 50, 100],
                "interval": "60s",
                "analysis": {"max_error_rate": 0.01, "max_p99_ratio_vs_stable": 2, "min_requests": 50},
            },
            "watch": {"duration": "10m", "interval": "30s", "analysis": {"max_error_rate_vs_stable": 0.005}},
        }
    )
    assert st.kind == "canary"
    assert st.canary.steps == [5, 25, 50, 100]
    assert st.canary.interval == 60.0
    a = st.canary.analysis
    assert (a.max_error_rate, a.max_p99_ratio_vs_stable, a.min_requests) == (0.01, 2.0, 50)
    assert (a.on_insufficient, a.max_wait, a.max_p99_ms) == ("wait", 3, None)
    assert (st.watch.duration, st.watch.interval) == (600.0, 30.0)


def test_shadow() -> None:
    st = _strategy({"shadow": {"percent": 20, "duration": "300s", "analysis": {"max_share_changed": 0.05}}})
    assert st.kind == "shadow"
    assert (st.shadow.percent, st.shadow.duration, st.shadow.path) == (20, 300.0, "/predict")
    assert st.shadow.analysis.max_share_changed == 0.05


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(60, 60.0), (1.5, 1.5), ("60s", 60.0), ("500ms", 0.5), ("10m", 600.0), ("1h", 3600.0), ("2", 2.0)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


CANARY = {"steps": [5, 100], "interval": "2s", "analysis": {"max_error_rate": 0.01}}


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("canary", "'canary' needs its settings: write strategy: {canary: {...}}"),
        (
            "blue-green",
            "unknown strategy 'blue-green': switch, or a mapping with canary, shadow and/or watch",
        ),
        (
            {**CANARY, "steps": [5, 50]},
            "the last step must be 100 (the full switch), got [5, 50]: append 100",
        ),
        (
            {**CANARY, "steps": [50, 25, 100]},
            "steps must increase, got [50, 25, 100] (e.g. [5, 25, 50, 100])",
        ),
        ({**CANARY, "steps": [0, 100]}, "steps are percentages between 1 and 100, got [0, 100]"),
        ({**CANARY, "interval": "soon"}, "must be a duration such as 60s, 500ms, 10m or 1h (got 'soon')"),
        ({**CANARY, "analysis": {"min_requests": 5}}, "an analysis needs at least one rule: add one of"),
        (
            {**CANARY, "analysis": {"max_eror_rate": 0.1}},
            "unknown key 'max_eror_rate' (did you mean 'max_error_rate'?)",
        ),
        (
            {**CANARY, "analysis": {"max_error_rate": 0.1, "on_insufficient": "retry"}},
            "on_insufficient: input should be 'wait', 'fail' or 'proceed'",
        ),
    ],
)
def test_canary_errors_say_what_to_fix(strategy: Any, message: str) -> None:
    spec = {"canary": strategy} if isinstance(strategy, dict) else strategy
    err = _error(spec)
    assert "steps[0].deploy.strategy" in err
    assert message in err


def test_canary_and_shadow_together_is_refused() -> None:
    err = _error({"canary": CANARY, "shadow": {"analysis": {"max_share_changed": 0.1}}})
    assert "canary and shadow cannot both be set" in err


def test_watch_interval_longer_than_duration() -> None:
    err = _error({"watch": {"duration": "5s", "interval": "10s", "analysis": {"max_error_rate": 0.1}}})
    assert "interval (10s) is longer than duration (5s): a watch judges at least one interval" in err


def test_shadow_needs_a_diff_rule() -> None:
    err = _error({"shadow": {"analysis": {"tolerance": 0.1}}})
    assert "a shadow analysis needs at least one rule: add max_mean_abs_diff or max_share_changed" in err

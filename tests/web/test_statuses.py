"""Commit statuses, recorded by a local stand-in for GitHub's REST API."""

from __future__ import annotations

import logging

import pytest

from orchestrator.config import Secrets, Settings
from orchestrator.devstack.services import free_port
from orchestrator.models import Build
from orchestrator.notify.commit_status import build_request, report

SHA = "0123456789abcdef0123456789abcdef01234567"


def settings_for(api_url: str, token: str | None = "ghp_testtoken") -> Settings:  # noqa: S107
    env = {"GITHUB_TOKEN": token} if token else {}
    return Settings(github_api_url=api_url, public_url="https://ci.example.com", secrets=Secrets(env=env))


def a_build(**kw) -> Build:
    return Build(
        id=42,
        number=7,
        repo="acme/house-price",
        sha=SHA,
        ref="refs/heads/main",
        branch="main",
        trigger="push",
        **kw,
    )


@pytest.mark.parametrize("state", ["pending", "success", "failure", "error"])
def test_report_posts_the_status_github_expects(github_api, state):
    report(settings_for(github_api.url), a_build(), state, "build finished")
    assert len(github_api.calls) == 1
    call = github_api.calls[0]
    assert call.path == f"/repos/acme/house-price/statuses/{SHA}"
    assert call.body == {
        "state": state,
        "target_url": "https://ci.example.com/builds/42",
        "description": "build finished",
        "context": "mlship",
    }
    assert call.headers["Authorization"] == "Bearer ghp_testtoken"
    assert call.headers["Accept"] == "application/vnd.github+json"


def test_no_token_means_no_call(github_api):
    report(settings_for(github_api.url, token=None), a_build(), "success", "ok")
    assert github_api.calls == []


def test_refusal_is_logged_not_raised(github_api, caplog):
    github_api.status = 401
    with caplog.at_level(logging.WARNING, logger="orchestrator.notify.commit_status"):
        report(settings_for(github_api.url), a_build(), "failure", "tests failed")
    assert len(github_api.calls) == 1
    assert "HTTP 401" in caplog.text and "ghp_testtoken" not in caplog.text


def test_unreachable_api_is_logged_not_raised(caplog):
    with caplog.at_level(logging.WARNING, logger="orchestrator.notify.commit_status"):
        report(settings_for(f"http://127.0.0.1:{free_port()}"), a_build(), "success", "ok")
    assert "could not report" in caplog.text


def test_description_is_cut_to_githubs_limit():
    req = build_request(settings_for("https://api.github.com"), "t", a_build(), "failure", "x" * 500)
    assert len(req.body["description"]) == 140
    with pytest.raises(ValueError):
        build_request(settings_for("https://api.github.com"), "t", a_build(), "exploded", "")


def test_statuses_from_a_cancel_through_the_api(redis_url, github_api):
    """Cancelling a queued build through the API reports 'error' for its commit."""
    from orchestrator import create_app

    from .conftest import Seed, auth, make_settings

    app = create_app(
        make_settings(redis_url, github_api_url=github_api.url, secrets={"GITHUB_TOKEN": "ghp_x"})
    )
    b = Seed(app.extensions["mlship"]).build("queued")
    assert app.test_client().post(f"/api/v1/builds/{b.id}/cancel", headers=auth()).status_code == 202
    assert [c.body["state"] for c in github_api.calls] == ["error"]
    assert github_api.calls[0].body["target_url"].endswith(f"/builds/{b.id}")

"""Commit statuses for GitLab and Gitea repositories, sent to a local stand-in for each forge's API
through the one entry point the runner, the janitor and cancel use (commit_status.report)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from orchestrator.config import RepoConfig, Secrets, Settings
from orchestrator.devstack.services import free_port
from orchestrator.models import Build, BuildStatus
from orchestrator.notify.commit_status import report
from tests.web.conftest import SECRETS, GitHubStandIn, Seed, auth

SHA = "0123456789abcdef0123456789abcdef01234567"
GITLAB_REPO = "group/sub/house-price"
GITEA_REPO = "acme/house-price-gitea"
GITLAB_TOKEN = "glpat-0123456789abcdef"
GITEA_TOKEN = "gitea-token-fedcba9876543210"
LOGGER = "orchestrator.notify.forge_status"


@pytest.fixture
def api() -> Iterator[GitHubStandIn]:
    """Records every POST and answers 201, like GitLab's and Gitea's status endpoints."""
    stand_in = GitHubStandIn().start()
    yield stand_in
    stand_in.stop()


def settings_for(base: str, redis_url: str = "redis://127.0.0.1:1/0", tokens: bool = True, **kw) -> Settings:  # type: ignore[no-untyped-def]
    repos = [
        RepoConfig(full_name=GITLAB_REPO, clone_url="x", forge="gitlab", api_url=f"{base}/api/v4"),
        RepoConfig(
            full_name=GITEA_REPO,
            clone_url="x",
            forge="gitea",
            api_url=f"{base}/api/v1/",
            status_token="FORGEJO_STATUS_TOKEN",
        ),
    ]
    env = {
        **SECRETS,
        **({"GITLAB_TOKEN": GITLAB_TOKEN, "FORGEJO_STATUS_TOKEN": GITEA_TOKEN} if tokens else {}),
    }
    return Settings(
        redis_url=redis_url,
        repositories={r.full_name: r for r in repos},
        secrets=Secrets(env=env),
        public_url="https://ci.example.com",
        api_token_names=("API_TOKEN",),
        **kw,
    )


def headers_of(call) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Header names are case-insensitive (urllib sends 'Private-token'): compare them lower-cased."""
    return {k.lower(): v for k, v in call.headers.items()}


def a_build(repo: str, status: BuildStatus = BuildStatus.SUCCESS) -> Build:
    return Build(
        id=42,
        number=7,
        repo=repo,
        sha=SHA,
        ref="refs/heads/main",
        branch="main",
        trigger="push",
        status=status,
    )


@pytest.mark.parametrize(
    ("state", "status", "gitlab_state"),
    [
        ("pending", BuildStatus.RUNNING, "running"),
        ("success", BuildStatus.SUCCESS, "success"),
        ("failure", BuildStatus.FAILED, "failed"),
        ("error", BuildStatus.CANCELLED, "canceled"),
    ],
)
def test_gitlab_status_arrives(
    api: GitHubStandIn, state: str, status: BuildStatus, gitlab_state: str
) -> None:
    report(settings_for(api.url), a_build(GITLAB_REPO, status), state, "build finished")
    (call,) = api.calls
    assert (call.method, call.path) == ("POST", f"/api/v4/projects/group%2Fsub%2Fhouse-price/statuses/{SHA}")
    h = headers_of(call)
    assert h["private-token"] == GITLAB_TOKEN and "authorization" not in h
    assert (h["content-type"], h["user-agent"]) == ("application/json", "mlship")
    assert call.body == {
        "state": gitlab_state,
        "name": "mlship",
        "target_url": "https://ci.example.com/builds/42",
        "description": "build finished",
        "ref": "main",
    }


@pytest.mark.parametrize("state", ["pending", "success", "failure", "error"])
def test_gitea_status_arrives(api: GitHubStandIn, state: str) -> None:
    report(settings_for(api.url), a_build(GITEA_REPO), state, "tests failed")
    (call,) = api.calls
    assert (call.method, call.path) == ("POST", f"/api/v1/repos/acme/house-price-gitea/statuses/{SHA}")
    h = headers_of(call)
    assert h["authorization"] == f"token {GITEA_TOKEN}" and "private-token" not in h
    assert call.body == {
        "state": state,
        "target_url": "https://ci.example.com/builds/42",
        "description": "tests failed",
        "context": "mlship",
    }


def test_no_token_means_no_call(api: GitHubStandIn) -> None:
    for repo in (GITLAB_REPO, GITEA_REPO):
        report(settings_for(api.url, tokens=False), a_build(repo), "success", "ok")
    assert api.calls == []


@pytest.mark.parametrize(
    ("repo", "forge", "token"), [(GITLAB_REPO, "GitLab", GITLAB_TOKEN), (GITEA_REPO, "Gitea", GITEA_TOKEN)]
)
def test_refusal_is_logged_with_a_hint_and_never_the_token(
    api: GitHubStandIn, caplog, repo, forge, token
) -> None:  # type: ignore[no-untyped-def]
    api.status = 401
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report(settings_for(api.url), a_build(repo), "failure", "tests failed")
    assert len(api.calls) == 1
    assert f"{forge} refused the commit status for build 42" in caplog.text and "HTTP 401" in caplog.text
    assert "scope" in caplog.text and token not in caplog.text


def test_unreachable_api_is_logged_not_raised(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report(settings_for(f"http://127.0.0.1:{free_port()}"), a_build(GITLAB_REPO), "success", "ok")
    assert (
        "could not report the commit status for build 42" in caplog.text and GITLAB_TOKEN not in caplog.text
    )


def test_github_repositories_still_go_to_github(api: GitHubStandIn) -> None:
    """A repository on no other forge keeps the GitHub path (github_api_url and github_token)."""
    settings = settings_for(api.url, github_api_url=api.url).model_copy(
        update={"secrets": Secrets(env={"GITHUB_TOKEN": "ghp_x"})}
    )
    report(settings, a_build("acme/not-configured"), "success", "ok")
    (call,) = api.calls
    assert (
        call.path == f"/repos/acme/not-configured/statuses/{SHA}"
        and call.headers["Authorization"] == "Bearer ghp_x"
    )


def test_cancelling_a_gitlab_build_through_the_api_reports_canceled(
    redis_url: str, api: GitHubStandIn
) -> None:
    """The whole path: POST /api/v1/builds/<id>/cancel → cancel.py → commit_status.report → GitLab."""
    from orchestrator import create_app

    app = create_app(settings_for(api.url, redis_url=redis_url))
    b = Seed(app.extensions["mlship"]).build("queued", repo=GITLAB_REPO, sha=SHA)
    assert app.test_client().post(f"/api/v1/builds/{b.id}/cancel", headers=auth()).status_code == 202
    (call,) = api.calls
    assert call.path == f"/api/v4/projects/group%2Fsub%2Fhouse-price/statuses/{SHA}"
    assert (call.body["state"], call.body["description"]) == ("canceled", "cancelled")
    assert call.body["target_url"] == f"https://ci.example.com/builds/{b.id}"

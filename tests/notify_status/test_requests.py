"""GitLab and Gitea commit status requests, built as data: exact method, URL, headers and JSON."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.models import Build, BuildStatus
from orchestrator.notify import gitea_status, gitlab_status
from orchestrator.notify.forge_http import HttpRequest

SHA = "0123456789abcdef0123456789abcdef01234567"
TARGET = "https://ci.example.com/builds/42"


def a_build(repo: str, status: BuildStatus = BuildStatus.RUNNING, branch: str = "main") -> Build:
    return Build(
        id=42,
        number=7,
        repo=repo,
        sha=SHA,
        ref=f"refs/heads/{branch}",
        branch=branch,
        trigger="push",
        status=status,
    )


GITLAB_HEADERS = {
    "PRIVATE-TOKEN": "glpat-secret",
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "mlship",
}


@pytest.mark.parametrize(
    ("state", "status", "expected"),
    [
        ("pending", BuildStatus.QUEUED, "pending"),
        ("pending", BuildStatus.RUNNING, "running"),  # the runner's "build started"
        ("success", BuildStatus.SUCCESS, "success"),
        ("success", BuildStatus.SUPERSEDED, "success"),
        ("failure", BuildStatus.FAILED, "failed"),
        ("error", BuildStatus.ERROR, "failed"),  # worker lost, infrastructure
        ("error", BuildStatus.CANCELLED, "canceled"),
    ],
)
def test_gitlab_request(state: str, status: BuildStatus, expected: str) -> None:
    req = gitlab_status.build_request(
        "https://gitlab.example.com/api/v4",
        "glpat-secret",
        a_build("group/sub/house-price", status),
        state,
        "build finished",
        TARGET,
    )
    assert req == HttpRequest(
        "POST",
        f"https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fhouse-price/statuses/{SHA}",
        GITLAB_HEADERS,
        {
            "state": expected,
            "name": "mlship",
            "target_url": TARGET,
            "description": "build finished",
            "ref": "main",
        },
    )


def test_gitlab_description_is_cut_to_its_limit_and_ref_omitted_without_a_branch() -> None:
    req = gitlab_status.build_request(
        "https://g/api/v4", "t", a_build("a/b", branch=""), "failure", "x" * 900, TARGET
    )
    assert len(req.json["description"]) == 255 and "ref" not in req.json


GITEA_HEADERS = {
    "Authorization": "token gitea-secret",
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "mlship",
}


@pytest.mark.parametrize("state", ["pending", "success", "failure", "error"])
def test_gitea_request(state: str) -> None:
    req = gitea_status.build_request(
        "https://gitea.example.com/api/v1",
        "gitea-secret",
        a_build("test/repo.ml"),
        state,
        "build started",
        TARGET,
    )
    assert req == HttpRequest(
        "POST",
        f"https://gitea.example.com/api/v1/repos/test/repo.ml/statuses/{SHA}",
        GITEA_HEADERS,
        {"state": state, "target_url": TARGET, "description": "build started", "context": "mlship"},
    )


@pytest.mark.parametrize(
    ("module", "build", "state", "message"),
    [
        (gitlab_status, a_build("a/b"), "exploded", "state must be one of"),
        (gitlab_status, a_build("just-a-name"), "success", "are not GitLab-shaped"),
        (gitlab_status, a_build("a/../b?x=1"), "success", "are not GitLab-shaped"),
        (gitlab_status, dataclasses.replace(a_build("a/b"), sha="HEAD"), "success", "are not GitLab-shaped"),
        (gitea_status, a_build("a/b"), "running", "state must be one of"),
        (gitea_status, a_build("a/b/c"), "success", "are not Gitea-shaped"),
        (gitea_status, dataclasses.replace(a_build("a/b"), sha="f" * 39), "success", "are not Gitea-shaped"),
    ],
)
def test_requests_that_cannot_be_made(module, build: Build, state: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        module.build_request("https://x/api", "t", build, state, "", TARGET)

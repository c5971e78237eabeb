"""Forges from the server configuration file: its checks, and GitLab and Gitea deliveries through a
real ``orchestrator web`` (gunicorn) process and a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from orchestrator.config import load_settings
from orchestrator.devstack.services import free_port, port_open, wait_for
from orchestrator.errors import ConfigError
from orchestrator.store import Store

from .forge_helpers import (
    GITEA_MERGE_SHA,
    GITEA_REPO,
    GITEA_SECRET,
    GITLAB_MERGE_SHA,
    GITLAB_REPO,
    GITLAB_TOKEN,
    gitea_headers,
    gitlab_headers,
    payload,
)
from .test_gunicorn import Web, stop_web, web_command

REPOSITORIES: dict[str, Any] = {
    GITLAB_REPO: {
        "forge": "gitlab",
        "clone_url": "https://gitlab.example.com/gitlabhq/gitlab-test.git",
        "webhook_secrets": ["GITLAB_WEBHOOK_TOKEN"],
        "triggers": {"pull_request_merged": ["master"]},
        "api_url": "https://gitlab.example.com/api/v4",
        "status_token": "GITLAB_STATUS_TOKEN",
    },
    GITEA_REPO: {
        "forge": "gitea",
        "clone_url": "https://gitea.example.com/test/repo.git",
        "webhook_secrets": ["GITEA_WEBHOOK_SECRET"],
        "api_url": "https://gitea.example.com/api/v1",
    },
}
ENV = {
    "GITLAB_WEBHOOK_TOKEN": GITLAB_TOKEN,
    "GITEA_WEBHOOK_SECRET": GITEA_SECRET,
    "GITLAB_STATUS_TOKEN": "glpat-status",
    "GITEA_TOKEN": "gitea-status",
}


def write_config(tmp_path: Path, repositories: dict[str, Any], **top: Any) -> dict[str, str]:
    config = tmp_path / "server.yaml"
    config.write_text(
        yaml.safe_dump({"public_url": "http://ci.example.com", **top, "repositories": repositories})
    )
    return {"ORCHESTRATOR_CONFIG": str(config), **ENV}


# -- the configuration file -------------------------------------------------------------------------


def test_forges_are_read_from_the_file(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, REPOSITORIES))
    gl, ge = settings.repo(GITLAB_REPO), settings.repo(GITEA_REPO)
    assert gl is not None and ge is not None
    assert (gl.forge, gl.api_url, gl.status_token_name) == (
        "gitlab",
        "https://gitlab.example.com/api/v4",
        "GITLAB_STATUS_TOKEN",
    )
    assert (ge.forge, ge.status_token_name) == ("gitea", "GITEA_TOKEN")  # the default name
    # Status tokens are secrets: the service log masks them like every other.
    assert {"glpat-status", "gitea-status"} <= set(settings.secret_values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"forge": "bitbucket"},
            "repositories.gitlabhq/gitlab-test: key 'forge': Input should be 'github', 'gitlab' or 'gitea'",
        ),
        ({"forge": "gitea", "api_url": None}, "forge gitea needs api_url, the instance's API base"),
        (
            {"forge": "github"},
            "api_url and status_token are for gitlab/gitea; GitHub uses github_api_url/github_token",
        ),
    ],
)
def test_forge_mistakes_are_named_at_start(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    spec = {**REPOSITORIES[GITLAB_REPO], **change}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(write_config(tmp_path, {GITLAB_REPO: spec}))


# -- through gunicorn -------------------------------------------------------------------------------


@pytest.fixture
def web(tmp_path: Path, redis_url: str) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(write_config(tmp_path, REPOSITORIES, redis_url=redis_url))
    port = free_port()
    log = tmp_path / "web.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(web_command(port), env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(port), 30, "orchestrator web")
    except Exception:
        proc.kill()
        raise AssertionError(log.read_text()) from None
    w = Web(f"http://127.0.0.1:{port}", proc, log)
    yield w.url
    stop_web(w)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    resp = requests.post(url, data=body, headers=headers, timeout=10)
    return resp.status_code, resp.json()


def test_gitlab_and_gitea_merges_build_once_through_http(web: str, redis_url: str) -> None:
    store = Store.from_url(redis_url)
    gl_body = json.dumps(payload("gitlab/merge_request.merge")).encode()
    gl_h = gitlab_headers("Merge Request Hook")
    ge_body = json.dumps(payload("gitea/pull_request.closed.merged")).encode()
    ge_h = gitea_headers("pull_request", ge_body, forgejo=True)

    gl = post(f"{web}/webhooks/gitlab", gl_body, gl_h)
    ge = post(f"{web}/webhooks/gitea/{GITEA_REPO}", ge_body, ge_h)
    assert (gl[0], gl[1]["verdict"], ge[0], ge[1]["verdict"]) == (202, "queued", 202, "queued"), (gl, ge)
    assert {store.get_build(gl[1]["build"]).sha, store.get_build(ge[1]["build"]).sha} == {
        GITLAB_MERGE_SHA,
        GITEA_MERGE_SHA,
    }
    # Redelivered: the same answers, no new builds.
    assert post(f"{web}/webhooks/gitlab", gl_body, gl_h) == gl
    assert post(f"{web}/webhooks/gitea/{GITEA_REPO}", ge_body, ge_h) == ge
    # A wrong token and a wrong signature: 401, nothing built.
    bad_gl = post(f"{web}/webhooks/gitlab", gl_body, gitlab_headers("Merge Request Hook", token="guess"))
    bad_ge = post(f"{web}/webhooks/gitea", ge_body, gitea_headers("pull_request", ge_body, secret="guess"))
    assert (bad_gl[0], bad_ge[0]) == (401, 401)
    assert store.latest_build_id() == 2 and store.counters("deliveries") == {"queued": 2, "rejected": 2}

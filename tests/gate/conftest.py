"""Fixtures for the model gate's real-Docker tests: the example repository built by a small pipeline
(build → train → [tamper] → gate) through the real runner, with builds made as the webhook makes them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import DeployTarget, Reach, RepoConfig, Secrets, Settings
from orchestrator.devstack.services import GitOrigin
from orchestrator.store import Store
from tests.pipeline.conftest import REPO, Builds
from tests.web.conftest import GitHubStandIn


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    """The stand-in for GitHub's commit status API (records what the runner reports)."""
    stand_in = GitHubStandIn().start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def gate_settings(
    redis_url: str,
    tmp_path: Path,
    git_origin: GitOrigin,
    docker_daemon: Any,
    registry: Any,
    base_image: str,
    github: GitHubStandIn,
) -> Settings:
    return Settings(
        github_api_url=github.url,
        redis_url=redis_url,
        workspace=tmp_path / "ws",
        repositories={
            REPO: RepoConfig(  # issue 18: the prod environment of these pipelines names 127.0.0.1
                full_name=REPO,
                clone_url=git_origin.url,
                reach=Reach(deploy_targets=(DeployTarget(host="127.0.0.1"),)),
            )
        },
        docker_host=docker_daemon.host,
        vars={"REGISTRY": registry.addr, "BASE_IMAGE": base_image},
        secrets=Secrets(env={"GITHUB_TOKEN": "ghs-test-token"}),
        lease_seconds=3.0,
    )


@pytest.fixture
def gate_builds(gate_settings: Settings, redis_url: str, git_origin: GitOrigin) -> Iterator[Builds]:
    b = Builds(gate_settings, Store.from_url(redis_url), git_origin)
    yield b
    b.queue.connection.close()

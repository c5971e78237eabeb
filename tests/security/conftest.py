"""Real-build helpers for the security properties: settings on the real test bed and a worker in
this process (the same BuildRunner the worker process runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import RepoConfig, Secrets, Settings, Triggers
from orchestrator.devstack.services import GitOrigin

REPO = "acme/house-price"
WEBHOOK_SECRET = "whsec-security-suite"


@pytest.fixture
def real_settings(
    redis_url: str, tmp_path: Path, git_origin: GitOrigin, docker_daemon: Any, registry: Any, base_image: str
) -> Callable[..., Settings]:
    """Settings for real builds: push triggers on every branch, server secrets from ``secrets``."""

    def make(secrets: dict[str, str] | None = None, **kw: Any) -> Settings:
        repo = RepoConfig(
            full_name=REPO,
            clone_url=git_origin.url,
            triggers=Triggers(pull_request_merged=("main",), push=("*",)),
        )
        return Settings(
            redis_url=redis_url,
            workspace=tmp_path / "ws",
            repositories={REPO: repo},
            docker_host=docker_daemon.host,
            vars={"REGISTRY": registry.addr, "BASE_IMAGE": base_image},
            secrets=Secrets(env={"GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET, **(secrets or {})}),
            public_url="http://ci.test",
            lease_seconds=3.0,
            **kw,
        )

    return make

"""Real-build helpers for the security properties: settings on the real test bed and a worker in
this process (the same BuildRunner the worker process runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Reach, RepoConfig, Secrets, Settings, Triggers, is_server_secret
from orchestrator.devstack.services import GitOrigin
from tests.deploy.conftest import deploy_env, example_images, model_volume  # noqa: F401  (the deploy tests' fixtures)
from tests.pipeline.conftest import make_settings, store  # noqa: F401  (the pipeline engine's fixtures, here too)

REPO = "acme/house-price"
WEBHOOK_SECRET = "whsec-security-suite"


@pytest.fixture
def real_settings(
    redis_url: str, tmp_path: Path, git_origin: GitOrigin, docker_daemon: Any, registry: Any, base_image: str
) -> Callable[..., Settings]:
    """Settings for real builds: push triggers on every branch, server secrets from ``secrets``."""

    def make(secrets: dict[str, str] | None = None, reach: Reach | None = None, **kw: Any) -> Settings:
        """``secrets``: server and repository secrets; the repository's reach lists every one that is
        not the server's own, unless ``reach`` is given."""
        listed = tuple(n for n in secrets or {} if not is_server_secret(n))
        repo = RepoConfig(
            full_name=REPO,
            clone_url=git_origin.url,
            triggers=Triggers(pull_request_merged=("main",), push=("*",)),
            reach=reach or Reach(secrets=listed),
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

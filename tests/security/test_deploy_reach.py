"""Deploy targets and keys per repository (issue 18, finding 5), on the real sshd hosts."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.config import DeployTarget, Reach, RepoConfig, Secrets
from orchestrator.errors import DeployError
from tests.deploy.helpers import REPO, DeployEnv

pytestmark = pytest.mark.docker


def _with_reach(env: DeployEnv, reach: Reach, secrets: dict[str, str]) -> None:
    repo = RepoConfig(full_name=REPO, clone_url="file:///nonexistent", reach=reach)
    env.settings = env.settings.model_copy(
        update=dict(repositories={REPO: repo}, secrets=Secrets(env=secrets))
    )


def test_a_repository_deploys_with_its_own_key(deploy_env: DeployEnv, docker_client: Any) -> None:
    """The server has no DEPLOY_SSH_KEY at all: the deploy connects with the repository's own key."""
    key = deploy_env.hosts.client_key.read_text()
    reach = Reach(deploy_targets=(DeployTarget(host="127.0.0.1"),), deploy_key="HOUSE_PRICE_KEY")
    _with_reach(deploy_env, reach, {"HOUSE_PRICE_KEY": key})
    build = deploy_env.new_build(1)
    deploy_env.deploy(build)
    assert deploy_env.store.get_deployment(REPO, "qa").build_number == 1  # type: ignore[union-attr]
    assert key.strip().splitlines()[1] not in deploy_env.log(build)


def test_a_host_outside_the_repositorys_targets_is_refused_before_connecting(
    deploy_env: DeployEnv, docker_client: Any
) -> None:
    """Another repository's host: the deploy step stops before SSH (no key is even needed) and
    nothing is started on the host."""
    qa = deploy_env.hosts["qa"]
    reach = Reach(deploy_targets=(DeployTarget(host="127.0.0.1", port=qa.port + 1),))
    _with_reach(deploy_env, reach, {})
    build = deploy_env.new_build(1)
    with pytest.raises(DeployError, match=r"deploy refused before connecting: .*is not a deploy target"):
        deploy_env.deploy(build)
    assert docker_client.containers.list(all=True, filters={"name": deploy_env.name}) == []
    assert deploy_env.store.get_deployment(REPO, "qa") is None

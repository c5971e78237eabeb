"""Fixtures for the deploy tests: the example image pushed as builds 1 and 2, a model volume, an env."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.deploy import edge
from orchestrator.store import Store
from tests.deploy.helpers import DeployEnv, ExampleImages, build_example_images, cleanup, make_model_volume
from tests.deploy.helpers import test_settings as make_settings


@pytest.fixture(scope="session")
def example_images(docker_client: Any, base_image: str, registry: Any) -> ExampleImages:
    """The real example image (root Dockerfile), pushed to the test registry as builds 1 and 2."""
    return build_example_images(docker_client, base_image, registry.addr)


@pytest.fixture(scope="session")
def edge_image_ref(docker_client: Any, base_image: str, registry: Any) -> str:
    """mlship's HAProxy edge image, built FROM the test bed's base image and pushed, as a deploy does."""
    image = edge.EdgeImage(f"{registry.addr}/{edge.REPOSITORY}", edge.tag(base_image), base_image)
    return edge.ensure(docker_client, image, None, lambda line: None)


@pytest.fixture(scope="session")
def model_volume(docker_client: Any, example_images: ExampleImages) -> Iterator[str]:
    name = make_model_volume(docker_client, example_images.refs[1])
    yield name
    docker_client.volumes.get(name).remove(force=True)


@pytest.fixture
def deploy_env(
    redis_url: str,
    deploy_hosts: Any,
    docker_client: Any,
    example_images: ExampleImages,
    model_volume: str,
    base_image: str,
    tmp_path: Path,
) -> Iterator[DeployEnv]:
    store = Store.from_url(redis_url)
    env = DeployEnv(
        store=store,
        settings=make_settings(redis_url, deploy_hosts, tmp_path / "ws"),
        hosts=deploy_hosts,
        images=example_images,
        volume=model_volume,
        edge_base_image=base_image,
    )
    try:
        yield env
    finally:
        cleanup(docker_client, env.name)

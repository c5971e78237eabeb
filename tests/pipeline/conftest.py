"""Fixtures for the pipeline engine: settings pointing at the real test bed, builds made the way the
webhook makes them (Store.create_build + the RQ job), and small pipelines FROM the base image."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build.queue import build_queue, enqueuer
from orchestrator.build.runner import run_build
from orchestrator.config import Allow, Reach, RepoConfig, Secrets, Settings, is_server_secret
from orchestrator.devstack.services import GitOrigin
from orchestrator.models import Build, Trigger
from orchestrator.store import Store

REPO = "acme/house-price"
SMALL_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY . /work
WORKDIR /work
"""


def small_pipeline(steps: str, image: str = "${REGISTRY}/small", extra: str = "") -> str:
    """A pipeline whose build uses small/Dockerfile (FROM the base image: seconds, not minutes)."""
    return (
        "version: 1\nname: small\n"
        f'image: "{image}"\n'
        "steps:\n" + textwrap.indent(textwrap.dedent(steps).strip("\n"), "  ") + "\n" + extra
    )


BUILD_STEP = """\
- name: build
  docker_build: {context: small, dockerfile: Dockerfile, build_args: {BASE_IMAGE: "${BASE_IMAGE}"}}
"""


@pytest.fixture
def make_settings(
    redis_url: str, tmp_path: Path, git_origin: GitOrigin, docker_daemon: Any, registry: Any, base_image: str
) -> Callable[..., Settings]:
    def make(
        allow: Allow | None = None,
        secrets: dict[str, str] | None = None,
        reach: Reach | None = None,
        **kw: Any,
    ) -> Settings:
        """``secrets`` the repository may use (listed in its reach unless ``reach`` is given)."""
        listed = tuple(n for n in secrets or {} if not is_server_secret(n))
        repo = RepoConfig(
            full_name=REPO,
            clone_url=git_origin.url,
            allow=allow or Allow(),
            reach=reach or Reach(secrets=listed),
        )
        return Settings(
            redis_url=redis_url,
            workspace=tmp_path / "ws",
            repositories={REPO: repo},
            docker_host=docker_daemon.host,
            vars={"REGISTRY": registry.addr, "BASE_IMAGE": base_image},
            secrets=Secrets(env={"GITHUB_WEBHOOK_SECRET": "whsec", **(secrets or {})}),
            lease_seconds=kw.pop("lease_seconds", 3.0),
            **kw,
        )

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def store(redis_url: str) -> Store:
    return Store.from_url(redis_url)


class Builds:
    """Create builds the way the webhook does, then run them in this process."""

    def __init__(self, settings: Settings, store: Store, origin: GitOrigin) -> None:
        self.settings = settings
        self.store = store
        self.origin = origin
        self.queue = build_queue(settings)

    def commit(self, pipeline: str, files: dict[str, str] | None = None, branch: str = "main") -> str:
        return self.origin.commit(
            branch, {"pipeline.yaml": pipeline, "small/Dockerfile": SMALL_DOCKERFILE, **(files or {})}
        )

    def create(self, sha: str, branch: str = "main") -> Build:
        trig = Trigger(repo=REPO, sha=sha, ref=f"refs/heads/{branch}", branch=branch, kind="push")
        build, created = self.store.create_build(
            trig,
            pipeline="pipeline.yaml",
            triggered_by="test",
            enqueue=enqueuer(self.queue, self.settings.build_timeout),
            dedup=False,
        )
        assert created
        return build

    def run(self, build: Build) -> Build:
        run_build(self.settings, self.store, build.id, worker_name="test")
        return self.store.get_build(build.id)

    def commit_and_run(
        self, pipeline: str, files: dict[str, str] | None = None, branch: str = "main"
    ) -> Build:
        return self.run(self.create(self.commit(pipeline, files, branch), branch))


@pytest.fixture
def builds(settings: Settings, store: Store, git_origin: GitOrigin) -> Iterator[Builds]:
    b = Builds(settings, store, git_origin)
    yield b
    b.queue.connection.close()

"""The real example: this repository's Dockerfile built by its own pipeline.yaml (build, test inside the
image, push), then pulled back from the registry. Slow when cold (pip inside docker build)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.models import BuildStatus, StepStatus

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


def build_test_push_only() -> str:
    """The root pipeline.yaml without its deploy and gate steps (tests/deploy and tests/gate have those)."""
    data = yaml.safe_load((REPO_ROOT / "pipeline.yaml").read_text())
    data["steps"] = [s for s in data["steps"] if "deploy" not in s and "model_check" not in s]
    data.pop("environments", None)
    return yaml.safe_dump(data, sort_keys=False)


def test_example_builds_tests_in_image_pushes_and_pulls_back(builds, docker_client, registry):
    sha = builds.origin.commit("main", {"pipeline.yaml": build_test_push_only()})
    build = builds.run(builds.create(sha))
    log = builds.store.log_text(build.id)
    assert build.status is BuildStatus.SUCCESS, f"{build.error}\n{log[-3000:]}"
    steps = {s.name: s for s in build.steps}
    assert [s.status for s in build.steps] == [StepStatus.SUCCESS] * len(build.steps)
    assert [s.name for s in build.steps] == ["build", "test", "train", "push"]
    assert steps["test"].exit_code == 0
    assert " passed" in log  # pytest's summary from inside the image
    assert build.image == f"{registry.addr}/house-price:{build.number}"
    assert build.digest.startswith("sha256:")
    # prove it: drop the local tags, pull from the registry by digest
    repo = f"{registry.addr}/house-price"
    for tag in (str(build.number), sha[:7], "latest"):
        docker_client.images.remove(f"{repo}:{tag}", noprune=True)
    pulled = docker_client.images.pull(f"{repo}@{build.digest}")
    assert f"{repo}@{build.digest}" in pulled.attrs["RepoDigests"]
    assert pulled.labels["org.opencontainers.image.revision"] == sha

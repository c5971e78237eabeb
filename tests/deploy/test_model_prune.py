"""Pruning a deploy host's model volume: remote.prune_models run for real against a Docker daemon."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from typing import Any

import pytest

from orchestrator.deploy import commands as remote
from orchestrator.errors import DeployError

pytestmark = [pytest.mark.docker]

KEEP, OLD, FRESH, LINK = "a" * 16, "b" * 16, "c" * 16, "d" * 16
HOUR = 3600


def _seed(docker_client: Any, base_image: str, volume: str) -> None:
    """A volume as deploys leave it: model directories named by hash, plus things prune must not touch."""
    old = int(time.time()) - 2 * HOUR
    script = (
        f"cd /models && mkdir {KEEP} {OLD} {FRESH} not-a-model && touch {KEEP}/model.skops {OLD}/model.skops "
        f"{FRESH}/model.skops && ln -s / {LINK} && touch -h -d @{old} {KEEP} {OLD} not-a-model {LINK}"
    )
    docker_client.containers.run(
        base_image, ["sh", "-c", script], remove=True, volumes={volume: {"bind": "/models", "mode": "rw"}}
    )


def _listing(docker_client: Any, base_image: str, volume: str) -> list[str]:
    out = docker_client.containers.run(
        base_image, ["ls", "-A", "/models"], remove=True, volumes={volume: {"bind": "/models", "mode": "ro"}}
    )
    return sorted(out.decode().split())


def test_only_old_unrecorded_model_directories_go(
    docker_daemon: Any, docker_client: Any, base_image: str
) -> None:
    volume = f"mlship-test-models-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(volume)
    try:
        _seed(docker_client, base_image, volume)
        argv = remote.prune_models(base_image, volume, "/models", {KEEP}, grace=HOUR)
        env = {**os.environ, "DOCKER_HOST": docker_daemon.host}
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == f"removed 1 unrecorded model(s): {OLD}"
        # recorded (KEEP), too young to be sure (FRESH), not a model name, a symlink: all untouched
        assert _listing(docker_client, base_image, volume) == sorted([KEEP, FRESH, LINK, "not-a-model"])
        again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert again.stdout.strip() == "removed 0 unrecorded model(s)"
    finally:
        docker_client.volumes.get(volume).remove(force=True)


@pytest.mark.parametrize("keep", [{"../etc"}, {"A" * 16}, {"a" * 15}, {"a" * 16 + "/x"}, {"-rf"}])
def test_keep_names_must_be_hash_prefixes(keep: set[str]) -> None:
    with pytest.raises(DeployError, match="not sha256 prefixes"):
        remote.prune_models("img", "vol", "/models", keep, grace=HOUR)


def test_prune_argv_is_data() -> None:
    argv = remote.prune_models("reg/app@sha256:" + "f" * 64, "ml_vol", "/models", ["b" * 16, "a" * 16], 60)
    assert argv[: argv.index("--")] == [
        "docker",
        "run",
        "--rm",
        "--user",
        "0",
        "--network",
        "none",
        "--label",
        "mlship.role=model-prune",
        "--volume",
        "ml_vol:/models",
    ]
    assert argv[argv.index("--") + 1 :][:3] == ["reg/app@sha256:" + "f" * 64, "python3", "-c"]
    assert argv[-4:] == ["/models", "60", "a" * 16, "b" * 16]

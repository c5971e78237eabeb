"""The edge image's model helpers run for real against a Docker daemon: prune-models removes only old,
unrecorded model directories; store-model stores a tar stream by hash and refuses a wrong checksum."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from typing import Any

import pytest

from orchestrator.deploy import commands as remote
from orchestrator.deploy.swap import tar_of
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
    docker_daemon: Any, docker_client: Any, base_image: str, edge_image_ref: str
) -> None:
    volume = f"mlship-test-models-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(volume)
    try:
        _seed(docker_client, base_image, volume)
        argv = remote.prune_models(edge_image_ref, volume, "/models", {KEEP}, grace=HOUR)
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
    argv = remote.prune_models("reg/mlship-edge:t", "ml_vol", "/models", ["b" * 16, "a" * 16], 90)
    assert argv == [
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
        "--",
        "reg/mlship-edge:t",
        "prune-models",
        "/models",
        "2",  # minutes, rounded up
        "a" * 16,
        "b" * 16,
    ]


def test_store_model_checks_every_file_and_stores_it_by_hash(
    docker_daemon: Any, docker_client: Any, base_image: str, edge_image_ref: str
) -> None:
    volume = f"mlship-test-models-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(volume)
    model, meta = b"model bytes" * 1000, b'{"r2": 0.9}'
    files = [
        remote.UploadFile("model.skops", len(model), hashlib.sha256(model).hexdigest()),
        remote.UploadFile("model.json", len(meta), hashlib.sha256(meta).hexdigest()),
    ]
    env = {**os.environ, "DOCKER_HOST": docker_daemon.host}
    stream = tar_of([("model.skops", model), ("model.json", meta)])
    try:
        argv = remote.upload_model(edge_image_ref, volume, "/models", KEEP, files)
        for _ in range(2):  # a second upload of the same model (a redeploy) replaces identical bytes
            res = subprocess.run(argv, env=env, input=stream, capture_output=True, timeout=120, check=False)
            assert res.returncode == 0, res.stderr
            assert res.stdout.decode().strip() == f"stored /models/{KEEP} model.skops model.json"
        out = docker_client.containers.run(
            base_image,
            ["sh", "-c", f"sha256sum /models/{KEEP}/*; stat -c '%a %n' /models/{KEEP}/*; ls -A /models"],
            remove=True,
            volumes={volume: {"bind": "/models", "mode": "ro"}},
        ).decode()
        assert f"{files[0].sha256}  /models/{KEEP}/model.skops" in out
        assert f"444 /models/{KEEP}/model.json" in out
        assert out.split()[-1] == KEEP  # no temporary upload directory left behind
        bad = [remote.UploadFile("model.skops", len(model), "0" * 64)]
        argv = remote.upload_model(edge_image_ref, volume, "/models", OLD, bad)
        res = subprocess.run(argv, env=env, input=stream, capture_output=True, timeout=120, check=False)
        assert res.returncode != 0
        assert f"model.skops: received sha256 {files[0].sha256}, expected {'0' * 64}" in res.stderr.decode()
        assert _listing(docker_client, base_image, volume) == [KEEP]  # nothing half-stored
    finally:
        docker_client.volumes.get(volume).remove(force=True)

"""The root Dockerfile builds an image that serves the model from a mounted volume.

Needs the real Docker daemon and base image from tests/conftest.py (``docker_client``,
``base_image``); it skips on a machine without them (fails in CI).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference import train
from inference.schema import FEATURES, SEED_EXAMPLE

# ruff: noqa: S310 - urllib only opens the loopback URL of the container started here
REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def image(docker_client: Any, base_image: str) -> Iterator[str]:
    tag = f"inference-test:{uuid.uuid4().hex[:8]}"
    docker_client.images.build(path=str(REPO_ROOT), buildargs={"BASE_IMAGE": base_image}, tag=tag, rm=True)
    yield tag
    docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def model_volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("models")
    model, metrics = train.train(seed=3, trees=20, n_rows=5000)
    train.save(model, metrics, out)
    out.chmod(0o755)  # the image runs as a non-root user
    for f in out.iterdir():
        f.chmod(0o644)
    return out, model


def _wait_ready(base: str, container: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            pytest.fail(f"container exited: {container.logs().decode()}")
        try:
            if _request(base + "/ready")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"not ready after {timeout}s: {container.logs().decode()}")


def test_image_serves_model_from_volume(
    docker_client: Any, image: str, model_volume: tuple[Path, Any]
) -> None:
    import numpy as np

    model_dir, model = model_volume
    port = _free_port()
    container = docker_client.containers.run(
        image,
        detach=True,
        ports={"5000/tcp": ("127.0.0.1", port)},
        volumes={str(model_dir): {"bind": "/models", "mode": "ro"}},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, container)
        status, body = _request(base + "/predict", SEED_EXAMPLE)
        assert status == 200
        expected = model.predict(np.array([[SEED_EXAMPLE[f] for f in FEATURES]], dtype=float))[0]
        assert body["predictions"] == [expected]
        status, body = _request(base + "/predict", {**SEED_EXAMPLE, "grade": "high"})
        assert status == 400 and body["error"]["fields"][0]["field"] == "grade"
        status, meta = _request(base + "/metadata")
        assert meta["path"] == "/models/model.skops"
        user = container.exec_run(["id", "-u"]).output.decode().strip()
        assert user != "0"
    finally:
        container.remove(force=True)


def test_image_without_model_exits_nonzero_naming_path(docker_client: Any, image: str) -> None:
    container = docker_client.containers.run(image, detach=True)
    try:
        result = container.wait(timeout=60)
        assert result["StatusCode"] != 0
        assert "cannot load model /models/model.skops" in container.logs().decode()
    finally:
        container.remove(force=True)


def test_image_runs_inference_tests(docker_client: Any, image: str) -> None:
    # Exactly the pipeline's test step: the whole suite, inside the image, as its user.
    out = docker_client.containers.run(
        image, ["python", "-m", "pytest", "-q", "inference/tests"], remove=True
    )
    assert b" passed" in out and b"failed" not in out

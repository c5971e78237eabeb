"""gunicorn really serves the app (2 workers, metrics summed across them) and refuses bad models."""
# ruff: noqa: S310 - urllib only ever opens the http://127.0.0.1 URL of the server started here

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import inference
from inference.schema import SEED_EXAMPLE

PROJECT = Path(inference.__file__).resolve().parent.parent
CONF = PROJECT / "inference" / "gunicorn_conf.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(model_path: Path, port: int, tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    full_env = {
        **os.environ,
        "MODEL_PATH": str(model_path),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(CONF), "inference.wsgi:app"],
        cwd=PROJECT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _get(url: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def server(trained: Any, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    proc = _start(trained[0], port, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited {proc.returncode}: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                if _get(base + "/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("gunicorn did not become ready in 30 s")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_gunicorn_serves_predictions_and_sums_metrics_across_workers(server: str, trained: Any) -> None:
    import numpy as np

    from inference.schema import FEATURES

    expected = trained[1].predict(np.array([[SEED_EXAMPLE[f] for f in FEATURES]], dtype=float))[0]
    n = 30
    for _ in range(n):
        status, body = _post(server + "/predict", SEED_EXAMPLE)
        assert status == 200 and body["predictions"] == [expected]
    status, body = _post(server + "/predict", {"bedrooms": True})
    assert status == 400
    # Whichever worker answers the scrape, it reports every worker's requests.
    for _ in range(4):
        status, text = _get(server + "/metrics")
        assert status == 200
        line = 'inference_http_requests_total{endpoint="/predict",method="POST",status="200"} '
        assert f"{line}{float(n)}" in text.decode()


@pytest.mark.parametrize(
    "setup, reason",
    [
        ("missing", "No such file or directory"),
        ("tampered", "sha256 mismatch"),
        ("pickle", "not pinned"),
    ],
)
def test_gunicorn_exits_nonzero_naming_path_and_reason(
    trained: Any, tmp_path: Path, setup: str, reason: str
) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    if setup == "missing":
        path = model_dir / "model.skops"
    elif setup == "tampered":
        path = model_dir / "model.skops"
        path.write_bytes(trained[0].read_bytes()[:-10])
        (model_dir / "model.json").write_bytes(trained[0].with_suffix(".json").read_bytes())
    else:
        import pickle

        path = model_dir / "model.pkl"
        path.write_bytes(pickle.dumps(trained[1]))
    proc = _start(path, _free_port(), tmp_path)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    message = err.decode()
    assert f"cannot load model {path}: " in message and reason in message

"""The model's way from the artifacts to the hosts: artifacts, the model upload argv (and its script, run
for real on local files), the commit status with the gate's reason. (model_check itself: test_spec.py,
test_protocol.py, test_gate.py, test_in_image.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from orchestrator.build.artifacts import artifacts_dir, find_model, inside
from orchestrator.deploy import commands as remote
from orchestrator.errors import DeployError, StepFailed
from orchestrator.models import Build
from orchestrator.notify import commit_status as statuses

# -- artifacts ---------------------------------------------------------------------------------------


def test_find_model_and_refuse_symlinks_out_of_the_artifacts(tmp_path: Path) -> None:
    root = artifacts_dir(tmp_path, 5)
    assert find_model(tmp_path, 5, "model/model.skops") is None
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.skops").write_bytes(b"bytes")
    (root / "model" / "model.json").write_text("{}")
    art = find_model(tmp_path, 5, "model/model.skops")
    assert art is not None and art.sha256 == hashlib.sha256(b"bytes").hexdigest()
    assert art.meta == (root / "model" / "model.json").resolve() and art.short == art.sha256[:16]
    secret = tmp_path / "secret"
    secret.write_text("worker's file")
    (root / "evil").mkdir()
    (root / "evil" / "model.skops").symlink_to(secret)
    with pytest.raises(StepFailed, match="resolves outside its directory"):
        find_model(tmp_path, 5, "evil/model.skops")
    with pytest.raises(StepFailed, match="does not exist"):
        inside(root, "nope.csv", "golden set")


# -- the model upload ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("volumes", "model", "expected"),
    [
        (["ml_vol:/models:ro"], "/models/model.skops", ("ml_vol", "/models")),
        (["cache:/cache", "ml:/srv/models/:ro"], "/srv/models/m.skops", ("ml", "/srv/models")),
        (["/host/models:/models:ro", "named:/models"], "/models/model.skops", ("named", "/models")),
    ],
)
def test_model_volume_rule(volumes: list[str], model: str, expected: tuple[str, str]) -> None:
    assert remote.model_volume(volumes, model) == expected


def test_model_volume_missing_says_what_to_add() -> None:
    with pytest.raises(DeployError) as err:
        remote.model_volume(["/host:/models:ro", "other:/data"], "/models/model.skops")
    assert str(err.value).startswith(
        "the build has a model to ship, but no named volume in container.volumes "
        "is mounted at /models (the directory of MODEL_PATH=/models/model.skops): "
        'add one, e.g. "ml_vol:/models:ro"'
    )


FILES = [remote.UploadFile("model.skops", 3, "a" * 64), remote.UploadFile("model.json", 2, "b" * 64)]


@pytest.mark.parametrize(
    "bad",
    [
        remote.UploadFile("../x", 1, "a" * 64),
        remote.UploadFile("a/b", 1, "a" * 64),
        remote.UploadFile("-rf", 1, "a" * 64),
        remote.UploadFile("m", 1, "$(id)"),
        remote.UploadFile("m", -1, "a" * 64),
    ],
)
def test_upload_model_refuses_hostile_names(bad: remote.UploadFile) -> None:
    with pytest.raises(DeployError):
        remote.upload_model("img", "v", "/models", "0123456789abcdef", [bad])
    with pytest.raises(DeployError):
        remote.upload_model("img", "v", "/models", "../../etc", FILES[:1])


# -- commit status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (
            "failed",
            "step 'gate' failed: model gate failed: r2 threshold, mae vs deployed",
            "model gate failed: r2 threshold, mae vs deployed",
        ),
        (
            "failed",
            "step 'test' failed: command exited with code 1",
            "build failed: step 'test' failed: command exited with code 1",
        ),
        ("success", "", "build success"),
    ],
)
def test_status_description_carries_the_gate_reason(status: str, error: str, expected: str) -> None:
    b = Build(id=1, number=1, repo="a/b", sha="0" * 40, ref="refs/heads/main", branch="main", trigger="push")
    assert statuses.describe(b, status, error) == expected

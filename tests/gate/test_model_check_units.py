"""The gate's pure parts: model_check in pipeline.yaml (exact messages), the evaluation container as data,
the model upload argv (and its script, run for real on local files), artifacts, the commit status."""

# ruff: noqa: E501  (the exact messages read best unbroken)

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.build.artifacts import ModelArtifact, artifacts_dir, find_model, inside, model_path
from orchestrator.deploy import commands as remote
from orchestrator.errors import DeployError, PipelineError, StepFailed
from orchestrator.gate.rules import Bound, GateRules
from orchestrator.models import Build
from orchestrator.notify import commit_status as statuses
from orchestrator.pipeline import load_pipeline
from orchestrator.steps.docker import run_request
from orchestrator.steps.model_check import EvalRequest, failure_message, parse_report, rules

HEAD = "version: 1\nname: app\nimage: reg/app\n"
STEPS = (
    "steps:\n  - name: build\n    docker_build: {}\n"
    "  - name: train\n    docker_run: {command: [train], artifacts: /artifacts}\n"
)
ENVS = "environments:\n  prod:\n    hosts: [{host: h}]\n    container: {name: p}\n"


def gate(body: str, steps: str = STEPS) -> str:
    return (
        HEAD
        + steps
        + "  - name: gate\n    model_check:\n"
        + "".join(f"      {line}\n" for line in body.strip().splitlines())
        + ENVS
    )


VALID = gate("""
golden: inference/golden.csv
model: model/model.skops
compare_to: prod
thresholds: {r2: {min: 0.8}, mae: {max: 80000}}
no_worse_than_deployed: {mae: 0.05, r2: 0.02}
latency: {single_ms: 100, batch_ms: 3000, batch_rows: 1000}
""")

INVALID = {
    "unknown metric": (
        gate("golden: g.csv\nthresholds: {accuracy: {min: 0.9}}"),
        "pipeline.yaml:12: steps[2].model_check.thresholds.accuracy: unknown metric 'accuracy'; known metrics: mae, r2, rmse",
    ),
    "unknown metric, close": (
        gate("golden: g.csv\ncompare_to: prod\nno_worse_than_deployed: {maee: 0.1}"),
        "pipeline.yaml:13: steps[2].model_check.no_worse_than_deployed.maee: unknown metric 'maee' (did you mean 'mae'?); known metrics: mae, r2, rmse",
    ),
    "typo in a bound": (
        gate("golden: g.csv\nthresholds: {r2: {mni: 0.8}}"),
        "pipeline.yaml:12: steps[2].model_check.thresholds.r2.mni: unknown key 'mni' (did you mean 'min'?); allowed: min, max",
    ),
    "empty bound": (
        gate("golden: g.csv\nthresholds: {r2: {}}"),
        "pipeline.yaml:12: steps[2].model_check.thresholds.r2: a threshold needs min, max or both",
    ),
    "min above max": (
        gate("golden: g.csv\nthresholds: {r2: {min: 0.9, max: 0.5}}"),
        "pipeline.yaml:12: steps[2].model_check.thresholds.r2: min 0.9 is greater than max 0.5",
    ),
    "negative tolerance": (
        gate("golden: g.csv\ncompare_to: prod\nno_worse_than_deployed: {mae: -0.1}"),
        "pipeline.yaml:13: steps[2].model_check.no_worse_than_deployed.mae: input should be greater than or equal to 0",
    ),
    "tolerance without compare_to": (
        gate("golden: g.csv\nno_worse_than_deployed: {mae: 0.1}"),
        "pipeline.yaml:12: steps[2].model_check.no_worse_than_deployed: no_worse_than_deployed needs compare_to: the environment whose deployed model is the baseline",
    ),
    "unknown environment": (
        gate("golden: g.csv\ncompare_to: staging"),
        "pipeline.yaml:12: steps[2].model_check.compare_to: unknown environment 'staging'; environments: prod",
    ),
    "golden outside the repository": (
        gate("golden: ../../etc/passwd"),
        "pipeline.yaml:11: steps[2].model_check.golden: golden must be a path inside the repository (relative, no '..'), got '../../etc/passwd'",
    ),
    "absolute model": (
        gate("golden: g.csv\nmodel: /etc/shadow"),
        "pipeline.yaml:12: steps[2].model_check.model: model must be a path inside the build's artifact directory (relative, no '..'), got '/etc/shadow'",
    ),
    "missing golden": (
        gate("model: m.skops"),
        "pipeline.yaml:11: steps[2].model_check.golden: missing required key 'golden'",
    ),
    "unknown key": (
        gate("golden: g.csv\nthreshold: {r2: {min: 1}}"),
        "pipeline.yaml:12: steps[2].model_check.threshold: unknown key 'threshold' (did you mean 'thresholds'?); allowed: golden, model, compare_to, thresholds, no_worse_than_deployed, latency",
    ),
    "bad latency": (
        gate("golden: g.csv\nlatency: {single_ms: 0}"),
        "pipeline.yaml:12: steps[2].model_check.latency.single_ms: input should be greater than 0",
    ),
    "no build before": (
        gate(
            "golden: g.csv",
            steps="steps:\n  - name: train\n    docker_run: {command: [t], image: x, artifacts: /a}\n",
        ),
        "pipeline.yaml:9: steps[1].model_check: step 'gate' evaluates the model in the image built by an earlier docker_build step, but none comes before it",
    ),
    "no artifacts before": (
        gate("golden: g.csv", steps="steps:\n  - name: build\n    docker_build: {}\n"),
        "pipeline.yaml:9: steps[1].model_check: step 'gate' checks a model from the build's artifacts, but no earlier docker_run step has artifacts: (add one that writes model/model.skops under it)",
    ),
    "artifacts not absolute": (
        HEAD
        + "steps:\n  - name: build\n    docker_build: {}\n  - name: t\n    docker_run: {command: [x], artifacts: out}\n",
        "pipeline.yaml:8: steps[1].docker_run.artifacts: artifacts must be an absolute path inside the container (not '/', no '..' or ':'), e.g. /artifacts; got 'out'",
    ),
    "artifacts at the root": (
        HEAD
        + "steps:\n  - name: build\n    docker_build: {}\n  - name: t\n    docker_run: {command: [x], artifacts: /}\n",
        "pipeline.yaml:8: steps[1].docker_run.artifacts: artifacts must be an absolute path inside the container (not '/', no '..' or ':'), e.g. /artifacts; got '/'",
    ),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_model_check_is_refused_with_the_exact_message(name: str) -> None:
    text, message = INVALID[name]
    with pytest.raises(PipelineError) as err:
        load_pipeline(text)
    assert str(err.value) == message


def test_valid_model_check_and_its_rules() -> None:
    p = load_pipeline(VALID)
    spec = p.step("gate").model_check
    assert spec is not None and spec.compare_to == "prod" and spec.latency is not None
    assert rules(spec) == GateRules(
        thresholds={"r2": Bound(min=0.8), "mae": Bound(max=80000)},
        no_worse_than_deployed={"mae": 0.05, "r2": 0.02},
        single_ms=100,
        batch_ms=3000,
    )
    assert p.step("train").docker_run.artifacts == "/artifacts"  # type: ignore[union-attr]
    assert model_path(p) == "model/model.skops"


def test_the_example_pipeline_gates_prod_after_qa() -> None:
    text = (Path(__file__).resolve().parents[2] / "pipeline.yaml").read_text()
    p = load_pipeline(text)
    assert [s.name for s in p.steps] == ["build", "test", "train", "push", "deploy-qa", "gate", "deploy-prod"]
    assert p.step("gate").model_check.compare_to == "prod"  # type: ignore[union-attr]


def test_the_artifact_mount_is_added_by_the_runner() -> None:
    p = load_pipeline(VALID)
    req = run_request(p.step("train").docker_run, "img:1", {}, Path("/ws/artifacts/7"))  # type: ignore[arg-type]
    assert req.kwargs()["volumes"] == ["/ws/artifacts/7:/artifacts:rw"]


def _artifact(tmp: Path, name: str = "model.skops") -> ModelArtifact:
    (tmp / "model").mkdir(parents=True, exist_ok=True)
    (tmp / "model" / name).write_bytes(b"m")
    return ModelArtifact(path=tmp / "model" / name, sha256="a" * 64, meta=None)


def test_eval_request_exact_container(tmp_path: Path) -> None:
    cand, base = _artifact(tmp_path / "c"), _artifact(tmp_path / "b")
    req = EvalRequest(
        image="reg/app:3",
        golden=Path("/ws/inference/golden.csv"),
        candidate=cand,
        baseline=base,
        latency_rows=500,
        labels={"mlship.build": "3"},
    )
    assert req.kwargs() == {
        "image": "reg/app:3",
        "command": [
            "python3",
            "-m",
            "inference.evaluate",
            "--golden",
            "/gate/golden/golden.csv",
            "--model",
            "candidate=/gate/candidate/model.skops",
            "--model",
            "baseline=/gate/baseline/model.skops",
            "--latency-rows",
            "500",
        ],
        "labels": {"mlship.build": "3"},
        "volumes": {
            "/ws/inference/golden.csv": {"bind": "/gate/golden/golden.csv", "mode": "ro"},
            str(tmp_path / "c" / "model"): {"bind": "/gate/candidate", "mode": "ro"},
            str(tmp_path / "b" / "model"): {"bind": "/gate/baseline", "mode": "ro"},
        },
        "network_disabled": True,
        "detach": True,
    }
    assert "baseline=" not in " ".join(EvalRequest("i", Path("/g.csv"), cand).command())


@pytest.mark.parametrize(
    ("stdout", "ok"),
    [
        ('{"models": {}}\n', True),
        ('warning: something\n{"models": {}}\n', True),
        ("", False),
        ("Traceback ...\nModuleNotFoundError: No module named 'inference.evaluate'\n", False),
        ("[1, 2]\n", False),
    ],
)
def test_parse_report(stdout: str, ok: bool) -> None:
    if ok:
        assert parse_report(stdout) == {"models": {}}
    else:
        with pytest.raises(StepFailed, match="printed no JSON report"):
            parse_report(stdout)


def test_failure_message_names_the_checks_and_why_a_model_did_not_load() -> None:
    from orchestrator.gate.rules import judge

    bad = judge(
        {"models": {"candidate": {"loaded": False, "error": "cannot load model x: sha256 mismatch"}}},
        GateRules(),
    )
    assert failure_message(bad) == "model gate failed: loads (cannot load model x: sha256 mismatch)"


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


def test_upload_model_exact_argv() -> None:
    argv = remote.upload_model("reg/app@sha256:abc", "ml_vol", "/models", "0123456789abcdef", FILES)
    assert argv == [
        "docker",
        "run",
        "--interactive",
        "--rm",
        "--user",
        "0",
        "--network",
        "none",
        "--label",
        "mlship.role=model-upload",
        "--volume",
        "ml_vol:/models",
        "--",
        "reg/app@sha256:abc",
        "python3",
        "-c",
        remote.UPLOAD_SCRIPT,
        "/models/0123456789abcdef",
        "model.skops",
        "3",
        "a" * 64,
        "model.json",
        "2",
        "b" * 64,
    ]


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


def _run_script(
    target: Path, files: list[tuple[str, bytes]], lie: bool = False
) -> subprocess.CompletedProcess[bytes]:
    args: list[str] = []
    for name, data in files:
        args += [name, str(len(data)), hashlib.sha256(data + (b"x" if lie else b"")).hexdigest()]
    return subprocess.run(
        [sys.executable, "-c", remote.UPLOAD_SCRIPT, str(target), *args],
        input=b"".join(d for _, d in files),
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_upload_script_stores_exact_bytes_and_refuses_a_corrupt_stream(tmp_path: Path) -> None:
    model, meta = os.urandom(3_000_000), b'{"sha256": "x"}'
    res = _run_script(tmp_path / "abc", [("model.skops", model), ("model.json", meta)])
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "abc" / "model.skops").read_bytes() == model
    assert (tmp_path / "abc" / "model.json").read_bytes() == meta
    assert (tmp_path / "abc" / "model.skops").stat().st_mode & 0o777 == 0o444
    again = _run_script(tmp_path / "abc", [("model.skops", model)])  # idempotent: same bytes, same name
    assert again.returncode == 0 and (tmp_path / "abc" / "model.skops").read_bytes() == model
    bad = _run_script(tmp_path / "bad", [("model.skops", model)], lie=True)
    assert bad.returncode != 0 and b"expected" in bad.stderr
    assert list((tmp_path / "bad").iterdir()) == [], "no partial or temp file is left behind"
    short = subprocess.run(
        [sys.executable, "-c", remote.UPLOAD_SCRIPT, str(tmp_path / "s"), "m", "10", "a" * 64],
        input=b"abc",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert short.returncode != 0 and b"ended 7 bytes early" in short.stderr


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

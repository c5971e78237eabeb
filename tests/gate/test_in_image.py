"""``mode: in_image`` as data: the exact container, the archive copied into it, and the evaluator
script itself, run for real here on model files trained with scikit-learn."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from orchestrator.build.artifacts import ModelArtifact
from orchestrator.errors import StepFailed
from orchestrator.gate.golden import read_golden
from orchestrator.gate.rules import judge
from orchestrator.gate.spec import ModelCheckSpec
from orchestrator.steps.model_check import EVALUATOR, EvalRequest, failure_message, parse_report, rules


def _artifact(root: Path, name: str = "model.skops") -> ModelArtifact:
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / name).write_bytes(b"model bytes")
    (root / "model" / "model.json").write_text("{}")
    return ModelArtifact(path=root / "model" / name, sha256="a" * 64, meta=root / "model" / "model.json")


def _golden(tmp_path: Path) -> object:
    (tmp_path / "g.csv").write_text("a,b,y\n1,2,3\n4,5,9\n")
    return read_golden(tmp_path / "g.csv", "y")


def test_eval_request_exact_container_and_archive(tmp_path: Path) -> None:
    req = EvalRequest(
        image="reg/app:3",
        golden=_golden(tmp_path),  # type: ignore[arg-type]
        candidate=_artifact(tmp_path / "c"),
        baseline=_artifact(tmp_path / "b"),
        loader="inference.model:load_model",
        latency_rows=500,
        labels={"mlship.build": "3"},
    )
    assert req.kwargs() == {
        "image": "reg/app:3",
        "command": [
            "python3",
            "/tmp/mlship-gate/evaluate.py",
            "--input",
            "/tmp/mlship-gate/rows.json",
            "--model",
            "candidate=/tmp/mlship-gate/candidate/model.skops",
            "--model",
            "baseline=/tmp/mlship-gate/baseline/model.skops",
            "--loader",
            "inference.model:load_model",
            "--latency-rows",
            "500",
        ],
        "labels": {"mlship.build": "3"},
        "network_disabled": True,
        "detach": True,
    }
    with tarfile.open(fileobj=io.BytesIO(req.archive())) as tar:
        members = {m.name: (m.type, oct(m.mode)) for m in tar.getmembers()}
        assert json.loads(tar.extractfile("mlship-gate/rows.json").read()) == {  # type: ignore[union-attr]
            "features": ["a", "b"],
            "rows": [[1, 2], [4, 5]],
        }
        assert tar.extractfile("mlship-gate/evaluate.py").read() == EVALUATOR.read_bytes()  # type: ignore[union-attr]
    assert members == {
        "mlship-gate": (tarfile.DIRTYPE, "0o755"),
        "mlship-gate/baseline": (tarfile.DIRTYPE, "0o755"),
        "mlship-gate/candidate": (tarfile.DIRTYPE, "0o755"),
        "mlship-gate/evaluate.py": (tarfile.REGTYPE, "0o644"),
        "mlship-gate/rows.json": (tarfile.REGTYPE, "0o644"),
        "mlship-gate/candidate/model.skops": (tarfile.REGTYPE, "0o644"),
        "mlship-gate/candidate/model.json": (tarfile.REGTYPE, "0o644"),
        "mlship-gate/baseline/model.skops": (tarfile.REGTYPE, "0o644"),
        "mlship-gate/baseline/model.json": (tarfile.REGTYPE, "0o644"),
    }
    alone = EvalRequest("i", req.golden, req.candidate, proba=True).command()
    assert "baseline=" not in " ".join(alone) and alone[-3] == "--proba"


def _evaluate(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(EVALUATOR), *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_evaluator_script_predicts_with_a_pickled_model(tmp_path: Path) -> None:
    rows = {"features": ["a", "b"], "rows": [[0, 0], [1, 1], [2, 2], [3, 3]]}
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    reg = LinearRegression().fit(rows["rows"], [0, 2, 4, 6])
    cls = LogisticRegression().fit(rows["rows"], ["lo", "lo", "hi", "hi"])
    (tmp_path / "reg.pkl").write_bytes(pickle.dumps(reg))
    (tmp_path / "cls.pkl").write_bytes(pickle.dumps(cls))
    (tmp_path / "broken.pkl").write_bytes(b"not a pickle")
    inp = ("--input", str(tmp_path / "rows.json"), "--latency-rows", "10", "--repeat", "1")
    report = _evaluate(
        *inp, "--model", f"candidate={tmp_path / 'reg.pkl'}", "--model", f"baseline={tmp_path / 'broken.pkl'}"
    )
    cand = report["models"]["candidate"]
    assert cand["loaded"] is True and cand["estimator"] == "LinearRegression"
    assert [round(p, 6) for p in cand["predictions"]] == [0.0, 2.0, 4.0, 6.0]
    assert (
        set(cand["latency_ms"]) == {"single", "batch", "batch_rows"}
        and cand["latency_ms"]["batch_rows"] == 10
    )
    assert report["models"]["baseline"]["loaded"] is False
    assert report["models"]["baseline"]["error"].startswith("UnpicklingError: ")
    assert report["serving"]["sklearn"] == "1.9.1"
    proba = _evaluate(*inp, "--proba", "--model", f"candidate={tmp_path / 'cls.pkl'}")["models"]["candidate"]
    assert proba["predictions"] == ["lo", "lo", "hi", "hi"] and proba["classes"] == ["hi", "lo"]
    assert len(proba["probabilities"]) == 4 and len(proba["probabilities"][0]) == 2


def test_the_evaluator_reports_a_loader_the_image_lacks(tmp_path: Path) -> None:
    (tmp_path / "rows.json").write_text('{"features": ["a"], "rows": [[1]]}')
    report = _evaluate(
        "--input", str(tmp_path / "rows.json"), "--model", "candidate=/x.skops", "--loader", "nope.mod:load"
    )
    assert report == {"error": "cannot start the evaluation: ModuleNotFoundError: No module named 'nope'"}


@pytest.mark.parametrize(
    ("stdout", "ok"),
    [
        ('{"models": {}}\n', True),
        ('warning: something\n{"models": {}}\n', True),
        ("", False),
        ("Traceback ...\nSyntaxError: invalid syntax\n", False),
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
    spec = ModelCheckSpec(mode="in_image", golden="g.csv", target="y")
    bad = judge(
        {"models": {"candidate": {"ok": False, "error": "ModelLoadError: sha256 mismatch"}}}, rules(spec)
    )
    assert failure_message(bad) == "model gate failed: loads (ModelLoadError: sha256 mismatch)"

"""inference.evaluate: the report the model gate reads, from real model files."""

from __future__ import annotations

import json

import pytest

from inference import evaluate, train


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    good, m = train.train(trees=10, n_rows=4000)
    train.save(good, m, d / "good")
    bad, mb = train.train(trees=10, n_rows=4000, shuffle_labels=True)
    train.save(bad, mb, d / "bad")
    golden = train.write_golden_csv(d / "golden.csv", n_rows=300)
    return d, golden


def run(capsys, *args):
    assert evaluate.main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_good_and_shuffled_models_are_told_apart(models, capsys):
    d, golden = models
    rep = run(
        capsys,
        "--golden",
        str(golden),
        "--model",
        f"candidate={d / 'bad/model.skops'}",
        "--model",
        f"baseline={d / 'good/model.skops'}",
        "--repeat",
        "2",
    )
    cand, base = rep["models"]["candidate"], rep["models"]["baseline"]
    assert cand["loaded"] and base["loaded"] and cand["finite"]
    assert base["metrics"]["r2"] > 0.8 > cand["metrics"]["r2"]
    assert cand["metrics"]["mae"] > 2 * base["metrics"]["mae"]
    assert rep["golden"]["rows"] == 300 and rep["serving"]["sklearn"]


def test_tampered_model_reports_not_loaded(models, capsys, tmp_path):
    d, golden = models
    bad = tmp_path / "model.skops"
    bad.write_bytes((d / "good/model.skops").read_bytes()[:-10] + b"0123456789")
    (tmp_path / "model.json").write_text((d / "good/model.json").read_text())
    rep = run(capsys, "--golden", str(golden), "--model", f"candidate={bad}")
    assert rep["models"]["candidate"]["loaded"] is False
    assert "sha256 mismatch" in rep["models"]["candidate"]["error"]


def test_golden_without_price_column_is_reported(tmp_path, capsys):
    g = tmp_path / "g.csv"
    g.write_text("bedrooms\n3\n")
    rep = run(capsys, "--golden", str(g), "--model", f"candidate={tmp_path / 'm.skops'}")
    assert "lacks columns" in rep["error"]


def test_shipped_golden_set_is_readable():
    from pathlib import Path

    x, y = evaluate.read_golden(Path(evaluate.__file__).parent / "golden.csv")
    assert x.shape == (1000, 18) and (y > 0).all()

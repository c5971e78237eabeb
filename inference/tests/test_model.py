"""Loading safety: hashes are checked before any byte is deserialised; formats are restricted."""

from __future__ import annotations

import hashlib
import json
import operator
import pickle
from pathlib import Path

import pytest
import skops.io as sio
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from inference.model import LoadPolicy, ModelLoadError, load_model


class _Touch:
    """Unpickling this creates a file: proof of whether a pickle was ever executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _write_pickle(model_dir: Path, obj: object) -> tuple[Path, str]:
    data = pickle.dumps(obj)
    path = model_dir / "model.pkl"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_skops_model_loads_with_metadata(model_dir: Path) -> None:
    m = load_model(model_dir / "model.skops")
    meta = json.loads((model_dir / "model.json").read_text())
    assert m.format == "skops"
    assert m.sha256 == meta["sha256"] == hashlib.sha256((model_dir / "model.skops").read_bytes()).hexdigest()
    assert (m.name, m.version) == ("house-price-rf", "1.0.0")


def test_tampered_model_is_refused_by_metadata_hash(model_dir: Path) -> None:
    path = model_dir / "model.skops"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256 mismatch") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_pinned_hash_mismatch_is_refused(model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="MODEL_SHA256 pins"):
        load_model(model_dir / "model.skops", LoadPolicy(expected_sha256="0" * 64))


def test_pinned_hash_match_loads(model_dir: Path) -> None:
    digest = hashlib.sha256((model_dir / "model.skops").read_bytes()).hexdigest()
    assert load_model(model_dir / "model.skops", LoadPolicy(expected_sha256=digest.upper())).sha256 == digest


def test_unpinned_pickle_is_refused_without_running_it(model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    path, _ = _write_pickle(model_dir, _Touch(marker))
    with pytest.raises(ModelLoadError, match="not pinned"):
        load_model(path)
    assert not marker.exists()


def test_pickle_with_wrong_pin_is_refused_without_running_it(model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    path, _ = _write_pickle(model_dir, _Touch(marker))
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        load_model(path, LoadPolicy(expected_sha256="a" * 64, allow_unpinned_pickle=True))
    assert not marker.exists()


def test_pickle_loads_when_pinned_or_explicitly_allowed(model_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    path, digest = _write_pickle(model_dir, trained[1])
    assert load_model(path, LoadPolicy(expected_sha256=digest)).format == "pickle"
    assert load_model(path, LoadPolicy(allow_unpinned_pickle=True)).sha256 == digest


def _pipeline_with_untrusted_function(path: Path) -> Path:
    pipe = Pipeline([("f", FunctionTransformer(operator.pos)), ("m", LinearRegression())])
    path.write_bytes(sio.dumps(pipe))
    return path


def test_skops_untrusted_types_are_refused_and_named(tmp_path: Path) -> None:
    path = _pipeline_with_untrusted_function(tmp_path / "pipe.skops")
    untrusted = sio.get_untrusted_types(file=path)
    assert untrusted  # the function really is outside skops' safe set
    with pytest.raises(ModelLoadError, match="not trusted") as info:
        load_model(path)
    for name in untrusted:
        assert name in str(info.value)


def test_operator_can_trust_extra_skops_types(tmp_path: Path) -> None:
    path = _pipeline_with_untrusted_function(tmp_path / "pipe.skops")
    types = tuple(sio.get_untrusted_types(file=path))
    assert type(load_model(path, LoadPolicy(extra_trusted_types=types)).estimator) is Pipeline


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("missing.skops", None, "No such file"),
        ("model.skops", b"not a zip", "skops (zip) archive"),
        ("model.onnx", b"whatever", "unknown model format"),
        ("model.pkl", b"\x80\x05garbage", "unpickling failed"),
    ],
)
def test_unloadable_files_name_path_and_reason(
    tmp_path: Path, name: str, content: bytes | None, reason: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        load_model(path, LoadPolicy(allow_unpinned_pickle=True))
    assert str(path) in str(info.value) and reason in str(info.value)


def test_model_with_wrong_feature_count_is_refused(tmp_path: Path) -> None:
    import numpy as np

    model = LinearRegression().fit(np.ones((4, 3)) * np.arange(4)[:, None], np.arange(4))
    path = tmp_path / "lin.skops"
    path.write_bytes(sio.dumps(model))
    with pytest.raises(ModelLoadError, match="expects 3 features"):
        load_model(path)


def test_trees_with_out_of_range_nodes_are_refused(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    """A trusted Tree type still carries raw indices; a crafted one must never reach predict()."""
    import copy

    import numpy as np

    model = copy.deepcopy(trained[1])
    state = model.estimators_[3].tree_.__getstate__()
    nodes = state["nodes"].copy()
    nodes["left_child"][0] = 10**6  # points far outside the node array
    state["nodes"] = nodes
    model.estimators_[3].tree_.__setstate__(state)
    path = tmp_path / "crafted.skops"
    path.write_bytes(sio.dumps(model))
    with pytest.raises(ModelLoadError, match="tree 3 has inconsistent node arrays"):
        load_model(path)
    assert np.isfinite(trained[1].predict(np.zeros((1, 18)))).all()  # the original is untouched

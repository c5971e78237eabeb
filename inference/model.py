"""Load the model once, safely, and describe it.

Safety rules (checked in this order, before any byte is deserialised):

1. The file is read into memory once; its sha256 is computed over exactly those bytes.
2. ``MODEL_SHA256`` (the operator's pin) must match if set.
3. ``<model>.json`` next to the model (``model.json`` for ``model.skops``), if present and
   naming this file, must record the same sha256. That file
   lives on the same volume as the model, so it detects corruption and mix-ups, not
   tampering: it never counts as a pin.
4. skops files load with an explicit allow-list of types (never ``trusted=True``);
   any other type in the file refuses the load and is named in the error.
5. pickle/joblib files run arbitrary code when loaded, so they load only when their hash
   is pinned with ``MODEL_SHA256`` or the operator sets ``ALLOW_UNPINNED_PICKLE=1``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.schema import FEATURES

log = logging.getLogger(__name__)

# Types a fitted tree ensemble or linear model needs beyond skops' built-in safe set.
DEFAULT_TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.tree._tree.Tree",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.Interval",
)
SKOPS_SUFFIXES = {".skops"}
PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib"}


class ModelLoadError(Exception):
    """The model cannot be served; the message names the path and the reason."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"cannot load model {path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class LoadPolicy:
    """What the operator allows: a pinned hash, unpinned pickles, extra skops types."""

    expected_sha256: str | None = None
    allow_unpinned_pickle: bool = False
    extra_trusted_types: tuple[str, ...] = ()


@dataclass
class LoadedModel:
    """A deserialised estimator plus what the service reports about it."""

    estimator: Any
    path: str
    sha256: str
    format: str
    name: str
    version: str
    features: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict(x), dtype=np.float64).reshape(-1)


def _detect_format(path: Path, data: bytes) -> str:
    is_zip = data[:4] == b"PK\x03\x04"
    suffix = path.suffix.lower()
    if suffix in SKOPS_SUFFIXES:
        if not is_zip:
            raise ModelLoadError(path, "a .skops file must be a skops (zip) archive")
        return "skops"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    if is_zip:
        return "skops"
    raise ModelLoadError(path, f"unknown model format {suffix!r} (use .skops, .pkl, .pickle or .joblib)")


def _read_metadata(path: Path) -> dict[str, Any]:
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(path, f"metadata {meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(path, f"metadata {meta_path} must hold a JSON object")
    if meta.get("file", path.name) != path.name:
        # model.json describes a sibling (model.skops next to model.pkl): not this file.
        log.warning("ignoring %s: it describes %s, not %s", meta_path, meta.get("file"), path.name)
        return {}
    return meta


def _load_skops(path: Path, data: bytes, policy: LoadPolicy) -> Any:
    import skops.io as sio

    allowed = set(DEFAULT_TRUSTED_TYPES) | set(policy.extra_trusted_types)
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # a corrupt archive raises anything from zipfile/json
        raise ModelLoadError(path, f"not a readable skops file: {exc}") from None
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise ModelLoadError(
            path,
            "skops file contains types that are not trusted: "
            + ", ".join(refused)
            + " (add them to MODEL_TRUSTED_TYPES only if you trust their code)",
        )
    return sio.loads(data, trusted=sorted(untrusted))


def _load_pickle(path: Path, data: bytes, pinned: bool, policy: LoadPolicy) -> Any:
    if not (pinned or policy.allow_unpinned_pickle):
        raise ModelLoadError(
            path,
            "refusing to unpickle a model whose sha256 is not pinned: a pickle runs "
            "arbitrary code; set MODEL_SHA256 (or ALLOW_UNPINNED_PICKLE=1)",
        )
    import joblib

    try:
        # joblib.load reads plain pickles as well as joblib's (possibly compressed) files.
        return joblib.load(io.BytesIO(data))
    except Exception as exc:
        raise ModelLoadError(path, f"unpickling failed: {type(exc).__name__}: {exc}") from None


def _check_trees(path: Path, estimator: Any, n_features: int) -> None:
    """Refuse trees whose node arrays would make sklearn read out of bounds or loop forever.

    skops restores ``sklearn.tree._tree.Tree`` as data, but sklearn's Cython indexes those
    arrays without bounds checks: a crafted file could crash the worker or leak memory.
    sklearn stores children after their parent, so "child index > own index" also rules out cycles.
    """
    trees = [getattr(e, "tree_", None) for e in np.ravel(getattr(estimator, "estimators_", []))]
    trees.append(getattr(estimator, "tree_", None))
    for i, tree in enumerate(t for t in trees if t is not None):
        n = int(tree.node_count)
        left, right, feature = tree.children_left, tree.children_right, tree.feature
        own = np.arange(n)
        inner = left != -1
        ok = (
            len(left) == len(right) == len(feature) == len(tree.threshold) == tree.value.shape[0] == n
            and n > 0
            and bool(np.all(right[~inner] == -1))
            and bool(np.all((left[inner] > own[inner]) & (left[inner] < n)))
            and bool(np.all((right[inner] > own[inner]) & (right[inner] < n)))
            and bool(np.all((feature[inner] >= 0) & (feature[inner] < n_features)))
        )
        if not ok:
            raise ModelLoadError(path, f"tree {i} has inconsistent node arrays (corrupt or crafted file)")


def load_model(path: str | Path, policy: LoadPolicy | None = None) -> LoadedModel:
    """Read, verify and deserialise the model at ``path``; raise ModelLoadError on any doubt."""
    policy = policy or LoadPolicy()
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(path, exc.strerror or str(exc)) from None
    digest = hashlib.sha256(data).hexdigest()
    pinned = policy.expected_sha256 is not None
    if pinned and not hmac.compare_digest(digest, str(policy.expected_sha256).strip().lower()):
        raise ModelLoadError(
            path, f"sha256 mismatch: file is {digest}, MODEL_SHA256 pins {policy.expected_sha256}"
        )
    meta = _read_metadata(path)
    recorded = meta.get("sha256")
    if recorded is not None and recorded != digest:
        raise ModelLoadError(
            path,
            f"sha256 mismatch: file is {digest}, {path.with_suffix('.json').name} "
            f"records {recorded} (model and metadata do not belong together)",
        )
    fmt = _detect_format(path, data)
    if fmt == "skops":
        estimator = _load_skops(path, data, policy)
    else:
        estimator = _load_pickle(path, data, pinned, policy)
    if not hasattr(estimator, "predict"):
        raise ModelLoadError(path, f"{type(estimator).__name__} has no predict()")
    features = tuple(meta.get("features") or FEATURES)
    if features != FEATURES:
        raise ModelLoadError(
            path, f"model features {list(features)} differ from the service's {list(FEATURES)}"
        )
    n_in = getattr(estimator, "n_features_in_", len(FEATURES))
    if n_in != len(FEATURES):
        raise ModelLoadError(path, f"estimator expects {n_in} features, the service sends {len(FEATURES)}")
    _check_trees(path, estimator, len(FEATURES))
    log.info("loaded %s model %s (sha256 %s)", fmt, path, digest)
    return LoadedModel(
        estimator=estimator,
        path=str(path),
        sha256=digest,
        format=fmt,
        name=str(meta.get("name") or path.stem),
        version=str(meta.get("version") or "unknown"),
        features=features,
        metadata=meta,
    )

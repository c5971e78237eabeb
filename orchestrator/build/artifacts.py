"""Build artifacts: one directory per build on the worker, kept after the build.

A ``docker_run`` step with ``artifacts: /path`` gets the build's directory bind-mounted there
(read-write); later steps read what it wrote: ``model_check`` evaluates the model in it, ``deploy``
ships it to the hosts. The directory lives beside, not under, the per-build checkout (which is
cleaned when the build ends), so a later promote or rollback finds the model of the build it deploys.

Files in it were written by the build's own container, so a path is only trusted after it resolves
(symlinks followed) to a regular file inside the directory: a symlink to a worker file must never be
mounted into a container or uploaded to a host.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import StepFailed

if TYPE_CHECKING:
    from orchestrator.pipeline import Pipeline

DEFAULT_MODEL = "model/model.skops"
PRUNED = ".pruned"  # left in a pruned build's directory, so a later deploy can say what happened
# The container's user is the image's (the example runs as uid 10001), unknown to the worker: the
# per-build directory is world-writable; its parent is not.
ARTIFACTS_MODE = 0o777


def artifacts_dir(workspace: Path, build_id: int) -> Path:
    """``<workspace>/artifacts/<build id>``."""
    return Path(workspace) / "artifacts" / str(int(build_id))


def ensure_dir(workspace: Path, build_id: int) -> Path:
    """Create the build's artifact directory (writable by the container's user) and return it."""
    d = artifacts_dir(workspace, build_id)
    d.parent.mkdir(parents=True, exist_ok=True)
    d.mkdir(exist_ok=True)
    d.chmod(ARTIFACTS_MODE)
    if ":" in str(d):
        raise StepFailed(f"the worker's workspace path {d} contains ':', which Docker cannot bind-mount")
    return d


def inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel`` resolved, if it is a regular file inside ``root``; StepFailed saying why not."""
    base = root.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(base):
        raise StepFailed(f"{what} {rel!r} resolves outside its directory (a symlink?); refused")
    if not path.is_file():
        raise StepFailed(f"{what} {rel!r} does not exist (looked in {root})")
    return path


def model_path(pipeline: Pipeline) -> str:
    """The model a build ships: the ``model`` of its first model_check step, else model/model.skops."""
    for step in pipeline.steps:
        if step.model_check is not None:
            return step.model_check.model
    return DEFAULT_MODEL


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelArtifact:
    """A build's model file (and its metadata file, if any), checked to be inside the artifacts."""

    path: Path
    sha256: str
    meta: Path | None

    @property
    def short(self) -> str:
        """The directory name on the model volume: the first 16 hex digits of the hash."""
        return self.sha256[:16]

    def files(self) -> list[Path]:
        return [self.path] + ([self.meta] if self.meta else [])


def find_model(workspace: Path, build_id: int, rel: str) -> ModelArtifact | None:
    """The model ``rel`` of build ``build_id``, or None if that build wrote none."""
    root = artifacts_dir(workspace, build_id)
    if (root / PRUNED).exists():
        raise ArtifactsPruned(
            f"the artifacts of build {build_id} were removed ({(root / PRUNED).read_text()}"
            "): re-run that build to produce its model again",
            build=build_id,
        )
    if not (root / rel).exists() and not (root / rel).is_symlink():
        return None
    path = inside(root, rel, "model artifact")
    meta_rel = str(Path(rel).with_suffix(".json"))
    meta = None
    if (root / meta_rel).exists() and meta_rel != rel:
        meta = inside(root, meta_rel, "model metadata")
    return ModelArtifact(path=path, sha256=sha256_file(path), meta=meta)


class ArtifactsPruned(StepFailed):
    """The build's artifact directory was pruned (see ``prune``)."""


# -- pruning: the worker keeps the newest builds' artifacts and those of every recorded deployment ---


def build_ids(workspace: Path) -> list[int]:
    """Builds that have an artifact directory with its files still there."""
    root = Path(workspace) / "artifacts"
    if not root.is_dir():
        return []
    return sorted(
        int(d.name) for d in root.iterdir() if d.name.isdigit() and d.is_dir() and not (d / PRUNED).exists()
    )


def prune_candidates(ids: Iterable[int], keep: int, protected: Collection[int]) -> list[int]:
    """Which of ``ids`` to prune: all but the ``keep`` newest (highest ids) and the ``protected``."""
    newest_first = sorted(set(ids), reverse=True)
    return sorted(i for i in newest_first[max(0, keep) :] if i not in protected)


def prune(workspace: Path, build_id: int, why: str) -> None:
    """Remove a build's artifacts, leaving only a note of why (``find_model`` reports it)."""
    d = artifacts_dir(workspace, build_id)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    (d / PRUNED).write_text(f"pruned {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC: {why}")

"""Artifact directories are pruned: the newest builds, every deployed build and unfinished builds stay."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.build import artifacts
from orchestrator.build.worker import prune_artifacts
from orchestrator.config import Settings, load_settings
from orchestrator.deploy.plan import ship_model
from orchestrator.errors import ConfigError, DeployError
from orchestrator.models import BuildStatus, Deployment, Trigger
from orchestrator.pipeline import load_pipeline
from orchestrator.store import Store

MODEL = "model/model.skops"


@pytest.mark.parametrize(
    "ids, keep, protected, pruned",
    [
        ([], 3, set(), []),
        ([1, 2, 3], 3, set(), []),
        ([1, 2, 3, 4, 5], 3, set(), [1, 2]),
        ([5, 1, 4, 2, 3], 3, set(), [1, 2]),  # order of the directory listing is irrelevant
        ([1, 2, 3, 4, 5], 3, {1}, [2]),  # a deployed build stays
        ([1, 2, 3, 4, 5], 1, {3, 9}, [1, 2, 4]),
        ([10, 200, 30], 0, set(), [10, 30, 200]),
    ],
)
def test_prune_candidates(ids: list[int], keep: int, protected: set[int], pruned: list[int]) -> None:
    assert artifacts.prune_candidates(ids, keep, protected) == pruned


def _builds(store: Store, n: int) -> list[int]:
    ids = []
    for i in range(n):
        build, _ = store.create_build(
            Trigger(
                repo="acme/house-price", sha=f"{i:040x}", ref="refs/heads/main", branch="main", kind="push"
            ),
            pipeline="pipeline.yaml",
            triggered_by="test",
            enqueue=lambda pipe, ticket: None,
            dedup=False,
        )
        store.update_build(build.id, status=str(BuildStatus.SUCCESS))
        ids.append(build.id)
    return ids


def _with_model(workspace: Path, build_id: int) -> None:
    d = artifacts.ensure_dir(workspace, build_id) / "model"
    d.mkdir()
    (d / "model.skops").write_bytes(b"model of build %d" % build_id)


def _deployed(store: Store, build_id: int, env: str) -> Deployment:
    dep = Deployment(
        repo="acme/house-price",
        environment=env,
        build_id=build_id,
        build_number=build_id,
        image=f"registry/house-price:{build_id}",
        sha="0" * 40,
        container=f"hp-b{build_id}",
        hosts=["h"],
        action="deploy",
    )
    store.set_deployment(dep)
    return dep


def test_the_worker_keeps_newest_deployed_and_running_builds(redis_url: str, tmp_path: Path) -> None:
    store = Store.from_url(redis_url)
    ids = _builds(store, 30)
    for b in ids:
        _with_model(tmp_path, b)
    _deployed(store, ids[2], "prod")  # then replaced in prod: still in its history (rollback)
    _deployed(store, ids[4], "prod")
    _deployed(store, ids[6], "qa")
    store.update_build(ids[8], status=str(BuildStatus.RUNNING))
    settings = Settings(redis_url=redis_url, workspace=tmp_path, keep_artifacts=20)

    pruned = prune_artifacts(settings, store)

    kept = {ids[2], ids[4], ids[6], ids[8], *ids[-20:]}
    assert pruned == sorted(set(ids) - kept)
    assert artifacts.build_ids(tmp_path) == sorted(kept)
    assert artifacts.find_model(tmp_path, ids[4], MODEL) is not None
    with pytest.raises(artifacts.ArtifactsPruned, match=r"were removed \(pruned .*keep_artifacts"):
        artifacts.find_model(tmp_path, ids[0], MODEL)
    assert prune_artifacts(settings, store) == []  # nothing more to do: idempotent


def test_deploying_a_pruned_build_says_so_unless_a_host_has_its_model(redis_url: str, tmp_path: Path) -> None:
    store = Store.from_url(redis_url)
    assert _builds(store, 7)[-1] == 7  # build 7 published no model to the registry (no ``model`` record)
    artifacts.prune(tmp_path, 7, "not among the newest 20 builds (keep_artifacts) and never deployed")
    pipeline = load_pipeline(
        "version: 1\nname: x\nimage: r/x\nsteps:\n  - name: s\n"
        '    docker_run: {image: alpine, command: ["true"]}\n'
    )
    ctx = SimpleNamespace(pipeline=pipeline, settings=Settings(workspace=tmp_path), store=store)
    plan = SimpleNamespace(build_id=7, number=7, env_name="prod")
    with pytest.raises(
        DeployError,
        match=r"cannot ship the model of build #7: the artifacts of build 7 were "
        r"removed .*re-run that build",
    ):
        ship_model(ctx, plan, [])  # type: ignore[arg-type]
    earlier = Deployment(
        repo="r",
        environment="prod",
        build_id=7,
        build_number=7,
        image="r/x:7",
        sha="0" * 40,
        container="x-b7",
        hosts=["h"],
        action="deploy",
        model_sha256="ab" * 32,
        model_path="/models/abababababababab/model.skops",
    )
    ship = ship_model(ctx, plan, [earlier])  # type: ignore[arg-type]
    assert ship is not None and (ship.sha256, ship.path) == (earlier.model_sha256, earlier.model_path)


@pytest.mark.parametrize("value, ok", [("5", True), ("0", False), ("many", False)])
def test_keep_artifacts_from_the_environment(value: str, ok: bool) -> None:
    env = {"ORCHESTRATOR_KEEP_ARTIFACTS": value}
    if ok:
        assert load_settings(env).keep_artifacts == int(value)
    else:
        with pytest.raises(ConfigError, match="keep_artifacts"):
            load_settings(env)

"""Two workers that share no filesystem: the model travels through the registry.

Worker A runs in this process with its own workspace. Every run of "worker B" is a separate process
in a mount namespace of its own (``unshare -m``) with a tmpfs mounted over A's workspace (and every
other worker's), so it cannot read a file A wrote; it has a fresh workspace of its own each time.
All of them use the real Redis, registry, Docker daemon and the sshd QA and Prod hosts.

1. A builds #1: trains a model into its artifacts, pushes the image and (beside it) the model as an
   OCI artifact, deploys QA, gates (nothing in Prod yet).
2. B promotes #1 to Prod: it fetches the model from the registry (sha256 checked); the Prod host's
   volume holds it under its hash and the container serves it (it checks MODEL_SHA256 itself).
3. B (fresh) builds #3 and gates it against Prod: the baseline is #1's model, which only A trained,
   read from the registry.
4. A promotes #3 (trained by B) to Prod; B (fresh) rolls Prod back to #1.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import Runtime
from orchestrator.build import model_registry
from orchestrator.build.runner import run_build
from orchestrator.deploy import policy
from orchestrator.models import Build, BuildStatus
from orchestrator.store import Store
from tests.deploy.conftest import example_images, model_volume  # noqa: F401  (session fixtures)
from tests.deploy.helpers import REPO, ExampleImages, cleanup, get

from .conftest import Workers
from .test_deploy_kill import REACH, _create, _setup

pytestmark = [pytest.mark.docker, pytest.mark.ssh, pytest.mark.slow]

MODEL = "model/model.skops"
TRAIN = [
    "python3", "-m", "inference.train", "--out", "/artifacts/model",
    "--trees", "5", "--rows", "2000", "--seed", "${BUILD_NUMBER}",
]  # fmt: skip
GATE: dict[str, Any] = {
    "mode": "in_image",
    "golden": "inference/golden.csv",
    "target": "price",
    "model": MODEL,
    "loader": "inference.model:load_model",
    "compare_to": "prod",
    "baseline": "if_deployed",
    "thresholds": {"r2": {"min": 0.5}},
    "no_worse_than_deployed": {"mae": 1.0},  # models of other seeds: the comparison is what is tested
    "latency": {"single_ms": 5000, "batch_ms": 60000, "batch_rows": 500},
}

# Worker B: one build in this process's mount namespace, A's workspace hidden under a tmpfs.
RUN_ONE = textwrap.dedent(
    """
    import os, sys
    from orchestrator.build.runner import run_build
    from orchestrator.config import load_settings
    from orchestrator.store import Store
    for hidden in sys.argv[2:]:
        if os.listdir(hidden):
            sys.exit(f"{hidden} is visible to this worker")
    settings = load_settings()
    run_build(settings, Store.from_url(settings.redis_url), int(sys.argv[1]), worker_name="B")
    """
)


def _pipeline(env: Any) -> str:
    doc = yaml.safe_load(env.pipeline_yaml())
    doc["image"] = "${REGISTRY}/models-2w"  # not the session's example repository: its tags stay
    doc["steps"] = [
        {"name": "build", "docker_build": {"build_args": {"BASE_IMAGE": "${BASE_IMAGE}"}}},
        {"name": "train", "docker_run": {"command": TRAIN, "artifacts": "/artifacts"}},
        {"name": "push", "docker_push": {}},
        {"name": "deploy-qa", "deploy": {"environment": "qa"}},
        {"name": "gate", "model_check": GATE},
        {"name": "deploy-prod", "deploy": {"environment": "prod", "promote": "manual"}},
    ]
    for e in doc["environments"].values():
        e["health"]["timeout"] = 180
    return yaml.safe_dump(doc, sort_keys=False)


class Bed:
    """Worker A (in-process) and the worker B runs, over one store."""

    def __init__(
        self, store: Store, deploying: Any, workers: Workers, ssh: dict[str, str], tmp: Path
    ) -> None:
        self.store = store
        self.tmp = tmp
        self.a = deploying.model_copy(update={"workspace": tmp / "ws-a"})
        self.workers = workers
        self.ssh = ssh
        self.known = str(deploying.known_hosts)
        self.b_runs = 0

    def on_a(self, build: Build) -> Build:
        run_build(self.a, self.store, build.id, worker_name="A")
        return self.store.get_build(build.id)

    def on_b(self, build: Build) -> Build:
        """Run ``build`` as a fresh worker B that cannot see any other worker's workspace."""
        self.b_runs += 1
        name = f"b{self.b_runs}"
        others = [self.tmp / "ws-a", *(self.tmp / f"ws-b{i}" for i in range(1, self.b_runs))]
        for d in others:
            d.mkdir(exist_ok=True)
        env = {**self.workers.env(name, {"APP_PORT": "5000"}, REACH, known_hosts=self.known), **self.ssh}
        mounts = " && ".join(f"mount -t tmpfs -o size=1m tmpfs {d}" for d in others)
        script = f'{mounts} && exec "$0" -c "$1" "$2" {" ".join(map(str, others))}'
        proc = subprocess.run(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                sys.executable,
                RUN_ONE,
                str(build.id),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not (self.tmp / "ws-a" / "artifacts" / str(build.id)).exists()  # B wrote nowhere of A's
        return self.store.get_build(build.id)

    def done(self, build: Build) -> Build:
        assert build.status is BuildStatus.SUCCESS, (build.error, self.store.log_text(build.id)[-4000:])
        return build


def _model_on_volume(client: Any, image: str, volume: str, sha256: str) -> str:
    """``sha256sum`` of the model file the deploy put on a host's volume, under its hash."""
    out = client.containers.run(
        image,
        ["sha256sum", f"/models/{sha256[:16]}/model.skops"],
        volumes={volume: {"bind": "/models", "mode": "ro"}},
        user="0",
        remove=True,
        entrypoint=[],
    )
    return out.decode().split()[0]


def test_build_on_one_worker_promote_gate_and_rollback_from_another(
    settings,
    store: Store,
    git_origin,
    workers: Workers,
    deploy_hosts,
    docker_client,
    example_images: ExampleImages,  # noqa: F811
    model_volume: str,  # noqa: F811
    base_image: str,
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        from tests.conftest import unavailable

        unavailable("unshare -m needs root")
    env, ssh, _known, deploying = _setup(
        store, settings, deploy_hosts, example_images, model_volume, base_image
    )
    bed = Bed(store, deploying, workers, ssh, tmp_path)
    rt = Runtime.from_settings(deploying)
    try:
        text = _pipeline(env)
        prod_url = f"http://127.0.0.1:{yaml.safe_load(text)['environments']['prod']['container']['publish']}"
        sha = git_origin.commit("main", {"pipeline.yaml": text}, "models through the registry")

        # 1. A trains, pushes image and model, deploys QA.
        b1 = bed.done(bed.on_a(_create(store, settings, sha, example_images, 1, queued=False)))
        published = model_registry.published_model(b1)
        assert published is not None and published.ref.endswith("/models-2w:model-1"), b1.model
        assert published.files[0].path == MODEL and [f.path for f in published.files][1:] == [
            "model/model.json"
        ]
        local = tmp_path / "ws-a/artifacts" / str(b1.id) / MODEL
        assert published.sha256 == hashlib.sha256(local.read_bytes()).hexdigest()

        # 2. B promotes #1 to Prod: the model came from the registry and is on Prod's volume by hash.
        p1 = bed.done(bed.on_b(policy.request_promote(rt, b1.id, "prod", "test")))
        log = store.log_text(p1.id)
        assert f"model of build #1: fetched {published.ref}" in log and "verified" in log, log
        prod = store.get_deployment(REPO, "prod")
        assert prod is not None and prod.build_id == b1.id and prod.model_sha256 == published.sha256
        assert _model_on_volume(docker_client, base_image, model_volume, published.sha256) == published.sha256
        assert get(prod_url + "/ready")[0] == 200  # it loaded the pinned model

        # 3. B (fresh) builds #3 and gates it against Prod's #1, whose model only A trained.
        b3 = bed.done(bed.on_b(_create(store, settings, sha, example_images, 2, queued=False)))
        assert b3.number == 3
        log3 = store.log_text(b3.id)
        assert f"model of build #1: fetched {published.ref}" in log3, log3
        assert "baseline: build #1 (deployed to prod)" in log3, log3
        gate = b3.gate["gate"]
        assert gate["baseline_build"] == 1 and gate["baseline"]["ok"] is True, gate
        published3 = model_registry.published_model(b3)
        assert published3 is not None and published3.sha256 != published.sha256  # another seed

        # 4. A promotes #3 (trained on B); a fresh B rolls Prod back to #1.
        p3 = bed.done(bed.on_a(policy.request_promote(rt, b3.id, "prod", "test")))
        assert f"model of build #3: fetched {published3.ref}" in store.log_text(p3.id)
        prod = store.get_deployment(REPO, "prod")
        assert prod is not None and prod.build_id == b3.id and prod.model_sha256 == published3.sha256

        rb = bed.done(bed.on_b(policy.request_rollback(rt, REPO, "prod", "test")))
        assert f"model of build #1: fetched {published.ref}" in store.log_text(rb.id)
        prod = store.get_deployment(REPO, "prod")
        assert prod is not None and prod.build_id == b1.id and prod.model_sha256 == published.sha256
        assert get(prod_url + "/ready")[0] == 200
    finally:
        rt.queue.connection.close()
        cleanup(docker_client, env.name)

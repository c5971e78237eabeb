"""Fixtures for the model gate's real-Docker tests: builds made as the webhook makes them and run by the
real runner, and a user's model service (tests/gate/service) in real containers on loopback ports."""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator.config import DeployTarget, Reach, RepoConfig, Secrets, Settings
from orchestrator.devstack.services import GitOrigin
from orchestrator.store import Store
from tests.pipeline.conftest import REPO, Builds
from tests.web.conftest import GitHubStandIn


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    """The stand-in for GitHub's commit status API (records what the runner reports)."""
    stand_in = GitHubStandIn().start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def gate_settings(
    redis_url: str,
    tmp_path: Path,
    git_origin: GitOrigin,
    docker_daemon: Any,
    registry: Any,
    base_image: str,
    github: GitHubStandIn,
) -> Settings:
    return Settings(
        github_api_url=github.url,
        redis_url=redis_url,
        workspace=tmp_path / "ws",
        repositories={
            REPO: RepoConfig(  # issue 18: the prod environment of these pipelines names 127.0.0.1
                full_name=REPO,
                clone_url=git_origin.url,
                reach=Reach(deploy_targets=(DeployTarget(host="127.0.0.1"),)),
            )
        },
        docker_host=docker_daemon.host,
        vars={"REGISTRY": registry.addr, "BASE_IMAGE": base_image},
        secrets=Secrets(env={"GITHUB_TOKEN": "ghs-test-token"}),
        lease_seconds=3.0,
    )


@pytest.fixture
def gate_builds(gate_settings: Settings, redis_url: str, git_origin: GitOrigin) -> Iterator[Builds]:
    b = Builds(gate_settings, Store.from_url(redis_url), git_origin)
    yield b
    b.queue.connection.close()


# -- a user's model service in real containers (tests/gate/service) ----------------------------------

SERVICE_DIR = Path(__file__).resolve().parent / "service"
CLASSES = ("setosa", "versicolor", "virginica")


def classification_rows(n: int, seed: int) -> str:
    """3 classes of 4-feature Gaussian blobs (a LogisticRegression gets ~0.9 accuracy)."""
    rng = random.Random(seed)
    lines = ["f0,f1,f2,f3,species"]
    for _ in range(n):
        k = rng.randrange(3)
        f = [rng.gauss(k * 1.6, 1), rng.gauss(-k * 1.4, 1), rng.gauss(k * 0.8, 1), rng.gauss(0, 1)]
        lines.append(",".join(f"{v:.4f}" for v in f) + f",{CLASSES[k]}")
    return "\n".join(lines) + "\n"


def regression_rows(n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = ["x0,x1,x2,y"]
    for _ in range(n):
        x = [rng.gauss(0, 1) for _ in range(3)]
        y = 200_000 + 50_000 * x[0] + 30_000 * x[1] - 10_000 * x[2] + rng.gauss(0, 5_000)
        lines.append(",".join(f"{v:.4f}" for v in x) + f",{y:.0f}")
    return "\n".join(lines) + "\n"


GOLDEN_CLS = classification_rows(200, seed=2)
GOLDEN_REG = regression_rows(80, seed=3)


class Services:
    """The user's model service, one container per model, published on a free loopback port."""

    def __init__(self, client: Any, image: str) -> None:
        self.client, self.image, self.containers = client, image, []  # type: list[Any]

    def start(self, model: str) -> int:
        c = self.client.containers.run(
            self.image,
            detach=True,
            environment={"MODEL": model},
            ports={"5000/tcp": ("127.0.0.1", None)},
            labels={"mlship.test": "gate-http"},
            name=f"mlship-gate-svc-{uuid.uuid4().hex[:10]}",
        )
        self.containers.append(c)
        c.reload()
        port = int(c.ports["5000/tcp"][0]["HostPort"])
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    return port
            c.reload()
            if c.status == "exited" or time.monotonic() > deadline:
                raise AssertionError(f"service {model} did not get ready: {c.logs().decode()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        for c in self.containers:
            with contextlib.suppress(Exception):
                c.remove(force=True)


@pytest.fixture(scope="session")
def service_image(docker_client: Any, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The service's image (content-addressed tag: rebuilt only when the app or its data change)."""
    ctx = tmp_path_factory.mktemp("service")
    for name in ("Dockerfile", "app.py"):
        shutil.copy(SERVICE_DIR / name, ctx / name)
    (ctx / "train_cls.csv").write_text(classification_rows(600, seed=1))
    (ctx / "train_reg.csv").write_text(regression_rows(400, seed=4))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(ctx.iterdir())) + base_image.encode())
    tag = f"mlship-gate-test-service:{digest.hexdigest()[:12]}"
    docker_client.images.build(path=str(ctx), tag=tag, buildargs={"BASE_IMAGE": base_image}, rm=True)
    return tag


@pytest.fixture
def services(docker_client: Any, service_image: str) -> Iterator[Services]:
    s = Services(docker_client, service_image)
    yield s
    s.stop()

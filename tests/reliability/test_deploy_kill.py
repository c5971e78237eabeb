"""SIGKILL of a real ``orchestrator worker`` in the middle of a deploy (while the new container is being
health-checked), with HTTP load on the environment's port throughout.

Build 1 of the example image is deployed (in-process runner, a real checkout of the commit); build 2's
deploy runs in a worker whose server var ``APP_PORT`` makes the app listen on a port the edge does not
check (the new container runs, but never passes), and the worker's process group is killed while
it probes. A second worker's janitor must then mark build 2 ``error: worker lost`` within 30 s of the
lease expiring and release the environment lock; the edge must still point at build 1, which serves
every request of the episode. The new container was started over SSH on the deploy host, out of the
janitor's reach: the next deploy of the environment removes it before it starts its own. A new build
of build 2's commit with a healthy configuration (``APP_PORT=5000``) then deploys.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.build.queue import build_queue, enqueuer
from orchestrator.build.runner import run_build
from orchestrator.config import Reach, Secrets
from orchestrator.deploy.policy import lock_name
from orchestrator.models import Build, BuildStatus, StepStatus, Trigger
from orchestrator.store import Store
from tests.deploy.conftest import example_images, model_volume  # noqa: F401  (session fixtures)
from tests.deploy.helpers import REPO, DeployEnv, ExampleImages, Load, cleanup, get, serving, wait_http
from tests.pipeline.test_worker import wait_until

from .conftest import Workers

pytestmark = [pytest.mark.docker, pytest.mark.ssh, pytest.mark.slow]

NEVER_READY = "5999"  # the app listens there, the edge checks port 5000: it runs, but is never healthy


def _pipeline(env: DeployEnv) -> str:
    """The deploy tests' environment with one step and the health path taken from the server's vars."""
    doc = yaml.safe_load(env.pipeline_yaml())
    doc["steps"] = [{"name": "deploy-qa", "deploy": {"environment": "qa"}}]
    qa = doc["environments"]["qa"]
    qa["health"].update({"timeout": 120})
    qa["container"]["env"]["PORT"] = "${APP_PORT}"  # where gunicorn listens; the edge checks port 5000
    doc["environments"] = {"qa": qa}
    return yaml.safe_dump(doc, sort_keys=False)


def _create(
    store: Store,
    settings: Any,
    sha: str,
    images: ExampleImages,
    image_of: int,
    queued: bool = True,
    rerun_of: int | None = None,
) -> Build:
    """A push build of ``sha`` carrying the image build ``image_of`` pushed (as its push step records it)."""
    enqueue = enqueuer(build_queue(settings), settings.build_timeout) if queued else (lambda pipe, t: None)
    build, created = store.create_build(
        Trigger(repo=REPO, sha=sha, ref="refs/heads/main", branch="main", kind="push"),
        pipeline="pipeline.yaml",
        triggered_by="test",
        enqueue=enqueue,
        dedup=False,
        rerun_of=rerun_of,
        extra={"image": images.refs[image_of], "digest": images.digests[image_of]},
    )
    assert created
    return build


# What this repository's pipeline may reach: the test bed's sshd hosts and its model volumes.
REACH: dict[str, Any] = {"deploy_targets": [{"host": "127.0.0.1"}], "volume_prefix": "mlship-test-models-"}


def _setup(
    store: Store, settings: Any, deploy_hosts: Any, images: ExampleImages, volume: str, base_image: str
) -> tuple[DeployEnv, dict[str, str], str, Any]:
    """The QA environment, the SSH key secret, known_hosts, and settings to deploy in-process."""
    env = DeployEnv(
        store=store,
        settings=settings,
        hosts=deploy_hosts,
        images=images,
        volume=volume,
        edge_base_image=base_image,
    )
    ssh = {"DEPLOY_SSH_KEY": deploy_hosts.client_key.read_text()}
    known_hosts = str(deploy_hosts.known_hosts)
    repo = settings.repositories[REPO]
    reach = Reach.model_validate(REACH)
    deploying = settings.model_copy(
        update=dict(
            repositories={**settings.repositories, REPO: repo.model_copy(update={"reach": reach})},
            known_hosts=Path(known_hosts),
            secrets=Secrets(env={**settings.secrets.env, **ssh}),
            vars={**settings.vars, "APP_PORT": "5000"},
        )
    )
    return env, ssh, known_hosts, deploying


def _worker_lost(store: Store, settings: Any, build_id: int) -> Build:
    """The build, once a surviving worker's janitor has marked it ``error`` (worker lost)."""
    lost: Build = wait_until(
        lambda: store.get_build(build_id).status is BuildStatus.ERROR and store.get_build(build_id),
        settings.lease_seconds + 30,
        f"build {build_id} to be marked worker lost",
    )
    return lost


def _next_deploy(store: Store, build: Build, env: DeployEnv) -> tuple[Build, str, str]:
    """Wait for ``build`` (the deploy after the kill) to finish: (build, its log, its container)."""
    done: Build = wait_until(
        lambda: store.get_build(build.id).status.finished and store.get_build(build.id),
        120,
        "the next deploy",
    )
    return done, store.log_text(build.id), f"{env.name}-b{done.number}"


def _upstream(docker_client: Any, env: DeployEnv) -> str:
    """The one server the edge sends new requests to."""
    names = serving(docker_client, f"{env.name}-edge")
    assert len(names) == 1, names
    return f"{names[0]}:5000"


def _hold_request(url: str) -> socket.socket:
    """A request whose body never finishes: it keeps a session open on the server it reached."""
    host, _, port = url.removeprefix("http://").partition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(
        b"POST /predict HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n{"
    )
    return sock


def _apps(docker_client: Any, env: DeployEnv) -> list[str]:
    label = {"label": f"mlship.app={env.name}"}
    return sorted(c.name for c in docker_client.containers.list(all=True, filters=label))


def test_sigkill_mid_deploy_keeps_the_old_container_serving_then_rerun_deploys(
    settings,
    store,
    git_origin,
    workers: Workers,
    deploy_hosts,
    docker_client,
    example_images: ExampleImages,  # noqa: F811
    model_volume: str,  # noqa: F811
    base_image: str,
    tmp_path: Path,
) -> None:
    env, ssh, known_hosts, deploying = _setup(
        store, settings, deploy_hosts, example_images, model_volume, base_image
    )
    load = Load(env.url, rate=50)
    try:
        sha = git_origin.commit("main", {"pipeline.yaml": _pipeline(env)}, "deploy only")
        b1 = _create(store, settings, sha, example_images, 1, queued=False)
        run_build(deploying, store, b1.id, worker_name="test")
        first = store.get_build(b1.id)
        assert first.status is BuildStatus.SUCCESS, (first.error, store.log_text(b1.id))
        wait_http(env.url + "/ready", 10)
        old, new = f"{env.name}-b1", f"{env.name}-b2"
        assert _upstream(docker_client, env) == f"{old}:5000"

        load.start()
        b2 = _create(store, settings, sha, example_images, 2)
        doomed = workers.start(
            "doomed", {"APP_PORT": NEVER_READY}, env=ssh, reach=REACH, known_hosts=known_hosts
        )
        wait_until(
            lambda: "health check by the edge" in store.log_text(b2.id),
            120,
            "build 2's health check to start",
        )
        time.sleep(1.5)  # a few failing probes
        assert docker_client.containers.get(new).status == "running"
        assert store.lock_owner(lock_name(REPO, "qa")) == str(b2.id)
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        killed = time.monotonic()

        workers.start("survivor", {"APP_PORT": "5000"}, env=ssh, reach=REACH, known_hosts=known_hosts)
        lost = _worker_lost(store, settings, b2.id)
        marked = time.monotonic() - killed
        assert marked < settings.lease_seconds + 30
        assert lost.error.startswith("worker lost"), lost.error
        assert {s.name: s.status for s in lost.steps}["deploy-qa"] is StepStatus.ERROR
        assert store.lock_owner(lock_name(REPO, "qa")) is None
        assert not store.r.exists(store.k.build_locks(b2.id))
        # Nothing half-swapped: the edge never left build 1, which serves; the record says build 1.
        assert _upstream(docker_client, env) == f"{old}:5000"
        assert docker_client.containers.get(old).status == "running"
        assert store.get_deployment(REPO, "qa").build_number == 1
        # The janitor cannot reach a deploy host: build 2's container is still there for the next
        # deploy to remove (this test relies on it to prove that).
        assert new in _apps(docker_client, env)
        with load.lock:
            during_kill = (len(load.latencies), len(load.failures))

        rerun = _create(store, settings, sha, example_images, 2, rerun_of=b2.id)
        done, log, fresh = _next_deploy(store, rerun, env)
        time.sleep(1.0)
        result = load.stop()
        assert done.status is BuildStatus.SUCCESS, (done.error, log)
        assert log.index(f"removing {new}") < log.index("health check"), log
        assert _apps(docker_client, env) == [fresh, f"{env.name}-edge"]
        assert _upstream(docker_client, env) == f"{fresh}:5000"
        assert get(env.url + "/ready")[0] == 200
        assert result["failed"] == 0, result
        assert during_kill[1] == 0 and during_kill[0] > 100, during_kill
        print(
            f"\nDEPLOY-KILL marked worker lost {marked:.1f}s after the kill (lease "
            f"{settings.lease_seconds:g}s); requests {during_kill[0]} until then, {result['requests']} "
            f"in all, failed {result['failed']}, p99 {result['p99_ms']} ms; re-run #{done.number} "
            f"deployed in {done.finished_at - done.started_at:.1f}s"
        )
    finally:
        if load.is_alive():
            load.stop()
        cleanup(docker_client, env.name)


def test_sigkill_after_the_switch_records_what_the_edge_serves(
    settings,
    store,
    git_origin,
    workers: Workers,
    deploy_hosts,
    docker_client,
    example_images: ExampleImages,  # noqa: F811
    model_volume: str,  # noqa: F811
    base_image: str,
    tmp_path: Path,
) -> None:
    """The worker dies after the edge moved to build 2 but before build 1's container was retired
    (here: while the old container drains). Build 2 serves every request, the record says build 2
    (not the build 1 the edge left), and the next deploy removes build 1's container first."""
    env, ssh, known_hosts, deploying = _setup(
        store, settings, deploy_hosts, example_images, model_volume, base_image
    )
    slow_drain = yaml.safe_load(_pipeline(env))
    slow_drain["environments"]["qa"]["drain_seconds"] = 120
    load = Load(env.url, rate=50)
    try:
        quick = git_origin.commit("main", {"pipeline.yaml": _pipeline(env)}, "deploy only")
        b1 = _create(store, settings, quick, example_images, 1, queued=False)
        run_build(deploying, store, b1.id, worker_name="test")
        assert store.get_build(b1.id).status is BuildStatus.SUCCESS, store.log_text(b1.id)
        wait_http(env.url + "/ready", 10)
        old, new = f"{env.name}-b1", f"{env.name}-b2"

        load.start()
        slow = git_origin.commit(
            "main", {"pipeline.yaml": yaml.safe_dump(slow_drain, sort_keys=False)}, "drain slowly"
        )
        held = _hold_request(env.url)  # build 1 has a request in flight: its drain lasts
        b2 = _create(store, settings, slow, example_images, 2)
        doomed = workers.start("doomed", {"APP_PORT": "5000"}, env=ssh, reach=REACH, known_hosts=known_hosts)
        wait_until(lambda: "draining the old servers" in store.log_text(b2.id), 120, "build 2 to drain")
        assert _upstream(docker_client, env) == f"{new}:5000"
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        held.close()

        workers.start("survivor", {"APP_PORT": "5000"}, env=ssh, reach=REACH, known_hosts=known_hosts)
        lost = _worker_lost(store, settings, b2.id)
        assert lost.error.startswith("worker lost"), lost.error
        assert store.lock_owner(lock_name(REPO, "qa")) is None
        # Build 2 serves and the record says so; build 1's container is left for the next deploy.
        assert _upstream(docker_client, env) == f"{new}:5000"
        assert store.get_deployment(REPO, "qa").build_number == 2
        assert old in _apps(docker_client, env) and new in _apps(docker_client, env)

        nxt = _create(store, settings, quick, example_images, 2, rerun_of=b2.id)
        done, log, fresh = _next_deploy(store, nxt, env)
        time.sleep(1.0)
        result = load.stop()
        assert done.status is BuildStatus.SUCCESS, (done.error, log)
        assert log.index(f"removing {old}") < log.index("health check"), log
        assert _apps(docker_client, env) == [fresh, f"{env.name}-edge"]
        assert store.get_deployment(REPO, "qa").build_number == done.number
        assert result["failed"] == 0, result
    finally:
        if load.is_alive():
            load.stop()
        cleanup(docker_client, env.name)

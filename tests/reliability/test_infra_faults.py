"""Infrastructure faults end a build as ``error`` with a clear message, never as a failed test:
registry down during push (bounded retries), an SSH host that accepts and then says nothing (timeout),
a full workspace disk, and a Docker daemon of the test's own that is stopped mid-build."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.build.runner import run_build
from orchestrator.config import Secrets, Settings
from orchestrator.devstack.services import DockerDaemon, Registry
from orchestrator.models import BuildStatus, StepStatus, Trigger
from tests.pipeline.conftest import BUILD_STEP, REPO, SMALL_DOCKERFILE, Builds, small_pipeline
from tests.pipeline.test_worker import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]
BASE_TARBALL = Path("/var/cache/mlship/localbase-python3.11.tar")


def _with(settings: Settings, **kw: Any) -> Settings:
    return type(settings)(**{**settings.__dict__, **kw})


def test_registry_down_during_push_is_an_error_after_bounded_retries(
    settings, store, git_origin, tmp_path: Path
) -> None:
    reg = Registry(tmp_path / "registry").start()
    reg.stop()  # down by the time the push runs
    s = _with(settings, vars={**settings.vars, "REGISTRY": reg.addr})
    pipeline = small_pipeline(BUILD_STEP + "- name: push\n  docker_push: {retries: 2}\n")
    b = Builds(s, store, git_origin)
    t0 = time.monotonic()
    done = b.commit_and_run(pipeline)
    took = time.monotonic() - t0
    assert done.status is BuildStatus.ERROR, (done.status, done.error)
    push = {x.name: x for x in done.steps}["push"]
    assert push.status is StepStatus.ERROR
    assert reg.addr in push.error and "2" in push.error, push.error
    assert took < 60
    print("\nREGISTRY-DOWN", round(took, 1), "s:", push.error[:200])


@pytest.fixture
def silent_host() -> Any:
    """A TCP port that accepts connections and never sends an SSH greeting."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


@pytest.mark.ssh
def test_ssh_host_that_accepts_then_hangs_times_out_clearly(
    redis_url, store, deploy_hosts, silent_host, tmp_path: Path, registry, base_image, docker_client
) -> None:
    from orchestrator.deploy import edge
    from tests.deploy.helpers import test_settings

    s = test_settings(redis_url, deploy_hosts, tmp_path / "ws")
    # The edge image is looked up before any host is contacted: have it in the registry already.
    edge_repo = f"{registry.addr}/mlship-edge"
    edge.ensure(docker_client, edge.EdgeImage(edge_repo, edge.tag(base_image), base_image), None, print)
    doc = {
        "version": 1,
        "name": "hang",
        "image": "127.0.0.1:1/none",
        "steps": [{"name": "deploy-qa", "deploy": {"environment": "qa"}}],
        "environments": {
            "qa": {
                "hosts": [{"host": "127.0.0.1", "port": silent_host, "user": "root"}],
                "container": {"name": "hang", "publish": 18999},
                "edge": {"base_image": base_image, "repository": edge_repo},
            }
        },
    }
    build, _ = store.create_build(
        Trigger(repo=REPO, sha="e" * 40, ref="refs/heads/main", branch="main", kind="promote"),
        pipeline="pipeline.yaml",
        triggered_by="test",
        enqueue=lambda pipe, ticket: None,
        dedup=False,
        extra={
            "pipeline_yaml": yaml.safe_dump(doc),
            "image": "127.0.0.1:1/none:1",
            "deploys": {"environment": "qa"},
        },
    )
    t0 = time.monotonic()
    run_build(s, store, build.id)
    took = time.monotonic() - t0
    done = store.get_build(build.id)
    assert done.status is BuildStatus.ERROR, (done.status, done.error)
    assert "sent no SSH greeting" in done.error and f"127.0.0.1:{silent_host}" in done.error
    assert 9 < took < 30
    assert store.lock_owner(f"deploy:{REPO}:qa") is None
    print("\nSSH-HANG", round(took, 1), "s:", done.error[:200])


def test_full_workspace_disk_is_a_clear_error(settings, store, git_origin, tmp_path: Path) -> None:
    ws = tmp_path / "tiny-ws"
    ws.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(ws)], check=True)
    try:
        big = {
            "pipeline.yaml": small_pipeline(BUILD_STEP),
            "small/Dockerfile": SMALL_DOCKERFILE,
            "blob.bin": __import__("os").urandom(2 * 1024 * 1024).hex(),
        }
        b = Builds(_with(settings, workspace=ws), store, git_origin)
        done = b.commit_and_run(small_pipeline(BUILD_STEP), files=big)
    finally:
        subprocess.run(["umount", "-l", str(ws)], check=False)
    assert done.status is BuildStatus.ERROR, (done.status, done.error)
    assert "No space left on device" in done.error or "space" in done.error.lower(), done.error
    print("\nDISK-FULL", done.error[:300])


@pytest.fixture
def own_daemon() -> Any:
    """A second dockerd of this test's own (data root, exec root, socket), with the base image loaded."""
    if not BASE_TARBALL.exists():
        from tests.conftest import unavailable

        unavailable(f"{BASE_TARBALL} (the cached base image) is missing")
    work = Path(tempfile.mkdtemp(prefix="mld-", dir="/tmp"))
    mp = pytest.MonkeyPatch()
    mp.setenv("MLSHIP_DOCKER_DATA_ROOT", str(work / "data"))
    daemon = DockerDaemon()
    try:
        daemon.start(work=work)
        subprocess.run(
            ["docker", "-H", daemon.host, "load", "-q", "-i", str(BASE_TARBALL)],
            check=True,
            capture_output=True,
            timeout=180,
        )
        yield daemon
    finally:
        daemon.stop()
        mp.undo()
        subprocess.run(["rm", "-rf", str(work)], check=False)


NAP_DOCKERFILE = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo napping && sleep 120\n"


def test_docker_daemon_stopped_mid_build_is_an_error_not_a_failure(
    settings, store, git_origin, own_daemon
) -> None:
    s = _with(
        settings,
        docker_host=own_daemon.host,
        vars={**settings.vars, "BASE_IMAGE": "localbase/python:3.11"},
        secrets=Secrets(env={"GITHUB_WEBHOOK_SECRET": "whsec"}),
    )
    b = Builds(s, store, git_origin)
    build = b.create(b.commit(small_pipeline(BUILD_STEP), {"small/Dockerfile": NAP_DOCKERFILE}))
    runner = threading.Thread(target=run_build, args=(s, store, build.id), kwargs={"worker_name": "t"})
    runner.start()
    wait_until(lambda: "napping" in store.log_text(build.id), 120, "the slow RUN")
    own_daemon.stop()
    runner.join(90)
    assert not runner.is_alive()
    done = store.get_build(build.id)
    assert done.status is BuildStatus.ERROR, (done.status, done.error)
    assert "Docker daemon" in done.error, done.error
    print("\nDOCKERD-STOPPED", done.error[:300])

"""A worker that stalls past its lease mid-deploy (SIGSTOP) and wakes while the next deploy of the
same environment runs (SIGCONT) changes nothing more on the host: it is fenced.

Build 2 is deployed by a real ``mlship worker``: it switched the edge to its container and drains
build 1's (a held request keeps the drain going). The worker is stopped there. A second worker's
janitor marks build 2 lost and frees the lock; build 3 starts on that worker and, while its new
container is being health-checked, the first worker is continued. Without the fence it would now
put the old servers in maintenance and stop and remove every other app container of the
environment — build 3's among them. With it, its next change is refused in one Redis round trip, it
rolls nothing back, and build 3 completes alone: the edge serves only build 3, the host runs only
build 3's container (and the edge), and every request of the episode was served.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.deploy.policy import lock_name
from orchestrator.models import BuildStatus, StepStatus
from orchestrator.store import Store
from tests.deploy.conftest import example_images, model_volume  # noqa: F401  (session fixtures)
from tests.deploy.helpers import REPO, ExampleImages, Load, cleanup, edge_servers, get, wait_http
from tests.pipeline.test_worker import wait_until

from .conftest import Workers
from .test_deploy_kill import REACH, _apps, _create, _hold_request, _pipeline, _setup, _worker_lost

pytestmark = [pytest.mark.docker, pytest.mark.ssh, pytest.mark.slow]


def _stopped(pid: int) -> bool:
    """The process is in state T (stopped), as the kernel reports it."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_worker_stalled_past_its_lease_is_fenced_when_it_wakes(
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
    from orchestrator.build.runner import run_build

    env, ssh, known_hosts, deploying = _setup(
        store, settings, deploy_hosts, example_images, model_volume, base_image
    )
    slow_drain = yaml.safe_load(_pipeline(env))
    slow_drain["environments"]["qa"]["drain_seconds"] = 90
    load = Load(env.url, rate=50)
    stalled: Any = None
    try:
        quick = git_origin.commit("main", {"pipeline.yaml": _pipeline(env)}, "deploy only")
        b1 = _create(store, settings, quick, example_images, 1, queued=False)
        run_build(deploying, store, b1.id, worker_name="test")
        assert store.get_build(b1.id).status is BuildStatus.SUCCESS, store.log_text(b1.id)
        wait_http(env.url + "/ready", 10)
        load.start()

        slow = git_origin.commit(
            "main", {"pipeline.yaml": yaml.safe_dump(slow_drain, sort_keys=False)}, "drain slowly"
        )
        held = _hold_request(env.url)  # build 1 has a request in flight: build 2's drain lasts
        b2 = _create(store, settings, slow, example_images, 2)
        stalled = workers.start(
            "stalled", {"APP_PORT": "5000"}, env=ssh, reach=REACH, known_hosts=known_hosts
        )
        wait_until(lambda: "draining the old servers" in store.log_text(b2.id), 120, "build 2 to drain")
        os.killpg(stalled.pid, signal.SIGSTOP)
        wait_until(lambda: _stopped(stalled.pid), 10, "the worker to stop")
        held.close()
        assert store.get_deployment(REPO, "qa").build_number == 2

        workers.start("survivor", {"APP_PORT": "5000"}, env=ssh, reach=REACH, known_hosts=known_hosts)
        lost = _worker_lost(store, settings, b2.id)
        assert lost.error.startswith("worker lost"), lost.error
        assert store.lock_owner(lock_name(REPO, "qa")) is None

        # The next deploy of the environment starts on the survivor; while its new container is
        # health-checked, the stalled worker wakes up.
        b3 = _create(store, settings, quick, example_images, 2, rerun_of=b2.id)
        wait_until(lambda: "health check by the edge" in store.log_text(b3.id), 120, "build 3's health check")
        assert store.lock_owner(lock_name(REPO, "qa")) == str(b3.id)
        woke_at = len(store.log_text(b2.id))
        os.killpg(stalled.pid, signal.SIGCONT)
        fenced = wait_until(
            lambda: "fenced before" in store.log_text(b2.id) and store.log_text(b2.id),
            60,
            "the woken worker to be fenced",
        )

        done = wait_until(
            lambda: store.get_build(b3.id).status.finished and store.get_build(b3.id), 180, "build 3"
        )
        time.sleep(1.0)
        result = load.stop()
        log3 = store.log_text(b3.id)
        assert done.status is BuildStatus.SUCCESS, (done.error, log3)

        # The woken worker ran no command on the host after it woke (each one is logged as "$ ...")
        # and says why it stopped; its build stays lost, its step says fenced.
        after = store.log_text(b2.id)[woke_at:]
        assert "] $ " not in after, after
        assert "fenced before the edge change `set server" in after, after
        b2_final = store.get_build(b2.id)
        assert b2_final.status is BuildStatus.ERROR and b2_final.error.startswith("worker lost")
        step = {s.name: s for s in b2_final.steps}["deploy-qa"]
        assert step.status is StepStatus.ERROR and step.error.startswith("fenced before"), step.error

        # Build 3 alone: its container and the edge on the host, only its server in the edge, and
        # the record names it; build 2's deployment stays in the history, build 3 is current.
        fresh = f"{env.name}-b{done.number}"
        assert _apps(docker_client, env) == [fresh, f"{env.name}-edge"]
        assert sorted(edge_servers(docker_client, f"{env.name}-edge")) == [fresh]
        assert store.get_deployment(REPO, "qa").build_id == b3.id
        assert get(env.url + "/ready")[0] == 200
        assert result["failed"] == 0, result
        print(
            f"\nFENCE stalled worker woke during build 3's health check and stopped: "
            f"{fenced.split('fenced before', 1)[1].split(';', 1)[0][:120]!r}; requests "
            f"{result['requests']}, failed {result['failed']}, p99 {result['p99_ms']} ms"
        )
    finally:
        if stalled is not None and stalled.poll() is None:
            os.killpg(stalled.pid, signal.SIGCONT)
        if load.is_alive():
            load.stop()
        cleanup(docker_client, env.name)

"""Worker faults with real ``orchestrator worker`` processes and the real Docker daemon: SIGKILL
mid-``docker_build`` and mid-``docker_run`` is recovered by a surviving worker's janitor ("worker
lost" within seconds of the lease expiring, locks freed, containers removed, re-run succeeds);
SIGTERM is a warm shutdown (the running build finishes, then the worker exits), a second SIGTERM a
cold one (the step is stopped and the build recorded as an error at once); two workers on one
queue never run a build twice. Mid-deploy kills are in test_deploy_kill.py."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from orchestrator.build.cancel import rerun_build
from orchestrator.models import BuildStatus, StepStatus
from tests.pipeline.conftest import Builds, small_pipeline
from tests.pipeline.test_worker import wait_until

from .conftest import Workers

pytestmark = [pytest.mark.docker, pytest.mark.slow]

NAPPING_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG NAP=0
ARG NONCE=
RUN echo "nonce ${NONCE} napping ${NAP}s" && sleep ${NAP}
COPY . /work
"""
NAPPING = small_pipeline("""\
- name: build
  docker_build:
    context: small
    build_args: {BASE_IMAGE: "${BASE_IMAGE}", NAP: "${BUILD_SLEEP}", NONCE: "${BUILD_ID}"}
- name: test
  docker_run: {command: [sh, -c, "sleep ${RUN_SLEEP}; echo ran-once"]}
""")
QUICK = {"BUILD_SLEEP": "0", "RUN_SLEEP": "0"}


def _running(store: Any, build_id: int, step: str) -> bool:
    return any(s.name == step and s.status is StepStatus.RUNNING for s in store.get_build(build_id).steps)


@pytest.mark.parametrize("phase", ["docker_build", "docker_run"])
def test_sigkill_mid_step_is_recovered_then_rerun_succeeds(
    settings, store, git_origin, workers: Workers, docker_client, phase: str
) -> None:
    b = Builds(settings, store, git_origin)
    build = b.create(
        git_origin.commit("main", {"pipeline.yaml": NAPPING, "small/Dockerfile": NAPPING_DOCKERFILE})
    )
    slow = (
        {"BUILD_SLEEP": "300", "RUN_SLEEP": "0"}
        if phase == "docker_build"
        else {"BUILD_SLEEP": "0", "RUN_SLEEP": "300"}
    )
    doomed = workers.start("doomed", slow)
    step = "build" if phase == "docker_build" else "test"
    wait_until(lambda: _running(store, build.id, step), 120, f"step {step} to run")
    if phase == "docker_build":
        wait_until(lambda: "napping 300s" in store.log_text(build.id), 60, "the slow RUN")
    else:
        wait_until(
            lambda: docker_client.containers.list(filters={"label": f"mlship.build={build.id}"}),
            30,
            "the test container",
        )
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    killed = time.monotonic()
    workers.start("survivor", QUICK)  # its janitor finds the lost build
    lost = wait_until(
        lambda: store.get_build(build.id).status is BuildStatus.ERROR and store.get_build(build.id),
        settings.lease_seconds + 30,
        "the build to be marked worker lost",
    )
    assert time.monotonic() - killed < settings.lease_seconds + 30
    assert lost.error.startswith("worker lost"), lost.error
    assert {s.name: s.status for s in lost.steps}[step] is StepStatus.ERROR
    assert store.r.keys(store.k.lock("*")) == [] and not store.r.exists(store.k.build_locks(build.id))
    assert store.r.zscore(store.k.running(), str(build.id)) is None
    label = {"label": f"mlship.build={build.id}"}
    wait_until(
        lambda: not docker_client.containers.list(all=True, filters=label),
        15,
        "the lost build's containers to be removed",
    )
    again = rerun_build(b, build.id, by="ops")
    done = wait_until(
        lambda: store.get_build(again.id).status.finished and store.get_build(again.id), 180, "the re-run"
    )
    assert done.status is BuildStatus.SUCCESS, done.error
    assert store.log_text(again.id).count("ran-once") == 1


def test_sigterm_is_a_warm_shutdown_the_build_finishes_then_the_worker_exits(
    settings, store, git_origin, workers: Workers
) -> None:
    b = Builds(settings, store, git_origin)
    build = b.create(
        git_origin.commit("main", {"pipeline.yaml": NAPPING, "small/Dockerfile": NAPPING_DOCKERFILE})
    )
    proc = workers.start("warm", {"BUILD_SLEEP": "0", "RUN_SLEEP": "4"})
    wait_until(lambda: _running(store, build.id, "test"), 120, "the test step")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    done = store.get_build(build.id)
    assert done.status is BuildStatus.SUCCESS, done.error
    assert [s.status for s in done.steps] == [StepStatus.SUCCESS, StepStatus.SUCCESS]
    assert "ran-once" in store.log_text(build.id)


def test_second_sigterm_is_a_cold_shutdown_recorded_at_once(
    settings, store, git_origin, workers: Workers, docker_client
) -> None:
    b = Builds(settings, store, git_origin)
    build = b.create(
        git_origin.commit("main", {"pipeline.yaml": NAPPING, "small/Dockerfile": NAPPING_DOCKERFILE})
    )
    proc = workers.start("cold", {"BUILD_SLEEP": "0", "RUN_SLEEP": "300"})
    label = {"label": f"mlship.build={build.id}"}
    wait_until(lambda: _running(store, build.id, "test"), 120, "the test step")
    running = {**label, "status": "running"}
    wait_until(lambda: docker_client.containers.list(filters=running), 60, "the step's container to run")
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # RQ ignores a second signal within 1 s (a pool and the OS may both send one)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    # Recorded by the dying worker itself: no janitor, no lease expiry needed.
    done = store.get_build(build.id)
    assert done.status is BuildStatus.ERROR, done.status
    assert "cold shutdown" in done.error
    assert {s.name: s.status for s in done.steps}["test"] is StepStatus.ERROR
    assert store.r.zscore(store.k.running(), str(build.id)) is None
    wait_until(
        lambda: not docker_client.containers.list(all=True, filters=label),
        15,
        "the step's container to be removed",
    )


ONE_RUN = small_pipeline("""\
- name: run
  docker_run: {image: "${BASE_IMAGE}", command: [echo, "ran-once"]}
""")


def test_two_workers_never_run_a_build_twice(settings, store, git_origin, workers: Workers) -> None:
    b = Builds(settings, store, git_origin)
    sha = git_origin.commit("main", {"pipeline.yaml": ONE_RUN})
    builds = [b.create(sha) for _ in range(20)]
    first, second = workers.start("one"), workers.start("two")
    wait_until(lambda: all(store.get_build(x.id).status.finished for x in builds), 240, "20 builds")
    names = set()
    for x in builds:
        done = store.get_build(x.id)
        assert done.status is BuildStatus.SUCCESS, done.error
        log = store.log_text(x.id)
        assert log.count("ran-once") == 1 and log.count("step run (docker_run) started") == 1, log
        assert log.count("checking out") == 1
        names.add(done.worker)
    host = store.get_build(builds[0].id).worker.rsplit(".", 1)[0]
    assert names <= {f"{host}.{p.pid}" for p in (first, second)}
    print("\nTWO-WORKERS", {n: sum(store.get_build(x.id).worker == n for x in builds) for n in names})

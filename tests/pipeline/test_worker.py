"""The worker as a real process: `orchestrator worker` picks up builds from RQ; SIGKILL mid-step is
recovered by the janitor (build error "worker lost", locks released, container removed); re-run works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.build.cancel import rerun_build
from orchestrator.build.worker import janitor_once, run_build
from orchestrator.models import BuildStatus, StepStatus

from .conftest import BUILD_STEP, REPO, Builds, small_pipeline

pytestmark = pytest.mark.docker

SLEEPY = small_pipeline(BUILD_STEP + '- name: slow\n  docker_run: {command: [sh, -c, "sleep ${SLEEP}"]}\n')


def worker_env(settings, tmp_path: Path, git_origin, sleep: str) -> dict[str, str]:
    config = tmp_path / "server.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repositories": {REPO: {"clone_url": git_origin.url}},
                "vars": {**settings.vars, "SLEEP": sleep},
            }
        )
    )
    return {
        **os.environ,
        "ORCHESTRATOR_CONFIG": str(config),
        "ORCHESTRATOR_REDIS_URL": settings.redis_url,
        "ORCHESTRATOR_WORKSPACE": str(tmp_path / "worker-ws"),
        "ORCHESTRATOR_DOCKER_HOST": settings.docker_host,
        "ORCHESTRATOR_LEASE_SECONDS": str(settings.lease_seconds),
        "GITHUB_WEBHOOK_SECRET": "whsec",
    }


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "worker", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_burst_worker_runs_a_queued_build(settings, store, git_origin, tmp_path):
    b = Builds(settings, store, git_origin)
    build = b.create(b.commit(SLEEPY))
    proc = start_worker(worker_env(settings, tmp_path, git_origin, "0"), "--burst")
    assert proc.wait(120) == 0
    done = store.get_build(build.id)
    assert done.status is BuildStatus.SUCCESS, done.error
    assert done.worker.endswith(f".{proc.pid}")


def test_duplicate_ticket_is_dropped(settings, store):
    from orchestrator.build import worker

    worker.configure(settings)
    assert run_build("no-such-ticket") == "duplicate"


def test_sigkilled_worker_is_recovered_and_rerun_works(
    make_settings, store, git_origin, tmp_path, docker_client
):
    settings = make_settings()
    b = Builds(settings, store, git_origin)
    build = b.create(b.commit(SLEEPY))
    proc = start_worker(worker_env(settings, tmp_path, git_origin, "300"))
    try:
        wait_until(
            lambda: any(
                s.name == "slow" and s.status is StepStatus.RUNNING for s in store.get_build(build.id).steps
            ),
            120,
            "the slow step to start",
        )
        label = {"label": f"mlship.build={build.id}"}
        wait_until(lambda: docker_client.containers.list(filters=label), 30, "the container")
        # the build holds a deploy lock, as a deploy step would
        assert store.acquire_lock(f"deploy:{REPO}:qa", str(build.id), ttl=600, build_id=build.id)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    killed_at = time.time()
    # before the lease expires, the janitor leaves it alone
    assert janitor_once(store, docker_client) == []
    lost = wait_until(lambda: janitor_once(store, docker_client), 30, "the janitor to mark the build")
    assert lost == [build.id]
    assert time.time() - killed_at < settings.lease_seconds + 5
    b2 = store.get_build(build.id)
    assert b2.status is BuildStatus.ERROR and b2.error.startswith("worker lost")
    assert {s.name: s.status for s in b2.steps} == {"build": StepStatus.SUCCESS, "slow": StepStatus.ERROR}
    assert store.lock_owner(f"deploy:{REPO}:qa") is None
    assert docker_client.containers.list(all=True, filters=label) == []
    assert janitor_once(store, docker_client) == []  # exactly once
    # re-run: new number, same sha, and it completes
    quick = make_settings()
    quick = type(quick)(**{**quick.__dict__, "vars": {**quick.vars, "SLEEP": "0"}})
    again = rerun_build(Builds(quick, store, git_origin), build.id, by="ops")
    assert again.rerun_of == build.id and again.sha == build.sha and again.number == build.number + 1
    done = Builds(quick, store, git_origin).run(again)
    assert done.status is BuildStatus.SUCCESS, done.error

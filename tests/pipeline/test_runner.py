"""The runner against the real Docker daemon, Redis and git origin, with small images FROM the base image."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from orchestrator.build.cancel import cancel_build, rerun_build
from orchestrator.models import BuildStatus, StepStatus

from .conftest import BUILD_STEP, small_pipeline

pytestmark = pytest.mark.docker


def steps_of(build):
    return {s.name: s for s in build.steps}


def test_build_run_push_success_records_everything(builds, docker_client, registry):
    pipeline = small_pipeline(
        BUILD_STEP
        + """\
- name: test
  docker_run: {command: [sh, -c, "echo hello from $GREETING; echo to-stderr >&2; cat /work/msg.txt"],
               env: {GREETING: "build ${BUILD_NUMBER} of ${BRANCH}"}}
- name: push
  docker_push: {tags: ["${BUILD_NUMBER}", latest]}
"""
    )
    build = builds.commit_and_run(pipeline, {"small/msg.txt": "file from the commit\n"})
    assert build.status is BuildStatus.SUCCESS, build.error
    s = steps_of(build)
    assert [x.status for x in build.steps] == [StepStatus.SUCCESS] * 3
    assert s["test"].exit_code == 0
    assert all(x.started_at and x.finished_at and x.finished_at >= x.started_at for x in build.steps)
    assert build.digest.startswith("sha256:")
    assert build.image == f"{registry.addr}/small:{build.number}"
    assert build.pipeline_yaml == pipeline
    log = builds.store.log_text(build.id)
    assert f"[test] hello from build {build.number} of main" in log
    assert "[test] to-stderr" in log
    assert "[test] file from the commit" in log
    assert "[build] Step 1/6 : ARG BASE_IMAGE" in log
    # the registry really has it
    data = docker_client.images.get_registry_data(build.image)
    assert data.id == build.digest
    assert builds.store.counters("builds").get("success") == 1
    # nothing left running
    assert docker_client.containers.list(all=True, filters={"label": f"mlship.build={build.id}"}) == []


def test_failing_test_step_fails_build_and_stops(builds):
    pipeline = small_pipeline(
        BUILD_STEP
        + """\
- name: test
  docker_run: {command: [sh, -c, "echo 2 tests failed; exit 3"]}
- name: push
  docker_push: {}
"""
    )
    build = builds.commit_and_run(pipeline)
    assert build.status is BuildStatus.FAILED
    s = steps_of(build)
    assert s["test"].status is StepStatus.FAILED and s["test"].exit_code == 3
    assert s["test"].error == "command exited with code 3"
    assert s["push"].status is StepStatus.SKIPPED
    assert build.error == "step 'test' failed: command exited with code 3"
    assert "[test] 2 tests failed" in builds.store.log_text(build.id)


def test_continue_on_error_goes_on(builds):
    pipeline = small_pipeline(
        BUILD_STEP
        + """\
- name: lint
  docker_run: {command: [sh, -c, "exit 1"]}
  continue_on_error: true
- name: test
  docker_run: {command: ["true"]}
"""
    )
    build = builds.commit_and_run(pipeline)
    assert build.status is BuildStatus.SUCCESS
    assert [x.status for x in build.steps] == [StepStatus.SUCCESS, StepStatus.FAILED, StepStatus.SUCCESS]


def test_build_error_is_a_failure_with_its_log(builds):
    build = builds.commit_and_run(
        small_pipeline(BUILD_STEP),
        {"small/Dockerfile": "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo compiling && exit 7\n"},
    )
    assert build.status is BuildStatus.FAILED
    s = steps_of(build)["build"]
    assert s.status is StepStatus.FAILED
    assert "returned a non-zero code: 7" in s.error
    log = builds.store.log_text(build.id)
    assert "[build] compiling" in log
    assert "docker build failed" in log


def test_step_timeout_kills_container(builds, docker_client):
    pipeline = small_pipeline(
        BUILD_STEP
        + """\
- name: slow
  docker_run: {command: [sleep, "300"]}
  timeout: 2
"""
    )
    t0 = time.monotonic()
    build = builds.commit_and_run(pipeline)
    assert time.monotonic() - t0 < 30
    s = steps_of(build)["slow"]
    assert build.status is BuildStatus.FAILED
    assert s.status is StepStatus.FAILED and s.error == "step 'slow' timed out after 2s"
    assert s.finished_at - s.started_at < 7
    assert docker_client.containers.list(all=True, filters={"label": f"mlship.build={build.id}"}) == []


def test_cancel_running_docker_run_within_5s(builds, docker_client):
    pipeline = small_pipeline(
        BUILD_STEP
        + """\
- name: slow
  docker_run: {command: [sleep, "300"]}
- name: after
  docker_run: {command: ["true"]}
"""
    )
    build = builds.create(builds.commit(pipeline))
    done = threading.Thread(target=builds.run, args=(build,))
    done.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        b = builds.store.get_build(build.id)
        if b.steps and steps_of(b)["slow"].status is StepStatus.RUNNING:
            break
        time.sleep(0.1)
    label = {"label": f"mlship.build={build.id}", "status": "running"}
    while time.monotonic() < deadline and not docker_client.containers.list(filters=label):
        time.sleep(0.1)
    assert docker_client.containers.list(filters=label)
    t0 = time.monotonic()
    cancel_build(builds, build.id, by="alice")
    done.join(30)
    elapsed = time.monotonic() - t0
    b = builds.store.get_build(build.id)
    assert b.status is BuildStatus.CANCELLED, b.error
    assert elapsed < 5
    assert steps_of(b)["slow"].status is StepStatus.CANCELLED
    assert steps_of(b)["after"].status is StepStatus.SKIPPED
    assert docker_client.containers.list(all=True, filters={"label": f"mlship.build={build.id}"}) == []


SLOW_BUILD = """\
- name: build
  docker_build: {context: slow, dockerfile: Dockerfile, build_args: {BASE_IMAGE: "${BASE_IMAGE}"}}
"""


def _slow_dockerfile():
    """(marker, files): a Dockerfile in slow/ whose RUN prints the marker and sleeps 300 s. The
    marker makes the RUN line new, so it is never a cache hit."""
    marker = f"slow-build-{uuid.uuid4().hex}"
    dockerfile = f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN echo {marker} && sleep 300\n"
    return marker, {"slow/Dockerfile": dockerfile}


def _build_containers(docker_client, marker):
    """Containers the classic builder started for a RUN instruction containing ``marker``."""
    return [
        c
        for c in docker_client.containers.list(all=True)
        if marker in " ".join(c.attrs["Config"].get("Cmd") or [])
    ]


def test_cancel_during_docker_build_stops_the_build_within_5s(builds, docker_client):
    marker, files = _slow_dockerfile()
    pipeline = small_pipeline(SLOW_BUILD + '- name: after\n  docker_run: {command: ["true"]}\n')
    build = builds.create(builds.commit(pipeline, files))
    done = threading.Thread(target=builds.run, args=(build,))
    done.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _build_containers(docker_client, marker):
        time.sleep(0.2)
    assert _build_containers(docker_client, marker), builds.store.log_text(build.id)
    t0 = time.monotonic()
    cancel_build(builds, build.id, by="alice")
    done.join(30)
    elapsed = time.monotonic() - t0
    b = builds.store.get_build(build.id)
    assert b.status is BuildStatus.CANCELLED, b.error
    assert elapsed < 5
    assert steps_of(b)["build"].status is StepStatus.CANCELLED
    assert steps_of(b)["after"].status is StepStatus.SKIPPED
    # the daemon saw the client go: the RUN container is stopped and removed, no image was tagged
    while time.monotonic() - t0 < 30 and _build_containers(docker_client, marker):
        time.sleep(0.5)
    assert _build_containers(docker_client, marker) == []
    assert docker_client.images.list(filters={"label": f"org.opencontainers.image.revision={b.sha}"}) == []


def test_docker_build_over_its_timeout_is_stopped(builds, docker_client):
    marker, files = _slow_dockerfile()
    t0 = time.monotonic()
    b = builds.commit_and_run(small_pipeline(SLOW_BUILD + "  timeout: 3\n"), files)
    assert time.monotonic() - t0 < 30
    s = steps_of(b)["build"]
    assert b.status is BuildStatus.FAILED
    assert s.status is StepStatus.FAILED and s.error == "step 'build' timed out after 3s"
    assert s.finished_at - s.started_at < 8
    while time.monotonic() - t0 < 40 and _build_containers(docker_client, marker):
        time.sleep(0.5)
    assert _build_containers(docker_client, marker) == []


def test_cancel_queued_build_removes_job(builds):
    build = builds.create(builds.commit(small_pipeline(BUILD_STEP)))
    assert builds.queue.count == 1
    cancelled = cancel_build(builds, build.id)
    assert cancelled.status is BuildStatus.CANCELLED
    assert builds.queue.count == 0
    assert builds.run(build).status is BuildStatus.CANCELLED  # a stray job would not run it


def test_when_branch_skips_step(builds):
    pipeline = small_pipeline(
        BUILD_STEP + '- name: only-main\n  docker_run: {command: ["true"]}\n  when: {branch: [main]}\n'
    )
    build = builds.commit_and_run(pipeline, branch="feature")
    assert build.status is BuildStatus.SUCCESS
    assert steps_of(build)["only-main"].status is StepStatus.SKIPPED


def test_secrets_are_masked_in_logs(make_settings, store, git_origin):
    from .conftest import Builds

    multi = "-----BEGIN KEY-----\nline-one-secret\nline-two-secret\n-----END KEY-----"
    settings = make_settings(secrets={"TOKEN": "s3cr3t-t0ken", "PEM": multi})
    b = Builds(settings, store, git_origin)
    pipeline = small_pipeline(
        BUILD_STEP
        + """\
- name: leak
  docker_run:
    command: [sh, -c, 'echo "t=$TOKEN"; echo "$PEM"; printf %s "$TOKEN" | base64; echo "$PEM" | base64 -w0']
    env: {TOKEN: "${secrets.TOKEN}", PEM: "${secrets.PEM}"}
"""
    )
    build = b.commit_and_run(pipeline)
    assert build.status is BuildStatus.SUCCESS, build.error
    log = store.log_text(build.id)
    assert "t=***" in log
    for leaked in ("s3cr3t-t0ken", "line-one-secret", "line-two-secret", "czNjcjN0LXQwa2Vu"):
        assert leaked not in log
    assert "sha" not in build.pipeline_yaml or "s3cr3t" not in build.pipeline_yaml


def test_rerun_same_sha_new_number_linked(builds):
    pipeline = small_pipeline(BUILD_STEP)
    first = builds.commit_and_run(pipeline)
    # the branch moves on; the re-run must still use the original commit's pipeline
    builds.commit(small_pipeline(BUILD_STEP + '- name: extra\n  docker_run: {command: ["true"]}\n'))
    again = rerun_build(builds, first.id, by="bob")
    assert again.number == first.number + 1 and again.sha == first.sha and again.rerun_of == first.id
    again = builds.run(again)
    assert again.status is BuildStatus.SUCCESS
    assert [s.name for s in again.steps] == ["build"]
    assert again.pipeline_yaml == pipeline


def test_hostile_sha_never_reaches_git(builds, tmp_path):
    from orchestrator.models import Trigger

    marker = tmp_path / "pwned"
    trig = Trigger(
        repo="acme/house-price",
        sha=f"--upload-pack=touch {marker}",
        ref="refs/heads/main",
        branch="main",
        kind="push",
    )
    build, _ = builds.store.create_build(
        trig, pipeline="pipeline.yaml", triggered_by="t", enqueue=lambda pipe, ticket: None, dedup=False
    )
    done = builds.run(build)
    assert done.status is BuildStatus.ERROR
    assert "a commit sha is exactly 40 hex digits" in done.error
    assert not marker.exists()


def test_unknown_commit_is_an_infrastructure_error(builds):
    done = builds.run(builds.create("f" * 40))
    assert done.status is BuildStatus.ERROR
    assert done.error.startswith(f"could not fetch commit {'f' * 40} from file://")


def test_invalid_pipeline_at_the_commit_fails_with_line(builds):
    done = builds.commit_and_run(small_pipeline(BUILD_STEP + "- name: t\n  docker_run: {comand: [x]}\n"))
    assert done.status is BuildStatus.FAILED
    assert done.error.startswith("pipeline.yaml:8: steps[1].docker_run.comand: unknown key 'comand'")
    assert "unknown key 'comand'" in builds.store.log_text(done.id)


def test_shell_step_refused_without_permission(builds):
    done = builds.commit_and_run(small_pipeline('- name: sh\n  shell: {command: ["true"]}\n'))
    assert done.status is BuildStatus.FAILED
    assert "shell steps run on the worker itself and are not allowed" in done.error


def test_shell_step_runs_and_timeout_kills_its_process_group(make_settings, store, git_origin, tmp_path):
    from orchestrator.config import Allow

    from .conftest import Builds

    b = Builds(make_settings(allow=Allow(shell=True)), store, git_origin)  # noqa: S604
    pids = tmp_path / "pids"
    ok = b.commit_and_run(
        small_pipeline('- name: hello\n  shell: {command: [sh, -c, "echo hi from $BRANCH"]}\n')
    )
    assert ok.status is BuildStatus.SUCCESS and "[hello] hi from main" in store.log_text(ok.id)
    pipeline = small_pipeline(
        "- name: hang\n"
        f'  shell: {{command: [sh, -c, "sleep 300 & echo $! > {pids}; sleep 300"]}}\n'
        "  timeout: 1\n"
    )
    t0 = time.monotonic()
    done = b.commit_and_run(pipeline)
    assert done.status is BuildStatus.FAILED and done.steps[0].error == "step 'hang' timed out after 1s"
    assert time.monotonic() - t0 < 10
    child = int(pids.read_text())
    assert wait_gone(child), "the backgrounded child of the shell step survived"


def wait_gone(pid: int, timeout: float = 5) -> bool:
    """True once ``pid`` is gone or a zombie (killed, waiting for init to reap it)."""
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False

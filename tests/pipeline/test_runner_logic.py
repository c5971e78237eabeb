"""The runner's own logic with a fake step engine: order, when:, continue_on_error, cancel, timeouts,
outcomes. Real Redis and a real git origin (checkout and pipeline.yaml at the commit), no Docker:
each test takes milliseconds to a second. The real step kinds are tested in test_runner.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build.queue import build_queue, enqueuer
from orchestrator.build.runner import run_build
from orchestrator.config import Allow, RepoConfig, Secrets, Settings
from orchestrator.devstack.services import GitOrigin
from orchestrator.errors import InfrastructureError, StepFailed, Superseded
from orchestrator.models import Build, BuildStatus, StepStatus, Trigger
from orchestrator.steps.base import StepContext
from orchestrator.store import Store

REPO = "acme/fake"


class FakeEngine:
    """``shell`` steps whose command says what the fake does: ok, fail, error, hang, supersede."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.started = threading.Event()

    def shell(self, ctx: StepContext) -> None:
        self.ran.append(ctx.step.name)
        what = ctx.step.spec.command[0]
        if what == "fail":
            raise StepFailed("the command exited 3", exit_code=3)
        if what == "error":
            raise InfrastructureError("the daemon went away")
        if what == "supersede":
            raise Superseded("build #9 is already deployed to qa")
        if what == "hang":
            self.started.set()
            ctx.cancel.wait(30)
            ctx.stopped()

    def kinds(self) -> dict[str, Any]:
        return {"shell": self.shell}


def pipeline(*steps: str, timeout: str = "") -> str:
    body = "".join(f"  - {s}\n" for s in steps)
    return f"version: 1\nname: fake\nimage: r/fake\n{timeout}steps:\n{body}"


def step(name: str, what: str = "ok", extra: str = "") -> str:
    return f'{{name: {name}, shell: {{command: ["{what}"]}}{extra}}}'


@pytest.fixture
def origin(tmp_path: Path) -> GitOrigin:
    return GitOrigin(tmp_path / "git").create()


@pytest.fixture
def env(redis_url: str, tmp_path: Path, origin: GitOrigin) -> Any:
    settings = Settings(
        redis_url=redis_url,
        workspace=tmp_path / "ws",
        repositories={REPO: RepoConfig(full_name=REPO, clone_url=origin.url, allow=Allow(shell=True))},  # noqa: S604
        secrets=Secrets(env={}),
        lease_seconds=3.0,
    )
    store = Store.from_url(redis_url)
    queue = build_queue(settings)
    engine = FakeEngine()

    def run(text: str, branch: str = "main", before: Callable[[Build], None] | None = None) -> Build:
        sha = origin.commit(branch, {"pipeline.yaml": text})
        trig = Trigger(repo=REPO, sha=sha, ref=f"refs/heads/{branch}", branch=branch, kind="push")
        build, _ = store.create_build(
            trig,
            pipeline="pipeline.yaml",
            triggered_by="test",
            enqueue=enqueuer(queue, settings.build_timeout),
            dedup=False,
        )
        if before is not None:
            before(build)
        run_build(settings, store, build.id, worker_name="test", steps=engine.kinds())
        return store.get_build(build.id)

    yield run, engine, store
    queue.connection.close()


def outcome(build: Build) -> list[tuple[str, str]]:
    return [(s.name, str(s.status)) for s in build.steps]


def test_steps_run_in_order_and_the_build_succeeds(env: Any) -> None:
    run, engine, _ = env
    build = run(pipeline(step("a"), step("b"), step("c")))
    assert engine.ran == ["a", "b", "c"]
    assert build.status is BuildStatus.SUCCESS
    assert outcome(build) == [("a", "success"), ("b", "success"), ("c", "success")]


def test_a_failed_step_fails_the_build_and_skips_the_rest(env: Any) -> None:
    run, engine, _ = env
    build = run(pipeline(step("a"), step("b", "fail"), step("c")))
    assert engine.ran == ["a", "b"]
    assert build.status is BuildStatus.FAILED
    assert build.error == "step 'b' failed: the command exited 3"
    assert outcome(build) == [("a", "success"), ("b", "failed"), ("c", "skipped")]
    assert build.steps[1].exit_code == 3
    assert build.steps[2].error == "not run: an earlier step did not succeed"


def test_continue_on_error_lets_the_next_steps_run(env: Any) -> None:
    run, engine, _ = env
    build = run(pipeline(step("a", "fail", ", continue_on_error: true"), step("b")))
    assert engine.ran == ["a", "b"]
    assert build.status is BuildStatus.SUCCESS
    assert outcome(build) == [("a", "failed"), ("b", "success")]


def test_when_branch_skips_a_step_on_other_branches(env: Any) -> None:
    run, engine, _ = env
    text = pipeline(step("a"), step("release-only", extra=", when: {branch: [release]}"))
    build = run(text, branch="feature")
    assert engine.ran == ["a"]
    assert build.status is BuildStatus.SUCCESS
    assert outcome(build) == [("a", "success"), ("release-only", "skipped")]
    assert build.steps[1].error == "runs only on branch release"
    assert run(text, branch="release").steps[1].status is StepStatus.SUCCESS


@pytest.mark.parametrize(
    "what, build_status, step_status, error",
    [
        ("error", BuildStatus.ERROR, "error", "step 'x': the daemon went away"),
        ("supersede", BuildStatus.SUPERSEDED, "superseded", "step 'x': build #9 is already deployed to qa"),
    ],
)
def test_the_error_class_decides_the_outcome(
    env: Any, what: str, build_status: BuildStatus, step_status: str, error: str
) -> None:
    run, _, _ = env
    build = run(pipeline(step("x", what), step("after")))
    assert build.status is build_status
    assert outcome(build) == [("x", step_status), ("after", "skipped")]
    assert build.error == error


def test_a_step_over_its_timeout_is_stopped_and_fails(env: Any) -> None:
    run, _, _ = env
    start = time.monotonic()
    build = run(pipeline(step("slow", "hang", ", timeout: 0.5"), step("after")))
    assert time.monotonic() - start < 10  # the fake would hang for 30 s if the runner did not stop it
    assert build.status is BuildStatus.FAILED
    assert outcome(build) == [("slow", "failed"), ("after", "skipped")]
    assert build.steps[0].error == "step 'slow' timed out after 0.5s"


def test_cancel_during_a_step_cancels_the_build(env: Any) -> None:
    run, engine, store = env

    def cancel_when_started(build: Build) -> None:
        def cancel() -> None:
            if engine.started.wait(10):
                store.request_cancel(build.id)

        threading.Thread(target=cancel, daemon=True).start()

    build = run(pipeline(step("long", "hang"), step("after")), before=cancel_when_started)
    assert build.status is BuildStatus.CANCELLED
    assert outcome(build) == [("long", "cancelled"), ("after", "skipped")]
    assert engine.ran == ["long"]

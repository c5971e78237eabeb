"""Run one build: lease, checkout, pipeline from that commit, steps in order, an honest record.

No Flask here: the worker, the janitor and the web process share this module.

Status rules: a step that fails on its own terms (StepFailed: non-zero exit, timeout, failed health
check) makes the build ``failed``, unless the step says ``continue_on_error``; anything the build
depends on breaking (InfrastructureError: clone, daemon, registry, host) makes it ``error``; a cancel
request makes it ``cancelled``. Every change to a step record is saved as it happens.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from orchestrator import defaults
from orchestrator.build.cancel import cancel_build, rerun_build
from orchestrator.build.log import LogWriter, Masker
from orchestrator.build.workspace import build_dir, clean, prepare
from orchestrator.config import Settings
from orchestrator.errors import (
    InfrastructureError,
    NotReplicated,
    OrchestratorError,
    PipelineError,
    StepFailed,
    StoreUnavailable,
)
from orchestrator.models import Build, BuildStatus, StepRecord, StepStatus
from orchestrator.notify import commit_status as statuses
from orchestrator.notify.dispatch import notify_finished
from orchestrator.pipeline import MAX_BYTES, Pipeline, Step, build_variables, load_pipeline
from orchestrator.pipeline.policy import Policy
from orchestrator.steps import StepRunner, runner_for
from orchestrator.steps.base import CANCELLED, TIMEOUT, CancelToken, StepContext
from orchestrator.store import Store

__all__ = ["BuildRunner", "cancel_build", "docker_factory", "rerun_build", "run_build"]

log = logging.getLogger(__name__)
CANCEL_POLL = defaults.CANCEL_POLL
CLAIM_CONFIRM_TIMEOUT = defaults.CLAIM_CONFIRM_TIMEOUT
CLAIM_CONFIRM_POLL = defaults.CLAIM_CONFIRM_POLL
DEPLOY_TRIGGERS = {"promote": "deploy", "rollback": "rollback"}


def docker_factory(settings: Settings) -> Callable[[], Any]:
    """A function returning one DockerClient for the configured daemon, created on first use and
    then shared by every call (a worker keeps one factory in its WorkerRuntime)."""
    host = settings.docker_host or ""
    lock = threading.Lock()
    made: dict[str, Any] = {}

    def make() -> Any:
        with lock:
            client = made.get(host)
            if client is None:
                try:
                    client = (
                        docker.DockerClient(base_url=host, timeout=120)
                        if host
                        else docker.from_env(timeout=120)
                    )
                    client.ping()
                except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                    raise InfrastructureError(
                        f"cannot reach the Docker daemon at {host or 'DOCKER_HOST'}: {exc}"
                    ) from exc
                made[host] = client
            return client

    return make


class Monitor(threading.Thread):
    """The build's heartbeat: renews the lease, polls for a cancel request, enforces the step deadline.

    When it fires the current step's token, the kill functions run on a thread of their own, so a
    slow kill never delays the lease renewal.
    """

    def __init__(self, store: Store, build_id: int, lease_seconds: float, token: str = "") -> None:
        super().__init__(name=f"heartbeat-{build_id}", daemon=True)
        self.store = store
        self.build_id = build_id
        self.lease_seconds = lease_seconds
        self.token = token
        self.cancel_requested = False
        self.lease_lost = False  # a renewal was refused: the janitor took the lease (or it ran out)
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._token: CancelToken | None = None
        self._deadline = math.inf
        self._detail = ""

    def watch(self, token: CancelToken, deadline: float, detail: str) -> None:
        with self._lock:
            self._token, self._deadline, self._detail = token, deadline, detail
        if self.cancel_requested:
            self._fire(token, CANCELLED, "cancelled by request")

    def unwatch(self) -> None:
        with self._lock:
            self._token, self._deadline = None, math.inf

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def _fire(self, token: CancelToken, reason: str, detail: str) -> None:
        threading.Thread(target=token.set, args=(reason, detail), daemon=True).start()

    def run(self) -> None:
        last_renew = time.monotonic()
        last_poll = 0.0
        while not self._stop_event.wait(0.1):
            now = time.monotonic()
            try:
                if not self.lease_lost and now - last_renew >= self.lease_seconds / 3:
                    last_renew = now
                    if not self.store.renew_lease(self.build_id, self.token, self.lease_seconds):
                        # Stalled past the lease (SIGSTOP, swap, a partition): the build is not ours
                        # any more. Deploys stop at their next fence check; nothing renews it again.
                        self.lease_lost = True
                        log.error(
                            "build %s: its lease was lost; this worker no longer owns it", self.build_id
                        )
                if now - last_poll >= CANCEL_POLL:
                    last_poll = now
                    if not self.cancel_requested and self.store.cancel_requested(self.build_id):
                        self.cancel_requested = True
            except StoreUnavailable:
                continue  # keep trying; if Redis stays away the lease expires and the janitor decides
            with self._lock:
                token, deadline, detail = self._token, self._deadline, self._detail
            if token is None or token.is_set():
                continue
            if self.cancel_requested:
                self._fire(token, CANCELLED, "cancelled by request")
            elif now >= deadline:
                self._fire(token, TIMEOUT, detail)


class BuildRunner:
    """Runs one build from queued to a final status."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        build_id: int,
        *,
        worker_name: str = "",
        docker: Callable[[], Any] | None = None,
        steps: Mapping[str, StepRunner] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.build_id = build_id
        self.worker_name = worker_name
        self.docker = docker or docker_factory(settings)
        # The step engine: each kind's implementation. Tests pass fakes to check the runner's own
        # logic (order, when:, continue_on_error, cancel, timeouts, outcome) without Docker.
        self.steps = steps
        self.workspace: Path | None = None
        self.masker: Masker | None = None
        self.lease_token = ""  # set when the build is claimed; deploys fence on it

    def run(self) -> Build | None:
        """Claim and run the build; None if it is not queued any more (cancelled, taken, finished)."""
        started = time.time()
        self.lease_token = secrets.token_hex(16)
        if not self._claim(started):
            return None
        confirmed = self._confirm_claim(started)
        if confirmed is None:
            return None
        monitor = Monitor(self.store, self.build_id, self.settings.lease_seconds, self.lease_token)
        monitor.start()
        build = self.store.get_build(self.build_id)
        logw = LogWriter(
            self.store,
            self.build_id,
            Masker(self.settings.secret_values()),
            max_bytes=self.settings.max_log_bytes,
        )
        self.masker = logw.masker  # build.error, step errors and details, statuses: masked like the log
        self._report(build, "pending", "build started")
        status, error = BuildStatus.ERROR, "internal error"
        try:
            if not confirmed:
                raise NotReplicated(
                    f"this worker's claim of the build was not confirmed by {self.store.wait_replicas} "
                    f"Redis replicas within {CLAIM_CONFIRM_TIMEOUT:g} s (redis_wait_replicas): not run, "
                    "so that a failover cannot run it twice; re-run it once the replicas are back"
                )
            status, error = self._execute(build, monitor, logw)
        except OrchestratorError as exc:  # the error class says what the build ends as
            status, error = BuildStatus(exc.step_status), str(exc)
        except Exception as exc:
            log.exception("build %s crashed", self.build_id)
            status, error = BuildStatus.ERROR, f"internal error: {type(exc).__name__}: {exc}"
        except (SystemExit, KeyboardInterrupt):
            # Cold shutdown (a second SIGTERM, or Ctrl-C): record it now rather than leaving the build
            # "running" until its lease expires, then let the worker exit.
            monitor.stop()
            with contextlib.suppress(Exception):
                logw.line("build error: worker stopped (cold shutdown) mid-build; re-run it", "stderr")
                logw.close()
            self._finish(build, BuildStatus.ERROR, "worker stopped (cold shutdown) mid-build; re-run it")
            raise
        finally:
            monitor.stop()
        if error and status is not BuildStatus.SUCCESS:
            with contextlib.suppress(Exception):
                logw.step = logw.step or "build"
                logw.line(f"build {status}: {error}", "stderr")
        with contextlib.suppress(Exception):
            logw.close()
        self._finish(build, status, error)
        return build

    # -- phases -------------------------------------------------------------------------------------

    def _claim(self, started: float) -> bool:
        return self.store.claim_build(
            self.build_id,
            self.lease_token,
            self.settings.lease_seconds,
            started_at=started,
            worker=self.worker_name,
        )

    def _confirm_claim(self, started: float) -> bool | None:
        """With ``redis_wait_replicas``: True once that many replicas hold the claim.

        A claim only the old primary had is gone after a failover, and the job (its dequeue lost too)
        could run again elsewhere: so no step runs before the replicas hold it. While confirming, the
        lease is renewed here; if the new primary lacks it, the build is claimed again (it is queued
        there) or, claimed by another runner meanwhile, left to it (None). False: not confirmed in
        time (the build then ends as an error without running).
        """
        store, n = self.store, self.store.wait_replicas
        deadline = time.monotonic() + CLAIM_CONFIRM_TIMEOUT
        while n > 0:
            try:
                if store.replicas_acked(store.r) >= n:
                    return True
                held = store.renew_lease(self.build_id, self.lease_token, self.settings.lease_seconds)
                if not held and not self._claim(started):
                    return None
            except StoreUnavailable:
                log.warning("build %s: confirming the claim: Redis unavailable (a failover?)", self.build_id)
            if time.monotonic() >= deadline:
                return False
            time.sleep(CLAIM_CONFIRM_POLL)
        return True

    def _execute(self, build: Build, monitor: Monitor, logw: LogWriter) -> tuple[BuildStatus, str]:
        repo = self.settings.repo(build.repo)
        if repo is None:
            raise InfrastructureError(
                f"repository {build.repo} is not configured on this server "
                "(server configuration: repositories)"
            )
        variables = build_variables(build, self.settings.pipeline_vars(repo))
        build_timeout = self.settings.build_timeout
        build_deadline = time.monotonic() + build_timeout
        deploy_kind = DEPLOY_TRIGGERS.get(build.trigger)
        if deploy_kind:
            self.workspace = build_dir(self.settings.workspace, build.id)
            self.workspace.mkdir(parents=True, exist_ok=True)
            pipeline = load_pipeline(
                build.pipeline_yaml,
                f"{repo.pipeline} (as built)",
                variables=variables,
                secrets=self.settings.secrets,
                policy=Policy.for_repo(self.settings, repo),
            )
            env = str(build.deploys.get("environment", ""))
            steps = [
                Step.model_validate({"name": f"{build.trigger}-{env}", deploy_kind: {"environment": env}})
            ]
        else:
            logw.step = "checkout"
            logw.line(f"checking out {build.sha} from {repo.clone_url}")
            token = CancelToken()
            monitor.watch(token, build_deadline, f"the build's timeout of {build_timeout:.0f}s was reached")
            try:
                self.workspace = prepare(
                    self.settings.workspace, build.id, repo.clone_url, build.sha, on_cancel=token.on_cancel
                )
            finally:
                monitor.unwatch()
            pipeline, text = self._load(repo.pipeline, variables, Policy.for_repo(self.settings, repo))
            self.store.update_build(build.id, pipeline_yaml=text)
            build.pipeline_yaml = text
            steps = pipeline.steps
            if pipeline.timeout:
                build_deadline = min(build_deadline, time.monotonic() + pipeline.timeout)
                build_timeout = min(build_timeout, pipeline.timeout)
        logw.masker.add(*pipeline.secret_values)
        build.steps = [StepRecord(name=s.name, kind=s.kind) for s in steps]
        self._save(build)
        outcome, error = BuildStatus.SUCCESS, ""
        for step, rec in zip(steps, build.steps, strict=True):
            if outcome is not BuildStatus.SUCCESS:
                rec.status, rec.error = StepStatus.SKIPPED, "not run: an earlier step did not succeed"
                continue
            if not step.runs_on(build.branch):
                rec.status = StepStatus.SKIPPED
                rec.error = f"runs only on branch {', '.join(step.when.branch if step.when else [])}"
                self._save(build)
                continue
            if monitor.cancel_requested:
                rec.status = StepStatus.CANCELLED
                outcome, error = BuildStatus.CANCELLED, "cancelled by request"
                continue
            self._run_step(
                build, pipeline, step, rec, variables, monitor, logw, build_deadline, build_timeout
            )
            if rec.status is StepStatus.FAILED and not step.continue_on_error:
                outcome, error = BuildStatus.FAILED, f"step '{step.name}' failed: {rec.error}"
            elif rec.status is StepStatus.ERROR:
                outcome, error = BuildStatus.ERROR, f"step '{step.name}': {rec.error}"
            elif rec.status is StepStatus.CANCELLED:
                outcome, error = BuildStatus.CANCELLED, f"cancelled during step '{step.name}'"
            elif rec.status is StepStatus.SUPERSEDED:
                outcome, error = BuildStatus.SUPERSEDED, f"step '{step.name}': {rec.error}"
        self._save(build)
        return outcome, error

    def _load(self, name: str, variables: dict[str, str], policy: Policy) -> tuple[Pipeline, str]:
        assert self.workspace is not None
        path = self.workspace / name
        if not path.is_file():
            raise PipelineError(
                f"{name} not found at this commit: add it to the repository root (see docs/pipeline.md)",
                file=name,
            )
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
        text = raw.decode("utf-8", "replace")
        return load_pipeline(
            text, name, variables=variables, secrets=self.settings.secrets, policy=policy
        ), text

    def _run_step(
        self,
        build: Build,
        pipeline: Pipeline,
        step: Step,
        rec: StepRecord,
        variables: dict[str, str],
        monitor: Monitor,
        logw: LogWriter,
        build_deadline: float,
        build_timeout: float,
    ) -> None:
        token = CancelToken()
        now = time.monotonic()
        step_deadline = now + step.timeout if step.timeout else math.inf
        if step_deadline <= build_deadline:
            deadline, detail = step_deadline, f"step '{step.name}' timed out after {step.timeout:g}s"
        else:
            deadline, detail = build_deadline, f"the build's timeout of {build_timeout:g}s was reached"
        rec.status, rec.started_at = StepStatus.RUNNING, time.time()
        self._save(build)
        logw.step = step.name
        logw.line(f"step {step.name} ({step.kind}) started")
        assert self.workspace is not None
        ctx = StepContext(
            build=build,
            step=step,
            pipeline=pipeline,
            settings=self.settings,
            store=self.store,
            workspace=self.workspace,
            vars=variables,
            log=logw,
            cancel=token,
            record=rec,
            deadline=deadline,
            docker_factory=self.docker,
            save=lambda: self._save(build),
            lease_token=self.lease_token,
        )
        monitor.watch(token, deadline, detail)
        try:
            (self.steps[step.kind] if self.steps is not None else runner_for(step.kind))(ctx)
            rec.status = StepStatus.SUCCESS
        except (SystemExit, KeyboardInterrupt):
            # Cold shutdown of the worker: stop what the step started (container, process group,
            # remote command) before the process goes, and let run() record why.
            token.set(detail="the worker is shutting down")
            rec.status, rec.error = StepStatus.ERROR, "worker stopped (cold shutdown) during this step"
            rec.finished_at = time.time()
            raise
        except OrchestratorError as exc:  # each error class says what the step ends as
            rec.status, rec.error = StepStatus(exc.step_status), str(exc)
            code = exc.context.get("exit_code")
            if isinstance(exc, StepFailed) and rec.exit_code is None and isinstance(code, int):
                rec.exit_code = code
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            rec.status, rec.error = StepStatus.ERROR, f"Docker daemon: {exc}"
        except Exception as exc:
            log.exception("step %s of build %s crashed", step.name, build.id)
            logw.line("".join(traceback.format_exception_only(exc)).strip(), "stderr")
            rec.status, rec.error = StepStatus.ERROR, f"internal error: {type(exc).__name__}: {exc}"
        finally:
            monitor.unwatch()
        rec.finished_at = time.time()
        if rec.error:
            rec.error = logw.masker(rec.error)
        rec.details = logw.masker.data(rec.details)
        logw.line(
            f"step {step.name} {rec.status}"
            + (f": {rec.error}" if rec.error else "")
            + f" ({rec.finished_at - rec.started_at:.1f}s)"
        )
        self._save(build)

    def _save(self, build: Build) -> None:
        if self.masker:  # a step error or detail may quote a substituted secret
            for rec in build.steps:
                rec.error = self.masker(rec.error) if rec.error else rec.error
                rec.details = self.masker.data(rec.details)
        self.store.update_build(
            build.id,
            steps=build.steps,
            image=build.image,
            digest=build.digest,
            model=build.model,
            deploys=build.deploys,
            gate=build.gate,
        )

    def _finish(self, build: Build, status: BuildStatus, error: str) -> None:
        error = self._mask(error)
        finished = time.time()
        build.status, build.finished_at, build.error = status, finished, error
        for rec in build.steps:
            if rec.status in (StepStatus.RUNNING, StepStatus.PENDING):
                rec.status = StepStatus.CANCELLED if status is BuildStatus.CANCELLED else StepStatus.SKIPPED
                rec.finished_at = rec.finished_at or (finished if rec.started_at else None)
        try:
            self.store.set_status_if(
                build.id,
                [BuildStatus.RUNNING],
                status=str(status),
                finished_at=finished,
                error=error,
                steps=build.steps,
            )
            self.store.release_lease(build.id)
            self.store.release_build_locks(build.id)
            self.store.incr_counter("builds", str(status))
        except StoreUnavailable:
            log.error(
                "build %s finished %s but Redis is unreachable; the janitor will mark it", build.id, status
            )
        if self.workspace is not None:
            clean(self.workspace)
        state = {
            BuildStatus.SUCCESS: "success",
            BuildStatus.SUPERSEDED: "success",
            BuildStatus.FAILED: "failure",
        }.get(status, "error")
        self._report(build, state, statuses.describe(build, str(status), error))
        notify_finished(self.settings, self.store, build)

    def _mask(self, text: str) -> str:
        masker = self.masker or Masker(self.settings.secret_values())
        return masker(text)

    def _report(self, build: Build, state: str, description: str) -> None:
        try:
            statuses.report(self.settings, build, state, self._mask(description)[:140])
        except Exception:  # a commit status is a courtesy; it never fails a build
            log.warning("could not report commit status for build %s", build.id, exc_info=True)


def run_build(
    settings: Settings,
    store: Store,
    build_id: int,
    worker_name: str = "",
    docker: Callable[[], Any] | None = None,
    steps: Mapping[str, StepRunner] | None = None,
) -> Build | None:
    """Run build ``build_id`` to its end (see BuildRunner)."""
    return BuildRunner(settings, store, build_id, worker_name=worker_name, docker=docker, steps=steps).run()

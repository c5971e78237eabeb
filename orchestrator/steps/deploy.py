"""The ``deploy`` and ``rollback`` steps: a health-checked swap behind a per-host edge proxy, over SSH.

For each host (``parallelism`` at a time), under the environment lock:

1. pull the image (after a registry login with a throw-away client config, if configured);
2. remove app containers the edge does not point at (left by a deploy whose worker died), then start
   the new app container ``<name>-b<number>`` beside the old one, on ``<name>-net``;
3. probe it from inside the network until it passes ``health.retries`` times in a row (or fails:
   timeout, container exited) — on failure it is removed, the old one keeps serving, and the step
   fails with its last log lines;
4. point the edge (``<name>-edge``, started on the first deploy) at it: new connections go to it.

When every host has switched, wait ``drain_seconds`` for open connections, then stop the old
containers gracefully and remove them. If a host fails, the hosts already switched are pointed back
at their old containers (still running) and the new ones removed. See docs/deploy.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shlex
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from orchestrator import defaults
from orchestrator.build import artifacts
from orchestrator.deploy import commands as remote
from orchestrator.deploy import policy as deployments
from orchestrator.deploy.ssh import SshHost, Target, key_from_settings
from orchestrator.errors import Cancelled, DeployError, InfrastructureError, StepFailed, Superseded
from orchestrator.models import Deployment
from orchestrator.pipeline import Environment, HealthSpec
from orchestrator.pipeline.policy import ensure_deploy_targets
from orchestrator.steps.base import StepContext

CONNECT_TIMEOUT = defaults.DEPLOY_CONNECT_TIMEOUT
COMMAND_TIMEOUT = defaults.DEPLOY_COMMAND_TIMEOUT
STOP_GRACE = defaults.DEPLOY_STOP_GRACE
LOG_TAIL = 50
MODEL_PRUNE_GRACE = defaults.MODEL_PRUNE_GRACE
CONFIG_ROOT = "/dev/shm"  # noqa: S108 - per-deploy docker client config (registry login) lives in memory


@dataclass(frozen=True)
class ModelShip:
    """The build's model on the hosts: uploaded from its artifacts, or (``artifact`` None) already on
    the volume from an earlier deploy of the same build (a rollback whose artifacts are gone)."""

    sha256: str
    path: str  # MODEL_PATH in the container: <mount>/<sha256[:16]>/<file>
    volume: str = ""
    mount: str = ""
    artifact: artifacts.ModelArtifact | None = None

    def env(self) -> dict[str, str]:
        """Overrides the pipeline's env: the container serves exactly this file, pinned by hash."""
        return {"MODEL_PATH": self.path, "MODEL_SHA256": self.sha256}


@dataclass(frozen=True)
class Plan:
    """What to deploy where: pure data derived from the build and the environment."""

    repo: str
    env_name: str
    env: Environment
    image: str
    build_id: int
    number: int  # the number of the build whose image this is
    sha: str
    action: str  # deploy | promote | rollback
    model: ModelShip | None = None  # None: the operator's model on the volume (env as written)

    @property
    def names(self) -> dict[str, str]:
        return remote.names(self.env.container.name, self.number)

    @property
    def port(self) -> int:
        return int(self.env.container.port)

    def app(self, name: str) -> remote.AppContainer:
        c = self.env.container
        labels = {
            **c.labels,
            remote.LABEL_ROLE: "app",
            remote.LABEL_APP: c.name,
            remote.LABEL_BUILD: str(self.number),
            "mlship.repo": self.repo,
            "mlship.env": self.env_name,
        }
        env = {**c.env, **(self.model.env() if self.model else {})}
        return remote.AppContainer(
            name=name,
            image=self.image,
            network=self.names["network"],
            env=env,
            labels=labels,
            volumes=tuple(c.volumes),
            memory=c.memory,
            cpus=c.cpus,
        )


def deploy_ref(image: str, digest: str) -> str:
    """``repo@digest`` when the registry digest is known (exact), else the tag ref."""
    if digest and "@" not in image:
        repo, _, tag = image.rpartition(":")
        base = repo if repo and "/" not in tag else image
        return f"{base}@{digest}"
    return image


@dataclass
class HostState:
    """One host's progress, kept for the commit and for rolling it back."""

    target: Target
    ssh: SshHost | None = None
    container: str = ""
    previous_upstream: str = ""
    edge_created: bool = False
    switched: bool = False
    health: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def details(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "health": self.health,
            "switched": self.switched,
            "previous": self.previous_upstream.split(":")[0] if self.previous_upstream else "",
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


class HostDeploy:
    """The swap on one host. Every remote command goes through ``sh``; output goes to the build log."""

    def __init__(self, ctx: StepContext, plan: Plan, state: HostState) -> None:
        self.ctx = ctx
        self.plan = plan
        self.state = state
        self.ssh: SshHost = state.ssh  # type: ignore[assignment]
        self.label = f"{state.target.host}:{state.target.port}"

    # -- plumbing --------------------------------------------------------------------------------

    def sh(
        self,
        argv: list[str],
        *,
        check: bool = True,
        capture: bool = False,
        quiet: bool = False,
        stdin: bytes | None = None,
        cancellable: bool = True,
        timeout: float = COMMAND_TIMEOUT,
    ) -> Any:
        if not quiet:
            self.ctx.log.line(f"[{self.label}] $ {shlex.join(argv)}")

        def on_line(stream: str, text: str) -> None:
            if not quiet:
                self.ctx.log.write(f"[{self.label}] {text}\n", stream)

        res = self.ssh.run(
            argv,
            on_line=on_line,
            stdin=stdin,
            capture=capture,
            timeout=timeout,
            cancel=self.ctx.cancel if cancellable else None,
        )
        if check and res.exit_code != 0:
            raise DeployError(
                f"`{shlex.join(argv)[:300]}` failed on {self.label} with exit code "
                f"{res.exit_code}" + (f": {res.stderr[-500:]}" if res.stderr else ""),
                host=self.label,
                exit_code=res.exit_code,
            )
        return res

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            self.state.timings[name] = time.monotonic() - t0

    def status(self, container: str, raw: bool = False) -> str:
        """The container's status ("" if it does not exist); unless ``raw``, "crashed" once it restarted."""
        res = self.sh(remote.state(container), check=False, capture=True, quiet=True)
        if res.exit_code != 0:
            return ""
        status, _, restarts = res.stdout.strip().partition(" ")
        return "crashed" if not raw and restarts.strip() not in ("", "0") else status

    # -- phase 1: pull, start, check, switch -------------------------------------------------------

    def switch(self) -> None:
        self.timed("pull", self.pull)
        if self.plan.model is not None and self.plan.model.artifact is not None:
            self.timed("model", self.upload_model)
        n = self.plan.names
        if self.sh(remote.network_exists(n["network"]), check=False, quiet=True).exit_code != 0:
            self.sh(remote.network_create(n["network"]))
        edge_up = self.status(n["edge"], raw=True) == "running"
        if edge_up:
            res = self.sh(remote.read_upstream(n["edge"]), check=False, capture=True, quiet=True)
            self.state.previous_upstream = res.stdout.strip() if res.exit_code == 0 else ""
            if self.state.previous_upstream:
                self.remove_leftovers(self.state.previous_upstream.split(":")[0])
        name = self.free_name(n["app"])
        self.state.container = name
        self.timed("start", lambda: self.sh(remote.run(self.plan.app(name))))
        try:
            self.timed("health", lambda: self.health_check(name, n["edge"] if edge_up else name))
        except (StepFailed, Cancelled, InfrastructureError):
            self.remove_new()
            raise
        self.timed("switch", lambda: self.point_edge(name, edge_up))
        self.state.switched = True

    def pull(self) -> None:
        login = self.plan.env.registry_login
        if login is None:
            self.sh(remote.pull(self.plan.image))
            return
        config = f"{CONFIG_ROOT}/mlship-docker-{uuid.uuid4().hex}"
        self.sh(remote.make_config_dir(config))
        try:
            self.sh(
                remote.login(remote.registry_of(self.plan.image), login.username, config),
                stdin=login.password.encode() + b"\n",
            )
            self.sh(remote.pull(self.plan.image, config=config))
        finally:
            self.sh(remote.remove_config_dir(config), check=False, cancellable=False)

    def upload_model(self) -> None:
        """Stream the model (and its model.json) over stdin into ``<volume>/<sha256[:16]>/`` on the host."""
        m = self.plan.model
        assert m is not None and m.artifact is not None
        blobs = [(p.name, p.read_bytes()) for p in m.artifact.files()]
        files = [remote.UploadFile(name, len(data), hashlib.sha256(data).hexdigest()) for name, data in blobs]
        if files[0].sha256 != m.sha256:
            raise DeployError(
                f"the model artifact {m.artifact.path} changed after it was checked "
                f"(sha256 {files[0].sha256[:16]}, expected {m.sha256[:16]}); not deployed"
            )
        size = sum(f.size for f in files)
        self.ctx.log.line(
            f"[{self.label}] uploading model {m.sha256[:16]} ({size / 1e6:.1f} MB: "
            f"{', '.join(f.name for f in files)}) to volume {m.volume} as {m.path}"
        )
        argv = remote.upload_model(self.plan.image, m.volume, m.mount, m.sha256[:16], files)
        res = self.sh(argv, quiet=True, capture=True, stdin=b"".join(data for _, data in blobs), check=False)
        if res.exit_code != 0:
            why = (res.stderr or res.stdout).strip()[-500:]
            raise DeployError(
                f"uploading the model to volume {m.volume} on {self.label} failed with exit "
                f"code {res.exit_code}: {why}",
                host=self.label,
            )
        self.ctx.log.line(f"[{self.label}] {res.stdout.strip()}")

    def remove_leftovers(self, serving: str) -> None:
        """Remove this environment's app containers other than the edge's upstream ``serving``: the new
        container of a deploy whose worker died mid-swap, which the janitor cannot reach on this host.
        We hold the lock and the edge sends them nothing, so nobody uses them."""
        res = self.sh(
            remote.list_app_containers(self.plan.env.container.name), check=False, capture=True, quiet=True
        )
        for c in res.stdout.split() if res.exit_code == 0 else []:
            if c != serving:
                self.ctx.log.line(
                    f"[{self.label}] removing {c}: not the edge's upstream ({serving}), left "
                    "by an interrupted deploy"
                )
                self.sh(remote.rm(c), check=False)

    def free_name(self, base: str) -> str:
        """``base``, unless a container of that name serves now (a redeploy of the same build)."""
        name, i = base, 1
        while True:
            st = self.status(name)
            if not st:
                return name
            serving = self.state.previous_upstream.split(":")[0] == name
            if not serving:
                self.sh(remote.rm(name))  # a leftover of an interrupted deploy
                return name
            i += 1
            name = f"{base}-{i}"

    def health_check(self, name: str, via: str) -> None:
        h: HealthSpec = self.plan.env.health
        url = f"http://{name}:{self.plan.port}{h.path}"
        deadline = time.monotonic() + h.timeout
        per_probe = max(1.0, min(5.0, h.interval * 2))
        passes, attempts, last = 0, 0, "no probe ran"
        self.ctx.log.line(
            f"[{self.label}] health check {url} (expect {h.status}, {h.retries} passes in a "
            f"row, within {h.timeout:g}s)"
        )
        while True:
            attempts += 1
            res = self.sh(remote.probe(via, url, h.status, per_probe), check=False, capture=True, quiet=True)
            if res.exit_code == 0:
                passes += 1
                if passes >= h.retries:
                    self.state.health = f"passed after {attempts} probes"
                    self.ctx.log.line(f"[{self.label}] {name} is healthy ({attempts} probes)")
                    return
            else:
                passes = 0
                lines = (res.stderr or res.stdout).strip().splitlines()
                last = lines[-1] if lines else f"exit {res.exit_code}"
                st = self.status(name)
                if st in ("exited", "dead", "restarting", "crashed", ""):
                    self.fail_health(name, f"the container stopped ({st or 'gone'}) before it was healthy")
            if time.monotonic() + h.interval > deadline:
                self.fail_health(name, f"not healthy within {h.timeout:g}s ({attempts} probes; last: {last})")
            if self.ctx.cancel.wait(h.interval):
                self.ctx.stopped()

    def fail_health(self, name: str, why: str) -> None:
        self.state.health = f"failed: {why}"
        res = self.sh(remote.logs(name, LOG_TAIL), check=False, capture=True, quiet=True, cancellable=False)
        tail = "\n".join(x for x in (res.stdout, res.stderr) if x)
        raise DeployError(
            f"health check of {name} on {self.label} failed: {why}; the previous container "
            f"keeps serving. Last {LOG_TAIL} log lines of {name}:\n{tail}",
            host=self.label,
        )

    def point_edge(self, name: str, edge_up: bool) -> None:
        n, port = self.plan.names, self.plan.port
        publish = self.plan.env.container.publish
        if not edge_up:
            if publish is None:
                raise DeployError(
                    f"environments.{self.plan.env_name}.container.publish is not set: the edge "
                    "proxy needs the host port to serve on"
                )
            if self.status(n["edge"]):  # there but not running: replace it (its state volume stays)
                self.sh(remote.rm(n["edge"]))
            labels = {
                remote.LABEL_ROLE: "edge",
                remote.LABEL_APP: self.plan.env.container.name,
                "mlship.repo": self.plan.repo,
                "mlship.env": self.plan.env_name,
            }
            self.sh(
                remote.run_edge(
                    n["edge"], self.plan.image, n["network"], n["state"], int(publish), port, labels
                )
            )
            self.state.edge_created = True
        self.sh(remote.set_upstream(n["edge"], f"{name}:{port}"))
        # Through the edge's own listener: proves the path a client takes now works.
        probe = remote.probe(
            n["edge"], f"http://127.0.0.1:{port}{self.plan.env.health.path}", self.plan.env.health.status, 5
        )
        deadline = time.monotonic() + 15
        while self.sh(probe, check=False, quiet=True).exit_code != 0:
            if time.monotonic() > deadline:
                raise DeployError(
                    f"the edge {n['edge']} on {self.label} does not answer through "
                    f"127.0.0.1:{port} after the switch",
                    host=self.label,
                )
            time.sleep(0.3)
        self.ctx.log.line(f"[{self.label}] edge {n['edge']} now sends new connections to {name}")

    # -- phase 2: commit or undo -------------------------------------------------------------------

    def retire_old(self, images_to_prune: list[str]) -> list[str]:
        """Stop and remove every other app container of this environment; prune old images."""
        res = self.sh(
            remote.list_app_containers(self.plan.env.container.name),
            capture=True,
            quiet=True,
            cancellable=False,
        )
        old = [c for c in res.stdout.split() if c and c != self.state.container]
        t0 = time.monotonic()
        for c in old:
            self.sh(remote.stop(c, STOP_GRACE), check=False, cancellable=False)
            self.sh(remote.rm(c), check=False, cancellable=False)
        self.state.timings["stop_old"] = time.monotonic() - t0
        for image in images_to_prune:
            self.sh(remote.image_rm(image), check=False, cancellable=False, quiet=True)
        return old

    def prune_models(self, keep: set[str]) -> None:
        """Remove the model directories on this host's model volume that no deployment record names
        (uploads of failed deploys, models older than every environment's history). Housekeeping:
        a failure is logged, never fails the deploy."""
        m = self.plan.model
        if m is None or not m.volume:
            return
        argv = remote.prune_models(self.plan.image, m.volume, m.mount, keep, MODEL_PRUNE_GRACE)
        res = self.sh(argv, check=False, capture=True, quiet=True, cancellable=False)
        out = (res.stdout if res.exit_code == 0 else res.stderr or res.stdout).strip()[-300:]
        self.ctx.log.line(
            f"[{self.label}] model volume {m.volume}: {out}"
            + ("" if res.exit_code == 0 else f" (exit code {res.exit_code}; nothing fails)"),
            "stdout" if res.exit_code == 0 else "stderr",
        )

    def undo(self) -> None:
        """Point the edge back at the previous container and remove the new one (best effort)."""
        n = self.plan.names
        if self.state.switched and self.state.previous_upstream:
            self.sh(
                remote.set_upstream(n["edge"], self.state.previous_upstream), check=False, cancellable=False
            )
        elif self.state.switched and self.state.edge_created:
            self.sh(remote.rm(n["edge"]), check=False, cancellable=False)
        self.remove_new()
        self.state.switched = False

    def remove_new(self) -> None:
        if self.state.container:
            self.sh(remote.rm(self.state.container), check=False, cancellable=False)


# -- the step -------------------------------------------------------------------------------------------


def _targets(env: Environment) -> list[Target]:
    return [Target(str(h.host), int(h.port), h.user) for h in env.hosts]


def _plan(ctx: StepContext, env_name: str, action: str, image: str) -> Plan:
    if env_name not in ctx.pipeline.environments:
        raise DeployError(f"environment '{env_name}' is not defined in pipeline.yaml")
    b = ctx.build
    return Plan(
        repo=b.repo,
        env_name=env_name,
        env=ctx.pipeline.environments[env_name],
        image=image,
        build_id=deployments.source_id(b),
        number=deployments.source_number(b),
        sha=b.sha,
        action=action,
    )


def _model(ctx: StepContext, plan: Plan, history: list[Deployment]) -> ModelShip | None:
    """The model this deploy ships (see docs/deploy.md, "The model"): the deployed build's model
    artifact if it wrote one, else the file an earlier deploy of that build left on the volume, else
    None (the container uses the pipeline's MODEL_PATH on the operator's volume, as before)."""
    rel = artifacts.model_path(ctx.pipeline)
    prior = next(
        (d for d in history if d.build_id == plan.build_id and d.model_sha256 and d.model_path), None
    )
    try:
        art = artifacts.find_model(ctx.settings.workspace, plan.build_id, rel)
    except artifacts.ArtifactsPruned as exc:
        if prior is None:  # never silently fall back to whatever model the volume holds
            raise DeployError(f"cannot ship the model of build #{plan.number}: {exc}") from exc
        art = None
    except StepFailed as exc:
        raise DeployError(f"cannot ship the model of build #{plan.number}: {exc}") from exc
    if art is None:
        return ModelShip(prior.model_sha256, prior.model_path) if prior else None
    model_path = plan.env.container.env.get("MODEL_PATH", "")
    if not model_path.startswith("/"):
        raise DeployError(
            f"build #{plan.number} has a model to ship, but environments.{plan.env_name}."
            "container.env.MODEL_PATH is not an absolute path: set it (e.g. "
            "/models/model.skops); its directory names the model volume"
        )
    volume, mount = remote.model_volume(plan.env.container.volumes, model_path)
    return ModelShip(art.sha256, f"{mount}/{art.short}/{art.path.name}", volume, mount, art)


def _rollout(ctx: StepContext, plan: Plan, lock: deployments.EnvironmentLock) -> list[HostState]:
    """Phase 1 on every host, ``parallelism`` at a time; undo the switched hosts if one fails."""
    key = key_from_settings(ctx.settings, ctx.settings.deploy_key_name(ctx.build.repo))
    states = [HostState(t) for t in _targets(plan.env)]
    done: list[HostState] = []
    par = max(1, plan.env.parallelism)

    def one(state: HostState) -> None:
        state.ssh = SshHost(state.target, key, ctx.settings.known_hosts, CONNECT_TIMEOUT)
        state.ssh.connect()
        HostDeploy(ctx, plan, state).switch()

    try:
        for i in range(0, len(states), par):
            batch = states[i : i + par]
            if lock.lost.is_set():
                raise DeployError(f"lost the deploy lock {lock.name} (Redis unreachable?); rollout stopped")
            with ThreadPoolExecutor(len(batch)) as pool:
                futures = [pool.submit(one, s) for s in batch]
                errors = []
                for s, f in zip(batch, futures, strict=True):
                    try:
                        f.result()
                    except Exception as exc:
                        errors.append(exc)
                    if s.switched or s.container:
                        done.append(s)
                if errors:
                    raise errors[0]
    except BaseException as exc:
        if done:
            ctx.log.line(
                f"rolling back {len(done)} host(s) already changed: "
                + ", ".join(str(s.target) for s in done),
                "stderr",
            )
        for s in reversed(done):
            with contextlib.suppress(Exception):
                HostDeploy(ctx, plan, s).undo()
        _close(states)
        _record(ctx, plan, states, "failed")
        if isinstance(exc, Cancelled):
            ctx.stopped()
        raise
    return states


def _close(states: list[HostState]) -> None:
    for s in states:
        if s.ssh is not None:
            s.ssh.close()


def _record(ctx: StepContext, plan: Plan, states: list[HostState], outcome: str) -> None:
    model = {"model_sha256": plan.model.sha256, "model_path": plan.model.path} if plan.model else {}
    ctx.record.details.update(
        {
            "environment": plan.env_name,
            "image": plan.image,
            "action": plan.action,
            "outcome": outcome,
            "build_number": plan.number,
            "hosts": {str(s.target): s.details() for s in states},
            **model,
        }
    )
    ctx.build.deploys = {
        **ctx.build.deploys,
        plan.env_name: {"outcome": outcome, "image": plan.image, "number": plan.number, **model},
    }
    with contextlib.suppress(Exception):
        ctx.save()


def _deploy(ctx: StepContext, env_name: str, action: str) -> None:
    b = ctx.build
    image = deploy_ref(b.image, b.digest)
    if action == "rollback" and b.trigger != "rollback":
        image = _rollback_image(ctx, env_name)
    if not image:
        raise StepFailed("nothing to deploy: no image was pushed by an earlier step (add a docker_push step)")
    plan = _plan(ctx, env_name, action, image)
    ensure_deploy_targets(ctx.settings, b.repo, env_name, plan.env)  # issue 18: before any connection
    lock = deployments.EnvironmentLock(ctx.store, b.repo, env_name, b.id)
    deadline = ctx.deadline if ctx.deadline != float("inf") else time.monotonic() + 3600
    lock.acquire(
        deadline,
        ctx.cancel,
        lambda holder: ctx.log.line(f"waiting for the {env_name} deploy lock (held by {holder})"),
    )
    try:
        current = ctx.store.get_deployment(b.repo, env_name)
        newer = deployments.superseded_by(current, plan.number, action)
        if newer is not None:
            ctx.record.details.update(
                {"environment": env_name, "outcome": "superseded", "deployed": newer.build_number}
            )
            ctx.log.line(
                f"build #{plan.number} is older than #{newer.build_number}, which is deployed to "
                f"{env_name}: superseded, not deployed"
            )
            raise Superseded(
                f"#{newer.build_number} is already deployed to {env_name}; build "
                f"#{plan.number} is older and was not deployed",
                environment=env_name,
                deployed=newer.build_number,
            )
        ctx.log.line(
            f"{action} {image} to {env_name} ({len(plan.env.hosts)} host(s), parallelism "
            f"{plan.env.parallelism})"
        )
        history = ctx.store.deployment_history(b.repo, env_name, limit=20)
        plan = dataclasses.replace(plan, model=_model(ctx, plan, history))
        if plan.model is not None:
            ctx.log.line(f"model: sha256 {plan.model.sha256[:16]}, served from {plan.model.path}")
        states = _rollout(ctx, plan, lock)
        # Every edge now sends traffic to the new containers: record that before draining and
        # retiring the old ones, so a worker lost (or a failure) from here on leaves a record that
        # says what is served; the next deploy removes the old containers left behind.
        ctx.store.set_deployment(
            Deployment(
                repo=b.repo,
                environment=env_name,
                build_id=plan.build_id,
                build_number=plan.number,
                image=image,
                sha=b.sha,
                container=states[0].container,
                hosts=[str(s.target) for s in states],
                action=action,
                model_sha256=plan.model.sha256 if plan.model else "",
                model_path=plan.model.path if plan.model else "",
            )
        )
        try:
            if plan.env.drain_seconds:
                ctx.log.line(f"draining old containers for {plan.env.drain_seconds:g}s")
                time.sleep(plan.env.drain_seconds)  # not cancellable: traffic already moved
            prune = deployments.images_to_prune(history, image)
            keep = {d.model_sha256[:16] for d in ctx.store.deployment_records() if d.model_sha256}
            for s in states:
                host = HostDeploy(ctx, plan, s)
                host.retire_old(prune)
                host.prune_models(keep)
        finally:
            _close(states)
        _record(ctx, plan, states, "deployed")
        ctx.log.line(f"{env_name} now runs build #{plan.number} ({image})")
    finally:
        lock.release()


def _rollback_image(ctx: StepContext, env_name: str) -> str:
    """A ``rollback`` step inside a pipeline: go back to the deployment before the current one."""
    current = ctx.store.get_deployment(ctx.build.repo, env_name)
    target = deployments.rollback_target(ctx.store.deployment_history(ctx.build.repo, env_name, 100), current)
    if target is None:
        raise StepFailed(f"nothing to roll back to in {env_name}: no earlier deployment is recorded")
    ctx.build.deploys = {
        **ctx.build.deploys,
        "source_build": target.build_id,
        "source_number": target.build_number,
    }
    return target.image


def deploy(ctx: StepContext) -> None:
    """The ``deploy`` step (also the single step of a promote build)."""
    spec = ctx.step.spec
    if getattr(spec, "promote", "auto") == "manual" and ctx.build.trigger != "promote":
        ctx.record.details.update({"environment": spec.environment, "outcome": "awaiting promote"})
        ctx.log.line(
            f"{spec.environment} is deployed only by promote (promote: manual): promote build id "
            f"{ctx.build.id} to {spec.environment} from the build page, the API or the CLI"
        )
        return
    _deploy(ctx, spec.environment, "promote" if ctx.build.trigger == "promote" else "deploy")


def rollback(ctx: StepContext) -> None:
    """The ``rollback`` step: the same health-checked swap, with the previous deployment's image."""
    _deploy(ctx, ctx.step.spec.environment, "rollback")


def register(kinds: dict[str, Any]) -> None:
    kinds.update({"deploy": deploy, "rollback": rollback})

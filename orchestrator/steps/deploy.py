"""The ``deploy`` and ``rollback`` steps: a health-checked swap behind a per-host HAProxy edge, over SSH.

For each host (``parallelism`` at a time), under the environment lock:

1. pull the image and mlship's edge image (after a registry login with a throw-away client config);
2. ship the build's model into the host's model volume (a helper container of the edge image);
3. make sure the edge ``<name>-edge`` runs (first deploy: start it; the old TCP edge: take it over),
   remove servers and app containers left by an interrupted deploy, then start the new app container
   ``<name>-b<number>`` beside the old one on ``<name>-net``;
4. add it to the edge at weight 0 and wait for the edge's own HTTP check (``health:``) to pass —
   on failure it is removed, the old one keeps serving, and the step fails with its last log lines;
5. give it the weight and set the old servers to drain: new requests go to the new container.

When every host has switched, the deployment is recorded; then the old servers drain (until their
sessions end, at most ``drain_seconds``), leave the edge and their containers are stopped and removed.
If a host fails, the hosts already switched get their old servers back (still running) and the new
ones are removed. See docs/deploy.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import shlex
import tarfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from orchestrator import defaults, labels
from orchestrator.build import artifacts
from orchestrator.deploy import commands as remote
from orchestrator.deploy import edge as edge_image
from orchestrator.deploy import haproxy
from orchestrator.deploy import policy as deployments
from orchestrator.deploy.edgectl import EdgeControl
from orchestrator.deploy.ssh import RemoteHost, Target, key_from_settings
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
    edge_image: str = ""  # the HAProxy edge image ref (in the registry)
    edge_tag: str = ""

    @property
    def names(self) -> dict[str, str]:
        return remote.names(self.env.container.name, self.number)

    @property
    def port(self) -> int:
        return int(self.env.container.port)

    def app(self, name: str) -> remote.AppContainer:
        c = self.env.container
        ours = {
            labels.ROLE: labels.ROLE_APP,
            labels.APP: c.name,
            labels.BUILD_NUMBER: str(self.number),
            labels.REPO: self.repo,
            labels.ENV: self.env_name,
        }
        env = {**c.env, **(self.model.env() if self.model else {})}
        return remote.AppContainer(
            name=name,
            image=self.image,
            network=self.names["network"],
            env=env,
            labels={**c.labels, **ours},
            volumes=tuple(c.volumes),
            memory=c.memory,
            cpus=c.cpus,
        )

    def edge_config(self) -> haproxy.EdgeConfig:
        h = self.env.health
        check = haproxy.Check(h.path, h.status, max(100, int(h.interval * 1000)), h.retries, h.fall)
        return haproxy.EdgeConfig(self.env.container.name, self.env_name, check)

    def edge_labels(self) -> dict[str, str]:
        return {
            labels.ROLE: labels.ROLE_EDGE,
            labels.APP: self.env.container.name,
            labels.REPO: self.repo,
            labels.ENV: self.env_name,
            labels.EDGE_VERSION: self.edge_tag,
        }


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
    ssh: RemoteHost | None = None
    container: str = ""
    previous: list[str] = field(default_factory=list)  # the servers that served before the switch
    edge_created: bool = False
    added: bool = False  # the new container is a server of the edge
    switched: bool = False
    health: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def details(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "health": self.health,
            "switched": self.switched,
            "previous": ",".join(self.previous),
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


class HostDeploy:
    """The swap on one host. Every remote command goes through ``sh``; output goes to the build log."""

    def __init__(self, ctx: StepContext, plan: Plan, state: HostState) -> None:
        self.ctx = ctx
        self.plan = plan
        self.state = state
        self.ssh: RemoteHost = state.ssh  # type: ignore[assignment]
        self.label = f"{state.target.host}:{state.target.port}"
        self.edge = EdgeControl(self.run_quiet, plan.names["edge"], plan.edge_config(), self.label)

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

    def run_quiet(self, argv: list[str], stdin: bytes | None) -> Any:
        """The edge's runner: captured, not logged line by line, not cancellable (short commands whose
        half-done state we would otherwise have to guess)."""
        return self.sh(
            argv, check=False, capture=True, quiet=True, stdin=stdin, cancellable=False, timeout=30
        )

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

    def ip_of(self, container: str) -> str:
        res = self.sh(remote.container_ip(container, self.plan.names["network"]), capture=True, quiet=True)
        ip = res.stdout.strip()
        if not ip:
            raise DeployError(f"{container} on {self.label} has no address on {self.plan.names['network']}")
        return str(ip)

    def log(self, text: str, stream: str = "stdout") -> None:
        self.ctx.log.line(f"[{self.label}] {text}", stream)

    # -- phase 1: pull, start, check, switch -------------------------------------------------------

    def switch(self) -> None:
        self.timed("pull", self.pull)
        if self.plan.model is not None and self.plan.model.artifact is not None:
            self.timed("model", self.upload_model)
        n = self.plan.names
        if self.sh(remote.network_exists(n["network"]), check=False, quiet=True).exit_code != 0:
            self.sh(remote.network_create(n["network"]))
        kind = self.edge_kind()
        serving = self.timed("edge", lambda: self.prepare_edge(kind))
        name = self.free_name(n["app"], serving)
        self.state.container = name
        self.timed("start", lambda: self.sh(remote.run(self.plan.app(name))))
        try:
            if kind != "haproxy":
                self.timed("edge_start", lambda: self.create_edge(kind, serving))
            server = haproxy.Server(name, self.ip_of(name), self.plan.port)
            self.edge.add(server)
            self.state.added = True
            self.edge.save()
            self.timed("health", lambda: self.health_gate(name))
        except (StepFailed, Cancelled, InfrastructureError):
            self.remove_new()
            raise
        self.timed("switch", lambda: self.shift(name))

    def pull(self) -> None:
        images = [self.plan.image, self.plan.edge_image]
        login = self.plan.env.registry_login
        if login is None:
            for image in images:
                self.sh(remote.pull(image))
            return
        config = f"{CONFIG_ROOT}/mlship-docker-{uuid.uuid4().hex}"
        self.sh(remote.make_config_dir(config))
        try:
            self.sh(
                remote.login(remote.registry_of(self.plan.image), login.username, config),
                stdin=login.password.encode() + b"\n",
            )
            for image in images:
                self.sh(remote.pull(image, config=config))
        finally:
            self.sh(remote.remove_config_dir(config), check=False, cancellable=False)

    def upload_model(self) -> None:
        """Stream the model (and its model.json) as a tar into ``<volume>/<sha256[:16]>/`` on the host,
        through a helper container of the edge image (nothing runs in the app image)."""
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
        self.log(
            f"uploading model {m.sha256[:16]} ({size / 1e6:.1f} MB: "
            f"{', '.join(f.name for f in files)}) to volume {m.volume} as {m.path}"
        )
        argv = remote.upload_model(self.plan.edge_image, m.volume, m.mount, m.sha256[:16], files)
        res = self.sh(argv, quiet=True, capture=True, stdin=tar_of(blobs), check=False)
        if res.exit_code != 0:
            why = (res.stderr or res.stdout).strip()[-500:]
            raise DeployError(
                f"uploading the model to volume {m.volume} on {self.label} failed with exit "
                f"code {res.exit_code}: {why}",
                host=self.label,
            )
        self.log(res.stdout.strip())

    # -- the edge ------------------------------------------------------------------------------------

    def edge_kind(self) -> str:
        """``haproxy`` (ours, running or stopped), ``legacy`` (the old TCP edge) or ``none``."""
        edge = self.plan.names["edge"]
        res = self.sh(
            remote.container_label(edge, labels.EDGE_VERSION), check=False, capture=True, quiet=True
        )
        if res.exit_code != 0:
            return "none"
        version = res.stdout.strip()
        if not version:
            return "legacy"
        if version != self.plan.edge_tag:
            self.log(
                f"the edge {edge} runs {version}, this deploy's edge image is {self.plan.edge_tag}: "
                f"kept (see docs/deploy.md, upgrading the edge)"
            )
        return "haproxy"

    def prepare_edge(self, kind: str) -> list[str]:
        """The servers that serve now (for haproxy edges, after removing leftovers of interrupted
        deploys); for the old TCP edge, the container its state file names."""
        edge = self.plan.names["edge"]
        if kind == "legacy":
            res = self.sh(remote.legacy_upstream(edge), check=False, capture=True, quiet=True)
            upstream = res.stdout.strip().rpartition(":")[0] if res.exit_code == 0 else ""
            self.log(f"{edge} is the old TCP edge (upstream {upstream or 'none'}): this deploy replaces it")
            self.state.previous = [upstream] if upstream else []
            return self.state.previous
        if kind == "none":
            return []
        if self.status(edge, raw=True) != "running":
            self.log(f"starting the stopped edge {edge}")
            self.sh(remote.start(edge))
        self.edge.wait_ready()
        stats = self.edge.stats()
        serving = [s.name for s in stats.values() if s.serving]
        for s in stats.values():
            if not s.serving:
                self.log(
                    f"removing server {s.name} from the edge: not serving, left by an interrupted deploy"
                )
                self.edge.delete(s.name)
        self.remove_leftovers(serving)
        if self.edge.check_changed():
            h = self.plan.env.health
            self.log(
                f"the health check changed (now GET {h.path} expecting {h.status}): reloading the edge; "
                "it applies to every server, the serving ones included"
            )
            self.edge.save()
            self.edge.reload()
        elif len(serving) != len(stats):
            self.edge.save()
        self.state.previous = serving
        return serving

    def create_edge(self, kind: str, serving: list[str]) -> None:
        """Start the HAProxy edge: on the first deploy with no servers, when taking over the old TCP
        edge with the container it served (so the takeover moves no traffic)."""
        publish = self.plan.env.container.publish
        if publish is None:
            raise DeployError(
                f"environments.{self.plan.env_name}.container.publish is not set: the edge "
                "needs the host port to serve on"
            )
        servers = [haproxy.Server(s, self.ip_of(s), self.plan.port, haproxy.FULL_WEIGHT) for s in serving]
        n = self.plan.names
        config = haproxy.render(self.plan.edge_config(), servers).encode()
        self.sh(remote.write_edge_config(n["state"], self.plan.edge_image), stdin=config, capture=True)
        edge = remote.EdgeContainer(
            name=n["edge"] if kind == "none" else n["edge"] + "-new",
            image=self.plan.edge_image,
            network=n["network"],
            state_volume=n["state"],
            publish=int(publish),
            port=haproxy.EDGE_PORT,
            labels=self.plan.edge_labels(),
        )
        self.sh(remote.rm(edge.name), check=False, quiet=True)  # a leftover of an interrupted takeover
        self.sh(remote.create_edge(edge), capture=True)
        if kind == "none":
            self.sh(remote.start(edge.name), capture=True)
        else:
            self.sh(remote.take_over_edge(n["edge"], edge.name), capture=True)
        self.state.edge_created = kind == "none"
        self.edge.wait_ready()
        self.log(f"edge {n['edge']} (HAProxy, {self.plan.edge_tag}) serves port {publish}")

    def remove_leftovers(self, serving: list[str]) -> None:
        """Remove this environment's app containers the edge does not serve: the new container of a
        deploy whose worker died mid-swap, or old ones a lost worker did not retire. We hold the lock
        and the edge sends them nothing, so nobody uses them."""
        for c in self.app_containers():
            if c not in serving:
                self.log(f"removing {c}: not served by the edge ({', '.join(serving) or 'none'})")
                self.sh(remote.rm(c), check=False)

    def app_containers(self) -> list[str]:
        res = self.sh(
            remote.list_app_containers(self.plan.env.container.name),
            check=False,
            capture=True,
            quiet=True,
            cancellable=False,
        )
        return [c for c in res.stdout.split() if c] if res.exit_code == 0 else []

    def free_name(self, base: str, serving: list[str]) -> str:
        """``base``, unless a container of that name serves now (a redeploy of the same build)."""
        name, i = base, 1
        while True:
            if not self.status(name):
                return name
            if name not in serving:
                self.sh(remote.rm(name))  # a leftover of an interrupted deploy
                return name
            i += 1
            name = f"{base}-{i}"

    def health_gate(self, name: str) -> None:
        """Until the edge's own check passed ``health.retries`` times in a row (the server is still at
        weight 0); fails at once if the container stops, or after ``health.timeout``."""
        h: HealthSpec = self.plan.env.health
        deadline = time.monotonic() + h.timeout
        passes, polls, last = 0, 0, "no check ran yet"
        self.log(
            f"health check by the edge: GET {h.path} on {name} (expect {h.status}, every {h.interval:g}s, "
            f"{h.retries} passes in a row, within {h.timeout:g}s)"
        )
        while True:
            polls += 1
            st = self.edge.stats().get(name)
            if st is not None and st.healthy:
                passes += 1
                if passes >= h.retries:
                    self.state.health = f"passed ({st.check_desc}, {polls} polls)"
                    self.log(f"{name} is healthy: {st.check_status} {st.check_desc}")
                    return
            else:
                passes = 0
                last = f"{st.status} {st.check_status} {st.check_desc}".strip() if st else "not a server"
                container = self.status(name)
                if container in ("exited", "dead", "restarting", "crashed", ""):
                    self.fail_health(
                        name, f"the container stopped ({container or 'gone'}) before it was healthy"
                    )
            if time.monotonic() + h.interval > deadline:
                self.fail_health(name, f"not healthy within {h.timeout:g}s (last check: {last})")
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

    def shift(self, name: str) -> None:
        """All new requests to ``name``; the previous servers drain (in-flight requests finish)."""
        self.edge.weight(name, haproxy.FULL_WEIGHT)
        self.state.switched = True
        self.edge.state(self.state.previous, "drain")
        self.edge.save()
        self.log(f"edge {self.plan.names['edge']} now sends new requests to {name}")

    # -- phase 2: commit or undo -------------------------------------------------------------------

    def retire_old(self, drain_until: float, images_to_prune: list[str]) -> list[str]:
        """Wait for the old servers' sessions (until ``drain_until``), remove them from the edge, stop and
        remove every other app container of this environment; prune old images."""
        olds = [s for s in self.edge.stats() if s != self.state.container]
        t0 = time.monotonic()
        busy = self.edge.wait_idle(olds, drain_until)
        if busy:
            self.log(f"drain time over with sessions still open: {busy}; stopping anyway", "stderr")
        self.state.timings["drain"] = time.monotonic() - t0
        t0 = time.monotonic()
        self.edge.state(olds, "maint")
        old = [c for c in self.app_containers() if c != self.state.container]
        for c in old:
            self.sh(remote.stop(c, STOP_GRACE), check=False, cancellable=False)
        for s in olds:
            self.edge.delete(s)
        self.edge.save()
        for c in old:
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
        argv = remote.prune_models(self.plan.edge_image, m.volume, m.mount, keep, MODEL_PRUNE_GRACE)
        res = self.sh(argv, check=False, capture=True, quiet=True, cancellable=False)
        out = (res.stdout if res.exit_code == 0 else res.stderr or res.stdout).strip()[-300:]
        self.log(
            f"model volume {m.volume}: {out}"
            + ("" if res.exit_code == 0 else f" (exit code {res.exit_code}; nothing fails)"),
            "stdout" if res.exit_code == 0 else "stderr",
        )

    def undo(self) -> None:
        """Give the previous servers their traffic back and remove the new one (best effort)."""
        if self.state.switched:
            with contextlib.suppress(DeployError, InfrastructureError):
                self.edge.state(self.state.previous, "ready")
                self.edge.weight(self.state.container, 0)
            self.state.switched = False
        self.remove_new()
        if self.state.edge_created and not self.state.previous:
            self.sh(remote.rm(self.plan.names["edge"]), check=False, cancellable=False)

    def remove_new(self) -> None:
        """Take the new container out of the edge (if it was added) and remove it."""
        if self.state.added:
            with contextlib.suppress(DeployError, InfrastructureError):
                self.edge.delete(self.state.container)
                self.edge.save()
            self.state.added = False
        if self.state.container:
            self.sh(remote.rm(self.state.container), check=False, cancellable=False)


def tar_of(blobs: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar of regular files (name, bytes), as the edge image's store-model reads it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in blobs:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o444
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


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
        state.ssh = RemoteHost(state.target, key, ctx.settings.known_hosts, CONNECT_TIMEOUT)
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
                    if s.switched or s.container or s.edge_created:
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
    ensure_deploy_targets(ctx.settings, b.repo, env_name, plan.env)  # before any connection
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
        edge_ref, edge_tag = _edge_image(ctx, plan)
        plan = dataclasses.replace(
            plan, model=_model(ctx, plan, history), edge_image=edge_ref, edge_tag=edge_tag
        )
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
            # Not cancellable: traffic already moved. Old servers leave once their sessions end.
            ctx.log.line(f"draining the old servers (at most {plan.env.drain_seconds:g}s)")
            drain_until = time.monotonic() + plan.env.drain_seconds
            prune = deployments.images_to_prune(history, image)
            keep = {d.model_sha256[:16] for d in ctx.store.deployment_records() if d.model_sha256}
            for s in states:
                host = HostDeploy(ctx, plan, s)
                host.retire_old(drain_until, prune)
                host.prune_models(keep)
        finally:
            _close(states)
        _record(ctx, plan, states, "deployed")
        ctx.log.line(f"{env_name} now runs build #{plan.number} ({image})")
    finally:
        lock.release()


def _edge_image(ctx: StepContext, plan: Plan) -> tuple[str, str]:
    """The edge image for this environment, in its registry (built and pushed here the first time)."""
    spec = plan.env.edge
    base = spec.base_image or ctx.settings.edge_base_image
    tag = edge_image.tag(base)
    image = edge_image.EdgeImage(edge_image.repository(plan.image, spec.repository), tag, base)
    login = plan.env.registry_login
    auth = {"username": login.username, "password": login.password} if login else None
    ref = edge_image.ensure(ctx.docker, image, auth, ctx.log.line)
    return ref, tag


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

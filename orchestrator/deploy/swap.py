"""The swap on one host: pull, ship the model, make sure the edge runs, start the new container
beside the old, let the edge health-gate it, move the traffic, and later drain and retire the old."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shlex
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator import defaults, labels
from orchestrator.deploy import commands as remote
from orchestrator.deploy import haproxy
from orchestrator.deploy.edgectl import EdgeControl
from orchestrator.deploy.fence import Fence
from orchestrator.deploy.plan import Plan
from orchestrator.deploy.ssh import RemoteHost, Target
from orchestrator.errors import Cancelled, DeployError, InfrastructureError, StepFailed
from orchestrator.pipeline import HealthSpec

if TYPE_CHECKING:
    from orchestrator.steps.base import StepContext

COMMAND_TIMEOUT = defaults.DEPLOY_COMMAND_TIMEOUT
STOP_GRACE = defaults.DEPLOY_STOP_GRACE
LOG_TAIL = 50
MODEL_PRUNE_GRACE = defaults.MODEL_PRUNE_GRACE
CONFIG_ROOT = "/dev/shm"  # noqa: S108 - per-deploy docker client config (registry login) lives in memory


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

    def __init__(self, ctx: StepContext, plan: Plan, state: HostState, fence: Fence) -> None:
        self.ctx = ctx
        self.plan = plan
        self.state = state
        self.ssh: RemoteHost = state.ssh  # type: ignore[assignment]
        self.label = f"{state.target.host}:{state.target.port}"
        self.fence = fence  # NoFence() for code that drives a host outside a deploy
        self.edge = EdgeControl(
            self.run_quiet, plan.names["edge"], plan.edge_config(), self.label, fence=self.fence.check
        )

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
        change: str = "",
    ) -> Any:
        """Run ``argv`` on the host; a ``change`` (what it changes) passes the fence first."""
        if change:
            self.fence.check(f"{change} on {self.label}")
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

    def switch(self, shift: bool = True) -> None:
        """Up to the health gate; then (``shift``) all new requests to the new container. Without
        ``shift`` a strategy moves the traffic later (orchestrator/deploy/strategy.py)."""
        self.timed("pull", self.pull)
        if self.plan.model is not None and self.plan.model.artifact is not None:
            self.timed("model", self.upload_model)
        n = self.plan.names
        if self.sh(remote.network_exists(n["network"]), check=False, quiet=True).exit_code != 0:
            self.sh(remote.network_create(n["network"]), change="creating the network")
        kind = self.edge_kind()
        serving = self.timed("edge", lambda: self.prepare_edge(kind))
        name = self.free_name(n["app"], serving)
        self.state.container = name
        self.timed("start", lambda: self.sh(remote.run(self.plan.app(name)), change=f"starting {name}"))
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
        if shift:
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
        res = self.sh(
            argv, quiet=True, capture=True, stdin=tar_of(blobs), check=False, change="uploading the model"
        )
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
            self.sh(remote.start(edge), change=f"starting the edge {edge}")
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
        self.sh(
            remote.write_edge_config(n["state"], self.plan.edge_image),
            stdin=config,
            capture=True,
            change="writing the edge config",
        )
        edge = remote.EdgeContainer(
            name=n["edge"] if kind == "none" else n["edge"] + "-new",
            image=self.plan.edge_image,
            network=n["network"],
            state_volume=n["state"],
            publish=int(publish),
            port=haproxy.EDGE_PORT,
            labels=self.plan.edge_labels(),
        )
        # (first: a leftover of an interrupted takeover)
        self.sh(remote.rm(edge.name), check=False, quiet=True, change=f"removing {edge.name}")
        self.sh(remote.create_edge(edge), capture=True, change="creating the edge")
        if kind == "none":
            self.sh(remote.start(edge.name), capture=True, change="starting the edge")
        else:
            self.sh(remote.take_over_edge(n["edge"], edge.name), capture=True, change="taking over the edge")
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
                self.sh(remote.rm(c), check=False, change=f"removing {c}")

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
                self.sh(remote.rm(name), change=f"removing {name}")  # a leftover of an interrupted deploy
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
            self.sh(remote.stop(c, STOP_GRACE), check=False, cancellable=False, change=f"stopping {c}")
        for s in olds:
            self.edge.delete(s)
        self.edge.save()
        for c in old:
            self.sh(remote.rm(c), check=False, cancellable=False, change=f"removing {c}")
        self.state.timings["stop_old"] = time.monotonic() - t0
        for image in images_to_prune:
            self.sh(
                remote.image_rm(image), check=False, cancellable=False, quiet=True, change="pruning images"
            )
        return old

    def prune_models(self, keep: set[str]) -> None:
        """Remove the model directories on this host's model volume that no deployment record names
        (uploads of failed deploys, models older than every environment's history). Housekeeping:
        a failure is logged, never fails the deploy."""
        m = self.plan.model
        if m is None or not m.volume:
            return
        argv = remote.prune_models(self.plan.edge_image, m.volume, m.mount, keep, MODEL_PRUNE_GRACE)
        res = self.sh(argv, check=False, capture=True, quiet=True, cancellable=False, change="pruning models")
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
            self.sh(
                remote.rm(self.plan.names["edge"]), check=False, cancellable=False, change="removing the edge"
            )

    def remove_new(self) -> None:
        """Take the new container out of the edge (if it was added) and remove it."""
        if self.state.added:
            with contextlib.suppress(DeployError, InfrastructureError):
                self.edge.delete(self.state.container)
                self.edge.save()
            self.state.added = False
        if self.state.container:
            self.sh(
                remote.rm(self.state.container),
                check=False,
                cancellable=False,
                change=f"removing {self.state.container}",
            )


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

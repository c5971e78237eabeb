"""What a deploy ships where: the plan (pure data from the build and the environment), the model it
carries, the edge image and the rollback target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator import labels
from orchestrator.build import artifacts, model_registry
from orchestrator.deploy import commands as remote
from orchestrator.deploy import edge as edge_image
from orchestrator.deploy import haproxy
from orchestrator.deploy import policy as deployments
from orchestrator.deploy.ssh import Target
from orchestrator.errors import DeployError, ModelUnavailable, StepFailed
from orchestrator.models import Deployment
from orchestrator.pipeline import Environment

if TYPE_CHECKING:
    from orchestrator.steps.base import StepContext


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


def targets(env: Environment) -> list[Target]:
    return [Target(str(h.host), int(h.port), h.user) for h in env.hosts]


def make_plan(ctx: StepContext, env_name: str, action: str, image: str) -> Plan:
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


def ship_model(ctx: StepContext, plan: Plan, history: list[Deployment]) -> ModelShip | None:
    """The model this deploy ships (see docs/deploy.md, "The model"): the deployed build's model
    artifact if it wrote one (this worker's copy, else fetched from the registry it was published
    to), else the file an earlier deploy of that build left on the volume, else None (the container
    uses the pipeline's MODEL_PATH on the operator's volume, as before)."""
    rel = artifacts.model_path(ctx.pipeline)
    prior = next(
        (d for d in history if d.build_id == plan.build_id and d.model_sha256 and d.model_path), None
    )
    try:  # this worker's artifacts, else the registry (any worker can promote or roll back)
        auth = model_registry.push_auth(ctx.pipeline, plan.env_name)
        art = model_registry.local_or_fetched(ctx, plan.build_id, rel, auth)
    except artifacts.ArtifactsPruned as exc:
        if prior is None:  # never silently fall back to whatever model the volume holds
            raise DeployError(f"cannot ship the model of build #{plan.number}: {exc}") from exc
        art = None
    except ModelUnavailable as exc:  # kept as such: the registry did not give what was recorded
        raise ModelUnavailable(f"cannot ship the model of build #{plan.number}: {exc}") from exc
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


def edge_image_for(ctx: StepContext, plan: Plan) -> tuple[str, str]:
    """The edge image for this environment, in its registry (built and pushed here the first time)."""
    spec = plan.env.edge
    base = spec.base_image or ctx.settings.edge_base_image
    tag = edge_image.tag(base)
    image = edge_image.EdgeImage(edge_image.repository(plan.image, spec.repository), tag, base)
    login = plan.env.registry_login
    auth = {"username": login.username, "password": login.password} if login else None
    ref = edge_image.ensure(ctx.docker, image, auth, ctx.log.line)
    return ref, tag


def rollback_image(ctx: StepContext, env_name: str) -> str:
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

"""The schema of pipeline.yaml as pydantic models: unknown keys are errors, ints may be ${VARS}."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr

from orchestrator.gate.spec import ModelCheckSpec
from orchestrator.pipeline.strategy import Strategy, StrategySpec
from orchestrator.pipeline.variables import FULL_VAR_RE

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def _int_or_var(v: Any) -> Any:
    """Ints may be written as "${VAR}" (resolved at run time) or as a numeric string."""
    if isinstance(v, str):
        if FULL_VAR_RE.match(v):
            return v
        try:
            return int(v)
        except ValueError:
            raise ValueError("must be an integer or a ${VAR} that holds one") from None
    return v


IntOrVar = Annotated[int | str, BeforeValidator(_int_or_var)]
Seconds = Annotated[float, Field(gt=0, le=7 * 86400)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegistryAuth(_Spec):
    username: str
    password: str


class DockerBuildSpec(_Spec):
    context: str = "."
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str] = Field(default_factory=dict)
    tags: list[str] | None = Field(default=None, min_length=1)  # default: [BUILD_NUMBER]
    target: str | None = None
    pull: bool = False
    no_cache: bool = False


class DockerRunSpec(_Spec):
    command: list[str] | None = None
    image: str | None = None  # default: the image built by the docker_build step
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    network: str | None = None
    volumes: list[str] = Field(default_factory=list)
    privileged: bool = False
    memory: str | None = None  # default and most: the server's limits (reach.limits)
    cpus: float | None = Field(default=None, gt=0)
    pids_limit: int | None = Field(default=None, ge=16)
    artifacts: str | None = None  # container path where the build's artifact directory is mounted


class DockerPushSpec(_Spec):
    tags: list[str] | None = Field(default=None, min_length=1)  # default: [BUILD_NUMBER]
    auth: RegistryAuth | None = None
    retries: int = Field(default=3, ge=1, le=10)


class DeploySpec(_Spec):
    environment: str
    promote: Literal["auto", "manual"] = "auto"
    strategy: Strategy = Field(default_factory=StrategySpec)  # switch | canary | shadow (+ watch)


class RollbackSpec(_Spec):
    environment: str


class ShellSpec(_Spec):
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None


class When(_Spec):
    branch: list[str] = Field(default_factory=list)


KIND_KEYS = ("docker_build", "docker_run", "docker_push", "deploy", "rollback", "shell", "model_check")


class Step(_Spec):
    """One step: a name, exactly one kind key with its spec, and optional controls."""

    name: str = Field(pattern=NAME_RE)
    timeout: Seconds | None = None
    continue_on_error: bool = False
    when: When | None = None
    docker_build: DockerBuildSpec | None = None
    docker_run: DockerRunSpec | None = None
    docker_push: DockerPushSpec | None = None
    deploy: DeploySpec | None = None
    rollback: RollbackSpec | None = None
    shell: ShellSpec | None = None
    model_check: ModelCheckSpec | None = None

    @property
    def kinds(self) -> list[str]:
        return [k for k in KIND_KEYS if getattr(self, k) is not None]

    @property
    def kind(self) -> str:
        kinds = self.kinds
        return kinds[0] if kinds else ""

    @property
    def spec(self) -> Any:
        """The spec model of this step's kind (DockerBuildSpec, DeploySpec, ...)."""
        return getattr(self, self.kind) if self.kind else None

    def runs_on(self, branch: str) -> bool:
        return self.when is None or not self.when.branch or branch in self.when.branch


class HostSpec(_Spec):
    host: str = Field(min_length=1)
    port: IntOrVar = 22
    user: str = "root"


class ContainerSpec(_Spec):
    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
    port: IntOrVar = 5000
    publish: IntOrVar | None = None
    volumes: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    memory: str | None = None
    cpus: float | None = Field(default=None, gt=0)


class HealthSpec(_Spec):
    path: str = Field(default="/ready", pattern=r"^/")
    status: int = 200
    interval: float = Field(default=1.0, gt=0)
    timeout: float = Field(default=60.0, gt=0)
    retries: int = Field(default=3, ge=1)  # the edge's rise: passes in a row before a server gets traffic
    fall: int = Field(default=3, ge=1)  # the edge's fall: failures in a row before it takes none


class EdgeSpec(_Spec):
    """The environment's HAProxy edge image: built by mlship FROM ``base_image`` (any Debian bookworm
    image; default: the server's ``edge_base_image``), pushed to ``repository`` (default:
    ``mlship-edge`` in the app image's registry)."""

    base_image: str | None = Field(default=None, min_length=1)
    repository: str | None = None


class Environment(_Spec):
    hosts: list[HostSpec] = Field(min_length=1)
    parallelism: int = Field(default=1, ge=1)
    registry_login: RegistryAuth | None = None
    container: ContainerSpec
    health: HealthSpec = Field(default_factory=lambda: HealthSpec())
    drain_seconds: float = Field(default=2.0, ge=0)
    edge: EdgeSpec = Field(default_factory=lambda: EdgeSpec())


class Pipeline(_Spec):
    """A validated pipeline. ``secret_values`` lists every secret value substituted into it."""

    version: Literal[1]
    name: str = Field(min_length=1)
    image: str = Field(min_length=1)
    timeout: Seconds | None = None
    steps: list[Step] = Field(min_length=1)
    environments: dict[str, Environment] = Field(default_factory=dict)
    _secret_values: tuple[str, ...] = PrivateAttr(default=())

    @property
    def secret_values(self) -> tuple[str, ...]:
        return self._secret_values

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

"""Server settings: loaded once from ORCHESTRATOR_* environment variables and an optional YAML file.

The file (named by ORCHESTRATOR_CONFIG) holds what does not fit in a variable: the allow-listed
repositories, their webhook secret names and triggers. Scalar keys may come from either place;
the environment wins. Secrets are never values in the file, only names resolved by ``Secrets``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import ConfigError

ENV_PREFIX = "ORCHESTRATOR_"
DEFAULT_TRIGGER_BRANCHES = ("main", "master")
GITHUB_MAX_BODY = 25 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Triggers(_Strict):
    """Which deliveries start a build: merged PRs into these branches, pushes to these branches."""

    pull_request_merged: tuple[str, ...] = DEFAULT_TRIGGER_BRANCHES
    push: tuple[str, ...] = ()


class Allow(_Strict):
    """What a repository's pipeline may do beyond the safe default."""

    shell: bool = False
    privileged: bool = False
    host_mounts: bool = False
    host_network: bool = False


# -- issue 18: what one repository's pipeline may reach (secrets, volumes, networks, limits, hosts) --
# The server's own secrets: never resolvable by ${secrets.NAME}, whatever a repository lists.
SERVER_SECRET_NAMES = frozenset(
    {
        "DEPLOY_SSH_KEY",
        "GITHUB_TOKEN",
        "API_TOKEN",
        "CSRF_SECRET",
        "GITHUB_WEBHOOK_SECRET",
        "REDIS_PASSWORD",
        "REDISCLI_AUTH",
    }
)
SERVER_SECRET_PREFIXES = ("ORCHESTRATOR_", "MLSHIP_")  # settings (ORCHESTRATOR_REDIS_URL holds a password)


class DeployTarget(_Strict):
    """One host a repository may deploy to; an unset port or user means any."""

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    environments: tuple[str, ...] = ()  # empty: any of the pipeline's environments

    def admits(self, env: str, host: str, port: int, user: str) -> bool:
        return (
            self.host == host
            and self.port in (None, port)
            and self.user in (None, user)
            and (not self.environments or env in self.environments)
        )


class ContainerLimits(_Strict):
    """Defaults for docker_run containers and the most a pipeline may ask for."""

    memory: str = "2g"
    max_memory: str = "8g"
    pids: int = Field(default=512, ge=16)
    max_pids: int = Field(default=4096, ge=16)
    max_cpus: float = Field(default=4.0, gt=0)


class Reach(_Strict):
    """RepoConfig.reach: the names and places a repository's pipeline may use (default: none)."""

    secrets: tuple[str, ...] = ()  # ${secrets.NAME} anywhere in the pipeline
    # only under environments.<env>:
    environment_secrets: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    volumes: tuple[str, ...] = ()  # named volumes, on the worker and on the deploy hosts
    volume_prefix: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    networks: tuple[str, ...] = ()  # besides none and bridge
    deploy_targets: tuple[DeployTarget, ...] = ()
    deploy_key: str | None = None  # secret name of this repository's SSH key (default: the server's)
    limits: ContainerLimits = ContainerLimits()

    @field_validator("secrets")
    @classmethod
    def _no_server_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in v if is_server_secret(n)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: the server's own secrets are never given to a pipeline")
        return v


def is_server_secret(name: str, extra: frozenset[str] = frozenset()) -> bool:
    return name in SERVER_SECRET_NAMES or name in extra or name.startswith(SERVER_SECRET_PREFIXES)


class RepoConfig(_Strict):
    """One allow-listed repository (like a Jenkins job)."""

    full_name: str
    clone_url: str
    webhook_secrets: tuple[str, ...] = ("GITHUB_WEBHOOK_SECRET",)
    triggers: Triggers = Triggers()
    pipeline: str = "pipeline.yaml"
    allow: Allow = Allow()
    vars: dict[str, str] = Field(default_factory=dict)
    reach: Reach = Reach()  # issue 18

    @field_validator("webhook_secrets")
    @classmethod
    def _some_secret(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("list at least one secret name (several allow rotation)")
        return v


class _FileModel(_Strict):
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "builds"
    workspace: str = "/var/lib/mlship/workspace"
    secrets_dir: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    api_tokens: tuple[str, ...] = ("API_TOKEN",)
    read_auth: bool = False
    max_body_bytes: int = Field(GITHUB_MAX_BODY, gt=0)
    max_rows_per_page: int = 50
    lease_seconds: float = Field(10.0, gt=0)
    build_timeout: float = Field(3600.0, gt=0)
    delivery_ttl_days: float = Field(8.0, ge=7)
    keep_artifacts: int = Field(20, ge=1)
    docker_host: str | None = None
    known_hosts: str | None = None
    ssh_key: str = "DEPLOY_SSH_KEY"
    github_api_url: str = "https://api.github.com"
    github_token: str = "GITHUB_TOKEN"
    csrf_secret: str = "CSRF_SECRET"
    vars: dict[str, str] = Field(default_factory=dict)
    repositories: dict[str, dict[str, Any]] = Field(default_factory=dict)


@dataclass(frozen=True)
class Secrets:
    """Resolves secret names from the environment, then from files in ``directory``."""

    env: Mapping[str, str] = field(default_factory=dict)
    directory: Path | None = None

    def get(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None and self.directory is not None:
            path = self.directory / name
            if path.is_file():
                value = path.read_text().rstrip("\n")
        return value if value else None

    def require(self, name: str, purpose: str) -> str:
        value = self.get(name)
        if value is None:
            where = f" or a file {self.directory / name}" if self.directory else ""
            raise ConfigError(f"secret {name} ({purpose}) is not set: export {name}=...{where}", secret=name)
        return value


@dataclass(frozen=True)
class Settings:
    """Validated server settings. Build with ``load_settings``; tests may construct it directly."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "builds"
    workspace: Path = Path("/var/lib/mlship/workspace")
    public_url: str = "http://127.0.0.1:8000"
    repositories: Mapping[str, RepoConfig] = field(default_factory=dict)
    secrets: Secrets = field(default_factory=Secrets)
    api_token_names: tuple[str, ...] = ("API_TOKEN",)
    read_auth: bool = False
    max_body_bytes: int = GITHUB_MAX_BODY
    max_rows_per_page: int = 50
    lease_seconds: float = 10.0
    build_timeout: float = 3600.0
    delivery_ttl_days: float = 8.0
    keep_artifacts: int = 20  # newest builds whose artifact directories the worker keeps (plus deployed)
    docker_host: str | None = None
    known_hosts: Path | None = None
    ssh_key_secret: str = "DEPLOY_SSH_KEY"
    github_api_url: str = "https://api.github.com"
    github_token_secret: str = "GITHUB_TOKEN"
    csrf_secret_name: str = "CSRF_SECRET"
    vars: Mapping[str, str] = field(default_factory=dict)

    def pipeline_vars(self, repo: RepoConfig | None) -> dict[str, str]:
        """Server-provided ${VARS} for a repository's pipeline.yaml (server vars, then the repo's)."""
        return {**self.vars, **(repo.vars if repo else {})}

    def repo(self, full_name: str) -> RepoConfig | None:
        return self.repositories.get(full_name)

    def webhook_secrets(self, repo: RepoConfig) -> list[bytes]:
        """The secret values for a repository, in rotation order (all are accepted)."""
        return [
            self.secrets.require(n, f"webhook secret of {repo.full_name}").encode()
            for n in repo.webhook_secrets
        ]

    def api_tokens(self) -> list[str]:
        return [t for t in (self.secrets.get(n) for n in self.api_token_names) if t]

    def github_token(self) -> str | None:
        return self.secrets.get(self.github_token_secret)

    def secret_values(self) -> list[str]:
        """Every secret value the server knows, for masking in logs."""
        names = set(self.server_secret_names())
        for repo in self.repositories.values():  # the pipelines' secrets too: the service log is shared
            names.update(repo.reach.secrets, *repo.reach.environment_secrets.values())
        values = [v for v in (self.secrets.get(n) for n in sorted(names)) if v]
        password = urlsplit(self.redis_url).password  # issue 18: Redis is root-equivalent
        return values + ([unquote(password)] if password else [])

    def validate(self) -> None:
        """Checks that need the secrets: every webhook secret set and non-empty."""
        for repo in self.repositories.values():
            self.webhook_secrets(repo)
            bad = [n for n in repo.reach.secrets if n in self.server_secret_names()]
            if bad:
                raise ConfigError(
                    f"repositories.{repo.full_name}.reach.secrets names {', '.join(bad)}, a secret of the "
                    "server itself: a pipeline never gets those; give the repository a secret of its own"
                )

    # -- issue 18 --
    def server_secret_names(self) -> frozenset[str]:
        """Names a pipeline may never resolve: the defaults plus every name this server uses itself."""
        names = {self.ssh_key_secret, self.github_token_secret, self.csrf_secret_name, *self.api_token_names}
        for repo in self.repositories.values():
            names.update(repo.webhook_secrets)
            if repo.reach.deploy_key:
                names.add(repo.reach.deploy_key)
        return SERVER_SECRET_NAMES | names

    def deploy_key_name(self, full_name: str) -> str:
        """The secret holding the SSH key for this repository's deploys (its own, else the server's)."""
        repo = self.repo(full_name)
        return (repo.reach.deploy_key if repo else None) or self.ssh_key_secret


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        lines.append(f"{source}: key '{key}': {e['msg']}")
    return "; ".join(lines)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _FileModel.model_fields:
        if name in ("repositories", "vars"):
            continue
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if name == "api_tokens":
            out[name] = tuple(s.strip() for s in raw.split(",") if s.strip())
        elif name == "read_auth":
            out[name] = raw.lower() in ("1", "true", "yes")
        else:
            out[name] = raw
    return out


def load_settings(env: Mapping[str, str] | None = None, validate: bool = True) -> Settings:
    """Load settings from ``env`` (default os.environ) and the file it names in ORCHESTRATOR_CONFIG."""
    env = dict(os.environ if env is None else env)
    data: dict[str, Any] = {}
    source = "environment"
    path = env.get(ENV_PREFIX + "CONFIG")
    if path:
        source = path
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read ORCHESTRATOR_CONFIG={path}: {exc.strerror}", file=path) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}", file=path) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings", file=path)
        data.update(loaded or {})
    data.update(_env_overrides(env))
    try:
        model = _FileModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source), file=source) from exc
    repos: dict[str, RepoConfig] = {}
    for full_name, spec in model.repositories.items():
        try:
            repos[full_name] = RepoConfig.model_validate({"full_name": full_name, **(spec or {})})
        except ValidationError as exc:
            raise ConfigError(_describe(exc, f"{source}: repositories.{full_name}"), file=source) from exc
    secrets_dir = Path(model.secrets_dir) if model.secrets_dir else None
    settings = Settings(
        redis_url=model.redis_url,
        queue=model.queue,
        workspace=Path(model.workspace),
        public_url=model.public_url.rstrip("/"),
        repositories=repos,
        secrets=Secrets(env=env, directory=secrets_dir),
        api_token_names=model.api_tokens,
        read_auth=model.read_auth,
        max_body_bytes=model.max_body_bytes,
        max_rows_per_page=model.max_rows_per_page,
        lease_seconds=model.lease_seconds,
        build_timeout=model.build_timeout,
        delivery_ttl_days=model.delivery_ttl_days,
        keep_artifacts=model.keep_artifacts,
        docker_host=model.docker_host,
        known_hosts=Path(model.known_hosts) if model.known_hosts else None,
        ssh_key_secret=model.ssh_key,
        github_api_url=model.github_api_url.rstrip("/"),
        github_token_secret=model.github_token,
        csrf_secret_name=model.csrf_secret,
        vars=dict(model.vars),
    )
    if validate:
        settings.validate()
    return settings

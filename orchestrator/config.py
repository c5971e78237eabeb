"""Server settings, declared once in ``Settings``: from a YAML file and MLSHIP_* environment variables.

The file (named by MLSHIP_CONFIG) holds what does not fit in a variable: the allow-listed
repositories, their webhook secret names and triggers, pipeline vars. Every scalar setting may also
come from the environment as ``MLSHIP_<KEY>`` (the key as written in the file, upper-cased); the
environment wins. The old ``ORCHESTRATOR_*`` names still work, with a one-line deprecation warning.
Secrets are never values in the file, only names resolved by ``Secrets``.
"""

from __future__ import annotations

import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.errors import ConfigError

ENV_PREFIX = "MLSHIP_"
OLD_ENV_PREFIX = "ORCHESTRATOR_"
DEFAULT_TRIGGER_BRANCHES = ("main", "master")
GITHUB_MAX_BODY = 25 * 1024 * 1024
MAX_WAIT_TIMEOUT_MS = 1000  # WAIT must return within the intake's Redis timeout (defaults.INTAKE_TIMEOUT)


def env_get(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """``MLSHIP_<name>``, else the deprecated ``ORCHESTRATOR_<name>`` with a one-line warning on stderr."""
    env = os.environ if env is None else env
    new, old = ENV_PREFIX + name, OLD_ENV_PREFIX + name
    if new in env:
        return env[new]
    if old in env:
        print(f"mlship: {old} is deprecated, use {new}", file=sys.stderr, flush=True)
        return env[old]
    return None


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


# -- what one repository's pipeline may reach (secrets, volumes, networks, limits, hosts) --
# The server's own secrets: never resolvable by ${secrets.NAME}, whatever a repository lists.
SERVER_SECRET_NAMES = frozenset(
    {
        "DEPLOY_SSH_KEY",
        "GITHUB_TOKEN",
        "API_TOKEN",
        "CSRF_SECRET",
        "GITHUB_WEBHOOK_SECRET",
        "REDIS_PASSWORD",
        "REDIS_SENTINEL_PASSWORD",
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
    reach: Reach = Reach()  # what its pipeline may use (docs/reliability.md, security)
    # Where the repository lives (docs/forge-*.md); for gitlab/gitea, the status API and its token's
    # secret name (GitHub repositories use the server-wide github_api_url and github_token).
    forge: Literal["github", "gitlab", "gitea"] = "github"
    api_url: str | None = None
    status_token: str | None = None

    @model_validator(mode="after")
    def _status_api(self) -> RepoConfig:
        if self.forge == "github" and (self.api_url or self.status_token):
            raise ValueError(
                "api_url and status_token are for gitlab/gitea; GitHub uses github_api_url/github_token"
            )
        if self.forge == "gitea" and not self.api_url:
            raise ValueError(
                "forge gitea needs api_url, the instance's API base, e.g. https://gitea.example.com/api/v1"
            )
        return self

    @property
    def status_token_name(self) -> str | None:
        """The secret naming the gitlab/gitea status token (GITLAB_TOKEN / GITEA_TOKEN unless set)."""
        return self.status_token or {"gitlab": "GITLAB_TOKEN", "gitea": "GITEA_TOKEN"}.get(self.forge)

    @field_validator("webhook_secrets")
    @classmethod
    def _some_secret(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("list at least one secret name (several allow rotation)")
        return v


NOTIFY_EVENTS = (
    "build.success",
    "build.failed",
    "build.error",
    "build.cancelled",
    "deploy",
    "gate.stopped",
    "rollback",
)
_EVENT_GROUPS = {"all": NOTIFY_EVENTS, "build.finished": NOTIFY_EVENTS[:4]}


class NotifyTarget(_Strict):
    """Where notifications go (docs/notifications.md). Secrets are NAMES resolved by ``Secrets``."""

    kind: Literal["slack", "webhook", "email"]
    events: tuple[str, ...] = ("build.failed", "build.error", "deploy", "gate.stopped", "rollback")
    repositories: tuple[str, ...] = ()  # empty: every repository
    url: str = ""  # webhook: the receiver's URL (a Slack URL is a credential: use url_secret)
    url_secret: str = ""  # slack, webhook: name of the secret holding the URL
    secret: str = ""  # webhook: name of the HMAC-SHA256 signing key
    smtp_host: str = ""
    smtp_port: int = Field(25, gt=0, lt=65536)
    starttls: bool = False
    username: str = ""
    password_secret: str = ""
    sender: str = ""
    to: tuple[str, ...] = ()
    attempts: int = Field(5, ge=1, le=20)  # tries in all, the first included
    backoff: float = Field(2.0, gt=0)  # seconds before the 2nd try; doubles per try, at most 300

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [e for e in v if e not in NOTIFY_EVENTS and e not in _EVENT_GROUPS]
        if unknown:
            raise ValueError(f"unknown events {unknown}: use {', '.join((*NOTIFY_EVENTS, *_EVENT_GROUPS))}")
        return tuple(dict.fromkeys(x for e in v for x in _EVENT_GROUPS.get(e, (e,))))

    @model_validator(mode="after")
    def _complete(self) -> NotifyTarget:
        need = {"slack": ("url_secret",), "webhook": ("secret",), "email": ("smtp_host", "sender", "to")}
        missing = [f for f in need[self.kind] if not getattr(self, f)]
        if self.kind == "webhook" and not (self.url or self.url_secret):
            missing.append("url (or url_secret)")
        if missing:
            article = "an" if self.kind == "email" else "a"
            raise ValueError(
                f"{article} {self.kind} target needs {', '.join(missing)} (see docs/notifications.md)"
            )
        return self

    def wants(self, event: str, repo: str) -> bool:
        return event in self.events and (not self.repositories or repo in self.repositories)

    def secret_names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.url_secret, self.secret, self.password_secret) if n)


class Schedule(_Strict):
    """A cron schedule (UTC) that builds the head of a repository's branch (docs/schedules.md)."""

    repo: str
    branch: str = "main"
    cron: str

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str) -> str:
        name = v.removeprefix("refs/heads/")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._+/-]*", name) or ".." in name or name.endswith("/"):
            raise ValueError(f"{v!r} is not a branch name like 'main' or 'release/1.2'")
        return name

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if not croniter.is_valid(v):
            raise ValueError(
                f"{v!r} is not a cron expression: five fields, minute hour day month weekday, "
                "e.g. '0 3 * * *' for 03:00 UTC every day"
            )
        return v


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


class Settings(BaseModel):
    """Validated server settings: the one declaration of every setting, its default and its check.

    Build with ``load_settings``; tests may construct it directly (by field name). A field's file key
    (and its ``MLSHIP_`` variable) is its alias where one is set, else its name.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, arbitrary_types_allowed=True
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Sentinel (docs/reliability.md "Redis failover"): with sentinels listed, the primary is the one
    # they name for redis_sentinel_service; redis_url then gives only the password and database number.
    redis_sentinels: tuple[str, ...] = ()  # host:port of each sentinel; empty: redis_url's server
    redis_sentinel_service: str = Field("mlship", min_length=1)  # the master name the sentinels monitor
    redis_sentinel_password_secret: str = Field("REDIS_SENTINEL_PASSWORD", alias="redis_sentinel_password")
    # WAIT after a build is created (before the webhook's 2xx) and after a worker claims one: that many
    # replicas must hold the write, else the webhook answers 503 (the forge redelivers; dedup makes it
    # safe). 0: no WAIT (a failover may lose the last acknowledged writes).
    redis_wait_replicas: int = Field(0, ge=0, le=16)
    redis_wait_timeout: int = 500  # ms that WAIT may take (1 to MAX_WAIT_TIMEOUT_MS)
    queue: str = "builds"
    workspace: Path = Path("/var/lib/mlship/workspace")
    public_url: str = "http://127.0.0.1:8000"
    repositories: Mapping[str, RepoConfig] = Field(default_factory=dict)
    secrets: Annotated[Secrets, SkipValidation] = Field(default_factory=lambda: Secrets())
    secrets_dir: Path | None = None
    api_token_names: tuple[str, ...] = Field(("API_TOKEN",), alias="api_tokens")
    read_auth: bool = False
    max_body_bytes: int = Field(GITHUB_MAX_BODY, gt=0)
    max_rows_per_page: int = 50
    lease_seconds: float = Field(10.0, gt=0)
    build_timeout: float = Field(3600.0, gt=0)
    delivery_ttl_days: float = Field(8.0, ge=7)
    keep_artifacts: int = Field(20, ge=1)  # newest builds whose artifact directories the worker keeps
    # Retention (docs/reliability.md): finished builds older than retention_days, or beyond the newest
    # retention_builds of their repository, are pruned with their logs; 0 turns a rule off. Deployed
    # builds and those in an environment's history are always kept, unfinished ones too.
    retention_days: float = Field(30.0, ge=0)
    retention_builds: int = Field(200, ge=0)
    log_retention_days: float = Field(0.0, ge=0)  # logs of kept builds pruned sooner; 0: as long as the build
    max_log_bytes: int = Field(20 * 1024 * 1024, ge=0)  # per build; past it lines are dropped; 0: no cap
    # maxmemory of the Redis that mlship starts itself (standalone); compose sets its own (docker-compose.yml)
    redis_maxmemory: str = Field("512mb", pattern=r"^[0-9]+(b|kb|mb|gb)?$")
    docker_host: str | None = None
    known_hosts: Path | None = None
    ssh_key_secret: str = Field("DEPLOY_SSH_KEY", alias="ssh_key")
    github_api_url: str = "https://api.github.com"
    github_token_secret: str = Field("GITHUB_TOKEN", alias="github_token")
    csrf_secret_name: str = Field("CSRF_SECRET", alias="csrf_secret")
    vars: Mapping[str, str] = Field(default_factory=dict)
    # FROM of mlship's HAProxy edge image where a pipeline's environment sets no edge.base_image
    edge_base_image: str = Field("debian:bookworm-slim", min_length=1)
    notifications: Mapping[str, NotifyTarget] = Field(default_factory=dict)
    schedules: Mapping[str, Schedule] = Field(default_factory=dict)

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            sentinel_address(entry)
        return v

    @field_validator("redis_wait_timeout")
    @classmethod
    def _wait_timeout(cls, v: int) -> int:
        if not 0 < v <= MAX_WAIT_TIMEOUT_MS:
            raise ValueError(
                f"{v} ms is out of range: give 1 to {MAX_WAIT_TIMEOUT_MS} ms (the webhook must answer "
                "within 2 s, its Redis calls time out after 1.5 s), e.g. MLSHIP_REDIS_WAIT_TIMEOUT=500"
            )
        return v

    @field_validator("public_url", "github_api_url")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @model_validator(mode="after")
    def _scheduled_repositories(self) -> Settings:
        for name, sched in self.schedules.items():
            if sched.repo not in self.repositories:
                raise ValueError(
                    f"schedules.{name}: repository {sched.repo!r} is not in repositories: "
                    "allow-list it there first"
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _named_repositories(cls, data: Any) -> Any:
        """In the file, a repository's name is its key: fill ``full_name`` from it."""
        repos = data.get("repositories") if isinstance(data, dict) else None
        if isinstance(repos, dict):
            data = {**data, "repositories": {k: _named(k, v) for k, v in repos.items()}}
        return data

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
        password = urlsplit(self.redis_url).password  # Redis is root-equivalent: mask its password
        return values + ([unquote(password)] if password else [])

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each sentinel in ``redis_sentinels`` (empty: no Sentinel)."""
        return [sentinel_address(e) for e in self.redis_sentinels]

    def sentinel_password(self) -> str | None:
        return self.secrets.get(self.redis_sentinel_password_secret)

    def validate(self) -> None:  # type: ignore[override]
        """Checks that need the secrets: every webhook secret set and non-empty."""
        for repo in self.repositories.values():
            self.webhook_secrets(repo)
            bad = [n for n in repo.reach.secrets if n in self.server_secret_names()]
            if bad:
                raise ConfigError(
                    f"repositories.{repo.full_name}.reach.secrets names {', '.join(bad)}, a secret of the "
                    "server itself: a pipeline never gets those; give the repository a secret of its own"
                )

    def server_secret_names(self) -> frozenset[str]:
        """Names a pipeline may never resolve: the defaults plus every name this server uses itself."""
        names = {
            self.ssh_key_secret,
            self.github_token_secret,
            self.csrf_secret_name,
            self.redis_sentinel_password_secret,
            *self.api_token_names,
        }
        for repo in self.repositories.values():
            names.update(repo.webhook_secrets)
            if repo.reach.deploy_key:
                names.add(repo.reach.deploy_key)
            if repo.status_token_name:
                names.add(repo.status_token_name)
        for target in self.notifications.values():
            names.update(target.secret_names())
        return SERVER_SECRET_NAMES | names

    def deploy_key_name(self, full_name: str) -> str:
        """The secret holding the SSH key for this repository's deploys (its own, else the server's)."""
        repo = self.repo(full_name)
        return (repo.reach.deploy_key if repo else None) or self.ssh_key_secret


def sentinel_address(entry: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → (host, port); ValueError says what is wrong and the fix."""
    host, sep, port = entry.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    fix = "write each sentinel as host:port, e.g. 10.0.0.5:26379 (MLSHIP_REDIS_SENTINELS=h1:26379,h2:26379)"
    if not sep or not host or (":" in host and not entry.strip().startswith("[")):
        raise ValueError(f"sentinel {entry!r} is not host:port: {fix}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel {entry!r}: port {port!r} is not a number from 1 to 65535: {fix}")
    return host, int(port)


def _named(full_name: str, spec: Any) -> Any:
    if isinstance(spec, RepoConfig) or not isinstance(spec, dict | None):
        return spec
    return {"full_name": full_name, **(spec or {})}


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if loc[:1] == ["repositories"] and len(loc) > 2:  # "repositories.acme/x: key 'clone_url'"
            where, key = f"{source}: repositories.{loc[1]}", ".".join(loc[2:])
        else:
            where, key = source, ".".join(loc)
        lines.append(f"{where}: key '{key}': {e['msg']}")
    return "; ".join(lines)


def _scalar(annotation: Any) -> type | None:
    """The scalar type behind ``annotation`` (``X | None`` → X), or None for mappings and models."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (types.UnionType, typing.Union) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is tuple:
        return tuple
    return annotation if annotation in (str, int, float, bool, Path) else None


def env_keys() -> dict[str, str]:
    """Settings that may come from the environment: file key → variable suffix (derived from fields)."""
    keys = {}
    for name, info in Settings.model_fields.items():
        if _scalar(info.annotation) is not None:
            key = info.alias or name
            keys[key] = key.upper()
    return keys


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        key = info.alias or name
        kind = _scalar(info.annotation)
        raw = env_get(key.upper(), env) if kind is not None else None
        if raw is None:
            continue
        out[key] = tuple(s.strip() for s in raw.split(",") if s.strip()) if kind is tuple else raw
    return out


def _read_file(path: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read MLSHIP_CONFIG={path}: {exc.strerror}", file=path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", file=path) from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings", file=path)
    if isinstance(loaded, dict) and "secrets" in loaded:
        raise ConfigError(f"{path}: key 'secrets': not a setting (name secrets, e.g. secrets_dir)", file=path)
    return loaded or {}


def load_settings(env: Mapping[str, str] | None = None, validate: bool = True) -> Settings:
    """Load settings from ``env`` (default os.environ) and the file it names in MLSHIP_CONFIG."""
    env = dict(os.environ if env is None else env)
    path = env_get("CONFIG", env)
    data = _read_file(path) if path else {}
    data.update(_env_overrides(env))
    try:
        model = Settings.model_validate(data)
    except ValidationError as exc:
        source = path or "environment"
        raise ConfigError(_describe(exc, source), file=source) from exc
    settings = model.model_copy(update={"secrets": Secrets(env=env, directory=model.secrets_dir)})
    if validate:
        settings.validate()
    return settings

"""What one repository's pipeline may reach, checked on the substituted values.

A pipeline is code from whoever can merge into the repository; the server configuration
(``RepoConfig.reach`` and ``allow``) says what it may touch beyond a closed default:

- ``${secrets.NAME}``: only names the repository lists (``reach.secrets``, or
  ``reach.environment_secrets.<env>`` under ``environments.<env>``); the server's own secrets never;
- docker_run: network ``none``/``bridge`` or one listed, named volumes only from the list or prefix,
  no host path or Docker socket without ``allow.host_mounts``, memory/cpus/pids within the limits;
- environments: the same volume rule for the deploy hosts' containers, and every host (user, port)
  among the repository's ``reach.deploy_targets``; the deploy step checks again before it connects.

Every check runs after substitution, so ``$${`` (a literal ``${``) or a variable cannot hide a value.
Only ``orchestrator validate`` without ``--var`` leaves references unresolved; the worker never does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from docker.utils import parse_bytes

from orchestrator.config import (
    SERVER_SECRET_NAMES,
    Allow,
    ContainerLimits,
    DeployTarget,
    RepoConfig,
    Settings,
    is_server_secret,
)
from orchestrator.errors import DeployError

Path_ = tuple[str | int, ...]
Add = Callable[[str, Path_], None]
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "docker.sock")
BASE_NETWORKS = ("none", "bridge")
VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$")
MODES = ("ro", "rw")
REF_RE = re.compile(r"\$\{(secrets\.)?[A-Za-z_][A-Za-z0-9_]*\}")
CONFIG = "server configuration: repositories.{repo}.reach.{key}"


@dataclass(frozen=True)
class Policy:
    """The reach of one repository. ``None`` for a list means "not known here" (``orchestrator validate``
    without a configuration): only the fixed rules apply. The default reaches nothing."""

    allow: Allow = field(default_factory=Allow)
    repo: str = "<repository>"
    secrets: frozenset[str] | None = frozenset()
    environment_secrets: Mapping[str, frozenset[str]] = field(default_factory=dict)
    server_secrets: frozenset[str] = SERVER_SECRET_NAMES
    volumes: frozenset[str] | None = frozenset()
    volume_prefix: str | None = None
    networks: frozenset[str] = frozenset()
    deploy_targets: tuple[DeployTarget, ...] | None = ()
    limits: ContainerLimits = field(default_factory=lambda: ContainerLimits())
    resolved: bool = True  # False: ${VARS} were left as written (validate): such values wait for the worker

    @classmethod
    def for_repo(cls, settings: Settings, repo: RepoConfig) -> Policy:
        r = repo.reach
        return cls(
            allow=repo.allow,
            repo=repo.full_name,
            secrets=frozenset(r.secrets),
            environment_secrets={env: frozenset(names) for env, names in r.environment_secrets.items()},
            server_secrets=settings.server_secret_names(),
            volumes=frozenset(r.volumes),
            volume_prefix=r.volume_prefix,
            networks=frozenset(r.networks),
            deploy_targets=r.deploy_targets,
            limits=r.limits,
        )

    @classmethod
    def unknown(cls, allow: Allow | None = None, secrets: Iterable[str] | None = None) -> Policy:
        """For ``orchestrator validate`` without a configuration: the server's own names are known."""
        return cls(
            allow=allow or Allow(),
            secrets=None if secrets is None else frozenset(secrets),
            volumes=None,
            deploy_targets=None,
            resolved=False,
        )

    def pending(self, value: str) -> bool:
        """A value that still holds a ${VAR} reference (validate without --var): the worker checks it."""
        return not self.resolved and REF_RE.search(value) is not None

    def where(self, key: str) -> str:
        return CONFIG.format(repo=self.repo, key=key)

    # -- secrets --------------------------------------------------------------------------------------

    def secret_refusal(self, name: str, path: Path_) -> str | None:
        """Why ``${secrets.<name>}`` at ``path`` is refused, or None if this repository may use it."""
        if is_server_secret(name, self.server_secrets):
            return (
                f"secret '{name}' is one of the server's own secrets and is never given to a pipeline; "
                f"ask the operator for a secret of this repository's own ({self.where('secrets')})"
            )
        if self.secrets is None:
            return None
        env = str(path[1]) if len(path) > 1 and path[0] == "environments" else None
        allowed = self.secrets | (self.environment_secrets.get(env, frozenset()) if env else frozenset())
        if name in allowed:
            return None
        scoped = [e for e, names in self.environment_secrets.items() if name in names]
        if scoped:
            return (
                f"secret '{name}' may be used only under environments."
                f"{', environments.'.join(sorted(scoped))} ({self.where('environment_secrets')})"
            )
        names = ", ".join(sorted(allowed)) or "none"
        return (
            f"secret '{name}' is not one this repository may use; allowed here: {names} "
            f"({self.where('secrets')})"
        )

    # -- containers -----------------------------------------------------------------------------------

    def volume_problem(self, vol: str) -> str | None:
        """Why the volume ``source:/path[:ro|rw]`` is refused, or None."""
        if self.pending(vol):
            return None  # checked by the worker once the variables are known
        parts = vol.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            return f"volume {vol!r}: write source:/path/in/container, optionally :ro or :rw"
        source, target = parts[0], parts[1]
        if len(parts) == 3 and parts[2] not in MODES:
            return f"volume {vol!r}: the mode must be ro or rw, not {parts[2]!r}"
        if not target.startswith("/") or ".." in target.split("/"):
            return f"volume {vol!r}: the container path must be absolute, without '..'"
        if source.endswith(DOCKER_SOCKETS) or "docker.sock" in source:
            if self.allow.host_mounts:
                return None
            return (
                f"mounting the Docker socket ({source}) gives the build root on the worker; refused "
                "(server configuration: allow.host_mounts: true)"
            )
        if source.startswith(("/", ".", "~")) or "/" in source or "\\" in source:
            return self._host_path_problem(source)
        return self._named_volume_problem(source)

    def _host_path_problem(self, source: str) -> str | None:
        if not self.allow.host_mounts:
            return (
                f"host path mount '{source}' is not allowed for this repository; use a named volume "
                "(name:/path) or set allow.host_mounts: true in the server configuration"
            )
        if not source.startswith("/") or ".." in source.split("/"):
            return f"host path '{source}' must be absolute, without '..'"
        return None

    def _named_volume_problem(self, name: str) -> str | None:
        if not VOLUME_NAME_RE.match(name):
            return f"volume name {name!r} is not a Docker volume name (letters, digits, _ . -)"
        if self.volumes is None or name in self.volumes:
            return None
        if self.volume_prefix and name.startswith(self.volume_prefix):
            return None
        listed = ", ".join(sorted(self.volumes)) or "none"
        prefix = f", or names starting with {self.volume_prefix!r}" if self.volume_prefix else ""
        return (
            f"named volume '{name}' is not one this repository may mount (allowed: {listed}{prefix}; "
            f"{self.where('volumes')} or volume_prefix)"
        )

    def network_problem(self, network: str | None) -> str | None:
        if network is None or self.pending(network):
            return None
        allowed = [*BASE_NETWORKS, *sorted(self.networks)] + (["host"] if self.allow.host_network else [])
        if network in allowed:
            return None
        if network == "host":
            return (
                "network: host is not allowed for this repository (server configuration: "
                f"allow.host_network: true); use one of: {', '.join(allowed)}"
            )
        return (
            f"network {network!r} is not allowed for this repository (a build container must not join "
            f"another container's or the server's network); use one of: {', '.join(allowed)}, or list "
            f"it in the {self.where('networks')}"
        )

    def limits_problems(
        self, memory: str | None, cpus: float | None, pids: int | None
    ) -> list[tuple[str, str]]:
        """(key, message) for each requested limit above the server's."""
        out: list[tuple[str, str]] = []
        lim = self.limits
        if memory is not None:
            try:
                too_much = parse_bytes(memory) > parse_bytes(lim.max_memory)
            except Exception:
                too_much = False
                out.append(("memory", f"memory {memory!r} is not a size like 512m or 2g"))
            if too_much:
                out.append(("memory", f"memory {memory} is above this server's limit of {lim.max_memory}"))
        if cpus is not None and cpus > lim.max_cpus:
            out.append(("cpus", f"cpus {cpus:g} is above this server's limit of {lim.max_cpus:g}"))
        if pids is not None and pids > lim.max_pids:
            out.append(("pids_limit", f"pids_limit {pids} is above this server's limit of {lim.max_pids}"))
        return out

    # -- deploy targets -------------------------------------------------------------------------------

    def target_problem(self, env: str, host: str, port: Any, user: str) -> str | None:
        if self.deploy_targets is None or self.pending(f"{host}{port}{user}"):
            return None
        try:
            port_n = int(port)
        except (TypeError, ValueError):
            return f"port {port!r} is not a number"
        if any(t.admits(env, host, port_n, user) for t in self.deploy_targets):
            return None
        listed = ", ".join(_show(t) for t in self.deploy_targets) or "none"
        return (
            f"{user}@{host}:{port_n} is not a deploy target of this repository for environment '{env}'; "
            f"allowed: {listed} ({self.where('deploy_targets')})"
        )


def _show(t: DeployTarget) -> str:
    s = f"{t.user or '*'}@{t.host}:{t.port or '*'}"
    return s + (f" ({'/'.join(t.environments)})" if t.environments else "")


# -- the checks on a validated pipeline (called from pipeline.load_pipeline) ---------------------------


def check_pipeline(pipeline: Any, policy: Policy, add: Add) -> None:
    """Everything the repository's reach limits, on the substituted pipeline."""
    for i, step in enumerate(pipeline.steps):
        where: Path_ = ("steps", i, step.kind)
        if step.kind == "docker_run":
            check_docker_run(step.spec, policy, where, add)
        elif step.kind == "shell":
            if not policy.allow.shell:
                add(
                    f"step '{step.name}': shell steps run on the worker itself and are not allowed for this "
                    "repository (server configuration: allow.shell: true)",
                    where,
                )
            _check_env(step.spec.env, (*where, "env"), add)
    for name, env in pipeline.environments.items():
        check_environment(name, env, policy, add)


def check_docker_run(spec: Any, policy: Policy, where: Path_, add: Add) -> None:
    if spec.privileged and not policy.allow.privileged:
        add(
            "privileged containers are not allowed for this repository (server configuration: "
            "allow.privileged: true)",
            (*where, "privileged"),
        )
    problem = policy.network_problem(spec.network)
    if problem:
        add(problem, (*where, "network"))
    for j, vol in enumerate(spec.volumes):
        problem = policy.volume_problem(vol)
        if problem:
            add(problem, (*where, "volumes", j))
    if spec.user is not None and not USER_RE.match(spec.user) and not policy.pending(spec.user):
        add(f"user {spec.user!r} must be a name or id, optionally :group", (*where, "user"))
    for key, message in policy.limits_problems(spec.memory, spec.cpus, spec.pids_limit):
        add(message, (*where, key))
    _check_env(spec.env, (*where, "env"), add)


def check_environment(name: str, env: Any, policy: Policy, add: Add) -> None:
    at: Path_ = ("environments", name)
    for j, vol in enumerate(env.container.volumes):
        problem = policy.volume_problem(vol)
        if problem:
            add(problem, (*at, "container", "volumes", j))
    _check_env(env.container.env, (*at, "container", "env"), add)
    for j, h in enumerate(env.hosts):
        problem = policy.target_problem(name, h.host, h.port, h.user)
        if problem:
            add(problem, (*at, "hosts", j))


def _check_env(env: Mapping[str, str], where: Path_, add: Add) -> None:
    for key, value in env.items():
        if not ENV_NAME_RE.match(key):
            add(f"environment variable name {key!r}: use letters, digits and _", (*where, key))
        if "\0" in value:
            add(f"environment variable {key} holds a NUL byte", (*where, key))


# -- the deploy step's check right before it connects --------------------------------------------------


def ensure_deploy_targets(settings: Settings, repo_name: str, env_name: str, env: Any) -> None:
    """Raise DeployError unless every host of ``env`` is a deploy target of the repository."""
    repo = settings.repo(repo_name)
    if repo is None:
        raise DeployError(f"repository {repo_name} is not configured on this server: no deploy targets")
    policy = Policy.for_repo(settings, repo)
    problems = [policy.target_problem(env_name, h.host, h.port, h.user) for h in env.hosts]
    refused = [p for p in problems if p]
    if refused:
        raise DeployError("deploy refused before connecting: " + "; ".join(refused))

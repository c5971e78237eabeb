"""The whole system on one machine: services, a server config, the web app and a worker as processes.

``orchestrator standalone`` and the end-to-end test both use ``Stack``: the same real programs
started the same way. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator import defaults
from orchestrator.devstack.services import (
    DockerDaemon,
    GitOrigin,
    RedisServer,
    Registry,
    SshdHost,
    ensure_base_image,
    free_port,
    keygen,
    port_open,
    wait_for,
)
from orchestrator.devstack.userrepos import UserRepo
from orchestrator.errors import ConfigError, InfrastructureError

REPO_NAME = "local/house-price"
LABEL_REPO = "mlship.repo"
PREDEFINED_NETWORKS = frozenset({"bridge", "host", "none"})
# Stand-ins for the server vars while validating a user's pipeline.yaml before the services exist.
PLACEHOLDER_VARS = {
    "REGISTRY": "127.0.0.1:5000",
    "BASE_IMAGE": "localbase/python:3.11",
    **{
        f"{env}_{key}": value
        for env in ("QA", "PROD")
        for key, value in (("HOST", "127.0.0.1"), ("PORT", "22"), ("USER", "root"))
    },
}
Say = Callable[[str], None]


class Joins:
    """Which networks the containers created during the run joined, read live from the daemon's
    event stream (dockerd keeps only its latest 256 events: asking afterwards would miss some)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.repo_of: dict[str, str] = {}  # container id → its mlship.repo label
        self.joined: dict[str, set[str]] = {}  # container id → network names
        self.lock = threading.Lock()
        self.stream = client.events(decode=True, filters={"type": ["container", "network"]})
        self.thread = threading.Thread(target=self._read, name="stack-events", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                actor = event.get("Actor") or {}
                attrs = actor.get("Attributes") or {}
                kind = (event.get("Type"), event.get("Action"))
                with self.lock:
                    if kind == ("container", "create") and attrs.get(LABEL_REPO):
                        self.repo_of[actor.get("ID", "")] = attrs[LABEL_REPO]
                    elif kind == ("network", "connect") and attrs.get("name"):
                        self.joined.setdefault(attrs.get("container", ""), set()).add(attrs["name"])
        except Exception:  # the stream closed (stop) or the daemon went away: nothing more to learn
            return

    def networks(self, repos: list[str]) -> set[str]:
        """Networks joined by containers labelled with one of ``repos``, even ones removed since."""
        with self.lock:
            return {n for cid, nets in self.joined.items() if self.repo_of.get(cid) in repos for n in nets}

    def stop(self) -> None:
        self.stream.close()
        self.thread.join(5)
        self.client.close()


@dataclass(frozen=True)
class Snapshot:
    """Ids of the containers and networks on the daemon at one moment."""

    containers: frozenset[str]
    networks: frozenset[str]

    @classmethod
    def of(cls, client: Any) -> Snapshot:
        return cls(
            frozenset(c.id for c in client.containers.list(all=True)),
            frozenset(n.id for n in client.networks.list()),
        )

    def remove_new(self, client: Any, repos: list[str], joined: set[str] | None = None) -> list[str]:
        """Remove containers created since, labelled with one of ``repos``, then the new networks
        they (or, per ``joined``, such containers a failed deploy removed already) were attached
        to that no container uses any more. Returns the container names."""
        import docker

        removed: list[str] = []
        networks = set(joined or ())
        for repo in repos:
            for c in client.containers.list(all=True, filters={"label": f"{LABEL_REPO}={repo}"}):
                if c.id in self.containers:
                    continue
                networks.update(c.attrs.get("NetworkSettings", {}).get("Networks", {}) or {})
                try:
                    c.remove(force=True)
                except docker.errors.APIError as exc:  # gone already (--rm), or being removed
                    if exc.status_code not in (404, 409):
                        raise
                removed.append(c.name)
        for name in sorted(networks - PREDEFINED_NETWORKS):
            self._remove_network(client, name)
        return removed

    def _remove_network(self, client: Any, name: str) -> None:
        import docker

        try:
            net = client.networks.get(name)
        except docker.errors.NotFound:
            return
        # Exact name match: the daemon's lookup also accepts id prefixes.
        if net.name == name and net.id not in self.networks and not net.attrs.get("Containers"):
            net.remove()


@dataclass
class Stack:
    """Everything ``standalone`` runs. ``start`` brings it up phase by phase; ``stop`` undoes it."""

    state: Path
    say: Say = print
    web_port: int = 8000
    redis_url: str | None = None
    redis: RedisServer | None = None
    docker: DockerDaemon = field(default_factory=DockerDaemon)
    registry: Registry | None = None
    hosts: dict[str, SshdHost] = field(default_factory=dict)
    origin: GitOrigin | None = None
    base_image: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    webhook_secret: str = ""
    api_token: str = ""
    config_path: Path | None = None
    known_hosts: Path | None = None
    push_branches: tuple[str, ...] = ()
    user_sources: tuple[str, ...] = ()
    user_repos: list[UserRepo] = field(default_factory=list)
    extra_config: dict[str, Any] = field(default_factory=dict)
    before: Snapshot | None = None
    joins: Joins | None = None
    user_secrets: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def phase(self, name: str, fn: Callable[[], object]) -> None:
        t0 = time.monotonic()
        self.say(f"▶ {name} ...")
        fn()
        self.say(f"✔ {name} ({time.monotonic() - t0:.1f}s)")

    def start_services(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        if self.user_sources:  # first: a broken pipeline.yaml is reported before anything starts
            self.phase("your repositories (mirror, validate pipeline.yaml)", self._user_repos)
        if not self.redis_url:
            self.phase("Redis (AOF on)", self._start_redis)
        self.phase("Docker daemon", self._start_docker)
        self.phase("base image (first time: debootstrap, about 70 s)", self._base_image)
        self.phase("registry", self._start_registry)
        self.phase("deploy hosts qa and prod (sshd)", self._start_hosts)
        self.phase("example repository (bare git origin)", self._origin)

    def _user_repos(self) -> None:
        from orchestrator.devstack.userrepos import prepare

        self.user_repos = prepare(list(self.user_sources), self.state, PLACEHOLDER_VARS)
        for repo in self.user_repos:
            self.say(
                f"    {repo.name} ← {repo.source} ({repo.branch} at {repo.head()[:7]}): pipeline.yaml ok"
            )

    def _start_redis(self) -> None:
        password = self._secret(self.state / "redis.password", pysecrets.token_hex(16))
        self.redis = RedisServer(
            self.state / "redis", password=password, maxmemory=self.redis_maxmemory()
        ).start()
        self.redis_url = self.redis.url

    def redis_maxmemory(self) -> str:
        """The ``redis_maxmemory`` setting (``--config`` file, else ``MLSHIP_REDIS_MAXMEMORY``, else the
        default) for the Redis this stack starts, checked like every setting."""
        from orchestrator.config import Settings

        raw = self.extra_config.get("redis_maxmemory") or os.environ.get("MLSHIP_REDIS_MAXMEMORY")
        value = Settings.model_fields["redis_maxmemory"].default if raw is None else str(raw)
        try:
            return Settings.model_validate({"redis_maxmemory": value}).redis_maxmemory
        except ValidationError as exc:
            raise ConfigError(
                f"redis_maxmemory {value!r}: a size like 512mb or 2gb ({exc.errors()[0]['msg']})"
            ) from exc

    def _start_docker(self) -> None:
        self.docker.ensure(work=Path("/run/mlship"))
        self.snapshot()

    def repositories(self) -> list[str]:
        return [REPO_NAME, *(r.name for r in self.user_repos), *self.extra_config.get("repositories", {})]

    def _base_image(self) -> None:
        self.base_image = ensure_base_image(self.docker.host, progress=lambda line: self.say(f"    {line}"))

    def _start_registry(self) -> None:
        port = 5000 if not port_open(5000) else free_port()
        self.registry = Registry(self.state / "registry", port=port).start()

    def _start_hosts(self) -> None:
        key = keygen(self.state / "ssh" / "deploy_key", "mlship-standalone")
        pub = Path(str(key) + ".pub").read_text()
        for name in ("qa", "prod"):
            self.hosts[name] = SshdHost(name, self.state / "ssh" / name, self.docker.host, pub).start()
        self.known_hosts = self.state / "ssh" / "known_hosts"
        self.known_hosts.write_text("".join(h.known_hosts_line() for h in self.hosts.values()))

    def _origin(self) -> None:
        origin = GitOrigin(self.state / "git")
        self.origin = origin if origin.bare.exists() else origin.create()

    def write_config(self) -> Path:
        """The server config: the example and the user's repositories, secrets in files, pipeline vars."""
        assert self.origin and self.registry and self.known_hosts
        secrets_dir = self.state / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        self.webhook_secret = self._secret(secrets_dir / "GITHUB_WEBHOOK_SECRET", pysecrets.token_hex(20))
        self.api_token = self._secret(secrets_dir / "API_TOKEN", pysecrets.token_urlsafe(24))
        self._secret(secrets_dir / "CSRF_SECRET", pysecrets.token_hex(32))
        self._secret(secrets_dir / "DEPLOY_SSH_KEY", (self.state / "ssh" / "deploy_key").read_text())
        repositories: dict[str, Any] = {
            REPO_NAME: {
                "clone_url": self.origin.url,
                "webhook_secrets": ["GITHUB_WEBHOOK_SECRET"],
                "triggers": {"pull_request_merged": ["main", "master"], "push": list(self.push_branches)},
                # the root pipeline's model volume and the two sshd hosts, nothing else
                "reach": {"volumes": ["ml_vol"], "deploy_targets": [{"host": "127.0.0.1"}]},
            }
        }
        for repo in self.user_repos:
            self.user_secrets[repo.name] = self._secret(
                secrets_dir / repo.secret_name, pysecrets.token_hex(20)
            )
            repositories[repo.name] = repo.config()
        repositories.update(self.extra_config.get("repositories") or {})
        config = {
            "redis_url": self.redis_url,
            "workspace": str(self.state / "workspace"),
            "secrets_dir": str(secrets_dir),
            "public_url": self.url,
            "docker_host": self.docker.host,
            "known_hosts": str(self.known_hosts),
            "lease_seconds": 10,
            "redis_maxmemory": self.redis_maxmemory(),
            "vars": {**self.server_vars(), **(self.extra_config.get("vars") or {})},
            "edge_base_image": self.base_image,  # nothing can be pulled here: the local base image
            "repositories": repositories,
        }
        self.config_path = self.state / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def server_vars(self) -> dict[str, str]:
        """The ${VARS} every pipeline here gets: the registry, base image and the two hosts."""
        assert self.registry
        return {
            "REGISTRY": self.registry.addr,
            "BASE_IMAGE": self.base_image,
            "QA_HOST": "127.0.0.1",
            "QA_PORT": str(self.hosts["qa"].port),
            "QA_USER": self.hosts["qa"].user,
            "PROD_HOST": "127.0.0.1",
            "PROD_PORT": str(self.hosts["prod"].port),
            "PROD_USER": self.hosts["prod"].user,
        }

    @staticmethod
    def _secret(path: Path, default: str) -> str:
        if not path.exists():
            path.write_text(default)
            path.chmod(0o600)
        return path.read_text()

    def env(self) -> dict[str, str]:
        assert self.config_path
        return {**os.environ, "MLSHIP_CONFIG": str(self.config_path), "DOCKER_HOST": self.docker.host}

    def start_app(self, workers: int = 1) -> None:
        """The web app under gunicorn and ``workers`` RQ workers, as child processes."""
        logs = self.state / "logs"
        logs.mkdir(exist_ok=True)
        exe = [sys.executable, "-m", "orchestrator"]

        def web() -> None:
            bind = f"127.0.0.1:{self.web_port}"
            self._spawn([*exe, "web", "--bind", bind, "--workers", "2"], logs / "web.log")
            wait_for(lambda: port_open(self.web_port), 30, f"web app on {self.url}")

        def worker() -> None:
            for i in range(workers):
                self._spawn([*exe, "worker"], logs / f"worker-{i}.log")

        self.phase(f"web app on {self.url}", web)
        self.phase(f"{workers} worker(s)", worker)

    def _spawn(self, argv: list[str], log: Path) -> None:
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                argv, env=self.env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
        time.sleep(0.3)
        if proc.poll() is not None:
            raise InfrastructureError(
                f"{' '.join(argv[2:])} exited at start; see {log}:\n"
                + log.read_text(errors="replace")[-2000:]
            )
        self.procs.append(proc)

    def snapshot(self) -> None:
        """Note the containers and networks the daemon has now: ``stop`` never removes those."""
        self.joins = Joins(self.docker.client())  # first: no event between the two is missed
        client = self.docker.client()
        try:
            self.before = Snapshot.of(client)
        finally:
            client.close()

    def remove_deployments(self) -> list[str]:
        """Remove the containers this run's deploys created, and the networks only they used.

        Only what was not on the daemon at ``snapshot`` and carries a repository label of this
        stack: on a shared daemon everything else (a user's containers and networks, another run's
        deploys) stays.
        """
        if not self.docker.host or self.before is None:
            return []
        client = self.docker.client()
        repos = self.repositories()
        try:
            return self.before.remove_new(client, repos, self.joins.networks(repos) if self.joins else None)
        finally:
            client.close()

    def stop(self, keep_deployments: bool = False) -> None:
        if not keep_deployments:
            try:
                removed = self.remove_deployments()
                if removed:
                    self.say(f"removed deployed containers {', '.join(sorted(removed))}")
            except Exception as exc:
                self.say(f"could not remove deployed containers: {exc}")
        if self.joins is not None:
            self.joins.stop()
            self.joins = None
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(defaults.PROCESS_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
        for h in self.hosts.values():
            h.stop()
        if self.registry:
            self.registry.stop()
        if self.redis:
            self.redis.stop()
        self.docker.stop()

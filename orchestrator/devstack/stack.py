"""The whole system on one machine: services, a server config, the web app and a worker as processes.

``orchestrator standalone`` and the end-to-end test both use ``Stack``: the same real programs
started the same way. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orchestrator.devstack.services import (
    DockerDaemon,
    GitOrigin,
    RedisServer,
    Registry,
    SshHost,
    ensure_base_image,
    free_port,
    keygen,
    port_open,
    wait_for,
)
from orchestrator.errors import InfrastructureError

REPO_NAME = "local/house-price"
Say = Callable[[str], None]


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
    hosts: dict[str, SshHost] = field(default_factory=dict)
    origin: GitOrigin | None = None
    base_image: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    webhook_secret: str = ""
    api_token: str = ""
    config_path: Path | None = None
    known_hosts: Path | None = None
    push_branches: tuple[str, ...] = ()

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
        if not self.redis_url:
            self.phase("Redis (AOF on)", self._start_redis)
        self.phase("Docker daemon", lambda: self.docker.ensure(work=Path("/run/mlship")))
        self.phase("base image (first time: debootstrap, about 70 s)", self._base_image)
        self.phase("registry", self._start_registry)
        self.phase("deploy hosts qa and prod (sshd)", self._start_hosts)
        self.phase("example repository (bare git origin)", self._origin)

    def _start_redis(self) -> None:
        password = self._secret(self.state / "redis.password", pysecrets.token_hex(16))  # issue 18
        self.redis = RedisServer(self.state / "redis", password=password).start()
        self.redis_url = self.redis.url

    def _base_image(self) -> None:
        self.base_image = ensure_base_image(self.docker.host, progress=lambda line: self.say(f"    {line}"))

    def _start_registry(self) -> None:
        port = 5000 if not port_open(5000) else free_port()
        self.registry = Registry(self.state / "registry", port=port).start()

    def _start_hosts(self) -> None:
        key = keygen(self.state / "ssh" / "deploy_key", "mlship-standalone")
        pub = Path(str(key) + ".pub").read_text()
        for name in ("qa", "prod"):
            self.hosts[name] = SshHost(name, self.state / "ssh" / name, self.docker.host, pub).start()
        self.known_hosts = self.state / "ssh" / "known_hosts"
        self.known_hosts.write_text("".join(h.known_hosts_line() for h in self.hosts.values()))

    def _origin(self) -> None:
        origin = GitOrigin(self.state / "git")
        self.origin = origin if origin.bare.exists() else origin.create()

    def write_config(self) -> Path:
        """The server config: one allow-listed repository, secrets in files, pipeline vars."""
        assert self.origin and self.registry and self.known_hosts
        secrets_dir = self.state / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        self.webhook_secret = self._secret(secrets_dir / "GITHUB_WEBHOOK_SECRET", pysecrets.token_hex(20))
        self.api_token = self._secret(secrets_dir / "API_TOKEN", pysecrets.token_urlsafe(24))
        self._secret(secrets_dir / "CSRF_SECRET", pysecrets.token_hex(32))
        self._secret(secrets_dir / "DEPLOY_SSH_KEY", (self.state / "ssh" / "deploy_key").read_text())
        config = {
            "redis_url": self.redis_url,
            "workspace": str(self.state / "workspace"),
            "secrets_dir": str(secrets_dir),
            "public_url": self.url,
            "docker_host": self.docker.host,
            "known_hosts": str(self.known_hosts),
            "lease_seconds": 10,
            "vars": {
                "REGISTRY": self.registry.addr,
                "BASE_IMAGE": self.base_image,
                "QA_HOST": "127.0.0.1",
                "QA_PORT": str(self.hosts["qa"].port),
                "QA_USER": self.hosts["qa"].user,
                "PROD_HOST": "127.0.0.1",
                "PROD_PORT": str(self.hosts["prod"].port),
                "PROD_USER": self.hosts["prod"].user,
            },
            "repositories": {
                REPO_NAME: {
                    "clone_url": self.origin.url,
                    "webhook_secrets": ["GITHUB_WEBHOOK_SECRET"],
                    "triggers": {"pull_request_merged": ["main", "master"], "push": list(self.push_branches)},
                    # issue 18: the root pipeline's model volume and the two sshd hosts, nothing else
                    "reach": {"volumes": ["ml_vol"], "deploy_targets": [{"host": "127.0.0.1"}]},
                }
            },
        }
        self.config_path = self.state / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    @staticmethod
    def _secret(path: Path, default: str) -> str:
        if not path.exists():
            path.write_text(default)
            path.chmod(0o600)
        return path.read_text()

    def env(self) -> dict[str, str]:
        assert self.config_path
        return {**os.environ, "ORCHESTRATOR_CONFIG": str(self.config_path), "DOCKER_HOST": self.docker.host}

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

    def remove_deployments(self) -> list[str]:
        """Remove the containers and networks that deploys of the example repository created here."""
        if not self.docker.host:
            return []
        client = self.docker.client()
        removed: list[str] = []
        apps: set[str] = set()
        for c in client.containers.list(all=True, filters={"label": f"mlship.repo={REPO_NAME}"}):
            apps.add(c.labels.get("mlship.app", ""))
            c.remove(force=True)
            removed.append(c.name)
        # Docker's name filter matches substrings and an empty list means no filter at all: list only
        # when this run deployed something, and remove only exact names it created.
        wanted = {f"{a}-net" for a in apps if a}
        for net in client.networks.list(names=sorted(wanted)) if wanted else []:
            if net.name in wanted:
                net.remove()
        client.close()
        return removed

    def stop(self, keep_deployments: bool = False) -> None:
        if not keep_deployments:
            try:
                removed = self.remove_deployments()
                if removed:
                    self.say(f"removed deployed containers {', '.join(sorted(removed))}")
            except Exception as exc:
                self.say(f"could not remove deployed containers: {exc}")
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
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

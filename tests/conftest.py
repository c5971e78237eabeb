"""The test bed: real Redis, Docker, registry, sshd hosts and a git origin, all on loopback.

Services are started once per session on free ports and stopped at the end. In CI (CI=true)
a service that cannot be provided is an error; on a laptop without it, the tests that need it skip
with the reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.devstack.services import (
    DockerDaemon,
    GitOrigin,
    RedisServer,
    Registry,
    SshdHost,
    ensure_base_image,
    keygen,
)
from orchestrator.errors import InfrastructureError

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where nothing may be skipped."""
    if IN_CI:
        pytest.fail(f"required service unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    # Short path: unix socket paths are limited to ~100 bytes.
    d = Path(tempfile.mkdtemp(prefix="mlt-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(session_dir: Path) -> Iterator[RedisServer]:
    """A real redis-server for the session (AOF on). Tests that stop it should use ``own_redis``."""
    try:
        server = RedisServer(session_dir / "redis").start()
    except InfrastructureError as exc:
        unavailable(str(exc))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session Redis, flushed before each test."""
    import redis

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, free to stop, kill and restart."""
    try:
        server = RedisServer(tmp_path / "redis").start()
    except InfrastructureError as exc:
        unavailable(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def docker_daemon(session_dir: Path) -> Iterator[DockerDaemon]:
    try:
        daemon = DockerDaemon().ensure(work=Path("/run/mlship-test"))
    except InfrastructureError as exc:
        unavailable(f"no Docker daemon: {exc}")
    if daemon.started_here:
        # A daemon of the tests' own keeps its data between runs: clear what killed runs left behind.
        daemon.remove_leftovers()
    # Everything the tests start (Stack, workers, docker CLI, compose) must find this daemon, never
    # start a second one on the same data root.
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = daemon.host
    yield daemon
    if previous is None:
        os.environ.pop("DOCKER_HOST", None)
    else:
        os.environ["DOCKER_HOST"] = previous
    daemon.stop()


@pytest.fixture(scope="session")
def docker_client(docker_daemon: DockerDaemon):  # type: ignore[no-untyped-def]
    client = docker_daemon.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_daemon: DockerDaemon) -> str:
    """python:3.11-slim if it can be had, else localbase/python:3.11 (built once, cached)."""
    try:
        return ensure_base_image(docker_daemon.host)
    except InfrastructureError as exc:
        unavailable(str(exc))
        raise


@pytest.fixture(scope="session")
def registry(session_dir: Path) -> Iterator[Registry]:
    try:
        reg = Registry(session_dir / "registry").start()
    except InfrastructureError as exc:
        unavailable(str(exc))
    yield reg
    reg.stop()


@dataclass
class DeployHosts:
    """The QA and Prod sshd hosts, the client key that logs in to both, and their known_hosts file."""

    hosts: dict[str, SshdHost]
    client_key: Path
    known_hosts: Path

    def __getitem__(self, name: str) -> SshdHost:
        return self.hosts[name]


@pytest.fixture(scope="session")
def deploy_hosts(session_dir: Path, docker_daemon: DockerDaemon) -> Iterator[DeployHosts]:
    key = keygen(session_dir / "ssh" / "client_key", "mlship-tests")
    pub = (key.parent / (key.name + ".pub")).read_text()
    hosts: dict[str, SshdHost] = {}
    try:
        for name in ("qa", "prod"):
            hosts[name] = SshdHost(name, session_dir / "ssh" / name, docker_daemon.host, pub).start()
    except InfrastructureError as exc:
        for h in hosts.values():
            h.stop()
        unavailable(str(exc))
    known = session_dir / "ssh" / "known_hosts"
    known.write_text("".join(h.known_hosts_line() for h in hosts.values()))
    yield DeployHosts(hosts, key, known)
    for h in hosts.values():
        h.stop()


@pytest.fixture
def git_origin(tmp_path: Path) -> GitOrigin:
    """A bare repository seeded with this project's example app (Dockerfile, inference/, pipeline.yaml)."""
    if shutil.which("git") is None:
        unavailable("git is not installed")
    return GitOrigin(tmp_path / "git").create()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end modules run first. Each runs the example on its fixed names and ports
    (8500/8600); in one full run a Prod container of theirs was removed mid-module by something an
    earlier module left behind (not yet found; each passes on its own and after the devstack tests).
    The sort is stable: every other test keeps its order."""
    items.sort(key=lambda item: 0 if "tests/e2e/" in item.nodeid else 1)

"""Shared by the deploy tests and bench/deploy_bench.py: the example images, a test environment, load."""

from __future__ import annotations

import http.client
import io
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.build.log import LogWriter, Masker
from orchestrator.build.runner import docker_factory
from orchestrator.config import DeployTarget, Reach, RepoConfig, Secrets, Settings
from orchestrator.deploy.haproxy import ADMIN_SOCKET, ServerStat, parse_stat, show_stat
from orchestrator.devstack.services import free_port
from orchestrator.models import Build, StepRecord, Trigger
from orchestrator.pipeline import Pipeline, build_variables, load_pipeline
from orchestrator.steps.base import CancelToken, StepContext
from orchestrator.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO = "acme/house-price"


@dataclass
class ExampleImages:
    """The root Dockerfile's image pushed as build 1 and build 2 (build 2 differs by a label layer)."""

    repository: str
    refs: dict[int, str]
    digests: dict[int, str]


def build_example_images(client: Any, base_image: str, registry_addr: str) -> ExampleImages:
    repository = f"{registry_addr}/house-price"
    client.images.build(
        path=str(REPO_ROOT), buildargs={"BASE_IMAGE": base_image}, rm=True, tag=f"{repository}:1"
    )
    df = f"FROM {repository}:1\nLABEL org.example.build=2\n"
    client.images.build(fileobj=io.BytesIO(df.encode()), tag=f"{repository}:2", rm=True)
    digests: dict[int, str] = {}
    for n in (1, 2):
        for line in client.api.push(repository, tag=str(n), stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(line["error"])
            aux = line.get("aux") or {}
            if aux.get("Digest"):
                digests[n] = aux["Digest"]
    return ExampleImages(repository, {n: f"{repository}:{n}" for n in (1, 2)}, digests)


def make_model_volume(client: Any, image: str) -> str:
    name = f"mlship-test-models-{uuid.uuid4().hex[:8]}"
    client.volumes.create(name)
    client.containers.run(
        image,
        ["python3", "-m", "inference.train", "--out", "/models", "--trees", "10", "--rows", "2000"],
        user="0",
        volumes={name: {"bind": "/models", "mode": "rw"}},
        remove=True,
    )
    return name


@dataclass
class DeployEnv:
    """One test environment: a unique container name and host port, its pipeline, a store and settings."""

    store: Store
    settings: Settings
    hosts: Any
    images: ExampleImages
    volume: str
    name: str = field(default_factory=lambda: f"hp{uuid.uuid4().hex[:6]}")
    publish: int = field(default_factory=free_port)
    env: dict[str, str] = field(
        default_factory=lambda: {"MODEL_PATH": "/models/model.skops", "WEB_CONCURRENCY": "2"}
    )
    labels: dict[str, str] = field(default_factory=dict)
    extra_hosts: list[tuple[str, int]] = field(default_factory=list)
    health_timeout: float = 60
    registry_login: bool = False
    edge_base_image: str = "localbase/python:3.11"  # the edge image's FROM (the test bed's base image)
    image_repository: str = ""  # default: the example image's repository
    port: int = 5000
    health_path: str = "/ready"
    volume_spec: list[str] | None = None  # default: the model volume at /models
    strategy: dict[str, Any] | None = None  # deploy-qa's strategy: (default: switch)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.publish}"

    def pipeline_yaml(self) -> str:
        qa = self.hosts["qa"]
        hosts = [{"host": "127.0.0.1", "port": qa.port, "user": qa.user}]
        hosts += [{"host": h, "port": p, "user": qa.user} for h, p in self.extra_hosts]
        import yaml

        env: dict[str, Any] = {
            "hosts": hosts,
            "container": {
                "name": self.name,
                "port": self.port,
                "publish": self.publish,
                "volumes": [f"{self.volume}:/models:ro"] if self.volume_spec is None else self.volume_spec,
                "env": self.env,
                "labels": self.labels,
            },
            "health": {
                "path": self.health_path,
                "status": 200,
                "interval": 0.5,
                "timeout": self.health_timeout,
                "retries": 2,
            },
            "drain_seconds": 1,
            "edge": {"base_image": self.edge_base_image},
        }
        if self.registry_login:
            env["registry_login"] = {"username": "ci", "password": "${secrets.REGISTRY_PASSWORD}"}
        doc = {
            "version": 1,
            "name": "house-price",
            "image": self.image_repository or self.images.repository,
            "steps": [
                {
                    "name": "deploy-qa",
                    "deploy": {"environment": "qa", **({"strategy": self.strategy} if self.strategy else {})},
                },
                {"name": "deploy-prod", "deploy": {"environment": "prod", "promote": "manual"}},
            ],
            "environments": {
                "qa": env,
                "prod": {
                    **env,
                    "container": {**env["container"], "name": self.name + "-prod", "publish": free_port()},
                },
            },
        }
        return yaml.safe_dump(doc, sort_keys=False)

    def new_build(self, number: int, trigger: str = "push", **extra: Any) -> Build:
        """A build record for build ``number`` of the example (its image already pushed)."""
        seq = self.store.r.get(self.store.k.repo_seq(REPO))
        self.store.r.set(self.store.k.repo_seq(REPO), number - 1)  # the Lua script numbers it ``number``
        sha = f"{number:040x}"
        values = {
            "pipeline_yaml": self.pipeline_yaml(),
            "image": self.images.refs[number],
            "digest": self.images.digests[number],
            **extra,
        }
        build, _ = self.store.create_build(
            Trigger(repo=REPO, sha=sha, ref="refs/heads/main", branch="main", kind=trigger),
            pipeline="pipeline.yaml",
            triggered_by="test",
            enqueue=lambda pipe, ticket: None,
            dedup=False,
            extra=values,
        )
        if seq is not None and int(seq) > number:
            self.store.r.set(self.store.k.repo_seq(REPO), seq)
        return build

    def pipeline(self, build: Build) -> Pipeline:
        variables = build_variables(build, {})
        return load_pipeline(build.pipeline_yaml, variables=variables, secrets=self.settings.secrets)

    @contextmanager
    def context(self, build: Build, step: str = "deploy-qa") -> Iterator[StepContext]:
        pipeline = self.pipeline(build)
        log = LogWriter(
            self.store, build.id, Masker([*self.settings.secret_values(), *pipeline.secret_values])
        )
        log.step = step
        rec = StepRecord(name=step, kind=pipeline.step(step).kind)
        ctx = StepContext(
            build=build,
            step=pipeline.step(step),
            pipeline=pipeline,
            settings=self.settings,
            store=self.store,
            workspace=Path("/nonexistent"),
            vars=build_variables(build, {}),
            log=log,
            cancel=CancelToken(),
            record=rec,
            deadline=time.monotonic() + 600,
            docker_factory=docker_factory(self.settings),
        )
        try:
            yield ctx
        finally:
            log.close()

    def deploy(self, build: Build, step: str = "deploy-qa") -> StepContext:
        from orchestrator.steps.deploy import deploy

        with self.context(build, step) as ctx:
            deploy(ctx)
        return ctx

    def log(self, build: Build) -> str:
        return self.store.log_text(build.id)


def test_settings(
    redis_url: str, hosts: Any, workspace: Path, extra_secrets: dict[str, str] | None = None
) -> Settings:
    return Settings(
        redis_url=redis_url,
        workspace=workspace,
        known_hosts=hosts.known_hosts,
        secrets=Secrets(env={"DEPLOY_SSH_KEY": hosts.client_key.read_text(), **(extra_secrets or {})}),
        repositories={
            REPO: RepoConfig(
                full_name=REPO,
                clone_url="file:///nonexistent",
                reach=Reach(  # the test bed's sshd hosts, its model volumes, the secrets these tests give
                    deploy_targets=(DeployTarget(host="127.0.0.1"),),
                    volume_prefix="mlship-test-models-",
                    secrets=tuple(extra_secrets or ()),
                ),
            )
        },
    )


def edge_servers(client: Any, edge: str) -> dict[str, ServerStat]:
    """The edge's servers as its ``show stat`` reports them (the operator's view)."""
    res = client.containers.get(edge).exec_run(
        ["sh", "-c", f"echo '{show_stat()}' | socat stdio {ADMIN_SOCKET}"]
    )
    assert res.exit_code == 0, res.output
    return parse_stat(res.output.decode())


def serving(client: Any, edge: str) -> list[str]:
    """The servers the edge sends new requests to."""
    return sorted(name for name, st in edge_servers(client, edge).items() if st.serving)


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a new connection (Connection: close), as a client behind no keep-alive pool."""
    host, _, rest = url.removeprefix("http://").partition("/")
    h, _, p = host.partition(":")
    conn = http.client.HTTPConnection(h, int(p), timeout=timeout)
    try:
        conn.request("GET", "/" + rest, headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Load(threading.Thread):
    """Constant-rate GETs (new connection each); counts failures and records latencies."""

    def __init__(self, url: str, rate: float = 100.0, path: str = "/ready") -> None:
        super().__init__(daemon=True)
        self.url = url + path
        self.rate = rate
        self.stop_event = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def one(self) -> None:
        t0 = time.perf_counter()
        try:
            status, _ = get(self.url)
            ok, why = status == 200, f"HTTP {status}"
        except Exception as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
        dt = time.perf_counter() - t0
        with self.lock:
            self.latencies.append(dt)
            if not ok:
                self.failures.append(why)

    def run(self) -> None:
        interval = 1.0 / self.rate
        nxt = time.perf_counter()
        workers: list[threading.Thread] = []
        while not self.stop_event.is_set():
            t = threading.Thread(target=self.one, daemon=True)
            t.start()
            workers.append(t)
            nxt += interval
            time.sleep(max(0.0, nxt - time.perf_counter()))
            workers = [w for w in workers if w.is_alive()]
        for w in workers:
            w.join(10)

    def stop(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join(15)
        lat = sorted(self.latencies)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        return {
            "requests": len(lat),
            "failed": len(self.failures),
            "p99_ms": round(p99 * 1000, 1),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else 0.0,
            "failures": self.failures[:5],
        }


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get(url, 2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s")


def cleanup(client: Any, name: str) -> None:
    """Remove every container, network and volume of environment ``name`` (and its -prod twin)."""
    for n in (name, name + "-prod"):
        for c in client.containers.list(all=True, filters={"label": f"mlship.app={n}"}):
            c.remove(force=True)
        for c in client.containers.list(all=True, filters={"name": f"^{n}-"}):
            c.remove(force=True)
        for net in client.networks.list(names=[f"{n}-net"]):
            net.remove()
        for vol in client.volumes.list(filters={"name": f"{n}-edge-state"}):
            vol.remove(force=True)

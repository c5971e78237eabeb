"""One environment on two live hosts, ``parallelism: 1``.

Each host is an sshd on its own loopback address (127.0.0.2, 127.0.0.3) whose ``docker`` talks to a
dockerd of its own (own data root, bridge and address pool), and the environment's network on each
binds published ports to that host's address, so the two edges publish the same port without
meeting, as on two machines.

- Happy path under load on both hosts: 0 failed requests, each host's edge serves the new build.
- A real worker SIGKILLed after the first batch switched: the record says host A → new, host B →
  old (``mixed``), the environments page and the API say so; the next deploy converges both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.build.runner import run_build
from orchestrator.devstack.services import DockerDaemon, SshdHost
from orchestrator.errors import InfrastructureError
from orchestrator.models import BuildStatus
from orchestrator.store import Store
from tests.deploy.conftest import example_images, model_volume  # noqa: F401  (session fixtures)
from tests.deploy.helpers import REPO, ExampleImages, Load, cleanup, edge_servers, get, wait_http
from tests.pipeline.test_worker import wait_until

from .conftest import Workers
from .test_deploy_kill import _create, _setup, _worker_lost

pytestmark = [pytest.mark.docker, pytest.mark.ssh, pytest.mark.slow]

ADDRESSES = ("127.0.0.2", "127.0.0.3")
REACH: dict[str, Any] = {
    "deploy_targets": [{"host": a} for a in ADDRESSES],
    "volume_prefix": "mlship-test-models-",
}


@dataclass
class Host:
    address: str
    sshd: SshdHost
    daemon: DockerDaemon
    client: Any

    @property
    def spec(self) -> str:
        return f"{self.sshd.user}@{self.address}:{self.sshd.port}"


def _bridge(n: int) -> str:
    """The default bridge of host ``n``'s dockerd: its own interface, created here. A ``--bip`` on the
    shared ``docker0`` would re-address the machine's own daemon's bridge and break its containers."""
    name = f"mlsh-br{n}"
    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)  # a crashed run's
    for argv in (
        ["ip", "link", "add", name, "type", "bridge"],
        ["ip", "addr", "add", f"10.{231 + n}.0.1/24", "dev", name],
        ["ip", "link", "set", name, "up"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return name


def _start_host(n: int, address: str, pubkey: str, images: ExampleImages, volume: str, work: Path) -> Host:
    daemon = DockerDaemon(
        extra_args=(
            "--ip",
            address,  # the default bridge's binding; the environment's network gets its own (below)
            "--bridge",
            _bridge(n),
            "--default-address-pool",
            f"base=10.{241 + n}.0.0/16,size=24",
        )
    )
    old = os.environ.get("MLSHIP_DOCKER_DATA_ROOT")
    os.environ["MLSHIP_DOCKER_DATA_ROOT"] = str(work / "data")
    try:
        daemon.start(work=work)
    finally:
        if old is None:
            os.environ.pop("MLSHIP_DOCKER_DATA_ROOT", None)
        else:
            os.environ["MLSHIP_DOCKER_DATA_ROOT"] = old
    client = daemon.client()
    for ref in images.refs.values():
        client.images.pull(ref)
    # The operator's model on this host's volume, under the name the pipeline mounts.
    client.volumes.create(volume)
    client.containers.run(
        images.refs[1],
        ["python3", "-m", "inference.train", "--out", "/models", "--trees", "10", "--rows", "2000"],
        user="0",
        volumes={volume: {"bind": "/models", "mode": "rw"}},
        remove=True,
    )
    sshd = SshdHost(f"h{n}", work / "ssh", daemon.host, pubkey, address=address).start()
    return Host(address, sshd, daemon, client)


def _docker0() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True)
    return " ".join(w for w in out.stdout.split() if "/" in w)


def _remove_bridges() -> None:
    for n in range(len(ADDRESSES)):
        subprocess.run(["ip", "link", "del", f"mlsh-br{n}"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def fleet(
    deploy_hosts: Any,
    example_images: ExampleImages,  # noqa: F811
    model_volume: str,  # noqa: F811
) -> Iterator[list[Host]]:
    pub = (deploy_hosts.client_key.parent / (deploy_hosts.client_key.name + ".pub")).read_text()
    hosts: list[Host] = []
    works: list[Path] = []
    before = _docker0()
    try:
        for n, address in enumerate(ADDRESSES):
            works.append(Path(tempfile.mkdtemp(prefix="mlh-", dir="/tmp")))
            hosts.append(_start_host(n, address, pub, example_images, model_volume, works[-1]))
    except (InfrastructureError, OSError) as exc:
        from tests.conftest import unavailable

        for h in hosts:
            h.sshd.stop()
            h.daemon.stop()
        _remove_bridges()
        unavailable(f"a second deploy host (sshd + dockerd on {ADDRESSES}): {exc}")
    # The machine's own daemon (the registry, the other tests' containers) keeps its bridge as it was.
    assert _docker0() == before, f"starting the hosts' daemons changed docker0: {before} -> {_docker0()}"
    yield hosts
    for h in hosts:
        h.client.close()
        h.sshd.stop()
        h.daemon.stop()
    _remove_bridges()
    for w in works:
        subprocess.run(["rm", "-rf", str(w)], check=False)


def _two_host_pipeline(env: Any, fleet: list[Host]) -> str:
    doc = yaml.safe_load(env.pipeline_yaml())
    doc["steps"] = [{"name": "deploy-qa", "deploy": {"environment": "qa"}}]
    qa = doc["environments"]["qa"]
    qa["hosts"] = [{"host": h.address, "port": h.sshd.port, "user": h.sshd.user} for h in fleet]
    qa["parallelism"] = 1
    doc["environments"] = {"qa": qa}
    return yaml.safe_dump(doc, sort_keys=False)


def _known_hosts(tmp_path: Path, fleet: list[Host]) -> str:
    path = tmp_path / "known_hosts"
    path.write_text("".join(h.sshd.known_hosts_line() for h in fleet))
    return str(path)


def _serving(host: Host, env: Any) -> list[str]:
    return sorted(n for n, st in edge_servers(host.client, f"{env.name}-edge").items() if st.serving)


def _url(host: Host, env: Any) -> str:
    return f"http://{host.address}:{env.publish}"


def _networks(fleet: list[Host], env: Any) -> None:
    """The environment's network on each host, made before the deploy (which then uses it), with
    its published ports bound to that host's own address: the two edges publish one port."""
    for h in fleet:
        h.client.networks.create(
            f"{env.name}-net",
            driver="bridge",
            options={"com.docker.network.bridge.host_binding_ipv4": h.address},
        )


def _clean(fleet: list[Host], env: Any) -> None:
    for h in fleet:
        cleanup(h.client, env.name)


def _deploying(deploying: Any, known: str) -> Any:
    from orchestrator.config import Reach

    repo = deploying.repositories[REPO]
    return deploying.model_copy(
        update=dict(
            known_hosts=Path(known),
            repositories={
                **deploying.repositories,
                REPO: repo.model_copy(update={"reach": Reach.model_validate(REACH)}),
            },
        )
    )


def test_two_live_hosts_parallelism_1_under_load(
    settings,
    store: Store,
    git_origin,
    deploy_hosts,
    docker_client,
    fleet: list[Host],
    example_images: ExampleImages,  # noqa: F811
    model_volume: str,  # noqa: F811
    base_image: str,
    tmp_path: Path,
) -> None:
    env, _ssh, _known, deploying = _setup(
        store, settings, deploy_hosts, example_images, model_volume, base_image
    )
    deploying = _deploying(deploying, _known_hosts(tmp_path, fleet))
    loads = [Load(_url(h, env), rate=25) for h in fleet]
    try:
        _networks(fleet, env)
        sha = git_origin.commit("main", {"pipeline.yaml": _two_host_pipeline(env, fleet)}, "two hosts")
        b1 = _create(store, settings, sha, example_images, 1, queued=False)
        run_build(deploying, store, b1.id, worker_name="test")
        assert store.get_build(b1.id).status is BuildStatus.SUCCESS, store.log_text(b1.id)
        for h in fleet:
            wait_http(_url(h, env) + "/ready", 10)
        for load in loads:
            load.start()
        b2 = _create(store, settings, sha, example_images, 2, queued=False)
        run_build(deploying, store, b2.id, worker_name="test")
        done = store.get_build(b2.id)
        log = store.log_text(b2.id)
        time.sleep(1.0)
        results = [load.stop() for load in loads]
        assert done.status is BuildStatus.SUCCESS, (done.error, log)
        # One host at a time: host B starts only after host A's edge moved to build 2.
        a, b = (f"[{h.address}:{h.sshd.port}]" for h in fleet)
        assert log.index(f"{a} edge ") < log.index(f"{b} $ docker run"), log
        for h in fleet:
            assert _serving(h, env) == [f"{env.name}-b{done.number}"]
        dep = store.get_deployment(REPO, "qa")
        assert dep is not None and dep.build_id == b2.id and not dep.mixed
        assert {h: r["build_id"] for h, r in dep.runs.items()} == {h.spec: b2.id for h in fleet}
        for r in results:
            assert r["failed"] == 0 and r["requests"] > 50, r
        print(f"\nTWO-HOSTS parallelism 1: {[(r['requests'], r['failed'], r['p99_ms']) for r in results]}")
    finally:
        for load in loads:
            if load.is_alive():
                load.stop()
        _clean(fleet, env)


def test_worker_killed_between_batches_leaves_a_recorded_mixed_fleet(
    settings,
    store: Store,
    git_origin,
    workers: Workers,
    deploy_hosts,
    docker_client,
    fleet: list[Host],
    example_images: ExampleImages,  # noqa: F811
    model_volume: str,  # noqa: F811
    base_image: str,
    tmp_path: Path,
) -> None:
    from orchestrator import create_app

    env, ssh, _known, deploying = _setup(
        store, settings, deploy_hosts, example_images, model_volume, base_image
    )
    known = _known_hosts(tmp_path, fleet)
    deploying = _deploying(deploying, known)
    a, b = fleet
    try:
        _networks(fleet, env)
        sha = git_origin.commit("main", {"pipeline.yaml": _two_host_pipeline(env, fleet)}, "two hosts")
        b1 = _create(store, settings, sha, example_images, 1, queued=False)
        run_build(deploying, store, b1.id, worker_name="test")
        assert store.get_build(b1.id).status is BuildStatus.SUCCESS, store.log_text(b1.id)

        b2 = _create(store, settings, sha, example_images, 2)
        doomed = workers.start("doomed", {"APP_PORT": "5000"}, env=ssh, reach=REACH, known_hosts=known)
        b_health = f"[{b.address}:{b.sshd.port}] health check by the edge"

        def first_batch_recorded() -> bool:
            dep = store.get_deployment(REPO, "qa")
            return bool(dep and dep.mixed and b_health in store.log_text(b2.id))

        wait_until(first_batch_recorded, 120, "the first batch to be switched and recorded")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)

        dep = store.get_deployment(REPO, "qa")
        assert dep is not None and dep.mixed and dep.build_id == b1.id  # the environment's build: #1
        assert {h: r["build_number"] for h, r in dep.runs.items()} == {a.spec: 2, b.spec: 1}
        assert _serving(a, env) == [f"{env.name}-b2"] and _serving(b, env) == [f"{env.name}-b1"]
        assert get(_url(a, env) + "/ready")[0] == 200 and get(_url(b, env) + "/ready")[0] == 200

        page = create_app(settings).test_client().get("/environments").get_data(as_text=True)
        assert "mixed fleet" in page and f"{env.name}-b2" in page and f"{env.name}-b1" in page
        api = create_app(settings).test_client().get("/api/v1/environments").get_json()
        (cur,) = [e["current"] for e in api["environments"] if e["environment"] == "qa"]
        assert cur["mixed"] is True and cur["runs"][b.spec]["build_number"] == 1

        workers.start("survivor", {"APP_PORT": "5000"}, env=ssh, reach=REACH, known_hosts=known)
        lost = _worker_lost(store, settings, b2.id)
        assert lost.error.startswith("worker lost"), lost.error

        nxt = _create(store, settings, sha, example_images, 2, rerun_of=b2.id)
        done = wait_until(
            lambda: store.get_build(nxt.id).status.finished and store.get_build(nxt.id),
            180,
            "the next deploy",
        )
        assert done.status is BuildStatus.SUCCESS, (done.error, store.log_text(nxt.id))
        final = store.get_deployment(REPO, "qa")
        assert final is not None and not final.mixed and final.build_id == nxt.id
        assert {r["build_id"] for r in final.runs.values()} == {nxt.id}
        for h in fleet:
            assert _serving(h, env) == [f"{env.name}-b{done.number}"]
        page = create_app(settings).test_client().get("/environments").get_data(as_text=True)
        assert "mixed fleet" not in page
    finally:
        _clean(fleet, env)

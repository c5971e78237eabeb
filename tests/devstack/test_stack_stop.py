"""``Stack.stop`` on a shared daemon removes only what this run deployed; another dockerd holding the
data root is named at once, with what to do."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.devstack.services import DEFAULT_DOCKER_DATA, DockerDaemon, data_root_holder
from orchestrator.devstack.stack import REPO_NAME, Stack
from orchestrator.errors import InfrastructureError

pytestmark = [pytest.mark.docker]


@pytest.fixture
def made(docker_client: Any) -> Iterator[list[Any]]:
    """Containers and networks this test creates, removed afterwards whatever happened."""
    objects: list[Any] = []
    yield objects
    for obj in reversed(objects):
        try:
            obj.reload()
            obj.remove(force=True) if hasattr(obj, "logs") else obj.remove()
        except docker.errors.NotFound:
            pass


def _container(client: Any, made: list[Any], image: str, network: str, labels: dict[str, str]) -> Any:
    c = client.containers.run(
        image,
        ["sleep", "300"],
        detach=True,
        network=network,
        labels=labels,
        name=f"mlt-{uuid.uuid4().hex[:10]}",
    )
    made.append(c)
    return c


def _network(client: Any, made: list[Any], name: str) -> Any:
    net = client.networks.create(name, driver="bridge", labels={"mlship.managed": "1"})
    made.append(net)
    return net


def _exists(collection: Any, key: str) -> bool:
    try:
        collection.get(key)
        return True
    except docker.errors.NotFound:
        return False


def test_stop_removes_this_runs_deploys_and_nothing_foreign(
    docker_daemon: DockerDaemon, docker_client: Any, base_image: str, made: list[Any], tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    # Before this run: a user's network with a container labelled like ours (an earlier run's deploy).
    foreign_net = _network(docker_client, made, f"mlt-foreign-{tag}-net")
    earlier = _container(docker_client, made, base_image, foreign_net.name, {"mlship.repo": REPO_NAME})
    stack = Stack(tmp_path, say=lambda _m: None, docker=DockerDaemon(host=docker_daemon.host))
    stack.snapshot()
    # During this run: our deploy (new network, labelled container), and a stranger's container.
    ours_net = _network(docker_client, made, f"mlt-ours-{tag}-net")
    ours = _container(
        docker_client, made, base_image, ours_net.name, {"mlship.repo": REPO_NAME, "mlship.app": "x"}
    )
    stranger = _container(docker_client, made, base_image, foreign_net.name, {"mlship.repo": "someone/else"})

    stack.stop()

    assert not _exists(docker_client.containers, ours.id)
    assert not _exists(docker_client.networks, ours_net.id)
    for c in (earlier, stranger):
        assert docker_client.containers.get(c.id).status == "running"
    assert docker_client.networks.get(foreign_net.id).name == foreign_net.name


def test_stop_without_deploys_removes_no_network(
    docker_daemon: DockerDaemon, docker_client: Any, made: list[Any], tmp_path: Path
) -> None:
    stack = Stack(tmp_path, say=lambda _m: None, docker=DockerDaemon(host=docker_daemon.host))
    stack.snapshot()
    late = _network(docker_client, made, f"mlt-late-{uuid.uuid4().hex[:8]}-net")  # a user's, made meanwhile
    before = {n.id for n in docker_client.networks.list()}
    stack.stop()
    assert {n.id for n in docker_client.networks.list()} >= before
    assert docker_client.networks.get(late.id).name == late.name


def _shared_holder() -> Any:
    holder = data_root_holder(Path(DEFAULT_DOCKER_DATA))
    if holder is None:
        from tests.conftest import unavailable

        unavailable(f"no running dockerd holds {DEFAULT_DOCKER_DATA}")
    return holder


def test_a_dockerd_on_the_data_root_is_found_with_its_socket(docker_daemon: DockerDaemon) -> None:
    holder = _shared_holder()
    assert holder.data_root == Path(DEFAULT_DOCKER_DATA)
    assert DockerDaemon.answers(holder.host)


def test_starting_a_second_dockerd_on_a_held_data_root_says_what_to_do_at_once(
    docker_daemon: DockerDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = _shared_holder()  # the guard: never reach the real start if detection misses it
    monkeypatch.setenv("MLSHIP_DOCKER_DATA_ROOT", DEFAULT_DOCKER_DATA)
    daemon = DockerDaemon()
    with pytest.raises(InfrastructureError) as err:
        daemon.start(work=tmp_path / "work")
    assert str(err.value) == (
        f"another dockerd (pid {holder.pid}) already uses the data root {DEFAULT_DOCKER_DATA}: "
        f"use it with `export DOCKER_HOST={holder.host}`, or stop it (kill {holder.pid})"
    )
    assert daemon.proc is None and not daemon.started_here
    assert not (tmp_path / "work").exists()


def test_stop_removes_the_network_of_a_deploy_that_already_removed_its_container(
    docker_daemon: DockerDaemon, docker_client: Any, base_image: str, made: list[Any], tmp_path: Path
) -> None:
    stack = Stack(tmp_path, say=lambda _m: None, docker=DockerDaemon(host=docker_daemon.host))
    stack.snapshot()
    tag = uuid.uuid4().hex[:8]
    failed_net = _network(docker_client, made, f"mlt-failed-{tag}-net")
    gone = _container(docker_client, made, base_image, failed_net.name, {"mlship.repo": REPO_NAME})
    gone.remove(force=True)  # a failed health check: the deploy removed its new container itself
    users = _network(docker_client, made, f"mlt-user-{tag}-net")  # a user's, created meanwhile
    stack.stop()
    assert not _exists(docker_client.networks, failed_net.id)
    assert docker_client.networks.get(users.id).name == users.name

"""The model as an OCI artifact in a real registry (``docker-registry``): published, fetched into
another workspace byte for byte, and refused when the registry's blob was tampered with or is gone:
then a deploy fails with the reason and nothing is deployed."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator import defaults
from orchestrator.build import artifacts
from orchestrator.build import model_registry as mr
from orchestrator.devstack.services import Registry, port_open, require_program, wait_for
from orchestrator.errors import InfrastructureError, ModelUnavailable, StepFailed
from tests.deploy.helpers import DeployEnv

MODEL = "model/model.skops"


def _trained(
    workspace: Path, build_id: int, data: bytes = b"\x00model bytes" * 50_000
) -> artifacts.ModelArtifact:
    """A build's artifacts as its train step leaves them: the model and its model.json."""
    d = artifacts.ensure_dir(workspace, build_id) / "model"
    d.mkdir()
    (d / "model.skops").write_bytes(data)
    (d / "model.json").write_text(json.dumps({"trees": 3}))
    art = artifacts.find_model(workspace, build_id, MODEL)
    assert art is not None
    return art


def _publish(registry: Any, workspace: Path, build_id: int, number: int, **kw: Any) -> mr.PublishedModel:
    art = _trained(workspace, build_id, **kw)
    files = mr.model_files(art, MODEL)
    reg = mr.Registry(mr.repository_of(f"{registry.addr}/house-price:{number}"), https=False)
    try:
        return mr.publish(
            reg, art, mr.model_tag(number), mr.config_blob("acme/house-price", number, "f" * 40, files), files
        )
    finally:
        reg.close()


def _blob_file(registry: Any, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return registry.directory / "data/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def _fetch(registry: Any, pub: mr.PublishedModel, root: Path) -> None:
    reg = mr.Registry(pub.repository, https=False)
    try:
        mr.fetch(reg, pub, root)
    finally:
        reg.close()


def test_published_model_is_an_oci_artifact_and_fetches_into_another_workspace(
    registry: Any, tmp_path: Path
) -> None:
    pub = _publish(registry, tmp_path / "ws-a", 3, 3)
    assert pub.ref == f"{registry.addr}/house-price:model-3"
    # What the registry holds under the tag, as any OCI client reads it.
    res = requests.get(
        f"http://{registry.addr}/v2/house-price/manifests/model-3",
        headers={"Accept": mr.MANIFEST_TYPE},
        timeout=10,
    )
    assert res.status_code == 200 and res.headers["Docker-Content-Digest"] == pub.manifest
    doc = res.json()
    assert doc["artifactType"] == doc["config"]["mediaType"] == "application/vnd.mlship.model.v1+json"
    assert [x["annotations"][mr.TITLE] for x in doc["layers"]] == [MODEL, "model/model.json"]

    other = tmp_path / "ws-b"
    _fetch(registry, pub, artifacts.artifacts_dir(other, 3))
    got = artifacts.find_model(other, 3, MODEL)
    assert got is not None and got.sha256 == pub.sha256 and got.meta is not None
    assert got.path.read_bytes() == (tmp_path / "ws-a/artifacts/3" / MODEL).read_bytes()
    assert json.loads(got.meta.read_text()) == {"trees": 3}


def test_a_pruned_copy_is_whole_again_after_a_fetch(registry: Any, tmp_path: Path) -> None:
    pub = _publish(registry, tmp_path / "ws", 4, 4)
    artifacts.prune(tmp_path / "ws", 4, "keep_artifacts")
    with pytest.raises(artifacts.ArtifactsPruned):
        artifacts.find_model(tmp_path / "ws", 4, MODEL)
    _fetch(registry, pub, artifacts.artifacts_dir(tmp_path / "ws", 4))
    got = artifacts.find_model(tmp_path / "ws", 4, MODEL)
    assert got is not None and got.sha256 == pub.sha256


def _flip(data: bytes) -> bytes:
    """Same size, one byte flipped: only the hash can tell."""
    return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]


@pytest.mark.parametrize(
    "tamper, error",
    [
        (_flip, r"model/model.skops has sha256 \w+ .*not the recorded .*tampered"),
        (lambda data: data + b"more", r"blob for model/model.skops is larger than recorded: refused"),
        (lambda data: data[:-1], r"model/model.skops has sha256 \w+ \(119999 bytes\), not the recorded"),
    ],
    ids=["flipped", "longer", "shorter"],
)
def test_a_tampered_blob_is_refused_and_nothing_is_written(
    registry: Any, tmp_path: Path, tamper: Any, error: str
) -> None:
    unique = (b"honest model" * 10_000)[:-32] + uuid.uuid4().hex.encode()  # 120000 bytes, a blob of its own
    pub = _publish(registry, tmp_path / "ws-a", 5, 5, data=unique)
    blob = _blob_file(registry, pub.files[0].digest)
    blob.write_bytes(tamper(blob.read_bytes()))
    root = artifacts.artifacts_dir(tmp_path / "ws-b", 5)
    with pytest.raises(mr.RegistryError, match=error):
        _fetch(registry, pub, root)
    assert not (root / MODEL).exists()
    assert not list((tmp_path / "ws-b/artifacts").glob(".fetch-*"))  # the staging directory went too


def test_a_missing_blob_is_a_clear_error(registry: Any, tmp_path: Path) -> None:
    pub = _publish(registry, tmp_path / "ws-a", 6, 6, data=b"a model that will vanish" * 5_000)
    shutil.rmtree(_blob_file(registry, pub.files[0].digest).parent)
    root = artifacts.artifacts_dir(tmp_path / "ws-b", 6)
    with pytest.raises(mr.RegistryError, match=r"fetching model/model.skops .* answered HTTP 404"):
        _fetch(registry, pub, root)
    assert not (root / MODEL).exists()


def test_an_unreachable_registry_says_so(tmp_path: Path) -> None:
    from orchestrator.devstack.services import free_port

    reg = mr.Registry(mr.Repository(f"127.0.0.1:{free_port()}", "house-price"), https=False, timeout=5)
    with pytest.raises(mr.RegistryError, match="is unreachable") as exc:
        reg.get_manifest("sha256:" + "0" * 64)
    assert exc.value.unreachable


@pytest.mark.docker
@pytest.mark.ssh
def test_deploying_a_tampered_model_fails_and_deploys_nothing(
    deploy_env: DeployEnv, registry: Any, docker_client: Any, tmp_path: Path
) -> None:
    """Build 1's model was published by another worker (its workspace is not this one's); the blob in
    the registry was altered since: the deploy stops before touching the host, with the reason."""
    build = deploy_env.new_build(1)
    pub = _publish(registry, tmp_path / "elsewhere", build.id, 1, data=b"model of build 1" * 20_000)
    deploy_env.store.update_build(build.id, model=pub.to_dict())
    blob = _blob_file(registry, pub.files[0].digest)
    data = bytearray(blob.read_bytes())
    data[7] ^= 0x01
    blob.write_bytes(bytes(data))
    build = deploy_env.store.get_build(build.id)

    with pytest.raises(StepFailed) as exc:
        deploy_env.deploy(build)
    assert isinstance(exc.value, ModelUnavailable)
    assert exc.value.code == "model_unavailable" and exc.value.step_status == "failed"
    assert "cannot ship the model of build #1" in str(exc.value) and "tampered" in str(exc.value)
    assert docker_client.containers.list(all=True, filters={"label": f"mlship.app={deploy_env.name}"}) == []
    assert deploy_env.store.get_deployment("acme/house-price", "qa") is None
    assert not (deploy_env.settings.workspace / "artifacts" / str(build.id) / MODEL).exists()


class HtpasswdRegistry(Registry):
    """``docker-registry`` with its htpasswd (Basic) auth: user ``ci``, password ``s3cret``."""

    def start(self) -> HtpasswdRegistry:
        import bcrypt

        exe = require_program("docker-registry", "docker-registry")
        self.directory.mkdir(parents=True, exist_ok=True)
        users = self.directory / "htpasswd"
        users.write_text("ci:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=5)).decode() + "\n")
        cfg = self.directory / "config.yml"
        cfg.write_text(
            "version: 0.1\nlog: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.directory / 'data'}}}}}\n"
            f"auth: {{htpasswd: {{realm: mlship-test, path: {users}}}}}\n"
            f"http: {{addr: {self.addr}}}\n"
        )
        with open(self.directory / "registry.log", "ab") as log:
            self.proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port), defaults.SERVICE_START_TIMEOUT, f"registry on {self.addr}")
        return self


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    from tests.conftest import unavailable

    try:
        reg = HtpasswdRegistry(tmp_path / "auth-registry").start()
    except InfrastructureError as exc:
        unavailable(str(exc))
    yield reg
    reg.stop()


def test_basic_auth_with_the_push_credentials_and_a_clear_refusal_without(
    auth_registry: Registry, tmp_path: Path
) -> None:
    art = _trained(tmp_path / "ws", 8)
    files = mr.model_files(art, MODEL)
    config = mr.config_blob("acme/house-price", 8, "f" * 40, files)
    repo = mr.repository_of(f"{auth_registry.addr}/house-price:8")

    anonymous = mr.Registry(repo, https=False)
    with pytest.raises(mr.RegistryError, match=r"asks for credentials .*Basic.*set docker_push\.auth"):
        mr.publish(anonymous, art, "model-8", config, files)
    wrong = mr.Registry(repo, {"username": "ci", "password": "nope"}, https=False)
    with pytest.raises(mr.RegistryError, match=r"HTTP 401 .*check the credentials"):
        mr.publish(wrong, art, "model-8", config, files)

    ci = mr.Registry(repo, {"username": "ci", "password": "s3cret"}, https=False)
    pub = mr.publish(ci, art, "model-8", config, files)
    mr.fetch(ci, pub, artifacts.artifacts_dir(tmp_path / "other", 8))
    got = artifacts.find_model(tmp_path / "other", 8, MODEL)
    assert got is not None and got.sha256 == art.sha256
    for r in (anonymous, wrong, ci):
        r.close()

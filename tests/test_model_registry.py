"""The model artifact's reference, manifest and record, and the checks a fetch makes (pure logic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build import model_registry as mr

SHA_A = "a" * 64
SHA_B = "b" * 64
FILES = (mr.ModelFile("model/model.skops", SHA_A, 1234), mr.ModelFile("model/model.json", SHA_B, 56))


@pytest.mark.parametrize(
    "image, registry, name",
    [
        ("127.0.0.1:5000/house-price:7", "127.0.0.1:5000", "house-price"),
        ("127.0.0.1:5000/house-price", "127.0.0.1:5000", "house-price"),
        ("reg.example.com/team/app:1@sha256:" + SHA_A, "reg.example.com", "team/app"),
        ("reg.example.com/team/app@sha256:" + SHA_A, "reg.example.com", "team/app"),
        ("localhost/app:latest", "localhost", "app"),
        ("acme/app:3", "registry-1.docker.io", "acme/app"),
        ("app", "registry-1.docker.io", "library/app"),
        ("docker.io/acme/app:1", "registry-1.docker.io", "acme/app"),
    ],
)
def test_repository_of_an_image_ref(image: str, registry: str, name: str) -> None:
    assert mr.repository_of(image) == mr.Repository(registry, name)


def test_refs_by_tag_and_by_digest() -> None:
    repo = mr.Repository("127.0.0.1:5000", "house-price")
    assert repo.ref(mr.model_tag(12)) == "127.0.0.1:5000/house-price:model-12"
    assert repo.ref("sha256:" + SHA_A) == f"127.0.0.1:5000/house-price@sha256:{SHA_A}"


def test_manifest_is_an_oci_artifact_with_the_model_media_types() -> None:
    config = mr.config_blob("acme/house-price", 12, "f" * 40, FILES)
    body = mr.manifest_blob(config, FILES, {mr.TITLE: "model/model.skops"})
    doc = json.loads(body)
    assert doc == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.mlship.model.v1+json",
        "config": {
            "mediaType": "application/vnd.mlship.model.v1+json",
            "digest": mr.digest_of(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.mlship.model.file.v1",
                "digest": f"sha256:{SHA_A}",
                "size": 1234,
                "annotations": {"org.opencontainers.image.title": "model/model.skops"},
            },
            {
                "mediaType": "application/vnd.mlship.model.file.v1",
                "digest": f"sha256:{SHA_B}",
                "size": 56,
                "annotations": {"org.opencontainers.image.title": "model/model.json"},
            },
        ],
        "annotations": {"org.opencontainers.image.title": "model/model.skops"},
    }
    assert json.loads(config) == {
        "repo": "acme/house-price",
        "build_number": 12,
        "revision": "f" * 40,
        "files": [
            {"path": "model/model.skops", "sha256": SHA_A, "size": 1234},
            {"path": "model/model.json", "sha256": SHA_B, "size": 56},
        ],
    }
    assert mr.manifest_blob(config, FILES, {}) == mr.manifest_blob(config, FILES, {})  # canonical bytes


def _published(body: bytes) -> mr.PublishedModel:
    return mr.PublishedModel("127.0.0.1:5000/house-price:model-12", mr.digest_of(body), FILES)


def test_the_record_round_trips_and_names_the_model_first() -> None:
    pub = _published(b"{}")
    d = pub.to_dict()
    assert d["sha256"] == SHA_A and d["manifest"].startswith("sha256:")
    assert mr.PublishedModel.from_dict(d) == pub
    assert pub.repository == mr.Repository("127.0.0.1:5000", "house-price")


@pytest.mark.parametrize(
    "change",
    [
        {"files": []},
        {"files": [{"path": "../../etc/passwd", "sha256": SHA_A, "size": 1}]},
        {"files": [{"path": "/etc/passwd", "sha256": SHA_A, "size": 1}]},
        {"files": [{"path": "model/x", "sha256": SHA_A}]},
        {"manifest": "model-12"},
        {"ref": None, "manifest": None},
    ],
)
def test_a_malformed_or_escaping_record_is_no_model(change: dict[str, Any]) -> None:
    d = {**_published(b"{}").to_dict(), **change}
    if change.get("ref", "") is None:
        del d["ref"]
    assert mr.PublishedModel.from_dict(d) is None


def test_a_fetched_manifest_must_be_the_recorded_one() -> None:
    config = mr.config_blob("r", 1, "f" * 40, FILES)
    body = mr.manifest_blob(config, FILES, {})
    mr.check_manifest(body, _published(body))  # the recorded one: accepted
    other = mr.manifest_blob(config, FILES, {"x": "y"})
    with pytest.raises(
        mr.RegistryError, match=r"has digest sha256:\w+, not the recorded sha256:\w+: refused"
    ):
        mr.check_manifest(other, _published(body))
    fewer = mr.manifest_blob(config, FILES[:1], {})
    with pytest.raises(mr.RegistryError, match="does not list the recorded model files"):
        mr.check_manifest(fewer, mr.PublishedModel("r:model-1", mr.digest_of(fewer), FILES))


INFO = {
    "RegistryConfig": {
        "IndexConfigs": {
            "docker.io": {"Name": "docker.io", "Secure": True},
            "reg.internal:5000": {"Name": "reg.internal:5000", "Secure": False},
        },
        "InsecureRegistryCIDRs": ["127.0.0.0/8", "10.9.0.0/16"],
    }
}


@pytest.mark.parametrize(
    "registry, https",
    [
        ("127.0.0.1:5000", False),  # loopback: insecure by Docker's default CIDR
        ("127.0.0.2", False),
        ("10.9.3.4:443", False),
        ("10.10.0.1:5000", True),
        ("reg.internal:5000", False),  # the daemon's --insecure-registry
        ("docker.io", True),
        ("[::1]:5000", True),  # not in the CIDRs
        ("[::1]", True),
    ],
)
def test_tls_as_the_docker_daemon_decides(registry: str, https: bool) -> None:
    assert mr.secure(registry, INFO) is https


def test_no_registry_config_means_tls() -> None:
    assert mr.secure("127.0.0.1:5000", {}) is True


def test_bearer_challenge_parameters() -> None:
    challenge = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/app:pull,push"'
    )
    assert mr.bearer_params(challenge) == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:team/app:pull,push",
    }


@pytest.mark.parametrize("rel", ["", "/abs", "../up", "a/../../b", "a\\b"])
def test_file_paths_must_stay_inside_the_artifacts(rel: str) -> None:
    with pytest.raises(mr.RegistryError, match="not a plain relative path"):
        mr.check_path(rel)


def test_published_paths_are_where_find_model_looks_even_through_a_symlink(tmp_path: Path) -> None:
    from orchestrator.build import artifacts

    d = artifacts.ensure_dir(tmp_path, 9) / "model"
    d.mkdir()
    (d / "v2.skops").write_bytes(b"weights")
    (d / "model.skops").symlink_to("v2.skops")  # inside the directory: allowed
    (d / "model.json").write_text("{}")
    art = artifacts.find_model(tmp_path, 9, "model/model.skops")
    assert art is not None
    files = mr.model_files(art, "model/model.skops")
    assert [(f.path, f.size) for f in files] == [("model/model.skops", 7), ("model/model.json", 2)]
    assert files[0].sha256 == art.sha256

"""The edge image: HAProxy in an image mlship builds itself, pushed to the pipeline's registry.

The image is built FROM the environment's ``edge.base_image`` out of this directory's files (Dockerfile,
entrypoint.sh, haproxy.cfg) and tagged ``haproxy<series>-<hash>``, the hash covering those files and the
base image: a change to either makes a new tag, the same inputs find the image already pushed. Hosts
pull it like any image. See docs/deploy.md, "The edge".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from orchestrator.errors import InfrastructureError

HAPROXY_SERIES = "2.6"  # the Dockerfile pins haproxy=2.6.* (Debian bookworm)
FILES = ("Dockerfile", "entrypoint.sh", "haproxy.cfg", "shadow.lua")
REPOSITORY = "mlship-edge"


def _files() -> dict[str, bytes]:
    root = resources.files(__name__)
    return {name: root.joinpath(name).read_bytes() for name in FILES}


def tag(base_image: str) -> str:
    """``haproxy2.6-<12 hex>``: the HAProxy series plus a hash of the image's files and base image."""
    h = hashlib.sha256(base_image.encode() + b"\0")
    for name, data in sorted(_files().items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return f"haproxy{HAPROXY_SERIES}-{h.hexdigest()[:12]}"


def repository(app_image: str, configured: str | None = None) -> str:
    """Where the edge image goes: ``configured``, else ``mlship-edge`` in the app image's registry (or,
    for an image without a registry part, beside it: ``<namespace>/mlship-edge``)."""
    if configured:
        return configured
    ref = app_image.split("@", 1)[0]
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return f"{first}/{REPOSITORY}"
    namespace = ref.rsplit("/", 1)[0] if "/" in ref else "library"
    return f"{namespace}/{REPOSITORY}"


@dataclass(frozen=True)
class EdgeImage:
    repository: str
    tag: str
    base_image: str

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


def ensure(client: Any, image: EdgeImage, auth: Mapping[str, str] | None, log: Callable[[str], None]) -> str:
    """Make sure ``image`` is in its registry: found there, or built here and pushed. Returns its ref."""
    import docker.errors

    try:
        client.images.get_registry_data(image.ref, auth_config=dict(auth) if auth else None)
        log(f"edge image {image.ref} is in the registry")
        return image.ref
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "not found" not in str(exc).lower() and "unknown" not in str(exc).lower():
            raise InfrastructureError(f"cannot look up the edge image {image.ref}: {exc}") from exc
    log(f"building the edge image {image.ref} FROM {image.base_image}")
    _build(client, image, log)
    _push(client, image, auth, log)
    return image.ref


def _build(client: Any, image: EdgeImage, log: Callable[[str], None]) -> None:
    import docker.errors

    path = str(resources.files(__name__))
    try:
        for entry in client.api.build(
            path=path, tag=image.ref, buildargs={"BASE_IMAGE": image.base_image}, rm=True, decode=True
        ):
            if "error" in entry:
                raise InfrastructureError(f"building the edge image failed: {entry['error'].strip()}")
            if "stream" in entry and entry["stream"].strip():
                log(entry["stream"].rstrip())
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"building the edge image failed: {exc}") from exc


def _push(client: Any, image: EdgeImage, auth: Mapping[str, str] | None, log: Callable[[str], None]) -> None:
    import docker.errors

    try:
        stream = client.api.push(
            image.repository,
            tag=image.tag,
            stream=True,
            decode=True,
            auth_config=dict(auth) if auth else None,
        )
        for entry in stream:
            if "error" in entry:
                raise InfrastructureError(f"pushing the edge image {image.ref} failed: {entry['error']}")
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"pushing the edge image {image.ref} failed: {exc}") from exc
    log(f"pushed the edge image {image.ref}")

"""Build small test images from a Dockerfile text, without a directory on disk."""

from __future__ import annotations

import io
import tarfile
from typing import Any


def build_from_dockerfile(docker_client: Any, dockerfile: str, tag: str) -> None:
    buf = io.BytesIO()
    data = dockerfile.encode()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    docker_client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)

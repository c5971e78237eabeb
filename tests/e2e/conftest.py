"""The whole system as real processes (``Stack``) for one end-to-end module at a time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.devstack.services import free_port
from orchestrator.devstack.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_daemon, base_image) -> Iterator[Stack]:
    """Redis, registry, two sshd hosts, web and a worker; pushes to main are a trigger too."""
    s = Stack(
        tmp_path_factory.mktemp("e2e"), say=lambda _msg: None, web_port=free_port(), push_branches=("main",)
    )
    try:
        s.start_services()
        s.write_config()
        s.start_app()
        yield s
    finally:
        s.stop()

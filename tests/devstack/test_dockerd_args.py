"""Reading a dockerd's command line: the data root and socket it uses (pure, table-driven)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.devstack.services import DockerdProcess

CASES = [
    (("dockerd",), "/var/lib/docker", "unix:///var/run/docker.sock"),
    (("dockerd", "--data-root", "/d", "-H", "unix:///s.sock"), "/d", "unix:///s.sock"),
    (("/usr/bin/dockerd", "--data-root=/d2", "--host=tcp://127.0.0.1:2375"), "/d2", "tcp://127.0.0.1:2375"),
    (("dockerd", "-g", "/old", "--pidfile", "/p"), "/old", "unix:///var/run/docker.sock"),
    (("dockerd", "--data-root"), "/var/lib/docker", "unix:///var/run/docker.sock"),
]


@pytest.mark.parametrize(("argv", "root", "host"), CASES)
def test_dockerd_options(argv: tuple[str, ...], root: str, host: str) -> None:
    proc = DockerdProcess(1, argv)
    assert proc.data_root == Path(root)
    assert proc.host == host

"""The pipeline test bed (settings on the real services, builds made as the webhook makes them) for the
fault tests, plus real ``orchestrator worker`` processes with their own server configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.pipeline.conftest import REPO, make_settings, settings, store  # noqa: F401  (fixtures)


class Workers:
    """Starts ``orchestrator worker`` processes (each in its own session) and stops them all."""

    def __init__(self, base: Any, tmp_path: Path, clone_url: str) -> None:
        self.settings = base
        self.tmp = tmp_path
        self.clone_url = clone_url
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(
        self, name: str, extra_vars: dict[str, str], reach: dict[str, Any] | None = None, **server: Any
    ) -> dict[str, str]:
        repo: dict[str, Any] = {"clone_url": self.clone_url, **({"reach": reach} if reach else {})}
        config = self.tmp / f"server-{name}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "repositories": {REPO: repo},
                    "vars": {**self.settings.vars, **extra_vars},
                    **server,
                }
            )
        )
        return {
            **os.environ,
            "MLSHIP_CONFIG": str(config),
            "MLSHIP_REDIS_URL": self.settings.redis_url,
            "MLSHIP_WORKSPACE": str(self.tmp / f"ws-{name}"),
            "MLSHIP_DOCKER_HOST": self.settings.docker_host,
            "MLSHIP_LEASE_SECONDS": str(self.settings.lease_seconds),
            "GITHUB_WEBHOOK_SECRET": "whsec",
        }

    def start(
        self,
        name: str,
        extra_vars: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        reach: dict[str, Any] | None = None,
        **server: Any,
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker-{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "worker"],
            env={**self.env(name, extra_vars or {}, reach, **server), **(env or {})},
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


@pytest.fixture
def workers(settings: Any, tmp_path: Path, git_origin: Any) -> Iterator[Workers]:  # noqa: F811 - the fixture
    w = Workers(settings, tmp_path, git_origin.url)
    yield w
    w.stop()

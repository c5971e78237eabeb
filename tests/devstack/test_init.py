"""``mlship init``: what it reads from a Dockerfile (table-driven), and the pipeline it writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli.init import DockerfileFacts, read_dockerfile, starter_pipeline
from orchestrator.errors import ConfigError
from orchestrator.pipeline import load_pipeline

CASES = [
    ("FROM python:3.11\nEXPOSE 5000\n", DockerfileFacts(5000, "/", False)),
    ("FROM x\nEXPOSE 8080/tcp 9090\n", DockerfileFacts(8080, "/", False)),
    ("FROM x\nENV PORT=7000\nEXPOSE $PORT\n", DockerfileFacts(7000, "/", False)),
    ("FROM x\nARG PORT=7100\nEXPOSE ${PORT}\n", DockerfileFacts(7100, "/", False)),
    ("FROM x\nENV PORT 7200\nexpose ${PORT}\n", DockerfileFacts(7200, "/", False)),
    ("FROM x\n# EXPOSE 1\nEXPOSE 3000\n", DockerfileFacts(3000, "/", False)),
    (
        "FROM x\nEXPOSE 3000\nHEALTHCHECK CMD curl -f http://localhost:3000/healthz || exit 1\n",
        DockerfileFacts(3000, "/healthz", False),
    ),
    (
        'FROM x\nEXPOSE 3000\nHEALTHCHECK --interval=5s \\\n  CMD ["wget", "-qO-", "http://127.0.0.1:3000/ready?full=1"]\n',
        DockerfileFacts(3000, "/ready?full=1", False),
    ),
    (
        "FROM x\nEXPOSE 3000\nHEALTHCHECK CMD wget -qO- http://localhost:3000\n",
        DockerfileFacts(3000, "/", False),
    ),
    ("FROM x\nEXPOSE 3000\nHEALTHCHECK NONE\n", DockerfileFacts(3000, "/", False)),
    ("FROM x\nEXPOSE 3000\nHEALTHCHECK CMD pg_isready\n", DockerfileFacts(3000, "/", False)),
    ("FROM build AS b\nEXPOSE 1111\nFROM run\nEXPOSE 2222\n", DockerfileFacts(2222, "/", False)),
    ("FROM build AS b\nEXPOSE 1111\nFROM run\n", DockerfileFacts(None, "/", False)),
    ("ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\nEXPOSE 5000\n", DockerfileFacts(5000, "/", True)),
    ("FROM x\n", DockerfileFacts(None, "/", False)),
]


@pytest.mark.parametrize(("text", "facts"), CASES)
def test_read_dockerfile(text: str, facts: DockerfileFacts) -> None:
    assert read_dockerfile(text) == facts


def test_the_example_dockerfile() -> None:
    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    assert read_dockerfile(text) == DockerfileFacts(5000, "/health", True)


def test_starter_pipeline_is_valid_and_uses_what_it_read() -> None:
    text = starter_pipeline("shop", DockerfileFacts(3000, "/healthz", False))
    names = {"BUILD_NUMBER": "1", "REGISTRY": "r:5000", "BASE_IMAGE": "b"}
    names |= {
        f"{e}_{k}": v for e in ("QA", "PROD") for k, v in (("HOST", "h"), ("PORT", "22"), ("USER", "u"))
    }
    p = load_pipeline(text, "pipeline.yaml", variables=names)
    assert [s.name for s in p.steps] == ["build", "push", "deploy-qa", "deploy-prod"]
    for env in ("qa", "prod"):
        assert p.environments[env].container.port == 3000
        assert p.environments[env].container.name == f"shop-{env}"
        assert p.environments[env].health.path == "/healthz"
    assert "BASE_IMAGE" not in text


def test_no_expose_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"the Dockerfile has no EXPOSE: add `EXPOSE <port>`"):
        starter_pipeline("shop", DockerfileFacts(None))


def _mlship(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=60
    )


def test_init_writes_a_pipeline_that_validate_accepts(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM x\nEXPOSE 8080\n")
    out = _mlship("init", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"wrote {tmp_path / 'pipeline.yaml'}: build, push, deploy-qa, deploy-prod")
    checked = _mlship("validate", str(tmp_path / "pipeline.yaml"))
    assert checked.returncode == 0, checked.stderr
    again = _mlship("init", str(tmp_path))
    assert again.returncode == 2 and "exists already (use --force to replace it)" in again.stderr


def test_init_without_a_dockerfile_says_so(tmp_path: Path) -> None:
    out = _mlship("init", str(tmp_path))
    assert out.returncode == 2
    assert (
        out.stderr
        == f"error: {tmp_path / 'Dockerfile'} does not exist: mlship init needs the repository's Dockerfile\n"
    )
    assert not (tmp_path / "pipeline.yaml").exists()

"""``mlship standalone --demo`` from an installed wheel, far from the checkout.

The wheel is built from this checkout, installed into a fresh virtualenv in a temporary directory,
and the demo runs there against the shared Docker daemon: a merge becomes a build, QA and Prod
deploys, and a prediction from Prod. Nothing of the checkout is on the path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.devstack.services import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]
PROD_ANSWER = re.compile(
    r"^.*\] prod: POST http://127\.0\.0\.1:\d+/predict .*→ 200 \{\"predictions?\":", re.M
)


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, (
        f"{argv[:3]} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv outside the checkout with only the wheel (and its dependencies) installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(REPO_ROOT)])
    wheel = next((tmp / "dist").glob("mlship-*.whl"))
    _run([sys.executable, "-m", "venv", str(tmp / "venv")])
    _run([str(tmp / "venv/bin/python"), "-m", "pip", "install", "-q", str(wheel)])
    return tmp / "venv"


def _clean_env(venv: Path, **extra: str) -> dict[str, str]:
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith(("MLSHIP_", "ORCHESTRATOR_"))
    }
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return {**env, **extra}


def test_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    out = _run(
        [
            str(installed / "bin/python"),
            "-c",
            "import orchestrator, inference; print(orchestrator.__file__); print(inference.__file__)",
        ],
        cwd=tmp_path,
        env=_clean_env(installed),
    )
    for line in out.stdout.split():
        assert str(installed) in line and str(REPO_ROOT) not in line, line
    assert (installed / "bin/mlship").exists() and (installed / "bin/orchestrator").exists()


def test_standalone_demo_from_the_wheel_prints_prods_prediction(
    installed: Path, tmp_path: Path, docker_daemon
) -> None:
    state = tmp_path / "state"
    proc = subprocess.run(
        [
            str(installed / "bin/mlship"),
            "standalone",
            "--demo",
            "--exit",
            "--state",
            str(state),
            "--port",
            str(free_port()),
        ],
        cwd=tmp_path,
        env=_clean_env(installed, DOCKER_HOST=docker_daemon.host),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    out = proc.stdout + proc.stderr
    logs = "".join(p.read_text(errors="replace")[-2000:] for p in sorted((state / "logs").glob("*.log")))
    assert proc.returncode == 0, out[-6000:] + "\n--- logs ---\n" + logs
    assert "finished: success" in out, out[-4000:]
    assert PROD_ANSWER.search(out), out[-4000:]
    assert "stopping" in out

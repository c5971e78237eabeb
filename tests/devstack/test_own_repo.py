"""``mlship standalone --repo PATH`` with a throwaway repository that knows nothing of mlship.

The repository has its own Dockerfile and a tiny Flask app; ``mlship init`` writes its pipeline.yaml.
Standalone validates it (a broken one stops the start at once with file:line), prints a curl that
sends a signed push delivery, and that curl creates build #1, which goes on to QA and Prod.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from orchestrator.cli.init import PROD_PUBLISH, QA_PUBLISH
from orchestrator.devstack.services import free_port, git

pytestmark = [pytest.mark.docker, pytest.mark.slow]
MLSHIP = str(Path(sys.executable).parent / "mlship")
DOCKERFILE = """\
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
RUN python3 -m venv /venv && /venv/bin/pip install -q flask==3.*
COPY app.py /app/app.py
EXPOSE 5050
HEALTHCHECK CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5050/up')"]
CMD ["/venv/bin/flask", "--app", "/app/app.py", "run", "--host", "0.0.0.0", "--port", "5050"]
"""
APP = """\
from flask import Flask

app = Flask(__name__)


@app.get("/up")
def up():
    return "up"


@app.get("/")
def hello():
    return "hello from a repository that knows nothing of mlship"
"""


def _user_repo(path: Path, pipeline: str | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text(DOCKERFILE)
    (path / "app.py").write_text(APP)
    if pipeline is None:
        out = subprocess.run([MLSHIP, "init", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    else:
        (path / "pipeline.yaml").write_text(pipeline)
    git("init", "-q", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "a Flask app", cwd=path)
    return path


def _env(docker_host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSHIP_", "ORCHESTRATOR_"))}
    return {**env, "DOCKER_HOST": docker_host}


def test_a_broken_pipeline_stops_the_start_with_file_and_line(tmp_path: Path, docker_daemon) -> None:
    bad = "version: 1\nname: shop\nimage: r/shop\nsteps:\n  - name: build\n    docker_bild: {}\n"
    repo = _user_repo(tmp_path / "shop", pipeline=bad)
    out = subprocess.run(
        [
            MLSHIP,
            "standalone",
            "--repo",
            str(repo),
            "--state",
            str(tmp_path / "state"),
            "--port",
            str(free_port()),
        ],
        env=_env(docker_daemon.host),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert f"error: {repo}/pipeline.yaml:6: steps[0].docker_bild: unknown key 'docker_bild'" in out.stderr
    assert "Redis" not in out.stdout.split("your repositories")[-1]  # nothing else was started


@dataclass
class Running:
    proc: subprocess.Popen[str]
    url: str
    banner: list[str]
    sent: subprocess.CompletedProcess[str] | None = None

    def curl(self) -> str:
        i = next(i for i, line in enumerate(self.banner) if "first build" in line)
        return self.banner[i + 2]

    def first_build(self) -> subprocess.CompletedProcess[str]:
        """Run the banner's curl once for the module (each test may be run on its own)."""
        if self.sent is None:
            self.sent = subprocess.run(["sh", "-c", self.curl()], capture_output=True, text=True, timeout=60)
        return self.sent


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, docker_daemon, base_image) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("own")
    repo = _user_repo(tmp / "shop")
    client = docker_daemon.client()
    networks_before = {n.name for n in client.networks.list()}
    port = free_port()
    proc = subprocess.Popen(
        [MLSHIP, "standalone", "--repo", str(repo), "--state", str(tmp / "state"), "--port", str(port)],
        env=_env(docker_daemon.host),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "press Ctrl-C" in line:
                break
        assert proc.poll() is None, "\n".join(lines)
        yield Running(proc, f"http://127.0.0.1:{port}", lines)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
    # Stopping removed what this run deployed for the repository, networks included.
    try:
        assert client.containers.list(all=True, filters={"label": "mlship.repo=local/shop"}) == []
        assert {n.name for n in client.networks.list() if n.name.startswith("shop-")} <= networks_before
    finally:
        client.close()


def test_banner_validates_and_shows_webhook_secret_and_curl(running: Running) -> None:
    text = "\n".join(running.banner)
    assert re.search(r"local/shop ← .*/shop \(main at [0-9a-f]{7}\): pipeline.yaml ok", text), text
    assert f"    webhook URL    {running.url}/webhooks/github" in running.banner
    assert re.search(r"^    webhook secret [0-9a-f]{40}$", text, re.M)
    assert running.curl().startswith('body=\'{"ref":"refs/heads/main"')


def test_the_printed_curl_creates_build_1(running: Running) -> None:
    out = running.first_build()
    assert out.returncode == 0, out.stderr
    assert '"verdict":"queued"' in out.stdout.replace(" ", ""), out.stdout
    build = requests.get(f"{running.url}/api/v1/builds/1", timeout=10).json()
    assert (build["number"], build["repo"], build["trigger"]) == (1, "local/shop", "push")


def _finished(url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        build = requests.get(url, timeout=10).json()
        if build["status"] not in ("queued", "running"):
            return build
        time.sleep(1)
    raise AssertionError(f"build not finished within {timeout}s")


def test_build_1_reaches_prod(running: Running) -> None:
    assert running.first_build().returncode == 0
    build = _finished(f"{running.url}/api/v1/builds/1", 900)
    steps = {s["name"]: (s["status"], s.get("error")) for s in build["steps"]}
    assert build["status"] == "success", (build.get("error"), steps)
    for port in (QA_PUBLISH, PROD_PUBLISH):
        resp = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert resp.text == "hello from a repository that knows nothing of mlship"

"""End to end with a real worker process: trigger a branch through the API over HTTP, the worker
clones the git origin and runs a tiny pipeline FROM the base image in the real Docker daemon, the CLI
follows the live log over SSE, and GitHub's stand-in records pending then success for the commit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from orchestrator import create_app
from orchestrator.cli.client import Client

from .conftest import REPO, TOKEN, LiveServer, auth, make_settings

pytestmark = pytest.mark.docker

DOCKERFILE = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /work\nWORKDIR /work\n"
PIPELINE = """\
version: 1
name: tiny
image: "${REGISTRY}/tiny"
steps:
  - name: build
    docker_build: {context: small, dockerfile: Dockerfile, build_args: {BASE_IMAGE: "${BASE_IMAGE}"}}
  - name: test
    docker_run: {command: [sh, -c, "for i in 1 2 3; do echo tiny test $i; sleep 0.3; done"]}
"""


def cli(url: str, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCHESTRATOR_URL": url, "ORCHESTRATOR_TOKEN": token or ""}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_trigger_run_follow_and_report(
    redis_url, git_origin, docker_daemon, registry, base_image, github_api, tmp_path: Path
):
    sha = git_origin.commit(
        "main", {"small/Dockerfile": DOCKERFILE, "pipeline.yaml": PIPELINE}, "Tiny pipeline for the API test"
    )
    common = {
        "github_api_url": github_api.url,
        "docker_host": docker_daemon.host,
        "vars": {"REGISTRY": registry.addr, "BASE_IMAGE": base_image},
    }
    app = create_app(
        make_settings(
            redis_url,
            clone_url=git_origin.url,
            workspace=tmp_path / "ws",
            public_url="http://ci.test",
            secrets={"GITHUB_TOKEN": "ghp_stand_in"},
            **common,
        )
    )
    with LiveServer(app) as server:
        resp = requests.post(
            f"{server.url}/api/v1/builds", json={"repo": REPO, "ref": "main"}, headers=auth(), timeout=30
        )
        assert resp.status_code == 201, resp.text
        build = resp.json()
        assert build["sha"] == sha

        config = tmp_path / "server.yaml"
        config.write_text(
            yaml.safe_dump({"repositories": {REPO: {"clone_url": git_origin.url}}, "vars": common["vars"]})
        )
        env = {
            **os.environ,
            "ORCHESTRATOR_CONFIG": str(config),
            "ORCHESTRATOR_REDIS_URL": redis_url,
            "ORCHESTRATOR_WORKSPACE": str(tmp_path / "worker-ws"),
            "ORCHESTRATOR_DOCKER_HOST": docker_daemon.host,
            "ORCHESTRATOR_PUBLIC_URL": "http://ci.test",
            "ORCHESTRATOR_GITHUB_API_URL": github_api.url,
            "GITHUB_TOKEN": "ghp_stand_in",
            "GITHUB_WEBHOOK_SECRET": "whsec",
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "worker", "--burst"],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # Follow the live log over SSE while the worker runs (the CLI's client).
            lines, end = [], None
            for event, _id, data in Client(server.url, TOKEN).follow(build["id"]):
                if event == "log":
                    lines.append(f"[{data['step']}] {data['text']}")
                elif event == "end":
                    end = data
            assert worker.wait(180) == 0, worker.stderr.read().decode()[-2000:] if worker.stderr else ""
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        assert end is not None and end["status"] == "success", (end, lines[-20:])
        assert [ln for ln in lines if "tiny test" in ln][-3:] == [f"[test] tiny test {i}" for i in (1, 2, 3)]

        done = requests.get(f"{server.url}/api/v1/builds/{build['id']}", timeout=10).json()
        assert done["status"] == "success"
        assert [s["status"] for s in done["steps"]] == ["success", "success"]
        states = [c.body["state"] for c in github_api.calls]
        assert states == ["pending", "success"]
        assert {c.path for c in github_api.calls} == {f"/repos/{REPO}/statuses/{sha}"}
        assert github_api.calls[-1].body["target_url"] == f"http://ci.test/builds/{build['id']}"

        # The CLI against the same server.
        listing = cli(server.url, "builds")
        assert listing.returncode == 0, listing.stderr
        assert f"#{build['number']}" in listing.stdout and "success" in listing.stdout
        log = cli(server.url, "logs", str(build["id"]))
        assert "[test] tiny test 3" in log.stdout
        followed = cli(server.url, "logs", str(build["id"]), "--follow")
        assert followed.returncode == 0 and followed.stdout.rstrip().endswith(f"build {build['id']} success")
        rerun = cli(server.url, "rerun", str(build["id"]))
        assert rerun.returncode == 0, rerun.stderr
        new_id = build["id"] + 1
        assert f"build {new_id} (#{build['number'] + 1} of {REPO}) queued" in rerun.stdout
        cancel = cli(server.url, "cancel", str(new_id))
        assert cancel.returncode == 0 and "cancelled" in cancel.stdout
        again = cli(server.url, "cancel", str(new_id))
        assert again.returncode == 2 and "already finished" in again.stderr
        denied = cli(server.url, "rerun", str(build["id"]), token=None)
        assert denied.returncode == 2 and "unauthorized" in denied.stderr

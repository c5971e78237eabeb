"""The mission in one test: a merged pull request becomes a deployed, health-checked model.

Only public surfaces: git (the bare origin), signed webhooks and the REST API over HTTP, the status
pages, the registry's HTTP API, and the deployed containers over HTTP and SSH. The system runs as
real processes (``Stack``: web under gunicorn, an RQ worker, Redis, registry, two sshd hosts).
"""

from __future__ import annotations

import time
from pathlib import Path

import paramiko
import pytest
import requests
import yaml

from orchestrator.devstack import deliveries as demo
from orchestrator.devstack.demo import SEED_REQUEST, environments
from orchestrator.devstack.stack import REPO_NAME, Stack

pytestmark = [pytest.mark.docker, pytest.mark.ssh, pytest.mark.slow]
FINISHED = {"success", "failed", "error", "cancelled", "superseded"}


class Client:
    def __init__(self, stack: Stack) -> None:
        self.s = stack
        self.http = requests.Session()

    def api(self, method: str, path: str, **kw):
        headers = {"Authorization": f"Bearer {self.s.api_token}"} if method != "GET" else {}
        r = self.http.request(method, f"{self.s.url}/api/v1{path}", headers=headers, timeout=15, **kw)
        return r

    def wait(self, build_id: int, timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = self.api("GET", f"/builds/{build_id}").json()
            if b["status"] in FINISHED:
                return b
            time.sleep(1)
        raise AssertionError(f"build {build_id} did not finish in {timeout}s")

    def merge(self, branch: str, files: dict[str, str], title: str) -> tuple[demo.Sent, demo.Sent, str]:
        origin = self.s.origin
        assert origin
        head = origin.commit(branch, files, title)
        before = origin.head("main")
        merge_sha = origin.merge(branch, message=f"Merge pull request from {branch}")
        url = f"{self.s.url}/webhooks/github"
        payload = demo.merged_pull_request(
            REPO_NAME, origin.url, number=7, merge_sha=merge_sha, head_sha=head, head_ref=branch, title=title
        )
        pr = demo.send(url, self.s.webhook_secret, "pull_request", payload)
        push = demo.send(
            url,
            self.s.webhook_secret,
            "push",
            demo.push(
                REPO_NAME, origin.url, ref="refs/heads/main", before=before, after=merge_sha, message=title
            ),
        )
        return pr, push, merge_sha


def why(build: dict) -> str:
    """The part of a build a person reads first when it is not what a test expected."""
    steps = "; ".join(
        f"{s['name']}={s['status']}" + (f" ({s['error']})" if s.get("error") else "")
        for s in build.get("steps", [])
    )
    return f"build {build.get('id')} {build.get('status')}: {build.get('error')} | {steps}"


def _ssh_docker(stack: Stack, host: str, argv: str) -> str:
    h = stack.hosts[host]
    client = paramiko.SSHClient()
    client.load_host_keys(str(stack.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key = str(stack.state / "ssh" / "deploy_key")
    client.connect(
        "127.0.0.1", port=h.port, username=h.user, key_filename=key, allow_agent=False, look_for_keys=False
    )
    try:
        _, out, err = client.exec_command(argv, timeout=30)
        assert out.channel.recv_exit_status() == 0, err.read()
        return out.read().decode()
    finally:
        client.close()


def _predict(port: int) -> float:
    r = requests.post(f"http://127.0.0.1:{port}/predict", json=SEED_REQUEST, timeout=10)
    assert r.status_code == 200, r.text
    value = r.json()["predictions"][0]
    assert isinstance(value, float)
    return value


def test_merge_deploys_then_bad_merge_rolls_back_then_rerun(stack):
    c = Client(stack)
    assert stack.config_path
    config = yaml.safe_load(stack.config_path.read_text())
    envs = environments((Path(stack.origin.work) / "pipeline.yaml").read_text(), config["vars"])
    # No model volume seeding: the pipeline trains the model and the deploy ships it (docs/pipeline.md).
    qa_port, prod_port = envs["qa"]["container"]["publish"], envs["prod"]["container"]["publish"]

    # 1. A good merge: PR closed+merged and the matching push → exactly one build, green to Prod.
    pr, push, sha1 = c.merge(
        "feature-more-trees", {"inference/CHANGELOG.md": "- more trees\n"}, "Use more trees"
    )
    assert pr.status == 202, pr.body
    assert push.status == 200 and push.body["verdict"] == "duplicate", push.body
    b1 = c.wait(pr.body["build"])
    assert b1["status"] == "success", why(b1)
    assert [s["name"] for s in b1["steps"]] == [
        "build",
        "test",
        "train",
        "push",
        "deploy-qa",
        "gate",
        "deploy-prod",
    ]
    assert all(s["status"] == "success" for s in b1["steps"])
    assert c.api("GET", "/builds").json()["total"] == 1
    assert b1["sha"] == sha1

    tags = requests.get(f"http://{stack.registry.addr}/v2/house-price/tags/list", timeout=5).json()["tags"]
    assert str(b1["number"]) in tags and sha1[:7] in tags
    for env, port in (("qa", qa_port), ("prod", prod_port)):
        names = _ssh_docker(
            stack,
            env,
            f"docker ps --filter label=mlship.env={env} "
            "--filter label=mlship.role=app --format '{{.Names}} {{.Mounts}}'",
        )
        assert f"-b{b1['number']}" in names and "ml_vol" in names, names
        assert 50_000 < _predict(port) < 2_000_000

    page = requests.get(f"{stack.url}/", timeout=5).text
    assert f"#{b1['number']}" in page and "success" in page
    deliveries = c.api("GET", "/deliveries").json()["deliveries"]
    verdicts = {d["id"]: d["verdict"] for d in deliveries}
    assert verdicts[pr.delivery_id] == "queued" and verdicts[push.delivery_id] == "duplicate"
    html = requests.get(f"{stack.url}/deliveries", timeout=5).text
    assert pr.delivery_id in html and push.delivery_id in html

    # 2. A merge that breaks the health check: QA rolls back, Prod untouched, the build is red.
    prod_before = _ssh_docker(stack, "prod", "docker ps --filter label=mlship.env=prod --format '{{.Names}}'")
    pipeline = (Path(stack.origin.work) / "pipeline.yaml").read_text()
    # (MODEL_PATH itself is overridden by the model the build ships; a setting the app refuses is not.)
    broken = pipeline.replace(
        "env: {MODEL_PATH: /models/model.skops}", 'env: {MODEL_PATH: /models/model.skops, MAX_ROWS: "0"}'
    )
    assert broken != pipeline
    pr2, _, _ = c.merge("limit-rows", {"pipeline.yaml": broken}, "Limit the batch size")
    b2 = c.wait(pr2.body["build"])
    assert b2["status"] == "failed", why(b2)
    steps = {s["name"]: s for s in b2["steps"]}
    assert steps["deploy-qa"]["status"] == "failed"
    assert "health" in (steps["deploy-qa"]["error"] or "").lower(), steps["deploy-qa"]
    assert steps["deploy-prod"]["status"] == "skipped"
    assert 50_000 < _predict(qa_port) < 2_000_000, "the old QA container keeps serving"
    assert (
        _ssh_docker(stack, "prod", "docker ps --filter label=mlship.env=prod --format '{{.Names}}'")
        == prod_before
    )
    log = c.api("GET", f"/builds/{b2['id']}/log").text
    assert "MAX_ROWS=0 must be at least 1" in log, "the failed container's last log lines explain why"

    # 3. Re-run the first build through the API: a new build of the same commit, green again.
    rr = c.api("POST", f"/builds/{b1['id']}/rerun")
    assert rr.status_code in (200, 201, 202), rr.text
    b3 = c.wait(rr.json()["id"])
    assert b3["status"] == "success" and b3["sha"] == sha1 and b3["rerun_of"] == b1["id"], (
        b3["error"],
        [(s["name"], s["status"], s["error"]) for s in b3["steps"]],
    )
    assert b3["number"] == b2["number"] + 1
    assert 50_000 < _predict(prod_port) < 2_000_000

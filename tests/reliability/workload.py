"""The bounded-state workload, shared by tests/reliability/test_soak.py, bench/soak.py and
bench/memory_bench.py: deliveries through the real Flask app (test client) and builds "run" with
the real LogWriter, against a real Redis.

- ``merged(i)``: a signed merged pull request with its own merge sha → a queued build;
- ``ignored(i)``: a signed pull request closed without merge → an ignored verdict (a record);
- ``junk(i)``: an unsigned or badly signed POST, fresh delivery id → rejected (counted, bounded sample);
- ``finish(build_id, log_bytes)``: the build as a worker leaves it: running, a log written through
  ``LogWriter`` (capped at ``max_log_bytes``), steps and the pipeline recorded, then success.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import Runtime, create_app
from orchestrator.build.log import LogWriter
from orchestrator.config import RepoConfig, Secrets, Settings
from orchestrator.intake.github import sign
from orchestrator.models import BuildStatus, StepRecord, StepStatus

ROOT = Path(__file__).resolve().parents[2]
PAYLOADS = ROOT / "tests" / "webhooks" / "payloads"
REPOS = ("acme/house-price", "acme/churn")
SECRET = "soak-secret-" + "5" * 20
PIPELINE_YAML = (ROOT / "pipeline.yaml").read_text()
LINE = 100  # bytes of one log line's text


def settings(redis_url: str, **kw: Any) -> Settings:
    repos = {
        name: RepoConfig(
            full_name=name, clone_url=f"git@github.com:{name}.git", webhook_secrets=("WEBHOOK_SECRET",)
        )
        for name in REPOS
    }
    return Settings(
        redis_url=redis_url, repositories=repos, secrets=Secrets(env={"WEBHOOK_SECRET": SECRET}), **kw
    )


@dataclass
class Answer:
    status: int
    delivery: str
    body: dict[str, Any]


class Workload:
    def __init__(self, s: Settings) -> None:
        self.settings = s
        self.app = create_app(s)
        self.rt: Runtime = self.app.extensions["mlship"]
        self.client = self.app.test_client()
        self._merged = json.loads((PAYLOADS / "pull_request.closed.merged.json").read_text())
        self._unmerged = json.loads((PAYLOADS / "pull_request.closed.unmerged.json").read_text())

    def _post(self, body: bytes, signature: str | None, event: str = "pull_request") -> Answer:
        delivery = str(uuid.uuid4())
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "Content-Type": "application/json"}
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        resp = self.client.post("/webhooks/github", data=body, headers=headers)
        return Answer(resp.status_code, delivery, resp.get_json(silent=True) or {})

    def merged(self, i: int) -> Answer:
        p = self._merged
        p["repository"]["full_name"] = REPOS[i % len(REPOS)]
        p["pull_request"]["merge_commit_sha"] = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        p["number"] = p["pull_request"]["number"] = i + 1
        body = json.dumps(p).encode()
        return self._post(body, sign(SECRET.encode(), body))

    def ignored(self, i: int) -> Answer:
        p = self._unmerged
        p["repository"]["full_name"] = REPOS[i % len(REPOS)]
        p["number"] = p["pull_request"]["number"] = i + 1
        body = json.dumps(p).encode()
        return self._post(body, sign(SECRET.encode(), body))

    def junk(self, i: int) -> Answer:
        """Half without a signature, half with a wrong one; each with a fresh delivery id."""
        body = json.dumps({"junk": i, "pad": "j" * 300}).encode()
        return self._post(body, None if i % 2 else "sha256=" + "0" * 64)

    def finish(self, build_id: int, log_bytes: int) -> None:
        store = self.rt.store
        started = time.time()
        store.update_build(build_id, status=str(BuildStatus.RUNNING), started_at=started, worker="soak.1")
        log = LogWriter(store, build_id, max_bytes=self.settings.max_log_bytes)
        log.step = "test"
        line = "x" * (LINE - 1) + "\n"
        chunk = line * 100
        for _ in range(log_bytes // len(chunk)):
            log.write(chunk)
        log.write(line * ((log_bytes % len(chunk)) // LINE))
        log.close()
        steps = [
            StepRecord(name, kind, StepStatus.SUCCESS, started, time.time(), exit_code=0)
            for name, kind in (("build", "docker_build"), ("test", "docker_run"), ("push", "docker_push"))
        ]
        store.update_build(
            build_id,
            status=str(BuildStatus.SUCCESS),
            finished_at=time.time(),
            steps=steps,
            pipeline_yaml=PIPELINE_YAML,
            image=f"registry.example:5000/acme/house-price:{build_id}",
            digest="sha256:" + "d" * 64,
        )


def used_memory(rt: Runtime) -> int:
    return rt.store.memory()["used_memory"]

"""Fixtures for the web/API tests: the app on the session Redis, builds seeded the way the webhook
creates them (Store.create_build + the RQ job), a real HTTP server for the browser and CLI, and the
stand-in for GitHub's commit status API (the only stand-in the project allows)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from orchestrator import Runtime, create_app
from orchestrator.build.queue import enqueuer
from orchestrator.config import RepoConfig, Secrets, Settings
from orchestrator.devstack.services import free_port
from orchestrator.models import Build, BuildStatus, StepRecord, StepStatus, Trigger

REPO = "acme/house-price"
TOKEN = "tok-3f9a1c5e7b2d4a6c8e0f"
OTHER_TOKEN = "tok-ops-99887766554433"
SECRETS = {
    "API_TOKEN": TOKEN,
    "OPS_TOKEN": OTHER_TOKEN,
    "GITHUB_WEBHOOK_SECRET": "whsec",
    "CSRF_SECRET": "csrf-secret-for-tests",
}


def make_settings(redis_url: str, clone_url: str = "file:///nonexistent/origin.git", **kw: Any) -> Settings:
    secrets = {**SECRETS, **kw.pop("secrets", {})}
    return Settings(
        redis_url=redis_url,
        repositories={REPO: RepoConfig(full_name=REPO, clone_url=clone_url)},
        secrets=Secrets(env=secrets),
        api_token_names=("API_TOKEN", "OPS_TOKEN"),
        **kw,
    )


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Seed:
    """Creates builds through the store exactly as the webhook would, then sets the fields a run sets."""

    rt: Runtime
    counter: int = 0

    def build(
        self,
        status: str = "success",
        *,
        message: str = "Improve the price model",
        branch: str = "main",
        author: str = "alice",
        repo: str = REPO,
        sha: str | None = None,
        trigger: str = "pull_request_merged",
        ago: float = 600.0,
        seconds: float = 95.0,
        steps: list[StepRecord] | None = None,
        log: list[tuple[str, str, str]] | None = None,
        **fields: Any,
    ) -> Build:
        self.counter += 1
        sha = sha or f"{self.counter:02d}" + "c0ffee1234567890abcdef1234567890abcdef"[:38]
        t = Trigger(
            repo=repo,
            sha=sha,
            ref=f"refs/heads/{branch}",
            branch=branch,
            kind=trigger,
            author=author,
            message=message,
            url=f"https://github.com/{repo}/commit/{sha}",
        )
        build, _ = self.rt.store.create_build(
            t,
            pipeline="pipeline.yaml",
            triggered_by="delivery-1",
            enqueue=enqueuer(self.rt.queue, 600),
            dedup=False,
        )
        start = time.time() - ago
        values: dict[str, Any] = {"status": status}
        if status != "queued":
            values["started_at"] = start
        if BuildStatus(status).finished:
            values["finished_at"] = start + seconds
        values["steps"] = steps if steps is not None else default_steps(status, start)
        values.update(fields)
        self.rt.store.update_build(build.id, **values)
        if log:
            self.rt.store.append_log(build.id, log)
        return self.rt.store.get_build(build.id)


def default_steps(status: str, start: float) -> list[StepRecord]:
    if status == "queued":
        return []
    names = [
        ("build", "docker_build", 41.0),
        ("test", "docker_run", 12.5),
        ("push", "docker_push", 6.2),
        ("deploy-qa", "deploy", 21.0),
    ]
    out = []
    t = start
    for i, (name, kind, d) in enumerate(names):
        if status == "running" and i == 1:
            out.append(StepRecord(name, kind, StepStatus.RUNNING, started_at=t))
        elif status == "running" and i > 1:
            out.append(StepRecord(name, kind, StepStatus.PENDING))
        elif status == "failed" and i == 1:
            out.append(
                StepRecord(
                    name, kind, StepStatus.FAILED, t, t + d, exit_code=1, error="tests failed: exit code 1"
                )
            )
        elif status == "failed" and i > 1:
            out.append(
                StepRecord(name, kind, StepStatus.SKIPPED, error="not run: an earlier step did not succeed")
            )
        else:
            out.append(StepRecord(name, kind, StepStatus.SUCCESS, t, t + d))
        t += d
    return out


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def rt(app: Flask) -> Runtime:
    runtime: Runtime = app.extensions["mlship"]
    return runtime


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture
def seed(rt: Runtime) -> Seed:
    return Seed(rt)


class LiveServer:
    """The app under a real threaded WSGI server on a free loopback port."""

    def __init__(self, app: Flask) -> None:
        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def live_server(app: Flask) -> Iterator[LiveServer]:
    app.config["MLSHIP_STREAM_SECONDS"] = 5.0  # short streams: server shutdown does not wait long
    with LiveServer(app) as server:
        yield server


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class GitHubStandIn:
    """A tiny HTTP server that records commit status calls and answers like GitHub (201)."""

    status: int = 201
    calls: list[Recorded] = field(default_factory=list)
    port: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GitHubStandIn:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.calls.append(Recorded("POST", self.path, dict(self.headers), json.loads(raw or b"{}")))
                body = json.dumps({"state": "ok"}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def github_api() -> Iterator[GitHubStandIn]:
    stand_in = GitHubStandIn().start()
    yield stand_in
    stand_in.stop()


def unavailable_browser() -> None:
    from tests.conftest import unavailable

    unavailable("Debian's chromium is not installed: apt-get install -y chromium chromium-driver")

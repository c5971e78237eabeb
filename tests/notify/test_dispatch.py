"""Notifications end to end with real parts: a build run by the real runner against a git origin,
real Redis, local HTTP receivers (one verifying the HMAC signature) and an aiosmtpd SMTP server."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import create_app
from orchestrator.build.runner import run_build
from orchestrator.config import Allow, NotifyTarget, RepoConfig, Secrets, Settings
from orchestrator.devstack.services import GitOrigin
from orchestrator.models import BuildStatus, Trigger
from orchestrator.notify.dispatch import Dispatcher, notify_finished
from orchestrator.store import Store

from .conftest import Receiver, SmtpServer, free_port, wait_until

REPO = "acme/churn"
HOOK_KEY = "hmac-key-0f9e8d7c"
FAILING = (
    'version: 1\nname: churn\nimage: "registry.invalid/churn"\nsteps:\n'
    '  - name: tests\n    shell: {command: [sh, -c, "echo 2 tests failed; exit 3"]}\n'
)


def make_settings(
    redis_url: str,
    tmp: Path,
    targets: dict[str, NotifyTarget],
    secrets: dict[str, str],
    clone_url: str = "file:///nonexistent",
) -> Settings:
    repo = RepoConfig(full_name=REPO, clone_url=clone_url, allow=Allow(shell=True))  # noqa: S604 (a pydantic field)
    return Settings(
        redis_url=redis_url,
        workspace=tmp / "ws",
        repositories={REPO: repo},
        secrets=Secrets(env={"GITHUB_WEBHOOK_SECRET": "whsec", **secrets}),
        public_url="http://mlship.test",
        notifications=targets,
    )


def three_targets(slack: Receiver, hook_url: str, smtp_port: int, **kw: Any) -> dict[str, NotifyTarget]:
    return {
        "team-slack": NotifyTarget(kind="slack", url_secret="SLACK_URL", **kw),
        "ops-hook": NotifyTarget(kind="webhook", url=hook_url, secret="HOOK_KEY", **kw),
        "oncall-mail": NotifyTarget(
            kind="email",
            smtp_host="127.0.0.1",
            smtp_port=smtp_port,
            sender="mlship@example.com",
            to=("oncall@example.com",),
            **kw,
        ),
    }


def new_build(store: Store, sha: str = "a" * 40) -> int:
    trigger = Trigger(
        repo=REPO,
        sha=sha,
        ref="refs/heads/main",
        branch="main",
        kind="push",
        author="dana",
        message="Retrain with March data\n\nlonger text",
    )
    build, _ = store.create_build(
        trigger, pipeline="pipeline.yaml", triggered_by="test", enqueue=lambda pipe, ticket: None, dedup=False
    )
    return build.id


def drain(dispatchers: list[Dispatcher], store: Store) -> None:
    """Run every dispatcher at once, in threads, until the outbox is empty."""

    def loop(d: Dispatcher) -> None:
        deadline = time.monotonic() + 30
        while store.notifications.due_count() and time.monotonic() < deadline:
            d.run_once()

    threads = [threading.Thread(target=loop, args=(d,)) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.notifications.due_count() == 0


class Clock:
    def __init__(self) -> None:
        self.now = time.time() + 1

    def __call__(self) -> float:
        return self.now


def test_failed_build_notifies_each_target_once(
    redis_url: str, tmp_path: Path, receivers: Any, smtp_server: SmtpServer, store: Store
) -> None:
    origin = GitOrigin(tmp_path / "git").create({"pipeline.yaml": FAILING}, copy_example=False)
    slack, hook = receivers(), receivers(secret=HOOK_KEY.encode())
    settings = make_settings(
        redis_url,
        tmp_path,
        three_targets(slack, hook.url, smtp_server.port),
        {"SLACK_URL": slack.url, "HOOK_KEY": HOOK_KEY},
        origin.url,
    )
    build_id = new_build(store, origin.head())

    build = run_build(settings, store, build_id)  # the runner queues the notifications as it finishes
    assert build is not None and build.status is BuildStatus.FAILED
    assert notify_finished(settings, store, build) == 0  # a second report (e.g. the janitor) adds none
    drain([Dispatcher(settings, store), Dispatcher(settings, store)], store)

    assert len(slack.requests) == 1 and len(hook.requests) == 1 and len(smtp_server.box.messages) == 1
    body = json.loads(slack.requests[0].body)
    assert body["text"] == f"{REPO} #1 failed"
    assert body["blocks"][0]["text"]["text"].startswith(
        f"*<http://mlship.test/builds/{build_id}|{REPO} #1 failed>*"
    )
    assert "step 'tests' failed" in body["blocks"][0]["text"]["text"]
    got = hook.requests[0]
    assert got.verified is True
    assert got.headers["X-Mlship-Event"] == "build.failed"
    sent = json.loads(got.body)
    assert sent["event"] == "build.failed" and sent["build"]["status"] == "failed"
    assert sent["id"] == got.headers["X-Mlship-Delivery"] == f"{build_id}-build-ops-hook"
    mail = smtp_server.box.messages[0]
    assert mail["Subject"] == f"[mlship] {REPO} #1 failed"
    assert mail["To"] == "oncall@example.com"
    assert f"Build page: http://mlship.test/builds/{build_id}" in mail.get_payload()
    records = store.notifications.for_build(build_id)
    assert sorted((n.target, n.event, n.status, n.attempts) for n in records) == [
        ("oncall-mail", "build.failed", "sent", 1),
        ("ops-hook", "build.failed", "sent", 1),
        ("team-slack", "build.failed", "sent", 1),
    ]


def test_receiver_down_is_retried_with_backoff_then_reported(
    redis_url: str, tmp_path: Path, store: Store
) -> None:
    port = free_port()  # nothing listens here
    targets = {
        "ops-hook": NotifyTarget(
            kind="webhook", url=f"http://127.0.0.1:{port}/in", secret="HOOK_KEY", attempts=3, backoff=10
        )
    }
    settings = make_settings(redis_url, tmp_path, targets, {"HOOK_KEY": HOOK_KEY})
    build_id = new_build(store)
    store.update_build(
        build_id, status="error", error="cannot reach the Docker daemon", finished_at=time.time()
    )
    assert notify_finished(settings, store, store.get_build(build_id)) == 1
    clock = Clock()
    dispatcher = Dispatcher(settings, store, clock=clock)

    waits = []
    for _ in range(3):
        assert len(dispatcher.run_once()) == 1
        assert dispatcher.run_once() == []  # not due again before its backoff
        (n,) = store.notifications.for_build(build_id)
        if n.next_attempt_at is not None:
            waits.append(round(n.next_attempt_at - clock.now))
            clock.now = n.next_attempt_at
    assert waits == [10, 20]
    (n,) = store.notifications.for_build(build_id)
    assert (n.status, n.attempts, n.next_attempt_at) == ("failed", 3, None)
    assert n.last_error == f"cannot reach http://127.0.0.1:{port}: ConnectionError"
    assert store.notifications.due_count() == 0

    client = create_app(settings).test_client()
    api = client.get(f"/api/v1/builds/{build_id}").get_json()
    assert [(x["target"], x["status"], x["attempts"], x["last_error"]) for x in api["notifications"]] == [
        ("ops-hook", "failed", 3, n.last_error)
    ]
    page = client.get(f"/builds/{build_id}").get_data(as_text=True)
    assert 'data-target="ops-hook" data-event="build" data-status="failed"' in page
    assert n.last_error in page


def test_receiver_back_up_gets_the_retry(
    redis_url: str, tmp_path: Path, receivers: Any, store: Store
) -> None:
    hook = receivers(secret=HOOK_KEY.encode(), status=503)
    targets = {"ops-hook": NotifyTarget(kind="webhook", url=hook.url, secret="HOOK_KEY", backoff=1)}
    settings = make_settings(redis_url, tmp_path, targets, {"HOOK_KEY": HOOK_KEY})
    build_id = new_build(store)
    store.update_build(build_id, status="failed", error="step 'tests' failed", finished_at=time.time())
    notify_finished(settings, store, store.get_build(build_id))
    clock = Clock()
    dispatcher = Dispatcher(settings, store, clock=clock)
    dispatcher.run_once()
    (n,) = store.notifications.for_build(build_id)
    assert (n.status, n.last_error) == (
        "retrying",
        f"http://127.0.0.1:{hook.server.server_address[1]} answered HTTP 503: ok",
    )
    hook.status = 200
    clock.now = n.next_attempt_at
    dispatcher.run_once()
    (n,) = store.notifications.for_build(build_id)
    assert (n.status, n.attempts, n.last_error) == ("sent", 2, "")
    assert len(hook.requests) == 2 and all(r.verified for r in hook.requests)
    assert hook.requests[0].headers["X-Mlship-Delivery"] == hook.requests[1].headers["X-Mlship-Delivery"]


def test_smtp_server_that_refuses_is_reported(
    redis_url: str, tmp_path: Path, smtp_server: SmtpServer, store: Store
) -> None:
    smtp_server.box.refuse.add("oncall@example.com")
    targets = {
        "oncall-mail": NotifyTarget(
            kind="email",
            smtp_host="127.0.0.1",
            smtp_port=smtp_server.port,
            sender="mlship@example.com",
            to=("oncall@example.com",),
        )
    }
    settings = make_settings(redis_url, tmp_path, targets, {})
    build_id = new_build(store)
    store.update_build(build_id, status="failed", error="step 'tests' failed", finished_at=time.time())
    notify_finished(settings, store, store.get_build(build_id))
    Dispatcher(settings, store).run_once()
    (n,) = store.notifications.for_build(build_id)
    assert (n.status, n.attempts) == ("failed", 1)  # a refusal is final: retrying cannot help
    assert n.last_error == (
        f"SMTP server 127.0.0.1:{smtp_server.port} refused every recipient: "
        "oncall@example.com (550 5.1.1 no such mailbox here)"
    )
    assert smtp_server.box.messages == []


def test_smtp_temporary_refusal_is_retried(
    redis_url: str, tmp_path: Path, smtp_server: SmtpServer, store: Store
) -> None:
    smtp_server.box.refuse.add("oncall@example.com")
    smtp_server.box.refusal = "450 4.2.0 greylisted, try again later"
    targets = {
        "mail": NotifyTarget(
            kind="email",
            smtp_host="127.0.0.1",
            smtp_port=smtp_server.port,
            sender="mlship@example.com",
            to=("oncall@example.com",),
        )
    }
    settings = make_settings(redis_url, tmp_path, targets, {})
    build_id = new_build(store)
    store.update_build(build_id, status="failed", error="x", finished_at=time.time())
    notify_finished(settings, store, store.get_build(build_id))
    clock = Clock()
    dispatcher = Dispatcher(settings, store, clock=clock)
    dispatcher.run_once()
    (n,) = store.notifications.for_build(build_id)
    assert (n.status, n.last_error) == (
        "retrying",
        f"SMTP server 127.0.0.1:{smtp_server.port} refused every "
        "recipient: oncall@example.com (450 4.2.0 greylisted, try again later)",
    )
    smtp_server.box.refuse.clear()
    clock.now = n.next_attempt_at
    dispatcher.run_once()
    assert store.notifications.for_build(build_id)[0].status == "sent"
    assert [m["To"] for m in smtp_server.box.messages] == ["oncall@example.com"]


def test_smtp_server_down_is_retried(redis_url: str, tmp_path: Path, store: Store) -> None:
    port = free_port()
    targets = {
        "mail": NotifyTarget(
            kind="email", smtp_host="127.0.0.1", smtp_port=port, sender="a@b.c", to=("d@e.f",)
        )
    }
    settings = make_settings(redis_url, tmp_path, targets, {})
    build_id = new_build(store)
    store.update_build(build_id, status="failed", error="x", finished_at=time.time())
    notify_finished(settings, store, store.get_build(build_id))
    Dispatcher(settings, store).run_once()
    (n,) = store.notifications.for_build(build_id)
    assert n.status == "retrying" and n.last_error.startswith(f"cannot reach SMTP server 127.0.0.1:{port}: ")


def test_secrets_are_masked_in_what_is_sent_and_stored(
    redis_url: str, tmp_path: Path, receivers: Any, smtp_server: SmtpServer, store: Store
) -> None:
    slack, hook = receivers(), receivers(secret=HOOK_KEY.encode())
    settings = make_settings(
        redis_url,
        tmp_path,
        three_targets(slack, hook.url, smtp_server.port),
        {"SLACK_URL": slack.url, "HOOK_KEY": HOOK_KEY, "SMTP_PASSWORD": "pw-7y6t5r"},
    )
    build_id = new_build(store)
    leaked = f"step 'push' failed: token {HOOK_KEY} and url {slack.url} in the output"
    store.update_build(build_id, status="failed", error=leaked, finished_at=time.time())
    notify_finished(settings, store, store.get_build(build_id))
    drain([Dispatcher(settings, store)], store)

    seen = [
        slack.requests[0].body.decode(),
        hook.requests[0].body.decode(),
        smtp_server.box.messages[0].as_string(),
        store.r.hgetall(f"mlship:notify:{build_id}").__repr__(),
    ]
    for text in seen:
        assert HOOK_KEY not in text and slack.url not in text
        assert "token *** and url *** in the output" in text


def test_events_filter_and_repositories_pick_the_targets(
    redis_url: str, tmp_path: Path, store: Store
) -> None:
    targets = {
        "deploys-only": NotifyTarget(
            kind="webhook", url="http://127.0.0.1:9/x", secret="K", events=("deploy",)
        ),
        "other-repo": NotifyTarget(
            kind="webhook", url="http://127.0.0.1:9/x", secret="K", repositories=("acme/other",)
        ),
        "everything": NotifyTarget(kind="webhook", url="http://127.0.0.1:9/x", secret="K", events=("all",)),
    }
    settings = make_settings(redis_url, tmp_path, targets, {"K": "key"})
    build_id = new_build(store)
    store.update_build(build_id, status="success", finished_at=time.time())
    notify_finished(settings, store, store.get_build(build_id))
    assert [(n.target, n.event) for n in store.notifications.for_build(build_id)] == [
        ("everything", "build.success")
    ]


@pytest.mark.parametrize("status", ["queued", "running"])
def test_an_unfinished_build_notifies_nothing(
    redis_url: str, tmp_path: Path, store: Store, status: str
) -> None:
    targets = {"t": NotifyTarget(kind="webhook", url="http://127.0.0.1:9/x", secret="K", events=("all",))}
    settings = make_settings(redis_url, tmp_path, targets, {"K": "key"})
    build_id = new_build(store)
    store.update_build(build_id, status=status)
    assert notify_finished(settings, store, store.get_build(build_id)) == 0
    wait_until(lambda: store.notifications.due_count() == 0, 1, "an empty outbox")

"""The worker's side of notifications: a real ``orchestrator worker`` process sends what is queued;
a dispatcher that dies after claiming loses nothing; the janitor's "worker lost" notifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.build.worker import janitor_once
from orchestrator.config import NotifyTarget
from orchestrator.models import BuildStatus
from orchestrator.notify.dispatch import Dispatcher, notify_finished
from orchestrator.store import Store

from .conftest import wait_until
from .test_dispatch import HOOK_KEY, REPO, Clock, make_settings, new_build


def test_the_worker_process_sends_queued_notifications(
    redis_url: str, tmp_path: Path, receivers: Any, store: Store
) -> None:
    hook = receivers(secret=HOOK_KEY.encode())
    config = tmp_path / "server.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repositories": {REPO: {"clone_url": "file:///nonexistent"}},
                "notifications": {
                    "ops-hook": {
                        "kind": "webhook",
                        "url": hook.url,
                        "secret": "HOOK_KEY",
                        "events": ["build.failed"],
                    }
                },
            }
        )
    )
    env = {
        **os.environ,
        "ORCHESTRATOR_CONFIG": str(config),
        "ORCHESTRATOR_REDIS_URL": redis_url,
        "ORCHESTRATOR_WORKSPACE": str(tmp_path / "ws"),
        "GITHUB_WEBHOOK_SECRET": "whsec",
        "HOOK_KEY": HOOK_KEY,
    }
    settings = make_settings(
        redis_url,
        tmp_path,
        {"ops-hook": NotifyTarget(kind="webhook", url=hook.url, secret="HOOK_KEY", events=("build.failed",))},
        {"HOOK_KEY": HOOK_KEY},
    )
    build_id = new_build(store)
    store.update_build(build_id, status="failed", error="step 'tests' failed", finished_at=time.time())
    assert notify_finished(settings, store, store.get_build(build_id)) == 1

    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "worker"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: hook.requests, 30, "the worker to deliver the notification")
        wait_until(lambda: store.notifications.for_build(build_id)[0].status == "sent", 10, "the record")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    (got,) = hook.requests
    assert got.verified and json.loads(got.body)["build"]["id"] == build_id


def test_a_claim_whose_dispatcher_died_is_sent_by_another(
    redis_url: str, tmp_path: Path, receivers: Any, store: Store
) -> None:
    hook = receivers(secret=HOOK_KEY.encode())
    settings = make_settings(
        redis_url,
        tmp_path,
        {"ops-hook": NotifyTarget(kind="webhook", url=hook.url, secret="HOOK_KEY")},
        {"HOOK_KEY": HOOK_KEY},
    )
    build_id = new_build(store)
    store.update_build(build_id, status="error", error="x", finished_at=time.time())
    notify_finished(settings, store, store.get_build(build_id))
    clock = Clock()
    assert len(store.notifications.claim(clock.now, lease=60)) == 1  # ... and this dispatcher dies here
    other = Dispatcher(settings, store, clock=clock)
    assert other.run_once() == []  # still leased
    clock.now += 61
    assert len(other.run_once()) == 1
    assert store.notifications.for_build(build_id)[0].status == "sent" and len(hook.requests) == 1


def test_a_lost_worker_notifies_build_error(redis_url: str, tmp_path: Path, store: Store) -> None:
    settings = make_settings(
        redis_url,
        tmp_path,
        {"t": NotifyTarget(kind="webhook", url="http://127.0.0.1:9/x", secret="K", events=("build.error",))},
        {"K": "key"},
    )
    build_id = new_build(store)
    store.update_build(build_id, status="running", started_at=time.time(), worker="gone.1")
    store.start_lease(build_id, "t", -1)  # its lease already ran out
    assert janitor_once(store, None, settings=settings) == [build_id]
    assert store.get_build(build_id).status is BuildStatus.ERROR
    (n,) = store.notifications.for_build(build_id)
    assert (n.target, n.event, n.status) == ("t", "build.error", "pending")
    assert n.message["detail"].startswith("worker lost: its lease expired")

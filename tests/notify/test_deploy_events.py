"""Deploy and rollback notifications from real deploys: the runner promotes and rolls back on real
sshd hosts with the example image, and the events read from those builds' step records reach a
signed webhook receiver."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator import Runtime
from orchestrator.build.queue import build_queue
from orchestrator.build.runner import run_build
from orchestrator.config import NotifyTarget, Secrets
from orchestrator.deploy.policy import request_promote, request_rollback
from orchestrator.models import BuildStatus
from orchestrator.notify.dispatch import Dispatcher
from tests.deploy.conftest import deploy_env, example_images, model_volume  # noqa: F401 (fixtures)
from tests.deploy.helpers import REPO, DeployEnv

from .conftest import Receiver

pytestmark = [pytest.mark.ssh, pytest.mark.docker, pytest.mark.slow]
KEY = "deploy-events-key"


def events_received(hook: Receiver) -> list[tuple[str, str, str]]:
    out = []
    for r in hook.requests:
        assert r.verified
        body = json.loads(r.body)
        out.append((body["event"], body["environment"], body["title"]))
    return out


def test_promote_and_rollback_notify_deploy_and_rollback(deploy_env: DeployEnv, receivers: Any) -> None:  # noqa: F811
    env = deploy_env
    hook = receivers(secret=KEY.encode())
    target = NotifyTarget(kind="webhook", url=hook.url, secret="HOOK_KEY", events=("deploy", "rollback"))
    env.settings = env.settings.model_copy(
        update=dict(
            notifications={"ops": target},
            secrets=Secrets(env={**env.settings.secrets.env, "HOOK_KEY": KEY}),
        )
    )
    rt = Runtime(env.settings, env.store, build_queue(env.settings))
    env.deploy(env.new_build(1))
    b2 = env.new_build(2)
    env.deploy(b2)
    env.store.update_build(b2.id, status="success")

    promoted = request_promote(rt, b2.id, "prod", "bob")
    run_build(env.settings, env.store, promoted.id)
    rolled = request_rollback(rt, REPO, "qa", "alice")
    run_build(env.settings, env.store, rolled.id)
    assert env.store.get_build(rolled.id).status is BuildStatus.SUCCESS, env.log(rolled)
    Dispatcher(env.settings, env.store).run_once()

    p, r = env.store.get_build(promoted.id), env.store.get_build(rolled.id)
    assert events_received(hook) == [
        ("deploy", "prod", f"{REPO} #{p.number} deployed to prod"),
        ("rollback", "qa", f"{REPO} #{r.number}: qa rolled back to build #1"),
    ]

"""The deploy step end to end: real sshd hosts, real Docker, the real example image and registry."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Runtime
from orchestrator.build.queue import build_queue
from orchestrator.build.runner import run_build
from orchestrator.deploy.policy import EnvironmentLock, lock_name, request_promote, request_rollback
from orchestrator.devstack.services import free_port
from orchestrator.errors import DeployError, InfrastructureError, Superseded
from orchestrator.models import BuildStatus, StepStatus
from tests.deploy.helpers import REPO, DeployEnv, Load, get, serving, wait_http

pytestmark = [pytest.mark.ssh, pytest.mark.docker, pytest.mark.slow]


def _containers(client: Any, env: DeployEnv) -> list[str]:
    return sorted(
        c.name for c in client.containers.list(all=True, filters={"label": f"mlship.app={env.name}"})
    )


def _served_build(env: DeployEnv) -> str:
    status, body = get(env.url + "/ready")
    assert status == 200, body
    return body.decode()


def test_deploy_then_redeploy_with_zero_failed_requests(deploy_env: DeployEnv, docker_client: Any) -> None:
    env = deploy_env
    b1 = env.new_build(1)
    ctx = env.deploy(b1)
    wait_http(env.url + "/ready", 10)
    assert _containers(docker_client, env) == [f"{env.name}-b1", f"{env.name}-edge"]
    dep = env.store.get_deployment(REPO, "qa")
    assert dep is not None and dep.build_number == 1 and dep.image.endswith(env.images.digests[1])
    host = next(iter(ctx.record.details["hosts"].values()))
    assert host["container"] == f"{env.name}-b1" and host["health"].startswith("passed")
    assert {"pull", "start", "health", "switch"} <= set(host["timings"])

    b2 = env.new_build(2)
    load = Load(env.url, rate=80)
    load.start()
    time.sleep(1.0)
    env.deploy(b2)
    time.sleep(1.0)
    result = load.stop()
    assert result["requests"] > 150
    assert result["failed"] == 0, (result, env.log(b2))
    assert _containers(docker_client, env) == [f"{env.name}-b2", f"{env.name}-edge"]
    inspect = docker_client.containers.get(f"{env.name}-b2").attrs
    assert inspect["Config"]["Image"].endswith(env.images.digests[2])
    assert env.store.get_deployment(REPO, "qa").build_number == 2  # type: ignore[union-attr]
    log = env.log(b2)
    assert "health check by the edge" in log and f"now sends new requests to {env.name}-b2" in log
    assert serving(docker_client, f"{env.name}-edge") == [f"{env.name}-b2"]


def test_failing_health_check_keeps_the_old_container_serving(
    deploy_env: DeployEnv, docker_client: Any
) -> None:
    env = deploy_env
    env.deploy(env.new_build(1))
    env.env = {**env.env, "MODEL_PATH": "/models/missing.skops"}
    env.health_timeout = 20
    b2 = env.new_build(2)
    started = time.monotonic()
    with pytest.raises(DeployError) as err:
        env.deploy(b2)
    assert time.monotonic() - started < 20  # an exited container fails at once, not after the timeout
    msg = str(err.value)
    assert "the previous container keeps serving" in msg
    assert "/models/missing.skops" in msg  # the container's last log lines explain why
    assert _containers(docker_client, env) == [f"{env.name}-b1", f"{env.name}-edge"]
    wait_http(env.url + "/ready", 5)
    assert env.store.get_deployment(REPO, "qa").build_number == 1  # type: ignore[union-attr]


def test_rollback_by_api_runs_the_same_swap_through_the_runner(
    deploy_env: DeployEnv, docker_client: Any
) -> None:
    env = deploy_env
    env.deploy(env.new_build(1))
    env.deploy(env.new_build(2))
    rt = Runtime(env.settings, env.store, build_queue(env.settings))
    rb = request_rollback(rt, REPO, "qa", "alice")
    assert rb.trigger == "rollback" and rb.deploys["source_number"] == 1
    assert rb.image.endswith(env.images.digests[1])
    load = Load(env.url, rate=50)
    load.start()
    done = run_build(env.settings, env.store, rb.id)
    result = load.stop()
    assert done is not None
    final = env.store.get_build(rb.id)
    assert final.status is BuildStatus.SUCCESS, (final.error, env.log(rb))
    assert final.steps[0].name == "rollback-qa" and final.steps[0].status is StepStatus.SUCCESS
    assert result["failed"] == 0, result
    dep = env.store.get_deployment(REPO, "qa")
    assert dep is not None and dep.build_number == 1 and dep.action == "rollback"
    assert _containers(docker_client, env) == [f"{env.name}-b1", f"{env.name}-edge"]
    # The image rolled back from stays on the host (it may be the next rollback target... or redeployed).
    docker_client.images.get(env.images.refs[2])


def test_promote_to_prod_runs_through_the_runner(deploy_env: DeployEnv, docker_client: Any) -> None:
    env = deploy_env
    b1 = env.new_build(1)
    ctx = env.deploy(b1, "deploy-prod")  # promote: manual, so a normal build does not deploy prod
    assert ctx.record.details["outcome"] == "awaiting promote"
    assert env.store.get_deployment(REPO, "prod") is None
    env.store.update_build(b1.id, status="success")
    rt = Runtime(env.settings, env.store, build_queue(env.settings))
    pb = request_promote(rt, b1.id, "prod", "bob")
    run_build(env.settings, env.store, pb.id)
    final = env.store.get_build(pb.id)
    assert final.status is BuildStatus.SUCCESS, (final.error, env.log(pb))
    dep = env.store.get_deployment(REPO, "prod")
    assert dep is not None and dep.build_number == 1 and dep.action == "promote"
    assert docker_client.containers.get(f"{env.name}-prod-b1").status == "running"


def test_older_build_is_superseded(deploy_env: DeployEnv, docker_client: Any) -> None:
    env = deploy_env
    env.deploy(env.new_build(2))
    late = env.new_build(1)  # build 1 finishing after build 2 was deployed
    with pytest.raises(Superseded, match="#2 is already deployed"):
        env.deploy(late)
    assert _containers(docker_client, env) == [f"{env.name}-b2", f"{env.name}-edge"]
    assert env.store.get_deployment(REPO, "qa").build_number == 2  # type: ignore[union-attr]


def test_promoting_an_older_build_is_superseded_through_the_runner(deploy_env: DeployEnv) -> None:
    env = deploy_env
    b1 = env.new_build(1)
    env.store.update_build(b1.id, status="success")
    env.deploy(env.new_build(2))
    rt = Runtime(env.settings, env.store, build_queue(env.settings))
    pb = request_promote(rt, b1.id, "qa", "carol")
    run_build(env.settings, env.store, pb.id)
    final = env.store.get_build(pb.id)
    assert final.status is BuildStatus.SUPERSEDED, (final.error, env.log(pb))
    assert final.steps[0].status is StepStatus.SUPERSEDED
    assert env.store.get_deployment(REPO, "qa").build_number == 2  # type: ignore[union-attr]


def test_lock_of_a_crashed_deploy_expires(deploy_env: DeployEnv) -> None:
    env = deploy_env
    crashed = EnvironmentLock(env.store, REPO, "qa", build_id=999, ttl=3)
    assert env.store.acquire_lock(crashed.name, crashed.owner, crashed.ttl, build_id=999)  # never renewed
    b1 = env.new_build(1)
    started = time.monotonic()
    env.deploy(b1)
    waited = time.monotonic() - started
    assert waited > 2  # it waited for the lease to run out, then deployed
    assert "waiting for the qa deploy lock (held by 999)" in env.log(b1)
    assert env.store.lock_owner(lock_name(REPO, "qa")) is None  # released after the deploy


def test_hostile_env_and_labels_arrive_verbatim(
    deploy_env: DeployEnv, docker_client: Any, tmp_path: Path
) -> None:
    env = deploy_env
    marker = tmp_path / "pwned"
    hostile = {
        "SUBST": f"$(touch {marker})",
        "BACKTICK": f"`touch {marker}`",
        "QUOTES": f"'; touch {marker}; echo '\"",
        "NEWLINE": f"a\ntouch {marker}\n",
        "DASH": "--privileged",
        "GLOB": "* ? [a] ~ $HOME $${HOME}",  # $${ is the pipeline's literal ${
    }
    env.env = {**env.env, **hostile}
    env.labels = {"org.example.note": f"$(touch {marker}) & ; | > x", "org.example.dash": "-v /:/host"}
    env.deploy(env.new_build(1))
    attrs = docker_client.containers.get(f"{env.name}-b1").attrs
    got_env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
    for k, v in hostile.items():
        assert got_env[k] == v.replace("$${", "${")
    assert attrs["Config"]["Labels"]["org.example.note"] == env.labels["org.example.note"]
    assert attrs["Config"]["Labels"]["org.example.dash"] == "-v /:/host"
    assert attrs["HostConfig"]["Privileged"] is False
    assert not marker.exists()


def test_failure_on_a_later_host_rolls_back_the_hosts_already_changed(
    deploy_env: DeployEnv, docker_client: Any
) -> None:
    env = deploy_env
    env.deploy(env.new_build(1))
    env.extra_hosts = [("127.0.0.1", free_port())]  # a second host that is down
    b2 = env.new_build(2)
    load = Load(env.url, rate=50)
    load.start()
    with pytest.raises(InfrastructureError, match="cannot reach"):
        env.deploy(b2)
    result = load.stop()
    assert result["failed"] == 0, result
    assert _containers(docker_client, env) == [f"{env.name}-b1", f"{env.name}-edge"]
    assert serving(docker_client, f"{env.name}-edge") == [f"{env.name}-b1"]
    assert "rolling back 1 host(s) already changed" in env.log(b2)


def test_registry_login_password_never_in_log_or_on_disk(deploy_env: DeployEnv, docker_client: Any) -> None:
    env = deploy_env
    password = "pw-" + "z" * 20
    env.settings = type(env.settings)(
        **{
            **env.settings.__dict__,
            "secrets": type(env.settings.secrets)(
                env={**env.settings.secrets.env, "REGISTRY_PASSWORD": password}
            ),
        }
    )
    env.registry_login = True
    b1 = env.new_build(1)
    env.deploy(b1)
    log = env.log(b1)
    assert "docker --config /dev/shm/mlship-docker-" in log and "login --username ci --password-stdin" in log
    assert password not in log
    leftovers = subprocess.run(
        ["sh", "-c", "ls -d /dev/shm/mlship-docker-* 2>/dev/null"], capture_output=True, text=True
    ).stdout
    assert leftovers == ""
    cfg = Path.home() / ".docker" / "config.json"
    assert not cfg.exists() or password not in cfg.read_text()
    assert json.loads(get(env.url + "/ready")[1])  # and it serves

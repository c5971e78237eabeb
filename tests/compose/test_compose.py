"""docker-compose.yml: valid, and the production-style stack really comes up against the test daemon.

Images the compose file names that cannot be pulled here (``redis:7``) are built locally from the
base image under the same names for this test; users get the official images.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from orchestrator.devstack.services import free_port
from tests.images import build_from_dockerfile

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.docker, pytest.mark.slow]
COMPOSE = shutil.which("docker-compose")


def compose(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    if COMPOSE is None:
        from tests.conftest import unavailable

        unavailable("docker-compose is not installed: apt-get install -y docker-compose")
    return subprocess.run(
        [COMPOSE, "-f", str(REPO_ROOT / "docker-compose.yml"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO_ROOT,
    )


@pytest.fixture
def compose_env(tmp_path, docker_daemon, base_image):
    secrets_env = tmp_path / "secrets.env"
    secrets_env.write_text(
        f"GITHUB_WEBHOOK_SECRET={secrets.token_hex(16)}\nAPI_TOKEN={secrets.token_hex(16)}\n"
        f"CSRF_SECRET={secrets.token_hex(16)}\n"
    )
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    config = yaml.safe_load((REPO_ROOT / "deploy/config.example.yaml").read_text())
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    socket_path = docker_daemon.host.removeprefix("unix://")
    return {
        **os.environ,
        "DOCKER_HOST": docker_daemon.host,
        "COMPOSE_PROJECT_NAME": f"mlt{free_port()}",
        "MLSHIP_SECRETS_ENV": str(secrets_env),
        "MLSHIP_SECRETS_DIR": str(secrets_dir),
        "MLSHIP_CONFIG": str(config_path),
        "MLSHIP_KNOWN_HOSTS": str(known_hosts),
        "MLSHIP_WEB_PORT": str(free_port()),
        "DOCKER_SOCKET": socket_path,
        "BASE_IMAGE": base_image,
        "MLSHIP_IMAGE": "mlship/orchestrator:compose-test",
        "REDIS_PASSWORD": secrets.token_hex(16),
    }


def test_compose_file_is_valid(compose_env):
    out = compose(compose_env, "config")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    redis_cmd = cfg["services"]["redis"]["command"]
    assert "appendonly" in " ".join(redis_cmd) and "noeviction" in redis_cmd
    assert redis_cmd[redis_cmd.index("--requirepass") + 1] == compose_env["REDIS_PASSWORD"]
    assert redis_cmd[redis_cmd.index("--maxmemory") + 1] == "1gb"  # the documented default
    limited = compose({**compose_env, "MLSHIP_REDIS_MAXMEMORY": "300mb"}, "config")
    redis_cmd = yaml.safe_load(limited.stdout)["services"]["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--maxmemory") + 1] == "300mb"
    url = cfg["services"]["worker"]["environment"]["MLSHIP_REDIS_URL"]
    assert url == f"redis://:{compose_env['REDIS_PASSWORD']}@redis:6379/0"
    assert cfg["services"]["web"]["environment"]["MLSHIP_READ_AUTH"] == "true"
    assert any("/var/run/docker.sock" in str(v) for v in cfg["services"]["worker"]["volumes"])
    assert set(cfg["volumes"]) >= {"redis-data", "workspace"}
    for svc in ("redis", "web", "worker"):
        assert cfg["services"][svc]["restart"] == "unless-stopped"
        assert "healthcheck" in cfg["services"][svc]
    for svc in ("web", "worker"):  # one name: the mlship command, MLSHIP_* settings
        env = cfg["services"][svc]["environment"]
        assert env["MLSHIP_CONFIG"] == "/etc/mlship/config.yaml"
        assert env["MLSHIP_REDIS_URL"] == url
        assert not [k for k in env if k.startswith("ORCHESTRATOR_")]
        assert cfg["services"][svc]["command"][0] == "mlship"


def _build_local_redis(docker_client, base_image: str) -> None:
    """``redis:7`` stands in for the official image: Debian's redis-server on the base image."""
    try:
        docker_client.images.get("redis:7")
        return
    except Exception:  # noqa: S110 - not there yet: build it below
        pass
    dockerfile = (
        f"FROM {base_image}\nRUN apt-get update && apt-get install -y --no-install-recommends "
        "redis-server && rm -rf /var/lib/apt/lists/*\nEXPOSE 6379\n"
    )
    build_from_dockerfile(docker_client, dockerfile, "redis:7")


def test_compose_stack_comes_up_scales_and_goes_down(compose_env, docker_client, base_image):
    _build_local_redis(docker_client, base_image)
    built = compose(compose_env, "build", "web")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    try:
        up = compose(compose_env, "up", "-d", "--scale", "worker=2")
        assert up.returncode == 0, up.stderr[-3000:]
        url = f"http://127.0.0.1:{compose_env['MLSHIP_WEB_PORT']}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, compose(compose_env, "logs", "--tail", "40").stdout
            time.sleep(1)
        ps = compose(compose_env, "ps").stdout
        assert ps.count("worker") >= 2 and "Up" in ps, ps
        # The web app reaches Redis (AOF on) through the compose network; reads need a token (read_auth).
        secrets_text = Path(compose_env["MLSHIP_SECRETS_ENV"]).read_text()
        token = dict(line.split("=", 1) for line in secrets_text.split())
        assert requests.get(f"{url}/api/v1/builds", timeout=5).status_code == 401
        auth = {"Authorization": f"Bearer {token['API_TOKEN']}"}
        assert requests.get(f"{url}/api/v1/builds", headers=auth, timeout=5).json()["total"] == 0
        aof = compose(compose_env, "exec", "-T", "redis", "redis-cli", "config", "get", "appendonly")
        assert "yes" in aof.stdout, aof.stdout + aof.stderr
        # A webhook with a wrong signature is refused by the composed web app.
        r = requests.post(
            f"{url}/webhooks/github",
            data=b"{}",
            timeout=5,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "ping",
                "X-GitHub-Delivery": "d1",
                "X-Hub-Signature-256": "sha256=" + "0" * 64,
            },
        )
        assert r.status_code == 401
        # The worker can see the Docker daemon through the mounted socket.
        workers = compose(compose_env, "ps", "-q", "worker").stdout.split()
        info = docker_client.containers.get(workers[0]).exec_run(
            ["python3", "-c", "import docker; print(docker.from_env().ping())"]
        )
        assert info.output.strip().endswith(b"True"), info.output
    finally:
        down = compose(compose_env, "down", "-v", "--remove-orphans")
        assert down.returncode == 0, down.stderr

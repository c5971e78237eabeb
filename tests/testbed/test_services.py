"""The test bed proves each real service answers."""

from __future__ import annotations

import uuid

import paramiko
import pytest
import redis

from orchestrator.devstack.services import git
from tests.images import build_from_dockerfile


def test_redis_answers_and_survives_restart_with_aof(own_redis):
    client = redis.Redis.from_url(own_redis.url)
    assert client.ping()
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert client.config_get("maxmemory")["maxmemory"] == str(512 * 1024 * 1024)
    client.set("k", "kept")
    own_redis.restart()
    client = redis.Redis.from_url(own_redis.url)
    assert client.get("k") == b"kept"


def test_redis_stopped_refuses_connections(own_redis):
    own_redis.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(own_redis.url, socket_connect_timeout=0.5).ping()


def test_docker_daemon_answers(docker_client):
    info = docker_client.info()
    assert info["ServerVersion"]
    assert docker_client.ping()


def _tiny_image(docker_client, base_image: str, tag: str) -> None:
    build_from_dockerfile(docker_client, f"FROM {base_image}\nRUN echo hello > /hello.txt\n", tag)


def test_base_image_runs_python(docker_client, base_image):
    out = docker_client.containers.run(base_image, ["python3", "-c", "print(6*7)"], remove=True)
    assert out.strip() == b"42"


def test_registry_push_and_pull(docker_client, base_image, registry):
    repo = f"{registry.addr}/testbed-{uuid.uuid4().hex[:8]}"
    _tiny_image(docker_client, base_image, f"{repo}:1")
    for line in docker_client.images.push(repo, tag="1", stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(f"{repo}:1")
    pulled = docker_client.images.pull(repo, tag="1")
    assert f"{repo}:1" in pulled.tags
    out = docker_client.containers.run(f"{repo}:1", ["cat", "/hello.txt"], remove=True)
    assert out.strip() == b"hello"
    docker_client.images.remove(f"{repo}:1")


@pytest.mark.parametrize("name", ["qa", "prod"])
def test_ssh_host_runs_docker_ps_with_pinned_host_key(deploy_hosts, name):
    host = deploy_hosts[name]
    client = paramiko.SSHClient()
    client.load_host_keys(str(deploy_hosts.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1",
        port=host.port,
        username=host.user,
        key_filename=str(deploy_hosts.client_key),
        allow_agent=False,
        look_for_keys=False,
        timeout=10,
    )
    try:
        _, stdout, stderr = client.exec_command("docker ps --format '{{.ID}}' && echo ok", timeout=30)
        assert stdout.channel.recv_exit_status() == 0, stderr.read()
        assert stdout.read().decode().strip().endswith("ok")
    finally:
        client.close()


def test_ssh_host_with_unknown_key_is_refused(deploy_hosts, tmp_path):
    host = deploy_hosts["qa"]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    client = paramiko.SSHClient()
    client.load_host_keys(str(empty))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        client.connect(
            "127.0.0.1",
            port=host.port,
            username=host.user,
            key_filename=str(deploy_hosts.client_key),
            allow_agent=False,
            look_for_keys=False,
        )


def test_git_origin_clone_commit_and_merge(git_origin, tmp_path):
    clone = tmp_path / "clone"
    git("clone", "-q", git_origin.url, str(clone))
    assert (clone / "pipeline.yaml").exists() or (clone / "Dockerfile").exists()
    git_origin.commit("feature", {"NOTES.md": "hello\n"}, "add notes")
    merge_sha = git_origin.merge("feature")
    assert git_origin.head("main") == merge_sha
    git("fetch", "-q", "origin", cwd=clone)
    assert git("show", f"{merge_sha}:NOTES.md", cwd=clone) == "hello"
    parents = git("rev-list", "--parents", "-n1", merge_sha, cwd=clone).split()
    assert len(parents) == 3, "a merge commit has two parents"

"""Settings declared once: file keys and MLSHIP_* variables come from the model's fields; the old
ORCHESTRATOR_* names still work with a one-line warning naming the new one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Settings, env_get, env_keys, load_settings
from orchestrator.errors import ConfigError

ENV_CASES: list[tuple[dict[str, str], str, Any, str]] = [
    ({"MLSHIP_LEASE_SECONDS": "5"}, "lease_seconds", 5.0, ""),
    ({"ORCHESTRATOR_LEASE_SECONDS": "5"}, "lease_seconds", 5.0, "ORCHESTRATOR_LEASE_SECONDS"),
    ({"MLSHIP_LEASE_SECONDS": "7", "ORCHESTRATOR_LEASE_SECONDS": "5"}, "lease_seconds", 7.0, ""),
    ({"MLSHIP_API_TOKENS": "API_TOKEN, CI_TOKEN"}, "api_token_names", ("API_TOKEN", "CI_TOKEN"), ""),
    ({"MLSHIP_READ_AUTH": "yes"}, "read_auth", True, ""),
    ({"ORCHESTRATOR_READ_AUTH": "0"}, "read_auth", False, "ORCHESTRATOR_READ_AUTH"),
    ({"MLSHIP_KNOWN_HOSTS": "/etc/mlship/known_hosts"}, "known_hosts", Path("/etc/mlship/known_hosts"), ""),
    ({"MLSHIP_WORKSPACE": "/w"}, "workspace", Path("/w"), ""),
    ({"MLSHIP_PUBLIC_URL": "https://ci.example.com/"}, "public_url", "https://ci.example.com", ""),
    ({"ORCHESTRATOR_SSH_KEY": "PROD_KEY"}, "ssh_key_secret", "PROD_KEY", "ORCHESTRATOR_SSH_KEY"),
    ({"MLSHIP_KEEP_ARTIFACTS": "3"}, "keep_artifacts", 3, ""),
]


@pytest.mark.parametrize(("env", "field", "value", "deprecated"), ENV_CASES)
def test_environment_overrides(
    env: dict[str, str], field: str, value: Any, deprecated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(env)
    assert getattr(settings, field) == value
    err = capsys.readouterr().err
    if deprecated:
        new = deprecated.replace("ORCHESTRATOR_", "MLSHIP_")
        assert err == f"mlship: {deprecated} is deprecated, use {new}\n"
    else:
        assert err == ""


@pytest.mark.parametrize(
    ("env", "name", "value", "err"),
    [
        ({"MLSHIP_URL": "http://a"}, "URL", "http://a", ""),
        (
            {"ORCHESTRATOR_URL": "http://b"},
            "URL",
            "http://b",
            "mlship: ORCHESTRATOR_URL is deprecated, use MLSHIP_URL\n",
        ),
        (
            {"ORCHESTRATOR_TOKEN": "t"},
            "TOKEN",
            "t",
            "mlship: ORCHESTRATOR_TOKEN is deprecated, use MLSHIP_TOKEN\n",
        ),
        ({}, "TOKEN", None, ""),
    ],
)
def test_env_get(
    env: dict[str, str], name: str, value: str | None, err: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert env_get(name, env) == value
    assert capsys.readouterr().err == err


def test_config_file_named_by_the_old_variable_still_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text("queue: q2\nrepositories:\n  acme/x: {clone_url: 'file:///x.git'}\n")
    settings = load_settings({"ORCHESTRATOR_CONFIG": str(cfg), "GITHUB_WEBHOOK_SECRET": "s"})
    assert settings.queue == "q2"
    assert settings.repositories["acme/x"].full_name == "acme/x"
    assert capsys.readouterr().err == "mlship: ORCHESTRATOR_CONFIG is deprecated, use MLSHIP_CONFIG\n"


def test_env_keys_are_every_scalar_field() -> None:
    assert sorted(env_keys()) == sorted(
        [
            "redis_url", "queue", "workspace", "public_url", "secrets_dir", "api_tokens", "read_auth",
            "max_body_bytes", "max_rows_per_page", "lease_seconds", "build_timeout", "delivery_ttl_days",
            "keep_artifacts", "docker_host", "known_hosts", "ssh_key", "github_api_url", "github_token",
            "csrf_secret", "edge_base_image", "retention_days", "retention_builds", "log_retention_days",
            "max_log_bytes", "redis_maxmemory", "redis_sentinels", "redis_sentinel_service",
            "redis_sentinel_password", "redis_wait_replicas", "redis_wait_timeout",
        ]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lease_seconds: 0\n", "{f}: key 'lease_seconds': Input should be greater than 0"),
        (
            "delivery_ttl_days: 3\n",
            "{f}: key 'delivery_ttl_days': Input should be greater than or equal to 7",
        ),
        ("no_such_key: 1\n", "{f}: key 'no_such_key': Extra inputs are not permitted"),
        ("repositories:\n  acme/x: {}\n", "{f}: repositories.acme/x: key 'clone_url': Field required"),
        ("- a\n", "{f}: the top level must be a mapping of settings"),
        ("secrets: {A: b}\n", "{f}: key 'secrets': not a setting (name secrets, e.g. secrets_dir)"),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings({"MLSHIP_CONFIG": str(cfg)})
    assert str(err.value) == message.format(f=cfg)


def test_environment_error_names_the_key() -> None:
    with pytest.raises(ConfigError, match="environment: key 'lease_seconds': Input should be a valid number"):
        load_settings({"MLSHIP_LEASE_SECONDS": "soon"})


def test_settings_construct_by_field_name_as_before() -> None:
    s = Settings(api_token_names=("A",), ssh_key_secret="K", workspace=Path("/w"))
    assert (s.api_token_names, s.ssh_key_secret, s.workspace) == (("A",), "K", Path("/w"))
    assert type(s)(**{**s.__dict__, "queue": "other"}).queue == "other"


@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        ({}, {}, "512mb"),
        ({"redis_maxmemory": "2gb"}, {}, "2gb"),
        ({}, {"MLSHIP_REDIS_MAXMEMORY": "300mb"}, "300mb"),
        ({"redis_maxmemory": "1gb"}, {"MLSHIP_REDIS_MAXMEMORY": "300mb"}, "1gb"),
    ],
)
def test_standalone_redis_maxmemory(tmp_path: Path, monkeypatch, extra, env, expected) -> None:
    from orchestrator.devstack.stack import Stack

    monkeypatch.delenv("MLSHIP_REDIS_MAXMEMORY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert Stack(tmp_path, extra_config=extra).redis_maxmemory() == expected


def test_standalone_redis_maxmemory_must_be_a_size(tmp_path: Path) -> None:
    from orchestrator.devstack.stack import Stack

    with pytest.raises(ConfigError, match=r"^redis_maxmemory 'lots': a size like 512mb or 2gb"):
        Stack(tmp_path, extra_config={"redis_maxmemory": "lots"}).redis_maxmemory()

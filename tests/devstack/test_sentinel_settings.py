"""Settings for Redis Sentinel and WAIT: parsing from the environment and the file, errors that say
what is wrong and how to fix it, and the one client factory built from them (docs/reliability.md,
"Redis failover")."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.sentinel import SentinelConnectionPool

from orchestrator.config import load_settings, sentinel_address
from orchestrator.errors import ConfigError
from orchestrator.store.clients import redis_for

FIX = "write each sentinel as host:port, e.g. 10.0.0.5:26379 (MLSHIP_REDIS_SENTINELS=h1:26379,h2:26379)"


@pytest.mark.parametrize(
    ("entry", "address"),
    [
        ("10.0.0.5:26379", ("10.0.0.5", 26379)),
        ("sentinel-1.internal:1", ("sentinel-1.internal", 1)),
        (" h:65535 ", ("h", 65535)),
        ("[::1]:26380", ("::1", 26380)),
    ],
)
def test_a_sentinel_address_is_host_and_port(entry: str, address: tuple[str, int]) -> None:
    assert sentinel_address(entry) == address


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("10.0.0.5", f"sentinel '10.0.0.5' is not host:port: {FIX}"),
        (":26379", f"sentinel ':26379' is not host:port: {FIX}"),
        ("::1:26379", f"sentinel '::1:26379' is not host:port: {FIX}"),
        ("h:0", f"sentinel 'h:0': port '0' is not a number from 1 to 65535: {FIX}"),
        ("h:65536", f"sentinel 'h:65536': port '65536' is not a number from 1 to 65535: {FIX}"),
        ("h:port", f"sentinel 'h:port': port 'port' is not a number from 1 to 65535: {FIX}"),
    ],
)
def test_a_bad_sentinel_says_what_is_wrong_and_the_fix(entry: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        sentinel_address(entry)
    assert str(err.value) == message


def test_sentinels_come_from_the_environment_comma_separated() -> None:
    s = load_settings(
        {
            "MLSHIP_REDIS_SENTINELS": "10.0.0.5:26379, 10.0.0.6:26379,10.0.0.7:26379",
            "MLSHIP_REDIS_SENTINEL_SERVICE": "prod-redis",
            "MLSHIP_REDIS_WAIT_REPLICAS": "1",
            "MLSHIP_REDIS_WAIT_TIMEOUT": "250",
        }
    )
    assert s.sentinel_addresses() == [("10.0.0.5", 26379), ("10.0.0.6", 26379), ("10.0.0.7", 26379)]
    assert (s.redis_sentinel_service, s.redis_wait_replicas, s.redis_wait_timeout) == ("prod-redis", 1, 250)


def test_defaults_are_plain_redis_without_wait() -> None:
    s = load_settings({})
    assert (s.redis_sentinels, s.sentinel_addresses(), s.redis_wait_replicas) == ((), [], 0)
    assert (s.redis_sentinel_service, s.redis_wait_timeout) == ("mlship", 500)


def test_the_sentinel_password_is_a_secret_masked_and_never_given_to_a_pipeline(tmp_path: Path) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text("redis_sentinels: ['127.0.0.1:26379']\nredis_sentinel_password: SENTINEL_PW\n")
    s = load_settings({"MLSHIP_CONFIG": str(cfg), "SENTINEL_PW": "s3ntinel-pass"})
    assert s.sentinel_password() == "s3ntinel-pass"
    assert "s3ntinel-pass" in s.secret_values()
    assert "SENTINEL_PW" in s.server_secret_names()
    assert load_settings({"REDIS_SENTINEL_PASSWORD": "p"}).sentinel_password() == "p"  # the default name
    assert load_settings({}).sentinel_password() is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MLSHIP_REDIS_SENTINELS": "10.0.0.5:26379,10.0.0.6"},
            f"environment: key 'redis_sentinels': Value error, sentinel '10.0.0.6' is not host:port: {FIX}",
        ),
        (
            {"MLSHIP_REDIS_WAIT_TIMEOUT": "2000"},
            "environment: key 'redis_wait_timeout': Value error, 2000 ms is out of range: give 1 to 1000 ms "
            "(the webhook must answer within 2 s, its Redis calls time out after 1.5 s), "
            "e.g. MLSHIP_REDIS_WAIT_TIMEOUT=500",
        ),
        (
            {"MLSHIP_REDIS_WAIT_TIMEOUT": "0"},
            "environment: key 'redis_wait_timeout': Value error, 0 ms is out of range: give 1 to 1000 ms "
            "(the webhook must answer within 2 s, its Redis calls time out after 1.5 s), "
            "e.g. MLSHIP_REDIS_WAIT_TIMEOUT=500",
        ),
        (
            {"MLSHIP_REDIS_WAIT_REPLICAS": "-1"},
            "environment: key 'redis_wait_replicas': Input should be greater than or equal to 0",
        ),
        (
            {"MLSHIP_REDIS_SENTINEL_SERVICE": ""},
            "environment: key 'redis_sentinel_service': String should have at least 1 character",
        ),
    ],
)
def test_bad_settings_name_the_key_and_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert str(err.value) == message


def test_the_factory_asks_the_sentinels_with_the_urls_credentials_and_database() -> None:
    s = load_settings(
        {
            "MLSHIP_REDIS_URL": "redis://mlship:p%40ss@ignored:1/3",
            "MLSHIP_REDIS_SENTINELS": "127.0.0.1:26379,127.0.0.1:26380",
            "MLSHIP_REDIS_SENTINEL_SERVICE": "prod-redis",
            "REDIS_SENTINEL_PASSWORD": "sentinel-pass",
        }
    )
    pool = redis_for(s, timeout=1.5).connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "prod-redis"
    kw = pool.connection_kwargs
    assert (kw["username"], kw["password"], kw["db"], kw["socket_timeout"]) == ("mlship", "p@ss", 3, 1.5)


def test_without_sentinels_the_factory_uses_redis_url() -> None:
    s = load_settings({"MLSHIP_REDIS_URL": "redis://:pw@10.1.2.3:6380/2"})
    pool = redis_for(s).connection_pool
    assert not isinstance(pool, SentinelConnectionPool)
    kw = pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["password"], kw["db"]) == ("10.1.2.3", 6380, "pw", 2)

"""The endpoint through a real ``orchestrator web`` (gunicorn) process and a real Redis."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from orchestrator.cli.web import gunicorn_options
from orchestrator.devstack.services import RedisServer, free_port, port_open, wait_for
from orchestrator.store import Store

from .helpers import REPO, SECRET, encode, headers, merged_pr, payload

LIMIT = 16384


def server_env(tmp_path: Path, redis_url: str, secret: str = SECRET) -> dict[str, str]:
    config = tmp_path / "server.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "redis_url": redis_url,
                "public_url": "http://ci.example.com",
                "max_body_bytes": LIMIT,
                "repositories": {
                    REPO: {
                        "clone_url": "git@github.com:acme/house-price.git",
                        "webhook_secrets": ["GITHUB_WEBHOOK_SECRET"],
                        "triggers": {"pull_request_merged": ["main"], "push": ["main"]},
                    }
                },
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(ORCHESTRATOR_CONFIG=str(config), GITHUB_WEBHOOK_SECRET=secret)
    return env


def web_command(port: int, workers: int = 2, threads: int = 4) -> list[str]:
    return [
        sys.executable,
        "-m",
        "orchestrator",
        "web",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]


@dataclass
class Web:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def send(
        self, event: str, p: dict[str, Any] | bytes, delivery: str | None = None, timeout: float = 10
    ) -> tuple[int, dict[str, Any], float]:
        body = encode(p)
        t0 = time.monotonic()
        resp = requests.post(
            self.url + "/webhooks/github",
            data=body,
            timeout=timeout,
            headers=headers(event, body, delivery=delivery),
        )
        return resp.status_code, resp.json(), time.monotonic() - t0

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # gunicorn's own (non-JSON) lines
        return out


def start_web(tmp_path: Path, redis_url: str) -> Web:
    port = free_port()
    log = tmp_path / "web.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            web_command(port), env=server_env(tmp_path, redis_url), stdout=f, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: port_open(port), 30, "orchestrator web")
    except Exception:
        proc.kill()
        raise AssertionError(log.read_text()) from None
    return Web(f"http://127.0.0.1:{port}", proc, log)


def stop_web(web: Web) -> None:
    web.proc.terminate()
    try:
        web.proc.wait(15)
    except subprocess.TimeoutExpired:
        web.proc.kill()
        web.proc.wait(5)


@pytest.fixture
def web(tmp_path: Path, redis_url: str) -> Iterator[Web]:
    w = start_web(tmp_path, redis_url)
    yield w
    stop_web(w)


def test_fifty_concurrent_deliveries_get_fifty_gap_free_numbers(web: Web, redis_url: str) -> None:
    shas = [f"{i + 1:040x}" for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda s: web.send("pull_request", merged_pr(s, number=7)), shas))
    assert [r[0] for r in replies] == [202] * 50, [r[1] for r in replies if r[0] != 202]
    assert sorted(r[1]["number"] for r in replies) == list(range(1, 51))
    assert len({r[1]["build"] for r in replies}) == 50
    store = Store.from_url(redis_url)
    assert sorted(store.get_build(r[1]["build"]).sha for r in replies) == sorted(shas)
    assert store.counters("deliveries") == {"queued": 50}


def test_merge_pair_through_http_gives_one_build(web: Web, redis_url: str) -> None:
    sha = "ab" * 20
    pr = web.send("pull_request", merged_pr(sha))
    push = payload("push.branch")
    push["after"] = push["head_commit"]["id"] = sha
    dup = web.send("push", push)
    assert (pr[0], dup[0]) == (202, 200) and dup[1]["build"] == pr[1]["build"]
    assert Store.from_url(redis_url).latest_build_id() == 1


def _chunked(url: str, body: bytes, chunk: int = 1000) -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    h = headers("pull_request", body)
    conn.request(
        "POST",
        "/webhooks/github",
        body=(body[i : i + chunk] for i in range(0, len(body), chunk)),
        headers=h,
        encode_chunked=True,
    )
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def _sized(n: int, sha: str) -> bytes:
    p = merged_pr(sha)
    p["pull_request"]["body"] = ""
    p["pull_request"]["body"] = "x" * (n - len(encode(p)))
    body = encode(p)
    assert len(body) == n
    return body


def test_chunked_bodies_are_counted_against_the_limit(web: Web) -> None:
    status, body = _chunked(web.url, _sized(LIMIT, "1" * 40))
    assert status == 202, body
    status, body = _chunked(web.url, _sized(LIMIT + 1, "2" * 40))
    assert status == 413 and body["error"] == "payload_too_large"


def test_content_length_over_the_limit_is_refused_before_reading(web: Web) -> None:
    assert web.send("pull_request", _sized(LIMIT + 1, "3" * 40))[0] == 413
    assert web.send("pull_request", _sized(LIMIT, "4" * 40))[0] == 202


def test_log_has_one_json_line_per_delivery_without_secrets(web: Web) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    web.send("pull_request", payload("pull_request.closed.merged"), delivery=ids[0])
    web.send("pull_request", payload("pull_request.opened"), delivery=ids[1])
    web.send("ping", payload("ping"), delivery=ids[2])

    def delivery_lines() -> list[dict[str, Any]]:
        return [x for x in web.log_lines() if x.get("event") == "delivery"]

    # the log line is written after the answer: wait for the third one, with a deadline
    wait_for(lambda: len(delivery_lines()) >= 3, 10, "three delivery log lines")
    lines = delivery_lines()
    assert [(x["delivery"], x["verdict"]) for x in lines] == [
        (ids[0], "queued"),
        (ids[1], "ignored"),
        (ids[2], "ignored"),
    ]
    text = web.log.read_text()
    assert SECRET not in text
    # gunicorn's own lines share the stream and still format (applog trims what records collect)
    assert "Logging error" not in text and re.search(r"\[\d+\] \[INFO\] Booting worker", text)


def test_redis_down_is_503_fast_and_the_redelivery_is_accepted(
    tmp_path: Path,
    own_redis: RedisServer,
) -> None:
    web = start_web(tmp_path, own_redis.url)
    try:
        delivery = str(uuid.uuid4())
        assert web.send("ping", payload("ping"))[0] == 200  # connections are pooled and warm
        own_redis.stop()
        merged = payload("pull_request.closed.merged")
        status, body, took = web.send("pull_request", merged, delivery=delivery)
        assert status == 503 and body["verdict"] == "failed" and body["error"] == "store_unavailable"
        assert took < 2.0
        own_redis.start()
        status, body, _ = web.send("pull_request", merged, delivery=delivery)
        assert status == 202 and body["number"] == 1
        d = Store.from_url(own_redis.url).get_delivery(delivery)
        assert d is not None and d.verdict == "queued"
        failed = [x for x in web.log_lines() if (x.get("delivery"), x.get("verdict")) == (delivery, "failed")]
        assert failed and failed[0]["status"] == 503
    finally:
        stop_web(web)


@pytest.mark.parametrize("secret", ["", "\n"])
def test_web_refuses_to_start_with_an_empty_secret(tmp_path: Path, redis_url: str, secret: str) -> None:
    env = server_env(tmp_path, redis_url, secret=secret)
    port = free_port()
    out = subprocess.run(web_command(port), env=env, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2
    assert "GITHUB_WEBHOOK_SECRET" in out.stderr and not port_open(port)


@pytest.mark.parametrize(
    ("workers", "threads", "worker_class"),
    [(2, 1, "sync"), (4, 8, "gthread")],
)
def test_gunicorn_options(workers: int, threads: int, worker_class: str) -> None:
    args = argparse.Namespace(
        bind="127.0.0.1:9000", workers=workers, threads=threads, timeout=60, access_log=False
    )
    assert gunicorn_options(args) == {
        "bind": ["127.0.0.1:9000"],
        "workers": workers,
        "threads": threads,
        "worker_class": worker_class,
        "timeout": 60,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "orchestrator-web",
        "limit_request_field_size": 16384,
    }

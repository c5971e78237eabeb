"""Shared by the webhook tests: GitHub-shaped payload fixtures, settings, signing and sending."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import redis.connection

from orchestrator.config import RepoConfig, Secrets, Settings, Triggers
from orchestrator.intake.github import sign

PAYLOADS = Path(__file__).parent / "payloads"
REPO = "acme/house-price"
SECRET = "It's a Secret to Everybody"
OLD_SECRET = "the secret before rotation"
OTHER_REPO = "acme/other"
OTHER_SECRET = "another repository's secret"
MERGE_SHA = "c4295bd74fb0f4fda03689c3df3f2803b658fd85"


@cache
def _load(name: str) -> str:
    return (PAYLOADS / f"{name}.json").read_text()


def payload(name: str) -> dict[str, Any]:
    """A fresh copy of tests/webhooks/payloads/<name>.json (GitHub's shape, trimmed)."""
    return copy.deepcopy(json.loads(_load(name)))


def settings(
    redis_url: str,
    *,
    push: tuple[str, ...] = (),
    merged: tuple[str, ...] = ("main", "master"),
    max_body_bytes: int = 64 * 1024,
    **kw: Any,
) -> Settings:
    """Two allow-listed repositories; REPO accepts two secrets (rotation)."""
    repos = {
        REPO: RepoConfig(
            full_name=REPO,
            clone_url="git@github.com:acme/house-price.git",
            webhook_secrets=("GITHUB_WEBHOOK_SECRET", "GITHUB_WEBHOOK_SECRET_OLD"),
            triggers=Triggers(pull_request_merged=merged, push=push),
        ),
        OTHER_REPO: RepoConfig(
            full_name=OTHER_REPO, clone_url="git@github.com:acme/other.git", webhook_secrets=("OTHER_SECRET",)
        ),
    }
    env = {
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_WEBHOOK_SECRET_OLD": OLD_SECRET,
        "OTHER_SECRET": OTHER_SECRET,
    }
    return Settings(
        redis_url=redis_url,
        repositories=repos,
        secrets=Secrets(env=env),
        public_url="http://ci.example.com",
        max_body_bytes=max_body_bytes,
        **kw,
    )


def merged_pr(sha: str, number: int = 42, base: str = "main", repo: str = REPO) -> dict[str, Any]:
    p = payload("pull_request.closed.merged")
    p["pull_request"]["merge_commit_sha"] = sha
    p["pull_request"]["number"] = p["number"] = number
    p["pull_request"]["base"]["ref"] = base
    p["repository"]["full_name"] = repo
    return p


def push_to(branch: str, sha: str, repo: str = REPO) -> dict[str, Any]:
    p = payload("push.branch")
    p["ref"] = "refs/heads/" + branch
    p["after"] = p["head_commit"]["id"] = sha
    p["repository"]["full_name"] = repo
    return p


def headers(
    event: str,
    body: bytes,
    secret: str | None = SECRET,
    delivery: str | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    """The headers GitHub sends with a delivery (signature omitted when ``secret`` is None)."""
    h = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "109948940",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "Content-Type": content_type,
    }
    if secret is not None:
        h["X-Hub-Signature-256"] = sign(secret.encode(), body)
    return h


def encode(p: dict[str, Any] | bytes) -> bytes:
    return p if isinstance(p, bytes) else json.dumps(p).encode()


@contextmanager
def counting_sends() -> Iterator[list[object]]:
    """Every command packet sent to Redis (any client) while the block runs: one per round trip."""
    sends: list[object] = []
    real = redis.connection.Connection.send_packed_command

    def counting(self: object, command: object, check_health: bool = True) -> None:
        sends.append(command)
        real(self, command, check_health)  # type: ignore[arg-type]

    redis.connection.Connection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield sends
    finally:
        redis.connection.Connection.send_packed_command = real  # type: ignore[method-assign]

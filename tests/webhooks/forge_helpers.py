"""Shared by the GitLab and Gitea tests: their documented payloads, settings, and senders that deliver
exactly as each forge does (headers from the forges' docs and source; see payloads/*/README.md)."""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

from orchestrator.config import RepoConfig, Secrets, Settings, Triggers
from orchestrator.intake.gitea import sign

from .helpers import PAYLOADS, encode

GITLAB_REPO = "gitlabhq/gitlab-test"  # project.path_with_namespace of GitLab's merge request example
GITLAB_PUSH_REPO = "mike/diaspora"  # of GitLab's push example
GITLAB_TOKEN = "glsecret-0123456789"
GITLAB_OLD_TOKEN = "glsecret-before-rotation"
GITLAB_MERGE_SHA = "a3f86b3e6e4bde0e8c5c2f0a5b9a1d2c3e4f5a6b"
GITEA_REPO = "test/repo"  # repository.full_name of Gitea's pull request test payload
GITEA_PUSH_REPO = "gitea/webhooks"  # of Gitea's documented push example
GITEA_SECRET = "gitea webhook secret"
GITEA_MERGE_SHA = "2020558fe2e34debb818a514715839cabd25e779"
GITHUB_REPO = "acme/house-price"
GITHUB_SECRET = "It's a Secret to Everybody"


@cache
def _load(path: str) -> str:
    return (PAYLOADS / f"{path}.json").read_text()


def payload(path: str) -> dict[str, Any]:
    """A fresh copy of tests/webhooks/payloads/<path>.json, e.g. ``gitlab/merge_request.merge``."""
    return copy.deepcopy(json.loads(_load(path)))


def forge_settings(redis_url: str, *, push: tuple[str, ...] = (), **kw: Any) -> Settings:
    """GitLab's and Gitea's example repositories, plus one GitHub repository, allow-listed."""

    def repo(name: str, forge: str, secrets: tuple[str, ...], **extra: Any) -> RepoConfig:
        return RepoConfig(
            full_name=name,
            clone_url=f"https://forge.example.com/{name}.git",
            webhook_secrets=secrets,
            triggers=Triggers(pull_request_merged=("main", "master"), push=push),
            forge=forge,  # type: ignore[arg-type]
            **extra,
        )

    gitea_api = {"api_url": "http://127.0.0.1:9/api/v1"}
    repos = [
        repo(GITLAB_REPO, "gitlab", ("GITLAB_WEBHOOK_TOKEN", "GITLAB_WEBHOOK_TOKEN_OLD")),
        repo(GITLAB_PUSH_REPO, "gitlab", ("GITLAB_WEBHOOK_TOKEN",)),
        repo("group/sub/project", "gitlab", ("GITLAB_WEBHOOK_TOKEN",)),
        repo(GITEA_REPO, "gitea", ("GITEA_WEBHOOK_SECRET",), **gitea_api),
        repo(GITEA_PUSH_REPO, "gitea", ("GITEA_WEBHOOK_SECRET",), **gitea_api),
        repo(GITHUB_REPO, "github", ("GITHUB_WEBHOOK_SECRET",)),
    ]
    env = {
        "GITLAB_WEBHOOK_TOKEN": GITLAB_TOKEN,
        "GITLAB_WEBHOOK_TOKEN_OLD": GITLAB_OLD_TOKEN,
        "GITEA_WEBHOOK_SECRET": GITEA_SECRET,
        "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
    }
    return Settings(
        redis_url=redis_url,
        repositories={r.full_name: r for r in repos},
        secrets=Secrets(env=env),
        public_url="http://ci.example.com",
        max_body_bytes=64 * 1024,
        **kw,
    )


def gitlab_headers(
    event: str, token: str | None = GITLAB_TOKEN, delivery: str | None = None
) -> dict[str, str]:
    """What GitLab sends ("Delivery headers" in GitLab's webhook docs); no token when ``token`` is None."""
    key = delivery or str(uuid.uuid4())
    h = {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.5.0",
        "X-Gitlab-Event": event,
        "X-Gitlab-Instance": "https://gitlab.example.com",
        "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "Idempotency-Key": key,
    }
    if token is not None:
        h["X-Gitlab-Token"] = token
    return h


def gitea_headers(
    event: str,
    body: bytes,
    secret: str | None = GITEA_SECRET,
    delivery: str | None = None,
    forgejo: bool = False,
) -> dict[str, str]:
    """What Gitea sends (services/webhook/deliver.go), or Forgejo with its X-Forgejo-* copies."""
    guid = delivery or str(uuid.uuid4())
    sig = sign(secret.encode(), body) if secret is not None else ""
    h = {"Content-Type": "application/json", "User-Agent": "Go-http-client/1.1"}
    families = ("Gitea", "Gogs", "Forgejo") if forgejo else ("Gitea", "Gogs")
    for family in families:
        h.update({f"X-{family}-Delivery": guid, f"X-{family}-Event": event, f"X-{family}-Event-Type": event})
        if secret is not None:
            h[f"X-{family}-Signature"] = sig
    h.update({"X-GitHub-Delivery": guid, "X-GitHub-Event": event, "X-GitHub-Event-Type": event})
    if secret is not None:
        h["X-Hub-Signature-256"] = "sha256=" + sig
    return h


CONFIGURED: Any = object()  # send with the secret the test settings configure


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    delivery: str


class Forge:
    """Sends deliveries to the app through Flask's test client, as GitLab or Gitea would."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    def send(
        self,
        event: str,
        p: dict[str, Any] | bytes,
        *,
        secret: Any = CONFIGURED,
        delivery: str | None = None,
        path: str | None = None,
        **hkw: Any,
    ) -> Reply:
        body = encode(p)
        if self.name == "gitlab":
            token = GITLAB_TOKEN if secret is CONFIGURED else secret
            h = gitlab_headers(event, token, delivery)
            delivered = h["Idempotency-Key"]
        else:
            key = GITEA_SECRET if secret is CONFIGURED else secret
            h = gitea_headers(event, body, key, delivery, **hkw)
            delivered = h["X-Gitea-Delivery"]
        resp = self.client.post(path or f"/webhooks/{self.name}", data=body, headers=h)
        return Reply(resp.status_code, json.loads(resp.data), delivered)

"""GitHub-shaped deliveries for the demo and the end-to-end test: build, sign and send them.

The payloads follow GitHub's documented shapes (trimmed to what a receiver reads); the signature
is the real algorithm, so the service cannot tell them from GitHub's own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any

import requests

ZERO_SHA = "0" * 40


def _repository(full_name: str, clone_url: str) -> dict[str, Any]:
    owner, name = full_name.split("/", 1)
    return {
        "id": 1296269,
        "name": name,
        "full_name": full_name,
        "private": False,
        "owner": {"login": owner, "id": 1, "type": "Organization"},
        "html_url": f"https://github.com/{full_name}",
        "clone_url": clone_url,
        "ssh_url": f"git@github.com:{full_name}.git",
        "default_branch": "main",
    }


def merged_pull_request(
    full_name: str,
    clone_url: str,
    *,
    number: int,
    merge_sha: str,
    head_sha: str,
    head_ref: str,
    base_ref: str = "main",
    title: str = "Improve the model",
    author: str = "octocat",
) -> dict[str, Any]:
    """A ``pull_request`` delivery with action closed and merged true."""
    return {
        "action": "closed",
        "number": number,
        "pull_request": {
            "number": number,
            "state": "closed",
            "title": title,
            "merged": True,
            "merge_commit_sha": merge_sha,
            "html_url": f"https://github.com/{full_name}/pull/{number}",
            "user": {"login": author},
            "merged_by": {"login": author},
            "head": {"ref": head_ref, "sha": head_sha, "label": f"{full_name.split('/')[0]}:{head_ref}"},
            "base": {"ref": base_ref, "sha": ZERO_SHA[:-1] + "1"},
        },
        "repository": _repository(full_name, clone_url),
        "sender": {"login": author, "id": 583231},
    }


def push(
    full_name: str,
    clone_url: str,
    *,
    ref: str,
    before: str,
    after: str,
    message: str = "Merge",
    author: str = "octocat",
) -> dict[str, Any]:
    """A ``push`` delivery (the one GitHub sends for the merge commit too)."""
    return {
        "ref": ref,
        "before": before,
        "after": after,
        "created": False,
        "deleted": after == ZERO_SHA,
        "forced": False,
        "compare": f"https://github.com/{full_name}/compare/{before[:12]}...{after[:12]}",
        "head_commit": {
            "id": after,
            "message": message,
            "author": {"name": author, "username": author},
            "url": f"https://github.com/{full_name}/commit/{after}",
        },
        "commits": [],
        "pusher": {"name": author},
        "repository": _repository(full_name, clone_url),
        "sender": {"login": author, "id": 583231},
    }


def sign(secret: str | bytes, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


@dataclass
class Sent:
    status: int
    body: dict[str, Any]
    delivery_id: str


def send(
    url: str,
    secret: str,
    event: str,
    payload: dict[str, Any],
    delivery_id: str | None = None,
    timeout: float = 10.0,
) -> Sent:
    """POST a signed delivery to ``url`` exactly as GitHub would."""
    body = json.dumps(payload).encode()
    delivery_id = delivery_id or str(uuid.uuid4())
    resp = requests.post(
        url,
        data=body,
        timeout=timeout,
        headers={
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/demo",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery_id,
            "X-GitHub-Hook-ID": "1",
            "X-Hub-Signature-256": sign(secret, body),
        },
    )
    try:
        data = resp.json()
    except ValueError:
        data = {"raw": resp.text}
    return Sent(resp.status_code, data, delivery_id)

"""Gitea / Forgejo commit statuses: ``POST {api_url}/repos/{owner}/{repo}/statuses/{sha}``.

Gitea's states are pending, success, error, failure and warning; mlship's map one to one.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from orchestrator.models import Build, is_sha
from orchestrator.notify.forge_http import HttpRequest

TITLE = "Gitea"
DEFAULT_API = ""  # self-hosted: api_url is required in the configuration
HINT = "check that the status token has the write:repository scope and api_url ends in /api/v1"
CONTEXT = "mlship"
STATES = ("pending", "success", "failure", "error")
_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+\Z")


def build_request(
    api_url: str, token: str, build: Build, state: str, description: str, target_url: str
) -> HttpRequest:
    """The request that reports ``state`` for ``build``'s commit (ValueError if it cannot be made)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {state!r}")
    if not _REPO.match(build.repo) or not is_sha(build.sha):
        raise ValueError(f"repo {build.repo[:100]!r} / sha {build.sha[:50]!r} are not Gitea-shaped")
    owner, name = build.repo.split("/")
    body = {"state": state, "target_url": target_url, "description": description, "context": CONTEXT}
    headers = {
        "Authorization": f"token {token}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": "mlship",
    }
    url = f"{api_url}/repos/{quote(owner)}/{quote(name)}/statuses/{build.sha}"
    return HttpRequest("POST", url, headers, body)

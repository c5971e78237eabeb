"""GitLab commit statuses: ``POST {api_url}/projects/:id/statuses/:sha`` (id = URL-encoded path).

GitLab's states are pending, running, success, failed and canceled; mlship's (the GitHub ones the
runner reports) map onto them, "running" and "canceled" read from the build itself.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from orchestrator.models import Build, BuildStatus, is_sha
from orchestrator.notify.forge_http import HttpRequest

TITLE = "GitLab"
DEFAULT_API = "https://gitlab.com/api/v4"
HINT = "check that the status token has the api scope and at least Developer access to the project"
NAME = "mlship"
MAX_DESCRIPTION = 255
_STATES = {"pending": "pending", "success": "success", "failure": "failed", "error": "failed"}
_PROJECT = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+\Z")  # group[/subgroup…]/project


def state_of(state: str, build: Build) -> str:
    """GitLab's state for mlship's ``state`` (pending|success|failure|error) of ``build``."""
    if state not in _STATES:
        raise ValueError(f"state must be one of {tuple(_STATES)}, not {state!r}")
    if state == "pending" and build.status is BuildStatus.RUNNING:
        return "running"
    if state == "error" and build.status is BuildStatus.CANCELLED:
        return "canceled"
    return _STATES[state]


def build_request(
    api_url: str, token: str, build: Build, state: str, description: str, target_url: str
) -> HttpRequest:
    """The request that reports ``state`` for ``build``'s commit (ValueError if it cannot be made)."""
    if not _PROJECT.match(build.repo) or not is_sha(build.sha):
        raise ValueError(f"repo {build.repo[:100]!r} / sha {build.sha[:50]!r} are not GitLab-shaped")
    body = {
        "state": state_of(state, build),
        "name": NAME,
        "target_url": target_url,
        "description": description[:MAX_DESCRIPTION],
    }
    if build.branch:
        body["ref"] = build.branch
    headers = {
        "PRIVATE-TOKEN": token,
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": "mlship",
    }
    url = f"{api_url}/projects/{quote(build.repo, safe='')}/statuses/{build.sha}"
    return HttpRequest("POST", url, headers, body)

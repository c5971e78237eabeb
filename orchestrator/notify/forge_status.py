"""Commit statuses for repositories on GitLab or Gitea/Forgejo (``commit_status.report`` sends
GitHub's itself and hands the others here).

The repository's ``api_url`` (GitLab defaults to gitlab.com) and the token named by
``status_token`` (GITLAB_TOKEN / GITEA_TOKEN unless set) say where and as whom; no token, no call.
"""

from __future__ import annotations

from typing import Protocol

from orchestrator.config import RepoConfig, Settings
from orchestrator.models import Build
from orchestrator.notify import forge_http, gitea_status, gitlab_status
from orchestrator.notify.forge_http import HttpRequest


class StatusApi(Protocol):
    """A forge's status module (``gitlab_status``, ``gitea_status``)."""

    TITLE: str
    DEFAULT_API: str
    HINT: str

    def build_request(
        self, api_url: str, token: str, build: Build, state: str, description: str, target_url: str
    ) -> HttpRequest: ...


FORGES: dict[str, StatusApi] = {"gitlab": gitlab_status, "gitea": gitea_status}


def report(settings: Settings, repo: RepoConfig, build: Build, state: str, description: str) -> int | None:
    """Report ``state`` (pending|success|failure|error) for the build's commit; the HTTP status, or
    None when nothing was sent (no token, or the build cannot be reported). Never raises."""
    module = FORGES[repo.forge]
    token = settings.secrets.get(repo.status_token_name or "")
    if not token:
        return None
    what = f"build {build.id} ({build.repo} {build.sha[:7]})"
    try:
        req = module.build_request(
            (repo.api_url or module.DEFAULT_API).rstrip("/"),
            token,
            build,
            state,
            description,
            f"{settings.public_url}/builds/{build.id}",
        )
    except ValueError as exc:
        forge_http.log.warning("not reporting a commit status for %s: %s", what, exc)
        return None
    return forge_http.send(req, module.TITLE, what, module.HINT)

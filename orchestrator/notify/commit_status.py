"""Commit statuses back to GitHub (pending / success / failure with a link to the build page).

``POST {github_api_url}/repos/{owner}/{name}/statuses/{sha}`` with context "mlship", only when a
token is configured. Failures to report never fail a build: they are logged and swallowed.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from orchestrator import defaults
from orchestrator.config import Settings
from orchestrator.masking import Masker
from orchestrator.models import Build, is_sha
from orchestrator.notify import forge_status

log = logging.getLogger("orchestrator.notify.commit_status")
CONTEXT = "mlship"
STATES = ("pending", "success", "failure", "error")
TIMEOUT = defaults.COMMIT_STATUS_TIMEOUT
_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class StatusRequest:
    """One commit status call as data (tested without a network)."""

    url: str
    body: dict[str, str]
    headers: dict[str, str]


def build_request(
    settings: Settings, token: str, build: Build, state: str, description: str
) -> StatusRequest:
    """The request that reports ``state`` for ``build``'s commit."""
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {state!r}")
    body = {
        "state": state,
        "target_url": f"{settings.public_url}/builds/{build.id}",
        "description": description[:140],
        "context": CONTEXT,
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
        "Content-Type": "application/json",
        "User-Agent": "mlship",
    }
    return StatusRequest(f"{settings.github_api_url}/repos/{build.repo}/statuses/{build.sha}", body, headers)


def describe(build: Build, status: str, error: str) -> str:
    """The commit status description of a finished build; a stopped model gate leads with its reason
    ("model gate failed: <checks>"), so the pull request shows why the model did not reach Prod."""
    marker = "model gate failed: "
    if status == "failed" and marker in error:
        return error[error.index(marker) :][:140]
    return (f"build {status}" + (f": {error}" if error else ""))[:140]


def report(settings: Settings, build: Build, state: str, description: str) -> None:
    """Report ``state`` (pending|success|failure|error) for the build's commit, if a token is set.
    Repositories on GitLab or Gitea report through their forge's status API (``forge_status``)."""
    repo = settings.repo(build.repo)
    if repo is not None and repo.forge != "github":
        forge_status.report(settings, repo, build, state, description)
        return
    token = settings.github_token()
    if not token:
        return
    if not _REPO_RE.match(build.repo) or not is_sha(build.sha):
        log.warning(
            "not reporting a status for build %s: repo %r / sha %r are not GitHub-shaped",
            build.id,
            build.repo[:100],
            build.sha[:50],
        )
        return
    # The runner masks what it sends; this is the last line of defence for every other caller.
    description = Masker(settings.secret_values())(description)
    try:
        req = build_request(settings, token, build, state, description)
        # The URL is the operator's github_api_url (http/https), never taken from a payload.
        http = urllib.request.Request(  # noqa: S310
            req.url, data=json.dumps(req.body).encode(), headers=req.headers, method="POST"
        )
        with urllib.request.urlopen(http, timeout=TIMEOUT) as resp:  # noqa: S310
            resp.read()
    except urllib.error.HTTPError as exc:
        log.warning(
            "GitHub refused the commit status for build %s (%s %s): HTTP %s — check the token's "
            "repo:status scope",
            build.id,
            build.repo,
            build.sha[:7],
            exc.code,
        )
    except Exception as exc:  # a status is a courtesy; it never fails a build
        log.warning(
            "could not report the commit status for build %s to %s: %s",
            build.id,
            settings.github_api_url,
            exc,
        )

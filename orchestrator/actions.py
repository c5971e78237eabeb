"""What a person or script can ask for: trigger, re-run, cancel, promote, roll back.

Thin glue shared by the REST API, the HTML forms and the CLI: it validates the request, then
delegates to the pipeline engine (orchestrator.build.cancel) and the deploy engine
(orchestrator.deploy.policy).
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator import Runtime, defaults
from orchestrator.build import cancel as cancel_builds
from orchestrator.config import RepoConfig
from orchestrator.deploy import policy
from orchestrator.errors import Conflict, InfrastructureError, NotFound, PayloadError
from orchestrator.intake.forge import normalize_ref  # the one branch-name check (API and webhook)
from orchestrator.models import Build, Trigger, is_sha
from orchestrator.store.progressive import COMMANDS as DEPLOY_COMMANDS

ENV_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
LS_REMOTE_TIMEOUT = defaults.LS_REMOTE_TIMEOUT


def ls_remote_argv(clone_url: str, full_ref: str) -> list[str]:
    """The git command that resolves a branch of the origin to its commit (``--`` before the ref)."""
    return ["git", "ls-remote", clone_url, "--", full_ref]


def resolve_branch(repo: RepoConfig, full_ref: str) -> str:
    """The sha ``full_ref`` points to at the repository's origin; NotFound if the branch is missing."""
    from orchestrator.build.workspace import run_git

    out = run_git(ls_remote_argv(repo.clone_url, full_ref), timeout=LS_REMOTE_TIMEOUT)
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name.strip() == full_ref and is_sha(sha.strip()):
            return sha.strip()
    raise NotFound(f"branch {full_ref} does not exist in {repo.full_name}", repo=repo.full_name, ref=full_ref)


def _repo(rt: Runtime, name: Any) -> RepoConfig:
    if not isinstance(name, str) or not name:
        raise PayloadError("repo is required: the full name of an allow-listed repository, e.g. acme/model")
    repo = rt.settings.repo(name)
    if repo is None:
        raise NotFound(
            f"repository {name!r} is not allow-listed on this server (server configuration: repositories)",
            repo=name[:100],
        )
    return repo


def trigger_build(rt: Runtime, repo_name: Any, ref: Any = None, sha: Any = None, by: str = "") -> Build:
    """A manual build of ``repo`` at ``sha`` (exact) or at the head of branch ``ref``."""
    repo = _repo(rt, repo_name)
    if ref is None and sha is None:
        raise PayloadError("give a ref (branch) or a sha (40 hex digits) to build")
    full_ref, branch = normalize_ref(ref) if ref is not None else ("", "")
    if sha is not None:
        if not is_sha(sha):
            raise PayloadError("sha must be a full 40-character lowercase hex commit id", sha=str(sha)[:80])
    else:
        try:
            sha = resolve_branch(repo, full_ref)
        except InfrastructureError as exc:
            raise InfrastructureError(
                f"cannot resolve {full_ref} at {repo.full_name}'s origin: {exc}", repo=repo.full_name
            ) from exc
    from orchestrator.build.queue import enqueuer

    trigger = Trigger(
        repo=repo.full_name,
        sha=sha,
        ref=full_ref,
        branch=branch,
        kind="manual",
        author=by,
        message=f"manual build of {branch or sha[:7]}",
    )
    build, _ = rt.store.create_build(
        trigger,
        pipeline=repo.pipeline,
        triggered_by=by or "api",
        enqueue=enqueuer(rt.queue, rt.settings.build_timeout),
        dedup=False,
    )
    return build


def rerun(rt: Runtime, build_id: int, by: str = "") -> Build:
    """A new build of the same commit; Conflict while the original still runs."""
    return cancel_builds.rerun_build(rt, build_id, by=by)


def cancel(rt: Runtime, build_id: int, by: str = "") -> Build:
    """Cancel a queued or running build; Conflict if it already finished."""
    return cancel_builds.cancel_build(rt, build_id, by=by)


def deploy_command(rt: Runtime, build_id: int, command: Any, by: str = "") -> Build:
    """Pause, resume, abort (roll back) or promote-now the progressive deploy a running build runs;
    its worker reads the command within a second (orchestrator/deploy/strategy.py)."""
    if command not in DEPLOY_COMMANDS:
        raise PayloadError(
            f"unknown deploy command {str(command)[:40]!r}: one of {', '.join(DEPLOY_COMMANDS)}",
            command=str(command)[:40],
        )
    build = rt.store.get_build(build_id)
    if build.status.finished:
        raise Conflict(
            f"build {build_id} already finished ({build.status}); there is no deploy to {command}",
            build=build_id,
        )
    rt.store.push_deploy_command(build_id, command, by)
    return build


def _env(env: Any) -> str:
    if not isinstance(env, str) or not ENV_RE.match(env):
        raise PayloadError(
            "environment must be a name like 'qa' or 'prod' ([a-z0-9_-])", environment=str(env)[:80]
        )
    return env


def promote(rt: Runtime, build_id: int, env: Any, by: str = "") -> Build:
    """Deploy a successful build's image to ``env`` (a new build with trigger 'promote')."""
    env = _env(env)
    rt.store.get_build(build_id)  # NotFound before anything else
    return policy.request_promote(rt, build_id, env, by)


def rollback(rt: Runtime, repo_name: Any, env: Any, by: str = "") -> Build:
    """Put the previous deployment of ``repo`` in ``env`` back (a new build with trigger 'rollback')."""
    env = _env(env)
    repo = _repo(rt, repo_name)
    return policy.request_rollback(rt, repo.full_name, env, by)

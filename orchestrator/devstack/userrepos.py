"""The user's own repositories in the embedded setup (``mlship standalone --repo PATH_OR_URL``).

Each is mirrored into a bare repository under the state directory (the origin the worker clones),
its pipeline.yaml is validated at start with file:line errors, and the banner shows a ready-to-paste
``curl`` that sends a signed push delivery for its head: build #1.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import Allow
from orchestrator.devstack.services import git
from orchestrator.errors import ConfigError, InfrastructureError, PipelineError
from orchestrator.pipeline import BUILTIN_VARS, load_pipeline

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(source: str) -> str:
    name = source.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or "repo"
    return _SLUG.sub("-", name).strip("-.") or "repo"


@dataclass
class UserRepo:
    """One repository the user added: where it came from, its mirror, its name and secret."""

    source: str
    mirror: Path
    name: str = ""
    branch: str = "main"

    @classmethod
    def at(cls, source: str, state: Path) -> UserRepo:
        slug = _slug(source)
        return cls(source, state / "repos" / f"{slug}.git", name=f"local/{slug}")

    @property
    def clone_url(self) -> str:
        return f"file://{self.mirror}"

    @property
    def secret_name(self) -> str:
        return "WEBHOOK_SECRET_" + re.sub(r"[^A-Z0-9]", "_", self.name.split("/", 1)[1].upper())

    def sync(self) -> UserRepo:
        """Mirror the source (a local path or a URL) into the bare repository, or refresh it."""
        path = Path(self.source).expanduser()
        url = str(path.resolve()) if path.exists() else self.source
        if path.exists() and not (path / ".git").exists() and not (path / "HEAD").exists():
            raise ConfigError(f"--repo {self.source}: not a git repository (run `git init` and commit first)")
        if self.mirror.exists():
            git("remote", "set-url", "origin", url, cwd=self.mirror)
            git("fetch", "-q", "--prune", "origin", "+refs/heads/*:refs/heads/*", cwd=self.mirror)
        else:
            self.mirror.parent.mkdir(parents=True, exist_ok=True)
            git("clone", "-q", "--mirror", url, str(self.mirror))
        self.branch = self._default_branch()
        return self

    def _default_branch(self) -> str:
        try:
            return git("symbolic-ref", "--short", "HEAD", cwd=self.mirror)
        except InfrastructureError:
            return "main"

    def head(self) -> str:
        try:
            return git("rev-parse", f"refs/heads/{self.branch}", cwd=self.mirror)
        except InfrastructureError as exc:
            raise ConfigError(f"--repo {self.source}: branch '{self.branch}' has no commit yet") from exc

    def validate(self, variables: dict[str, str]) -> str:
        """The pipeline's summary; a PipelineError with file:line when pipeline.yaml is invalid."""
        try:
            text = git("show", f"refs/heads/{self.branch}:pipeline.yaml", cwd=self.mirror)
        except InfrastructureError:
            raise ConfigError(
                f"--repo {self.source}: no pipeline.yaml on '{self.branch}': write one with "
                f"`mlship init {self.source}`, commit it, and start again"
            ) from None
        where = f"{self.source.rstrip('/')}/pipeline.yaml"
        known = {**{name: "x" for name in BUILTIN_VARS}, **variables}
        pipeline = load_pipeline(text, where, variables=known, allow=Allow())
        return f"{pipeline.name}: {', '.join(s.name for s in pipeline.steps)}"

    def config(self) -> dict[str, object]:
        """This repository's entry under ``repositories:`` in the server config."""
        return {
            "clone_url": self.clone_url,
            "webhook_secrets": [self.secret_name],
            "triggers": {"pull_request_merged": [self.branch], "push": [self.branch]},
            # what its pipeline may reach: the embedded QA and Prod hosts (both sshd on loopback)
            "reach": {"deploy_targets": [{"host": "127.0.0.1"}]},
        }

    def push_payload(self) -> dict[str, object]:
        """A GitHub ``push`` delivery for the branch head (trimmed to what the intake reads)."""
        owner, short = self.name.split("/", 1)
        return {
            "ref": f"refs/heads/{self.branch}",
            "before": "0" * 39 + "1",
            "after": self.head(),
            "repository": {"full_name": self.name, "name": short, "owner": {"login": owner}},
            "head_commit": {"message": "first build from mlship standalone", "author": {"name": "you"}},
            "sender": {"login": "you"},
        }


def curl_command(url: str, secret: str, payload: dict[str, object]) -> str:
    """A shell command that sends ``payload`` signed like GitHub does (HMAC-SHA256 computed by openssl)."""
    body = json.dumps(payload, separators=(",", ":"))
    sig = f"$(printf %s \"$body\" | openssl dgst -sha256 -hmac {shlex.quote(secret)} | sed 's/^.* //')"
    return (
        f"body={shlex.quote(body)}; "
        f"curl -sS -X POST {shlex.quote(url)} -H 'Content-Type: application/json' "
        "-H 'X-GitHub-Event: push' -H \"X-GitHub-Delivery: first-$(date +%s%N)\" "
        f'-H "X-Hub-Signature-256: sha256={sig}" --data-binary "$body"'
    )


def prepare(sources: list[str], state: Path, variables: dict[str, str]) -> list[UserRepo]:
    """Mirror and validate every ``--repo``; all problems at once, each with its file:line."""
    repos: list[UserRepo] = []
    problems: list[str] = []
    for source in sources:
        repo = UserRepo.at(source, state)
        if any(r.name == repo.name for r in repos):
            problems.append(f"--repo {source}: another --repo is also named {repo.name}")
            continue
        try:
            repo.sync().validate(variables)
        except (ConfigError, PipelineError, InfrastructureError) as exc:
            problems.append(str(exc))
            continue
        repos.append(repo)
    if problems:
        raise ConfigError("\n".join(problems))
    return repos

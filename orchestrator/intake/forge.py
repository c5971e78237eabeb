"""The one interface every forge implements (GitHub, GitLab, Gitea/Forgejo), and what they share.

A forge is a pure module — ``github``, ``gitlab``, ``gitea`` — that satisfies ``Forge``: it reads a
delivery's headers, authenticates its body against the configured secrets, names the repository a
payload is about and turns a verified payload into a ``Decision``. ``webhooks.py`` runs one intake
flow (verify → record → match → dedup → build + job) with whichever forge the URL names, so every
forge gets the same delivery records, dedup and verdicts. The trigger rules (tracked branches, tags,
deletions) live here once; a forge module only extracts its payload's fields.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol

import orjson

from orchestrator.config import RepoConfig
from orchestrator.errors import ConfigError, PayloadError
from orchestrator.models import Trigger, is_sha

ZERO_SHA = "0" * 40
# Forges send UUIDs; anything key-safe and short is accepted so other senders (tests, a relay) work.
DELIVERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}\Z")


@dataclass(frozen=True)
class Meta:
    """What the headers say about a delivery."""

    delivery_id: str
    event: str


@dataclass(frozen=True)
class Decision:
    """What to do with a verified delivery: build ``trigger``, or nothing and why."""

    reason: str
    trigger: Trigger | None = None
    action: str = ""
    ref: str = ""
    sha: str = ""
    zen: str | None = None


class Forge(Protocol):
    """A forge module: ``webhooks.py`` uses nothing else of it."""

    NAME: str  # github | gitlab | gitea: RepoConfig.forge and the URL /webhooks/<NAME>
    TITLE: str  # for messages: "GitLab"
    SIGNATURE_HEADER: str  # the header that authenticates a delivery (named in errors)
    REPOSITORY_FIELD: str  # where a payload names its repository, e.g. project.path_with_namespace

    def parse_meta(self, headers: Any) -> Meta:
        """Delivery id and event name from the headers (case-insensitive ``.get``)."""
        ...

    def verify(self, body: bytes, headers: Any, secrets: Sequence[bytes]) -> int:
        """The index of the secret that authenticates ``body``; SignatureError if none does."""
        ...

    def parse_body(self, body: bytes) -> dict[str, Any]:
        """The JSON object of a delivery (called only after ``verify``)."""
        ...

    def repository_of(self, payload: Mapping[str, Any]) -> str | None:
        """The repository's full name, or None when the delivery is not about one repository."""
        ...

    def decide(self, event: str, payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
        """Turn one verified delivery for an allow-listed repository into a Decision."""
        ...

    def ping(self, payload: Mapping[str, Any]) -> Decision:
        """The answer to a ``ping`` event about no repository (a forge's set-up check)."""
        ...


# -- authentication ---------------------------------------------------------------------------------


def require_secrets(secrets: Sequence[bytes]) -> None:
    """A delivery can only be authenticated against at least one non-empty secret."""
    if not secrets:
        raise ConfigError("no webhook secret is configured: list secret names under webhook_secrets")
    if any(not s for s in secrets):
        raise ConfigError("an empty webhook secret would accept anything: set a non-empty value")


def matching_secret(given: bytes, expected: Sequence[bytes]) -> int:
    """Index of the first of ``expected`` equal to ``given``, or -1.

    Every candidate is compared (no early exit) and both sides are hashed first, so the time taken
    tells neither which secret matched nor how long any secret is.
    """
    probe = hashlib.sha256(given).digest()
    matched = -1
    for i, value in enumerate(expected):
        if hmac.compare_digest(hashlib.sha256(value).digest(), probe) and matched < 0:
            matched = i
    return matched


def header_bytes(value: str) -> bytes:
    """A header's raw bytes (WSGI hands headers over decoded as latin-1)."""
    return value.strip().encode("latin-1", "replace")


def first_header(headers: Any, names: Sequence[str]) -> tuple[str, str]:
    """(name, value) of the first of ``names`` present and non-blank, or ("", "")."""
    for name in names:
        value = (headers.get(name) or "").strip()
        if value:
            return name, value
    return "", ""


def delivery_id(value: str, header: str, forge: str) -> str:
    if not value:
        raise PayloadError(f"missing {header} header: is this a {forge} webhook delivery?")
    if not DELIVERY_ID.match(value):
        raise PayloadError(f"{header} must be 1-100 characters of [A-Za-z0-9._:-]")
    return value


def event_name(value: str | None, header: str, forge: str, pattern: re.Pattern[str], form: str) -> str:
    """The event header's value: present (else "is this a <forge> delivery?") and of ``form``."""
    event = (value or "").strip()
    if not event:
        raise PayloadError(f"missing {header} header: is this a {forge} webhook delivery?")
    if not pattern.match(event):
        raise PayloadError(f"{header} must be {form}")
    return event


def named_repository(payload: Mapping[str, Any], key: str, field: str, label: str) -> str | None:
    """``payload[key][field]`` (the repository's full name), or None when ``key`` is absent: the
    delivery is not about one repository."""
    value = payload.get(key)
    if value is None:
        return None
    return string(obj(value, key), field, label, required=True)


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object of a delivery, for every forge (call only after the delivery is verified)."""
    try:
        payload = orjson.loads(body)  # UTF-8, as forges send: about 3x faster than json
    except orjson.JSONDecodeError:
        try:  # JSON's other encodings (UTF-16/32, BOMs) and what orjson is stricter about
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise PayloadError(f"the body is not valid JSON: {exc}") from None
        except RecursionError:  # orjson stops at 1024 levels; json would overflow the stack
            raise PayloadError("the body nests JSON too deeply (more than 1024 levels)") from None
    if not isinstance(payload, dict):
        raise PayloadError("the body must be a JSON object")
    return payload


def ping(payload: Mapping[str, Any]) -> Decision:
    """For forges without a ping event: a ping about no repository is answered, nothing is built."""
    return Decision("ping: webhook is set up; nothing to build")


# -- trigger rules, the same for every forge --------------------------------------------------------


_REF_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+/-]*$")  # a conservative git-check-ref-format


def normalize_ref(ref: str) -> tuple[str, str]:
    """``main`` or ``refs/heads/main`` → (full ref, branch); PayloadError for anything unsafe.

    The one branch-name check: the API's manual trigger and every webhook build run it before a
    branch reaches git or a pipeline's ``${BRANCH}``."""
    if not isinstance(ref, str) or not ref or len(ref) > 255:
        raise PayloadError("ref must be a branch name like 'main' or 'refs/heads/main'", ref=str(ref)[:80])
    full = ref if ref.startswith("refs/heads/") else f"refs/heads/{ref}"
    branch = full[len("refs/heads/") :]
    bad = (
        not _REF_PART.match(branch)
        or ".." in branch
        or "//" in branch
        or "@{" in branch
        or branch.endswith(("/", ".", ".lock"))
        or "/." in branch
    )
    if bad:
        raise PayloadError(
            f"ref {ref!r} is not a valid branch name (letters, digits, '._+/-'; no '..', no leading '-')",
            ref=ref[:80],
        )
    return full, branch


def checked_branch(branch: str, where: str) -> str:
    """``branch`` if it is safe to build (``normalize_ref``), else PayloadError naming the field."""
    try:
        normalize_ref(branch)
    except PayloadError as exc:
        raise PayloadError(f"'{where}': {exc.message}; such a branch is not built", field=where) from None
    return branch


def branch_matches(branch: str, patterns: Sequence[str]) -> bool:
    """True if ``branch`` equals a pattern or matches it as a glob (``release/*``; ``*`` spans ``/``)."""
    return any(branch == p or fnmatchcase(branch, p) for p in patterns)


@dataclass(frozen=True)
class Merge:
    """A pull (or merge) request that was merged, as a forge's payload describes it."""

    label: str  # "pull request #42", "merge request !7"
    action: str
    base: str  # the branch it was merged into
    sha: Any  # the merge commit, unchecked
    sha_field: str  # where ``sha`` came from, for the error message
    author: str = ""
    title: str = ""
    url: str = ""
    number: int | None = None


def merged(repo: RepoConfig, m: Merge) -> Decision:
    """Build the merge commit if ``m.base`` is tracked for merged pull requests."""
    ref = "refs/heads/" + m.base
    tracked = repo.triggers.pull_request_merged
    if not branch_matches(m.base, tracked):
        return Decision(
            f"{m.label} was merged into '{m.base}', which is not tracked (tracked: {names(tracked)})",
            action=m.action,
            ref=ref,
        )
    sha = commit_sha(m.sha, m.sha_field)
    checked_branch(m.base, "pull_request.base.ref")
    trigger = Trigger(
        repo=repo.full_name,
        sha=sha,
        ref=ref,
        branch=m.base,
        kind="pull_request_merged",
        author=m.author,
        message=m.title,
        url=m.url,
        pr_number=m.number,
    )
    return Decision(f"{m.label} merged into '{m.base}'", trigger, action=m.action, ref=ref, sha=sha)


@dataclass(frozen=True)
class Push:
    """A push, as a forge's payload describes it."""

    ref: str
    after: str  # the new head, unchecked
    deleted: bool = False
    author: str = ""
    message: str = ""
    url: str = ""


def pushed(repo: RepoConfig, p: Push) -> Decision:
    """Build a push to a branch tracked under ``triggers.push``; tags and deletions never build."""
    ref = p.ref
    if ref.startswith("refs/tags/"):
        return Decision(f"tag push ({ref}) does not start builds", ref=ref)
    if p.deleted or p.after == ZERO_SHA:
        return Decision(f"branch deletion ({ref}) does not start builds", ref=ref)
    if not ref.startswith("refs/heads/"):
        return Decision(f"push to {ref}, which is not a branch", ref=ref)
    branch = ref[len("refs/heads/") :]
    tracked = repo.triggers.push
    if not tracked:
        return Decision(
            f"push to '{branch}': push triggers are not configured for {repo.full_name} "
            "(merged pull requests start builds; add branches under triggers.push to build pushes)",
            ref=ref,
        )
    if not branch_matches(branch, tracked):
        return Decision(
            f"push to '{branch}', which is not tracked for pushes (tracked: {names(tracked)})", ref=ref
        )
    sha = commit_sha(p.after, "after")
    checked_branch(branch, "ref")
    trigger = Trigger(
        repo=repo.full_name,
        sha=sha,
        ref=ref,
        branch=branch,
        kind="push",
        author=p.author,
        message=p.message,
        url=p.url,
    )
    return Decision(f"push to '{branch}'", trigger, ref=ref, sha=sha)


# -- field access: every payload value is checked for its type before use --------------------------


def obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"'{where}' must be a JSON object", field=where)
    return value


def string(o: Mapping[str, Any], key: str, where: str, required: bool = False) -> str:
    value = o.get(key)
    if isinstance(value, str) and (value or not required):
        return value
    if value is None and not required:
        return ""
    raise PayloadError(f"'{where}' must be a non-empty string", field=where)


def text(value: Any) -> str:
    """A value used only for display: the string, or '' for anything else."""
    return value if isinstance(value, str) else ""


def mapping(value: Any) -> Mapping[str, Any]:
    """An optional object: the dict, or {} for anything else."""
    return value if isinstance(value, dict) else {}


def head_of(commits: Any, after: str) -> Mapping[str, Any]:
    """The pushed head among a push's ``commits`` (the one whose id is ``after``, else the last), or {}."""
    listed = [c for c in commits if isinstance(c, dict)] if isinstance(commits, list) else []
    return next((c for c in listed if c.get("id") == after), listed[-1] if listed else {})


def commit_sha(value: Any, where: str) -> str:
    if isinstance(value, str) and is_sha(value.lower()):
        return value.lower()
    raise PayloadError(f"'{where}' must be a commit sha of 40 hex characters", field=where)


def names(patterns: Sequence[str]) -> str:
    return ", ".join(patterns) if patterns else "none"

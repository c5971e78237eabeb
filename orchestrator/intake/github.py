"""GitHub deliveries, pure: signature check, header and payload parsing, trigger matching.

No Flask, no Redis: ``webhooks.py`` feeds raw headers and bytes in and acts on the ``Decision``.
Everything that comes from a payload is data: it is type-checked and stored verbatim, never
interpreted (branch names reach git only after ``--``, never a shell).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import orjson

from orchestrator.config import RepoConfig
from orchestrator.errors import ConfigError, PayloadError, SignatureError
from orchestrator.models import Trigger

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"
ZERO_SHA = "0" * 40
_PREFIX = "sha256="
_SHA = re.compile(r"[0-9a-f]{40}\Z")
# GitHub sends GUIDs; anything key-safe and short is accepted so other senders (tests, a relay) work.
_DELIVERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}\Z")
_EVENT = re.compile(r"[a-z_]{1,64}\Z")
# A conservative subset of git-check-ref-format: no leading '-', no '..', '//', '@{', control chars.
_REF_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+/-]*$")


# -- signature --------------------------------------------------------------------------------------


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body`` signed with ``secret``."""
    return _PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secrets: Sequence[bytes]) -> int:
    """Return the index of the secret that signed ``body``; raise SignatureError if none did.

    Every secret is compared (constant time, no early exit), so timing does not tell how close a
    guess came. Error messages describe the header, never the expected MAC.
    """
    if not secrets:
        raise ConfigError("no webhook secret is configured: list secret names under webhook_secrets")
    if any(not s for s in secrets):
        raise ConfigError("an empty webhook secret would accept anything: set a non-empty value")
    if not header:
        raise SignatureError(
            f"missing {SIGNATURE_HEADER} header: set a secret on the GitHub webhook (Settings → Webhooks)"
        )
    if not header.startswith(_PREFIX):
        raise SignatureError(f"{SIGNATURE_HEADER} must look like 'sha256=<64 hex digits>'")
    given = header[len(_PREFIX) :].strip().encode("latin-1", "replace")
    matched = -1
    for i, secret in enumerate(secrets):
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(expected, given) and matched < 0:
            matched = i
    if matched < 0:
        raise SignatureError(
            f"{SIGNATURE_HEADER} does not match any configured secret: the secret in the GitHub "
            "webhook settings must equal the server's webhook secret for this repository"
        )
    return matched


# -- headers and body -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    """What the headers say about a delivery."""

    delivery_id: str
    event: str


def parse_meta(headers: Mapping[str, str] | Any) -> Meta:
    """Delivery id and event name from the headers (case-insensitive mapping)."""
    delivery_id = (headers.get(DELIVERY_HEADER) or "").strip()
    event = (headers.get(EVENT_HEADER) or "").strip()
    if not delivery_id:
        raise PayloadError(f"missing {DELIVERY_HEADER} header: is this a GitHub webhook delivery?")
    if not _DELIVERY_ID.match(delivery_id):
        raise PayloadError(f"{DELIVERY_HEADER} must be 1-100 characters of [A-Za-z0-9._:-]")
    if not event:
        raise PayloadError(f"missing {EVENT_HEADER} header: is this a GitHub webhook delivery?")
    if not _EVENT.match(event):
        raise PayloadError(f"{EVENT_HEADER} must be a lower-case event name such as pull_request")
    return Meta(delivery_id, event)


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a delivery (call only after the signature is verified)."""
    try:
        payload = orjson.loads(body)  # UTF-8, as GitHub sends: about 3x faster than json
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


def repository_of(payload: Mapping[str, Any]) -> str | None:
    """``repository.full_name``, or None when the delivery is not about one repository."""
    repo = payload.get("repository")
    if repo is None:
        return None
    return _str(_obj(repo, "repository"), "full_name", "repository.full_name", required=True)


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


# -- decisions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do with a verified delivery: build ``trigger``, or nothing and why."""

    reason: str
    trigger: Trigger | None = None
    action: str = ""
    ref: str = ""
    sha: str = ""
    zen: str | None = None

    @property
    def build(self) -> bool:
        return self.trigger is not None


def decide(event: str, payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    """Turn one verified delivery for an allow-listed repository into a Decision."""
    if event == "ping":
        return ping(payload)
    if event == "pull_request":
        return _pull_request(payload, repo)
    if event == "push":
        return _push(payload, repo)
    return Decision(
        f"event '{event}' does not start builds; send only pull requests and pushes to this webhook"
    )


def branch_matches(branch: str, patterns: Sequence[str]) -> bool:
    """True if ``branch`` equals a pattern or matches it as a glob (``release/*``; ``*`` spans ``/``)."""
    return any(branch == p or fnmatchcase(branch, p) for p in patterns)


def ping(payload: Mapping[str, Any]) -> Decision:
    """A ping (sent when the webhook is created): answer with the hook's zen, build nothing."""
    zen = payload.get("zen")
    hook_id = payload.get("hook_id")
    hook = f" {hook_id}" if isinstance(hook_id, int) else ""
    return Decision(
        f"ping: webhook{hook} is set up; nothing to build", zen=zen if isinstance(zen, str) else ""
    )


def _pull_request(payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    action = _str(payload, "action", "action", required=True)
    pr = _obj(payload.get("pull_request"), "pull_request")
    number = pr.get("number", payload.get("number"))
    label = f"pull request #{number}" if isinstance(number, int) else "pull request"
    base = _str(_obj(pr.get("base"), "pull_request.base"), "ref", "pull_request.base.ref", required=True)
    ref = "refs/heads/" + base
    if action != "closed":
        return Decision(f"{label} {action}: only merged pull requests start builds", action=action, ref=ref)
    if pr.get("merged") is not True:
        return Decision(f"{label} was closed without merging", action=action, ref=ref)
    tracked = repo.triggers.pull_request_merged
    if not branch_matches(base, tracked):
        return Decision(
            f"{label} was merged into '{base}', which is not tracked (tracked: {_names(tracked)})",
            action=action,
            ref=ref,
        )
    sha = _sha(pr.get("merge_commit_sha"), "pull_request.merge_commit_sha")
    _branch(base, "pull_request.base.ref")
    user = _login(pr.get("merged_by")) or _login(pr.get("user"))
    title = pr.get("title")
    url = pr.get("html_url")
    trigger = Trigger(
        repo=repo.full_name,
        sha=sha,
        ref=ref,
        branch=base,
        kind="pull_request_merged",
        author=user,
        message=title if isinstance(title, str) else "",
        url=url if isinstance(url, str) else "",
        pr_number=number if isinstance(number, int) else None,
    )
    return Decision(f"{label} merged into '{base}'", trigger, action=action, ref=ref, sha=sha)


def _push(payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    ref = _str(payload, "ref", "ref", required=True)
    after = _str(payload, "after", "after", required=True)
    if ref.startswith("refs/tags/"):
        return Decision(f"tag push ({ref}) does not start builds", ref=ref)
    if payload.get("deleted") is True or after == ZERO_SHA:
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
            f"push to '{branch}', which is not tracked for pushes (tracked: {_names(tracked)})", ref=ref
        )
    sha = _sha(after, "after")
    _branch(branch, "ref")
    head_value = payload.get("head_commit")
    head: Mapping[str, Any] = head_value if isinstance(head_value, dict) else {}
    author_value = head.get("author")
    author: Mapping[str, Any] = author_value if isinstance(author_value, dict) else {}
    who = author.get("username") or author.get("name") or _login(payload.get("sender"))
    message = head.get("message")
    url = head.get("url") or payload.get("compare")
    trigger = Trigger(
        repo=repo.full_name,
        sha=sha,
        ref=ref,
        branch=branch,
        kind="push",
        author=who if isinstance(who, str) else "",
        message=message if isinstance(message, str) else "",
        url=url if isinstance(url, str) else "",
    )
    return Decision(f"push to '{branch}'", trigger, ref=ref, sha=sha)


# -- field access: every payload value is checked for its type before use --------------------------


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"'{where}' must be a JSON object", field=where)
    return value


def _str(obj: Mapping[str, Any], key: str, where: str, required: bool = False) -> str:
    value = obj.get(key)
    if isinstance(value, str) and (value or not required):
        return value
    if value is None and not required:
        return ""
    raise PayloadError(f"'{where}' must be a non-empty string", field=where)


def _sha(value: Any, where: str) -> str:
    if isinstance(value, str) and _SHA.match(value.lower()):
        return value.lower()
    raise PayloadError(f"'{where}' must be a commit sha of 40 hex characters", field=where)


def _branch(branch: str, where: str) -> None:
    try:
        normalize_ref(branch)
    except PayloadError as exc:
        raise PayloadError(f"'{where}': {exc.message}; such a branch is not built", field=where) from None


def _login(user: Any) -> str:
    login = user.get("login") if isinstance(user, dict) else None
    return login if isinstance(login, str) else ""


def _names(patterns: Sequence[str]) -> str:
    return ", ".join(patterns) if patterns else "none"

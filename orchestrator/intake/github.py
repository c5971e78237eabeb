"""GitHub deliveries, pure: signature check, header and payload parsing, trigger matching.

This module is the GitHub ``Forge`` (see ``forge.py``). No Flask, no Redis: ``webhooks.py`` feeds raw
headers and bytes in and acts on the ``Decision``. Everything that comes from a payload is data: it
is type-checked and stored verbatim, never interpreted (branch names reach git only after ``--``,
never a shell).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.config import RepoConfig
from orchestrator.errors import SignatureError
from orchestrator.intake import forge
from orchestrator.intake.forge import ZERO_SHA as ZERO_SHA  # re-exported for current callers
from orchestrator.intake.forge import Decision as Decision
from orchestrator.intake.forge import Merge, Push
from orchestrator.intake.forge import Meta as Meta
from orchestrator.intake.forge import branch_matches as branch_matches

NAME = "github"
EVENT_FORM = "a lower-case event name such as pull_request"  # what the event header must look like
TITLE = "GitHub"
SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"
REPOSITORY_FIELD = "repository.full_name"
_PREFIX = "sha256="
_EVENT = re.compile(r"[a-z_]{1,64}\Z")
# A conservative subset of git-check-ref-format: no leading '-', no '..', '//', '@{', control chars.


# -- signature --------------------------------------------------------------------------------------


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body`` signed with ``secret``."""
    return _PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secrets: Sequence[bytes]) -> int:
    """Return the index of the secret that signed ``body``; raise SignatureError if none did.

    Every secret is compared (constant time, no early exit), so timing does not tell how close a
    guess came. Error messages describe the header, never the expected MAC.
    """
    forge.require_secrets(secrets)
    if not header:
        raise SignatureError(
            f"missing {SIGNATURE_HEADER} header: set a secret on the GitHub webhook (Settings → Webhooks)"
        )
    if not header.startswith(_PREFIX):
        raise SignatureError(f"{SIGNATURE_HEADER} must look like 'sha256=<64 hex digits>'")
    given = forge.header_bytes(header[len(_PREFIX) :])
    expected = [hmac.new(s, body, hashlib.sha256).hexdigest().encode() for s in secrets]
    matched = forge.matching_secret(given, expected)
    if matched < 0:
        raise SignatureError(
            f"{SIGNATURE_HEADER} does not match any configured secret: the secret in the GitHub "
            "webhook settings must equal the server's webhook secret for this repository"
        )
    return matched


def verify(body: bytes, headers: Any, secrets: Sequence[bytes]) -> int:
    """``Forge.verify``: the ``X-Hub-Signature-256`` HMAC of the raw body."""
    return verify_signature(body, headers.get(SIGNATURE_HEADER), secrets)


# -- headers and body -------------------------------------------------------------------------------


def parse_meta(headers: Mapping[str, str] | Any) -> Meta:
    """Delivery id and event name from the headers (case-insensitive mapping)."""
    delivery_id = forge.delivery_id((headers.get(DELIVERY_HEADER) or "").strip(), DELIVERY_HEADER, TITLE)
    event = forge.event_name(headers.get(EVENT_HEADER), EVENT_HEADER, TITLE, _EVENT, EVENT_FORM)
    return Meta(delivery_id, event)


parse_body = forge.parse_json  # JSON is JSON on every forge


def repository_of(payload: Mapping[str, Any]) -> str | None:
    """``repository.full_name``, or None when the delivery is not about one repository."""
    return forge.named_repository(payload, "repository", "full_name", REPOSITORY_FIELD)


# -- decisions --------------------------------------------------------------------------------------


def decide(event: str, payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    """Turn one verified delivery for an allow-listed repository into a Decision."""
    if event == "ping":
        return ping(payload)
    if event == "pull_request":
        return pull_request(payload, repo)
    if event == "push":
        return _push(payload, repo)
    return Decision(
        f"event '{event}' does not start builds; send only pull requests and pushes to this webhook"
    )


def ping(payload: Mapping[str, Any]) -> Decision:
    """A ping (sent when the webhook is created): answer with the hook's zen, build nothing."""
    zen = payload.get("zen")
    hook_id = payload.get("hook_id")
    hook = f" {hook_id}" if isinstance(hook_id, int) else ""
    return Decision(
        f"ping: webhook{hook} is set up; nothing to build", zen=zen if isinstance(zen, str) else ""
    )


def pull_request(payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    """A ``pull_request`` event: builds when it was closed by merging (Gitea sends the same shape)."""
    action = forge.string(payload, "action", "action", required=True)
    pr = forge.obj(payload.get("pull_request"), "pull_request")
    number = pr.get("number", payload.get("number"))
    label = f"pull request #{number}" if isinstance(number, int) else "pull request"
    base_obj = forge.obj(pr.get("base"), "pull_request.base")
    base = forge.string(base_obj, "ref", "pull_request.base.ref", required=True)
    ref = "refs/heads/" + base
    if action != "closed":
        return Decision(f"{label} {action}: only merged pull requests start builds", action=action, ref=ref)
    if pr.get("merged") is not True:
        return Decision(f"{label} was closed without merging", action=action, ref=ref)
    merge = Merge(
        label=label,
        action=action,
        base=base,
        sha=pr.get("merge_commit_sha"),
        sha_field="pull_request.merge_commit_sha",
        author=login(pr.get("merged_by")) or login(pr.get("user")),
        title=forge.text(pr.get("title")),
        url=forge.text(pr.get("html_url")),
        number=number if isinstance(number, int) else None,
    )
    return forge.merged(repo, merge)


def _push(payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    head = forge.mapping(payload.get("head_commit"))
    author = forge.mapping(head.get("author"))
    who = author.get("username") or author.get("name") or login(payload.get("sender"))
    push = Push(
        ref=forge.string(payload, "ref", "ref", required=True),
        after=forge.string(payload, "after", "after", required=True),
        deleted=payload.get("deleted") is True,
        author=forge.text(who),
        message=forge.text(head.get("message")),
        url=forge.text(head.get("url") or payload.get("compare")),
    )
    return forge.pushed(repo, push)


def login(user: Any) -> str:
    """A user object's ``login`` (GitHub and Gitea), or ''."""
    return forge.text(forge.mapping(user).get("login"))

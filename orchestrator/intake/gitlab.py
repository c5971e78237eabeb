"""GitLab deliveries, pure: the ``X-Gitlab-Token`` check, headers, payload parsing, trigger matching.

This module is the GitLab ``Forge`` (see ``forge.py``). GitLab does not sign the body: it sends the
webhook's secret token itself in ``X-Gitlab-Token``, which is compared in constant time with every
secret configured for the repositories. A merge request merged into a tracked branch builds its
merge commit; a push to a branch under ``triggers.push`` builds the pushed head. The project's path
(``group/project``, ``group/subgroup/project``) is the repository name in the server configuration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.config import RepoConfig
from orchestrator.errors import SignatureError
from orchestrator.intake import forge
from orchestrator.intake.forge import Decision, Merge, Meta, Push
from orchestrator.intake.forge import ping as ping

NAME = "gitlab"
EVENT_FORM = "a GitLab event name such as 'Merge Request Hook'"  # what the event header must look like
TITLE = "GitLab"
SIGNATURE_HEADER = "X-Gitlab-Token"
EVENT_HEADER = "X-Gitlab-Event"
# Idempotency-Key stays the same when GitLab retries or resends a delivery, so it is the best id for
# answering a redelivery from its record; older GitLab versions send only the UUID headers.
DELIVERY_HEADERS = ("Idempotency-Key", "X-Gitlab-Event-UUID", "X-Gitlab-Webhook-UUID")
REPOSITORY_FIELD = "project.path_with_namespace"
MERGE_REQUEST = "Merge Request Hook"
PUSH = "Push Hook"
TAG_PUSH = "Tag Push Hook"
_EVENT = re.compile(r"[A-Z][A-Za-z ]{0,63}\Z")  # "<Event> Hook"


# -- authentication ---------------------------------------------------------------------------------


def verify(body: bytes, headers: Any, secrets: Sequence[bytes]) -> int:
    """The index of the secret equal to ``X-Gitlab-Token``; SignatureError if none is.

    ``body`` is not part of the check: GitLab authenticates a delivery by the token alone.
    """
    forge.require_secrets(secrets)
    token = headers.get(SIGNATURE_HEADER)
    if not token:
        raise SignatureError(
            f"missing {SIGNATURE_HEADER} header: set a Secret token on the GitLab webhook "
            "(Settings → Webhooks) equal to the server's webhook secret for this repository"
        )
    matched = forge.matching_secret(forge.header_bytes(token), secrets)
    if matched < 0:
        raise SignatureError(
            f"{SIGNATURE_HEADER} does not match any configured secret: the Secret token in the GitLab "
            "webhook settings must equal the server's webhook secret for this repository"
        )
    return matched


# -- headers and body -------------------------------------------------------------------------------


def parse_meta(headers: Mapping[str, str] | Any) -> Meta:
    """Delivery id (``Idempotency-Key``, else ``X-Gitlab-Event-UUID``, else ``X-Gitlab-Webhook-UUID``)
    and event name (``X-Gitlab-Event``, e.g. "Merge Request Hook")."""
    header, value = forge.first_header(headers, DELIVERY_HEADERS)
    delivery_id = forge.delivery_id(value, header or DELIVERY_HEADERS[1], TITLE)
    event = forge.event_name(
        headers.get(EVENT_HEADER),
        EVENT_HEADER,
        TITLE,
        _EVENT,
        "a GitLab event name such as 'Merge Request Hook'",
    )
    return Meta(delivery_id, event)


parse_body = forge.parse_json  # JSON is JSON on every forge


def repository_of(payload: Mapping[str, Any]) -> str | None:
    """``project.path_with_namespace``, or None when the delivery is not about one project."""
    return forge.named_repository(payload, "project", "path_with_namespace", REPOSITORY_FIELD)


# -- decisions --------------------------------------------------------------------------------------


def decide(event: str, payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    """Turn one verified delivery for an allow-listed project into a Decision."""
    if event == MERGE_REQUEST:
        return _merge_request(payload, repo)
    if event in (PUSH, TAG_PUSH):
        return _push(payload, repo)
    return Decision(
        f"event '{event}' does not start builds; in the GitLab webhook settings, "
        "enable only Push events and Merge request events"
    )


def _merge_request(payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    attrs = forge.obj(payload.get("object_attributes"), "object_attributes")
    action = forge.string(attrs, "action", "object_attributes.action")
    iid = attrs.get("iid")
    label = f"merge request !{iid}" if isinstance(iid, int) else "merge request"
    base = forge.string(attrs, "target_branch", "object_attributes.target_branch", required=True)
    ref = "refs/heads/" + base
    if action != "merge":
        done = action or "updated"
        return Decision(f"{label} {done}: only merged merge requests start builds", action=action, ref=ref)
    sha, field = _merge_commit(attrs)
    merge = Merge(
        label=label,
        action=action,
        base=base,
        sha=sha,
        sha_field=field,
        author=forge.text(forge.mapping(payload.get("user")).get("username")),
        title=forge.text(attrs.get("title")),
        url=forge.text(attrs.get("url")),
        number=iid if isinstance(iid, int) else None,
    )
    return forge.merged(repo, merge)


def _merge_commit(attrs: Mapping[str, Any]) -> tuple[Any, str]:
    """The commit the target branch points at after the merge, and where it came from.

    A merge commit, else the squash commit; a fast-forward merge creates neither, and the target
    branch then points at the source branch's last commit.
    """
    for key in ("merge_commit_sha", "squash_commit_sha"):
        if attrs.get(key):
            return attrs[key], f"object_attributes.{key}"
    last = attrs.get("last_commit")
    if isinstance(last, dict) and last.get("id"):
        return last["id"], "object_attributes.last_commit.id"
    return None, "object_attributes.merge_commit_sha"


def _push(payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    after = forge.string(payload, "after", "after", required=True)
    head = forge.head_of(payload.get("commits"), after)  # GitLab lists the newest 20
    who = payload.get("user_username") or payload.get("user_name")
    push = Push(
        ref=forge.string(payload, "ref", "ref", required=True),
        after=after,
        author=forge.text(who),
        message=forge.text(head.get("message")),
        url=forge.text(head.get("url") or forge.mapping(payload.get("project")).get("web_url")),
    )
    return forge.pushed(repo, push)

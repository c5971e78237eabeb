"""Gitea and Forgejo deliveries, pure: signature check, headers, payload parsing, trigger matching.

This module is the Gitea ``Forge`` (see ``forge.py``); Forgejo, a Gitea fork, sends the same
deliveries with ``X-Forgejo-*`` headers beside the ``X-Gitea-*`` ones. The signature is the hex
HMAC-SHA256 of the raw body under the webhook's secret. Payloads are GitHub-shaped: a pull request
closed with ``merged: true`` builds its merge commit on the base branch, a push to a branch under
``triggers.push`` builds the pushed head; ``repository.full_name`` names the repository.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.config import RepoConfig
from orchestrator.errors import SignatureError
from orchestrator.intake import forge, github
from orchestrator.intake.forge import Decision, Meta, Push
from orchestrator.intake.forge import ping as ping
from orchestrator.intake.github import repository_of as repository_of

NAME = "gitea"
EVENT_FORM = "a lower-case event name such as pull_request"  # what the event header must look like
TITLE = "Gitea"
# Forgejo first: it sends both families; plain Gitea only X-Gitea-*.
SIGNATURE_HEADERS = ("X-Forgejo-Signature", "X-Gitea-Signature")
EVENT_HEADERS = ("X-Forgejo-Event", "X-Gitea-Event")
DELIVERY_HEADERS = ("X-Forgejo-Delivery", "X-Gitea-Delivery")
SIGNATURE_HEADER = SIGNATURE_HEADERS[1]
REPOSITORY_FIELD = github.REPOSITORY_FIELD
_HEX = re.compile(r"[0-9a-fA-F]{64}\Z")
_EVENT = re.compile(r"[a-z_]{1,64}\Z")

parse_body = forge.parse_json  # JSON is JSON on every forge


# -- authentication ---------------------------------------------------------------------------------


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Gitea-Signature`` value Gitea sends for ``body`` under ``secret``."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(body: bytes, headers: Any, secrets: Sequence[bytes]) -> int:
    """The index of the secret whose HMAC-SHA256 of ``body`` is the signature; SignatureError if none."""
    forge.require_secrets(secrets)
    header, value = forge.first_header(headers, SIGNATURE_HEADERS)
    if not value:
        raise SignatureError(
            "missing X-Gitea-Signature (or X-Forgejo-Signature) header: set a Secret on the webhook "
            "(repository Settings → Webhooks) equal to the server's webhook secret for this repository"
        )
    if not _HEX.match(value):
        raise SignatureError(f"{header} must be 64 hex digits (the HMAC-SHA256 of the body)")
    expected = [sign(s, body).encode() for s in secrets]
    matched = forge.matching_secret(forge.header_bytes(value.lower()), expected)
    if matched < 0:
        raise SignatureError(
            f"{header} does not match any configured secret: the Secret in the webhook settings "
            "must equal the server's webhook secret for this repository"
        )
    return matched


# -- headers ----------------------------------------------------------------------------------------


def parse_meta(headers: Mapping[str, str] | Any) -> Meta:
    """Delivery id and event name from ``X-Forgejo-*`` or ``X-Gitea-*`` headers."""
    header, value = forge.first_header(headers, DELIVERY_HEADERS)
    delivery_id = forge.delivery_id(value, header or DELIVERY_HEADERS[1], TITLE)
    header, event = forge.first_header(headers, EVENT_HEADERS)
    event = forge.event_name(
        event,
        header or "X-Gitea-Event",
        "Gitea or Forgejo",
        _EVENT,
        "a lower-case event name such as pull_request",
    )
    return Meta(delivery_id, event)


# -- decisions --------------------------------------------------------------------------------------


def decide(event: str, payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    """Turn one verified delivery for an allow-listed repository into a Decision."""
    if event == "pull_request":
        return github.pull_request(payload, repo)  # the same shape, merged_by and all
    if event == "push":
        return _push(payload, repo)
    return Decision(
        f"event '{event}' does not start builds; in the webhook settings, trigger on "
        "Push events and Pull request events only"
    )


def _push(payload: Mapping[str, Any], repo: RepoConfig) -> Decision:
    after = forge.string(payload, "after", "after", required=True)
    head = forge.mapping(payload.get("head_commit")) or forge.head_of(payload.get("commits"), after)
    author = forge.mapping(head.get("author"))
    who = author.get("username") or author.get("name") or github.login(payload.get("pusher"))
    push = Push(
        ref=forge.string(payload, "ref", "ref", required=True),
        after=after,
        author=forge.text(who),
        message=forge.text(head.get("message")),
        url=forge.text(head.get("url") or payload.get("compare_url")),
    )
    return forge.pushed(repo, push)

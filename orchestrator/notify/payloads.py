"""What each kind of target receives, built as data from a notification's message (pure, no I/O).

* Slack-compatible incoming webhook: ``{"text": ..., "blocks": [...]}`` (Block Kit, mrkdwn).
* Generic webhook: the message as JSON, signed: ``X-Mlship-Signature: sha256=<hex>`` is
  HMAC-SHA256 with the target's secret over ``"<X-Mlship-Timestamp>." + raw body``; receivers
  recompute it, compare in constant time and refuse timestamps older than ``TOLERANCE`` seconds.
* Email: a plain-text ``EmailMessage`` (From, To, Subject "[mlship] <title>").
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

SIGNATURE_HEADER = "X-Mlship-Signature"
TIMESTAMP_HEADER = "X-Mlship-Timestamp"
EVENT_HEADER = "X-Mlship-Event"
DELIVERY_HEADER = "X-Mlship-Delivery"
TOLERANCE = 300  # seconds a receiver should accept between the timestamp and its clock


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn control characters (&, <, >) as entities, so a commit message cannot make links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _facts(message: Mapping[str, Any]) -> str:
    b = message["build"]
    parts = [b["repo"], b["branch"] or "-", str(b["sha"])[:7], f"trigger {b['trigger']}"]
    if message.get("environment"):
        parts.append(f"environment {message['environment']}")
    return " · ".join(parts)


def slack_payload(message: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body: ``text`` (the fallback) and ``blocks``."""
    title = _slack_escape(message["title"])
    headline = f"*<{message['url']}|{title}>*" if message.get("url") else f"*{title}*"
    detail = _slack_escape(str(message.get("detail") or ""))[:2900]  # a section's text: 3000 at most
    commit = _slack_escape(str(message["build"].get("message") or ""))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline + (f"\n{detail}" if detail else "")}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _slack_escape(_facts(message))}]},
    ]
    if commit:
        blocks.append({"type": "context", "elements": [{"type": "plain_text", "text": commit[:150]}]})
    return {"text": message["title"], "blocks": blocks}


def slack_body(message: Mapping[str, Any]) -> bytes:
    return json.dumps(slack_payload(message), separators=(",", ":")).encode()


def webhook_body(message: Mapping[str, Any], delivery_id: str, timestamp: int) -> bytes:
    """The generic webhook's JSON body: the message plus its delivery id and timestamp."""
    body = {"id": delivery_id, "timestamp": timestamp, **message}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The value of ``X-Mlship-Signature`` for ``body`` sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def webhook_headers(
    message: Mapping[str, Any], delivery_id: str, secret: bytes, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "mlship",
        EVENT_HEADER: str(message["event"]),
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


def verify(
    secret: bytes, headers: Mapping[str, str], body: bytes, now: float, tolerance: float = TOLERANCE
) -> bool:
    """What a receiver does: the timestamp is recent and the signature matches (constant time)."""
    try:
        timestamp = int(headers.get(TIMESTAMP_HEADER, ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), headers.get(SIGNATURE_HEADER, ""))


def email_message(message: Mapping[str, Any], sender: str, to: tuple[str, ...]) -> EmailMessage:
    """A plain-text email of the notification."""
    b = message["build"]
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = ", ".join(to)
    mail["Subject"] = "[mlship] " + " ".join(str(message["title"]).split())[:200]
    lines = [str(message["title"]), ""]
    if message.get("detail"):
        lines += [str(message["detail"]), ""]
    lines += [
        f"Repository:  {b['repo']}",
        f"Branch:      {b['branch'] or '-'}",
        f"Commit:      {b['sha']}" + (f"  {b['message']}" if b.get("message") else ""),
        f"Trigger:     {b['trigger']}",
        f"Status:      {b['status']}",
    ]
    if message.get("environment"):
        lines.append(f"Environment: {message['environment']}")
    if message.get("url"):
        lines += ["", f"Build page: {message['url']}"]
    mail.set_content("\n".join(lines) + "\n")
    return mail

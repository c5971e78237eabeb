"""A commit status call as data, and the one thin layer that sends it (for GitLab and Gitea).

Requests are built by ``gitlab_status`` / ``gitea_status`` as ``HttpRequest`` values, so they are
tested exactly without a network; ``send`` is the only code that talks HTTP. The token travels in a
header only: it is never logged (errors name the forge, the build and the HTTP status).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("orchestrator.notify.forge_status")
TIMEOUT = 5.0


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    json: dict[str, Any]


def send(req: HttpRequest, forge: str, what: str, hint: str) -> int | None:
    """Send ``req``; the HTTP status, or None if it could not be sent. Never raises: a commit status
    is a courtesy and never fails a build. ``what`` names the build in log lines, ``hint`` says what
    to check when the forge refuses."""
    # The URL is the operator's api_url (http/https) plus checked path segments, never a payload's.
    http = urllib.request.Request(  # noqa: S310
        req.url, data=json.dumps(req.json).encode(), headers=req.headers, method=req.method
    )
    try:
        with urllib.request.urlopen(http, timeout=TIMEOUT) as resp:  # noqa: S310
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        log.warning("%s refused the commit status for %s: HTTP %s — %s", forge, what, exc.code, hint)
        return exc.code
    except Exception as exc:
        log.warning("could not report the commit status for %s to %s: %s", what, forge, exc)
        return None

"""What a finished build has to tell: its outcome, and the deploys, rollbacks and gate stops in its steps.

Pure: everything is read from the build record (status, error, step records with their details), so
the deploy and gate code need no hooks of their own. Each event becomes a ``message``: plain data
that every target renders in its own format (see payloads.py), with secret values already masked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.models import Build, BuildStatus, StepRecord, StepStatus

BUILD_EVENTS = {
    BuildStatus.SUCCESS: "build.success",
    BuildStatus.FAILED: "build.failed",
    BuildStatus.ERROR: "build.error",
    BuildStatus.CANCELLED: "build.cancelled",
}


@dataclass(frozen=True)
class Event:
    """One thing worth telling about a build."""

    name: str  # one of config.NOTIFY_EVENTS
    key: str  # unique within the build: "build", "deploy:qa", "gate.stopped:<step>"
    title: str  # one line, e.g. "acme/model #12 failed"
    detail: str = ""  # why, or what changed
    environment: str = ""


def _failed_checks(rec: StepRecord) -> str:
    checks = (rec.details.get("gate") or {}).get("checks") or []
    failed = [f"{c.get('name')}: {c.get('detail')}" for c in checks if not c.get("passed")]
    return "; ".join(failed) or (rec.error or "")


def step_events(build: Build) -> list[Event]:
    """Deploys that happened, rollbacks that happened and model gates that stopped the model."""
    name = f"{build.repo} #{build.number}"
    out: list[Event] = []
    for rec in build.steps:
        env = str(rec.details.get("environment", ""))
        deployed = rec.details.get("outcome") == "deployed"
        if rec.kind == "deploy" and deployed:
            image = rec.details.get("image", "")
            out.append(Event("deploy", f"deploy:{env}", f"{name} deployed to {env}", f"image {image}", env))
        elif rec.kind == "rollback" and deployed:
            number = build.deploys.get("source_number") or rec.details.get("build_number")
            out.append(
                Event(
                    "rollback",
                    f"rollback:{env}",
                    f"{name}: {env} rolled back to build #{number}",
                    f"image {rec.details.get('image', '')}",
                    env,
                )
            )
        elif rec.kind == "model_check" and rec.status is StepStatus.FAILED and rec.details.get("gate"):
            out.append(
                Event(
                    "gate.stopped",
                    f"gate.stopped:{rec.name}",
                    f"{name}: model gate '{rec.name}' stopped the model",
                    _failed_checks(rec),
                )
            )
    return out


def build_events(build: Build) -> list[Event]:
    """Every event of a finished build: its outcome first, then what its steps did."""
    out: list[Event] = []
    event = BUILD_EVENTS.get(build.status)
    if event is not None:
        out.append(Event(event, "build", f"{build.repo} #{build.number} {build.status}", build.error))
    return out + step_events(build)


def message(build: Build, event: Event, page_url: str, mask: Callable[[str], str]) -> dict[str, Any]:
    """The data every target renders for ``event`` (each string passed through ``mask``)."""
    data: dict[str, Any] = {
        "event": event.name,
        "title": event.title,
        "detail": event.detail,
        "environment": event.environment,
        "url": page_url,
        "build": {
            "id": build.id,
            "number": build.number,
            "repo": build.repo,
            "branch": build.branch,
            "sha": build.sha,
            "trigger": build.trigger,
            "status": str(build.status),
            "author": build.author,
            "message": build.message.splitlines()[0] if build.message else "",
            "error": build.error,
            "commit_url": build.url,
        },
    }
    return _masked(data, mask)


def _masked(value: Any, mask: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _masked(v, mask) for k, v in value.items()}
    return value

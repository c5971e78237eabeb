"""Dataclasses that cross module boundaries: triggers, builds, steps, deliveries, deployments."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

SHA_PATTERN = "^[0-9a-f]{40}$"  # a full git commit id, lowercase hex (also the OpenAPI pattern)
_SHA = re.compile(SHA_PATTERN)


def is_sha(value: object) -> bool:
    """Whether ``value`` is a full 40-hex git commit id: the one check every boundary uses."""
    return isinstance(value, str) and _SHA.fullmatch(value) is not None


class BuildStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"  # a step failed on its own terms (tests, health check, gate)
    ERROR = "error"  # infrastructure: daemon down, clone failed, worker lost
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"  # a newer build was already deployed

    @property
    def finished(self) -> bool:
        return self not in (BuildStatus.QUEUED, BuildStatus.RUNNING)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Trigger:
    """What a delivery (or a person) asks to build: one repository at one exact commit."""

    repo: str
    sha: str
    ref: str  # full ref, e.g. refs/heads/main
    branch: str
    kind: str  # pull_request_merged | push | manual | rerun
    author: str = ""
    message: str = ""
    url: str = ""  # link to the commit or PR on GitHub
    pr_number: int | None = None


@dataclass
class StepRecord:
    name: str
    kind: str
    status: StepStatus = StepStatus.PENDING
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        d["duration"] = self.duration
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepRecord:
        d = {k: v for k, v in d.items() if k != "duration"}
        d["status"] = StepStatus(d["status"])
        return cls(**d)


@dataclass
class Build:
    """One run of a repository's pipeline at one commit. ``id`` is global, ``number`` per repository."""

    id: int
    number: int
    repo: str
    sha: str
    ref: str
    branch: str
    trigger: str  # pull_request_merged | push | manual | rerun
    status: BuildStatus = BuildStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    author: str = ""
    message: str = ""
    url: str = ""
    triggered_by: str = ""  # delivery id, API user, or "rerun of #N"
    rerun_of: int | None = None
    pipeline_yaml: str = ""
    image: str = ""
    digest: str = ""
    model: dict[str, Any] = field(default_factory=dict)  # where docker_push published the model (OCI ref)
    error: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    deploys: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    worker: str = ""
    log_pruned: str = ""  # why retention removed this build's log (empty: the log is there)

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    @property
    def short_sha(self) -> str:
        return self.sha[:7]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        d["steps"] = [s.to_dict() for s in self.steps]
        d["duration"] = self.duration
        d["short_sha"] = self.short_sha
        return d


@dataclass
class Delivery:
    """One webhook delivery and the verdict the service reached on it."""

    id: str
    event: str
    repo: str = ""
    verdict: str = "received"  # received | queued | duplicate | ignored | rejected | failed
    reason: str = ""
    build_id: int | None = None
    status_code: int = 0
    received_at: float = field(default_factory=time.time)
    duration_ms: float = 0.0
    action: str = ""
    ref: str = ""
    sha: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Deployment:
    """What runs in one environment now: which build, image and container.

    The top-level fields are the environment's build: the one every host runs. ``runs`` says what
    each host runs (host → build_id, build_number, image, container, model_sha256, model_path); it is
    written after every batch of a rollout, so when a deploy stopped between batches (its worker
    died) the record is ``mixed`` and the top-level fields still name the build the whole
    environment ran before (see docs/deploy.md, mixed fleets).
    """

    repo: str
    environment: str
    build_id: int
    build_number: int
    image: str
    sha: str
    container: str = ""
    deployed_at: float = field(default_factory=time.time)
    hosts: list[str] = field(default_factory=list)
    action: str = "deploy"  # deploy | rollback | promote
    # The model the build shipped from its artifacts ("" = the operator's model on the volume).
    model_sha256: str = ""
    model_path: str = ""  # MODEL_PATH inside the container, e.g. /models/<sha256[:16]>/model.skops
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # host → what it runs
    mixed: bool = False  # hosts run different builds (a rollout stopped between batches)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run(self) -> dict[str, Any]:
        """What a host running the environment's build runs."""
        return {
            "build_id": self.build_id,
            "build_number": self.build_number,
            "image": self.image,
            "container": self.container,
            "model_sha256": self.model_sha256,
            "model_path": self.model_path,
        }

    def host_runs(self) -> dict[str, dict[str, Any]]:
        """What each host runs; a host missing runs nothing recorded (a record written before
        ``runs`` existed: every host runs its build)."""
        return dict(self.runs) if self.runs else {h: self.run() for h in self.hosts}

    def build_ids(self) -> set[int]:
        """Every build some host of this record runs."""
        return {self.build_id} | {int(r["build_id"]) for r in self.runs.values()}

    def model_sha256s(self) -> set[str]:
        """Every shipped model some host of this record serves."""
        shas = {self.model_sha256} | {str(r.get("model_sha256") or "") for r in self.runs.values()}
        return shas - {""}

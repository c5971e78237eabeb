"""The step contract: what a step kind receives (StepContext) and how it is stopped (CancelToken).

A step kind is a callable ``run(ctx) -> None`` registered in ``orchestrator.steps.STEP_KINDS``.
It raises StepFailed (its own failure: non-zero exit, failed health check; StepTimeout, DeployError
are subclasses), InfrastructureError (daemon, host or registry trouble), or Cancelled.
Anything long-running registers a kill function with ``ctx.cancel.on_cancel``; the runner fires
the token on a cancel request or when the step's deadline passes, then turns the outcome into
Cancelled or StepTimeout (``ctx.stopped()`` does it for the step).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.errors import Cancelled, StepTimeout

if TYPE_CHECKING:
    from orchestrator.build.log import LogWriter
    from orchestrator.config import Settings
    from orchestrator.models import Build, StepRecord
    from orchestrator.pipeline import Pipeline, Step
    from orchestrator.store import Store

CANCELLED = "cancelled"
TIMEOUT = "timeout"


class CancelToken:
    """Set once, by the runner, with a reason; callbacks (kill functions) run once, on the setter's thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason = ""
        self.detail = ""

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Register a kill function; returns a function that unregisters it. Runs now if already set."""
        with self._lock:
            fire = self._event.is_set()
            if not fire:
                self._callbacks.append(callback)
        if fire:
            with contextlib.suppress(Exception):
                callback()

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return remove

    def set(self, reason: str = CANCELLED, detail: str = "") -> bool:
        """Fire the token; returns False if it was already set."""
        with self._lock:
            if self._event.is_set():
                return False
            self.reason, self.detail = reason, detail
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            with contextlib.suppress(Exception):  # one failing kill must not stop the others
                cb()
        return True


class StepRunner(Protocol):
    def __call__(self, ctx: StepContext) -> None: ...


@dataclass
class StepContext:
    """Everything one step needs. ``docker`` is created on first use (only docker steps need it)."""

    build: Build
    step: Step
    pipeline: Pipeline
    settings: Settings
    store: Store
    workspace: Path
    vars: Mapping[str, str]
    log: LogWriter
    cancel: CancelToken
    record: StepRecord
    deadline: float
    docker_factory: Callable[[], Any] = field(default=lambda: None)
    save: Callable[[], None] = field(default=lambda: None)  # persist record/build fields now
    lease_token: str = ""  # the runner's hold on the build's lease ("" = no runner, no lease to fence)
    _docker: Any = None

    @property
    def docker(self) -> Any:
        """The docker.DockerClient (raises InfrastructureError if the daemon cannot be reached)."""
        if self._docker is None:
            self._docker = self.docker_factory()
        return self._docker

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def stopped(self) -> None:
        """Raise Cancelled or StepTimeout if the token fired (call after a kill function ran)."""
        if not self.cancel.is_set():
            return
        if self.cancel.reason == TIMEOUT:
            raise StepTimeout(self.cancel.detail or f"step '{self.step.name}' timed out", step=self.step.name)
        raise Cancelled(self.cancel.detail or "cancelled", step=self.step.name)

    def container_labels(self) -> dict[str, str]:
        """Labels on every container a step starts, so the janitor can find a lost build's containers."""
        return {
            "mlship.build": str(self.build.id),
            "mlship.step": self.step.name,
            "mlship.repo": self.build.repo,
        }

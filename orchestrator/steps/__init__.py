"""Step kinds: ``STEP_KINDS`` maps a pipeline step kind to the function that runs it.

Each step module registers its kinds.
"""

from __future__ import annotations

from orchestrator.errors import InfrastructureError
from orchestrator.steps import deploy, docker, model_check, shell
from orchestrator.steps.base import CancelToken, StepContext, StepRunner

__all__ = ["STEP_KINDS", "CancelToken", "StepContext", "StepRunner", "runner_for"]

STEP_KINDS: dict[str, StepRunner] = {}
docker.register(STEP_KINDS)
shell.register(STEP_KINDS)
model_check.register(STEP_KINDS)
deploy.register(STEP_KINDS)


def runner_for(kind: str) -> StepRunner:
    """The function that runs ``kind``; InfrastructureError if this server cannot run it."""
    try:
        return STEP_KINDS[kind]
    except KeyError:
        raise InfrastructureError(f"step kind '{kind}' is not available on this server") from None

"""Step kinds: ``STEP_KINDS`` maps a pipeline step kind to the function that runs it.

Each step module registers its kinds. ``deploy`` and ``rollback`` come from ``steps/deploy.py``
(the SSH deploy); until that module exists, those steps fail with a clear error.
"""

from __future__ import annotations

import importlib

from ..errors import InfrastructureError
from . import docker, model_check, shell
from .base import CancelToken, StepContext, StepRunner

__all__ = ["STEP_KINDS", "CancelToken", "StepContext", "StepRunner", "runner_for"]

STEP_KINDS: dict[str, StepRunner] = {}
docker.register(STEP_KINDS)
shell.register(STEP_KINDS)
model_check.register(STEP_KINDS)


def _load_optional(module: str) -> None:
    """Import a step module that registers itself, if it exists (imported lazily: it may not yet)."""
    try:
        importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{module}":
            raise


def runner_for(kind: str) -> StepRunner:
    """The function that runs ``kind``; InfrastructureError if this server cannot run it."""
    if kind in ("deploy", "rollback") and kind not in STEP_KINDS:
        _load_optional("deploy")
    try:
        return STEP_KINDS[kind]
    except KeyError:
        if kind in ("deploy", "rollback"):
            raise InfrastructureError(
                f"{kind} steps are not available on this server yet (orchestrator/steps/deploy.py is "
                "missing); remove the step or run a version with SSH deploys"
            ) from None
        raise InfrastructureError(f"step kind '{kind}' is not available on this server") from None

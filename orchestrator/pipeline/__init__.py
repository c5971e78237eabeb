"""pipeline.yaml → a validated ``Pipeline``. The schema is in ``schema``, loading (safe YAML, errors
with lines) in ``loader``, ``${VAR}`` resolution in ``variables``, the checks across keys in ``checks``
and what a repository may reach in ``policy``."""

from orchestrator.pipeline.loader import MAX_BYTES, load_pipeline, parse_yaml
from orchestrator.pipeline.schema import (
    KIND_KEYS,
    NAME_RE,
    ContainerSpec,
    DeploySpec,
    DockerBuildSpec,
    DockerPushSpec,
    DockerRunSpec,
    EdgeSpec,
    Environment,
    HealthSpec,
    HostSpec,
    Pipeline,
    RegistryAuth,
    RollbackSpec,
    ShellSpec,
    Step,
    When,
)
from orchestrator.pipeline.variables import BUILTIN_VARS, build_variables

__all__ = [
    "BUILTIN_VARS",
    "KIND_KEYS",
    "MAX_BYTES",
    "NAME_RE",
    "ContainerSpec",
    "DeploySpec",
    "DockerBuildSpec",
    "DockerPushSpec",
    "DockerRunSpec",
    "EdgeSpec",
    "Environment",
    "HealthSpec",
    "HostSpec",
    "Pipeline",
    "RegistryAuth",
    "RollbackSpec",
    "ShellSpec",
    "Step",
    "When",
    "build_variables",
    "load_pipeline",
    "parse_yaml",
]

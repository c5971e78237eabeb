"""The checks across keys of a validated pipeline (names, order, paths); then the repository's policy."""

from __future__ import annotations

import re

from orchestrator.gate.spec import check_model_check
from orchestrator.pipeline.diagnostics import Errors, Path_
from orchestrator.pipeline.policy import Policy, check_pipeline
from orchestrator.pipeline.schema import KIND_KEYS, NAME_RE, DockerBuildSpec, DockerRunSpec, Pipeline, Step


class _Seen:
    """What earlier steps provide to later ones, while the steps are checked in order."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.built = False
        self.artifacts = False


def semantic_checks(p: Pipeline, policy: Policy, errs: Errors) -> None:
    """Checks across keys; what the repository may reach is policy.check_pipeline's."""
    seen = _Seen()
    for i, step in enumerate(p.steps):
        _check_step(p, i, step, seen, errs)
    for env_name in p.environments:
        if not re.match(NAME_RE, env_name):
            errs.add(
                f"invalid environment name '{env_name}': use lowercase letters, digits, '-' and '_'",
                ("environments", env_name),
                key_line=True,
            )
    check_pipeline(p, policy, errs.add)


def _check_step(p: Pipeline, i: int, step: Step, seen: _Seen, errs: Errors) -> None:
    where: Path_ = ("steps", i)
    if step.name in seen.names:
        errs.add(
            f"duplicate step name '{step.name}' (also steps[{seen.names[step.name]}]); names must be unique",
            (*where, "name"),
        )
    seen.names.setdefault(step.name, i)
    kinds = step.kinds
    if not kinds:
        errs.add(f"step '{step.name}' has no kind: add exactly one of {', '.join(KIND_KEYS)}", where)
    elif len(kinds) > 1:
        errs.add(
            f"step '{step.name}' has {len(kinds)} kinds ({', '.join(kinds)}); a step does exactly one "
            "thing: split it into several steps",
            where,
        )
    kind = step.kind
    if kind == "docker_build":
        seen.built = True
        _check_build_paths(step.spec, (*where, kind), errs)
    elif kind == "docker_run":
        _check_run(step, seen, (*where, kind), errs)
    elif kind == "model_check":
        check_model_check(step, p, seen.built, seen.artifacts, i, errs)
    elif kind == "docker_push" and not seen.built:
        errs.add(
            f"step '{step.name}' pushes the image built by an earlier docker_build step, but none "
            "comes before it",
            (*where, kind),
        )
    elif kind in ("deploy", "rollback"):
        env = step.spec.environment
        if env not in p.environments:
            known = ", ".join(sorted(p.environments)) or "none defined"
            errs.add(f"unknown environment '{env}'; environments: {known}", (*where, kind, "environment"))


def _check_build_paths(spec: DockerBuildSpec, where: Path_, errs: Errors) -> None:
    for key in ("context", "dockerfile"):
        value = getattr(spec, key)
        if not _relative_inside(value):
            errs.add(
                f"{key} must be a path inside the repository (relative, no '..'), got {value!r}",
                (*where, key),
            )


def _check_run(step: Step, seen: _Seen, where: Path_, errs: Errors) -> None:
    spec: DockerRunSpec = step.spec
    if spec.image is None and not seen.built:
        errs.add(
            f"step '{step.name}' runs the image built by an earlier docker_build step, but none "
            "comes before it: add one, or set image:",
            where,
        )
    if spec.artifacts is not None:
        seen.artifacts = True
        _check_artifacts_mount(spec.artifacts, (*where, "artifacts"), errs)


def _check_artifacts_mount(target: str, where: Path_, errs: Errors) -> None:
    parts = target.split("/")
    if not target.startswith("/") or target == "/" or ".." in parts or ":" in target:
        errs.add(
            f"artifacts must be an absolute path inside the container (not '/', no '..' or ':'), "
            f"e.g. /artifacts; got {target!r}",
            where,
        )


def _relative_inside(value: str) -> bool:
    return not value.startswith("/") and ".." not in value.split("/") and "\\" not in value

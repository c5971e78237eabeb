"""``${NAME}`` and ``${secrets.NAME}`` in a pipeline: the resolver and one build's variables."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.config import Secrets
    from orchestrator.pipeline.diagnostics import Errors, Path_
    from orchestrator.pipeline.policy import Policy

VAR_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
VAR_NAME_RE = re.compile(r"^(secrets\.)?[A-Za-z_][A-Za-z0-9_]*$")
FULL_VAR_RE = re.compile(r"^\$\{(secrets\.)?[A-Za-z_][A-Za-z0-9_]*\}$")
BUILTIN_VARS = ("BUILD_NUMBER", "BUILD_ID", "GIT_SHA", "GIT_SHA_SHORT", "BRANCH", "REPO")


class Resolver:
    """Substitutes ${NAME} and ${secrets.NAME} in string values; records secrets for masking."""

    def __init__(
        self, variables: Mapping[str, str] | None, secrets: Secrets | None, errs: Errors, policy: Policy
    ) -> None:
        self.variables = variables
        self.secrets = secrets
        self.errs = errs
        self.policy = policy
        self.secret_values: list[str] = []

    def value(self, v: Any, path: Path_) -> Any:
        if isinstance(v, dict):
            return {k: self.value(x, (*path, str(k))) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x, (*path, i)) for i, x in enumerate(v)]
        if isinstance(v, str) and "$" in v:
            return VAR_RE.sub(lambda m: self._one(m, path), v)
        return v

    def _one(self, m: re.Match[str], path: Path_) -> str:
        if m.group(0) == "$${":
            return "${"
        name = m.group(1).strip()
        if not VAR_NAME_RE.match(name):
            self.errs.add(
                f"'${{{m.group(1)}}}' is not a variable reference: write ${{NAME}} or "
                "${secrets.NAME} (letters, digits, _), or $${ for a literal ${",
                path,
            )
            return m.group(0)
        if name.startswith("secrets."):
            secret = name[len("secrets.") :]
            refused = self.policy.secret_refusal(secret, path)
            if refused:
                self.errs.add(refused, path)
                return m.group(0)
            if self.secrets is None:
                return m.group(0)
            value = self.secrets.get(secret)
            if value is None:
                self.errs.add(
                    f"secret '{secret}' is not set on the server: export {secret}=... for the "
                    "worker or put a file of that name in its secrets directory",
                    path,
                )
                return m.group(0)
            self.secret_values.append(value)
            self.errs.mask.add(value)
            return value
        if self.variables is None:
            return m.group(0)
        if name not in self.variables:
            known = ", ".join(sorted(self.variables))
            hint = difflib.get_close_matches(name, list(self.variables), n=1)
            mean = f" (did you mean ${{{hint[0]}}}?)" if hint else ""
            self.errs.add(
                f"undefined variable ${{{name}}}{mean}; defined: {known} "
                "(server variables come from the server configuration's vars)",
                path,
            )
            return m.group(0)
        return str(self.variables[name])


def build_variables(build: Any, server_vars: Mapping[str, str]) -> dict[str, str]:
    """The ${VARS} of one build: server variables, then the builtins (which always win)."""
    return {
        **server_vars,
        "BUILD_NUMBER": str(build.number),
        "BUILD_ID": str(build.id),
        "GIT_SHA": build.sha,
        "GIT_SHA_SHORT": build.sha[:7],
        "BRANCH": build.branch,
        "REPO": build.repo,
    }
